package gpu

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gobps/gobps/internal/leakcheck"
)

// countingAlloc is a "pinned" allocator over AllocPageable that counts live
// allocations and can be told to fail.
type countingAlloc struct {
	mu   sync.Mutex
	live int
	fail error
}

type countedBuf struct {
	HostBuffer
	a *countingAlloc
}

func (c countedBuf) Pinned() bool { return true }
func (c countedBuf) Free() error {
	c.a.mu.Lock()
	c.a.live--
	c.a.mu.Unlock()
	return c.HostBuffer.Free()
}

func (a *countingAlloc) alloc(n int) (HostBuffer, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.fail != nil {
		return nil, a.fail
	}
	hb, err := AllocPageable(n)
	if err != nil {
		return nil, err
	}
	a.live++
	return countedBuf{hb, a}, nil
}

func (a *countingAlloc) liveCount() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.live
}

func newPool(t *testing.T, opt PoolOptions) (*Pool, *countingAlloc) {
	t.Helper()
	a := &countingAlloc{}
	if opt.Pinned == nil {
		opt.Pinned = a.alloc
	}
	p, err := NewPool(opt)
	if err != nil {
		t.Fatal(err)
	}
	return p, a
}

func TestPoolOwnership(t *testing.T) {
	leakcheck.Check(t, "github.com/gobps/gobps/gpu")
	ctx := context.Background()
	p, a := newPool(t, PoolOptions{Buffers: 2, BufferBytes: 3 * PageSize, Poison: true})
	other, _ := newPool(t, PoolOptions{Buffers: 1, BufferBytes: PageSize})
	defer other.Close()

	b, err := p.Get(ctx, 100)
	if err != nil {
		t.Fatal(err)
	}
	if len(b.Bytes()) != 100 || b.Cap() != 3*PageSize || !b.Pinned() {
		t.Fatalf("lease: len %d cap %d pinned %v", len(b.Bytes()), b.Cap(), b.Pinned())
	}
	if !bytes.Equal(b.Bytes(), bytes.Repeat([]byte{Poison}, 100)) {
		t.Fatal("a fresh buffer is not poisoned")
	}
	if p.Outstanding() != 1 {
		t.Fatalf("Outstanding = %d, want 1", p.Outstanding())
	}
	copy(b.Bytes(), "data")
	if err := p.Put(b); err != nil {
		t.Fatal(err)
	}
	if err := p.Put(b); err == nil || !strings.Contains(err.Error(), "double Put") {
		t.Fatalf("double Put = %v, want an error", err)
	}
	if p.Outstanding() != 0 {
		t.Fatalf("Outstanding = %d after a double Put, want 0", p.Outstanding())
	}
	ob, _ := other.Get(ctx, 1)
	if err := p.Put(ob); err == nil || !strings.Contains(err.Error(), "another pool") {
		t.Fatalf("foreign Put = %v, want an error", err)
	}
	if other.Outstanding() != 1 {
		t.Fatal("a refused foreign Put changed the other pool")
	}
	_ = other.Put(ob)
	if err := p.Put(nil); err == nil {
		t.Fatal("Put(nil): no error")
	}

	b, _ = p.Get(ctx, 3*PageSize)
	if !bytes.Equal(b.Bytes()[:4], []byte{Poison, Poison, Poison, Poison}) {
		t.Fatal("Put did not poison the buffer")
	}
	if _, err := p.Get(ctx, 3*PageSize+1); !errors.Is(err, ErrTooLarge) {
		t.Fatalf("Get larger than every buffer = %v, want ErrTooLarge", err)
	}
	b2, _ := p.Get(ctx, 1)
	if _, ok := p.TryGet(1); ok {
		t.Fatal("TryGet on an exhausted pool succeeded")
	}

	err = p.Close()
	if err == nil || !strings.Contains(err.Error(), "2 buffers still leased") {
		t.Fatalf("Close with leases = %v, want it to say 2 are leased", err)
	}
	if _, err := p.Get(ctx, 1); !errors.Is(err, ErrClosed) {
		t.Fatalf("Get after Close = %v", err)
	}
	if a.liveCount() != 2 {
		t.Fatalf("%d buffers allocated after Close, want the 2 leased", a.liveCount())
	}
	for _, b := range []*Buffer{b, b2} {
		if err := p.Put(b); err != nil {
			t.Fatal(err)
		}
	}
	if a.liveCount() != 0 {
		t.Fatalf("%d buffers still allocated after the last Put", a.liveCount())
	}
}

