package kernel

import (
	"fmt"

	"github.com/gobps/gobps/proto"
)

// Add sets dst[i] += src[i] for every element of dtype dt. dst and src must
// have the same length, a whole number of elements; Add panics otherwise,
// since callers check sizes against the declaration before summing. dst and
// src must not overlap.
func Add(dt proto.DType, dst, src []byte) {
	if len(dst) != len(src) || !dt.Valid() || len(dst)%dt.Size() != 0 {
		panic(fmt.Sprintf("kernel: Add %s over %d and %d bytes", dt, len(dst), len(src)))
	}
	chosen.Current().sum(dt, dst, dst, src)
}

// AddTo sets dst[i] = a[i] + b[i] for every element of dtype dt, with the
// same kernels and the same results as Add. The three slices must have the
// same length, a whole number of elements; AddTo panics otherwise. dst may be
// a or b (AddTo(dt, d, d, s) is Add(dt, d, s)) but must not overlap them
// otherwise.
func AddTo(dt proto.DType, dst, a, b []byte) {
	if len(dst) != len(a) || len(dst) != len(b) || !dt.Valid() || len(dst)%dt.Size() != 0 {
		panic(fmt.Sprintf("kernel: AddTo %s over %d, %d and %d bytes", dt, len(dst), len(a), len(b)))
	}
	chosen.Current().sum(dt, dst, a, b)
}

// maxChunk is the most bytes one call of an assembly kernel sums: tens of
// microseconds. A multiple of every kernel's unit.
const maxChunk = 256 << 10

// sum sets dst = a + b with m's kernel over the longest prefix it takes and
// the scalar code over the rest. Lengths are checked by the caller.
func (m *impl) sum(dt proto.DType, dst, a, b []byte) {
	if len(dst) == 0 {
		return
	}
	k := m.kern[dt]
	n := 0
	if k.fn != nil {
		// INVARIANT: k.unit is a power of two.
		n = len(dst) &^ (k.unit - 1)
		// The assembly cannot be preempted: call it on chunks, so that a
		// long sum does not hold up the garbage collector or the
		// scheduler for milliseconds.
		for off := 0; off < n; off += maxChunk {
			k.fn(&dst[off], &a[off], &b[off], min(maxChunk, n-off))
		}
	}
	if n < len(dst) {
		addGeneric(dt, dst[n:], a[n:], b[n:])
	}
}

// Div divides every element of buf by n in place (averaging). It is defined
// for the floating-point dtypes only. It is scalar code on every platform.
func Div(dt proto.DType, buf []byte, n int) error {
	if !dt.IsFloat() {
		return fmt.Errorf("kernel: cannot average %s: averaging is defined for floating-point types", dt)
	}
	if len(buf)%dt.Size() != 0 {
		return fmt.Errorf("kernel: %d bytes is not a whole number of %s", len(buf), dt)
	}
	if len(buf) == 0 || n == 1 {
		return nil
	}
	switch dt {
	case proto.Float32:
		d, f := as[float32](buf), float32(n)
		for i := range d {
			d[i] /= f
		}
	case proto.Float64:
		d, f := as[float64](buf), float64(n)
		for i := range d {
			d[i] /= f
		}
	case proto.Float16:
		d, f := as[uint16](buf), float32(n)
		for i := range d {
			d[i] = F32ToF16(F16ToF32(d[i]) / f)
		}
	case proto.BFloat16:
		d, f := as[uint16](buf), float32(n)
		for i := range d {
			d[i] = F32ToBF16(BF16ToF32(d[i]) / f)
		}
	}
	return nil
}
