package codec

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"math/rand"
	"slices"
	"testing"

	"github.com/gobps/gobps/proto"
	"github.com/gobps/gobps/summation/kernel"
)

// The reference codecs of this file compute, from the input tensor alone
// and in the plainest code, what decompress(compress(x)) must be, following
// the package doc; every codec must match them bit for bit.

// testLengths are the tensor lengths every test runs: empty, one element,
// around the 8- and 64-element steps of the kernels, and some larger.
var testLengths = []int{0, 1, 2, 7, 8, 31, 63, 64, 65, 127, 128, 129, 1000, 4095, 4097, 70000}

// inputs returns named test tensors of n elements: random normal ones,
// and adversarial ones.
func inputs(r *rand.Rand, n int) map[string][]float32 {
	gen := func(f func(i int) float32) []float32 {
		x := make([]float32, n)
		for i := range x {
			x[i] = f(i)
		}
		return x
	}
	nan := math.Float32frombits(0x7fc00001)
	inf := float32(math.Inf(1))
	denorm := math.Float32frombits(1)
	return map[string][]float32{
		"normal":   gen(func(int) float32 { return float32(r.NormFloat64()) }),
		"wide":     gen(func(int) float32 { return float32(r.NormFloat64() * math.Pow(2, float64(r.Intn(60)-30))) }),
		"zeros":    gen(func(int) float32 { return 0 }),
		"negzeros": gen(func(int) float32 { return float32(math.Copysign(0, -1)) }),
		"equal":    gen(func(int) float32 { return -3 }),
		"few":      gen(func(i int) float32 { return float32(i % 3) }),
		"denormal": gen(func(int) float32 { return math.Float32frombits(r.Uint32()&0x807fffff | 1) }),
		"tinydenorm": gen(func(i int) float32 {
			if i%2 == 0 {
				return denorm
			}
			return -denorm
		}),
		"bits": gen(func(int) float32 { return math.Float32frombits(r.Uint32()) }),
		"specials": gen(func(i int) float32 {
			return []float32{0, 1, -1, inf, -inf, denorm, -denorm, math.MaxFloat32, -math.MaxFloat32, 1e-30}[r.Intn(10)]
		}),
		"nan": gen(func(i int) float32 {
			if i == n/2 {
				return nan
			}
			return float32(r.NormFloat64())
		}),
		"inf": gen(func(i int) float32 {
			if i == n/3 {
				return -inf
			}
			return float32(r.NormFloat64())
		}),
	}
}

// sameBits reports whether a and b are the same floats bit for bit.
func sameBits(a, b []float32) (int, bool) {
	if len(a) != len(b) {
		return -1, false
	}
	for i := range a {
		if math.Float32bits(a[i]) != math.Float32bits(b[i]) {
			return i, false
		}
	}
	return 0, true
}

// refOnebit is decompress(compress(x)) for onebit.
func refOnebit(x []float32, scaling bool) []float32 {
	scale := float32(1)
	if scaling {
		var part [32]float64
		for i, v := range x {
			part[i%32] += math.Abs(float64(v))
		}
		for h := 16; h > 0; h /= 2 {
			for i := 0; i < h; i++ {
				part[i] += part[i+h]
			}
		}
		scale = 0
		if len(x) > 0 {
			scale = float32(part[0] / float64(len(x)))
		}
		if math.IsNaN(float64(scale)) {
			scale = math.Float32frombits(0x7fc00000)
		}
	}
	out := make([]float32, len(x))
	for i, v := range x {
		out[i] = scale
		if math.Signbit(float64(v)) {
			out[i] = math.Float32frombits(math.Float32bits(scale) | 1<<31)
		}
	}
	return out
}

// refTopK is decompress(compress(x)) for top-k: a full sort.
func refTopK(x []float32, k int) []float32 { return refTopKOf(x, topOrder(x), k) }

// refTopKOf is refTopK from x's topOrder.
func refTopKOf(x []float32, order []int, k int) []float32 {
	out := make([]float32, len(x))
	for _, i := range order[:k] {
		out[i] = x[i]
	}
	return out
}

