package codec

import (
	"fmt"
	"strings"
	"sync/atomic"
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

var (
	// impls lists the implementations this CPU and build can run, best
	// last (available is in impl_amd64.go and impl_other.go).
	impls = available()
	// current is the implementation in use: the best one, unless SetImpl
	// changed it.
	current atomic.Pointer[impl]
)

func init() { current.Store(impls[len(impls)-1]) }

// Impl names the implementation of onebit's packing and the fp16 and bf16
// casts in use: "avx2" (AVX2 and F16C) or "generic".
func Impl() string { return current.Load().name }

// Impls names the implementations this CPU and build can run, from
// "generic" (always there) to the one chosen at start.
func Impls() []string {
	names := make([]string, len(impls))
	for i, m := range impls {
		names[i] = m.name
	}
	return names
}

// SetImpl makes onebit and the casts use the named implementation, for tests and
// benchmarks, and returns a function that restores the previous one. The
// implementations give the same payloads and tensors bit for bit.
func SetImpl(name string) (restore func(), err error) {
	for _, m := range impls {
		if m.name == name {
			prev := current.Swap(m)
			return func() { current.Store(prev) }, nil
		}
	}
	return nil, fmt.Errorf("codec: implementation %q not available here (have %s)", name, strings.Join(Impls(), ", "))
}
