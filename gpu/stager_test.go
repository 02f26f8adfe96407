package gpu_test

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gobps/gobps/gpu"
	"github.com/gobps/gobps/gpu/fake"
	"github.com/gobps/gobps/internal/leakcheck"
)

// harness is a fake device with a framework stream, a pool and a stager,
// all closed (and checked for leaks) at the end of the test.
type harness struct {
	t    *testing.T
	dev  *fake.Device
	fw   *fake.Stream // the framework's stream, as tests drive it
	fws  gpu.Stream   // the same, as the engine sees it (ForeignStream)
	pool *gpu.Pool
	st   *gpu.Stager
}

func newHarness(t *testing.T, dopt fake.Options, popt gpu.PoolOptions, knobs ...func(*gpu.Stager)) *harness {
	t.Helper()
	leakcheck.Check(t, "github.com/gobps/gobps/gpu")
	h := &harness{t: t, dev: fake.New(dopt)}
	h.fw = h.dev.NewFrameworkStream()
	var err error
	if h.fws, err = h.dev.ForeignStream(h.fw.Handle()); err != nil {
		t.Fatal(err)
	}
	if popt.Pinned == nil {
		popt.Pinned = h.dev.AllocHost
	}
	popt.Poison = true
	if h.pool, err = gpu.NewPool(popt); err != nil {
		t.Fatal(err)
	}
	if h.st, err = gpu.NewStager(h.dev, h.pool, gpu.StagerOptions{Timeout: 5 * time.Second}); err != nil {
		t.Fatal(err)
	}
	for _, k := range knobs {
		k(h.st)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := h.st.Close(ctx); err != nil {
			t.Errorf("Stager.Close: %v", err)
		}
		if n := h.pool.Outstanding(); n != 0 {
			t.Errorf("%d staging buffers leaked", n)
		}
		if err := h.pool.Close(); err != nil {
			t.Errorf("Pool.Close: %v", err)
		}
		if n := h.dev.PinnedBytes(); n != 0 {
			t.Errorf("%d bytes of pinned memory not freed", n)
		}
		_ = h.fw.Close()
		if err := h.dev.Close(); err != nil {
			t.Errorf("Device.Close: %v", err)
		}
	})
	return h
}

func (h *harness) ctx(d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	h.t.Cleanup(cancel)
	return ctx
}

// tensor is one gradient in device memory.
type tensor struct {
	ptr gpu.DevPtr
	n   int // float32 elements
}

func gradient(round, i, n int) []byte {
	b := make([]byte, 4*n)
	for k := range n {
		binary.LittleEndian.PutUint32(b[4*k:], math.Float32bits(float32(round*7+i+k%1000)))
	}
	return b
}

func double(b []byte) {
	for k := 0; k < len(b); k += 4 {
		v := math.Float32frombits(binary.LittleEndian.Uint32(b[k:]))
		binary.LittleEndian.PutUint32(b[k:], math.Float32bits(2*v))
	}
}

// report counts what went wrong in a run; the correct protocol gives zeros.
type report struct {
	earlyReads  atomic.Int64 // the engine got host bytes a copy still used
	hostWrong   atomic.Int64 // the host bytes were not the gradient
	deviceWrong atomic.Int64 // after Run returned, the device did not hold 2×gradient
	errs        atomic.Int64
}

func (r *report) String() string {
	return fmt.Sprintf("early reads %d, wrong host bytes %d, wrong device results %d, errors %d",
		r.earlyReads.Load(), r.hostWrong.Load(), r.deviceWrong.Load(), r.errs.Load())
}

func (r *report) clean() bool {
	return r.earlyReads.Load()+r.hostWrong.Load()+r.deviceWrong.Load()+r.errs.Load() == 0
}

