package codec

import (
	"encoding/binary"
	"fmt"
	"math"

	"github.com/gobps/gobps/proto"
	"github.com/gobps/gobps/summation/kernel"
)

// cast is the fp16 or bf16 codec: every element rounded to a 16-bit float
// (to nearest even, by summation/kernel's conversions: overflow to Inf, NaN
// kept a NaN) and widened back exactly.
type cast struct{ id ID }

func castSize(n int) int { return headerSize + 2*n }

func (c cast) ID() ID          { return c.id }
func (cast) MaxSize(n int) int { return castSize(n) }

func (c cast) Compress(dst []byte, src []float32, _ Step) ([]byte, error) {
	n := len(src)
	if err := checkCompress(c.id, dst, n, 0); err != nil {
		return nil, err
	}
	size := castSize(n)
	if err := checkCompress(c.id, dst, n, size); err != nil {
		return nil, err
	}
	dst = dst[:size]
	putHeader(dst, c.id, 0, 0, n)
	narrow(c.id, dst[headerSize:], src)
	return dst, nil
}

func (c cast) Decompress(dst []float32, payload []byte) error {
	return c.decode(dst, payload, false)
}

func (c cast) DecompressAdd(dst []float32, payload []byte) error {
	return c.decode(dst, payload, true)
}

func (c cast) decode(dst []float32, payload []byte, add bool) error {
	a, b, err := openPayload(c.id, payload, len(dst))
	if err != nil {
		return err
	}
	if a != 0 || b != 0 {
		return corrupt("%s payload with reserved bits set", c.id)
	}
	if len(payload) != castSize(len(dst)) {
		return corrupt("%s payload of %d elements is %d bytes, want %d", c.id, len(dst), len(payload), castSize(len(dst)))
	}
	widen(c.id, dst, payload[headerSize:], add)
	return nil
}

// narrow writes src rounded to IEEE halves (id FP16) or bfloat16 (BF16)
// to dst, 2 bytes each, little-endian: kernel.F32ToF16 or F32ToBF16, or
// their AVX2 twins (F16C's VCVTPS2PH with rounding mode 0; integer rounding
// as F32ToBF16 does), which give the same bits for every float32 (checked
// over all 2^32 when the kernels were written; TestImplsAgree checks
// random bit patterns).
func narrow(id ID, dst []byte, src []float32) {
	full := 0
	if chosen.Current().simd {
		full = len(src) &^ 31
		for off := 0; off < full; off += chunkElems {
			end := min(off+chunkElems, full)
			narrowSIMD(id, dst[2*off:2*end], src[off:end])
		}
	}
	if id == FP16 {
		for i, x := range src[full:] {
			binary.LittleEndian.PutUint16(dst[2*(full+i):], kernel.F32ToF16(x))
		}
		return
	}
	for i, x := range src[full:] {
		binary.LittleEndian.PutUint16(dst[2*(full+i):], kernel.F32ToBF16(x))
	}
}

// widen sets (or, if add, adds to) dst the halves (FP16) or bfloat16 (BF16)
// of src widened: exact, except that a signalling NaN half comes out quiet,
// as F16C's VCVTPH2PS makes it (kernel.F16ToF32 keeps it signalling;
// Compress never writes one).
func widen(id ID, dst []float32, src []byte, add bool) {
	full := 0
	if chosen.Current().simd {
		full = len(dst) &^ 31
		for off := 0; off < full; off += chunkElems {
			end := min(off+chunkElems, full)
			widenSIMD(id, dst[off:end], src[2*off:2*end], add)
		}
	}
	for i := full; i < len(dst); i++ {
		h := binary.LittleEndian.Uint16(src[2*i:])
		var v float32
		if id == FP16 {
			v = kernel.F16ToF32(h)
			if h&0x7c00 == 0x7c00 && h&0x3ff != 0 {
				v = math.Float32frombits(math.Float32bits(v) | 0x00400000) // quiet
			}
		} else {
			v = kernel.BF16ToF32(h)
		}
		if add {
			dst[i] += v
		} else {
			dst[i] = v
		}
	}
}

// Widen converts a tensor of dtype dt (float32, float16 or bfloat16, as
// little-endian bytes) to float32, exactly: what a worker does to a float16
// or bfloat16 tensor before Compress, since the codecs take float32.
func Widen(dt proto.DType, dst []float32, src []byte) error {
	if len(src) != len(dst)*dt.Size() {
		return fmt.Errorf("codec: widen %d bytes of %s into %d floats", len(src), dt, len(dst))
	}
	le := binary.LittleEndian
	switch dt {
	case proto.Float32:
		for i := range dst {
			dst[i] = math.Float32frombits(le.Uint32(src[4*i:]))
		}
	case proto.Float16:
		for i := range dst {
			dst[i] = kernel.F16ToF32(le.Uint16(src[2*i:]))
		}
	case proto.BFloat16:
		for i := range dst {
			dst[i] = kernel.BF16ToF32(le.Uint16(src[2*i:]))
		}
	default:
		return fmt.Errorf("codec: cannot compress %s: the codecs take float32, float16 and bfloat16", dt)
	}
	return nil
}

// Narrow converts float32 back to dtype dt (rounding to nearest even for
// float16 and bfloat16): what a worker does after Decompress for a float16
// or bfloat16 tensor.
func Narrow(dt proto.DType, dst []byte, src []float32) error {
	if len(dst) != len(src)*dt.Size() {
		return fmt.Errorf("codec: narrow %d floats into %d bytes of %s", len(src), len(dst), dt)
	}
	le := binary.LittleEndian
	switch dt {
	case proto.Float32:
		for i, x := range src {
			le.PutUint32(dst[4*i:], math.Float32bits(x))
		}
	case proto.Float16:
		for i, x := range src {
			le.PutUint16(dst[2*i:], kernel.F32ToF16(x))
		}
	case proto.BFloat16:
		for i, x := range src {
			le.PutUint16(dst[2*i:], kernel.F32ToBF16(x))
		}
	default:
		return fmt.Errorf("codec: cannot compress %s: the codecs take float32, float16 and bfloat16", dt)
	}
	return nil
}
