package fake

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/gobps/gobps/gpu"
)

// Stream is a fake stream: an ordered queue of operations run by its own
// goroutine. It implements gpu.Stream, and adds Launch and WriteAfter to
// simulate the framework's kernels.
//
// Locking: safe for concurrent use; each enqueue is atomic.
type Stream struct {
	d      *Device
	prio   gpu.Priority
	handle uintptr
	kick   chan struct{} // capacity 1: "the queue changed"

	mu struct {
		sync.Mutex
		q      []*op
		closed bool
	}
}

var _ gpu.Stream = (*Stream)(nil)

// op is one queued operation. The stream goroutine, in order: waits for
// wait (if set), runs start, sleeps delay, runs run, takes the op out of
// the device's in-flight set, and completes rec (if set).
type op struct {
	wait  *gen
	start func()
	delay time.Duration
	run   func()
	host  []byte // host memory a copy uses, for Device.InFlight
	rec   *gen
}

// gen is one Record of an event: done is closed when the stream reaches it.
type gen struct{ done chan struct{} }

func newGen() *gen { return &gen{done: make(chan struct{})} }

func (d *Device) newStream(p gpu.Priority) *Stream {
	s := &Stream{d: d, prio: p, kick: make(chan struct{}, 1)}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.mu.closed {
		s.mu.closed = true
		return s
	}
	if d.def != nil { // the default stream keeps handle 0
		d.mu.handle += 0x100
		s.handle = d.mu.handle
		d.mu.streams[s.handle] = s
	}
	d.wg.Add(1)
	go s.run()
	return s
}

// Handle is the stream's raw handle, what ForeignStream takes (0 for the
// default stream).
func (s *Stream) Handle() uintptr { return s.handle }

// Priority is the priority the stream was created with.
func (s *Stream) Priority() gpu.Priority { return s.prio }

// enqueue appends o, registering its host memory as in flight.
func (s *Stream) enqueue(o *op) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.mu.closed {
		return fmt.Errorf("fake: enqueue on a closed stream: %w", gpu.ErrClosed)
	}
	if o.host != nil {
		s.d.mu.Lock()
		s.d.mu.inflight[o] = struct{}{}
		s.d.mu.Unlock()
	}
	s.mu.q = append(s.mu.q, o)
	select {
	case s.kick <- struct{}{}:
	default:
	}
	return nil
}

// run is the stream's goroutine.
func (s *Stream) run() {
	defer s.d.wg.Done()
	for {
		s.mu.Lock()
		if len(s.mu.q) == 0 {
			closed := s.mu.closed
			s.mu.Unlock()
			if closed {
				return
			}
			select {
			case <-s.kick:
				continue
			case <-s.d.quit:
				return
			}
		}
		o := s.mu.q[0]
		s.mu.q[0] = nil
		s.mu.q = s.mu.q[1:]
		s.mu.Unlock()
		if !s.exec(o) {
			return
		}
	}
}

// exec runs one op; false means the device was closed meanwhile.
func (s *Stream) exec(o *op) bool {
	if o.wait != nil {
		select {
		case <-o.wait.done:
		case <-s.d.quit:
			return false
		}
	}
	if o.start != nil {
		o.start()
	}
	if o.delay > 0 {
		t := time.NewTimer(o.delay)
		select {
		case <-t.C:
		case <-s.d.quit:
			t.Stop()
			return false
		}
	}
	if o.run != nil {
		o.run()
	}
	if o.host != nil {
		s.d.mu.Lock()
		delete(s.d.mu.inflight, o)
		s.d.mu.Unlock()
	}
	if o.rec != nil {
		close(o.rec.done)
	}
	return true
}

// takeCopyErr returns and clears the injected copy error.
func (d *Device) takeCopyErr() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	err := d.mu.copyErr
	d.mu.copyErr = nil
	if err != nil {
		return fmt.Errorf("fake: injected copy failure: %w", err)
	}
	return nil
}

// CopyDtoH implements gpu.Stream. dst is poisoned at once: its contents are
// undefined until the copy completes.
func (s *Stream) CopyDtoH(dst []byte, src gpu.DevPtr) error {
	if err := s.d.takeCopyErr(); err != nil {
		return err
	}
	m, err := s.d.deviceMem(src, len(dst))
	if err != nil {
		return fmt.Errorf("fake: CopyDtoH: %w", err)
	}
	s.mu.Lock()
	closed := s.mu.closed
	s.mu.Unlock()
	if closed {
		return fmt.Errorf("fake: enqueue on a closed stream: %w", gpu.ErrClosed)
	}
	fill(dst, gpu.Poison)
	return s.enqueue(&op{delay: s.d.delay(), run: func() { copy(dst, m) }, host: dst})
}

