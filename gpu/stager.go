package gpu

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"
)

// StagerOptions configures a Stager.
type StagerOptions struct {
	// Timeout bounds the waits the Stager does on its own, without a
	// caller's context: cleaning up after a failed Begin and the Abort that
	// Run does after a failure. Default 30s.
	Timeout time.Duration
}

// Stager moves gradients between device memory and host staging buffers
// around a host-side reduction (the engine's PushPull). It owns two
// high-priority streams, one for device-to-host and one for host-to-device
// copies, and a free list of events; it leases staging buffers from a Pool it
// does not own.
//
// One gradient's life (see Staged):
//
//	st, err := stager.Begin(src, n, frameworkStream) // on the framework's thread; never waits
//	...
//	host, err := st.Host(ctx)     // waits for the device-to-host copy
//	/* reduce in place in host: PushPull, then Handle.Wait */
//	err = st.Finish(ctx, dst)     // host-to-device copy, waited for; buffer back to the pool
//
// or st.Run(ctx, dst, reduce), which does the three and aborts on failure.
//
// Locking: all methods are safe for concurrent use.
type Stager struct {
	dev  Device
	pool *Pool
	opt  StagerOptions
	d2h  Stream
	h2d  Stream

	// d2hMu and h2dMu keep each gradient's enqueues on a stream together
	// (not needed for correctness, which only needs their order, but it
	// keeps one gradient's work contiguous in the queue).
	d2hMu sync.Mutex
	h2dMu sync.Mutex

	mu struct {
		sync.Mutex
		events []Event // free list
		live   int     // Staged not yet finished or aborted
		closed bool
	}

	// Test-only knobs that break the protocol on purpose, set through
	// export_test.go, so tests can show that the fake device catches each
	// mistake. Never set outside tests.
	knobs struct {
		skipReadyWait bool // D2H copy does not wait for the framework's event
		skipCopyWait  bool // Host returns before the D2H copy completed
		skipWriteWait bool // Finish returns the buffer before the H2D copy completed
	}
}

// NewStager creates the stager's two streams on dev, at PriorityHigh.
func NewStager(dev Device, pool *Pool, opt StagerOptions) (*Stager, error) {
	if dev == nil || pool == nil {
		return nil, errors.New("gpu: NewStager needs a device and a pool")
	}
	if opt.Timeout <= 0 {
		opt.Timeout = 30 * time.Second
	}
	d2h, err := dev.NewStream(PriorityHigh)
	if err != nil {
		return nil, fmt.Errorf("gpu: create device-to-host stream: %w", err)
	}
	h2d, err := dev.NewStream(PriorityHigh)
	if err != nil {
		_ = d2h.Close()
		return nil, fmt.Errorf("gpu: create host-to-device stream: %w", err)
	}
	return &Stager{dev: dev, pool: pool, opt: opt, d2h: d2h, h2d: h2d}, nil
}

// stage is where a Staged is in its life.
type stage int

const (
	begun   stage = iota // ready event recorded; maybe a buffer, no copy yet
	copying              // D2H copy enqueued, copied event recorded after it
	onHost               // D2H copy completed; the bytes are the caller's
	writing              // H2D copy enqueued, done event recorded after it
	ended                // buffer and events returned (finished or aborted)
)

var stageNames = [...]string{"begun", "copying", "on host", "writing back", "ended"}

// String names the stage in error messages.
func (s stage) String() string { return stageNames[s] }

// Staged is one gradient between Begin and Finish (or Abort). Its host bytes
// are reachable only through Host, which returns them only after the
// device-to-host copy has completed, so nothing can read the staging buffer
// early. Exactly one of Finish and Abort must end it (Abort after Finish is
// a no-op), or the buffer stays leased (Pool.Outstanding shows the leak).
//
// Locking: methods serialize on the Staged; they are meant to be called by
// one goroutine.
type Staged struct {
	s   *Stager
	src DevPtr
	n   int

	mu     sync.Mutex
	stage  stage
	buf    *Buffer
	ready  Event // recorded on the framework stream at Begin
	copied Event // recorded on the D2H stream after the copy
	done   Event // recorded on the H2D stream after the write-back
	// syncOn is set when an event could not be recorded after a copy was
	// enqueued: completion is then known only by synchronizing the stream.
	syncOn Stream
}

