//go:build !noasm && gc

package kernel

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"testing"

	"github.com/gobps/gobps/proto"
)

// TestF16FP16AllPairs adds every pair of float16 values, 2^32 of them, with
// the AVX512-FP16 kernel (VADDPH, rounding once) and with the F16C kernel
// (float32 sum rounded to float16), and requires the same bits, NaNs
// included: asmgen's f16fp16 explains why they cannot differ. Every 251st
// first operand also goes through the scalar code. About a second; with
// -short (the race run, where it is ten times slower), every 7th first
// operand.
func TestF16FP16AllPairs(t *testing.T) {
	if !hasAVX512FP16() || avx512fp16 != impls[len(impls)-1] {
		t.Skip("the avx512fp16 kernels do not run here: the CPU lacks AVX512-FP16, or AVX-512 itself")
	}
	const n = 2 << 16 // bytes: every float16 value once
	b := make([]byte, n)
	for i := range 1 << 16 {
		binary.LittleEndian.PutUint16(b[2*i:], uint16(i))
	}
	a := make([]byte, n)
	got, want, scalar := make([]byte, n), make([]byte, n), make([]byte, n)
	step := 1
	if testing.Short() {
		step = 7
	}
	for x := 0; x < 1<<16; x += step {
		binary.LittleEndian.PutUint16(a, uint16(x))
		for k := 2; k < n; k *= 2 {
			copy(a[k:], a[:k])
		}
		avx512fp16.sum(proto.Float16, got, a, b)
		avx512.sum(proto.Float16, want, a, b)
		if !bytes.Equal(got, want) {
			compareExact(t, fmt.Sprintf("%#04x + every value", x), got, want, a, b)
		}
		if x%(251*step) == 0 {
			addGeneric(proto.Float16, scalar, a, b)
			compare(t, fmt.Sprintf("avx512fp16 %#04x + every value, against the scalar code", x), proto.Float16, got, scalar, a, b)
		}
	}
}

// compareExact fails at the first float16 element where got and want differ.
func compareExact(t *testing.T, what string, got, want, a, b []byte) {
	t.Helper()
	for i := 0; i < len(got); i += 2 {
		if got[i] != want[i] || got[i+1] != want[i+1] {
			t.Fatalf("%s: %x + %x = %x with VADDPH, %x through float32", what, a[i:i+2], b[i:i+2], got[i:i+2], want[i:i+2])
		}
	}
}
