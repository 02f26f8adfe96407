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

// Read reads the first min(len(a), len(b)) bytes of a and of b, with the
// widest vector loads this CPU has and nothing else, and returns the OR of
// all those bytes (so that the reads have a result). It is the other
// baseline of bpsbench sum: beyond L1, no dst += src can be faster than
// reading its two operands.
func Read(a, b []byte) byte {
	n := min(len(a), len(b))
	a, b = a[:n], b[:n]
	// The kernels are called directly, not through a func value, so that
	// out stays on the stack (they are noescape).
	var out [64]byte
	body := 0
	switch {
	case cpu.X86.HasAVX512F && n >= 256:
		body = n &^ 255
		readAVX512(&a[0], &b[0], body, &out)
	case cpu.X86.HasAVX2 && n >= 128:
		body = n &^ 127
		readAVX2(&a[0], &b[0], body, &out)
	}
	var w uint64
	for i := 0; i < len(out); i += 8 {
		w |= binary.LittleEndian.Uint64(out[i:])
	}
	or := readOR(a[body:], b[body:])
	for ; w != 0; w >>= 8 {
		or |= byte(w)
	}
	return or
}
