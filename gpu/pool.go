package gpu

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
)

// Poison is the byte Pool writes over a buffer when it is allocated and when
// it comes back (with PoolOptions.Poison): every float32 and float64 made of
// it is a NaN and every integer is -1, so reading a buffer that was not yet
// (or no longer) filled gives sums that are visibly wrong.
const Poison = 0xFF

// ErrTooLarge is returned by Pool.Get for a request larger than every buffer
// in the pool: it could never be served. Grow the pool first.
var ErrTooLarge = errors.New("gpu: no staging buffer is large enough")

// PoolOptions configures a Pool.
type PoolOptions struct {
	// Buffers buffers of BufferBytes each (rounded up to whole pages) are
	// allocated by NewPool; Grow adds more later. Both may be zero.
	Buffers     int
	BufferBytes int
	// Pinned allocates page-locked memory, usually Device.AllocHost. Nil
	// means host mode: every buffer is pageable.
	Pinned func(n int) (HostBuffer, error)
	// Pageable allocates the fallback used when Pinned fails (typically
	// because of the memlock limit). Nil means AllocPageable.
	Pageable func(n int) (HostBuffer, error)
	// Poison fills buffers with the Poison byte when they are allocated and
	// each time they are Put back, so that a read of stale staging memory
	// shows up as NaNs. It costs one memset per Put: for tests and
	// debugging.
	Poison bool
	// Logf, if set, receives the pool's one notice: that pinning failed and
	// staging falls back to pageable memory (said once per pool).
	Logf func(format string, args ...any)
}

// Pool is a set of host staging buffers, allocated once (at NewPool and
// Grow) and reused, never freed until Close. Get leases the smallest free
// buffer that holds the request, so one tensor's staging memory is always a
// single contiguous buffer; tensors are never split across buffers.
//
// Sizing. A staging buffer is held from the device-to-host copy until the
// summed result has been copied back, which in a multi-worker job depends on
// the other workers' pushes of the same tensor. A Get that waits for a
// buffer can therefore wait on a worker that itself waits for staging, and
// the job stalls (until the Get's context expires). The safe configuration
// is BytePS's: one buffer per tensor that can be in flight at once, i.e.
// Grow(tensor bytes) for each GPU tensor at declare time. With smallest-fit
// leasing that guarantees Get never waits: by induction from the smallest
// size, a request for s bytes finds a free buffer of its own size, because
// only requests of at most s bytes can hold buffers of size s and there are
// as many such buffers as such tensors. A fixed budget (Buffers ×
// BufferBytes) uses less memory but may wait.
//
// Ownership. Get returns a *Buffer owned by the caller until Put; Put of a
// buffer that is not leased (a double Put) or that belongs to another pool
// is an error, not a silent no-op. Outstanding counts leased buffers, for
// leak checks in tests.
//
// Locking: all methods are safe for concurrent use.
type Pool struct {
	opt PoolOptions

	mu struct {
		sync.Mutex
		all     []*Buffer
		free    []*Buffer // sorted by size, then allocation order
		waiters []*poolWaiter
		leased  int
		closed  bool
		// fellBack records that pinning failed once and was reported.
		fellBack bool
		stats    PoolStats
	}
}

// PoolStats is a snapshot of a pool's counters.
type PoolStats struct {
	// Buffers is the number of buffers, leased or free.
	Buffers int
	// Outstanding is the number of buffers leased now.
	Outstanding int
	// PinnedBytes and PageableBytes are the sizes of all buffers by kind.
	PinnedBytes   int64
	PageableBytes int64
	// Gets counts successful leases; Waits counts those that had to wait.
	Gets  int64
	Waits int64
}

// Buffer is one staging buffer. While leased (between Get and Put) it
// belongs to the caller; afterwards its memory belongs to the pool again and
// must not be touched, even through a slice kept from Bytes.
type Buffer struct {
	pool *Pool
	mem  HostBuffer
	seq  int // allocation order, for deterministic smallest-fit ties
	// n is the length of the current lease; guarded by pool.mu.
	n int
	// leased is guarded by pool.mu.
	leased bool
}

