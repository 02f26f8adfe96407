package codec

import (
	"fmt"
	"math"
	"math/rand"
	"slices"
	"sync"
	"testing"

	"github.com/gobps/gobps/proto"
)

// TestErrorFeedbackConservation runs error feedback over many steps and
// checks, element by element, that the inputs' sum equals the sum of what
// was sent (decompressed) plus the final residual. Exactly, e_T = Σx - Σsent;
// in float32 each step rounds twice, c = x + e and e = c - d, each by at
// most 2^-24 of its result, so the test allows Σ 2^-24·(|c|+|e|) over the
// steps (computed as it goes) and float64 noise on top. Without error
// feedback the same check fails by far, which the test also asserts.
func TestErrorFeedbackConservation(t *testing.T) {
	const n, steps = 1000, 200
	for _, kv := range []map[string]string{
		{"compressor": "onebit", "scaling": "true"},
		{"compressor": "onebit"},
		{"compressor": "topk", "k": "0.01"},
		{"compressor": "randomk", "k": "0.1", "seed": "3"},
		{"compressor": "dithering", "k": "4", "seed": "3"},
		{"compressor": "dithering", "k": "2", "partition": "natural", "normalize": "l2"},
		{"compressor": "fp16"},
	} {
		p, err := Parse(kv)
		if err != nil {
			t.Fatal(err)
		}
		inner, _ := New(p)
		ef := NewErrorFeedback(inner)
		r := rand.New(rand.NewSource(8))
		key := proto.MakeKey(4, 0)
		var sumX, sumSent, bound, sumPlain [n]float64
		x := make([]float32, n)
		d := make([]float32, n)
		buf := make([]byte, ef.MaxSize(n))
		for step := 0; step < steps; step++ {
			for i := range x {
				x[i] = float32(r.NormFloat64() * (1 + float64(i%7)))
				sumX[i] += float64(x[i])
			}
			prev := ef.Residual(key)
			if prev == nil {
				prev = make([]float32, n)
			}
			pl, err := ef.Compress(buf, x, Step{Key: key, Round: uint64(step)})
			if err != nil {
				t.Fatal(err)
			}
			if err := ef.Decompress(d, pl); err != nil {
				t.Fatal(err)
			}
			e := ef.Residual(key)
			for i := range d {
				sumSent[i] += float64(d[i])
				c := float64(x[i] + prev[i])
				bound[i] += 0x1p-24 * (math.Abs(c) + math.Abs(float64(e[i])))
			}
			// The same codec without error feedback, for contrast.
			pl, _ = inner.Compress(buf, x, Step{Key: key, Round: uint64(step)})
			_ = inner.Decompress(d, pl)
			for i := range d {
				sumPlain[i] += float64(d[i])
			}
		}
		e := ef.Residual(key)
		worstPlain := 0.0
		for i := range e {
			got := sumSent[i] + float64(e[i])
			tol := bound[i] + 1e-12*math.Abs(sumX[i])
			if diff := math.Abs(got - sumX[i]); diff > tol {
				t.Fatalf("%v: element %d: sent %v + residual %v = %v, inputs sum to %v: off by %v, tolerance %v", kv, i, sumSent[i], e[i], got, sumX[i], diff, tol)
			}
			worstPlain = max(worstPlain, math.Abs(sumPlain[i]-sumX[i])/(bound[i]+1e-12*math.Abs(sumX[i])))
		}
		if worstPlain < 10 {
			t.Errorf("%v: without error feedback the sums are off by at most %.1f× the tolerance: the check cannot tell", kv, worstPlain)
		}
	}
}

// recorder is a Compressor that records what it is given and sends it
// as raw float32 bits (under the ID of fp16, which no test decodes with
// the real codec), for checking decorators.
type recorder struct {
	mu  sync.Mutex
	got [][]float32
}

func (*recorder) ID() ID            { return FP16 }
func (*recorder) MaxSize(n int) int { return 4 * n }
func (r *recorder) Compress(dst []byte, src []float32, _ Step) ([]byte, error) {
	r.mu.Lock()
	r.got = append(r.got, slices.Clone(src))
	r.mu.Unlock()
	for i, x := range src {
		putF32(dst[4*i:], x)
	}
	return dst[:4*len(src)], nil
}
func (*recorder) Decompress(dst []float32, p []byte) error {
	for i := range dst {
		dst[i] = getF32(p[4*i:])
	}
	return nil
}
func (r *recorder) DecompressAdd(dst []float32, p []byte) error {
	for i := range dst {
		dst[i] += getF32(p[4*i:])
	}
	return nil
}

