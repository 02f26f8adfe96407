//go:build !cgo || !linux

package cuda

import (
	"fmt"

	"github.com/gobps/gobps/gpu"
)

// cgoBuild says this is the stub (for tests shared with the real binding).
const cgoBuild = false

// Open would load the CUDA driver, but this binary was built without cgo
// (or not for Linux), so it always returns an error wrapping
// gpu.ErrNotSupported.
func Open(index int) (gpu.Device, error) {
	return nil, fmt.Errorf("%w: cuda: gobps was built without cgo (CGO_ENABLED=0) or not for Linux, so it cannot load libcuda.so.1", gpu.ErrNotSupported)
}