// Begin starts staging n bytes at device address src. It records an event
// on the framework's stream fw (the stream backprop wrote the gradient on),
// so the copy waits for everything the framework enqueued before this call
// and never reads a gradient before it is written. If a pinned buffer is
// free it also enqueues the device-to-host copy at once; otherwise the copy
// is enqueued by Host. Begin never waits for the device or the pool, so it
// may be called from the framework's thread (a backward hook).
func (s *Stager) Begin(src DevPtr, n int, fw Stream) (*Staged, error) {
	if n <= 0 {
		return nil, fmt.Errorf("gpu: stage %d bytes: size must be positive", n)
	}
	if fw == nil {
		return nil, errors.New("gpu: stage: no framework stream")
	}
	s.mu.Lock()
	if s.mu.closed {
		s.mu.Unlock()
		return nil, ErrClosed
	}
	s.mu.live++
	s.mu.Unlock()

	st := &Staged{s: s, src: src, n: n}
	var err error
	if st.ready, err = s.event(); err == nil {
		if err = fw.Record(st.ready); err != nil {
			err = fmt.Errorf("gpu: record an event on the framework stream: %w", err)
		}
	}
	if err != nil {
		st.end()
		return nil, err
	}
	if b, ok := s.pool.TryGet(n); ok {
		st.buf = b
		// A copy into pageable memory may be synchronous in the CUDA
		// driver: leave it to Host, off the framework's thread.
		if b.Pinned() {
			if err := st.startCopy(); err != nil {
				ctx, cancel := context.WithTimeout(context.Background(), s.opt.Timeout)
				defer cancel()
				return nil, errors.Join(err, st.abort(ctx))
			}
		}
	}
	return st, nil
}

// event takes an event from the free list or creates one.
func (s *Stager) event() (Event, error) {
	s.mu.Lock()
	if n := len(s.mu.events); n > 0 {
		e := s.mu.events[n-1]
		s.mu.events = s.mu.events[:n-1]
		s.mu.Unlock()
		return e, nil
	}
	s.mu.Unlock()
	e, err := s.dev.NewEvent()
	if err != nil {
		return nil, fmt.Errorf("gpu: create event: %w", err)
	}
	return e, nil
}

// putEvents returns events to the free list. Re-recording an event later is
// safe even if a stream wait captured it earlier: a wait binds to the record
// current when the wait was enqueued.
func (s *Stager) putEvents(es ...Event) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, e := range es {
		if e != nil {
			s.mu.events = append(s.mu.events, e)
		}
	}
}

// startCopy enqueues, on the D2H stream: wait for ready, copy, record copied.
//
// REQUIRES: st.buf leased, st.stage == begun. On error nothing that uses the
// buffer is pending unless st.syncOn is set.
func (st *Staged) startCopy() error {
	s := st.s
	if st.copied == nil {
		var err error
		if st.copied, err = s.event(); err != nil {
			return err
		}
	}
	s.d2hMu.Lock()
	defer s.d2hMu.Unlock()
	if !s.knobs.skipReadyWait {
		if err := s.d2h.WaitEvent(st.ready); err != nil {
			return fmt.Errorf("gpu: device-to-host stream: wait for the framework's event: %w", err)
		}
	}
	if err := s.d2h.CopyDtoH(st.buf.Bytes(), st.src); err != nil {
		return fmt.Errorf("gpu: enqueue device-to-host copy of %d bytes: %w", st.n, err)
	}
	st.stage = copying
	if err := s.d2h.Record(st.copied); err != nil {
		st.syncOn = s.d2h
		return fmt.Errorf("gpu: record an event after the device-to-host copy: %w", err)
	}
	return nil
}

// Host returns the staged bytes once the device-to-host copy has completed,
// leasing a buffer and enqueuing the copy first if Begin could not. The
// caller may read and write them in place (the reduction's result goes back
// to the device from here) until Finish or Abort. If ctx ends first, Host
// returns its error and may be called again.
func (st *Staged) Host(ctx context.Context) ([]byte, error) {
	st.mu.Lock()
	defer st.mu.Unlock()
	switch st.stage {
	case onHost:
		return st.buf.Bytes(), nil
	case begun:
		if st.buf == nil {
			b, err := st.s.pool.Get(ctx, st.n)
			if err != nil {
				return nil, fmt.Errorf("gpu: lease a staging buffer: %w", err)
			}
			st.buf = b
		}
		if err := st.startCopy(); err != nil {
			return nil, err
		}
	case copying:
	default:
		return nil, fmt.Errorf("gpu: Host on a staged gradient that is %s", st.stage)
	}
	if !st.s.knobs.skipCopyWait {
		if err := st.wait(ctx, st.copied); err != nil {
			return nil, fmt.Errorf("gpu: wait for the device-to-host copy: %w", err)
		}
	}
	st.stage = onHost
	return st.buf.Bytes(), nil
}