// round simulates one training step: for every tensor, backprop writes the
// gradient on the framework stream after writeDelay(i) and the framework's
// hook calls Begin right away (before the write ran); an engine goroutine
// per tensor then runs the staged gradient through a fake "sum" (×2, in
// place) and checks, when Run returns (when the engine's handle would
// complete), that the device holds the result.
func (h *harness) round(r *report, round int, ts []tensor, writeDelay func(i int) time.Duration) {
	var wg sync.WaitGroup
	for i, tn := range ts {
		grad := gradient(round, i, tn.n)
		if err := h.fw.WriteAfter(writeDelay(i), tn.ptr, grad); err != nil {
			h.t.Fatal(err)
		}
		st, err := h.st.Begin(tn.ptr, 4*tn.n, h.fws)
		if err != nil {
			h.t.Fatal(err)
		}
		wg.Go(func() {
			err := st.Run(h.ctx(20*time.Second), tn.ptr, func(host []byte) error {
				if h.dev.InFlight(host) {
					r.earlyReads.Add(1)
				}
				if string(host) != string(grad) {
					r.hostWrong.Add(1)
				}
				double(host)
				return nil
			})
			if err != nil {
				h.t.Errorf("tensor %d: %v", i, err)
				r.errs.Add(1)
				return
			}
			want := append([]byte(nil), grad...)
			double(want)
			got := make([]byte, len(want))
			if err := h.dev.Read(tn.ptr, got); err != nil {
				h.t.Fatal(err)
			}
			if string(got) != string(want) {
				r.deviceWrong.Add(1)
			}
		})
	}
	wg.Wait()
}

func (h *harness) tensors(rng *rand.Rand, count, maxElems int) []tensor {
	ts := make([]tensor, count)
	for i := range ts {
		ts[i].n = 1 + rng.IntN(maxElems)
		var err error
		if ts[i].ptr, err = h.dev.Malloc(4 * ts[i].n); err != nil {
			h.t.Fatal(err)
		}
	}
	return ts
}

// TestStagerEndToEnd drives many tensors through the pipeline for several
// rounds under random copy delays and late gradient writes, with each way
// of sizing the pool; every byte that comes back must be exact.
func TestStagerEndToEnd(t *testing.T) {
	const (
		count    = 24
		maxElems = 16 << 10 // 64 KiB
		rounds   = 4
	)
	for _, c := range []struct {
		desc string
		popt gpu.PoolOptions
		dopt fake.Options
		// grow sizes the pool per tensor.
		grow bool
	}{
		{desc: "one pinned buffer per tensor", grow: true},
		{desc: "fixed budget of 3 buffers (Host waits for the pool)", popt: gpu.PoolOptions{Buffers: 3, BufferBytes: 4 * maxElems}},
		{desc: "memlock limit: part pinned, part pageable", grow: true, dopt: fake.Options{MemlockBytes: 256 << 10}},
	} {
		t.Run(c.desc, func(t *testing.T) {
			c.dopt.MaxJitter = 300 * time.Microsecond
			c.dopt.Seed = 42
			var logs atomic.Int64
			c.popt.Logf = func(string, ...any) { logs.Add(1) }
			h := newHarness(t, c.dopt, c.popt)
			rng := rand.New(rand.NewPCG(1, 1))
			ts := h.tensors(rng, count, maxElems)
			if c.grow {
				for _, tn := range ts {
					if err := h.pool.Grow(4 * tn.n); err != nil {
						t.Fatal(err)
					}
				}
			}
			var r report
			for round := range rounds {
				h.round(&r, round, ts, func(int) time.Duration {
					return time.Duration(rng.IntN(300)) * time.Microsecond
				})
			}
			if !r.clean() {
				t.Fatalf("correct protocol: %v", &r)
			}
			s := h.pool.Stats()
			if s.Outstanding != 0 || h.st.Live() != 0 {
				t.Fatalf("after the run: %d buffers leased, %d staged live", s.Outstanding, h.st.Live())
			}
			t.Logf("pool %+v", s)
			switch c.desc {
			case "one pinned buffer per tensor":
				if s.Waits != 0 || s.PageableBytes != 0 {
					t.Errorf("per-tensor pool waited %d times / has %d pageable bytes", s.Waits, s.PageableBytes)
				}
			case "memlock limit: part pinned, part pageable":
				if s.PinnedBytes == 0 || s.PageableBytes == 0 || logs.Load() != 1 {
					t.Errorf("want both kinds of buffer and one log line, got %+v and %d lines", s, logs.Load())
				}
			}
		})
	}
}

