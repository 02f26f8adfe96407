//go:build !cgo || noverbs

package ibv

import "fmt"

// Built reports whether this binary contains the real binding (it was built
// with cgo and without the noverbs tag).
const Built = false

// Load reports that this binary was built without the verbs binding
// (CGO_ENABLED=0 or -tags noverbs). The emulation (NewEmulator) works
// everywhere.
func Load() (Library, error) {
	return nil, fmt.Errorf("%w: this binary was built without the verbs binding (CGO_ENABLED=0 or -tags noverbs)", ErrNotSupported)
}
