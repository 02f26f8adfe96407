package metrics_test

import (
	"net"
	"runtime"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/gobps/gobps/config"
	"github.com/gobps/gobps/internal/leakcheck"
	"github.com/gobps/gobps/metrics"
	"github.com/gobps/gobps/metrics/metricstest"
	"github.com/gobps/gobps/proto"
	"github.com/gobps/gobps/rdma"
)

// TestOff: without an address nothing listens and no goroutine starts,
// and the nil endpoint's methods do nothing.
func TestOff(t *testing.T) {
	lBefore, err := metricstest.Listeners()
	if err != nil {
		t.Fatal(err)
	}
	gBefore := runtime.NumGoroutine()
	ep, err := metrics.Listen("")
	if ep != nil || err != nil {
		t.Fatalf("Listen(\"\") = %v, %v; want nil, nil", ep, err)
	}
	if err := ep.Serve(config.Worker, 0, prometheus.NewCounter(prometheus.CounterOpts{Name: "x", Help: "x"})); err != nil {
		t.Fatal(err)
	}
	if ep.Addr() != "" || ep.URL() != "" || ep.Close() != nil {
		t.Fatal("the nil endpoint did something")
	}
	lAfter, err := metricstest.Listeners()
	if err != nil {
		t.Fatal(err)
	}
	if gAfter := runtime.NumGoroutine(); gAfter != gBefore || lAfter != lBefore {
		t.Fatalf("metrics off: %d goroutines and %d listeners before, %d and %d after", gBefore, lBefore, gAfter, lAfter)
	}
}

// TestServe: every series carries the role and rank, the Go and process
// collectors are there, and Close stops listening and every goroutine.
func TestServe(t *testing.T) {
	leakcheck.Check(t, "gobps/gobps/metrics")
	lBefore, _ := metricstest.Listeners()
	ep, err := metrics.Listen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	if l, _ := metricstest.Listeners(); l != lBefore+1 {
		t.Errorf("%d listeners after Listen, want %d", l, lBefore+1)
	}
	c := prometheus.NewCounterVec(prometheus.CounterOpts{Name: "gobps_test_total", Help: "A test counter."}, []string{"server"})
	c.WithLabelValues("1").Add(42)
	if err := ep.Serve(config.Server, 3, c); err != nil {
		t.Fatal(err)
	}
	f, err := metricstest.Scrape(ep.URL())
	if err != nil {
		t.Fatal(err)
	}
	if err := f.CheckLabels("role", "server", "rank", "3"); err != nil {
		t.Error(err)
	}
	if v, n := f.Sum("gobps_test_total", "server", "1"); v != 42 || n != 1 {
		t.Errorf("gobps_test_total{server=1} = %v in %d series, want 42 in 1", v, n)
	}
	for _, want := range []string{"go_goroutines", "process_cpu_seconds_total"} {
		if _, n := f.Sum(want); n != 1 {
			t.Errorf("%s: %d series, want 1 (have %v)", want, n, f.Names())
		}
	}
	url := ep.URL()
	if err := ep.Close(); err != nil {
		t.Fatal(err)
	}
	if err := ep.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if _, err := metricstest.Scrape(url); err == nil {
		t.Fatal("a scrape after Close succeeded")
	}
	if l, _ := metricstest.Listeners(); l != lBefore {
		t.Errorf("%d listeners after Close, want %d", l, lBefore)
	}
}

// TestCloseBeforeServe: an endpoint that never served closes its
// listener, and serves nothing afterwards.
func TestCloseBeforeServe(t *testing.T) {
	leakcheck.Check(t, "gobps/gobps/metrics")
	ep, err := metrics.Listen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	if err := ep.Close(); err != nil {
		t.Fatal(err)
	}
	if err := ep.Serve(config.Scheduler, 0); err != nil {
		t.Fatal(err)
	}
	if c, err := net.Dial("tcp", ep.Addr()); err == nil {
		c.Close()
		t.Fatal("the closed endpoint accepted a connection")
	}
}

// TestListenInUse: an address that cannot be listened on is an error that
// names the variable.
func TestListenInUse(t *testing.T) {
	ep, err := metrics.Listen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ep.Close()
	_, err = metrics.Listen(ep.Addr())
	if err == nil || !strings.Contains(err.Error(), "GOBPS_METRICS_ADDR="+ep.Addr()) {
		t.Fatalf("Listen on an address in use: %v", err)
	}
}

// fakeTransport keeps the handler Listen was given.
type fakeTransport struct {
	rdma.Transport
	h rdma.Handler
}

func (f *fakeTransport) Listen(addr string, h rdma.Handler) (rdma.Listener, error) {
	f.h = h
	return nil, nil
}

// handler records the calls it gets; it is a ChunkReceiver, not a
// StableReceiver.
type handler struct{ handled, chunks int }

func (h *handler) Dest(rdma.Conn, *proto.Header) ([]byte, error)  { return nil, nil }
func (h *handler) Handle(rdma.Conn, *proto.Header, []byte, error) { h.handled++ }
func (h *handler) Closed(rdma.Conn, error)                        {}
func (h *handler) Chunks(rdma.Conn, *proto.Header) (rdma.ChunkSink, bool, error) {
	h.chunks++
	return nil, true, nil
}

// TestCountPushes: the bytes of pushes delivered without an error are
// counted, nothing else is, and every call reaches the server's handler,
// the optional interfaces it implements included.
func TestCountPushes(t *testing.T) {
	ft := &fakeTransport{}
	tr, pushed := metrics.CountPushes(ft)
	inner := &handler{}
	if _, err := tr.Listen("x", inner); err != nil {
		t.Fatal(err)
	}
	h := ft.h
	for _, f := range []struct {
		op  proto.Op
		n   uint32
		err error
	}{{proto.OpPush, 1000, nil}, {proto.OpPush, 24, nil}, {proto.OpPush, 500, proto.ErrRefused}, {proto.OpPull, 0, nil}, {proto.OpDeclare, 77, nil}} {
		h.Handle(nil, &proto.Header{Op: f.op, Length: f.n}, nil, f.err)
	}
	if got := pushed.Load(); got != 1024 {
		t.Errorf("counted %d push bytes, want 1024", got)
	}
	if inner.handled != 5 {
		t.Errorf("the server's handler got %d frames, want 5", inner.handled)
	}
	if _, ok, _ := h.(rdma.ChunkReceiver).Chunks(nil, &proto.Header{}); !ok || inner.chunks != 1 {
		t.Errorf("Chunks did not reach the server's handler")
	}
	if _, ok, err := h.(rdma.StableReceiver).StableDest(nil, &proto.Header{}); ok || err != nil {
		t.Errorf("StableDest of a handler without one = %v, %v; want it declined", ok, err)
	}
	var nilCounter *metrics.PushBytes
	if nilCounter.Load() != 0 {
		t.Error("a nil counter is not 0")
	}
}
