package accept

import (
	"fmt"
	"net"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// fakeListener returns, from Accept, the results queued in script, then
// net.ErrClosed.
type fakeListener struct {
	mu     sync.Mutex
	script []result
	calls  []time.Time
}

type result struct {
	conn net.Conn
	err  error
}

func (l *fakeListener) Accept() (net.Conn, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.calls = append(l.calls, time.Now())
	if len(l.script) == 0 {
		return nil, fmt.Errorf("accept tcp 127.0.0.1:1: %w", net.ErrClosed)
	}
	r := l.script[0]
	l.script = l.script[1:]
	return r.conn, r.err
}

func (l *fakeListener) Close() error   { return nil }
func (l *fakeListener) Addr() net.Addr { return &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 1} }

func opErr(errno syscall.Errno) error {
	return &net.OpError{Op: "accept", Net: "tcp", Err: &net.OpError{Err: errno}}
}

func conn(t *testing.T) net.Conn {
	a, b := net.Pipe()
	t.Cleanup(func() { a.Close(); b.Close() })
	return a
}

type logRec struct {
	mu    sync.Mutex
	lines []string
}

func (r *logRec) logf(format string, args ...any) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.lines = append(r.lines, fmt.Sprintf(format, args...))
}

// TestLoopSurvivesEMFILE: a burst of EMFILE, then connections, then a
// burst of ENFILE and ECONNABORTED, then more connections: Loop serves
// every connection, logs each burst once (and its end), backs off with
// doubling delays, and returns on net.ErrClosed.
func TestLoopSurvivesEMFILE(t *testing.T) {
	c1, c2, c3 := conn(t), conn(t), conn(t)
	ln := &fakeListener{script: []result{
		{err: opErr(syscall.EMFILE)}, {err: opErr(syscall.EMFILE)}, {err: opErr(syscall.EMFILE)},
		{conn: c1}, {conn: c2},
		{err: opErr(syscall.ENFILE)}, {err: opErr(syscall.ECONNABORTED)},
		{conn: c3},
	}}
	var rec logRec
	var served []net.Conn
	var delays []time.Duration
	real := wait
	wait = func(d time.Duration, stop <-chan struct{}) bool { delays = append(delays, d); return true }
	defer func() { wait = real }()
	done := make(chan struct{})
	go func() {
		defer close(done)
		Loop(ln, nil, rec.logf, func(c net.Conn) { served = append(served, c) })
	}()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("Loop did not return on net.ErrClosed")
	}
	if len(served) != 3 || served[0] != c1 || served[1] != c2 || served[2] != c3 {
		t.Fatalf("served %d connections, want c1, c2, c3 in order", len(served))
	}
	want := []string{"too many open files", "accepting again after 3 failed tries", "too many open files in system", "accepting again after 2 failed tries"}
	if len(rec.lines) != len(want) {
		t.Fatalf("logged %q, want one line per burst and per recovery", rec.lines)
	}
	for i, w := range want {
		if !strings.Contains(rec.lines[i], w) {
			t.Errorf("log line %d is %q, want it to say %q", i, rec.lines[i], w)
		}
	}
	// 5, 10, 20 ms after the three EMFILEs; the successes reset the
	// backoff, so the second burst starts again from 5 ms.
	ms := time.Millisecond
	if want := []time.Duration{5 * ms, 10 * ms, 20 * ms, 5 * ms, 10 * ms}; !slices.Equal(delays, want) {
		t.Errorf("backed off %v, want %v", delays, want)
	}
}

// TestLoopBackoffBound: the delay doubles up to MaxDelay and stays there.
func TestLoopBackoffBound(t *testing.T) {
	var script []result
	for i := 0; i < 12; i++ {
		script = append(script, result{err: opErr(syscall.EMFILE)})
	}
	ln := &fakeListener{script: script}
	var delays []time.Duration
	real := wait
	wait = func(d time.Duration, stop <-chan struct{}) bool { delays = append(delays, d); return true }
	defer func() { wait = real }()
	Loop(ln, nil, nil, func(net.Conn) { t.Error("served a connection") })
	if len(delays) != 12 || delays[7] != 640*time.Millisecond || delays[8] != MaxDelay || delays[11] != MaxDelay {
		t.Fatalf("delays %v", delays)
	}
}

// TestLoopStopEndsBackoff: closing stop ends a backoff at once, without
// another Accept.
func TestLoopStopEndsBackoff(t *testing.T) {
	var script []result
	for i := 0; i < 100; i++ {
		script = append(script, result{err: opErr(syscall.EMFILE)})
	}
	ln := &fakeListener{script: script}
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		Loop(ln, stop, nil, func(net.Conn) { t.Error("served a connection") })
	}()
	// Wait (bounded) until Loop is in its backoff after several failures,
	// with delays of a few hundred ms by then.
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(time.Millisecond) {
		ln.mu.Lock()
		n := len(ln.calls)
		ln.mu.Unlock()
		if n >= 7 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("only %d Accepts in 10 s", n)
		}
	}
	close(stop)
	// Without stop, Loop would go on failing through the 93 EMFILEs left
	// at a second apart.
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Loop still backing off 5 s after stop was closed")
	}
}

// TestLoopRealListener: on a real listener, Loop serves connections and
// returns when the listener is closed.
func TestLoopRealListener(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	got := make(chan net.Conn, 1)
	done := make(chan struct{})
	go func() {
		defer close(done)
		Loop(ln, nil, t.Logf, func(c net.Conn) { got <- c })
	}()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	select {
	case sc := <-got:
		sc.Close()
	case <-time.After(5 * time.Second):
		t.Fatal("connection not served")
	}
	ln.Close()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Loop did not return after the listener was closed")
	}
}
