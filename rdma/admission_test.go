package rdma_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/gobps/gobps/proto"
	"github.com/gobps/gobps/rdma"
	"github.com/gobps/gobps/rdma/ibv"
	"github.com/gobps/gobps/rdma/internal/rawdial"
	"github.com/gobps/gobps/rdma/internal/rdmatest"
)

// outcome is what the reading side's handler saw of one out-of-protocol
// frame: the refusal Handle got (with a nil payload), or the reason Closed
// got, from "bad frame: " on (the rest names the peer's address).
type outcome struct {
	refused string
	closed  string
}

func (o outcome) String() string {
	if o.closed != "" {
		return "closed: " + o.closed
	}
	return "refused: " + o.refused
}

// outOfProtocol lists every kind of frame a data connection must not
// carry, and what its reader must do with it (proto.Admit's table).
var outOfProtocol = []struct {
	desc     string
	toWorker bool // the server sends it: the dialed side reads it
	noHello  bool // the worker dials without a hello
	h        proto.Header
	n        int // payload bytes
	want     outcome
}{
	{desc: "zero-length push", h: proto.Header{Op: proto.OpPush, DType: proto.Float32, Key: 1}, want: outcome{refused: "push without a payload"}},
	{desc: "push before hello", noHello: true, h: proto.Header{Op: proto.OpPush, DType: proto.Float32, Key: 1}, n: 1 << 20, want: outcome{refused: "push before hello"}},
	{desc: "small push before hello", noHello: true, h: proto.Header{Op: proto.OpPush, DType: proto.Uint8, Key: 1}, n: 8, want: outcome{refused: "push before hello"}},
	{desc: "declare before hello", noHello: true, h: proto.Header{Op: proto.OpDeclare, ReqID: 1}, n: proto.DeclSize, want: outcome{refused: "declare before hello"}},
	{desc: "pull before hello", noHello: true, h: proto.Header{Op: proto.OpPull, Key: 1}, want: outcome{refused: "pull before hello"}},
	{desc: "error before hello", noHello: true, h: proto.Header{Op: proto.OpError}, n: 4, want: outcome{refused: "error before hello"}},
	{desc: "declaration over the control limit", h: proto.Header{Op: proto.OpDeclare, ReqID: 1}, n: proto.MaxControlPayload + proto.DeclSize,
		want: outcome{closed: fmt.Sprintf("bad frame: declare payload length %d exceeds %d", proto.MaxControlPayload+proto.DeclSize, proto.MaxControlPayload)}},
	{desc: "declaration without a payload", h: proto.Header{Op: proto.OpDeclare, ReqID: 1}, want: outcome{refused: "declare without a payload"}},
	{desc: "hello with a payload", h: proto.Header{Op: proto.OpHello}, n: 5, want: outcome{closed: "bad frame: hello with a 5-byte payload"}},
	{desc: "second hello", h: proto.Header{Op: proto.OpHello, Sender: 9}, want: outcome{refused: "second hello"}},
	{desc: "pull with a payload", h: proto.Header{Op: proto.OpPull, Key: 1}, n: 4, want: outcome{refused: "pull with a 4-byte payload"}},
	{desc: "worker sends an answer", h: proto.Header{Op: proto.OpPullResp, DType: proto.Uint8, ReqID: 7}, n: 8, want: outcome{refused: "unexpected pull-resp"}},
	{desc: "worker sends a declaration ack", h: proto.Header{Op: proto.OpDeclareAck, ReqID: 7}, want: outcome{refused: "unexpected declare-ack"}},
	{desc: "worker sends a control op", h: proto.Header{Op: proto.OpHeartbeat}, want: outcome{refused: "unexpected heartbeat"}},
	{desc: "zero-length answer to an unknown request", toWorker: true, h: proto.Header{Op: proto.OpPullResp, DType: proto.Uint8, ReqID: 99}, want: outcome{refused: "pull-resp without a payload"}},
	{desc: "zero-length answer to a known request", toWorker: true, h: proto.Header{Op: proto.OpPullResp, DType: proto.Uint8, ReqID: 7}, want: outcome{refused: "pull-resp without a payload"}},
	{desc: "declaration ack with a payload", toWorker: true, h: proto.Header{Op: proto.OpDeclareAck, ReqID: 7}, n: 3, want: outcome{refused: "declare-ack with a 3-byte payload"}},
	{desc: "server sends a push", toWorker: true, h: proto.Header{Op: proto.OpPush, DType: proto.Uint8, Key: 1}, n: 64 << 10, want: outcome{refused: "unexpected push"}},
	{desc: "server sends a pull", toWorker: true, h: proto.Header{Op: proto.OpPull, Key: 1}, want: outcome{refused: "unexpected pull"}},
	{desc: "server sends a declaration", toWorker: true, h: proto.Header{Op: proto.OpDeclare}, n: proto.DeclSize, want: outcome{refused: "unexpected declare"}},
	{desc: "server sends a hello", toWorker: true, h: proto.Header{Op: proto.OpHello}, want: outcome{refused: "unexpected hello"}},
}

