//go:build !amd64 || noasm || !gc

package codec

// available lists the implementations this build runs: without assembly
// (another architecture, gccgo, or the noasm tag), only "generic".
func available() []*impl { return []*impl{generic} }

func packSIMD(words []byte, src []float32, acc *[lanes]float64) { panic("codec: no SIMD kernels") }

func unpackSIMD(dst []float32, words []byte, scale uint32, add bool) {
	panic("codec: no SIMD kernels")
}

func narrowSIMD(id ID, dst []byte, src []float32) { panic("codec: no SIMD kernels") }

func widenSIMD(id ID, dst []float32, src []byte, add bool) { panic("codec: no SIMD kernels") }
