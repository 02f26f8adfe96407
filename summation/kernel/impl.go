package kernel

import (
	"github.com/gobps/gobps/proto"
)

// impl is one implementation of the sum kernels: a SIMD kernel per dtype,
// or none (the scalar code does it all).
type impl struct {
	name string
	kern [numDTypes]kern
}

// kern is the kernel of one dtype.
type kern struct {
	// fn sets dst = a + b over n bytes, n a multiple of unit; nil means the
	// scalar code does every element.
	fn func(dst, a, b *byte, n int)
	// unit is the input bytes one vector step consumes, a power of two.
	unit int
}

// numDTypes bounds the dtype values, for arrays indexed by proto.DType.
const numDTypes = 16

func init() {
	for _, dt := range proto.AllDTypes() {
		if int(dt) >= numDTypes {
			panic("kernel: numDTypes too small for " + dt.String())
		}
	}
}

// generic is the pure-Go implementation, available everywhere.
var generic = &impl{name: "generic"}

// impls are the implementations this CPU and build can run, best last
// (available is in simd_amd64.go and simd_other.go); the best is in use unless SetImpl chose
// another.
var (
	impls  = available()
	chosen = NewDispatch("kernel", impls, func(m *impl) string { return m.name })
)

// Impl names the implementation in use: "avx512fp16", "avx512", "avx2" or
// "generic".
func Impl() string { return chosen.Name() }

// Impls names the implementations this CPU and build can run, from the
// slowest ("generic", always there) to the one chosen at start.
func Impls() []string { return chosen.Names() }

// SetImpl makes Add and AddTo use the named implementation, for tests and
// benchmarks, and returns a function that restores the previous one. It
// returns an error if this CPU or build cannot run it (the noasm build runs
// only "generic"). Calls of Add running at the same time use either
// implementation; results are the same up to which payload a sum of two NaNs
// carries.
func SetImpl(name string) (restore func(), err error) { return chosen.Use(name) }