// topOrder returns x's indices by decreasing magnitude bits, then
// increasing index.
func topOrder(x []float32) []int {
	idx := make([]int, len(x))
	for i := range idx {
		idx[i] = i
	}
	key := func(i int) uint32 { return math.Float32bits(x[i]) &^ (1 << 31) }
	slices.SortStableFunc(idx, func(a, b int) int {
		ka, kb := key(a), key(b)
		switch {
		case ka > kb:
			return -1
		case ka < kb:
			return 1
		}
		return a - b
	})
	return idx
}

// refRandomK is decompress(compress(x)) for random-k at step at.
func refRandomK(x []float32, k int, seed uint64, at Step) []float32 {
	out := make([]float32, len(x))
	r := splitmix{streamSeed(seed, at)}
	for j := 0; j < k; j++ {
		lo, hi := j*len(x)/k, (j+1)*len(x)/k
		hi64, _ := mulHi(r.next(), uint64(hi-lo))
		i := lo + int(hi64)
		out[i] = x[i]
	}
	return out
}

func mulHi(a, b uint64) (uint64, uint64) {
	// Schoolbook 32-bit halves, independent of math/bits.
	a0, a1, b0, b1 := a&0xffffffff, a>>32, b&0xffffffff, b>>32
	w0 := a0 * b0
	t := a1*b0 + w0>>32
	w1, w2 := t&0xffffffff, t>>32
	w1 += a0 * b1
	return a1*b1 + w2 + w1>>32, a * b
}

// refDither is decompress(compress(x)) for dithering at step at.
func refDither(x []float32, s int, natural, l2 bool, seed uint64, at Step) []float32 {
	out := make([]float32, len(x))
	var scale float64
	if l2 {
		var part [4]float64
		for i, v := range x {
			part[i%4] += float64(v) * float64(v)
		}
		scale = float64(float32(math.Sqrt((part[0] + part[1]) + (part[2] + part[3]))))
	} else {
		m := float32(0)
		for _, v := range x {
			a := float32(math.Abs(float64(v)))
			if a > m || a != a {
				m = a
				if a != a {
					break
				}
			}
		}
		scale = float64(m)
	}
	if scale == 0 {
		return out // all +0
	}
	if math.IsNaN(scale) || math.IsInf(scale, 0) {
		for i := range out {
			out[i] = math.Float32frombits(0x7fc00000)
		}
		return out
	}
	top := float64(s)
	if natural {
		top = math.Ldexp(1, s-1)
	}
	r := splitmix{streamSeed(seed, at)}
	draw := func() float64 { return float64(r.next()>>11) / (1 << 53) }
	for i, v := range x {
		u := float64(float32(math.Abs(float64(v)))) * (top / scale)
		var lv float64 // level value in units of scale/top
		if natural {
			switch {
			case u >= top:
				lv = top
			case u < 1:
				if u > 0 && draw() < u {
					lv = 1
				}
			default:
				_, e := math.Frexp(u) // u = f·2^e, f in [0.5, 1)
				lo := math.Ldexp(1, e-1)
				lv = lo
				if p := u/lo - 1; p > 0 && draw() < p {
					lv = 2 * lo
				}
			}
		} else {
			fl := math.Floor(u)
			lv = fl
			if fl >= top {
				lv = top
			} else if p := u - fl; p > 0 && draw() < p {
				lv = fl + 1
			}
		}
		m := float32(scale * lv / top)
		if math.Signbit(float64(v)) {
			m = -m
		} else if lv == 0 {
			m = 0
		}
		out[i] = m
	}
	return out
}

func refCast(x []float32, id ID) []float32 {
	out := make([]float32, len(x))
	for i, v := range x {
		if id == FP16 {
			out[i] = kernel.F16ToF32(kernel.F32ToF16(v))
		} else {
			out[i] = kernel.BF16ToF32(kernel.F32ToBF16(v))
		}
	}
	return out
}

// testCodec is one codec under test with its reference.
type testCodec struct {
	name string
	p    Params
	ref  func(x []float32, at Step) []float32
}

