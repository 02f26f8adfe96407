package kernel

import (
	"math"
	"testing"
)

// The float16 conversions as first written, field by field: the reference
// for the faster ones in half.go. They were checked against the F16C
// instructions (through the kernels) before those replaced them.

// f16ToF32Ref widens an IEEE 754 half to float32 (exact).
func f16ToF32Ref(h uint16) float32 {
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

// f32ToF16Ref rounds a float32 to IEEE 754 half, to nearest even, as the
// F16C instruction VCVTPS2PH with rounding mode 0 does.
func f32ToF16Ref(f float32) uint16 {
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

// TestF16ConversionsMatchReference checks F16ToF32 on every half and
// F32ToF16 on every 13th float32 bit pattern (every 1021st with -short;
// all 2^32 were checked once, in 16 s) and on every pattern near the
// rounding boundaries, against the reference code.
func TestF16ConversionsMatchReference(t *testing.T) {
	for h := range 1 << 16 {
		got, want := F16ToF32(uint16(h)), f16ToF32Ref(uint16(h))
		if math.Float32bits(got) != math.Float32bits(want) {
			t.Fatalf("F16ToF32(%#04x) = %#08x, reference %#08x", h, math.Float32bits(got), math.Float32bits(want))
		}
	}
	check := func(b uint32) {
		f := math.Float32frombits(b)
		if got, want := F32ToF16(f), f32ToF16Ref(f); got != want {
			t.Fatalf("F32ToF16(%#08x) = %#04x, reference %#04x", b, got, want)
		}
	}
	stride := uint64(13)
	if testing.Short() {
		stride = 1021
	}
	for b := uint64(0); b < 1<<32; b += stride {
		check(uint32(b))
	}
	// Near every half, in both signs: the ties and their neighbours, and
	// the float32 values on either side of each half's rounding interval.
	for h := range 1 << 15 {
		b := math.Float32bits(f16ToF32Ref(uint16(h)))
		for _, d := range []uint32{0, 1, 0xfff, 0x1000, 0x1001, 0x1fff} {
			for _, s := range []uint32{0, 1 << 31} {
				check(s | b + d)
				check(s | b - d)
			}
		}
	}
}
