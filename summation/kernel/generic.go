package kernel

import (
	"unsafe"

	"github.com/gobps/gobps/proto"
)

// This file is the scalar code: the whole "generic" implementation, the
// tails the SIMD kernels leave, and the reference the tests compare every
// kernel with.

// addGeneric sets d = a + b over elements of dt, one at a time. The slices
// have the same length, a whole number of elements, and d overlaps a or b
// only by being the same slice.
func addGeneric(dt proto.DType, d, a, b []byte) {
	if sz := dt.Size(); sz > 1 && !(aligned(d, sz) && aligned(a, sz) && aligned(b, sz)) {
		addBounced(dt, d, a, b)
		return
	}
	switch dt {
	case proto.Float32:
		addToT(as[float32](d), as[float32](a), as[float32](b))
	case proto.Float64:
		addToT(as[float64](d), as[float64](a), as[float64](b))
	case proto.Int32:
		addToT(as[int32](d), as[int32](a), as[int32](b))
	case proto.Int64:
		addToT(as[int64](d), as[int64](a), as[int64](b))
	case proto.Uint8:
		addToT(d, a, b)
	case proto.Float16:
		d, a, b := as[uint16](d), as[uint16](a), as[uint16](b)
		a, b = a[:len(d)], b[:len(d)]
		for i := range d {
			d[i] = F32ToF16(F16ToF32(a[i]) + F16ToF32(b[i]))
		}
	case proto.BFloat16:
		d, a, b := as[uint16](d), as[uint16](a), as[uint16](b)
		a, b = a[:len(d)], b[:len(d)]
		for i := range d {
			d[i] = F32ToBF16(BF16ToF32(a[i]) + BF16ToF32(b[i]))
		}
	default:
		panic("kernel: sum of " + dt.String())
	}
}

// addBounced is addGeneric for slices that are not aligned to their element
// size. Such slices are legal (the server never passes them, but a caller
// may sum a view at any byte offset) and x86 would load them unaligned, but
// converting their address to *float32 trips checkptr (go test -race, -d
// checkptr), so the elements go through small aligned buffers instead.
func addBounced(dt proto.DType, d, a, b []byte) {
	const chunk = 256
	var bd, ba, bb [chunk / 8]uint64 // uint64 for alignment
	pd := unsafe.Slice((*byte)(unsafe.Pointer(&bd)), chunk)
	pa := unsafe.Slice((*byte)(unsafe.Pointer(&ba)), chunk)
	pb := unsafe.Slice((*byte)(unsafe.Pointer(&bb)), chunk)
	for len(d) > 0 {
		n := min(len(d), chunk) // chunk is a multiple of every element size
		copy(pa, a[:n])
		copy(pb, b[:n])
		addGeneric(dt, pd[:n], pa[:n], pb[:n])
		copy(d[:n], pd[:n])
		d, a, b = d[n:], a[n:], b[n:]
	}
}

func aligned(b []byte, size int) bool {
	return uintptr(unsafe.Pointer(unsafe.SliceData(b)))%uintptr(size) == 0
}

type number interface {
	~float32 | ~float64 | ~int32 | ~int64 | ~uint8
}

func addToT[T number](d, a, b []T) {
	a, b = a[:len(d)], b[:len(d)]
	for i := range d {
		d[i] = a[i] + b[i]
	}
}

// as views b as a slice of T. b's length must be a multiple of T's size and
// its address aligned for T (addGeneric checks; Div assumes it: Go's
// allocator aligns every buffer gobps sums to at least 8 bytes, and
// partitions start at page multiples).
func as[T any](b []byte) []T {
	var z T
	return unsafe.Slice((*T)(unsafe.Pointer(unsafe.SliceData(b))), len(b)/int(unsafe.Sizeof(z)))
}
