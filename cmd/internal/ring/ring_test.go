package ring

import (
	"context"
	"errors"
	"fmt"
	"math/rand"
	"net"
	"sync"
	"testing"
	"time"
)

// freeAddrs reserves n loopback addresses.
func freeAddrs(t *testing.T, n int) []string {
	t.Helper()
	var out []string
	var lns []net.Listener
	for i := 0; i < n; i++ {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		lns = append(lns, ln)
		out = append(out, ln.Addr().String())
	}
	for _, ln := range lns {
		ln.Close()
	}
	return out
}

// startRing starts n ranks in this process over loopback TCP.
func startRing(t *testing.T, ctx context.Context, n, segBytes int) []*Ring {
	t.Helper()
	addrs := freeAddrs(t, n)
	rings := make([]*Ring, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			rings[i], errs[i] = New(ctx, Config{Rank: i, Size: n, Listen: addrs[i], Right: addrs[(i+1)%n], SegmentBytes: segBytes})
		}(i)
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		for _, r := range rings {
			r.Close()
		}
	})
	return rings
}

// onAll runs f on every rank at once and returns the errors joined.
func onAll(rings []*Ring, f func(i int, r *Ring) error) error {
	errs := make([]error, len(rings))
	var wg sync.WaitGroup
	for i, r := range rings {
		wg.Add(1)
		go func() { defer wg.Done(); errs[i] = f(i, r) }()
	}
	wg.Wait()
	return errors.Join(errs...)
}

func TestPlanCoversEveryChunkOnce(t *testing.T) {
	for n := 2; n <= 6; n++ {
		for _, count := range []int{0, 1, n - 1, n, 7, 100, 1001} {
			for r := 0; r < n; r++ {
				recv := plan(r, n, count, 3, false)
				send := plan((r+n-1)%n, n, count, 3, true)
				if fmt.Sprint(recv) != fmt.Sprint(send) {
					t.Fatalf("n=%d count=%d: rank %d receives %v, rank %d sends %v", n, count, r, recv, (r+n-1)%n, send)
				}
				// chunk r is never received in reduce-scatter (rank r sends
				// it first) and chunk r+1, which rank r ends reduce-scatter
				// owning, is never received in all-gather: those come once,
				// every other element twice
				seen := make([]int, count)
				for _, sg := range recv {
					for i := sg.off; i < sg.off+sg.len; i++ {
						seen[i]++
					}
				}
				in := func(c, i int) bool { off, l := chunk(c%n, n, count); return i >= off && i < off+l }
				for i, c := range seen {
					want := 2
					if in(r, i) || in(r+1, i) {
						want = 1
					}
					if c != want {
						t.Fatalf("n=%d count=%d rank %d: element %d received %d times, want %d", n, count, r, i, c, want)
					}
				}
			}
		}
	}
}

func TestAllReduceExact(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	rng := rand.New(rand.NewSource(1))
	for _, tc := range []struct {
		desc   string
		n, seg int
		counts []int
	}{
		{"one rank is a no-op", 1, 1 << 20, []int{10}},
		{"two ranks, one segment per chunk", 2, 1 << 20, []int{1000, 4096}},
		{"three ranks, many segments, uneven chunks", 3, 64, []int{1, 2, 3, 1001, 5000}},
		{"four ranks, vectors shorter than the ring", 4, 16, []int{0, 1, 3, 4, 5}},
		{"five ranks, sizes change between calls", 5, 4096, []int{100000, 17, 65536}},
	} {
		t.Run(tc.desc, func(t *testing.T) {
			rings := startRing(t, ctx, tc.n, tc.seg)
			for round, count := range tc.counts {
				in := make([][]float32, tc.n)
				want := make([]float32, count)
				for i := range in {
					in[i] = make([]float32, count)
					for j := range in[i] {
						v := float32(rng.Intn(2001) - 1000)
						in[i][j] = v
						want[j] += v
					}
				}
				err := onAll(rings, func(i int, r *Ring) error { return r.AllReduce(ctx, in[i]) })
				if err != nil {
					t.Fatalf("round %d (%d elements): %v", round, count, err)
				}
				for i := range in {
					for j, v := range in[i] {
						if v != want[j] {
							t.Fatalf("round %d (%d elements): rank %d element %d = %v, want %v", round, count, i, j, v, want[j])
						}
					}
				}
			}
			if err := onAll(rings, func(i int, r *Ring) error { return r.Barrier(ctx) }); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// A rank that is one call ahead of its right neighbour must not write into
// the neighbour's vector before the neighbour has started that call.
func TestNextRoundWaitsForTheReceiver(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	const n, count = 3, 3000
	rings := startRing(t, ctx, n, 256)
	bufs := make([][]float32, n)
	for i := range bufs {
		bufs[i] = make([]float32, count)
	}
	fill := func(i int) {
		for j := range bufs[i] {
			bufs[i][j] = float32(i + 1)
		}
	}
	var wg sync.WaitGroup
	errs := make([]error, n)
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			for round := 0; round < 5; round++ {
				fill(i)
				if err := rings[i].AllReduce(ctx, bufs[i]); err != nil {
					errs[i] = err
					return
				}
				if i == 1 {
					time.Sleep(20 * time.Millisecond) // rank 1 lags behind
				}
				for j, v := range bufs[i] {
					if v != 6 {
						errs[i] = fmt.Errorf("round %d: element %d = %v, want 6", round, j, v)
						return
					}
				}
			}
		}(i)
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
}

func TestDeadRankFailsTheOthers(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	const n = 3
	rings := startRing(t, ctx, n, 1024)
	rings[2].Close()
	start := time.Now()
	err := onAll(rings[:2], func(i int, r *Ring) error {
		err := r.AllReduce(ctx, make([]float32, 100000))
		if err != nil {
			r.Close() // what a process does when it fails: its neighbours see it
		}
		return err
	})
	if err == nil {
		t.Fatal("all-reduce with a dead rank succeeded")
	}
	if ctx.Err() != nil {
		t.Fatalf("the failure took until the deadline: %v", err)
	}
	t.Logf("failed after %v: %v", time.Since(start), err)
}
