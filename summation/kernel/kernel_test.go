package kernel

import (
	"math"
	"math/rand"
	"testing"

	"github.com/gobps/gobps/proto"
)

// TestF16RoundTrip checks every half value survives widening and narrowing.
func TestF16RoundTrip(t *testing.T) {
	for h := 0; h < 1<<16; h++ {
		f := F16ToF32(uint16(h))
		got := F32ToF16(f)
		if math.IsNaN(float64(f)) {
			if got&0x7c00 != 0x7c00 || got&0x3ff == 0 {
				t.Fatalf("NaN %#04x -> %#04x", h, got)
			}
			continue
		}
		if got != uint16(h) {
			t.Fatalf("%#04x -> %v -> %#04x", h, f, got)
		}
	}
}

// TestF16Rounding compares with a float64 reference: the result must be the
// nearest half, ties to even.
func TestF16Rounding(t *testing.T) {
	r := rand.New(rand.NewSource(1))
	for i := 0; i < 200000; i++ {
		f := float32(r.NormFloat64() * math.Pow(2, float64(r.Intn(40)-25)))
		h := F32ToF16(f)
		got := float64(F16ToF32(h))
		if math.IsInf(got, 0) {
			continue
		}
		// neighbours
		lo, hi := float64(F16ToF32(h-1)), float64(F16ToF32(h+1))
		d := math.Abs(got - float64(f))
		if math.Abs(lo-float64(f)) < d || math.Abs(hi-float64(f)) < d {
			t.Fatalf("%v rounded to %v (%#04x), a neighbour is closer", f, got, h)
		}
	}
}

func TestBF16(t *testing.T) {
	cases := []struct {
		in   float32
		want uint16
	}{
		{1, 0x3f80},
		{math.Float32frombits(0x3f808000), 0x3f80}, // tie, even stays
		{math.Float32frombits(0x3f818000), 0x3f82}, // tie, odd rounds up
		{math.Float32frombits(0x3f808001), 0x3f81},
	}
	for _, c := range cases {
		if got := F32ToBF16(c.in); got != c.want {
			t.Errorf("F32ToBF16(%#08x) = %#04x, want %#04x", math.Float32bits(c.in), got, c.want)
		}
	}
	if !math.IsNaN(float64(BF16ToF32(F32ToBF16(float32(math.NaN()))))) {
		t.Error("NaN lost")
	}
}

func TestAddMatchesReference(t *testing.T) {
	r := rand.New(rand.NewSource(2))
	for _, dt := range proto.AllDTypes() {
		n := 1 + r.Intn(1000)
		a := make([]byte, n*dt.Size())
		b := make([]byte, n*dt.Size())
		r.Read(a)
		r.Read(b)
		if dt == proto.Float16 || dt == proto.BFloat16 || dt == proto.Float32 || dt == proto.Float64 {
			// finite integer values so the reference is exact
			fill(dt, a, func(i int) float64 { return float64(i%13 - 6) })
			fill(dt, b, func(i int) float64 { return float64(i%7 - 3) })
		}
		want := make([]byte, len(a))
		copy(want, a)
		ref(dt, want, b)
		Add(dt, a, b)
		if string(a) != string(want) {
			t.Errorf("%s: Add differs from reference", dt)
		}
	}
}

func fill(dt proto.DType, b []byte, f func(int) float64) {
	switch dt {
	case proto.Float32:
		for i, v := range as[float32](b) {
			_ = v
			as[float32](b)[i] = float32(f(i))
		}
	case proto.Float64:
		for i := range as[float64](b) {
			as[float64](b)[i] = f(i)
		}
	case proto.Float16:
		for i := range as[uint16](b) {
			as[uint16](b)[i] = F32ToF16(float32(f(i)))
		}
	case proto.BFloat16:
		for i := range as[uint16](b) {
			as[uint16](b)[i] = F32ToBF16(float32(f(i)))
		}
	}
}

// ref is the dumbest possible element-wise sum, through float64 for floats.
func ref(dt proto.DType, d, s []byte) {
	switch dt {
	case proto.Uint8:
		for i := range d {
			d[i] += s[i]
		}
	case proto.Int32:
		dd, ss := as[int32](d), as[int32](s)
		for i := range dd {
			dd[i] = int32(int64(dd[i]) + int64(ss[i]))
		}
	case proto.Int64:
		dd, ss := as[int64](d), as[int64](s)
		for i := range dd {
			dd[i] += ss[i]
		}
	case proto.Float32:
		dd, ss := as[float32](d), as[float32](s)
		for i := range dd {
			dd[i] = float32(float64(dd[i]) + float64(ss[i]))
		}
	case proto.Float64:
		dd, ss := as[float64](d), as[float64](s)
		for i := range dd {
			dd[i] += ss[i]
		}
	case proto.Float16:
		dd, ss := as[uint16](d), as[uint16](s)
		for i := range dd {
			dd[i] = F32ToF16(float32(float64(F16ToF32(dd[i])) + float64(F16ToF32(ss[i]))))
		}
	case proto.BFloat16:
		dd, ss := as[uint16](d), as[uint16](s)
		for i := range dd {
			dd[i] = F32ToBF16(float32(float64(BF16ToF32(dd[i])) + float64(BF16ToF32(ss[i]))))
		}
	}
}

func TestDiv(t *testing.T) {
	b := make([]byte, 8)
	as[float32](b)[0], as[float32](b)[1] = 6, -3
	if err := Div(proto.Float32, b, 3); err != nil {
		t.Fatal(err)
	}
	if as[float32](b)[0] != 2 || as[float32](b)[1] != -1 {
		t.Fatalf("got %v", as[float32](b))
	}
	if err := Div(proto.Int32, b, 2); err == nil {
		t.Fatal("integer average accepted")
	}
}
