package summation

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gobps/gobps/internal/leakcheck"
	"github.com/gobps/gobps/proto"
	"github.com/gobps/gobps/rdma"
	"github.com/gobps/gobps/rdma/memnet"
	"github.com/gobps/gobps/rdma/tcp"
)

// The server's edges, each found by probing a running job: the memory
// budget, the zero-length push, the goroutines Close waits for, and the
// connections that never say hello.

// serverGoroutines returns the stacks of the goroutines running the
// server's code (server.go, rounds.go), whoever started them: engines,
// outboxes, and transport readers inside the handler.
func serverGoroutines() []string {
	var out []string
	for _, g := range leakcheck.Goroutines("gobps/gobps/summation.") {
		if strings.Contains(g, "/summation/server.go:") || strings.Contains(g, "/summation/rounds.go:") {
			out = append(out, g)
		}
	}
	return out
}

// noServerGoroutines fails t if a goroutine runs the server's code now:
// what must hold the moment Close returns. Close waits for what it must
// by WaitGroups, and a goroutine may not yet have returned from the
// final Done; a transport's reader may make a call into the server after
// Close, which returns at once. Those goroutines (see leaving), and only
// those, get a bounded number of yields (no sleep) to be gone.
func noServerGoroutines(t *testing.T) {
	t.Helper()
	leakcheck.Immediately(t, "after Server.Close", serverGoroutines, leaving)
}

// leaving reports whether stack g, that of a goroutine running the
// server's code, is past the server's work: on its way out as
// leakcheck.Exiting says, or inside Server.exit deferred by a handler
// method (a call Close waited for), or inside Server.enter or enterPeer
// called by a handler method after Close (which return at once; CI caught
// both, runnable, under load), or in a handler method with no other
// server function on its stack (a call after Close, closing its
// connection on its way out).
func leaving(g string) bool {
	if leakcheck.Exiting(g) {
		return true
	}
	state, frames := leakcheck.Parse(g)
	if !leakcheck.OnCPU(state) {
		return false
	}
	server := func(f leakcheck.Frame) bool {
		return strings.Contains(f.File, "/summation/server.go:") || strings.Contains(f.File, "/summation/rounds.go:")
	}
	handler := func(f leakcheck.Frame) bool {
		return strings.HasPrefix(f.Func, "github.com/gobps/gobps/summation.(*handler).")
	}
	var own []leakcheck.Frame
	for _, f := range frames {
		if server(f) {
			own = append(own, f)
		}
	}
	if len(own) == 2 && strings.HasPrefix(own[0].Func, "github.com/gobps/gobps/summation.(*Server).exit(") && frames[0] == own[0] && handler(own[1]) {
		return true // a handler call Close waited for, ending
	}
	if len(own) == 2 && (strings.HasPrefix(own[0].Func, "github.com/gobps/gobps/summation.(*Server).enter(") ||
		strings.HasPrefix(own[0].Func, "github.com/gobps/gobps/summation.(*Server).enterPeer(")) && frames[0] == own[0] && handler(own[1]) {
		return true // a handler call after Close, finding it closed: it returns at once
	}
	return len(own) == 1 && handler(own[0])
}

// logs collects a server's log lines.
type logs struct {
	t     *testing.T
	mu    sync.Mutex
	lines []string
}

func (l *logs) logf(format string, args ...any) {
	line := fmt.Sprintf(format, args...)
	l.mu.Lock()
	l.lines = append(l.lines, line)
	l.mu.Unlock()
	l.t.Log(line)
}

func (l *logs) matching(words ...string) []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []string
next:
	for _, line := range l.lines {
		for _, w := range words {
			if !strings.Contains(line, w) {
				continue next
			}
		}
		out = append(out, line)
	}
	return out
}

// waitFor polls cond, for up to 5 s.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); !cond(); time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within 5s", what)
		}
	}
}

