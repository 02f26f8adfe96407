package kernel

import (
	"encoding/binary"
	"fmt"
	"math"
	"math/rand"
	"testing"

	"github.com/gobps/gobps/proto"
)

// The differential tests run every implementation this CPU has against the
// scalar code (addGeneric) on random lengths and byte offsets, with canary
// bytes around every slice. Results must be bit-identical, except that where
// both inputs are NaNs the result need only be a NaN: which of the two
// payloads propagates depends on operand order, which the Go compiler may
// choose either way for the scalar loop.

// canary is the number of guard bytes kept before and after every slice.
const canary = 64

// guarded is a slice at a byte offset inside a larger buffer whose other
// bytes hold a known pattern.
type guarded struct {
	buf []byte
	off int
	p   []byte
}

func newGuarded(n, off int) guarded {
	buf := make([]byte, canary+off+n+canary)
	for i := range buf {
		buf[i] = byte(0xa5 ^ i*7)
	}
	start := canary + off
	return guarded{buf: buf, off: start, p: buf[start : start+n : start+n]}
}

// check reports whether any byte outside the slice changed.
func (g guarded) check(t testing.TB, what string) {
	t.Helper()
	for i, c := range g.buf {
		if i >= g.off && i < g.off+len(g.p) {
			continue
		}
		if c != byte(0xa5^i*7) {
			t.Fatalf("%s: canary byte %d bytes from the slice start overwritten", what, i-g.off)
		}
	}
}

// fillRandom fills p with values of dt chosen to exercise a kernel: random
// bit patterns for the integer types; for the float types, mostly values of
// similar magnitude (so that sums round), some random bit patterns (wide
// exponents, denormals) and some specials (zeros, denormals, Inf, NaN).
func fillRandom(r *rand.Rand, dt proto.DType, p []byte) {
	le := binary.LittleEndian
	switch dt {
	case proto.Uint8, proto.Int32, proto.Int64:
		r.Read(p)
	case proto.Float32:
		for i := 0; i < len(p); i += 4 {
			le.PutUint32(p[i:], math.Float32bits(randFloat32(r)))
		}
	case proto.Float64:
		for i := 0; i < len(p); i += 8 {
			le.PutUint64(p[i:], randFloat64Bits(r))
		}
	case proto.Float16:
		for i := 0; i < len(p); i += 2 {
			h := uint16(r.Uint32())
			if r.Intn(2) == 0 {
				h = F32ToF16(float32(r.NormFloat64() * math.Ldexp(1, r.Intn(12)-6)))
			}
			le.PutUint16(p[i:], h)
		}
	case proto.BFloat16:
		for i := 0; i < len(p); i += 2 {
			h := uint16(r.Uint32())
			if r.Intn(2) == 0 {
				h = F32ToBF16(float32(r.NormFloat64() * math.Ldexp(1, r.Intn(12)-6)))
			}
			le.PutUint16(p[i:], h)
		}
	default:
		panic(dt)
	}
}

var specials32 = []uint32{0, 0x80000000, 1, 0x80000001, 0x007fffff, 0x00800000, 0x7f7fffff, 0xff7fffff,
	0x7f800000, 0xff800000, 0x7fc00000, 0xffc00000, 0x7f800001, 0x7fc12345}

func randFloat32(r *rand.Rand) float32 {
	switch k := r.Intn(20); {
	case k < 14:
		return float32(r.NormFloat64() * math.Ldexp(1, r.Intn(20)-10))
	case k < 19:
		b := r.Uint32()
		if b&0x7f800000 == 0x7f800000 {
			b &^= 0x40000000 // finite
		}
		return math.Float32frombits(b)
	default:
		return math.Float32frombits(specials32[r.Intn(len(specials32))])
	}
}

var specials64 = []uint64{0, 1 << 63, 1, 0x000fffffffffffff, 0x0010000000000000, 0x7fefffffffffffff,
	0x7ff0000000000000, 0xfff0000000000000, 0x7ff8000000000000, 0xfff8000000000000, 0x7ff0000000000001}

func randFloat64Bits(r *rand.Rand) uint64 {
	switch k := r.Intn(20); {
	case k < 14:
		return math.Float64bits(r.NormFloat64() * math.Ldexp(1, r.Intn(40)-20))
	case k < 19:
		b := r.Uint64()
		if b&0x7ff0000000000000 == 0x7ff0000000000000 {
			b &^= 0x4000000000000000
		}
		return b
	default:
		return specials64[r.Intn(len(specials64))]
	}
}

