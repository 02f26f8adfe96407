package cuda

import (
	"fmt"

	"github.com/gobps/gobps/gpu"
)

// Driver result codes gobps looks at (CUresult in cuda.h).
const (
	codeSuccess              = 0   // CUDA_SUCCESS
	codeInvalidValue         = 1   // CUDA_ERROR_INVALID_VALUE
	codeNotInitialized       = 3   // CUDA_ERROR_NOT_INITIALIZED
	codeStubLibrary          = 34  // CUDA_ERROR_STUB_LIBRARY
	codeInsufficientDriver   = 35  // CUDA_ERROR_INSUFFICIENT_DRIVER
	codeNoDevice             = 100 // CUDA_ERROR_NO_DEVICE
	codeNotReady             = 600 // CUDA_ERROR_NOT_READY
	codeNotSupported         = 801 // CUDA_ERROR_NOT_SUPPORTED
	codeSystemDriverMismatch = 803 // CUDA_ERROR_SYSTEM_DRIVER_MISMATCH
	codeCompatNotSupported   = 804 // CUDA_ERROR_COMPAT_NOT_SUPPORTED_ON_DEVICE
)

// Error is a failed CUDA driver call, with the driver's own name and
// description of the result (cuGetErrorName, cuGetErrorString).
type Error struct {
	// Op is the driver entry point, e.g. "cuMemcpyDtoHAsync_v2".
	Op string
	// Code is the CUresult.
	Code int
	// Name and Desc are what the driver says about Code, e.g.
	// "CUDA_ERROR_INVALID_VALUE" and "invalid argument".
	Name, Desc string
}

// Error implements error.
func (e *Error) Error() string {
	return fmt.Sprintf("cuda: %s: %s (%d): %s", e.Op, e.Name, e.Code, e.Desc)
}

// Is reports the results that mean "no usable GPU here" as
// gpu.ErrNotSupported, so callers fall back to host mode.
func (e *Error) Is(target error) bool {
	if target != gpu.ErrNotSupported {
		return false
	}
	switch e.Code {
	case codeNotInitialized, codeStubLibrary, codeInsufficientDriver, codeNoDevice,
		codeNotSupported, codeSystemDriverMismatch, codeCompatNotSupported:
		return true
	}
	return false
}
