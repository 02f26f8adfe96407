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
// to the servers in one batched round trip (as few frames per server as the
// control-frame limit allows, all servers in parallel).
//
// Every partition of every PushPull then goes through the partition
// lifecycle (core/lifecycle): a pure state machine that the engine feeds
// with events and whose effects it carries out. Its stages: staging in
// (GPU tensors, and C memory over a transport that registers memory),
// local aggregation (the machine's workers sum in shared memory; core/local),
// the scheduler's priority and credit queue, the wire (a lane's sender
// pushes the partition straight from its buffer and asks for the round's
// sum; the lane's reader receives the sum straight back into it), the
// division for Average, and staging out. With the credit above one
// partition, the push of partition i overlaps the pull of partition i-1.
//
// # Failure
//
// A lost connection to a server, or the coordinator's report that a node
// died, fails every pending partition that can no longer complete with an
// error naming the node; a failed server fails later PushPulls that need it
// at once. A partition never finishes, and a handle never completes, while
// anything still reads or writes its buffer. Nothing waits forever on a
// dead peer, and nothing sleeps to wait for one.
//
// # Goroutines and locking
//
// Init starts a sender per lane and a watcher of cluster events; stage
// effects that wait or copy much (local aggregation, GPU staging) run on
// goroutines of their own. Shutdown waits for all of them, and for every
// lane's reader, before it returns.
//
// Engine.mu guards the tensors, the declarations and the lifecycle; no I/O
// happens under it (internal/lint checks this). The user's buffer passed to
// PushPull must not be touched until the handle completes.
package core