func testCodecs() []testCodec {
	mk := func(kv map[string]string) Params {
		p, err := Parse(kv)
		if err != nil {
			panic(err)
		}
		return p
	}
	var cs []testCodec
	for _, sc := range []bool{false, true} {
		cs = append(cs, testCodec{fmt.Sprintf("onebit/scaling=%v", sc), mk(map[string]string{"compressor": "onebit", "scaling": fmt.Sprint(sc)}),
			func(x []float32, _ Step) []float32 { return refOnebit(x, sc) }})
	}
	for _, k := range []string{"0.01", "0.3", "1", "100000"} {
		p := mk(map[string]string{"compressor": "topk", "k": k})
		cs = append(cs, testCodec{"topk/k=" + k, p, func(x []float32, _ Step) []float32 { return refTopK(x, p.K.Of(len(x))) }})
		p2 := mk(map[string]string{"compressor": "randomk", "k": k, "seed": "42"})
		cs = append(cs, testCodec{"randomk/k=" + k, p2, func(x []float32, at Step) []float32 { return refRandomK(x, p2.K.Of(len(x)), 42, at) }})
	}
	for _, d := range []struct {
		s          int
		part, norm string
	}{
		{1, "linear", "max"}, {3, "linear", "l2"}, {8, "linear", "max"}, {255, "linear", "l2"},
		{1, "natural", "l2"}, {2, "natural", "max"}, {8, "natural", "l2"}, {32, "natural", "max"},
	} {
		p := mk(map[string]string{"compressor": "dithering", "k": fmt.Sprint(d.s), "partition": d.part, "normalize": d.norm, "seed": "7"})
		cs = append(cs, testCodec{fmt.Sprintf("dithering/s=%d/%s/%s", d.s, d.part, d.norm), p,
			func(x []float32, at Step) []float32 {
				return refDither(x, d.s, d.part == "natural", d.norm == "l2", 7, at)
			}})
	}
	cs = append(cs,
		testCodec{"fp16", mk(map[string]string{"fp16": "true"}), func(x []float32, _ Step) []float32 { return refCast(x, FP16) }},
		testCodec{"bf16", mk(map[string]string{"compressor": "bf16"}), func(x []float32, _ Step) []float32 { return refCast(x, BF16) }},
	)
	return cs
}

// TestRoundTrip checks decompress(compress(x)) against the references, bit
// for bit, for every codec, length and input (onebit under every
// implementation); that Compress writes exactly MaxSize bytes or fewer,
// never past them (canary bytes), that the payload's header is right, that
// Compress leaves src alone, and that DecompressAdd matches Decompress plus
// an add.
func TestRoundTrip(t *testing.T) {
	r := rand.New(rand.NewSource(1))
	codecs := testCodecs()
	for _, n := range testLengths {
		in := inputs(r, n)
		if n > 5000 {
			// The long tensor only as a random and a tied input: the
			// adversarial values are covered by the shorter ones.
			in = map[string][]float32{"normal": in["normal"], "few": in["few"]}
		}
		for _, tc := range codecs {
			impls := []string{Impl()}
			if tc.p.Codec == OneBit {
				impls = Impls()
			}
			for _, impl := range impls {
				restore, err := SetImpl(impl)
				if err != nil {
					t.Fatal(err)
				}
				for name, x := range in {
					roundTrip(t, r, tc, fmt.Sprintf("%s %s n=%d %s", impl, tc.name, n, name), x)
				}
				restore()
			}
		}
	}
}

func roundTrip(t *testing.T, r *rand.Rand, tc testCodec, what string, x []float32) {
	t.Helper()
	c, err := New(tc.p)
	if err != nil {
		t.Fatal(err)
	}
	n := len(x)
	at := Step{Key: proto.MakeKey(3, uint32(n)), Round: uint64(n) * 7}
	orig := slices.Clone(x)
	max := c.MaxSize(n)
	off := r.Intn(8)
	buf := make([]byte, off+max+16)
	for i := range buf {
		buf[i] = 0xa5
	}
	p, err := c.Compress(buf[off:off+max], x, at)
	if err != nil {
		t.Fatalf("%s: %v", what, err)
	}
	if _, ok := sameBits(x, orig); !ok {
		t.Fatalf("%s: Compress modified its input", what)
	}
	if &p[0] != &buf[off] || len(p) > max {
		t.Fatalf("%s: payload of %d bytes not at the start of dst or longer than MaxSize %d", what, len(p), max)
	}
	for _, b := range buf[off+max:] {
		if b != 0xa5 {
			t.Fatalf("%s: Compress wrote past MaxSize", what)
		}
	}
	h, err := ReadHeader(p)
	if err != nil || h.ID != c.ID() || h.N != n {
		t.Fatalf("%s: header %+v, %v", what, h, err)
	}
	got := make([]float32, n+1)
	got[n] = 12345
	if err := c.Decompress(got[:n], p); err != nil {
		t.Fatalf("%s: Decompress: %v", what, err)
	}
	if got[n] != 12345 {
		t.Fatalf("%s: Decompress wrote past the tensor", what)
	}
	want := tc.ref(x, at)
	if i, ok := sameBits(got[:n], want); !ok {
		t.Fatalf("%s: element %d: got %v (%#x), reference %v (%#x); input %v", what, i, got[i], math.Float32bits(got[i]), want[i], math.Float32bits(want[i]), x[i])
	}
	// DecompressAdd onto random sums: the decompressed tensor plus the
	// sum, float32 add by add.
	sum := make([]float32, n)
	for i := range sum {
		sum[i] = float32(r.NormFloat64())
	}
	wantSum := slices.Clone(sum)
	for i := range wantSum {
		wantSum[i] += want[i]
	}
	if err := c.DecompressAdd(sum, p); err != nil {
		t.Fatalf("%s: DecompressAdd: %v", what, err)
	}
	if i, ok := sameBits(sum, wantSum); !ok {
		// Two NaNs may add to either's payload.
		if !(math.IsNaN(float64(sum[i])) && math.IsNaN(float64(wantSum[i]))) {
			t.Fatalf("%s: DecompressAdd element %d: got %v, want %v", what, i, sum[i], wantSum[i])
		}
	}
}

