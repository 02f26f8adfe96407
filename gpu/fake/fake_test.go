package fake

import (
	"bytes"
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gobps/gobps/gpu"
	"github.com/gobps/gobps/internal/leakcheck"
)

// newDev returns a device closed at the end of the test. Tests call
// leakcheck.Check first, so that it runs after every device is closed.
func newDev(t *testing.T, opt Options) *Device {
	t.Helper()
	d := New(opt)
	t.Cleanup(func() {
		if err := d.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return d
}

func ctxT(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

func mustStream(t *testing.T, d *Device) gpu.Stream {
	t.Helper()
	s, err := d.NewStream(gpu.PriorityHigh)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

func mustEvent(t *testing.T, d *Device) gpu.Event {
	t.Helper()
	e, err := d.NewEvent()
	if err != nil {
		t.Fatal(err)
	}
	return e
}

func TestStreamRunsInOrder(t *testing.T) {
	leakcheck.Check(t, "github.com/gobps/gobps/gpu")
	d := newDev(t, Options{})
	s := d.NewFrameworkStream()
	defer s.Close()
	var mu sync.Mutex
	var got []int
	for i := range 20 {
		// Earlier ops sleep longer: order must still be enqueue order.
		if err := s.Launch(time.Duration(20-i)*100*time.Microsecond, func() {
			mu.Lock()
			got = append(got, i)
			mu.Unlock()
		}); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Synchronize(ctxT(t, 5*time.Second)); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	for i, v := range got {
		if v != i {
			t.Fatalf("ops ran in order %v", got)
		}
	}
	if len(got) != 20 {
		t.Fatalf("%d of 20 ops ran", len(got))
	}
}

func TestEventSemantics(t *testing.T) {
	leakcheck.Check(t, "github.com/gobps/gobps/gpu")
	d := newDev(t, Options{})
	s := d.NewFrameworkStream()
	defer s.Close()
	e := mustEvent(t, d)

	if done, err := e.Query(); !done || err != nil {
		t.Fatalf("never-recorded event: Query = %v, %v; want done", done, err)
	}
	release := make(chan struct{})
	if err := s.Launch(0, func() { <-release }); err != nil {
		t.Fatal(err)
	}
	if err := s.Record(e); err != nil {
		t.Fatal(err)
	}
	if done, err := e.Query(); done || err != nil {
		t.Fatalf("event behind blocked work: Query = %v, %v; want not done", done, err)
	}
	if err := e.Synchronize(ctxT(t, 20*time.Millisecond)); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Synchronize on a blocked event = %v, want deadline exceeded", err)
	}
	close(release)
	if err := e.Synchronize(ctxT(t, 5*time.Second)); err != nil {
		t.Fatal(err)
	}
	if done, _ := e.Query(); !done {
		t.Fatal("event not done after Synchronize")
	}

	// Recording again moves the event to the new end of the stream.
	release2 := make(chan struct{})
	if err := s.Launch(0, func() { <-release2 }); err != nil {
		t.Fatal(err)
	}
	if err := s.Record(e); err != nil {
		t.Fatal(err)
	}
	if done, _ := e.Query(); done {
		t.Fatal("re-recorded event reports done before the stream reached it")
	}
	close(release2)
	if err := e.Synchronize(ctxT(t, 5*time.Second)); err != nil {
		t.Fatal(err)
	}
	if err := e.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := e.Query(); !errors.Is(err, gpu.ErrClosed) {
		t.Fatalf("Query of a closed event = %v, want ErrClosed", err)
	}
}

func TestWaitEventAcrossStreams(t *testing.T) {
	leakcheck.Check(t, "github.com/gobps/gobps/gpu")
	d := newDev(t, Options{})
	a := d.NewFrameworkStream()
	defer a.Close()
	b := mustStream(t, d)
	bs := b.(*Stream)
	e := mustEvent(t, d)
	defer e.Close()

	var x atomic.Int32
	if err := a.Launch(30*time.Millisecond, func() { x.Store(1) }); err != nil {
		t.Fatal(err)
	}
	if err := a.Record(e); err != nil {
		t.Fatal(err)
	}
	// Re-record after longer work: b's wait must stay bound to the first.
	release := make(chan struct{})
	if err := a.Launch(0, func() { <-release }); err != nil {
		t.Fatal(err)
	}
	if err := b.WaitEvent(e); err != nil {
		t.Fatal(err)
	}
	if err := a.Record(e); err != nil {
		t.Fatal(err)
	}
	var seen atomic.Int32
	seen.Store(-1)
	if err := bs.Launch(0, func() { seen.Store(x.Load()) }); err != nil {
		t.Fatal(err)
	}
	if err := b.Synchronize(ctxT(t, 5*time.Second)); err != nil {
		t.Fatalf("b never passed its wait (bound to the later record?): %v", err)
	}
	if seen.Load() != 1 {
		t.Fatalf("work after WaitEvent saw x=%d, want 1 (it ran before the event)", seen.Load())
	}
	close(release)

	// Without the wait, b runs ahead of a: the fake is really asynchronous.
	x.Store(0)
	if err := a.Launch(200*time.Millisecond, func() { x.Store(1) }); err != nil {
		t.Fatal(err)
	}
	seen.Store(-1)
	if err := bs.Launch(0, func() { seen.Store(x.Load()) }); err != nil {
		t.Fatal(err)
	}
	if err := b.Synchronize(ctxT(t, 5*time.Second)); err != nil {
		t.Fatal(err)
	}
	if seen.Load() != 0 {
		t.Fatalf("unordered streams: b saw x=%d, want 0", seen.Load())
	}
	if err := a.Synchronize(ctxT(t, 5*time.Second)); err != nil {
		t.Fatal(err)
	}

	// A never-recorded event is no wait at all.
	e2 := mustEvent(t, d)
	if err := b.WaitEvent(e2); err != nil {
		t.Fatal(err)
	}
	if err := b.Synchronize(ctxT(t, time.Second)); err != nil {
		t.Fatal(err)
	}
}

func TestCopiesPoisonAndDelay(t *testing.T) {
	leakcheck.Check(t, "github.com/gobps/gobps/gpu")
	const delay = 100 * time.Millisecond
	d := newDev(t, Options{CopyDelay: delay})
	s := mustStream(t, d)
	const n = 10000
	p, err := d.Malloc(n)
	if err != nil {
		t.Fatal(err)
	}
	want := make([]byte, n)
	for i := range want {
		want[i] = byte(i * 7)
	}
	if err := d.Write(p, want); err != nil {
		t.Fatal(err)
	}
	hb, err := d.AllocHost(n)
	if err != nil {
		t.Fatal(err)
	}
	defer hb.Free()
	host := hb.Bytes()

	start := time.Now()
	if err := s.CopyDtoH(host, p); err != nil {
		t.Fatal(err)
	}
	if !d.InFlight(host) || !d.InFlight(host[n-1:]) {
		t.Fatal("InFlight false for the destination of a pending copy")
	}
	if d.InFlight(make([]byte, 10)) {
		t.Fatal("InFlight true for unrelated memory")
	}
	if !bytes.Equal(host, bytes.Repeat([]byte{gpu.Poison}, n)) {
		t.Fatal("destination of a pending device-to-host copy is not poisoned")
	}
	if err := s.Synchronize(ctxT(t, 5*time.Second)); err != nil {
		t.Fatal(err)
	}
	if el := time.Since(start); el < delay {
		t.Fatalf("copy completed after %v, before its %v delay", el, delay)
	}
	if !bytes.Equal(host, want) {
		t.Fatal("device-to-host copy delivered wrong bytes")
	}
	if d.InFlight(host) {
		t.Fatal("InFlight true after the copy completed")
	}

	// Host to device: the device destination is poisoned while the copy
	// runs, and holds the data once it completed.
	for i := range host {
		host[i] = ^want[i]
	}
	e := mustEvent(t, d)
	defer e.Close()
	if err := s.CopyHtoD(p, host); err != nil {
		t.Fatal(err)
	}
	if err := s.Record(e); err != nil {
		t.Fatal(err)
	}
	// While the copy runs (it poisons on start, then sleeps its delay)
	// the device bytes are poison, and the event is not done.
	mid := make([]byte, n)
	poison := bytes.Repeat([]byte{gpu.Poison}, n)
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(100 * time.Microsecond) {
		if err := d.Read(p, mid); err != nil {
			t.Fatal(err)
		}
		if bytes.Equal(mid, poison) {
			break
		}
		if done, _ := e.Query(); done || time.Now().After(deadline) {
			t.Fatal("device destination of a running host-to-device copy was never poisoned")
		}
	}
	if done, _ := e.Query(); done {
		t.Fatal("copy's event done while its destination is still poisoned")
	}
	if err := e.Synchronize(ctxT(t, 5*time.Second)); err != nil {
		t.Fatal(err)
	}
	if err := d.Read(p, mid); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(mid, host) {
		t.Fatal("host-to-device copy delivered wrong bytes")
	}
}

func TestJitterIsBoundedAndSeeded(t *testing.T) {
	leakcheck.Check(t, "github.com/gobps/gobps/gpu")
	d1 := newDev(t, Options{MaxJitter: time.Millisecond, Seed: 7})
	d2 := newDev(t, Options{MaxJitter: time.Millisecond, Seed: 7})
	for range 100 {
		a, b := d1.delay(), d2.delay()
		if a != b || a < 0 || a >= time.Millisecond {
			t.Fatalf("delays %v and %v: want equal, in [0, 1ms)", a, b)
		}
	}
}

func TestCopyArgumentErrors(t *testing.T) {
	leakcheck.Check(t, "github.com/gobps/gobps/gpu")
	d := newDev(t, Options{})
	s := mustStream(t, d)
	p, err := d.Malloc(100)
	if err != nil {
		t.Fatal(err)
	}
	hb, err := gpu.AllocPageable(200)
	if err != nil {
		t.Fatal(err)
	}
	defer hb.Free()
	host := hb.Bytes()
	cases := []struct {
		desc string
		err  error
	}{
		{"past the end of the allocation", s.CopyDtoH(host[:101], p)},
		{"offset past the end", s.CopyDtoH(host[:10], p+95)},
		{"a host address as a device pointer", s.CopyDtoH(host[:10], gpu.DevPtr(0x1000))},
		{"host to device past the end", s.CopyHtoD(p+1, host[:100])},
	}
	for _, c := range cases {
		if c.err == nil {
			t.Errorf("%s: no error", c.desc)
		}
	}
	if err := s.CopyDtoH(host[:100], p); err != nil {
		t.Fatalf("valid copy: %v", err)
	}
	if err := d.Free(p + 1); err == nil {
		t.Error("Free of an interior pointer: no error")
	}
	if err := d.Free(p); err != nil {
		t.Fatal(err)
	}
	if err := s.CopyDtoH(host[:10], p); err == nil {
		t.Error("copy from freed memory: no error")
	}
	injected := errors.New("boom")
	d.InjectCopyError(injected)
	q, _ := d.Malloc(10)
	if err := s.CopyDtoH(host[:10], q); !errors.Is(err, injected) {
		t.Errorf("injected failure: got %v", err)
	}
	if err := s.CopyDtoH(host[:10], q); err != nil {
		t.Errorf("injection is for one copy only: %v", err)
	}
	if err := s.Synchronize(ctxT(t, 5*time.Second)); err != nil {
		t.Fatal(err)
	}
}

func TestMemlockLimit(t *testing.T) {
	leakcheck.Check(t, "github.com/gobps/gobps/gpu")
	d := newDev(t, Options{MemlockBytes: 3 * 4096})
	a, err := d.AllocHost(2 * 4096)
	if err != nil {
		t.Fatal(err)
	}
	if !a.Pinned() {
		t.Fatal("AllocHost memory not pinned")
	}
	if _, err := d.AllocHost(2 * 4096); !errors.Is(err, ErrMemlock) {
		t.Fatalf("past the limit: %v, want ErrMemlock", err)
	}
	if err := a.Free(); err != nil {
		t.Fatal(err)
	}
	if err := a.Free(); err == nil {
		t.Fatal("double Free: no error")
	}
	b, err := d.AllocHost(3 * 4096)
	if err != nil {
		t.Fatalf("after Free: %v", err)
	}
	_ = b.Free()
	if d.PinnedBytes() != 0 {
		t.Fatalf("PinnedBytes = %d after freeing everything", d.PinnedBytes())
	}
	never := newDev(t, Options{MemlockBytes: -1})
	if _, err := never.AllocHost(1); !errors.Is(err, ErrMemlock) {
		t.Fatalf("MemlockBytes<0: %v, want ErrMemlock", err)
	}
}

func TestForeignStream(t *testing.T) {
	leakcheck.Check(t, "github.com/gobps/gobps/gpu")
	d := newDev(t, Options{})
	fw := d.NewFrameworkStream()
	defer fw.Close()
	w, err := d.ForeignStream(fw.Handle())
	if err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	// Closing the wrapper leaves the framework's stream usable.
	e := mustEvent(t, d)
	if err := fw.Record(e); err != nil {
		t.Fatalf("framework stream closed by its wrapper: %v", err)
	}
	if err := w.Record(e); err != nil {
		t.Fatal(err)
	}
	if _, err := d.ForeignStream(0); err != nil {
		t.Fatalf("default stream: %v", err)
	}
	if _, err := d.ForeignStream(0xdead); err == nil {
		t.Fatal("unknown handle: no error")
	}
	other := newDev(t, Options{})
	oe := mustEvent(t, other)
	if err := fw.Record(oe); err == nil {
		t.Fatal("event of another device: no error")
	}
}

func TestCloseStopsEverything(t *testing.T) {
	leakcheck.Check(t, "github.com/gobps/gobps/gpu")
	d := New(Options{})
	s, _ := d.NewStream(gpu.PriorityDefault)
	fw := d.NewFrameworkStream()
	e, _ := d.NewEvent()
	never, _ := d.NewEvent()
	block := make(chan struct{})
	defer close(block)
	_ = fw.Launch(0, func() {
		select {
		case <-block:
		case <-time.After(50 * time.Millisecond):
		}
	})
	_ = fw.Record(never)
	_ = fw.Launch(time.Hour, func() {})
	_ = s.WaitEvent(never)
	_ = s.Record(e)

	errc := make(chan error, 1)
	go func() { errc <- e.Synchronize(context.Background()) }()
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	if err := <-errc; !errors.Is(err, gpu.ErrClosed) {
		t.Fatalf("Synchronize across Close = %v, want ErrClosed", err)
	}
	if _, err := d.NewStream(gpu.PriorityDefault); !errors.Is(err, gpu.ErrClosed) {
		t.Fatalf("NewStream after Close = %v", err)
	}
	if err := fw.Launch(0, func() {}); err != nil {
		// The stream itself is not closed, but its goroutine is gone:
		// nothing runs. Enqueue may still succeed.
		t.Logf("Launch after device Close: %v", err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := s.CopyHtoD(0, nil); err == nil {
		t.Fatal("copy on a closed stream: no error")
	}
}
