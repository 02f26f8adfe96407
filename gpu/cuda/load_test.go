//go:build cgo && linux

package cuda

import (
	"errors"
	"strings"
	"testing"

	"github.com/gobps/gobps/gpu"
)

// TestLoadMissingSymbol loads a library that exists but is not the CUDA
// driver: resolution must fail cleanly, naming the missing entry point.
func TestLoadMissingSymbol(t *testing.T) {
	err := loadLib("libc.so.6")
	if err == nil {
		t.Fatal("loading libc as the CUDA driver succeeded")
	}
	if !errors.Is(err, gpu.ErrNotSupported) || !strings.Contains(err.Error(), "cuInit") {
		t.Fatalf("loadLib(libc.so.6) = %v: want ErrNotSupported naming cuInit", err)
	}
	err = loadLib("/nonexistent/libcuda.so.1")
	if !errors.Is(err, gpu.ErrNotSupported) || !strings.Contains(err.Error(), "No such file") {
		t.Fatalf("loadLib(missing path) = %v", err)
	}
}