// TestImplsAgree compresses and decompresses the same tensors under every
// implementation and compares the payloads and tensors bit for bit, on
// random lengths and slice offsets (the SIMD kernels against the Go code).
func TestImplsAgree(t *testing.T) {
	if len(Impls()) < 2 {
		t.Skipf("only %v here: nothing to compare", Impls())
	}
	r := rand.New(rand.NewSource(2))
	for _, c := range []Compressor{onebit{}, onebit{scaling: true}, cast{id: FP16}, cast{id: BF16}} {
		sc := fmt.Sprint(c)
		for iter := 0; iter < 150; iter++ {
			n := r.Intn(5000)
			if iter%50 == 0 {
				n = 64*chunkElems/64 + r.Intn(300) // past one assembly call
			}
			names := []string{"normal", "bits", "specials", "nan", "denormal"}
			x := inputs(r, n+3)[names[iter%len(names)]]
			x = x[iter%3 : iter%3+n]
			var payloads [][]byte
			var outs, sums [][]float32
			base := make([]float32, n)
			for i := range base {
				base[i] = float32(r.NormFloat64())
			}
			for _, name := range Impls() {
				restore, _ := SetImpl(name)
				p, err := c.Compress(make([]byte, c.MaxSize(n)), x, Step{})
				if err != nil {
					t.Fatal(err)
				}
				out := make([]float32, n)
				if err := c.Decompress(out, p); err != nil {
					t.Fatal(err)
				}
				sum := slices.Clone(base)
				if err := c.DecompressAdd(sum, p); err != nil {
					t.Fatal(err)
				}
				restore()
				payloads, outs, sums = append(payloads, p), append(outs, out), append(sums, sum)
			}
			for i := 1; i < len(payloads); i++ {
				if string(payloads[i]) != string(payloads[0]) {
					t.Fatalf("%s n=%d: %s payload differs from %s", sc, n, Impls()[i], Impls()[0])
				}
				if j, ok := sameBits(outs[i], outs[0]); !ok {
					t.Fatalf("%s n=%d: %s decompresses element %d differently", sc, n, Impls()[i], j)
				}
				if j, ok := sameBits(sums[i], sums[0]); !ok {
					t.Fatalf("%s n=%d: %s DecompressAdd element %d differs", sc, n, Impls()[i], j)
				}
			}
		}
	}
}

