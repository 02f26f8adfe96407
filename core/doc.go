// Package core is the worker side of gobps: the engine that runs inside a
// training process, and its Go API.
//
//	e, err := core.Init(ctx, core.Options{Config: cfg})
//	t, err := e.Declare("fc1.weight", proto.Float32, n) // in model order
//	h, err := e.PushPull(t, buf, core.Average)         // asynchronous
//	err = h.Wait()                                      // buf holds the mean
//	e.Shutdown()
//
// # Data path
//
// Declare splits a tensor into partitions of Config.PartitionBytes; each
// partition is a key, assigned to a server by proto.Balancer (balanced by
// bytes, the same on every worker that declares in the same order).
// Declarations are sent lazily: everything declared before a PushPull goes
// to the servers in one batched round trip (one frame per server, all
// servers in parallel).
//
// PushPull enqueues every partition in the scheduler's priority + credit
// queue. A dispatcher goroutine hands partitions to the lane (TCP
// connection) of their server; each lane's sender goroutine pushes the
// partition straight from the caller's buffer and asks for the round's sum,
// and the lane's reader receives the sum straight back into the caller's
// buffer. With the credit above one partition, the push of partition i
// overlaps the pull of partition i-1.
//
// # Failure
//
// A lost connection to a server, or the coordinator's report that a node
// died, fails every pending partition that can no longer complete with an
// error naming the node; a failed server fails later PushPulls that need it
// at once. Nothing waits forever on a dead peer.
//
// # Locking
//
// Engine.mu guards the tensors, the scheduler queue and the request table;
// no I/O happens under it. The user's buffer passed to PushPull must not be
// touched until the handle completes.
package core
