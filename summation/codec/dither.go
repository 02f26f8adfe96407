package codec

import (
	"encoding/binary"
	"math"
	"math/bits"
)

// MaxLevels bounds dithering's s: 255 for the linear partition (a level
// code fits 8 bits), 32 for the natural one (levels down to 2^-31).
const (
	MaxLevels        = 255
	MaxNaturalLevels = 32
)

// dither is the dithering codec: stochastic quantisation of |x|/scale to
// one of s+1 levels, unbiased (the expected decompressed value is x).
type dither struct {
	s       int  // levels, 1..MaxLevels (MaxNaturalLevels if natural)
	natural bool // levels 0, 2^-(s-1), ..., 1/2, 1 instead of 0, 1/s, ..., 1
	l2      bool // scale is the L2 norm instead of max |x|
	seed    uint64
}

// ditherWidth is the bits of one element's code: a sign bit above a level
// from 0 to s.
func ditherWidth(s int) uint { return 1 + uint(bits.Len(uint(s))) }

// ditherSize is the size of a dithering payload of n elements with s levels:
// the header, the scale, and the codes packed into 64-bit words.
func ditherSize(n, s int) int {
	return headerSize + 4 + 8*((n*int(ditherWidth(s))+63)/64)
}

func (dither) ID() ID              { return Dithering }
func (c dither) MaxSize(n int) int { return ditherSize(n, c.s) }

func (c dither) flags() byte {
	var f byte
	if c.natural {
		f |= 1
	}
	if c.l2 {
		f |= 2
	}
	return f
}

// ditherScale is the scale of src: max |x|, or the L2 norm (a float64 sum of
// squares in four partial sums, element i into sum i mod 4, added as (s0 +
// s1) + (s2 + s3)), rounded to float32; the canonical NaN if it is not
// finite.
func ditherScale(src []float32, l2 bool) float32 {
	var scale float32
	if l2 {
		var s [4]float64
		i := 0
		for ; i+4 <= len(src); i += 4 {
			v := src[i : i+4 : i+4]
			a, b, c, d := float64(v[0]), float64(v[1]), float64(v[2]), float64(v[3])
			s[0] += a * a
			s[1] += b * b
			s[2] += c * c
			s[3] += d * d
		}
		for ; i < len(src); i++ {
			a := float64(src[i])
			s[i%4] += a * a
		}
		scale = float32(math.Sqrt((s[0] + s[1]) + (s[2] + s[3])))
	} else {
		var m uint32
		for _, x := range src {
			m = max(m, magKey(x))
		}
		scale = math.Float32frombits(m)
	}
	if math.IsNaN(float64(scale)) || math.IsInf(float64(scale), 0) {
		return math.Float32frombits(canonicalNaN)
	}
	return scale
}

func (c dither) Compress(dst []byte, src []float32, at Step) ([]byte, error) {
	n := len(src)
	if err := checkCompress(Dithering, dst, n, 0); err != nil {
		return nil, err
	}
	size := ditherSize(n, c.s)
	if err := checkCompress(Dithering, dst, n, size); err != nil {
		return nil, err
	}
	dst = dst[:size]
	putHeader(dst, Dithering, c.flags(), byte(c.s), n)
	scale := ditherScale(src, c.l2)
	putF32(dst[headerSize:], scale)
	words := dst[headerSize+4:]
	if scale == 0 || scale != scale {
		// All zeros, or not finite: every code 0 (a NaN scale makes every
		// element decompress to NaN).
		clear(words)
		return dst, nil
	}
	w := ditherWidth(c.s)
	signShift := w - 1
	r := splitmix{streamSeed(c.seed, at)}
	s := uint32(c.s)
	var mul float64
	if c.natural {
		mul = float64(uint64(1)<<(c.s-1)) / float64(scale)
	} else {
		mul = float64(c.s) / float64(scale)
	}
	var acc uint64
	var nb uint
	wi := 0
	rs := r.s // the generator's state in a register
	for _, x := range src {
		u := float64(math.Float32frombits(magKey(x))) * mul
		var level uint32
		var p float64 // the probability of going one level up
		if c.natural {
			level, p = naturalFloor(u, s)
		} else {
			level, p = linearFloor(u, s)
		}
		if p > 0 {
			rs += golden
			level += b2u(float64(int64(mix64(rs)>>11))*0x1p-53 < p)
		}
		code := uint64(level) | uint64(math.Float32bits(x)>>31)<<signShift
		acc |= code << nb
		nb += w
		if nb >= 64 {
			binary.LittleEndian.PutUint64(words[8*wi:], acc)
			wi++
			nb -= 64
			acc = code >> (w - nb) // the bits that did not fit; 0 if none
		}
	}
	if nb > 0 {
		binary.LittleEndian.PutUint64(words[8*wi:], acc)
	}
	return dst, nil
}

// b2u is 1 for true and 0 for false; the compiler makes it a SETcc, which
// saves the mispredicted branch of a coin flip per element.
func b2u(b bool) uint32 {
	if b {
		return 1
	}
	return 0
}

