package codec

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"

	"github.com/gobps/gobps/proto"
)

// ID names the codec of a payload: the first byte of every payload.
type ID uint8

// The codecs. The zero value is not a codec (Params with ID None compress
// nothing).
const (
	None ID = iota
	OneBit
	TopK
	RandomK
	Dithering
	FP16
	BF16
	maxID
)

var idNames = [...]string{
	None:      "none",
	OneBit:    "onebit",
	TopK:      "topk",
	RandomK:   "randomk",
	Dithering: "dithering",
	FP16:      "fp16",
	BF16:      "bf16",
}

func (id ID) String() string {
	if id >= maxID {
		return fmt.Sprintf("codec(%d)", uint8(id))
	}
	return idNames[id]
}

// version is the payload layout version, the second byte of every payload.
const version = 1

// headerSize is the size of the header every payload starts with: the codec
// ID, the version, two codec-specific bytes and the element count (uint32,
// little-endian).
const headerSize = 8

// MaxElems is the most elements one payload holds (the count is a uint32;
// an untyped constant, compared as uint64 so that 32-bit builds compile).
const MaxElems = math.MaxUint32

// ErrCorrupt is wrapped by every error about a malformed payload.
var ErrCorrupt = errors.New("codec: corrupt payload")

func corrupt(format string, args ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{ErrCorrupt}, args...)...)
}

// Step says which key and round a compression is for. Random-k and
// dithering draw their random numbers from the codec's seed, the key and the
// round, so that every worker compressing the same key in the same round
// draws the same ones; the error-feedback and momentum decorators keep their
// state per key.
type Step struct {
	Key   proto.Key
	Round uint64
}

// Compressor compresses float32 tensors into self-describing payloads and
// back.
//
// Call protocol: a payload is produced by Compress into a buffer of at least
// MaxSize(len(src)) bytes, and read back by Decompress or DecompressAdd into a
// slice of exactly the payload's element count (Header says what it is).
// Decompress and DecompressAdd check the payload completely and return an
// error wrapping ErrCorrupt for one that is malformed or that another codec
// produced; they never read outside it and never panic on any input. On an
// error they leave dst as it was: every check comes before the first write,
// so that a server can refuse a bad push without losing the sum it was
// adding into.
//
// Locking: the codecs of New are stateless and safe for concurrent use. The
// decorators (ErrorFeedback, Momentum) keep per-key state: calls for
// different keys may run concurrently, calls of Compress for one key must not.
type Compressor interface {
	// ID is the codec whose payloads Compress writes.
	ID() ID
	// MaxSize is the most bytes Compress writes for a tensor of n elements.
	MaxSize(n int) int
	// Compress writes the payload of src into dst and returns it (a prefix
	// of dst). It fails if dst is shorter than MaxSize(len(src)) or src has
	// more than MaxElems elements. It does not modify src.
	Compress(dst []byte, src []float32, at Step) ([]byte, error)
	// Decompress sets dst to the tensor that payload encodes.
	Decompress(dst []float32, payload []byte) error
	// DecompressAdd adds the tensor that payload encodes to dst, element by
	// element, in float32: bit for bit what Decompress into a scratch slice
	// and an add would give (except which payload a sum of two NaNs
	// carries), without the scratch slice; sparse codecs touch only the
	// elements they carry.
	DecompressAdd(dst []float32, payload []byte) error
}

// Header is what the first bytes of every payload say.
type Header struct {
	ID ID
	// N is the element count of the tensor.
	N int
}

// ReadHeader reads and checks a payload's header, without checking the rest.
func ReadHeader(payload []byte) (Header, error) {
	if len(payload) < headerSize {
		return Header{}, corrupt("%d bytes, shorter than the %d-byte header", len(payload), headerSize)
	}
	id := ID(payload[0])
	if id == None || id >= maxID {
		return Header{}, corrupt("unknown codec %d", payload[0])
	}
	if payload[1] != version {
		return Header{}, corrupt("%s payload of version %d, want %d", id, payload[1], version)
	}
	return Header{ID: id, N: int(binary.LittleEndian.Uint32(payload[4:]))}, nil
}

// putHeader writes the header of a payload of codec id over n elements, with
// the codec-specific bytes a and b.
func putHeader(dst []byte, id ID, a, b byte, n int) {
	dst[0], dst[1], dst[2], dst[3] = byte(id), version, a, b
	binary.LittleEndian.PutUint32(dst[4:], uint32(n))
}

// checkCompress checks Compress's arguments for a codec whose payloads are
// at most max bytes.
func checkCompress(id ID, dst []byte, n, max int) error {
	if uint64(n) > MaxElems {
		return fmt.Errorf("codec: %s: %d elements, more than the %d a payload holds", id, n, uint64(MaxElems))
	}
	if len(dst) < max {
		return fmt.Errorf("codec: %s: %d-byte buffer for %d elements, need %d", id, len(dst), n, max)
	}
	return nil
}

// openPayload checks the header of a payload for codec id and the length of
// dst against its element count, and returns the header's two
// codec-specific bytes.
func openPayload(id ID, payload []byte, n int) (a, b byte, err error) {
	h, err := ReadHeader(payload)
	if err != nil {
		return 0, 0, err
	}
	if h.ID != id {
		return 0, 0, corrupt("a %s payload given to the %s codec", h.ID, id)
	}
	if h.N != n {
		return 0, 0, fmt.Errorf("codec: %s payload of %d elements, decompressed into %d", id, h.N, n)
	}
	return payload[2], payload[3], nil
}

func putF32(b []byte, f float32) { binary.LittleEndian.PutUint32(b, math.Float32bits(f)) }
func getF32(b []byte) float32    { return math.Float32frombits(binary.LittleEndian.Uint32(b)) }

// canonicalNaN is the NaN a scale that is not a number is stored as, so
// that every implementation writes the same payload bits.
const canonicalNaN = 0x7fc00000