// TestF16AllHalves decodes a payload holding every half, signalling NaNs
// included (which Compress never writes), under every implementation: the
// same bits everywhere, F16ToF32's except that NaNs come out quiet.
func TestF16AllHalves(t *testing.T) {
	n := 1 << 16
	p := make([]byte, castSize(n))
	putHeader(p, FP16, 0, 0, n)
	for i := 0; i < n; i++ {
		binary.LittleEndian.PutUint16(p[headerSize+2*i:], uint16(i))
	}
	for _, name := range Impls() {
		restore, _ := SetImpl(name)
		out := make([]float32, n)
		err := cast{id: FP16}.Decompress(out, p)
		sum := make([]float32, n)
		errAdd := cast{id: FP16}.DecompressAdd(sum, p)
		restore()
		if err != nil || errAdd != nil {
			t.Fatal(err, errAdd)
		}
		for i, v := range out {
			want := kernel.F16ToF32(uint16(i))
			if want != want {
				want = math.Float32frombits(math.Float32bits(want) | 0x00400000)
			}
			if math.Float32bits(v) != math.Float32bits(want) {
				t.Fatalf("%s: half %#04x decodes to %#08x, want %#08x", name, i, math.Float32bits(v), math.Float32bits(want))
			}
			if a := sum[i]; a != want && !(a != a && want != want) {
				t.Fatalf("%s: half %#04x added to 0 gives %v, want %v", name, i, a, want)
			}
		}
	}
}

// TestSizes checks payload sizes against the package doc's formulas, and
// the compression the codecs exist for.
func TestSizes(t *testing.T) {
	n := 1 << 16
	x := make([]float32, n)
	for i := range x {
		x[i] = float32(i%1000) - 500.5
	}
	for _, tc := range []struct {
		kv   map[string]string
		size int
	}{
		{map[string]string{"compressor": "onebit"}, 16 + n/8},
		{map[string]string{"compressor": "onebit", "scaling": "true"}, 16 + n/8},
		{map[string]string{"compressor": "topk", "k": "0.01"}, 12 + 8*656},
		{map[string]string{"compressor": "topk", "k": "1000"}, 12 + 8000},
		{map[string]string{"compressor": "randomk", "k": "0.01"}, 20 + 4*656},
		{map[string]string{"compressor": "dithering", "k": "8"}, 12 + 8*(n*5/64)},
		{map[string]string{"compressor": "dithering", "k": "7"}, 12 + 8*(n*4/64)},
		{map[string]string{"compressor": "fp16"}, 8 + 2*n},
	} {
		p, err := Parse(tc.kv)
		if err != nil {
			t.Fatal(err)
		}
		c, _ := New(p)
		if got := c.MaxSize(n); got != tc.size {
			t.Errorf("%v: MaxSize(%d) = %d, want %d", tc.kv, n, got, tc.size)
		}
		pl, err := c.Compress(make([]byte, c.MaxSize(n)), x, Step{})
		if err != nil || len(pl) != tc.size {
			t.Errorf("%v: payload of %d bytes (%v), want %d", tc.kv, len(pl), err, tc.size)
		}
	}
}

// TestCompressErrors checks the arguments Compress refuses.
func TestCompressErrors(t *testing.T) {
	for _, tc := range testCodecs() {
		c, _ := New(tc.p)
		x := make([]float32, 100)
		if _, err := c.Compress(make([]byte, c.MaxSize(100)-1), x, Step{}); err == nil {
			t.Errorf("%s: Compress into a buffer one byte short succeeded", tc.name)
		}
		p, err := c.Compress(make([]byte, c.MaxSize(100)), x, Step{})
		if err != nil {
			t.Fatal(err)
		}
		if err := c.Decompress(make([]float32, 99), p); err == nil || errors.Is(err, ErrCorrupt) {
			t.Errorf("%s: Decompress into the wrong length: %v, want a length error", tc.name, err)
		}
	}
}

