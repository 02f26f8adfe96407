package codec

import (
	"math"
	"math/rand"
	"testing"
)

// decoders is one Compressor per codec: decoding does not depend on the
// parameters, which the payload carries.
func decoders() []Compressor {
	return []Compressor{
		onebit{}, topk{k: K{Count: 1}}, randomk{k: K{Count: 1}}, dither{s: 1},
		cast{id: FP16}, cast{id: BF16},
	}
}

// FuzzDecompress gives arbitrary bytes to every codec's Decompress and
// DecompressAdd, into a tensor of the header's length (capped) and of
// another: they must return an error or succeed, never panic, and never
// write past the tensor; a payload that decodes must decode the same way
// twice, and DecompressAdd onto zeros must give what Decompress gives
// (up to the sign of zero).
func FuzzDecompress(f *testing.F) {
	r := rand.New(rand.NewSource(10))
	for _, tc := range testCodecs() {
		c, _ := New(tc.p)
		for _, n := range []int{0, 1, 70, 200} {
			x := inputs(r, n)["normal"]
			p, err := c.Compress(make([]byte, c.MaxSize(n)), x, Step{Key: 3, Round: 4})
			if err != nil {
				f.Fatal(err)
			}
			f.Add(p)
		}
	}
	f.Add([]byte{})
	f.Add([]byte{1, 1, 0, 0, 255, 255, 255, 255})
	f.Fuzz(func(t *testing.T, data []byte) {
		data = data[:len(data):len(data)]
		n := len(data) % 97
		if h, err := ReadHeader(data); err == nil && h.N <= 1<<16 {
			n = h.N
		}
		for _, c := range decoders() {
			for _, m := range []int{n, n + 1} {
				out := make([]float32, m+1)
				for i := range out {
					out[i] = 42
				}
				err := c.Decompress(out[:m], data)
				if out[m] != 42 {
					t.Fatalf("%s: Decompress wrote past the tensor", c.ID())
				}
				if err != nil {
					for i, v := range out {
						if v != 42 {
							t.Fatalf("%s: Decompress failed (%v) after writing element %d", c.ID(), err, i)
						}
					}
					continue
				}
				again := make([]float32, m)
				if err := c.Decompress(again, data); err != nil {
					t.Fatalf("%s: decoded once, then %v", c.ID(), err)
				}
				if i, ok := sameBits(again, out[:m]); !ok {
					t.Fatalf("%s: two decodes differ at %d", c.ID(), i)
				}
				sum := make([]float32, m+1)
				sum[m] = 42
				if err := c.DecompressAdd(sum[:m], data); err != nil {
					t.Fatalf("%s: Decompress accepted, DecompressAdd: %v", c.ID(), err)
				}
				for i := range again {
					a, b := sum[i], again[i]
					if a != b && !(math.IsNaN(float64(a)) && math.IsNaN(float64(b))) {
						t.Fatalf("%s: element %d: DecompressAdd onto 0 gives %v, Decompress %v", c.ID(), i, a, b)
					}
				}
				if sum[m] != 42 {
					t.Fatalf("%s: DecompressAdd wrote past the tensor", c.ID())
				}
			}
		}
	})
}

// FuzzDescriptor gives arbitrary bytes to Decode: an error, or Params that
// are valid and encode back to the same bytes.
func FuzzDescriptor(f *testing.F) {
	for _, tc := range testCodecs() {
		f.Add(tc.p.Encode(nil))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		p, err := Decode(b)
		if err != nil {
			return
		}
		if err := p.Validate(); err != nil {
			t.Fatalf("Decode gave invalid %+v: %v", p, err)
		}
		if string(p.Encode(nil)) != string(b) {
			t.Fatalf("%+v encodes to %x, decoded from %x", p, p.Encode(nil), b)
		}
		if _, err := New(p); err != nil && p.Codec != None {
			t.Fatalf("New(%+v): %v", p, err)
		}
	})
}
