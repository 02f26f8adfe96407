package memnet_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"os"
	"syscall"
	"testing"
	"time"

	"github.com/gobps/gobps/internal/leakcheck"
	"github.com/gobps/gobps/rdma/memnet"
)

const marker = "gobps/gobps/rdma/memnet."

// noGoroutines fails t if a goroutine runs memnet's code now: memnet
// starts none, so once the test's own goroutines have returned (each
// test waits for them) none may be left.
func noGoroutines(t *testing.T) {
	t.Helper()
	for _, g := range leakcheck.Goroutines(marker) {
		t.Errorf("goroutine left in memnet:\n%s", g)
	}
}

// connect returns the two ends of a new link on n at addr.
func connect(t *testing.T, n *memnet.Network, addr string) (dialer, acceptor net.Conn) {
	t.Helper()
	ln, err := n.Listen(addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	d, err := n.Dial(context.Background(), ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	a, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close(); a.Close() })
	return d, a
}

func link(c net.Conn) *memnet.Link { return c.(*memnet.Conn).Link() }

// async runs f on a goroutine and returns its error on a channel.
func async(f func() error) <-chan error {
	ch := make(chan error, 1)
	go func() { ch <- f() }()
	return ch
}

func within(t *testing.T, ch <-chan error, d time.Duration, what string) error {
	t.Helper()
	select {
	case err := <-ch:
		return err
	case <-time.After(d):
		t.Fatalf("%s: still blocked after %v", what, d)
	}
	return nil
}

// waitWaiting waits until n writers are blocked in direction dir of l.
func waitWaiting(t *testing.T, l *memnet.Link, dir memnet.Dir, n int) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); l.Waiting(dir) != n; {
		if time.Now().After(deadline) {
			t.Fatalf("%d writers blocked %s on link %d, want %d", l.Waiting(dir), dir, l.ID(), n)
		}
		time.Sleep(time.Millisecond)
	}
}

func TestStream(t *testing.T) {
	n := memnet.New(memnet.Options{BufferBytes: 1000})
	defer n.Close()
	d, a := connect(t, n, "srv:1")
	if d.RemoteAddr().String() != "srv:1" || a.LocalAddr().String() != "srv:1" || d.LocalAddr().String() != a.RemoteAddr().String() {
		t.Fatalf("addresses: dialer %v→%v, acceptor %v→%v", d.LocalAddr(), d.RemoteAddr(), a.LocalAddr(), a.RemoteAddr())
	}
	// Both ways at once, each ten times the buffer: writes wait for room.
	msg := bytes.Repeat([]byte("0123456789"), 1000)
	for _, p := range [][2]net.Conn{{d, a}, {a, d}} {
		w, r := p[0], p[1]
		sent := async(func() error { _, err := w.Write(msg); return err })
		got := make([]byte, len(msg))
		if _, err := io.ReadFull(r, got); err != nil {
			t.Fatal(err)
		}
		if err := within(t, sent, 5*time.Second, "write"); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, msg) {
			t.Fatal("bytes changed on the way")
		}
	}
	// Close: the peer reads what was written before it, then io.EOF, and
	// its writes fail; the closed end's own reads fail with net.ErrClosed.
	if _, err := d.Write([]byte("bye")); err != nil {
		t.Fatal(err)
	}
	d.Close()
	got, err := io.ReadAll(a)
	if err != nil || string(got) != "bye" {
		t.Fatalf("after the peer closed: %q, %v", got, err)
	}
	if _, err := a.Write([]byte("x")); !errors.Is(err, syscall.EPIPE) {
		t.Fatalf("write to a closed peer: %v", err)
	}
	if _, err := d.Read(make([]byte, 1)); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("read on a closed end: %v", err)
	}
	if err := d.Close(); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("second close: %v", err)
	}
}

