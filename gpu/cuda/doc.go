// Package cuda binds the few CUDA driver API calls gobps needs, loading
// libcuda.so.1 with dlopen at run time the way github.com/NVIDIA/go-nvml
// loads NVML, so that one binary runs with and without a GPU. The C
// prototypes are written by hand (no cuda.h is needed to build) and every
// driver call goes through a small C shim that makes the device's primary
// context current for the duration of the call and restores the thread's
// previous one.
//
// Calls used: cuInit, cuDeviceGetCount, cuDeviceGet, cuDeviceGetName,
// cuDevicePrimaryCtxRetain, cuDevicePrimaryCtxRelease_v2, cuCtxGetCurrent,
// cuCtxSetCurrent, cuCtxGetStreamPriorityRange, cuMemHostRegister_v2,
// cuMemHostUnregister, cuMemAlloc_v2 and cuMemFree_v2 (tests only),
// cuMemcpyDtoHAsync_v2, cuMemcpyHtoDAsync_v2, cuStreamCreateWithPriority,
// cuStreamWaitEvent, cuStreamQuery, cuStreamDestroy_v2, cuEventCreate,
// cuEventRecord, cuEventQuery, cuEventDestroy_v2, cuGetErrorName and
// cuGetErrorString. Waits poll cuEventQuery/cuStreamQuery under a context
// instead of calling cuEventSynchronize, so a wedged device cannot hang a
// caller forever. Pinned staging memory is anonymous mapped memory
// registered with cuMemHostRegister (not cuMemHostAlloc), so that the same
// memory can fall back to being plain pageable memory.
//
// This package has never been run on a GPU in this project's CI: the
// machines it is built and tested on have no GPU and no CUDA driver. There,
// Open returns an error wrapping gpu.ErrNotSupported with the dlopen message
// ("libcuda.so.1: cannot open shared object file: No such file or
// directory"), and the real-GPU tests (TestGPU*, run by `make test-gpu`)
// skip saying so. What does run there is the binding's plumbing against a
// stub driver (testdata/stubcuda.c, compiled by the tests into a
// libcuda.so.1 over host memory): dlopen and dlsym of every entry point,
// the cgo shims, the context made current for each call and restored
// after it (the stub fails calls without it), polling through
// CUDA_ERROR_NOT_READY, the driver's error text, and the Stager over it
// from many threads. The stub copies synchronously and is no model of a
// GPU. Built with CGO_ENABLED=0, Open always returns gpu.ErrNotSupported.
//
// gorgonia.org/cu is deliberately not used: it includes cuda.h and links
// the driver at build time, and its package init calls cuInit and panics
// when that fails, ending any process that imports it on a machine without
// a driver.
package cuda