// TestMomentum checks Nesterov momentum against its formula, bit for bit:
// m = mu·m + x, then x + mu·m is compressed.
func TestMomentum(t *testing.T) {
	rec := &recorder{}
	const mu = float32(0.9)
	m := NewMomentum(rec, mu)
	r := rand.New(rand.NewSource(9))
	mom := make([]float32, 50)
	for step := 0; step < 10; step++ {
		x := make([]float32, 50)
		for i := range x {
			x[i] = float32(r.NormFloat64())
		}
		want := make([]float32, 50)
		for i := range x {
			prod := mu * mom[i]
			mom[i] = prod + x[i]
			prod = mu * mom[i]
			want[i] = x[i] + prod
		}
		if _, err := m.Compress(make([]byte, 200), x, Step{Key: 1}); err != nil {
			t.Fatal(err)
		}
		if i, ok := sameBits(rec.got[step], want); !ok {
			t.Fatalf("step %d element %d: compressed %v, want %v", step, i, rec.got[step][i], want[i])
		}
		if i, ok := sameBits(m.State(1), mom); !ok {
			t.Fatalf("step %d element %d: momentum %v, want %v", step, i, m.State(1)[i], mom[i])
		}
	}
	if _, err := m.Compress(make([]byte, 400), make([]float32, 100), Step{Key: 1}); err == nil {
		t.Error("momentum accepted a key's tensor changing size")
	}
}

// TestWorkerStack checks NewWorker's order, momentum outside error
// feedback, and NewServer's, error feedback alone.
func TestWorkerStack(t *testing.T) {
	p, _ := Parse(map[string]string{"compressor": "topk", "k": "3", "ef": "vanilla", "momentum": "nesterov", "mu": "0.5"})
	w, err := NewWorker(p)
	if err != nil {
		t.Fatal(err)
	}
	mom, ok := w.(*Momentum)
	if !ok || mom.factor != 0.5 {
		t.Fatalf("worker compressor %T, want *Momentum with factor 0.5", w)
	}
	if _, ok := mom.inner.(*ErrorFeedback); !ok {
		t.Fatalf("inside momentum: %T, want *ErrorFeedback", mom.inner)
	}
	s, _ := NewServer(p)
	if ef, ok := s.(*ErrorFeedback); !ok || ef.ID() != TopK {
		t.Fatalf("server compressor %T, want *ErrorFeedback of topk", s)
	}
	p.EF, p.Momentum, p.Mu = false, false, 0
	if c, _ := NewWorker(p); fmt.Sprintf("%T", c) != "codec.topk" {
		t.Fatalf("worker without decorators: %T", c)
	}
}

// TestErrorFeedbackKeys checks that keys keep separate residuals, that a
// key's size is fixed, and that keys can be used from several goroutines
// (go test -race).
func TestErrorFeedbackKeys(t *testing.T) {
	c, _ := New(Params{Codec: TopK, K: K{Count: 1}})
	ef := NewErrorFeedback(c)
	buf := make([]byte, ef.MaxSize(4))
	if _, err := ef.Compress(buf, []float32{1, 2, 3, 4}, Step{Key: 1}); err != nil {
		t.Fatal(err)
	}
	if _, err := ef.Compress(buf, []float32{1, 1, 1, 1}, Step{Key: 2}); err != nil {
		t.Fatal(err)
	}
	if got := ef.Residual(1); !slices.Equal(got, []float32{1, 2, 3, 0}) {
		t.Errorf("key 1 residual %v", got)
	}
	if got := ef.Residual(2); !slices.Equal(got, []float32{0, 1, 1, 1}) {
		t.Errorf("key 2 residual %v", got)
	}
	if _, err := ef.Compress(make([]byte, 100), []float32{1, 2}, Step{Key: 1}); err == nil {
		t.Error("error feedback accepted a key's tensor changing size")
	}
	if _, err := ef.Compress(buf[:len(buf)-1], []float32{1, 2, 3, 4}, Step{Key: 1}); err == nil {
		t.Error("short buffer accepted")
	}
	if got := ef.Residual(1); !slices.Equal(got, []float32{1, 2, 3, 0}) {
		t.Errorf("key 1 residual %v after refused calls", got)
	}
	ef.Forget(1)
	if ef.Residual(1) != nil {
		t.Error("Forget kept the residual")
	}

	p, _ := Parse(map[string]string{"compressor": "onebit", "scaling": "1", "ef": "vanilla", "momentum": "nesterov"})
	w, _ := NewWorker(p)
	var wg sync.WaitGroup
	for g := 0; g < 4; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			x := make([]float32, 300)
			buf := make([]byte, w.MaxSize(300))
			out := make([]float32, 300)
			for step := 0; step < 50; step++ {
				for i := range x {
					x[i] = float32(g*step - i)
				}
				p, err := w.Compress(buf, x, Step{Key: proto.Key(g), Round: uint64(step)})
				if err != nil {
					t.Error(err)
					return
				}
				if err := w.DecompressAdd(out, p); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
}
