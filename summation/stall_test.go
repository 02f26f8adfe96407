package summation

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/gobps/gobps/proto"
	"github.com/gobps/gobps/rdma"
	"github.com/gobps/gobps/rdma/tcp"
)

// TestRoundsWaiting: which round waits for whom.
func TestRoundsWaiting(t *testing.T) {
	d := proto.Decl{Key: proto.MakeKey(0, 0), DType: proto.Int32, Bytes: 8, Root: -1}
	r := NewRounds(d, 3)
	if _, _, ok := r.Waiting(); ok {
		t.Error("a fresh key waits")
	}
	r.Push(0, 0, i32s(1, 1))
	r.Push(2, 0, i32s(1, 1))
	if round, missing, ok := r.Waiting(); !ok || round != 0 || len(missing) != 1 || missing[0] != 1 {
		t.Errorf("round 0 after pushes of 0 and 2: %d %v %v; want 0 [1] true", round, missing, ok)
	}
	r.Push(1, 0, i32s(1, 1))
	if round, missing, ok := r.Waiting(); ok {
		t.Errorf("complete round 0 (its pulls pending) reported waiting: %d %v", round, missing)
	}
	// Round 1 begins before round 0's pulls: it is the one waiting.
	r.Push(1, 1, i32s(1, 1))
	if round, missing, ok := r.Waiting(); !ok || round != 1 || len(missing) != 2 {
		t.Errorf("round 1 after worker 1's push: %d %v %v; want 1 [0 2] true", round, missing, ok)
	}
	// Local aggregation: 4 workers on 2 machines, one pusher each.
	la := NewRoundsOf(d, 4, 2)
	la.Push(0, 0, i32s(1, 1))
	if round, missing, ok := la.Waiting(); !ok || round != 0 || len(missing) != 2 || missing[0] != 2 || missing[1] != 3 {
		t.Errorf("machine 1 missing: %d %v %v; want 0 [2 3] true", round, missing, ok)
	}
	// A broadcast key waits for its root only.
	b := NewRounds(proto.Decl{Key: proto.MakeKey(1, 0), DType: proto.Int32, Bytes: 8, Root: 1}, 2)
	b.Pull(Pull{Worker: 0, ReqID: 1}, 0)
	if round, missing, ok := b.Waiting(); !ok || round != 0 || len(missing) != 1 || missing[0] != 1 {
		t.Errorf("broadcast waiting for its root: %d %v %v", round, missing, ok)
	}
}

// TestStallReported: a worker that skips one tensor is named, with the
// tensor, within the warning time; the worker waiting hears it, the one
// missing does not; an idle key is never reported.
func TestStallReported(t *testing.T) {
	tr := tcp.New(rdma.Options{})
	const warn = 200 * time.Millisecond
	logs := make(chan string, 64)
	hooked := make(chan string, 16)
	s, err := New(Config{Workers: 2, Engines: 2, Transport: tr, Addr: "127.0.0.1:0", StallWarning: warn,
		Logf:    func(f string, a ...any) { t.Logf(f, a...); logs <- strings.TrimSpace(fmt.Sprintf(f, a...)) },
		OnStall: func(r string) { hooked <- r }})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close(); tr.Close() })
	c0, c1 := dial(t, s, 0), dial(t, s, 1)
	both, skipped := tensorDecl(proto.MakeKey(0, 0), "fc.weight", 2), tensorDecl(proto.MakeKey(1, 0), "fc.bias", 2)
	c0.declare(both, skipped)
	c1.declare(both, skipped)
	// One complete round of each: idle afterwards, never reported.
	for _, k := range []proto.Key{both.Key, skipped.Key} {
		c0.send(proto.Header{Op: proto.OpPush, Flags: proto.FlagPull, DType: proto.Int32, Key: k, ReqID: 1}, i32s(1, 1))
		c1.send(proto.Header{Op: proto.OpPush, Flags: proto.FlagPull, DType: proto.Int32, Key: k, ReqID: 1}, i32s(1, 1))
		c0.next()
		c1.next()
	}
	time.Sleep(2 * warn)
	select {
	case l := <-logs:
		if strings.Contains(l, "stall") {
			t.Fatalf("idle keys reported: %s", l)
		}
	default:
	}
	// Round 1: worker 1 skips fc.bias.
	start := time.Now()
	c0.send(proto.Header{Op: proto.OpPush, Flags: proto.FlagPull, DType: proto.Int32, Key: both.Key, Round: 1, ReqID: 2}, i32s(1, 1))
	c1.send(proto.Header{Op: proto.OpPush, Flags: proto.FlagPull, DType: proto.Int32, Key: both.Key, Round: 1, ReqID: 2}, i32s(1, 1))
	c0.next()
	c1.next()
	c0.send(proto.Header{Op: proto.OpPush, Flags: proto.FlagPull, DType: proto.Int32, Key: skipped.Key, Round: 1, ReqID: 3}, i32s(1, 1))
	c0.expectError(0, "stall", `worker(s) [1] have not pushed "fc.bias" int32[2]`, "round 1")
	// The watch looks every warn/4, and counts from the tick that first saw
	// the key's last push: a report comes between 3/4 warn and warn plus
	// a tick or two after that push (a loaded machine adds more).
	if d := time.Since(start); d < warn*3/4 || d > warn+3*time.Second {
		t.Errorf("reported after %v, want about %v", d, warn)
	}
	deadline := time.After(5 * time.Second)
	for {
		select {
		case l := <-logs:
			if strings.Contains(l, `stall: 1 round(s)`) && strings.Contains(l, `"fc.bias"`) {
				if strings.Contains(l, "fc.weight") {
					t.Errorf("the complete tensor is reported too: %s", l)
				}
				// OnStall (the coordinator's relay) gets the same report.
				select {
				case r := <-hooked:
					if !strings.HasSuffix(l, r) {
						t.Errorf("OnStall got %q, the log says %q", r, l)
					}
				case <-time.After(5 * time.Second):
					t.Error("OnStall was not called with the report")
				}
				return
			}
		case <-deadline:
			t.Fatal("the server did not log the stall")
		}
	}
}

