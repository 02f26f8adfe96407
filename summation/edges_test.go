package summation

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gobps/gobps/proto"
	"github.com/gobps/gobps/rdma"
	"github.com/gobps/gobps/rdma/memnet"
	"github.com/gobps/gobps/rdma/tcp"
)

// The server's edges, each found by probing a running job: the memory
// budget, the zero-length push, and the connections that never say
// hello.

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
	c.expectError(5, "declared as 16 bytes of int32 root -1, earlier as 8 bytes")
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