// isNaN reports whether element i of p, of dtype dt, is a NaN.
func isNaN(dt proto.DType, p []byte, i int) bool {
	le := binary.LittleEndian
	switch dt {
	case proto.Float32:
		return le.Uint32(p[4*i:])&0x7fffffff > 0x7f800000
	case proto.Float64:
		return le.Uint64(p[8*i:])&(1<<63-1) > 0x7ff0000000000000
	case proto.Float16:
		return le.Uint16(p[2*i:])&0x7fff > 0x7c00
	case proto.BFloat16:
		return le.Uint16(p[2*i:])&0x7fff > 0x7f80
	}
	return false
}

// compare checks got against want element by element (see the top of this
// file for the NaN exception); a and b are the inputs.
func compare(t testing.TB, what string, dt proto.DType, got, want, a, b []byte) {
	t.Helper()
	sz := dt.Size()
	for i := 0; i < len(got)/sz; i++ {
		g, w := got[i*sz:(i+1)*sz], want[i*sz:(i+1)*sz]
		if string(g) == string(w) {
			continue
		}
		if isNaN(dt, a, i) && isNaN(dt, b, i) && isNaN(dt, got, i) && isNaN(dt, want, i) {
			continue
		}
		t.Fatalf("%s: element %d of %d: %x + %x = %x, scalar code says %x",
			what, i, len(got)/sz, a[i*sz:(i+1)*sz], b[i*sz:(i+1)*sz], g, w)
	}
}

// mode is how a kernel is called.
type mode int

const (
	modeAdd      mode = iota // Add(dst, src): dst = dst + src
	modeAddTo                // AddTo(dst, a, b), three distinct slices
	modeAddToAlB             // AddTo(b, a, b): dst is the second operand
)

func (m mode) String() string { return [...]string{"Add", "AddTo", "AddTo(b,a,b)"}[m] }

// diff runs implementation m over n bytes of dt at the given byte offsets in
// the given mode, and checks the result against the scalar code, the
// canaries and the inputs.
func diff(t testing.TB, r *rand.Rand, m *impl, dt proto.DType, md mode, n, offD, offA, offB int) {
	t.Helper()
	what := fmt.Sprintf("%s %s %s %d bytes, offsets %d/%d/%d", m.name, dt, md, n, offD, offA, offB)
	a, b := newGuarded(n, offA), newGuarded(n, offB)
	fillRandom(r, dt, a.p)
	fillRandom(r, dt, b.p)
	want := make([]byte, n)
	addGeneric(dt, want, a.p, b.p)
	a0, b0 := string(a.p), string(b.p)

	var d guarded
	switch md {
	case modeAdd:
		d = a
		m.sum(dt, a.p, a.p, b.p)
	case modeAddTo:
		d = newGuarded(n, offD)
		fillRandom(r, dt, d.p)
		m.sum(dt, d.p, a.p, b.p)
	case modeAddToAlB:
		d = b
		m.sum(dt, b.p, a.p, b.p)
	}
	d.check(t, what+": dst")
	a.check(t, what+": a")
	b.check(t, what+": b")
	// The inputs as they were, for messages and the NaN rule.
	ia, ib := []byte(a0), []byte(b0)
	if md != modeAdd && string(a.p) != a0 {
		t.Fatalf("%s: a changed", what)
	}
	if md != modeAddToAlB && string(b.p) != b0 {
		t.Fatalf("%s: b changed", what)
	}
	compare(t, what, dt, d.p, want, ia, ib)
}