func TestAddresses(t *testing.T) {
	n := memnet.New(memnet.Options{})
	defer n.Close()
	a, err := n.Listen("srv:0")
	if err != nil {
		t.Fatal(err)
	}
	b, err := n.Listen("srv:0")
	if err != nil {
		t.Fatal(err)
	}
	if a.Addr().String() != "srv:1" || b.Addr().String() != "srv:2" {
		t.Fatalf("srv:0 twice gave %v and %v", a.Addr(), b.Addr())
	}
	if _, err := n.Listen("srv:1"); !errors.Is(err, syscall.EADDRINUSE) {
		t.Fatalf("listen on a used address: %v", err)
	}
	if _, err := n.Dial(context.Background(), "nobody:1"); !errors.Is(err, syscall.ECONNREFUSED) {
		t.Fatalf("dial nobody: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := n.Dial(ctx, "srv:1"); !errors.Is(err, context.Canceled) {
		t.Fatalf("dial with a cancelled context: %v", err)
	}
	// Closing a listener resets what waits in its backlog, and frees the
	// address.
	c, err := n.Dial(context.Background(), "srv:1")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	a.Close()
	if _, err := c.Read(make([]byte, 1)); !errors.Is(err, memnet.ErrBroken) {
		t.Fatalf("read on a connection its listener dropped: %v", err)
	}
	if _, err := a.Accept(); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("accept after close: %v", err)
	}
	if _, err := n.Dial(context.Background(), "srv:1"); !errors.Is(err, syscall.ECONNREFUSED) {
		t.Fatalf("dial a closed listener: %v", err)
	}
	again, err := n.Listen("srv:1")
	if err != nil {
		t.Fatal(err)
	}
	again.Close()
	b.Close()
}

func TestDeadlines(t *testing.T) {
	n := memnet.New(memnet.Options{BufferBytes: 10})
	defer n.Close()
	d, a := connect(t, n, "srv:1")
	a.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
	_, err := a.Read(make([]byte, 1))
	var ne net.Error
	if !errors.Is(err, os.ErrDeadlineExceeded) || !errors.As(err, &ne) || !ne.Timeout() {
		t.Fatalf("read past its deadline: %v", err)
	}
	// A deadline moved into the past ends a blocked read at once.
	a.SetReadDeadline(time.Time{})
	read := async(func() error { _, err := a.Read(make([]byte, 1)); return err })
	a.SetReadDeadline(time.Now().Add(-time.Second))
	if err := within(t, read, 5*time.Second, "read"); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("read after its deadline moved: %v", err)
	}
	// A write that cannot finish (the buffer holds 10 bytes) times out
	// having written what fitted.
	d.SetWriteDeadline(time.Now().Add(20 * time.Millisecond))
	nw, err := d.Write(make([]byte, 100))
	if nw != 10 || !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("write past its deadline: %d bytes, %v", nw, err)
	}
	// Cleared deadlines: the stream carries on.
	a.SetReadDeadline(time.Time{})
	d.SetWriteDeadline(time.Time{})
	got := make([]byte, 10)
	if _, err := io.ReadFull(a, got); err != nil {
		t.Fatal(err)
	}
	if _, err := d.Write([]byte("x")); err != nil {
		t.Fatal(err)
	}
}

// TestCloseUnblocks: closing an end ends its blocked reads and writes, and
// closing the network ends everything, Accept included; afterwards no
// goroutine is in memnet.
func TestCloseUnblocks(t *testing.T) {
	n := memnet.New(memnet.Options{BufferBytes: 10})
	d, a := connect(t, n, "srv:1")
	read := async(func() error { _, err := d.Read(make([]byte, 1)); return err })
	write := async(func() error { _, err := d.Write(make([]byte, 100)); return err })
	waitWaiting(t, link(d), memnet.FromDialer, 1)
	d.Close()
	for _, ch := range []<-chan error{read, write} {
		if err := within(t, ch, 5*time.Second, "read or write on a closing end"); !errors.Is(err, net.ErrClosed) {
			t.Fatalf("got %v, want net.ErrClosed", err)
		}
	}
	_ = a

	ln, err := n.Listen("other:1")
	if err != nil {
		t.Fatal(err)
	}
	acc := async(func() error { _, err := ln.Accept(); return err })
	d2, err := n.Dial(context.Background(), "srv:1")
	if err != nil {
		t.Fatal(err)
	}
	read2 := async(func() error { _, err := d2.Read(make([]byte, 1)); return err })
	n.Close()
	if err := within(t, acc, 5*time.Second, "accept"); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("accept on a closed network: %v", err)
	}
	if err := within(t, read2, 5*time.Second, "read"); err == nil {
		t.Fatal("read on a closed network succeeded")
	}
	if _, err := n.Listen("x:1"); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("listen on a closed network: %v", err)
	}
	if _, err := n.Dial(context.Background(), "srv:1"); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("dial on a closed network: %v", err)
	}
	if l := n.Links(); len(l) != 0 {
		t.Fatalf("%d links left after Close", len(l))
	}
	noGoroutines(t)
}

