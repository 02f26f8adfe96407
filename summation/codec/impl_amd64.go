//go:build !noasm && gc

package codec

import (
	"unsafe"

	"golang.org/x/sys/cpu"
)

// The kernels are generated into asm_amd64.s by asmgen (go generate).

var avx2 = &impl{name: "avx2", simd: true}

// available lists the implementations this CPU runs, best last. x/sys/cpu
// reports AVX2 only where the OS saves the YMM registers. (Every CPU with
// AVX2 has F16C, which the fp16 kernels use.)
func available() []*impl {
	if cpu.X86.HasAVX2 && cpu.X86.HasF16C {
		return []*impl{generic, avx2}
	}
	return []*impl{generic}
}

// packSIMD is pack over whole words (len(src) a multiple of 64) with the
// AVX2 kernels.
func packSIMD(words []byte, src []float32, acc *[lanes]float64) {
	if len(src) == 0 {
		return
	}
	_ = words[len(src)/8-1] // bounds: one word per 64 elements
	if acc == nil {
		onebitPackAVX2(&words[0], &src[0], len(src))
		return
	}
	onebitPackSumAVX2(&words[0], &src[0], len(src), acc)
}

// unpackSIMD is unpack over whole words (len(dst) a multiple of 64) with
// the AVX2 kernels.
func unpackSIMD(dst []float32, words []byte, scale uint32, add bool) {
	if len(dst) == 0 {
		return
	}
	_ = words[len(dst)/8-1]
	if add {
		onebitUnpackAddAVX2(unsafe.SliceData(dst), &words[0], len(dst), scale)
		return
	}
	onebitUnpackAVX2(unsafe.SliceData(dst), &words[0], len(dst), scale)
}

// narrowSIMD is narrow over a multiple of 32 elements with AVX2 (F16C for
// FP16).
func narrowSIMD(id ID, dst []byte, src []float32) {
	if len(src) == 0 {
		return
	}
	_ = dst[2*len(src)-1]
	if id == FP16 {
		narrowF16F16C(&dst[0], &src[0], len(src))
		return
	}
	narrowBF16AVX2(&dst[0], &src[0], len(src))
}

// widenSIMD is widen over a multiple of 32 elements with AVX2 (F16C for
// FP16).
func widenSIMD(id ID, dst []float32, src []byte, add bool) {
	if len(dst) == 0 {
		return
	}
	_ = src[2*len(dst)-1]
	switch {
	case id == FP16 && add:
		widenAddF16F16C(&dst[0], &src[0], len(dst))
	case id == FP16:
		widenF16F16C(&dst[0], &src[0], len(dst))
	case add:
		widenAddBF16AVX2(&dst[0], &src[0], len(dst))
	default:
		widenBF16AVX2(&dst[0], &src[0], len(dst))
	}
}
