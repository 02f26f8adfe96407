// Package scheduler orders a worker's outgoing gradient traffic: a priority
// queue with a byte credit, in the style of ByteScheduler (BytePS's
// BYTEPS_SCHEDULING_CREDIT).
//
// Queue is a state machine with no goroutines, no locks, no clock and no
// I/O, in the way raft's RawNode is: the caller pushes work in, asks what
// may go next, and reports when it has gone. Everything it decides can be
// replayed step by step, which is what the scenario files in testdata/ do.
//
// # Order
//
// The head of the queue is the queued item with the largest Priority; ties
// go to the smaller Key, and items with equal Priority and Key leave in the
// order they were pushed. The worker engine gives the layer closest to the
// input the largest priority, because the next forward pass needs it first,
// so a gradient pushed late in backprop still overtakes everything queued
// before it.
//
// # Credit
//
// At most Credit() bytes are in flight: handed out by Next and not yet
// returned by Done. The head is handed out only if it fits in what is left
// of the credit, or if nothing at all is in flight, so that an item larger
// than the whole credit still goes, alone, and the queue never deadlocks.
// Scheduling is strict: while the head does not fit, Next hands out nothing,
// not even a smaller item of lower priority that would fit.
//
// # Call protocol
//
//	q := scheduler.New[*task](credit)
//	q.Push(scheduler.Item[*task]{Key: k, Priority: p, Bytes: n, Value: t})
//	for {
//		it, ok := q.Next()
//		if !ok {
//			break // empty, or the head does not fit: call Next again after Done
//		}
//		send(it.Value) // outside the caller's lock if it blocks
//	}
//	// later, when a send has completed:
//	q.Done(it.Bytes) // then call Next again: the head may fit now
//
// Next returns false when the queue is empty or when the head does not fit
// in the credit left; call it again after Done (or after Push, which may
// bring a new head). Done must be given back exactly the Bytes of items that
// Next handed out; returning more than InFlight() is a programmer error and
// panics, as do a non-positive credit in New and a non-positive Bytes in
// Push.
//
// # Locking
//
// A Queue is not safe for concurrent use. The caller (the worker engine)
// owns it under its own mutex and must serialise every call, including the
// read-only Len, InFlight and Credit. Push and Next are O(log n) and do not
// allocate once the queue's backing array has grown to its working size.
package scheduler
