package kernel

import (
	"fmt"
	"math"
	"unsafe"

	"github.com/gobps/gobps/core/proto"
)

// Add sets dst[i] += src[i] for every element of dtype dt. dst and src must
// have the same length, a whole number of elements; Add panics otherwise,
// since callers check sizes against the declaration before summing.
func Add(dt proto.DType, dst, src []byte) {
	if len(dst) != len(src) || len(dst)%dt.Size() != 0 {
		panic(fmt.Sprintf("kernel: Add %s over %d and %d bytes", dt, len(dst), len(src)))
	}
	if len(dst) == 0 {
		return
	}
	switch dt {
	case proto.Float32:
		addT(as[float32](dst), as[float32](src))
	case proto.Float64:
		addT(as[float64](dst), as[float64](src))
	case proto.Int32:
		addT(as[int32](dst), as[int32](src))
	case proto.Int64:
		addT(as[int64](dst), as[int64](src))
	case proto.Uint8:
		addT(dst, src)
	case proto.Float16:
		d, s := as[uint16](dst), as[uint16](src)
		for i := range d {
			d[i] = F32ToF16(F16ToF32(d[i]) + F16ToF32(s[i]))
		}
	case proto.BFloat16:
		d, s := as[uint16](dst), as[uint16](src)
		for i := range d {
			d[i] = F32ToBF16(BF16ToF32(d[i]) + BF16ToF32(s[i]))
		}
	default:
		panic(fmt.Sprintf("kernel: Add of %s", dt))
	}
}

// Div divides every element of buf by n in place (averaging). It is defined
// for the floating-point dtypes only.
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

type number interface {
	~float32 | ~float64 | ~int32 | ~int64 | ~uint8
}

func addT[T number](d, s []T) {
	s = s[:len(d)]
	for i := range d {
		d[i] += s[i]
	}
}

// as views b as a slice of T. b's length must be a multiple of T's size.
// Go's allocator aligns every buffer gobps sums to at least 8 bytes, and
// partitions start at page multiples, so the view is aligned.
func as[T any](b []byte) []T {
	var z T
	return unsafe.Slice((*T)(unsafe.Pointer(unsafe.SliceData(b))), len(b)/int(unsafe.Sizeof(z)))
}

// BF16ToF32 widens a bfloat16 to float32 (exact).
func BF16ToF32(h uint16) float32 { return math.Float32frombits(uint32(h) << 16) }

// F32ToBF16 rounds a float32 to bfloat16, to nearest even; NaN stays NaN.
func F32ToBF16(f float32) uint16 {
	b := math.Float32bits(f)
	if b&0x7fffffff > 0x7f800000 { // NaN: keep it quiet and a NaN
		return uint16(b>>16) | 0x40
	}
	b += 0x7fff + (b>>16)&1
	return uint16(b >> 16)
}

// F16ToF32 widens an IEEE 754 half to float32 (exact).
func F16ToF32(h uint16) float32 {
	sign := uint32(h&0x8000) << 16
	exp := uint32(h>>10) & 0x1f
	man := uint32(h & 0x3ff)
	switch {
	case exp == 0x1f: // inf or NaN
		return math.Float32frombits(sign | 0x7f800000 | man<<13)
	case exp != 0: // normal
		return math.Float32frombits(sign | (exp+112)<<23 | man<<13)
	case man == 0: // zero
		return math.Float32frombits(sign)
	default: // subnormal: value = man * 2^-24
		f := float32(man) * (1.0 / (1 << 24))
		if sign != 0 {
			f = -f
		}
		return f
	}
}

// F32ToF16 rounds a float32 to IEEE 754 half, to nearest even, as the
// F16C instruction VCVTPS2PH with rounding mode 0 does.
func F32ToF16(f float32) uint16 {
	b := math.Float32bits(f)
	sign := uint16(b>>16) & 0x8000
	exp := int32(b>>23) & 0xff
	man := b & 0x7fffff
	if exp == 0xff {
		if man != 0 {
			return sign | 0x7e00 | uint16(man>>13) // quiet NaN, payload kept
		}
		return sign | 0x7c00
	}
	e := exp - 127 + 15
	if e >= 0x1f {
		return sign | 0x7c00 // overflow to inf
	}
	if e <= 0 {
		if e < -10 {
			return sign // underflow to zero
		}
		// subnormal: shift the mantissa with its implicit one
		m := man | 0x800000
		shift := uint32(14 - e)
		half := uint32(1) << (shift - 1)
		r := m >> shift
		rem := m & (1<<shift - 1)
		if rem > half || (rem == half && r&1 == 1) {
			r++
		}
		return sign | uint16(r)
	}
	r := uint32(e)<<10 | man>>13
	rem := man & 0x1fff
	if rem > 0x1000 || (rem == 0x1000 && r&1 == 1) {
		r++ // may carry into the exponent, up to inf: correct
	}
	return sign | uint16(r)
}
