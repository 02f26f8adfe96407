package cuda

import (
	"errors"
	"strings"
	"testing"

	"github.com/gobps/gobps/gpu"
)

// TestOpenWithoutGPU: on a machine without the CUDA driver (this project's
// CI) Open must fail cleanly with gpu.ErrNotSupported, carrying the dlopen
// message, and never crash.
func TestOpenWithoutGPU(t *testing.T) {
	dev, err := Open(0)
	if err == nil {
		t.Cleanup(func() { _ = dev.Close() })
		t.Skipf("a CUDA device is present (%s): the no-GPU path cannot be tested here", dev.Name())
	}
	if !errors.Is(err, gpu.ErrNotSupported) {
		t.Fatalf("Open = %v: want an error wrapping gpu.ErrNotSupported", err)
	}
	if dev != nil {
		t.Fatalf("Open returned a device (%T) with its error", dev)
	}
	var cuErr *Error
	switch {
	case !cgoBuild:
		if !strings.Contains(err.Error(), "CGO_ENABLED=0") {
			t.Fatalf("stub Open = %v: want it to say cgo is off", err)
		}
	case errors.As(err, &cuErr):
		// libcuda.so.1 is installed but has no usable device or driver.
		t.Logf("driver present, no usable device: %v", err)
	default:
		const want = "gpu: not supported: cuda: dlopen libcuda.so.1: libcuda.so.1: cannot open shared object file: No such file or directory"
		if err.Error() != want {
			t.Fatalf("Open = %q\nwant %q", err, want)
		}
	}
	// The failure is remembered, not retried (and not a crash) the second time.
	if _, err2 := Open(0); err2 == nil || err2.Error() != err.Error() {
		t.Fatalf("second Open = %v, want the same error", err2)
	}
}