// TestKernelsMatchScalar is the differential test.
func TestKernelsMatchScalar(t *testing.T) {
	if len(impls) == 1 {
		t.Log("no SIMD implementation on this CPU or build: nothing to compare")
	}
	r := rand.New(rand.NewSource(3))
	maxBytes, big := 4<<20, 8
	if testing.Short() {
		maxBytes, big = 256<<10, 4
	}
	for _, m := range impls[1:] {
		t.Run(m.name, func(t *testing.T) {
			for _, dt := range proto.AllDTypes() {
				sz := dt.Size()
				// Every small length: empty, shorter than a vector, and
				// around every multiple of the unrolled loop.
				for e := 0; e <= 600/sz; e++ {
					md := mode(e % 3)
					diff(t, r, m, dt, md, e*sz, r.Intn(64), r.Intn(64), r.Intn(64))
				}
				// Aligned as the server's buffers are.
				for _, e := range []int{1, 64, 1000, 4096, 65536 + 3} {
					for md := modeAdd; md <= modeAddToAlB; md++ {
						diff(t, r, m, dt, md, e*sz, 0, 0, 0)
					}
				}
				// Large random lengths, misaligned.
				for i := 0; i < big; i++ {
					n := r.Intn(maxBytes/sz+1) * sz
					diff(t, r, m, dt, mode(i%3), n, 1+r.Intn(63), 1+r.Intn(63), 1+r.Intn(63))
				}
			}
		})
	}
}

// TestHalfEveryValue runs every float16 and bfloat16 bit pattern, as either
// operand, against random partners through every implementation.
func TestHalfEveryValue(t *testing.T) {
	r := rand.New(rand.NewSource(6))
	const reps = 4
	for _, dt := range []proto.DType{proto.Float16, proto.BFloat16} {
		n := 2 * reps << 16 // bytes
		a, b := make([]byte, n), make([]byte, n)
		for i := 0; i < n/2; i++ {
			binary.LittleEndian.PutUint16(a[2*i:], uint16(i))
		}
		fillRandom(r, dt, b)
		for _, swap := range []bool{false, true} {
			x, y := a, b
			if swap {
				x, y = b, a
			}
			want := make([]byte, n)
			addGeneric(dt, want, x, y)
			for _, m := range impls[1:] {
				got := make([]byte, n)
				m.sum(dt, got, x, y)
				compare(t, fmt.Sprintf("%s %s, every value as operand %d", m.name, dt, map[bool]int{false: 1, true: 2}[swap]), dt, got, want, x, y)
			}
		}
	}
}

// FuzzKernels feeds fuzzed inputs at fuzzed offsets to every implementation
// and compares with the scalar code.
func FuzzKernels(f *testing.F) {
	r := rand.New(rand.NewSource(4))
	for _, dt := range proto.AllDTypes() {
		for _, n := range []int{0, 1, 31, 64, 300} {
			a, b := make([]byte, n*dt.Size()), make([]byte, n*dt.Size())
			fillRandom(r, dt, a)
			fillRandom(r, dt, b)
			f.Add(uint8(dt), uint32(r.Int31()), a, b)
		}
	}
	dts := proto.AllDTypes()
	f.Fuzz(func(t *testing.T, dtSel uint8, offs uint32, a, b []byte) {
		dt := dts[int(dtSel)%len(dts)]
		n := min(len(a), len(b))
		n -= n % dt.Size()
		offD, offA, offB := int(offs&63), int(offs>>6&63), int(offs>>12&63)
		md := mode(offs >> 18 % 3)
		for _, m := range impls {
			what := fmt.Sprintf("%s %s %s %d bytes, offsets %d/%d/%d", m.name, dt, md, n, offD, offA, offB)
			ga, gb := newGuarded(n, offA), newGuarded(n, offB)
			copy(ga.p, a)
			copy(gb.p, b)
			want := make([]byte, n)
			addGeneric(dt, want, a[:n], b[:n])
			d := ga
			switch md {
			case modeAddTo:
				d = newGuarded(n, offD)
				m.sum(dt, d.p, ga.p, gb.p)
			case modeAdd:
				m.sum(dt, ga.p, ga.p, gb.p)
			case modeAddToAlB:
				d = gb
				m.sum(dt, gb.p, ga.p, gb.p)
			}
			d.check(t, what+": dst")
			ga.check(t, what+": a")
			gb.check(t, what+": b")
			compare(t, what, dt, d.p, want, a, b)
		}
	})
}