func TestPoolSmallestFit(t *testing.T) {
	leakcheck.Check(t, "github.com/gobps/gobps/gpu")
	p, _ := newPool(t, PoolOptions{})
	defer p.Close()
	for _, pages := range []int{4, 1, 2, 2} {
		if err := p.Grow(pages*PageSize - 10); err != nil { // rounded up to pages
			t.Fatal(err)
		}
	}
	ctx := context.Background()
	var got []int
	var leased []*Buffer
	for _, n := range []int{1, PageSize + 1, 1, PageSize} {
		b, err := p.Get(ctx, n)
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, b.Cap()/PageSize)
		leased = append(leased, b)
	}
	// 1 → the 1-page buffer; PageSize+1 → a 2-page one; 1 → the other
	// 2-page one; PageSize → the 4-page one.
	if fmt.Sprint(got) != "[1 2 2 4]" {
		t.Fatalf("leased buffers of %v pages, want [1 2 2 4]", got)
	}
	for _, b := range leased {
		_ = p.Put(b)
	}
}

func TestPoolWaitHandoffAndTimeout(t *testing.T) {
	leakcheck.Check(t, "github.com/gobps/gobps/gpu")
	p, _ := newPool(t, PoolOptions{Buffers: 1, BufferBytes: PageSize})
	defer p.Close()
	b, _ := p.Get(context.Background(), 10)

	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	if _, err := p.Get(ctx, 10); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Get on an exhausted pool = %v, want deadline exceeded", err)
	}

	got := make(chan *Buffer)
	go func() {
		w, err := p.Get(context.Background(), 20)
		if err != nil {
			t.Error(err)
		}
		got <- w
	}()
	for p.Stats().Outstanding != 1 || !p.hasWaiter() {
		time.Sleep(time.Millisecond)
	}
	// A waiter is queued: Put hands the buffer over directly.
	_ = p.Put(b)
	w := <-got
	if w != b || len(w.Bytes()) != 20 {
		t.Fatalf("waiter got %p (len %d), want the buffer just Put with len 20", w, len(w.Bytes()))
	}
	if s := p.Stats(); s.Waits != 1 || s.Outstanding != 1 {
		t.Fatalf("stats %+v: want 1 wait, 1 outstanding", s)
	}
	_ = p.Put(w)

	// Close wakes waiters with ErrClosed.
	b, _ = p.Get(context.Background(), 1)
	errc := make(chan error)
	go func() {
		_, err := p.Get(context.Background(), 1)
		errc <- err
	}()
	for !p.hasWaiter() {
		time.Sleep(time.Millisecond)
	}
	_ = p.Close()
	if err := <-errc; !errors.Is(err, ErrClosed) {
		t.Fatalf("waiter across Close = %v, want ErrClosed", err)
	}
	_ = p.Put(b)
}

func (p *Pool) hasWaiter() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.mu.waiters) > 0
}

// TestPoolPinnedFallback: when the pinned allocator fails (memlock), the
// pool uses pageable memory and says so once.
func TestPoolPinnedFallback(t *testing.T) {
	leakcheck.Check(t, "github.com/gobps/gobps/gpu")
	a := &countingAlloc{fail: errors.New("CUDA_ERROR_OUT_OF_MEMORY: memlock")}
	var logs []string
	p, err := NewPool(PoolOptions{
		Buffers: 3, BufferBytes: PageSize, Pinned: a.alloc,
		Logf: func(f string, args ...any) { logs = append(logs, fmt.Sprintf(f, args...)) },
	})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	if err := p.Grow(PageSize); err != nil {
		t.Fatal(err)
	}
	if len(logs) != 1 || !strings.Contains(logs[0], "memlock") || !strings.Contains(logs[0], "pageable") {
		t.Fatalf("logs %q: want one line naming the cause and the fallback", logs)
	}
	s := p.Stats()
	if s.Buffers != 4 || s.PinnedBytes != 0 || s.PageableBytes != int64(4*PageSize) {
		t.Fatalf("stats %+v: want 4 pageable buffers", s)
	}
	b, _ := p.Get(context.Background(), 1)
	if b.Pinned() {
		t.Fatal("fallback buffer claims to be pinned")
	}
	_ = p.Put(b)

	// Pinning recovers (memory was freed elsewhere): new buffers are pinned
	// again, and nothing more is logged.
	a.mu.Lock()
	a.fail = nil
	a.mu.Unlock()
	if err := p.Grow(PageSize); err != nil {
		t.Fatal(err)
	}
	if s := p.Stats(); s.PinnedBytes != int64(PageSize) || len(logs) != 1 {
		t.Fatalf("stats %+v, %d log lines: want one pinned buffer, still one line", s, len(logs))
	}
}

