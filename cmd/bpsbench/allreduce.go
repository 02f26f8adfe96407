package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"sync"
	"time"

	"github.com/gobps/gobps/cmd/internal/ring"
	"github.com/gobps/gobps/rdma"
	"github.com/gobps/gobps/rdma/tcp"
)

// allReduce runs one rank of a ring all-reduce (cmd/internal/ring) over
// gobps's TCP transport, the baseline of the allreduce-vs-PS benchmark.
// Every rank runs on its own host, with its neighbours' addresses on the
// command line:
//
//	bpsbench allreduce -rank 1 -ranks 4 -listen 10.77.0.12:5400 -right 10.77.0.13:5400 -size 64MiB
//
// It prints one line, like psworker's:
//
//	allreduce rank=1 ranks=4 bytes=67108864 segment=1048576 iters=10 median_ms=... min_ms=... max_ms=... exact=true
//
// With -local N it runs all N ranks in this process on loopback instead (a
// self-check; the timing then measures the CPU, not a network).
func allReduce(args []string) error {
	fs := flag.NewFlagSet("allreduce", flag.ContinueOnError)
	rank := fs.Int("rank", 0, "this rank, 0..ranks-1")
	ranks := fs.Int("ranks", 1, "number of ranks")
	listen := fs.String("listen", "", "address this rank accepts its left neighbour on (host:port)")
	right := fs.String("right", "", "address of the right neighbour (rank+1 mod ranks): its -listen")
	local := fs.Int("local", 0, "run this many ranks in this process on loopback (ignores -rank, -ranks, -listen, -right)")
	sizeF := fs.String("size", "64MiB", "vector bytes (float32, a multiple of 4)")
	segF := fs.String("segment", "1MiB", "largest frame payload: each ring step's chunk goes in segments of this size")
	iters := fs.Int("iters", 10, "timed iterations")
	warm := fs.Int("warmup", 2, "untimed iterations first")
	timeout := fs.Duration("timeout", 10*time.Minute, "give up after this long")
	if err := fs.Parse(args); err != nil {
		return err
	}
	sizes, err := parseSizes(*sizeF)
	if err != nil {
		return err
	}
	segs, err := parseSizes(*segF)
	if err != nil {
		return err
	}
	size, seg := sizes[0], segs[0]
	if size%4 != 0 {
		return fmt.Errorf("allreduce: -size %d is not a whole number of float32", size)
	}
	if *iters < 1 || *warm < 0 {
		return fmt.Errorf("allreduce: -iters %d -warmup %d: need at least one timed iteration", *iters, *warm)
	}
	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	tr := tcp.New(rdma.Options{})
	defer tr.Close()
	run := func(cfg ring.Config) error {
		r, err := ring.New(ctx, cfg)
		if err != nil {
			return err
		}
		defer r.Close()
		times, err := ringLoop(ctx, r, size/4, *warm, *iters)
		if err != nil {
			return fmt.Errorf("allreduce rank %d: %w", cfg.Rank, err)
		}
		fmt.Printf("allreduce rank=%d ranks=%d bytes=%d segment=%d iters=%d %s exact=true\n",
			cfg.Rank, cfg.Size, size, seg, *iters, times.summary())
		return nil
	}
	if *local > 0 {
		addrs := make([]string, *local)
		for i := range addrs {
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				return err
			}
			addrs[i] = ln.Addr().String()
			ln.Close()
		}
		errs := make([]error, *local)
		var wg sync.WaitGroup
		for i := range addrs {
			wg.Add(1)
			go func() {
				defer wg.Done()
				errs[i] = run(ring.Config{Rank: i, Size: *local, Listen: addrs[i], Right: addrs[(i+1)%*local], Transport: tr, SegmentBytes: seg})
			}()
		}
		wg.Wait()
		return errors.Join(errs...)
	}
	if *ranks > 1 && (*listen == "" || *right == "") {
		return errors.New("allreduce: give -listen and -right (or -local N)")
	}
	return run(ring.Config{Rank: *rank, Size: *ranks, Listen: *listen, Right: *right, Transport: tr, SegmentBytes: seg})
}

// ringLoop times iterations of the all-reduce, filling and checking the
// vector as psworker does, with a barrier before each timed call.
func ringLoop(ctx context.Context, r *ring.Ring, count, warm, iters int) (durations, error) {
	if err := checkExactSize(r.Size()); err != nil {
		return nil, err
	}
	vals := make([]float32, count)
	var times durations
	for it := 0; it < warm+iters; it++ {
		fillExact(vals, r.Rank(), it)
		if err := r.Barrier(ctx); err != nil {
			return nil, fmt.Errorf("barrier before iteration %d: %w", it, err)
		}
		start := time.Now()
		if err := r.AllReduce(ctx, vals); err != nil {
			return nil, fmt.Errorf("iteration %d: %w", it, err)
		}
		el := time.Since(start)
		if err := checkExact(vals, r.Size(), it); err != nil {
			return nil, fmt.Errorf("iteration %d: %w", it, err)
		}
		if it >= warm {
			times = append(times, el)
		}
	}
	// everyone has finished receiving before anyone closes
	if err := r.Barrier(ctx); err != nil {
		return nil, fmt.Errorf("final barrier: %w", err)
	}
	return times, nil
}
