package local

import (
	"encoding/binary"
	"math"
	"math/rand/v2"

	"github.com/gobps/gobps/proto"
	"github.com/gobps/gobps/summation/kernel"
)

// keySpec is one key of a test job.
type keySpec struct {
	Key   proto.Key
	DType proto.DType
	Elems int
}

func (k keySpec) bytes() int { return k.Elems * k.DType.Size() }

// mixedKeys has every dtype, sizes from one element to a few hundred KiB
// (not page multiples, so slots have padding), and enough keys for every
// rank of a group of 4 to own some.
var mixedKeys = []keySpec{
	{proto.MakeKey(0, 0), proto.Float32, 1},
	{proto.MakeKey(0, 1), proto.Float64, 3},
	{proto.MakeKey(1, 0), proto.Int32, 1024},
	{proto.MakeKey(1, 1), proto.Int64, 5000},
	{proto.MakeKey(2, 0), proto.Float16, 33333},
	{proto.MakeKey(3, 0), proto.BFloat16, 777},
	{proto.MakeKey(4, 0), proto.Uint8, 4097},
	{proto.MakeKey(5, 0), proto.Float32, 65536 + 3},
	{proto.MakeKey(5, 1), proto.Float64, 2000},
	{proto.MakeKey(6, 0), proto.Int32, 7},
}

// seed names the data of one process (machine, local rank) for one key and
// round.
func seed(machine, rank int, key proto.Key, round uint64) uint64 {
	return uint64(machine)<<56 ^ uint64(rank)<<48 ^ round<<32 ^ uint64(key)*0x9e3779b97f4a7c15
}

// gen returns nbytes of test data of dtype dt from seed s. Integer types get
// random bits (their sums wrap identically in any order); floating types get
// small whole numbers, so that every sum in the tests is exact.
func gen(dt proto.DType, nbytes int, s uint64) []byte {
	r := rand.New(rand.NewPCG(s, 0x5eed))
	b := make([]byte, nbytes)
	le := binary.LittleEndian
	switch dt {
	case proto.Float32:
		for i := 0; i < nbytes; i += 4 {
			le.PutUint32(b[i:], math.Float32bits(float32(r.IntN(2001)-1000)))
		}
	case proto.Float64:
		for i := 0; i < nbytes; i += 8 {
			le.PutUint64(b[i:], math.Float64bits(float64(r.IntN(2001)-1000)))
		}
	case proto.Float16:
		for i := 0; i < nbytes; i += 2 {
			le.PutUint16(b[i:], kernel.F32ToF16(float32(r.IntN(33)-16)))
		}
	case proto.BFloat16:
		for i := 0; i < nbytes; i += 2 {
			le.PutUint16(b[i:], kernel.F32ToBF16(float32(r.IntN(17)-8)))
		}
	default:
		for i := 0; i < nbytes; i += 8 {
			var w [8]byte
			le.PutUint64(w[:], r.Uint64())
			copy(b[i:], w[:])
		}
	}
	return b
}

// combine returns (Σ parts) × factor, element by element, in dt's
// arithmetic (wrapping for integers; exact for the floats gen makes).
func combine(dt proto.DType, parts [][]byte, factor int) []byte {
	out := make([]byte, len(parts[0]))
	le := binary.LittleEndian
	n := dt.Size()
	for i := 0; i < len(out); i += n {
		switch dt {
		case proto.Int32:
			var v int32
			for _, p := range parts {
				v += int32(le.Uint32(p[i:]))
			}
			le.PutUint32(out[i:], uint32(v*int32(factor)))
		case proto.Int64:
			var v int64
			for _, p := range parts {
				v += int64(le.Uint64(p[i:]))
			}
			le.PutUint64(out[i:], uint64(v*int64(factor)))
		case proto.Uint8:
			var v uint8
			for _, p := range parts {
				v += p[i]
			}
			out[i] = v * uint8(factor)
		default:
			var v float64
			for _, p := range parts {
				v += toFloat(dt, p[i:])
			}
			putFloat(dt, out[i:], v*float64(factor))
		}
	}
	return out
}

// scale multiplies every element of b by factor in place, in dt's arithmetic.
func scale(dt proto.DType, b []byte, factor int) {
	copy(b, combine(dt, [][]byte{b}, factor))
}

func toFloat(dt proto.DType, b []byte) float64 {
	le := binary.LittleEndian
	switch dt {
	case proto.Float32:
		return float64(math.Float32frombits(le.Uint32(b)))
	case proto.Float64:
		return math.Float64frombits(le.Uint64(b))
	case proto.Float16:
		return float64(kernel.F16ToF32(le.Uint16(b)))
	default:
		return float64(kernel.BF16ToF32(le.Uint16(b)))
	}
}

func putFloat(dt proto.DType, b []byte, v float64) {
	le := binary.LittleEndian
	switch dt {
	case proto.Float32:
		le.PutUint32(b, math.Float32bits(float32(v)))
	case proto.Float64:
		le.PutUint64(b, math.Float64bits(v))
	case proto.Float16:
		le.PutUint16(b, kernel.F32ToF16(float32(v)))
	default:
		le.PutUint16(b, kernel.F32ToBF16(float32(v)))
	}
}

// firstDiff returns the index of the first byte where a and b differ, or -1.
func firstDiff(a, b []byte) int {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	if len(a) != len(b) {
		return min(len(a), len(b))
	}
	return -1
}