// Bytes is the leased region: the first n bytes of the buffer for a Get of
// n bytes. Only the lessee may call it, between Get and Put.
func (b *Buffer) Bytes() []byte { return b.mem.Bytes()[:b.n] }

// Cap is the buffer's full size.
func (b *Buffer) Cap() int { return len(b.mem.Bytes()) }

// Pinned reports whether the buffer is page-locked memory.
func (b *Buffer) Pinned() bool { return b.mem.Pinned() }

type poolWaiter struct {
	n     int
	ready chan struct{} // closed when buf is set
	buf   *Buffer
}

// NewPool allocates opt.Buffers buffers of opt.BufferBytes.
func NewPool(opt PoolOptions) (*Pool, error) {
	if opt.Buffers < 0 || opt.BufferBytes < 0 || (opt.Buffers > 0 && opt.BufferBytes == 0) {
		return nil, fmt.Errorf("gpu: pool of %d buffers of %d bytes: sizes must be positive", opt.Buffers, opt.BufferBytes)
	}
	if opt.Pageable == nil {
		opt.Pageable = AllocPageable
	}
	p := &Pool{opt: opt}
	for range opt.Buffers {
		if err := p.Grow(opt.BufferBytes); err != nil {
			_ = p.Close()
			return nil, err
		}
	}
	return p, nil
}

// Grow adds one buffer of n bytes (rounded up to whole pages): pinned if
// possible, else pageable (reported once through Logf).
func (p *Pool) Grow(n int) error {
	if n <= 0 {
		return fmt.Errorf("gpu: grow staging pool by %d bytes: size must be positive", n)
	}
	n = roundPage(n)
	mem, pinErr := HostBuffer(nil), error(nil)
	if p.opt.Pinned != nil {
		mem, pinErr = p.opt.Pinned(n)
	}
	if mem == nil {
		var err error
		if mem, err = p.opt.Pageable(n); err != nil {
			return fmt.Errorf("gpu: grow staging pool by %d bytes: %w", n, err)
		}
	}
	if len(mem.Bytes()) < n {
		_ = mem.Free()
		return fmt.Errorf("gpu: grow staging pool: allocator returned %d bytes for %d", len(mem.Bytes()), n)
	}
	if p.opt.Poison {
		fill(mem.Bytes(), Poison)
	}

	p.mu.Lock()
	defer p.mu.Unlock()
	if p.mu.closed {
		_ = mem.Free()
		return ErrClosed
	}
	if pinErr != nil && !p.mu.fellBack {
		p.mu.fellBack = true
		if p.opt.Logf != nil {
			p.opt.Logf("gpu: pinning %d bytes of staging memory failed (%v); staging in pageable memory, which makes device copies slower", n, pinErr)
		}
	}
	b := &Buffer{pool: p, mem: mem, seq: len(p.mu.all)}
	p.mu.all = append(p.mu.all, b)
	p.mu.stats.Buffers++
	if mem.Pinned() {
		p.mu.stats.PinnedBytes += int64(len(mem.Bytes()))
	} else {
		p.mu.stats.PageableBytes += int64(len(mem.Bytes()))
	}
	p.releaseLocked(b)
	return nil
}

