//go:build !noasm && gc

package stream

import (
	"encoding/binary"
	"unsafe"

	"golang.org/x/sys/cpu"
)

// span is the bytes one loop iteration of copyNT moves.
const span = 128

var useNT = cpu.X86.HasAVX2

// Copy copies min(len(dst), len(src)) bytes from src to dst and returns that
// number, as copy does. dst and src must not overlap.
func Copy(dst, src []byte) int {
	n := min(len(dst), len(src))
	if !useNT || n < 4*span {
		return copy(dst, src)
	}
	// VMOVNTDQ needs a 32-byte aligned destination.
	head := int(-uintptr(unsafe.Pointer(unsafe.SliceData(dst))) & 31)
	copy(dst[:head], src[:head])
	body := (n - head) &^ (span - 1)
	copyNT(&dst[head], &src[head], body)
	copy(dst[head+body:n], src[head+body:n])
	return n
}

// readSpan is the bytes of each buffer one iteration of the widest read
// kernel this CPU runs reads, or 0 without AVX2.
var readSpan = func() int {
	switch {
	case cpu.X86.HasAVX512F:
		return 256
	case cpu.X86.HasAVX2:
		return 128
	}
	return 0
}()

// Read reads the first min(len(a), len(b)) bytes of a and of b, with the
// widest vector loads this CPU has and nothing else, and returns the OR of
// all those bytes (so that the reads have a result). It is the other
// baseline of bpsbench sum: no dst += src can be faster than reading its
// two operands.
func Read(a, b []byte) byte {
	n := min(len(a), len(b))
	a, b = a[:n], b[:n]
	var or byte
	if readSpan != 0 && n >= readSpan {
		body := n &^ (readSpan - 1)
		var out [64]byte // called directly, not through a func value, it stays on the stack
		if readSpan == 256 {
			readAVX512(&a[0], &b[0], body, &out)
		} else {
			readAVX2(&a[0], &b[0], body, &out)
		}
		var w uint64
		for i := 0; i < len(out); i += 8 {
			w |= binary.LittleEndian.Uint64(out[i:])
		}
		for ; w != 0; w >>= 8 {
			or |= byte(w)
		}
		a, b = a[body:], b[body:]
	}
	return or | readOR(a, b)
}