// TestHalfSumsWithinRounding checks the half-precision sums of every
// implementation against a float64 reference: the result is the float32
// sum rounded to the dtype, so it is within half an ulp of the dtype plus
// half an ulp of float32 of the exact sum, and overflows to Inf only past
// the dtype's largest finite value plus half an ulp.
func TestHalfSumsWithinRounding(t *testing.T) {
	r := rand.New(rand.NewSource(5))
	for _, m := range impls {
		for _, dt := range []proto.DType{proto.Float16, proto.BFloat16} {
			toF, mant, minExp, maxMid := F16ToF32, 10, -14, 65520.0
			if dt == proto.BFloat16 {
				toF, mant, minExp, maxMid = BF16ToF32, 7, -126, math.Ldexp(255.5, 120)
			}
			// ulp is the spacing of the dtype's values at |v|.
			ulp := func(v float64) float64 {
				if v == 0 {
					return math.Ldexp(1, minExp-mant)
				}
				_, e := math.Frexp(v) // v = f × 2^e, f in [0.5, 1)
				return math.Ldexp(1, max(e-1, minExp)-mant)
			}
			n := 1 << 16
			a, b, d := make([]byte, 2*n), make([]byte, 2*n), make([]byte, 2*n)
			fillRandom(r, dt, a)
			fillRandom(r, dt, b)
			m.sum(dt, d, a, b)
			for i := 0; i < n; i++ {
				x := float64(toF(binary.LittleEndian.Uint16(a[2*i:])))
				y := float64(toF(binary.LittleEndian.Uint16(b[2*i:])))
				got := float64(toF(binary.LittleEndian.Uint16(d[2*i:])))
				exact := x + y
				switch {
				case math.IsNaN(x) || math.IsNaN(y) || math.IsInf(x, 0) || math.IsInf(y, 0):
					continue // covered bit for bit by the differential test
				case math.IsInf(got, 0):
					if math.Abs(exact) < maxMid*(1-0x1p-23) || math.Signbit(got) != math.Signbit(exact) {
						t.Fatalf("%s %s: %v + %v = %v", m.name, dt, x, y, got)
					}
				case math.Abs(got-exact) > ulp(got)/2+math.Abs(exact)*0x1p-24:
					t.Fatalf("%s %s: %v + %v = %v, off by %g ulp", m.name, dt, x, y, got, math.Abs(got-exact)/ulp(got))
				}
			}
		}
	}
}

// TestImplHook checks SetImpl and Impl.
func TestImplHook(t *testing.T) {
	best := Impl()
	if best != impls[len(impls)-1].name {
		t.Fatalf("Impl() = %q, want the best available, %q", best, impls[len(impls)-1].name)
	}
	for _, name := range Impls() {
		restore, err := SetImpl(name)
		if err != nil {
			t.Fatal(err)
		}
		if Impl() != name {
			t.Fatalf("after SetImpl(%q), Impl() = %q", name, Impl())
		}
		// Through the public API: 3 + 4 over a length with a tail.
		d, s := make([]byte, 4*37), make([]byte, 4*37)
		for i := 0; i < 37; i++ {
			binary.LittleEndian.PutUint32(d[4*i:], math.Float32bits(3))
			binary.LittleEndian.PutUint32(s[4*i:], math.Float32bits(4))
		}
		Add(proto.Float32, d, s)
		AddTo(proto.Float32, s, d, s)
		for i := 0; i < 37; i++ {
			if v := math.Float32frombits(binary.LittleEndian.Uint32(s[4*i:])); v != 11 {
				t.Fatalf("%s: element %d = %v, want 11", name, i, v)
			}
		}
		restore()
		if Impl() != best {
			t.Fatalf("restore left %q, want %q", Impl(), best)
		}
	}
	if _, err := SetImpl("sse9"); err == nil {
		t.Fatal("SetImpl of an unknown implementation succeeded")
	}
}

func TestPanics(t *testing.T) {
	for _, c := range []struct {
		desc string
		f    func()
	}{
		{"Add lengths differ", func() { Add(proto.Float32, make([]byte, 8), make([]byte, 4)) }},
		{"Add partial element", func() { Add(proto.Float32, make([]byte, 6), make([]byte, 6)) }},
		{"Add invalid dtype", func() { Add(0, nil, nil) }},
		{"AddTo lengths differ", func() { AddTo(proto.Int64, make([]byte, 8), make([]byte, 8), make([]byte, 16)) }},
		{"AddTo partial element", func() { AddTo(proto.Int64, make([]byte, 4), make([]byte, 4), make([]byte, 4)) }},
	} {
		func() {
			defer func() {
				if recover() == nil {
					t.Errorf("%s: no panic", c.desc)
				}
			}()
			c.f()
		}()
	}
}