// TestPoolPerTensorNeverWaits checks the sizing rule of the Pool doc: with
// one buffer per tensor (Grow per tensor) and at most one lease per tensor
// at a time, Get never waits, whatever the sizes and interleavings.
func TestPoolPerTensorNeverWaits(t *testing.T) {
	leakcheck.Check(t, "github.com/gobps/gobps/gpu")
	p, _ := newPool(t, PoolOptions{})
	defer p.Close()
	rng := rand.New(rand.NewPCG(1, 2))
	sizes := make([]int, 40)
	for i := range sizes {
		sizes[i] = 1 + rng.IntN(6*PageSize)
		if err := p.Grow(sizes[i]); err != nil {
			t.Fatal(err)
		}
	}
	var wg sync.WaitGroup
	for i, n := range sizes {
		wg.Go(func() {
			r := rand.New(rand.NewPCG(uint64(i), 3))
			for range 200 {
				b, ok := p.TryGet(n)
				if !ok {
					t.Errorf("tensor %d (%d bytes): no free buffer", i, n)
					return
				}
				if r.IntN(4) == 0 {
					time.Sleep(time.Duration(r.IntN(100)) * time.Microsecond)
				}
				if err := p.Put(b); err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	if p.Outstanding() != 0 {
		t.Fatalf("Outstanding = %d", p.Outstanding())
	}
}

func TestPoolBadOptions(t *testing.T) {
	for _, o := range []PoolOptions{{Buffers: -1}, {Buffers: 1}, {BufferBytes: -1}} {
		if _, err := NewPool(o); err == nil {
			t.Errorf("NewPool(%+v): no error", o)
		}
	}
	p, _ := NewPool(PoolOptions{})
	if err := p.Grow(0); err == nil {
		t.Error("Grow(0): no error")
	}
	if _, err := p.Get(context.Background(), 0); err == nil {
		t.Error("Get(0): no error")
	}
	if _, err := p.Get(context.Background(), 1); !errors.Is(err, ErrTooLarge) {
		t.Errorf("Get on an empty pool = %v, want ErrTooLarge", err)
	}
	_ = p.Close()
}

func TestAllocPageable(t *testing.T) {
	hb, err := AllocPageable(10)
	if err != nil {
		t.Fatal(err)
	}
	if len(hb.Bytes()) != 10 || hb.Pinned() {
		t.Fatalf("len %d pinned %v", len(hb.Bytes()), hb.Pinned())
	}
	hb.Bytes()[9] = 1
	if err := hb.Free(); err != nil {
		t.Fatal(err)
	}
	if err := hb.Free(); err == nil {
		t.Fatal("double Free: no error")
	}
	if _, err := AllocPageable(0); err == nil {
		t.Fatal("AllocPageable(0): no error")
	}
}

func TestSysfsNUMANode(t *testing.T) {
	root := t.TempDir()
	dir := root + "/bus/pci/devices/0000:3b:00.0"
	if err := mkdirWrite(dir, "numa_node", "1\n"); err != nil {
		t.Fatal(err)
	}
	if err := mkdirWrite(root+"/bus/pci/devices/0000:5e:00.0", "numa_node", "-1\n"); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		bus  string
		want int
	}{
		{"00000000:3B:00.0", 1},
		{"0000:3b:00.0", 1},
		{"00000000:5E:00.0", -1}, // the kernel does not know
		{"00000000:AF:00.0", -1}, // no such device
		{"garbage", -1},
	} {
		if got := SysfsNUMANode(root, c.bus); got != c.want {
			t.Errorf("SysfsNUMANode(%q) = %d, want %d", c.bus, got, c.want)
		}
	}
}

func mkdirWrite(dir, name, content string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644)
}