// Get leases the smallest free buffer of at least n bytes, waiting for one
// to be Put if none is free, until ctx is done. It fails at once with
// ErrTooLarge if no buffer in the pool is large enough.
func (p *Pool) Get(ctx context.Context, n int) (*Buffer, error) {
	p.mu.Lock()
	b, err := p.takeLocked(n)
	if b != nil || err != nil {
		p.mu.Unlock()
		return b, err
	}
	w := &poolWaiter{n: n, ready: make(chan struct{})}
	p.mu.waiters = append(p.mu.waiters, w)
	p.mu.Unlock()

	select {
	case <-w.ready:
	case <-ctx.Done():
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if w.buf != nil {
		// Granted, perhaps just as ctx expired: the lease stands.
		p.mu.stats.Waits++
		return w.buf, nil
	}
	if i := slices.Index(p.mu.waiters, w); i >= 0 {
		p.mu.waiters = slices.Delete(p.mu.waiters, i, i+1)
	}
	if p.mu.closed {
		return nil, ErrClosed
	}
	return nil, fmt.Errorf("gpu: waiting for a %d-byte staging buffer: %w", n, ctx.Err())
}

// TryGet leases a buffer if one that fits is free now, without waiting.
func (p *Pool) TryGet(n int) (*Buffer, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	b, _ := p.takeLocked(n)
	return b, b != nil
}

// takeLocked leases the smallest free buffer of at least n bytes. It returns
// (nil, nil) when the caller should wait.
//
// REQUIRES: p.mu.
func (p *Pool) takeLocked(n int) (*Buffer, error) {
	if p.mu.closed {
		return nil, ErrClosed
	}
	if n <= 0 {
		return nil, fmt.Errorf("gpu: staging buffer of %d bytes: size must be positive", n)
	}
	for i, b := range p.mu.free {
		if b.Cap() >= n {
			p.mu.free = slices.Delete(p.mu.free, i, i+1)
			p.leaseLocked(b, n)
			return b, nil
		}
	}
	largest := 0
	for _, b := range p.mu.all {
		largest = max(largest, b.Cap())
	}
	if n > largest {
		return nil, fmt.Errorf("%w: %d bytes requested, the largest of %d buffers holds %d", ErrTooLarge, n, len(p.mu.all), largest)
	}
	return nil, nil
}

// REQUIRES: p.mu.
func (p *Pool) leaseLocked(b *Buffer, n int) {
	b.leased = true
	b.n = n
	p.mu.leased++
	p.mu.stats.Gets++
}

// releaseLocked makes b available: to the first waiter it fits, or to the
// free list.
//
// REQUIRES: p.mu; b not leased.
func (p *Pool) releaseLocked(b *Buffer) {
	for i, w := range p.mu.waiters {
		if b.Cap() >= w.n {
			p.mu.waiters = slices.Delete(p.mu.waiters, i, i+1)
			p.leaseLocked(b, w.n)
			w.buf = b
			close(w.ready)
			return
		}
	}
	i, _ := slices.BinarySearchFunc(p.mu.free, b, func(x, y *Buffer) int {
		if c := x.Cap() - y.Cap(); c != 0 {
			return c
		}
		return x.seq - y.seq
	})
	p.mu.free = slices.Insert(p.mu.free, i, b)
}

// Put returns a leased buffer. The caller must be sure no device copy still
// uses it. Putting a buffer twice, or one from another pool, is an error
// and changes nothing. After Close, Put frees the buffer.
func (p *Pool) Put(b *Buffer) error {
	if b == nil {
		return errors.New("gpu: Put of a nil staging buffer")
	}
	if b.pool != p {
		return errors.New("gpu: Put of a staging buffer that belongs to another pool")
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if !b.leased {
		return errors.New("gpu: Put of a staging buffer that is not leased (double Put)")
	}
	b.leased = false
	p.mu.leased--
	if p.opt.Poison {
		fill(b.mem.Bytes(), Poison)
	}
	if p.mu.closed {
		return b.mem.Free()
	}
	p.releaseLocked(b)
	return nil
}

// Outstanding is the number of buffers leased and not yet Put.
func (p *Pool) Outstanding() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.mu.leased
}

// Stats returns a snapshot of the pool's counters.
func (p *Pool) Stats() PoolStats {
	p.mu.Lock()
	defer p.mu.Unlock()
	s := p.mu.stats
	s.Outstanding = p.mu.leased
	return s
}

// Close frees every free buffer and fails waiting Gets with ErrClosed. If
// buffers are still leased it says how many; they are freed when Put.
func (p *Pool) Close() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.mu.closed {
		return nil
	}
	p.mu.closed = true
	for _, w := range p.mu.waiters {
		close(w.ready)
	}
	p.mu.waiters = nil
	var errs []error
	for _, b := range p.mu.free {
		errs = append(errs, b.mem.Free())
	}
	p.mu.free = nil
	if p.mu.leased > 0 {
		errs = append(errs, fmt.Errorf("gpu: staging pool closed with %d buffers still leased", p.mu.leased))
	}
	return errors.Join(errs...)
}

func fill(b []byte, v byte) {
	if len(b) == 0 {
		return
	}
	b[0] = v
	for i := 1; i < len(b); i *= 2 {
		copy(b[i:], b[:i])
	}
}