// TestMemoryBudget: a declaration frame whose new keys would take the
// server's declared bytes beyond its budget is refused whole, with an
// error naming the budget and GOBPS_SERVER_MEMORY_BYTES, and allocates
// nothing; declarations within the budget still work, up to it exactly.
// Before the budget, 200 declarations of 1 GiB in one 4.8 KB frame were
// acknowledged and took the server to 412 GB of virtual memory.
func TestMemoryBudget(t *testing.T) {
	tr := tcp.New(rdma.Options{})
	s, err := New(Config{Workers: 1, Engines: 2, Transport: tr, Addr: "127.0.0.1:0", MemoryBudget: 1000, Logf: t.Logf})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close(); tr.Close() })
	c := dial(t, s, 0)

	huge := make([]proto.Decl, 200)
	for i := range huge {
		huge[i] = proto.Decl{Key: proto.MakeKey(uint32(i), 0), DType: proto.Float32, Root: proto.NoRoot, Bytes: 1 << 30}
	}
	c.send(proto.Header{Op: proto.OpDeclare, ReqID: 11}, proto.EncodeDecls(huge))
	c.expectError(11, "beyond its memory budget of 1000 bytes (GOBPS_SERVER_MEMORY_BYTES")
	if st := s.Stats(); st.Keys != 0 || st.Declared != 0 {
		t.Fatalf("after a refused declaration: %d keys, %d bytes declared", st.Keys, st.Declared)
	}

	// Whole: a batch with one key that fits and one that does not
	// declares neither.
	small := proto.Decl{Key: proto.MakeKey(1, 0), DType: proto.Int32, Root: proto.NoRoot, Bytes: 8}
	big := proto.Decl{Key: proto.MakeKey(2, 0), DType: proto.Uint8, Root: proto.NoRoot, Bytes: 993}
	c.send(proto.Header{Op: proto.OpDeclare, ReqID: 12}, proto.EncodeDecls([]proto.Decl{small, big}))
	c.expectError(12, "declaring 2 new keys of 1001 bytes")
	if st := s.Stats(); st.Keys != 0 {
		t.Fatalf("a refused batch declared %d keys", st.Keys)
	}

	// Within the budget, up to it exactly; a key declared again (here
	// twice in one frame) counts once.
	c.declare(small)
	big.Bytes = 992
	c.declare(small, big, big)
	if st := s.Stats(); st.Keys != 2 || st.Declared != 1000 {
		t.Fatalf("%d keys, %d bytes declared; want 2 and 1000", st.Keys, st.Declared)
	}
	one := proto.Decl{Key: proto.MakeKey(3, 0), DType: proto.Uint8, Root: proto.NoRoot, Bytes: 1}
	c.send(proto.Header{Op: proto.OpDeclare, ReqID: 13}, proto.EncodeDecls([]proto.Decl{one}))
	c.expectError(13, "would take this server to 1001 declared bytes")

	// The keys that were declared work.
	c.send(proto.Header{Op: proto.OpPush, DType: proto.Int32, Key: small.Key, ReqID: 14}, i32s(3, 4))
	c.send(proto.Header{Op: proto.OpPull, Key: small.Key, ReqID: 14}, nil)
	if f := c.next(); f.h.Op != proto.OpPullResp || string(f.p) != string(i32s(3, 4)) {
		t.Fatalf("pull answered %v %v", &f.h, f.p)
	}
}

// TestDeclarationsDisagreeInOneFrame: two declarations of one key in one
// frame that disagree are refused, as they would be in two frames.
func TestDeclarationsDisagreeInOneFrame(t *testing.T) {
	s := newServer(t, 1)
	c := dial(t, s, 0)
	other := testKey
	other.Bytes = 16
	c.send(proto.Header{Op: proto.OpDeclare, ReqID: 5}, proto.EncodeDecls([]proto.Decl{testKey, other}))
	c.expectError(5, "declared as 16 bytes of int32, earlier as 8 bytes")
	if st := s.Stats(); st.Keys != 0 {
		t.Fatalf("%d keys declared", st.Keys)
	}
}

// TestDeclaredKeySize: a key of more than proto.MaxPayload bytes cannot be
// declared.
func TestDeclaredKeySize(t *testing.T) {
	s := newServer(t, 1)
	c := dial(t, s, 0)
	d := proto.Decl{Key: proto.MakeKey(1, 0), DType: proto.Uint8, Root: proto.NoRoot, Bytes: proto.MaxPayload + 1}
	c.send(proto.Header{Op: proto.OpDeclare, ReqID: 6}, proto.EncodeDecls([]proto.Decl{d}))
	c.expectError(6, fmt.Sprintf("outside 1..%d", proto.MaxPayload))
	if st := s.Stats(); st.Keys != 0 {
		t.Fatalf("%d keys declared", st.Keys)
	}
}

// TestZeroLengthPush: a push without a payload on a declared key is
// answered with OpError for its request id (it used to be dropped
// unanswered), alone or asking for the sum too, and the worker carries on.
func TestZeroLengthPush(t *testing.T) {
	_, cs := twoWorkers(t)
	cs[0].send(proto.Header{Op: proto.OpPush, DType: proto.Int32, Key: testKey.Key, Round: 1, ReqID: 21}, nil)
	cs[0].expectError(21, "push without a payload")
	cs[1].send(proto.Header{Op: proto.OpPush, Flags: proto.FlagPull, DType: proto.Int32, Key: testKey.Key, Round: 1, ReqID: 22}, nil)
	cs[1].expectError(22, "push without a payload")
	round(t, cs, 1, [][]int32{{1, 2}, {3, 4}}, []int32{4, 6})
}

