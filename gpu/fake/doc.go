// Package fake is a fake GPU for tests: an implementation of gpu.Device over
// host memory with the asynchronous semantics of the CUDA driver API.
//
//   - Device memory is anonymous mapped memory behind fake DevPtr addresses
//     (Malloc, Free, and the synchronous Write and Read test helpers);
//     copies check that their device range lies in one live allocation.
//   - A stream is an ordered queue run by its own goroutine: work runs in
//     enqueue order, asynchronously to the caller.
//   - Record binds an event to the stream's current end; the event completes
//     when the stream gets there. WaitEvent binds to the event's latest
//     Record at the time of the call, as cuStreamWaitEvent does; waiting on
//     a never-recorded event is a no-op; Query of one reports done.
//   - Copies sleep a configurable delay plus seeded random jitter before
//     moving bytes. A device-to-host copy poisons its host destination when
//     enqueued and a host-to-device copy poisons its device destination
//     when it starts, so a read before the copy's event completed sees
//     gpu.Poison (NaNs). InFlight reports whether pending copies use some
//     host memory.
//   - NewFrameworkStream stands for the framework's stream: Launch and
//     WriteAfter enqueue simulated kernels (a gradient written late), and
//     ForeignStream(stream.Handle()) wraps it as the framework's raw handle
//     would be.
//   - AllocHost hands out "pinned" memory up to Options.MemlockBytes, so the
//     pool's pageable fallback can be exercised.
//
// Close stops every stream goroutine; tests check that none outlives it.
package fake
