// Package gpu is gobps's device layer: GPU discovery, the device, stream,
// event and host-memory interfaces (shaped after the CUDA driver API), the
// pinned staging Pool and the Stager that moves a gradient from device
// memory to host memory and back around the engine's PushPull.
//
// # The GPU path of one gradient
//
// A worker's gradient lives in device memory, written by backprop on the
// framework's stream. The Stager:
//
//  1. records an event on the framework's stream (Begin, called from the
//     framework's thread; it never waits), so nothing reads the gradient
//     before the kernels that write it, enqueued before the call, finish;
//  2. on its own high-priority device-to-host stream, waits for that event,
//     copies the gradient into a staging buffer leased from the Pool and
//     records a "copied" event;
//  3. hands the host bytes out only once "copied" has completed (Host): the
//     engine pushes from them and pulls the sum back into them, in place;
//  4. copies the result to the device on its high-priority host-to-device
//     stream, waits for that copy's event and returns the buffer to the pool
//     (Finish). The engine's handle must complete only after Finish.
//
// Staging buffers are pinned (page-locked) where the driver allows it, so
// copies are asynchronous DMA; where locking fails (the memlock limit) the
// pool falls back to pageable memory and says so once. A tensor is staged
// in one contiguous buffer (Pool leases the smallest that fits): size the
// pool as the Pool documentation says.
//
// # Implementations
//
// gpu/cuda binds the CUDA driver API, loading libcuda.so.1 with dlopen at
// run time, so one binary runs with and without a GPU. gpu/fake is the
// same interface over host memory with real asynchrony (one goroutine per
// stream, events completed by their stream, random copy delays) and poisoned
// buffers, so the whole pipeline is tested without a GPU, including tests
// that fail if staging memory is read before its copy completed. Discover
// uses NVML through github.com/NVIDIA/go-nvml (which needs cgo).
//
// # What has run where
//
// The CUDA path (gpu/cuda) has never been run on a GPU in this project's
// CI: the machines it is built and tested on have no GPU and no CUDA
// driver. There it is compiled, and tested to fail cleanly (Open returns an
// error wrapping ErrNotSupported with the dlopen message), and its cgo
// plumbing (loading, the shims, context handling, error text) runs against
// a stub driver library the tests compile, which copies synchronously and
// models no GPU. Everything else here (the Pool, the Stager and its
// protocol) is tested on the fake device, under the race detector. `make test-gpu` runs the real-GPU tests of
// gpu/cuda where a GPU exists and skips, saying why, where none does.
//
// Staging and device memory are outside the Go heap (mmap'd here, pinned
// by the driver on a GPU), so the race detector does not watch it, exactly
// as it cannot watch DMA on real hardware: early reads are caught by the
// fake's poisoning and its InFlight check, not by -race.
package gpu