// TestStagerCatchesEarlyReads breaks the protocol in each of the three ways
// it could go wrong and checks that the fake device notices: each broken
// variant must FAIL the checks that the correct protocol passes. This is
// what makes the end-to-end test above meaningful.
func TestStagerCatchesEarlyReads(t *testing.T) {
	const writeDelay = 5 * time.Millisecond
	for _, c := range []struct {
		desc string
		knob func(*gpu.Stager)
		// caught says whether the report shows the expected failure.
		caught func(r *report) bool
	}{
		{"correct protocol", nil, nil},
		{
			"engine reads before the device-to-host copy completed",
			gpu.SkipCopyWait,
			func(r *report) bool { return r.earlyReads.Load() > 0 && r.hostWrong.Load() > 0 },
		},
		{
			"copy does not wait for backprop's write on the framework stream",
			gpu.SkipReadyWait,
			func(r *report) bool { return r.hostWrong.Load() > 0 },
		},
		{
			"buffer reused before the host-to-device copy completed",
			gpu.SkipWriteWait,
			func(r *report) bool { return r.deviceWrong.Load() > 0 },
		},
	} {
		t.Run(c.desc, func(t *testing.T) {
			var knobs []func(*gpu.Stager)
			if c.knob != nil {
				knobs = append(knobs, c.knob)
			}
			// Copies take 2 ms (plus jitter), backprop writes each
			// gradient 5 ms late.
			h := newHarness(t, fake.Options{CopyDelay: 2 * time.Millisecond, MaxJitter: time.Millisecond, Seed: 3},
				gpu.PoolOptions{}, knobs...)
			ts := h.tensors(rand.New(rand.NewPCG(2, 2)), 6, 4096)
			for _, tn := range ts {
				if err := h.pool.Grow(4 * tn.n); err != nil {
					t.Fatal(err)
				}
			}
			var r report
			h.round(&r, 1, ts, func(int) time.Duration { return writeDelay })
			if c.caught == nil {
				if !r.clean() {
					t.Fatalf("correct protocol flagged: %v", &r)
				}
				return
			}
			if !c.caught(&r) {
				t.Fatalf("broken protocol NOT detected: %v", &r)
			}
			t.Logf("broken protocol detected as it should be: %v", &r)
		})
	}
}

// TestStagerBeginNeverWaits: Begin returns at once even when the pool is
// exhausted; the copies then run as buffers come back.
func TestStagerBeginNeverWaits(t *testing.T) {
	h := newHarness(t, fake.Options{CopyDelay: time.Millisecond}, gpu.PoolOptions{Buffers: 1, BufferBytes: 1 << 16})
	ts := h.tensors(rand.New(rand.NewPCG(3, 3)), 5, 4096)
	var r report
	start := time.Now()
	h.round(&r, 0, ts, func(int) time.Duration { return 2 * time.Millisecond })
	if !r.clean() {
		t.Fatalf("%v", &r)
	}
	if s := h.pool.Stats(); s.Waits == 0 {
		t.Fatalf("no Get waited with one buffer for 5 tensors: %+v", s)
	}
	t.Logf("5 tensors through 1 buffer in %v", time.Since(start))
}

func TestStagerTimeoutThenAbort(t *testing.T) {
	h := newHarness(t, fake.Options{}, gpu.PoolOptions{Buffers: 1, BufferBytes: 1 << 12})
	p, _ := h.dev.Malloc(64)
	release := make(chan struct{})
	// Backprop is stuck: the gradient's event cannot complete.
	if err := h.fw.Launch(0, func() { <-release }); err != nil {
		t.Fatal(err)
	}
	st, err := h.st.Begin(p, 64, h.fws)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := st.Host(h.ctx(20 * time.Millisecond)); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Host on a stuck gradient = %v, want deadline exceeded", err)
	}
	if err := st.Abort(h.ctx(20 * time.Millisecond)); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Abort with the copy still pending = %v, want deadline exceeded", err)
	}
	if h.pool.Outstanding() != 1 {
		t.Fatal("the buffer of a pending copy went back to the pool")
	}
	close(release)
	if err := st.Abort(h.ctx(5 * time.Second)); err != nil {
		t.Fatal(err)
	}
	if h.pool.Outstanding() != 0 || h.st.Live() != 0 {
		t.Fatalf("after Abort: %d leased, %d live", h.pool.Outstanding(), h.st.Live())
	}
	if err := st.Abort(h.ctx(time.Second)); err != nil {
		t.Fatalf("second Abort: %v", err)
	}
}

