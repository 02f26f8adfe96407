package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"slices"
	"time"
	"unsafe"

	"github.com/gobps/gobps/config"
	"github.com/gobps/gobps/core"
	"github.com/gobps/gobps/proto"
)

// psWorker is a worker program for bpsrun's environment mode: it joins the
// job the environment describes, push_pulls one float32 tensor for a number
// of iterations and prints one line with the median iteration time:
//
//	psworker rank=0 workers=4 servers=4 bytes=67108864 partitions=16 iters=10 median_ms=... min_ms=... max_ms=... exact=true
//
// Every iteration fills the tensor with integers that depend on the rank,
// the iteration and the element, so that the sum is exact in float32 in any
// order of addition, and checks every element of the sum. Filling and
// checking are outside the timed part: before each timed push_pull the
// workers meet in a barrier (a push_pull of one element), so that one
// worker's checking does not count as another's communication time.
func psWorker(args []string) error {
	fs := flag.NewFlagSet("psworker", flag.ContinueOnError)
	sizeF := fs.String("size", "64MiB", "tensor bytes (float32, a multiple of 4)")
	iters := fs.Int("iters", 10, "timed iterations")
	warm := fs.Int("warmup", 2, "untimed iterations first (connections, declarations, TCP windows)")
	timeout := fs.Duration("timeout", 10*time.Minute, "give up after this long")
	if err := fs.Parse(args); err != nil {
		return err
	}
	sizes, err := parseSizes(*sizeF)
	if err != nil {
		return err
	}
	size := sizes[0]
	if size%4 != 0 {
		return fmt.Errorf("psworker: -size %d is not a whole number of float32", size)
	}
	if *iters < 1 || *warm < 0 {
		return fmt.Errorf("psworker: -iters %d -warmup %d: need at least one timed iteration", *iters, *warm)
	}
	cfg, err := config.FromEnv()
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	// the engine's few notices (transport, mixed-mode split, timeline) go
	// to stderr, so they land in the benchmark's logs
	logf := func(format string, args ...any) { fmt.Fprintf(os.Stderr, "psworker: "+format+"\n", args...) }
	e, err := core.Init(ctx, core.Options{Config: cfg, Logf: logf})
	if err != nil {
		return err
	}
	res, err := psLoop(ctx, e, size/4, *warm, *iters)
	if err2 := e.Shutdown(); err == nil {
		err = err2
	}
	if err != nil {
		return fmt.Errorf("psworker rank %d: %w", e.Rank(), err)
	}
	fmt.Printf("psworker rank=%d workers=%d servers=%d bytes=%d partitions=%d iters=%d %s exact=true\n",
		e.Rank(), e.Size(), e.NumServers(), size, res.parts, *iters, res.times.summary())
	return nil
}

type psResult struct {
	parts int
	times durations
}

func psLoop(ctx context.Context, e *core.Engine, count, warm, iters int) (psResult, error) {
	sync1, err := e.Declare("barrier", proto.Float32, 1)
	if err != nil {
		return psResult{}, err
	}
	t, err := e.Declare("tensor", proto.Float32, count)
	if err != nil {
		return psResult{}, err
	}
	one := make([]byte, 4)
	buf := make([]byte, count*4)
	vals := unsafe.Slice((*float32)(unsafe.Pointer(&buf[0])), count)
	rank, n := e.Rank(), e.Size()
	if err := checkExactSize(n); err != nil {
		return psResult{}, err
	}
	wait := func(h *core.Handle, err error) error {
		if err != nil {
			return err
		}
		// bounded by ctx: a dead peer is reported by the engine, but never
		// wait past the job's timeout
		select {
		case <-h.Done():
			return h.Wait()
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	var times durations
	for it := 0; it < warm+iters; it++ {
		fillExact(vals, rank, it)
		if err := wait(e.PushPull(sync1, one, core.Sum)); err != nil {
			return psResult{}, fmt.Errorf("barrier before iteration %d: %w", it, err)
		}
		start := time.Now()
		if err := wait(e.PushPull(t, buf, core.Sum)); err != nil {
			return psResult{}, fmt.Errorf("iteration %d: %w", it, err)
		}
		el := time.Since(start)
		if err := checkExact(vals, n, it); err != nil {
			return psResult{}, fmt.Errorf("iteration %d: %w", it, err)
		}
		if it >= warm {
			times = append(times, el)
		}
	}
	return psResult{parts: t.Partitions(), times: times}, nil
}

// exactPeriod keeps every value and every sum a small integer: the sum over
// n workers is at most 250·n(n+1)/2, below 2^24 (exact in float32) for n up
// to 365; checkExactSize refuses more.
const exactPeriod = 251

// checkExactSize reports whether sums over n workers stay exact.
func checkExactSize(n int) error {
	if (exactPeriod-1)*n*(n+1)/2 >= 1<<24 {
		return fmt.Errorf("%d workers: the checked sums would not be exact in float32 (at most 365)", n)
	}
	return nil
}

// fillExact writes rank's values for iteration it: (rank+1)·v(i, it).
func fillExact(vals []float32, rank, it int) {
	k := float32(rank + 1)
	p := (it * 17) % exactPeriod
	for i := range vals {
		vals[i] = k * float32(p)
		p++
		if p == exactPeriod {
			p = 0
		}
	}
}

// checkExact checks that vals holds the sum over n ranks of fillExact:
// n(n+1)/2 · v(i, it).
func checkExact(vals []float32, n, it int) error {
	k := float32(n * (n + 1) / 2)
	p := (it * 17) % exactPeriod
	for i, v := range vals {
		if want := k * float32(p); v != want {
			return fmt.Errorf("element %d is %v, want %v (sum over %d workers)", i, v, want, n)
		}
		p++
		if p == exactPeriod {
			p = 0
		}
	}
	return nil
}

// durations are the timed iterations of one run.
type durations []time.Duration

func (d durations) sorted() []time.Duration {
	s := slices.Clone(d)
	slices.Sort(s)
	return s
}

// median of the iterations (the lower middle one for an even count).
func (d durations) median() time.Duration {
	if len(d) == 0 {
		return 0
	}
	s := d.sorted()
	return s[(len(s)-1)/2]
}

func ms(t time.Duration) float64 { return float64(t) / 1e6 }

func (d durations) summary() string {
	if len(d) == 0 {
		return "median_ms=NaN"
	}
	s := d.sorted()
	return fmt.Sprintf("median_ms=%.2f min_ms=%.2f max_ms=%.2f", ms(d.median()), ms(s[0]), ms(s[len(s)-1]))
}
