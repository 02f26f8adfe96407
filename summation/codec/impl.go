package codec

import (
	"github.com/gobps/gobps/summation/kernel"
)

// impl is one implementation of onebit's bit packing and the fp16 cast: the
// Go code, or the Go code for tails and packSIMD, unpackSIMD, narrowSIMD
// and widenSIMD (impl_amd64.go) for whole vectors. (Direct calls rather than function values, so that the partial
// sums passed to the assembly can stay on the stack.)
type impl struct {
	name string
	simd bool
}

// generic is the pure-Go implementation, available everywhere.
var generic = &impl{name: "generic"}

// impls are the implementations this CPU and build can run, best last
// (available is in impl_amd64.go and impl_other.go); the best is in use unless SetImpl chose
// another.
var (
	impls  = available()
	chosen = kernel.NewDispatch("codec", impls, func(m *impl) string { return m.name })
)

// Impl names the implementation of onebit's packing and the fp16 and bf16
// casts in use: "avx2" (AVX2 and F16C) or "generic".
func Impl() string { return chosen.Name() }

// Impls names the implementations this CPU and build can run, from
// "generic" (always there) to the one chosen at start.
func Impls() []string { return chosen.Names() }

// SetImpl makes onebit and the casts use the named implementation, for tests and
// benchmarks, and returns a function that restores the previous one. The
// implementations give the same payloads and tensors bit for bit.
func SetImpl(name string) (restore func(), err error) { return chosen.Use(name) }