func TestBreak(t *testing.T) {
	n := memnet.New(memnet.Options{BufferBytes: 10})
	defer n.Close()
	d, a := connect(t, n, "srv:1")
	if _, err := a.Write([]byte("lost")); err != nil {
		t.Fatal(err)
	}
	read := async(func() error { _, err := a.Read(make([]byte, 1)); return err })
	write := async(func() error { _, err := a.Write(make([]byte, 100)); return err })
	waitWaiting(t, link(d), memnet.FromListener, 1)
	link(d).Break()
	for _, ch := range []<-chan error{read, write} {
		if err := within(t, ch, 5*time.Second, "read or write on a broken link"); !errors.Is(err, memnet.ErrBroken) || !errors.Is(err, syscall.ECONNRESET) {
			t.Fatalf("got %v, want ErrBroken", err)
		}
	}
	// What was not read is lost, on both ends.
	if _, err := d.Read(make([]byte, 4)); !errors.Is(err, memnet.ErrBroken) {
		t.Fatalf("read after the break: %v", err)
	}
	if _, err := a.Write([]byte("x")); !errors.Is(err, memnet.ErrBroken) {
		t.Fatalf("write after the break: %v", err)
	}
}

func TestStallAndResume(t *testing.T) {
	n := memnet.New(memnet.Options{})
	defer n.Close()
	d, a := connect(t, n, "srv:1")
	l := link(d)
	l.Stall(memnet.FromListener)
	write := async(func() error { _, err := a.Write([]byte("held")); return err })
	waitWaiting(t, l, memnet.FromListener, 1)
	// The other direction still flows.
	if _, err := d.Write([]byte("ping")); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(a, make([]byte, 4)); err != nil {
		t.Fatal(err)
	}
	l.Resume(memnet.FromListener)
	if err := within(t, write, 5*time.Second, "a resumed write"); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, 4)
	if _, err := io.ReadFull(d, got); err != nil || string(got) != "held" {
		t.Fatalf("%q %v", got, err)
	}
}

func TestFailNextWrite(t *testing.T) {
	n := memnet.New(memnet.Options{})
	defer n.Close()
	d, a := connect(t, n, "srv:1")
	link(d).FailNextWrite(memnet.FromDialer)
	if nw, err := d.Write([]byte("dropped")); nw != 0 || !errors.Is(err, memnet.ErrInjected) {
		t.Fatalf("failed write: %d, %v", nw, err)
	}
	if _, err := d.Write([]byte("kept")); err != nil {
		t.Fatalf("the write after a failed one: %v", err)
	}
	got := make([]byte, 4)
	if _, err := io.ReadFull(a, got); err != nil || string(got) != "kept" {
		t.Fatalf("%q %v", got, err)
	}
}

// TestDelayReorders: a delay holds a write back without reordering its
// direction, and different delays on two links reorder traffic across
// them.
func TestDelayReorders(t *testing.T) {
	n := memnet.New(memnet.Options{})
	defer n.Close()
	ln, err := n.Listen("srv:1")
	if err != nil {
		t.Fatal(err)
	}
	var ends [2][2]net.Conn
	for i := range ends {
		d, err := n.Dial(context.Background(), "srv:1")
		if err != nil {
			t.Fatal(err)
		}
		a, err := ln.Accept()
		if err != nil {
			t.Fatal(err)
		}
		defer d.Close()
		defer a.Close()
		ends[i] = [2]net.Conn{d, a}
	}
	slow, fast := ends[0], ends[1]
	link(slow[0]).SetDelay(memnet.FromDialer, 200*time.Millisecond)
	start := time.Now()
	slow[0].Write([]byte("a"))
	slow[0].Write([]byte("b"))
	fast[0].Write([]byte("c"))
	type got struct {
		s  string
		at time.Duration
	}
	out := make(chan got, 2)
	for _, r := range []net.Conn{slow[1], fast[1]} {
		go func() {
			b := make([]byte, 2)
			m, _ := io.ReadAtLeast(r, b, 1)
			if m == 1 && string(b[:1]) == "a" { // the second byte is due at the same time
				io.ReadFull(r, b[1:])
				m = 2
			}
			out <- got{string(b[:m]), time.Since(start)}
		}()
	}
	first, second := <-out, <-out
	if first.s != "c" || second.s != "ab" {
		t.Fatalf("read %q then %q: want the fast link's %q first, then the slow one's %q in order", first.s, second.s, "c", "ab")
	}
	if second.at < 200*time.Millisecond {
		t.Fatalf("the delayed bytes came after %v, before their 200ms delay", second.at)
	}
}