// TestCorrupt checks that payloads damaged in ways a decoder must notice are
// refused, with ErrCorrupt, and that any single-byte change or truncation
// is either refused or decodes without writing past the tensor.
func TestCorrupt(t *testing.T) {
	r := rand.New(rand.NewSource(4))
	for _, tc := range testCodecs() {
		c, _ := New(tc.p)
		for _, n := range []int{1, 65, 300} {
			x := inputs(r, n)["normal"]
			p, err := c.Compress(make([]byte, c.MaxSize(n)), x, Step{Key: 1, Round: 2})
			if err != nil {
				t.Fatal(err)
			}
			dst := make([]float32, n)
			for cut := 0; cut < len(p); cut++ {
				if err := c.Decompress(dst, p[:cut:cut]); !errors.Is(err, ErrCorrupt) {
					t.Fatalf("%s n=%d: payload cut to %d of %d bytes: %v, want ErrCorrupt", tc.name, n, cut, len(p), err)
				}
			}
			long := append(slices.Clone(p), 0)
			if err := c.Decompress(dst, long); !errors.Is(err, ErrCorrupt) {
				t.Fatalf("%s n=%d: payload with a byte more: %v", tc.name, n, err)
			}
			for _, i := range []int{0, 1} {
				bad := slices.Clone(p)
				bad[i] ^= 0x40
				if err := c.Decompress(dst, bad); !errors.Is(err, ErrCorrupt) {
					t.Fatalf("%s: header byte %d changed: %v", tc.name, i, err)
				}
			}
			for iter := 0; iter < 200; iter++ {
				bad := slices.Clone(p)
				bad[r.Intn(len(bad))] ^= byte(1 << r.Intn(8))
				out := make([]float32, n+1)
				for i := range out {
					out[i] = float32(i) + 0.5
				}
				before := slices.Clone(out)
				err1 := c.Decompress(out[:n], bad)
				if err1 != nil {
					if i, ok := sameBits(out, before); !ok {
						t.Fatalf("%s: Decompress failed (%v) after writing element %d", tc.name, err1, i)
					}
				}
				copy(out, before)
				err2 := c.DecompressAdd(out[:n], bad)
				if err2 != nil {
					if i, ok := sameBits(out, before); !ok {
						t.Fatalf("%s: DecompressAdd failed (%v) after writing element %d", tc.name, err2, i)
					}
				}
				if (err1 == nil) != (err2 == nil) {
					t.Fatalf("%s: Decompress says %v, DecompressAdd %v", tc.name, err1, err2)
				}
				if out[n] != before[n] {
					t.Fatalf("%s: a damaged payload wrote past the tensor", tc.name)
				}
			}
		}
	}
}

// TestDeterminism checks that random-k and dithering give the same payload
// for the same seed, key and round, on independently built compressors
// (two workers), and a different one when any of them changes.
func TestDeterminism(t *testing.T) {
	x := inputs(rand.New(rand.NewSource(5)), 10000)["normal"]
	for _, kv := range []map[string]string{
		{"compressor": "randomk", "k": "0.05", "seed": "11"},
		{"compressor": "dithering", "k": "4", "seed": "11"},
	} {
		p, _ := Parse(kv)
		payload := func(p Params, at Step) string {
			c, _ := New(p)
			b, err := c.Compress(make([]byte, c.MaxSize(len(x))), x, at)
			if err != nil {
				t.Fatal(err)
			}
			return string(b)
		}
		at := Step{Key: proto.MakeKey(1, 2), Round: 9}
		a := payload(p, at)
		if b := payload(p, at); a != b {
			t.Errorf("%v: two compressors disagree", kv)
		}
		q := p
		q.Seed++
		for what, b := range map[string]string{
			"seed":  payload(q, at),
			"key":   payload(p, Step{Key: proto.MakeKey(1, 3), Round: 9}),
			"round": payload(p, Step{Key: at.Key, Round: 10}),
		} {
			if a == b {
				t.Errorf("%v: same payload for another %s", kv, what)
			}
		}
	}
}

// TestRandomKIndices checks that random-k keeps k distinct indices, one
// per stratum, and that over many rounds every element is kept about
// equally often.
func TestRandomKIndices(t *testing.T) {
	const n, k, rounds = 1000, 30, 4000
	c := randomk{k: K{Count: k}, seed: 3}
	x := make([]float32, n)
	for i := range x {
		x[i] = float32(i + 1)
	}
	count := make([]int, n)
	out := make([]float32, n)
	for rd := 0; rd < rounds; rd++ {
		p, _ := c.Compress(make([]byte, c.MaxSize(n)), x, Step{Key: 5, Round: uint64(rd)})
		if err := c.Decompress(out, p); err != nil {
			t.Fatal(err)
		}
		kept := 0
		for i, v := range out {
			if v != 0 {
				if v != x[i] {
					t.Fatalf("element %d: %v, want %v", i, v, x[i])
				}
				count[i]++
				kept++
			}
		}
		if kept != k {
			t.Fatalf("round %d: kept %d elements, want %d", rd, kept, k)
		}
	}
	// Each element is kept with probability 1/|stratum|, 1/33 or 1/34:
	// expected about 120 times in 4000 rounds, standard deviation about 11.
	for i, c := range count {
		if c < 50 || c > 200 {
			t.Fatalf("element %d kept %d times in %d rounds, expected about %d", i, c, rounds, rounds*k/n)
		}
	}
}