// Finish copies the host bytes to device address dst (usually the source:
// in place), waits until that copy has completed, and returns the buffer to
// the pool. The framework may use dst once Finish has returned; a handle
// over this gradient must complete only then. If ctx ends while the copy is
// in flight, Finish returns its error and the buffer stays leased: call
// Abort to wait again and release it.
func (st *Staged) Finish(ctx context.Context, dst DevPtr) error {
	st.mu.Lock()
	defer st.mu.Unlock()
	s := st.s
	switch st.stage {
	case onHost:
	case writing:
		// A previous Finish timed out: wait again.
	default:
		return fmt.Errorf("gpu: Finish on a staged gradient that is %s (Host must return first)", st.stage)
	}
	if st.stage == onHost {
		var err error
		if st.done == nil {
			if st.done, err = s.event(); err != nil {
				return err
			}
		}
		s.h2dMu.Lock()
		err = s.h2d.CopyHtoD(dst, st.buf.Bytes())
		if err != nil {
			s.h2dMu.Unlock()
			return fmt.Errorf("gpu: enqueue host-to-device copy of %d bytes: %w", st.n, err)
		}
		st.stage = writing
		err = s.h2d.Record(st.done)
		s.h2dMu.Unlock()
		if err != nil {
			st.syncOn = s.h2d
			return fmt.Errorf("gpu: record an event after the host-to-device copy: %w", err)
		}
	}
	if !s.knobs.skipWriteWait {
		if err := st.wait(ctx, st.done); err != nil {
			return fmt.Errorf("gpu: wait for the host-to-device copy: %w", err)
		}
	}
	return st.end()
}

// Abort ends the staged gradient without writing anything back: it waits
// (bounded by ctx) until no copy uses the buffer, then returns it. For error
// paths; a no-op once ended. If ctx ends first the buffer stays leased and
// Abort may be called again.
func (st *Staged) Abort(ctx context.Context) error {
	st.mu.Lock()
	defer st.mu.Unlock()
	return st.abort(ctx)
}

// REQUIRES: st.mu, or st not yet shared.
func (st *Staged) abort(ctx context.Context) error {
	var pending Event
	switch st.stage {
	case ended:
		return nil
	case copying:
		pending = st.copied
	case writing:
		pending = st.done
	}
	if st.stage == copying || st.stage == writing {
		if err := st.wait(ctx, pending); err != nil {
			return fmt.Errorf("gpu: abort: wait for a copy still using the staging buffer: %w", err)
		}
	}
	return st.end()
}

// wait waits for e, or for the whole stream syncOn when the event after the
// copy could not be recorded.
func (st *Staged) wait(ctx context.Context, e Event) error {
	if st.syncOn != nil {
		if err := st.syncOn.Synchronize(ctx); err != nil {
			return err
		}
		st.syncOn = nil
		return nil
	}
	return e.Synchronize(ctx)
}

// end returns the buffer and events.
//
// REQUIRES: no copy uses the buffer any more.
func (st *Staged) end() error {
	if st.stage == ended {
		return nil
	}
	st.stage = ended
	var err error
	if st.buf != nil {
		err = st.s.pool.Put(st.buf)
		st.buf = nil
	}
	st.s.putEvents(st.ready, st.copied, st.done)
	st.ready, st.copied, st.done = nil, nil, nil
	st.s.mu.Lock()
	st.s.mu.live--
	st.s.mu.Unlock()
	return err
}

// Run is Host, then reduce on the host bytes (in place), then Finish to dst;
// on any failure it Aborts (bounded by StagerOptions.Timeout even if ctx has
// ended) and returns the failure. reduce must not return while anything may
// still read or write the bytes: for the engine, after Handle.Wait.
func (st *Staged) Run(ctx context.Context, dst DevPtr, reduce func(host []byte) error) error {
	host, err := st.Host(ctx)
	if err == nil {
		if err = reduce(host); err == nil {
			if err = st.Finish(ctx, dst); err == nil {
				return nil
			}
		}
	}
	actx, cancel := context.WithTimeout(context.WithoutCancel(ctx), st.s.opt.Timeout)
	defer cancel()
	return errors.Join(err, st.Abort(actx))
}

// Live is the number of staged gradients not yet finished or aborted.
func (s *Stager) Live() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.mu.live
}

// Close waits (bounded by ctx) for the stager's streams to drain and
// releases them and its events. It refuses, changing nothing, while staged
// gradients are live: Finish or Abort them first. It does not close the
// pool or the device.
func (s *Stager) Close(ctx context.Context) error {
	s.mu.Lock()
	if s.mu.closed {
		s.mu.Unlock()
		return nil
	}
	if s.mu.live > 0 {
		n := s.mu.live
		s.mu.Unlock()
		return fmt.Errorf("gpu: close stager: %d staged gradients not finished or aborted", n)
	}
	s.mu.closed = true
	events := s.mu.events
	s.mu.events = nil
	s.mu.Unlock()

	errs := []error{s.d2h.Synchronize(ctx), s.h2d.Synchronize(ctx), s.d2h.Close(), s.h2d.Close()}
	for _, e := range events {
		errs = append(errs, e.Close())
	}
	return errors.Join(errs...)
}