// TestPolicy: the policy sees every write with its coordinates, and its
// actions take effect.
func TestPolicy(t *testing.T) {
	seen := make(chan memnet.Write, 10)
	n := memnet.New(memnet.Options{Policy: func(w memnet.Write) memnet.Action {
		seen <- w
		if w.Dir == memnet.FromDialer && w.N == 1 {
			return memnet.Action{Fail: true, Keep: 2}
		}
		if w.Dir == memnet.FromListener && w.N == 1 {
			return memnet.Action{Break: true}
		}
		return memnet.Action{}
	}})
	defer n.Close()
	d, a := connect(t, n, "srv:1")
	if _, err := d.Write([]byte("first")); err != nil {
		t.Fatal(err)
	}
	if nw, err := d.Write([]byte("second")); nw != 2 || !errors.Is(err, memnet.ErrInjected) {
		t.Fatalf("write 1: %d, %v; want 2 bytes and ErrInjected", nw, err)
	}
	got := make([]byte, 7)
	if _, err := io.ReadFull(a, got); err != nil || string(got) != "firstse" {
		t.Fatalf("read %q %v", got, err)
	}
	if _, err := a.Write([]byte("x")); err != nil {
		t.Fatal(err)
	}
	if _, err := a.Write([]byte("y")); !errors.Is(err, memnet.ErrBroken) {
		t.Fatalf("breaking write: %v", err)
	}
	if _, err := d.Read(got); !errors.Is(err, memnet.ErrBroken) {
		t.Fatalf("read on the peer of a break: %v", err)
	}
	want := []memnet.Write{
		{Link: 0, Dir: memnet.FromDialer, N: 0, Bytes: 5},
		{Link: 0, Dir: memnet.FromDialer, N: 1, Bytes: 6},
		{Link: 0, Dir: memnet.FromListener, N: 0, Bytes: 1},
		{Link: 0, Dir: memnet.FromListener, N: 1, Bytes: 1},
	}
	for i, w := range want {
		if g := <-seen; g != w {
			t.Fatalf("policy call %d: %+v, want %+v", i, g, w)
		}
	}
}

// TestRandomIsDeterministic: a Random policy's decisions depend on the
// seed and the write's coordinates alone, not on the order of the calls,
// and it draws at about the odds it was given.
func TestRandomIsDeterministic(t *testing.T) {
	f := memnet.Faults{Break: 0.01, Fail: 0.05, Stall: 0.1, Delay: 0.2, MaxStall: time.Millisecond, MaxDelay: time.Millisecond, LinkDelay: time.Millisecond}
	var ws []memnet.Write
	for l := range uint64(4) {
		for _, d := range []memnet.Dir{memnet.FromDialer, memnet.FromListener} {
			for i := range uint64(2500) {
				ws = append(ws, memnet.Write{Link: l, Dir: d, N: i, Bytes: 100})
			}
		}
	}
	p1, p2, other := memnet.Random(7, f), memnet.Random(7, f), memnet.Random(8, f)
	first := make([]memnet.Action, len(ws))
	for i, w := range ws {
		first[i] = p1(w)
	}
	var breaks, fails, stalls, differ int
	for i := len(ws) - 1; i >= 0; i-- { // the other way round
		a := p2(ws[i])
		if a != first[i] {
			t.Fatalf("seed 7, %+v: %+v then %+v", ws[i], first[i], a)
		}
		if a != other(ws[i]) {
			differ++
		}
		if a.Break {
			breaks++
		}
		if a.Fail {
			fails++
			if a.Keep < 0 || a.Keep > ws[i].Bytes {
				t.Fatalf("keep %d of %d bytes", a.Keep, ws[i].Bytes)
			}
		}
		if a.Stall > 0 {
			stalls++
		}
		if a.Stall > f.MaxStall || a.Delay > f.MaxDelay+f.LinkDelay {
			t.Fatalf("%+v exceeds the bounds", a)
		}
	}
	n := float64(len(ws))
	for _, c := range []struct {
		what string
		got  int
		p    float64
	}{{"breaks", breaks, f.Break}, {"fails", fails, f.Fail * (1 - f.Break)}, {"stalls", stalls, f.Stall}} {
		if want := c.p * n; float64(c.got) < 0.7*want || float64(c.got) > 1.3*want {
			t.Errorf("%d %s in %d writes, want about %.0f", c.got, c.what, len(ws), want)
		}
	}
	if differ < len(ws)/10 {
		t.Errorf("seeds 7 and 8 differ on only %d of %d writes", differ, len(ws))
	}
}
