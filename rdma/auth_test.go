package rdma_test

import (
	"context"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/gobps/gobps/internal/auth"
	"github.com/gobps/gobps/proto"
	"github.com/gobps/gobps/rdma"
	"github.com/gobps/gobps/rdma/ibv"
	"github.com/gobps/gobps/rdma/internal/rdmatest"
)

// The job's handshake on every transport (internal/auth): with a secret
// the shared behaviours hold unchanged, and a peer without it (or with
// another) is refused within 1 s with nothing it sent handed on.

var jobSecret = &auth.Config{Secret: []byte("the job's secret, 16+ bytes")}

// withAuth is k with a on both transports.
func withAuth(k rdmatest.Kind, a *auth.Config) rdmatest.Kind {
	return rdmatest.Kind{Name: k.Name, Verbs: k.Verbs, Make: func(t *testing.T, opt rdma.Options) (rdma.Transport, rdma.Transport) {
		opt.Auth = a
		return k.Make(t, opt)
	}}
}

// The behaviours that speak through the transports' own Dial (the others
// write raw bytes, which the handshake refuses before they count).
var authBehaviours = map[string]bool{
	"PayloadLandsInDestination": true, "RefusedPayloadIsDiscarded": true, "ControlFrames": true,
	"PeerCloseReported": true, "ConcurrentSends": true, "BackPressure": true, "BothWaysUnderBackPressure": true,
	"PushPullExchange": true, "TransportCloseEndsConns": true, "ListenerCloseKeepsConns": true, "CloseFromHandle": true,
}

func TestTransportBehavioursWithSecret(t *testing.T) {
	for _, k := range []rdmatest.Kind{tcpKind, emuKind(ibv.EmuOptions{})} {
		t.Run(k.Name, func(t *testing.T) {
			for _, b := range behaviours {
				if authBehaviours[b.name] {
					t.Run(b.name, func(t *testing.T) { b.run(t, withAuth(k, jobSecret)) })
				}
			}
		})
	}
}

func TestTransportAuthRefusals(t *testing.T) {
	for _, k := range []rdmatest.Kind{tcpKind, emuKind(ibv.EmuOptions{})} {
		t.Run(k.Name, func(t *testing.T) { testAuthRefusals(t, k) })
	}
}

func testAuthRefusals(t *testing.T, k rdmatest.Kind) {
	other := &auth.Config{Secret: []byte("some other job's secret")}
	for _, c := range []struct {
		name      string
		srv, cli  *auth.Config
		dialFails bool // the dialer learns at once (it checks the acceptor)
	}{
		{"wrong secret", jobSecret, other, true},
		{"no secret", jobSecret, nil, false},
		{"server without secret", nil, jobSecret, true},
	} {
		t.Run(c.name, func(t *testing.T) {
			srv, _ := k.Make(t, rdma.Options{Auth: c.srv, HelloTimeout: 5 * time.Second})
			_, cli := k.Make(t, rdma.Options{Auth: c.cli})
			sh := rdmatest.NewRec()
			ln, err := srv.Listen("127.0.0.1:0", sh)
			if err != nil {
				t.Fatal(err)
			}
			defer ln.Close()
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			start := time.Now()
			ch := rdmatest.NewRec()
			conn, err := cli.Dial(ctx, ln.Addr(), rdmatest.Self, ch)
			if err == nil {
				// TCP sends its hello and returns; the refusal closes it.
				defer conn.Close()
				if c.dialFails {
					t.Fatalf("Dial succeeded")
				}
				conn.Send(proto.Header{Op: proto.OpPush, DType: proto.Uint8, Key: 1}, []byte("poison"))
				if err := ch.WaitClosed(t, time.Second); err == nil {
					t.Error("the refused connection closed without an error")
				}
			} else {
				t.Logf("Dial: %v", err)
			}
			if took := time.Since(start); took > time.Second {
				t.Errorf("refused after %v, want within 1 s", took)
			}
			if c.srv != nil {
				// The handler hears of it once, with the reason.
				if err := sh.WaitClosed(t, time.Second); err == nil || !strings.Contains(err.Error(), "refused") {
					t.Errorf("the handler's Closed got %v; want the refusal", err)
				}
				select {
				case err := <-sh.Closes:
					t.Errorf("Closed again: %v", err)
				case <-time.After(50 * time.Millisecond):
				}
			}
			select {
			case f := <-sh.Hellos:
				t.Errorf("the server was handed a hello: %v", f.H)
			case f := <-sh.Frames:
				t.Errorf("the server was handed a frame: %v", f.H)
			case <-time.After(100 * time.Millisecond):
			}
		})
	}
}

// TestHelloMustMatchHandshake: a peer that proves one node id in the
// handshake and then says hello as another is closed (TCP: the hello is a
// frame like any other here).
func TestHelloMustMatchHandshake(t *testing.T) {
	srv, _ := withAuth(tcpKind, jobSecret).Make(t, rdma.Options{})
	sh := rdmatest.NewRec()
	ln, err := srv.Listen("127.0.0.1:0", sh)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	nc, err := net.Dial("tcp", ln.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	ac, _, err := jobSecret.Dial(nc, proto.NodeID(proto.RoleWorker, 3))
	if err != nil {
		t.Fatal(err)
	}
	var b [proto.HeaderSize]byte
	(&proto.Header{Op: proto.OpHello, Sender: proto.NodeID(proto.RoleWorker, 1)}).Encode(b[:])
	ac.Write(b[:])
	err = sh.WaitClosed(t, time.Second)
	if err == nil || !strings.Contains(err.Error(), "handshake proved") {
		t.Errorf("closed with %v; want the mismatch named", err)
	}
	select {
	case f := <-sh.Hellos:
		t.Errorf("the hello was admitted: %v", f.H)
	default:
	}
}
