// Package lifecycle is the life of a worker's partitions, from PushPull to
// the completion of its handle, as a state machine with no I/O, no
// goroutines, no locks and no clock, in the way raft's RawNode and the
// project's scheduler.Queue and summation.Rounds are: the engine feeds it
// events (a PushPull started, a send returned, a piece of an answer came,
// a server failed, the engine is stopping, ...) and carries out the
// effects it returns (send this partition, copy into shared memory,
// complete that handle, ...). Everything it decides can be replayed step
// by step, which is what the scenario files in testdata/ do.
//
// # Ops, tasks and stages
//
// An Op is one PushPull or Broadcast: one handle. It has a Task per
// partition. A task goes through the stages its op asks for, in order:
//
//	staging in     the op's buffer is a staging buffer (GPU memory staged
//	               through pinned host memory): every task waits for the
//	               op's StagedIn
//	local          local aggregation: rounds of one key go through shared
//	               memory strictly in order; LocalIn copies the partition
//	               into shared memory; the key's owner then Reduces the
//	               machine's contributions and goes on to the wire with the
//	               sum, the other local ranks wait for its Result
//	wire           queued in the priority and credit queue (scheduler),
//	               dispatched (a request id, credit taken: Send), sent
//	               (the credit comes back when the Send returned, not when
//	               the answer did), answered in one piece or several
//	divide         Average: the answer is divided by the number of workers
//	local out      the owner Publishes the sum; every local rank copies
//	               the result out (LocalOut, which divides for Average)
//	staging out    once every task of the op is finished: StageOut copies
//	               the result back (or aborts the staging after a failure)
//
// and the op's handle completes (Complete) once every task has finished and
// staging out, if any, has returned.
//
// # Busy tasks and failures
//
// While the engine carries out an effect that reads or writes a task's
// buffer (a Send, the reading of an answer's piece, a copy into or out of
// shared memory, a wait on a local round, a division), the task is busy.
// A failure that reaches a busy task (its server failed, the engine is
// stopping, a sibling failed) is kept and applied when the effect returns;
// for a wait that may never return by itself (a local Reduce or Result
// wait) the machine asks the engine to Cancel it. So a task never finishes,
// and a handle never completes, while anything still touches its buffer,
// and nothing touches a buffer after its handle has completed: a late
// answer's piece finds its request gone (AnswerDest refuses it), and a
// dispatched task that finished before its lane got to it is skipped
// (Sending returns false).
//
// When one task of an op fails, its siblings that are not busy finish at
// once with ErrAbandoned and the busy ones when their effect returns, so
// the handle fails without waiting for partitions that may never complete.
// Local aggregation is the exception: every local rank must take part in
// every round of every key, or the others would wait for it forever, so
// the siblings of a failed local task run their rounds to the end. When
// the owner of a local round cannot push and pull (it failed after its
// Reduce), the machine asks for LocalAbort, which fails the group with the
// reason instead of leaving the other ranks waiting for a Publish.
//
// # Call protocol
//
//	m := lifecycle.New(lifecycle.Config{Credit: credit, Servers: k})
//	op := m.Start(spec)          // under the engine's lock
//	effs := m.Effects()          // still under the lock: take the effects
//	// unlock, then carry each effect out; report its result as an event
//	// (Sent, AnswerIn, Reduced, ...) under the lock again, and so on.
//
// Effects are returned in the order they must be carried out. Events about
// a task that has already finished are ignored, except those that report
// the end of an effect the task was busy with.
//
// # Locking
//
// None inside: the engine serialises every call under its own mutex.
package lifecycle