// TestNoHelloClosedAndLogged: a connection that says nothing is closed by
// the transport at the hello timeout; the server logs it once, with its
// address, and does not count it as a bad frame.
func TestNoHelloClosedAndLogged(t *testing.T) {
	l := &logs{t: t}
	n := memnet.New(memnet.Options{})
	defer n.Close()
	tr := tcp.NewOn(n, rdma.Options{HelloTimeout: 50 * time.Millisecond})
	s, err := New(Config{Workers: 1, Engines: 1, Transport: tr, Addr: "srv:0", Logf: l.logf})
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	defer s.Close()
	nc, err := n.Dial(context.Background(), s.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	waitFor(t, "the silent connection's close", func() bool { return s.Stats().NoHello == 1 })
	if got := l.matching("closed "+nc.LocalAddr().String()+":", "no hello"); len(got) != 1 {
		t.Fatalf("%d log lines about the silent connection %s, want 1: %q", len(got), nc.LocalAddr(), got)
	}
	if st := s.Stats(); st.BadConns != 0 {
		t.Fatalf("a connection without a hello counted as %d bad connections", st.BadConns)
	}
}

// TestCloseWaitsForEveryGoroutine: the moment Close returns, no goroutine
// runs the server's code: not the engines, not the outbox of any
// connection (those with answers queued, those blocked sending to a
// worker that stopped reading, idle ones), not a reader inside the
// handler. Before, nothing waited for the outboxes: a goroutine still
// leaving after Close was caught in about half the runs of one server,
// so the test runs twenty.
func TestCloseWaitsForEveryGoroutine(t *testing.T) {
	for i := range 20 {
		closeBusyServer(t, i)
		if t.Failed() {
			return
		}
	}
}

// closeBusyServer closes a server whose workers all have an answer on
// its way, half of them stuck behind a stalled link, and checks that
// nothing of the server runs once Close has returned.
func closeBusyServer(t *testing.T, run int) {
	n := memnet.New(memnet.Options{BufferBytes: 4 << 10})
	defer n.Close()
	str, ctr := tcp.NewOn(n, rdma.Options{}), tcp.NewOn(n, rdma.Options{})
	defer ctr.Close()
	defer str.Close()
	const workers = 32
	s, err := New(Config{Workers: workers, Engines: 2, Transport: str, Addr: "srv:0"})
	if err != nil {
		t.Fatal(err)
	}
	d := proto.Decl{Key: proto.MakeKey(1, 0), DType: proto.Int32, Root: proto.NoRoot, Bytes: 64 << 10}
	var cs []*client
	for w := range workers {
		c := dialOn(t, ctr, s.Addr(), w)
		c.declare(d)
		cs = append(cs, c)
	}
	// Half the workers stop reading: their answers stall in the outbox.
	links := n.Links()
	for _, l := range links[:workers/2] {
		l.Stall(memnet.FromListener)
	}
	for _, c := range cs {
		c.send(proto.Header{Op: proto.OpPush, Flags: proto.FlagPull, DType: proto.Int32, Key: d.Key, ReqID: 1}, make([]byte, d.Bytes))
	}
	// The others have their answer: the round completed, and the stalled
	// outboxes are sending.
	for _, c := range cs[workers/2:] {
		c.answer(t, int(d.Bytes))
	}
	waitFor(t, "the stalled outboxes", func() bool {
		for _, l := range links[:workers/2] {
			if l.Waiting(memnet.FromListener) == 0 {
				return false
			}
		}
		return true
	})
	done := make(chan struct{})
	go func() { s.Close(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatalf("run %d: Close did not return within 10s", run)
	}
	noServerGoroutines(t)
}

// TestFrameAfterClose: a connection the server had not heard from when
// it closed is closed at its first frame, and starts nothing.
func TestFrameAfterClose(t *testing.T) {
	n := memnet.New(memnet.Options{})
	defer n.Close()
	str := tcp.NewOn(n, rdma.Options{})
	defer str.Close()
	s, err := New(Config{Workers: 1, Engines: 1, Transport: str, Addr: "srv:0", Logf: t.Logf})
	if err != nil {
		t.Fatal(err)
	}
	nc, err := n.Dial(context.Background(), s.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	// A worker dialed after nc and answered: nc was accepted before it.
	ctr := tcp.NewOn(n, rdma.Options{})
	defer ctr.Close()
	dialOn(t, ctr, s.Addr(), 0).declare(testKey)
	s.Close()
	noServerGoroutines(t)
	if err := proto.WriteFrame(nc, proto.Header{Op: proto.OpHello, Sender: workerID(0)}, nil); err != nil {
		t.Fatal(err)
	}
	nc.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, _, err := proto.ReadFrame(nc, proto.MaxControlPayload); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("the connection stayed open after its hello reached a closed server: %v", err)
	}
	noServerGoroutines(t)
}

// dialOn connects a worker of rank rank to addr over tr.
func dialOn(t *testing.T, tr rdma.Transport, addr string, rank int) *client {
	t.Helper()
	c := &client{t: t, frames: make(chan frame, 64), closed: make(chan error, 1)}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	conn, err := tr.Dial(ctx, addr, workerID(rank), c)
	if err != nil {
		t.Fatal(err)
	}
	c.conn = conn
	return c
}
