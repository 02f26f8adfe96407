//go:build !noasm && gc

package stream

import (
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