// TestDitherUnbiased checks that dithering's decompressed tensor is x on
// average: over R rounds each element's mean is within 6 standard
// deviations, where one round's deviation is at most half a level's gap.
func TestDitherUnbiased(t *testing.T) {
	const n, rounds = 200, 2000
	x := inputs(rand.New(rand.NewSource(6)), n)["normal"]
	for _, part := range []string{"linear", "natural"} {
		p, _ := Parse(map[string]string{"compressor": "dithering", "k": "4", "partition": part, "seed": "1"})
		c, _ := New(p)
		mean := make([]float64, n)
		out := make([]float32, n)
		var scale float64
		for rd := 0; rd < rounds; rd++ {
			pl, _ := c.Compress(make([]byte, c.MaxSize(n)), x, Step{Key: 1, Round: uint64(rd)})
			scale = float64(getF32(pl[headerSize:]))
			if err := c.Decompress(out, pl); err != nil {
				t.Fatal(err)
			}
			for i, v := range out {
				mean[i] += float64(v) / rounds
			}
		}
		for i := range x {
			// The widest gap between levels is scale/s (linear) or
			// scale/2 (natural, between 1/2 and 1).
			gap := scale / 4
			if part == "natural" {
				gap = scale / 2
			}
			if d := math.Abs(mean[i] - float64(x[i])); d > 6*gap/2/math.Sqrt(rounds) {
				t.Fatalf("%s: element %d: mean %v over %d rounds, x %v", part, i, mean[i], rounds, x[i])
			}
		}
	}
}

// TestWidenNarrow checks the dtype helpers against summation/kernel's
// conversions.
func TestWidenNarrow(t *testing.T) {
	x := inputs(rand.New(rand.NewSource(7)), 100)["specials"]
	for _, dt := range []proto.DType{proto.Float32, proto.Float16, proto.BFloat16} {
		b := make([]byte, 100*dt.Size())
		if err := Narrow(dt, b, x); err != nil {
			t.Fatal(err)
		}
		got := make([]float32, 100)
		if err := Widen(dt, got, b); err != nil {
			t.Fatal(err)
		}
		want := x
		if dt == proto.Float16 {
			want = refCast(x, FP16)
		} else if dt == proto.BFloat16 {
			want = refCast(x, BF16)
		}
		if i, ok := sameBits(got, want); !ok {
			t.Errorf("%s: element %d: %v, want %v", dt, i, got[i], want[i])
		}
		if binary.LittleEndian.Uint16(b) == 0xffff {
			t.Fatal("unreachable")
		}
	}
	if err := Widen(proto.Int32, make([]float32, 1), make([]byte, 4)); err == nil {
		t.Error("Widen of int32 succeeded")
	}
}

// TestTopKSampled checks top-k on tensors long enough for selectTop to
// sample a bound, including ones that defeat the sample (spikes at exactly
// the sampled stride, which force the fallback) and heavy ties.
func TestTopKSampled(t *testing.T) {
	const n = 16*sampleSize + 1000
	r := rand.New(rand.NewSource(11))
	stride := n / sampleSize
	gens := map[string]func(i int) float32{
		"normal":     func(int) float32 { return float32(r.NormFloat64()) },
		"few":        func(i int) float32 { return float32(i % 3) },
		"increasing": func(i int) float32 { return float32(i) },
		"spikes": func(i int) float32 {
			if i%stride == 0 {
				return 1000
			}
			return float32(r.NormFloat64())
		},
		"zeros": func(int) float32 { return 0 },
	}
	for name, gen := range gens {
		x := make([]float32, n)
		for i := range x {
			x[i] = gen(i)
		}
		order := topOrder(x)
		for _, k := range []K{{Fraction: 0.01}, {Fraction: 0.5}, {Count: 1}, {Count: n - 1}} {
			c := topk{k: k}
			p, err := c.Compress(make([]byte, c.MaxSize(n)), x, Step{})
			if err != nil {
				t.Fatal(err)
			}
			got := make([]float32, n)
			if err := c.Decompress(got, p); err != nil {
				t.Fatal(err)
			}
			if i, ok := sameBits(got, refTopKOf(x, order, k.Of(n))); !ok {
				t.Fatalf("%s k=%v: element %d differs from the reference", name, k, i)
			}
		}
	}
}