// TestStallShutdown: past GOBPS_STALL_SHUTDOWN every connected worker gets
// the report as a fatal notice, the missing one too.
func TestStallShutdown(t *testing.T) {
	tr := tcp.New(rdma.Options{})
	s, err := New(Config{Workers: 2, Engines: 1, Transport: tr, Addr: "127.0.0.1:0", Logf: t.Logf,
		StallWarning: 100 * time.Millisecond, StallShutdown: 300 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close(); tr.Close() })
	c0, c1 := dial(t, s, 0), dial(t, s, 1)
	d := tensorDecl(proto.MakeKey(0, 0), "x", 2)
	c0.declare(d)
	c1.declare(d)
	c0.send(proto.Header{Op: proto.OpPush, Flags: proto.FlagPull, DType: proto.Int32, Key: d.Key, ReqID: 4}, i32s(1, 1))
	c0.expectError(0, "stall", "worker(s) [1]") // the warning first
	for i, c := range []*client{c0, c1} {
		f := c.next()
		if f.h.Op != proto.OpError || f.h.Flags&proto.FlagFatal == 0 || !strings.Contains(string(f.p), "GOBPS_STALL_SHUTDOWN") {
			t.Fatalf("worker %d: %v %q; want the fatal report", i, &f.h, f.p)
		}
	}
}

// TestKeyLogf: the lines about one key (here a push for a key nobody
// declared) go to KeyLogf with that key, for structured logs.
func TestKeyLogf(t *testing.T) {
	tr := tcp.New(rdma.Options{})
	type line struct {
		key proto.Key
		msg string
	}
	lines := make(chan line, 16)
	s, err := New(Config{Workers: 1, Engines: 1, Transport: tr, Addr: "127.0.0.1:0", Logf: t.Logf,
		KeyLogf: func(k proto.Key, f string, a ...any) { lines <- line{k, fmt.Sprintf(f, a...)} }})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close(); tr.Close() })
	c := dial(t, s, 0)
	k := proto.MakeKey(9, 2)
	c.send(proto.Header{Op: proto.OpPush, Flags: proto.FlagPull, DType: proto.Int32, Key: k, ReqID: 1}, i32s(1, 1))
	c.expectError(1, "never declared")
	select {
	case l := <-lines:
		if l.key != k || !strings.Contains(l.msg, "refused push") {
			t.Errorf("KeyLogf got key %s, %q; want key %s and the refusal", l.key, l.msg, k)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("KeyLogf was not called")
	}
}