// TestOutOfProtocolFrames sends every kind of out-of-protocol frame over
// TCP and over verbs (emulated) and checks that both refuse it, or close
// the connection, with the same words, and that a refusal leaves the
// connection usable.
func TestOutOfProtocolFrames(t *testing.T) {
	runOutOfProtocol(t, tcpKind, emuKind(ibv.EmuOptions{}))
}

// TestVerbsRealOutOfProtocol does the same on the real device.
func TestVerbsRealOutOfProtocol(t *testing.T) {
	realLib(t)
	runOutOfProtocol(t, realKind)
}

func runOutOfProtocol(t *testing.T, kinds ...rdmatest.Kind) {
	for _, tc := range outOfProtocol {
		t.Run(tc.desc, func(t *testing.T) {
			got := map[string]outcome{}
			for _, k := range kinds {
				t.Run(k.Name, func(t *testing.T) {
					got[k.Name] = sendOutOfProtocol(t, k, tc.toWorker, tc.noHello, tc.h, tc.n)
				})
			}
			for _, k := range kinds {
				if o, ok := got[k.Name]; ok && o != tc.want {
					t.Errorf("%s: %v, want %v", k.Name, o, tc.want)
				}
			}
			if len(kinds) == 2 && got[kinds[0].Name] != got[kinds[1].Name] {
				t.Errorf("%s and %s differ: %v, %v", kinds[0].Name, kinds[1].Name, got[kinds[0].Name], got[kinds[1].Name])
			}
		})
	}
}

// sendOutOfProtocol sends one frame h with n payload bytes on a fresh
// connection of kind k, from the worker (the dialed side) or from the
// server, and returns what the reader's handler saw. After a refusal it
// checks that the connection still carries frames.
func sendOutOfProtocol(t *testing.T, k rdmatest.Kind, toWorker, noHello bool, h proto.Header, n int) outcome {
	srv, cli := k.Make(t, rdma.Options{})
	alloc := func(_ rdma.Conn, h *proto.Header) ([]byte, error) { return make([]byte, h.Length), nil }
	sh := rdmatest.NewRec()
	sh.DestFn = alloc
	ln, err := srv.Listen("127.0.0.1:0", sh)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	// The worker knows request 7 only.
	ch := rdmatest.NewRec()
	ch.DestFn = func(_ rdma.Conn, h *proto.Header) ([]byte, error) {
		if h.ReqID != 7 {
			return nil, fmt.Errorf("answer to unknown request %d", h.ReqID)
		}
		return make([]byte, h.Length), nil
	}
	var wc rdma.Conn
	if noHello {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		wc, err = rawdial.Lookup(cli)(ctx, cli, ln.Addr(), ch)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { wc.Close() })
	} else {
		wc = rdmatest.Dial(t, cli, ln.Addr(), rdmatest.Self, ch)
		sh.NextHello(t)
	}
	from, reader := wc, sh
	if toWorker {
		from, reader = <-sh.Conns, ch
	}

	sent := make(chan error, 1)
	go func() { sent <- from.Send(h, make([]byte, n)) }()
	waitSent := func() error {
		t.Helper()
		select {
		case err := <-sent:
			return err
		case <-time.After(10 * time.Second):
			t.Fatal("Send of the frame did not return within 10s")
		}
		return nil
	}
	var o outcome
	select {
	case f := <-reader.Frames:
		if !errors.Is(f.Err, proto.ErrRefused) || f.Payload != nil {
			t.Fatalf("the handler got %v with %d payload bytes and error %v, want a refusal", &f.H, len(f.Payload), f.Err)
		}
		o.refused = f.Err.Error()
	case f := <-reader.Hellos:
		t.Fatalf("the handler took %v", &f.H)
	case err := <-reader.Closes:
		if !errors.Is(err, proto.ErrBadFrame) {
			t.Fatalf("closed with %v, want a bad frame", err)
		}
		_, o.closed, _ = strings.Cut(err.Error(), ": bad frame: ")
		o.closed = "bad frame: " + o.closed
		waitSent() // fails or not, depending on how far it got
		return o
	case <-time.After(10 * time.Second):
		t.Fatal("neither a refusal nor a close within 10s")
	}
	// A refusal is the reader's business: the sender is not told, as for
	// a payload its handler refused.
	if err := waitSent(); err != nil {
		t.Fatalf("Send of a refused frame: %v", err)
	}
	// The connection carries on.
	if noHello {
		if err := wc.Send(proto.Header{Op: proto.OpHello, Sender: rdmatest.Self}, nil); err != nil {
			t.Fatal(err)
		}
		if f := sh.NextHello(t); f.H.Sender != rdmatest.Self {
			t.Fatalf("hello after the refusal: %v", &f.H)
		}
	}
	next := proto.Header{Op: proto.OpPush, DType: proto.Uint8, Key: 2}
	if toWorker {
		next = proto.Header{Op: proto.OpPullResp, DType: proto.Uint8, ReqID: 7}
	}
	if err := from.Send(next, []byte("still up")); err != nil {
		t.Fatal(err)
	}
	if f := reader.Next(t); f.Err != nil || f.H.Op != next.Op || string(f.Payload) != "still up" {
		t.Fatalf("after the refusal: %v %q %v", &f.H, f.Payload, f.Err)
	}
	return o
}
