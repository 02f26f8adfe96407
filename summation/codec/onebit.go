package codec

import (
	"encoding/binary"
	"math"
)

// onebit is the onebit codec: one sign bit an element and one scale.
type onebit struct{ scaling bool }

// onebitSize is the size of a onebit payload of n elements: the header, the
// scale, four zero bytes, and one 64-bit word per 64 elements.
func onebitSize(n int) int { return headerSize + 8 + 8*((n+63)/64) }

func (onebit) ID() ID            { return OneBit }
func (onebit) MaxSize(n int) int { return onebitSize(n) }

func (c onebit) Compress(dst []byte, src []float32, _ Step) ([]byte, error) {
	n := len(src)
	size := onebitSize(n)
	if err := checkCompress(OneBit, dst, n, size); err != nil {
		return nil, err
	}
	dst = dst[:size]
	var flags byte
	scale := float32(1)
	words := dst[headerSize+8:]
	if c.scaling {
		flags = 1
		var acc [lanes]float64
		pack(words, src, &acc)
		scale = meanAbs(&acc, n)
	} else {
		pack(words, src, nil)
	}
	putHeader(dst, OneBit, flags, 0, n)
	putF32(dst[headerSize:], scale)
	clear(dst[headerSize+4 : headerSize+8])
	return dst, nil
}

func (c onebit) Decompress(dst []float32, payload []byte) error {
	return onebitDecode(dst, payload, false)
}

func (c onebit) DecompressAdd(dst []float32, payload []byte) error {
	return onebitDecode(dst, payload, true)
}

// onebitDecode checks a onebit payload of len(dst) elements and sets or adds
// its tensor into dst.
func onebitDecode(dst []float32, payload []byte, add bool) error {
	flags, b3, err := openPayload(OneBit, payload, len(dst))
	if err != nil {
		return err
	}
	n := len(dst)
	if len(payload) != onebitSize(n) {
		return corrupt("onebit payload of %d elements is %d bytes, want %d", n, len(payload), onebitSize(n))
	}
	if flags > 1 || b3 != 0 || binary.LittleEndian.Uint32(payload[headerSize+4:]) != 0 {
		return corrupt("onebit payload with reserved bits set")
	}
	scale := binary.LittleEndian.Uint32(payload[headerSize:])
	if flags == 0 && scale != math.Float32bits(1) {
		return corrupt("onebit payload without scaling has scale %g, want 1", math.Float32frombits(scale))
	}
	if scale>>31 != 0 {
		return corrupt("onebit payload with negative scale %g", math.Float32frombits(scale))
	}
	words := payload[headerSize+8:]
	if r := n % 64; r != 0 {
		if last := binary.LittleEndian.Uint64(words[len(words)-8:]); last>>r != 0 {
			return corrupt("onebit payload with bits set past element %d", n)
		}
	}
	unpack(dst, words, scale, add)
	return nil
}

// lanes is the number of partial sums of |x| that onebit's scale adds up:
// element i goes to partial sum i mod lanes, each is a float64 sum in index
// order, and meanAbs adds them pairwise. The SIMD code keeps the partial
// sums in vector lanes and so gives the same bits.
const lanes = 32

// meanAbs adds the partial sums of acc pairwise (acc[i] += acc[i+h] for h =
// 16, 8, 4, 2, 1) and returns the sum divided by n, rounded to float32. A
// NaN is returned as the canonical NaN, so that its payload does not depend
// on the order NaNs met in. meanAbs overwrites acc.
func meanAbs(acc *[lanes]float64, n int) float32 {
	if n == 0 {
		return 0
	}
	for h := lanes / 2; h > 0; h /= 2 {
		for i := 0; i < h; i++ {
			acc[i] += acc[i+h]
		}
	}
	m := float32(acc[0] / float64(n))
	if m != m {
		return math.Float32frombits(canonicalNaN)
	}
	return m
}

// chunkElems is the most elements one call of an assembly kernel handles:
// tens of microseconds, so that the garbage collector and the scheduler are
// not held up by a long tensor. A multiple of 64.
const chunkElems = 64 << 10

// pack writes the sign bits of src into words, 64 elements a little-endian
// word, element i at bit i mod 64 of word i/64, the bits of a last partial
// word past len(src) zero; and if acc is not nil adds |src[i]| (in float64)
// to acc[i mod lanes] in index order. words holds (len(src)+63)/64 words.
func pack(words []byte, src []float32, acc *[lanes]float64) {
	m := chosen.Current()
	full := len(src) &^ 63
	for off := 0; off < full; off += chunkElems {
		end := min(off+chunkElems, full)
		if m.simd {
			packSIMD(words[off/8:end/8], src[off:end], acc)
		} else {
			packRef(words[off/8:end/8], src[off:end], acc)
		}
	}
	if full < len(src) {
		packRef(words[full/8:], src[full:], acc)
	}
}

// unpack sets (or, if add, adds to) dst[i] the float32 whose bits are scale
// with the sign bit of element i flipped.
func unpack(dst []float32, words []byte, scale uint32, add bool) {
	m := chosen.Current()
	full := len(dst) &^ 63
	for off := 0; off < full; off += chunkElems {
		end := min(off+chunkElems, full)
		if m.simd {
			unpackSIMD(dst[off:end], words[off/8:end/8], scale, add)
		} else {
			unpackRef(dst[off:end], words[off/8:end/8], scale, add)
		}
	}
	if full < len(dst) {
		unpackRef(dst[full:], words[full/8:], scale, add)
	}
}

// packRef is the reference of pack, in Go: a word at a time, the sign bits
// shifted straight out of the float bits. src starts at an element whose
// index is a multiple of 64.
func packRef(words []byte, src []float32, acc *[lanes]float64) {
	for w := 0; w*64 < len(src); w++ {
		blk := src[w*64 : min(w*64+64, len(src))]
		var word uint64
		for j, x := range blk {
			word |= uint64(math.Float32bits(x)>>31) << j
		}
		binary.LittleEndian.PutUint64(words[w*8:], word)
		if acc != nil {
			for j, x := range blk {
				acc[j%lanes] += float64(math.Float32frombits(math.Float32bits(x) &^ (1 << 31)))
			}
		}
	}
}

// unpackRef is the reference of unpack, in Go. dst starts at an element
// whose index is a multiple of 64.
func unpackRef(dst []float32, words []byte, scale uint32, add bool) {
	for w := 0; w*64 < len(dst); w++ {
		word := binary.LittleEndian.Uint64(words[w*8:])
		blk := dst[w*64 : min(w*64+64, len(dst))]
		if add {
			for j := range blk {
				blk[j] += math.Float32frombits(scale ^ uint32(word>>j)<<31)
			}
		} else {
			for j := range blk {
				blk[j] = math.Float32frombits(scale ^ uint32(word>>j)<<31)
			}
		}
	}
}