// CopyHtoD implements gpu.Stream. The device destination is poisoned when
// the copy starts running (after the stream's earlier work), so reading it
// before the copy's event completed shows NaNs.
func (s *Stream) CopyHtoD(dst gpu.DevPtr, src []byte) error {
	if err := s.d.takeCopyErr(); err != nil {
		return err
	}
	m, err := s.d.deviceMem(dst, len(src))
	if err != nil {
		return fmt.Errorf("fake: CopyHtoD: %w", err)
	}
	return s.enqueue(&op{
		start: func() { fill(m, gpu.Poison) },
		delay: s.d.delay(),
		run:   func() { copy(m, src) },
		host:  src,
	})
}

// event checks that e is an open event of this stream's device.
func (s *Stream) event(e gpu.Event) (*Event, error) {
	fe, ok := e.(*Event)
	if !ok || fe.d != s.d {
		return nil, fmt.Errorf("fake: event %T does not belong to this device", e)
	}
	return fe, nil
}

// Record implements gpu.Stream.
func (s *Stream) Record(e gpu.Event) error {
	fe, err := s.event(e)
	if err != nil {
		return err
	}
	fe.mu.Lock()
	defer fe.mu.Unlock()
	if fe.mu.closed {
		return fmt.Errorf("fake: record of a closed event: %w", gpu.ErrClosed)
	}
	g := newGen()
	if err := s.enqueue(&op{rec: g}); err != nil {
		return err
	}
	fe.mu.cur = g
	return nil
}

// WaitEvent implements gpu.Stream: it binds to e's latest Record now.
func (s *Stream) WaitEvent(e gpu.Event) error {
	fe, err := s.event(e)
	if err != nil {
		return err
	}
	fe.mu.Lock()
	g, closed := fe.mu.cur, fe.mu.closed
	fe.mu.Unlock()
	if closed {
		return fmt.Errorf("fake: wait on a closed event: %w", gpu.ErrClosed)
	}
	if g == nil {
		return nil // never recorded: no-op, as in CUDA
	}
	return s.enqueue(&op{wait: g})
}

// Synchronize implements gpu.Stream.
func (s *Stream) Synchronize(ctx context.Context) error {
	g := newGen()
	if err := s.enqueue(&op{rec: g}); err != nil {
		return err
	}
	return s.d.await(ctx, g)
}

// Launch enqueues fn as a "kernel": it runs on the stream's goroutine,
// after the work enqueued before it and delay later.
func (s *Stream) Launch(delay time.Duration, fn func()) error {
	return s.enqueue(&op{delay: delay, run: fn})
}

// WriteAfter enqueues a "kernel" that writes data (copied now) to device
// memory at p, delay after the stream reaches it: backprop producing a
// gradient late.
func (s *Stream) WriteAfter(delay time.Duration, p gpu.DevPtr, data []byte) error {
	m, err := s.d.deviceMem(p, len(data))
	if err != nil {
		return fmt.Errorf("fake: WriteAfter: %w", err)
	}
	data = append([]byte(nil), data...)
	return s.Launch(delay, func() { copy(m, data) })
}

// Close implements gpu.Stream: no more work may be enqueued; work already
// queued still runs (as with cuStreamDestroy) unless the device closes.
func (s *Stream) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.mu.closed {
		return nil
	}
	s.mu.closed = true
	select {
	case s.kick <- struct{}{}:
	default:
	}
	s.d.mu.Lock()
	delete(s.d.mu.streams, s.handle)
	s.d.mu.Unlock()
	return nil
}

// await waits for g, ctx or the device's closing.
func (d *Device) await(ctx context.Context, g *gen) error {
	select {
	case <-g.done:
		return nil
	default:
	}
	select {
	case <-g.done:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("fake: %w", ctx.Err())
	case <-d.quit:
		return fmt.Errorf("fake: device closed while waiting: %w", gpu.ErrClosed)
	}
}

// Event is a fake event; it implements gpu.Event.
//
// Locking: safe for concurrent use.
type Event struct {
	d  *Device
	mu struct {
		sync.Mutex
		cur    *gen // latest Record, nil if never recorded
		closed bool
	}
}

var _ gpu.Event = (*Event)(nil)

// Query implements gpu.Event.
func (e *Event) Query() (bool, error) {
	e.mu.Lock()
	g, closed := e.mu.cur, e.mu.closed
	e.mu.Unlock()
	if closed {
		return false, fmt.Errorf("fake: query of a closed event: %w", gpu.ErrClosed)
	}
	if g == nil {
		return true, nil
	}
	select {
	case <-g.done:
		return true, nil
	default:
		return false, nil
	}
}

// Synchronize implements gpu.Event.
func (e *Event) Synchronize(ctx context.Context) error {
	e.mu.Lock()
	g, closed := e.mu.cur, e.mu.closed
	e.mu.Unlock()
	if closed {
		return fmt.Errorf("fake: synchronize on a closed event: %w", gpu.ErrClosed)
	}
	if g == nil {
		return nil
	}
	return e.d.await(ctx, g)
}

// Close implements gpu.Event. Waits already enqueued on it still complete.
func (e *Event) Close() error {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.mu.closed = true
	return nil
}
