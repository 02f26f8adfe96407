package gpu

import (
	"context"
	"errors"
)

// ErrNotSupported is wrapped by every error that means "no usable GPU here":
// the CUDA driver or NVML library is missing, no device is present, or the
// binary was built without cgo. Callers test it with errors.Is and run in
// host mode.
var ErrNotSupported = errors.New("gpu: not supported")

// ErrClosed is returned by operations on a closed device, stream, event,
// pool or stager.
var ErrClosed = errors.New("gpu: closed")

// DevPtr is a device memory address, as CUdeviceptr is in the CUDA driver
// API (64 bits on every platform gobps supports). The framework owns device
// memory; gobps only reads and writes it through stream copies.
type DevPtr uintptr

// Priority is a stream's scheduling priority. The copy engines serve work
// from higher-priority streams first, so staging copies are not queued
// behind the framework's own transfers.
type Priority int

const (
	// PriorityDefault is the device's default (lowest) stream priority.
	PriorityDefault Priority = iota
	// PriorityHigh is the device's greatest stream priority.
	PriorityHigh
)

// Device is one GPU (or the fake one). Implementations: gpu/cuda (the CUDA
// driver, loaded at run time) and gpu/fake (host memory, for tests).
//
// Locking: all methods are safe for concurrent use.
type Device interface {
	// Index is the device ordinal.
	Index() int
	// Name is the device's marketing name, e.g. "NVIDIA H100 80GB HBM3".
	Name() string
	// AllocHost allocates n bytes of page-locked (pinned) host memory that
	// the device can copy to and from asynchronously. It fails, rather than
	// silently returning pageable memory, when the memory cannot be locked;
	// Pool turns that failure into its pageable fallback.
	AllocHost(n int) (HostBuffer, error)
	// NewStream creates a stream owned by the caller, who must Close it.
	NewStream(p Priority) (Stream, error)
	// NewEvent creates an event owned by the caller, who must Close it.
	NewEvent() (Event, error)
	// ForeignStream wraps a stream the framework owns, given as its raw
	// handle (PyTorch: torch.cuda.current_stream().cuda_stream; 0 is the
	// legacy default stream), so that events can be recorded on it and it
	// can wait on ours. Closing the wrapper does not destroy the stream.
	ForeignStream(handle uintptr) (Stream, error)
	// Close releases the device. Streams, events and host memory must have
	// been released first.
	Close() error
}

// Stream is an ordered queue of device work, as a CUstream is: operations
// run in the order they were enqueued, asynchronously to the caller.
// Enqueue methods return once the work is queued, not done; an error means
// the work was not queued.
//
// Host memory handed to a copy must stay valid and untouched (by the host)
// until an event recorded after the copy has completed. It must not be Go
// heap memory: use a HostBuffer from Device.AllocHost or AllocPageable.
//
// Locking: a stream may be used from several goroutines; each enqueue is
// atomic, so concurrent enqueues interleave but never tear.
type Stream interface {
	// CopyDtoH enqueues a copy of len(dst) bytes from device address src
	// into dst.
	CopyDtoH(dst []byte, src DevPtr) error
	// CopyHtoD enqueues a copy of src to device address dst.
	CopyHtoD(dst DevPtr, src []byte) error
	// Record enqueues e: e completes when the stream reaches this point.
	// Recording again moves e to the new point (CUDA semantics).
	Record(e Event) error
	// WaitEvent makes all work enqueued later on this stream wait until e,
	// as it was last recorded at the time of this call, has completed. It
	// does not block the caller. Waiting on a never-recorded event is a
	// no-op.
	WaitEvent(e Event) error
	// Synchronize blocks until all work enqueued so far has completed, or
	// ctx is done.
	Synchronize(ctx context.Context) error
	// Close releases the stream; work already enqueued still completes.
	Close() error
}

// Event marks a point in a stream, as a CUevent does.
//
// Locking: safe for concurrent use.
type Event interface {
	// Query reports whether the work before the last Record has completed
	// (true for an event never recorded).
	Query() (done bool, err error)
	// Synchronize blocks until Query would report true, or ctx is done.
	Synchronize(ctx context.Context) error
	// Close releases the event.
	Close() error
}

// HostBuffer is host memory outside the Go heap that device copies may use:
// pinned (page-locked, registered with the driver) or ordinary pageable
// memory. Its owner must call Free exactly once, after every copy using it
// has completed.
type HostBuffer interface {
	// Bytes is the whole buffer. It must not be used after Free.
	Bytes() []byte
	// Pinned reports whether the memory is page-locked for the device.
	Pinned() bool
	// Free releases the memory. A second Free returns an error.
	Free() error
}

// Info describes one GPU as NVML reports it.
type Info struct {
	// Index is the NVML device index (the CUDA ordinal unless
	// CUDA_VISIBLE_DEVICES or CUDA_DEVICE_ORDER reorder them).
	Index int
	// Name is the marketing name.
	Name string
	// MemoryBytes is the total device memory.
	MemoryBytes uint64
	// PCIBusID is the PCI address, "00000000:3B:00.0" as NVML prints it.
	PCIBusID string
	// NUMANode is the host NUMA node closest to the device, -1 if unknown.
	NUMANode int
}