func TestStagerCopyErrors(t *testing.T) {
	h := newHarness(t, fake.Options{}, gpu.PoolOptions{Buffers: 1, BufferBytes: 1 << 12})
	p, _ := h.dev.Malloc(64)
	boom := errors.New("boom")

	// The eager copy in Begin fails: Begin fails and leaks nothing.
	h.dev.InjectCopyError(boom)
	if _, err := h.st.Begin(p, 64, h.fws); !errors.Is(err, boom) {
		t.Fatalf("Begin = %v, want the injected error", err)
	}
	if h.pool.Outstanding() != 0 || h.st.Live() != 0 {
		t.Fatalf("after a failed Begin: %d leased, %d live", h.pool.Outstanding(), h.st.Live())
	}

	// The deferred copy in Host fails: Run reports it and aborts.
	hold, _ := h.pool.Get(h.ctx(time.Second), 1)
	st, err := h.st.Begin(p, 64, h.fws)
	if err != nil {
		t.Fatal(err)
	}
	_ = h.pool.Put(hold)
	h.dev.InjectCopyError(boom)
	called := false
	err = st.Run(h.ctx(time.Second), p, func([]byte) error { called = true; return nil })
	if !errors.Is(err, boom) || called {
		t.Fatalf("Run = %v (reduce called: %v), want the injected error, reduce not called", err, called)
	}

	// The write-back fails.
	h.dev.InjectCopyError(nil)
	st, _ = h.st.Begin(p, 64, h.fws)
	if _, err := st.Host(h.ctx(time.Second)); err != nil {
		t.Fatal(err)
	}
	h.dev.InjectCopyError(boom)
	if err := st.Finish(h.ctx(time.Second), p); !errors.Is(err, boom) {
		t.Fatalf("Finish = %v, want the injected error", err)
	}
	if err := st.Abort(h.ctx(time.Second)); err != nil {
		t.Fatal(err)
	}

	// The reduction fails.
	st, _ = h.st.Begin(p, 64, h.fws)
	if err := st.Run(h.ctx(time.Second), p, func([]byte) error { return boom }); !errors.Is(err, boom) {
		t.Fatalf("Run = %v, want the reduction's error", err)
	}

	// Too large for every buffer: Begin still returns, Host says why.
	st, err = h.st.Begin(p, 1<<13, h.fws)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := st.Host(h.ctx(time.Second)); !errors.Is(err, gpu.ErrTooLarge) {
		t.Fatalf("Host = %v, want ErrTooLarge", err)
	}
	if err := st.Abort(h.ctx(time.Second)); err != nil {
		t.Fatal(err)
	}
	if h.pool.Outstanding() != 0 || h.st.Live() != 0 {
		t.Fatalf("at the end: %d leased, %d live", h.pool.Outstanding(), h.st.Live())
	}
}

func TestStagerMisuse(t *testing.T) {
	h := newHarness(t, fake.Options{}, gpu.PoolOptions{Buffers: 1, BufferBytes: 1 << 12})
	p, _ := h.dev.Malloc(64)
	if _, err := h.st.Begin(p, 0, h.fws); err == nil {
		t.Error("Begin of 0 bytes: no error")
	}
	if _, err := h.st.Begin(p, 64, nil); err == nil {
		t.Error("Begin without a framework stream: no error")
	}
	st, _ := h.st.Begin(p, 64, h.fws)
	if err := st.Finish(h.ctx(time.Second), p); err == nil || !strings.Contains(err.Error(), "Host must return first") {
		t.Errorf("Finish before Host = %v", err)
	}
	if err := h.st.Close(h.ctx(time.Second)); err == nil {
		t.Error("Close with a live staged gradient: no error")
	}
	if _, err := st.Host(h.ctx(time.Second)); err != nil {
		t.Fatal(err)
	}
	if err := st.Finish(h.ctx(time.Second), p); err != nil {
		t.Fatal(err)
	}
	if err := st.Finish(h.ctx(time.Second), p); err == nil {
		t.Error("second Finish: no error")
	}
	if _, err := st.Host(h.ctx(time.Second)); err == nil {
		t.Error("Host after Finish: no error")
	}
	if err := st.Abort(h.ctx(time.Second)); err != nil {
		t.Errorf("Abort after Finish = %v, want a no-op", err)
	}
	if err := h.st.Close(h.ctx(time.Second)); err != nil {
		t.Fatal(err)
	}
	if _, err := h.st.Begin(p, 64, h.fws); !errors.Is(err, gpu.ErrClosed) {
		t.Errorf("Begin after Close = %v, want ErrClosed", err)
	}
}