// The level an element goes to is its floor level, or the next one up with
// probability p: one draw u01 per element with p > 0, the top 53 bits of a
// SplitMix64 output scaled to [0, 1), and up if u01 < p.

// linearFloor returns, for u in [0, s] (a little more by rounding), floor(u)
// and u - floor(u); s and 0 at or above s.
func linearFloor(u float64, s uint32) (uint32, float64) {
	l := uint32(u)
	if l >= s {
		return s, 0
	}
	return l, u - float64(l)
}

// naturalFloor returns, for u in [0, 2^(s-1)], the code of the level at or
// below u among 0, 1, 2, 4, ..., 2^(s-1) (0 for 0, j for 2^(j-1)) and the
// probability (u-lo)/(hi-lo) of going up to the next one.
func naturalFloor(u float64, s uint32) (uint32, float64) {
	if u >= float64(uint64(1)<<(s-1)) {
		return s, 0
	}
	if u < 1 {
		return 0, u
	}
	e := uint32(math.Float64bits(u)>>52&0x7ff) - 1023                // 2^e <= u < 2^(e+1)
	p := math.Float64frombits(math.Float64bits(u)-uint64(e)<<52) - 1 // u/2^e - 1, exact
	return e + 1, p
}

// ditherLevels returns the decompressed magnitudes of the codes 0 to s:
// scale·l/s (linear) or scale·2^(l-1)/2^(s-1) (natural), computed in float64
// and rounded to float32 once; all the canonical NaN if scale is a NaN.
func ditherLevels(scale float32, s int, natural bool) []float32 {
	lv := make([]float32, s+1)
	if scale != scale {
		for l := range lv {
			lv[l] = math.Float32frombits(canonicalNaN)
		}
		return lv
	}
	for l := range lv {
		var v float64
		switch {
		case !natural:
			v = float64(scale) * float64(l) / float64(s)
		case l > 0:
			v = float64(scale) * float64(uint64(1)<<(l-1)) / float64(uint64(1)<<(s-1))
		}
		lv[l] = float32(v)
	}
	return lv
}

func (dither) Decompress(dst []float32, payload []byte) error {
	return ditherDecode(dst, payload, false)
}

func (dither) DecompressAdd(dst []float32, payload []byte) error {
	return ditherDecode(dst, payload, true)
}

func ditherDecode(dst []float32, payload []byte, add bool) error {
	flags, sb, err := openPayload(Dithering, payload, len(dst))
	if err != nil {
		return err
	}
	n, s := len(dst), int(sb)
	natural := flags&1 != 0
	if flags > 3 || s == 0 || natural && s > MaxNaturalLevels {
		return corrupt("dithering payload with flags %#x and %d levels", flags, s)
	}
	if len(payload) != ditherSize(n, s) {
		return corrupt("dithering payload of %d elements is %d bytes, want %d", n, len(payload), ditherSize(n, s))
	}
	scale := getF32(payload[headerSize:])
	if math.Float32bits(scale)>>31 != 0 {
		return corrupt("dithering payload with negative scale %g", scale)
	}
	words := payload[headerSize+4:]
	w := ditherWidth(s)
	if r := uint(n) * w % 64; r != 0 {
		if last := binary.LittleEndian.Uint64(words[len(words)-8:]); last>>r != 0 {
			return corrupt("dithering payload with bits set past element %d", n)
		}
	}
	// Check every code before writing anything.
	mask := uint64(1)<<(w-1) - 1
	if s != int(mask) && !codesBelow(words, n, w, uint64(s)) {
		return corrupt("dithering payload with a level above %d", s)
	}
	// The magnitudes of code c, sign included: lv[c].
	mag := ditherLevels(scale, s, natural)
	lv := make([]uint32, 1<<w)
	for c := range lv {
		if l := uint64(c) & mask; l <= uint64(s) {
			lv[c] = math.Float32bits(mag[l]) | uint32(c>>(w-1))<<31
		}
	}
	full := uint64(1)<<w - 1
	var acc uint64
	var nb uint
	wi := 0
	for i := range dst {
		var code uint64
		if nb >= w {
			code = acc & full
			acc >>= w
			nb -= w
		} else {
			next := binary.LittleEndian.Uint64(words[8*wi:])
			wi++
			code = (acc | next<<nb) & full
			acc = next >> (w - nb)
			nb = 64 - (w - nb)
		}
		v := math.Float32frombits(lv[code])
		if add {
			dst[i] += v
		} else {
			dst[i] = v
		}
	}
	return nil
}

// codesBelow reports whether the levels of the n codes of w bits packed
// into words are all at most s. words holds at least n·w bits.
func codesBelow(words []byte, n int, w uint, s uint64) bool {
	mask := uint64(1)<<(w-1) - 1
	var acc uint64
	var nb uint
	wi := 0
	bad := false
	for i := 0; i < n; i++ {
		var code uint64
		if nb >= w {
			code = acc
			acc >>= w
			nb -= w
		} else {
			next := binary.LittleEndian.Uint64(words[8*wi:])
			wi++
			code = acc | next<<nb
			acc = next >> (w - nb)
			nb = 64 - (w - nb)
		}
		bad = bad || code&mask > s
	}
	return !bad
}
