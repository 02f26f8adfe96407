package rdma_test

import (
	"context"
	"errors"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/gobps/gobps/internal/leakcheck"
	"github.com/gobps/gobps/proto"
	"github.com/gobps/gobps/rdma"
	"github.com/gobps/gobps/rdma/internal/rawdial"
	"github.com/gobps/gobps/rdma/internal/rdmatest"
)

// The hello and the lifecycle of transports, listeners and connections,
// on every transport (behaviours in transport_test.go).

const shortHello = 300 * time.Millisecond

// testNoHello: a connection accepted by Listen that says no hello within
// Options.HelloTimeout is closed with ErrNoHello, saying how long it
// waited: one that completed its bootstrap (on verbs) and sends nothing,
// and a bare socket that never even bootstraps.
func testNoHello(t *testing.T, k rdmatest.Kind) {
	srv, cli := k.Make(t, rdma.Options{HelloTimeout: shortHello})
	sh := rdmatest.NewRec()
	ln, err := srv.Listen("127.0.0.1:0", sh)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	check := func(what string) {
		t.Helper()
		err := sh.WaitClosed(t, 10*time.Second)
		if !errors.Is(err, rdma.ErrNoHello) || !strings.Contains(err.Error(), shortHello.String()) {
			t.Fatalf("%s: closed with %v, want ErrNoHello after %v", what, err, shortHello)
		}
		t.Logf("%s: %v", what, err)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ch := rdmatest.NewRec()
	c, err := rawdial.Lookup(cli)(ctx, cli, ln.Addr(), ch)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	check("a connection without a hello")
	if err := ch.WaitClosed(t, 10*time.Second); err == nil {
		t.Fatal("the dialer saw a clean close")
	}

	nc, err := net.Dial("tcp", ln.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	check("a socket that says nothing")
}

// testHelloInTime: a connection whose hello came in time is not closed
// when the hello timeout has passed. Connection a says hello; then b, a
// later one, says none: once b is closed for that, a's timeout has passed
// too, and a must still carry frames.
func testHelloInTime(t *testing.T, k rdmatest.Kind) {
	srv, cli := k.Make(t, rdma.Options{HelloTimeout: shortHello})
	sh := rdmatest.NewRec()
	sh.DestFn = func(_ rdma.Conn, h *proto.Header) ([]byte, error) { return make([]byte, h.Length), nil }
	ln, err := srv.Listen("127.0.0.1:0", sh)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	a := rdmatest.Dial(t, cli, ln.Addr(), rdmatest.Self, rdmatest.NewRec())
	sh.NextHello(t) // a was accepted, and its hello is in
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	b, err := rawdial.Lookup(cli)(ctx, cli, ln.Addr(), rdmatest.NewRec())
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if err := sh.WaitClosed(t, 10*time.Second); !errors.Is(err, rdma.ErrNoHello) {
		t.Fatalf("the connection without a hello closed with %v", err)
	}
	if err := a.Send(proto.Header{Op: proto.OpPush, DType: proto.Uint8, Key: 3}, []byte("in time")); err != nil {
		t.Fatal(err)
	}
	if f := sh.Next(t); f.Err != nil || string(f.Payload) != "in time" {
		t.Fatalf("after the hello timeout: %v %q %v", &f.H, f.Payload, f.Err)
	}
}

// testTransportClose: Transport.Close ends every connection (the handlers
// hear of it), waits for every goroutine of the transport (none is left
// the moment it returns), is idempotent, and Listen and Dial fail after it.
func testTransportClose(t *testing.T, k rdmatest.Kind) {
	srv, cli := k.Make(t, rdma.Options{})
	sh := rdmatest.NewRec()
	_, ch := rdmatest.Connect(t, srv, cli, sh)
	sh.NextHello(t)
	if err := cli.Close(); err != nil {
		t.Fatal(err)
	}
	if err := ch.WaitClosed(t, 5*time.Second); err != nil {
		t.Fatalf("client conn closed with %v", err)
	}
	if err := sh.WaitClosed(t, 5*time.Second); err == nil {
		t.Fatal("server saw a clean close")
	}
	if _, err := cli.Dial(context.Background(), "127.0.0.1:1", rdmatest.Self, rdmatest.NewRec()); err == nil {
		t.Fatal("dial on a closed transport succeeded")
	}
	rdmatest.Close(t, srv, cli) // a second Close of cli, and the last of srv
	if _, err := srv.Listen("127.0.0.1:0", sh); err == nil {
		t.Fatal("listen on a closed transport succeeded")
	}
	if err := cli.Close(); err != nil {
		t.Fatalf("a third Close: %v", err)
	}
}

// testListenerClose: Listener.Close stops accepting and waits for its
// accept loop (gone the moment it returns); the connections it accepted
// stay open.
func testListenerClose(t *testing.T, k rdmatest.Kind) {
	srv, cli := k.Make(t, rdma.Options{})
	sh := rdmatest.NewRec()
	sh.DestFn = func(_ rdma.Conn, h *proto.Header) ([]byte, error) { return make([]byte, h.Length), nil }
	ln, err := srv.Listen("127.0.0.1:0", sh)
	if err != nil {
		t.Fatal(err)
	}
	ch := rdmatest.NewRec()
	ch.DestFn = sh.DestFn
	c := rdmatest.Dial(t, cli, ln.Addr(), rdmatest.Self, ch)
	sh.NextHello(t)
	sc := <-sh.Conns
	if err := ln.Close(); err != nil {
		t.Fatal(err)
	}
	for _, g := range leakcheck.Goroutines("gobps/gobps/internal/accept.") {
		t.Errorf("accept loop left after Listener.Close:\n%s", g)
	}
	if err := ln.Close(); err != nil {
		t.Logf("second Close: %v", err)
	}
	// Both ways still work.
	if err := c.Send(proto.Header{Op: proto.OpPush, DType: proto.Uint8, Key: 1}, []byte("up")); err != nil {
		t.Fatal(err)
	}
	if f := sh.Next(t); f.Err != nil || string(f.Payload) != "up" {
		t.Fatalf("after Listener.Close: %v %v", &f.H, f.Err)
	}
	if err := sc.Send(proto.Header{Op: proto.OpPullResp, DType: proto.Uint8, ReqID: 1}, []byte("down")); err != nil {
		t.Fatal(err)
	}
	if f := ch.Next(t); f.Err != nil || string(f.Payload) != "down" {
		t.Fatalf("after Listener.Close: %v %v", &f.H, f.Err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if c2, err := cli.Dial(ctx, ln.Addr(), rdmatest.Self, rdmatest.NewRec()); err == nil {
		c2.Close()
		t.Fatal("dialed a closed listener")
	}
}

// closer is a handler that closes its connection from inside Handle.
type closer struct{ *rdmatest.Rec }

func (h closer) Handle(c rdma.Conn, hd *proto.Header, p []byte, err error) {
	h.Rec.Handle(c, hd, p, err)
	if hd.Op == proto.OpPush {
		c.Close()
	}
}

// testCloseInHandle: a handler may close its connection from inside
// Handle: Conn.Close does not wait for the reader it is called on.
func testCloseInHandle(t *testing.T, k rdmatest.Kind) {
	srv, cli := k.Make(t, rdma.Options{})
	sh := closer{rdmatest.NewRec()}
	c, ch := rdmatest.Connect(t, srv, cli, sh)
	// The handler closes the connection as soon as the frame is in, which
	// may be before the sender has seen its own completion (verbs): the
	// Send may then report the connection's end. Either is right; what
	// matters is that the frame arrived and both ends see the close.
	if err := c.Send(proto.Header{Op: proto.OpPush, DType: proto.Uint8, Key: 1}, []byte("bye")); err != nil {
		t.Logf("Send: %v (the close raced the send's completion)", err)
	}
	sh.Next(t)
	if err := sh.WaitClosed(t, 5*time.Second); err != nil {
		t.Fatalf("own close from Handle reported as %v", err)
	}
	if err := ch.WaitClosed(t, 5*time.Second); err == nil {
		t.Fatal("the peer saw a clean close")
	}
	rdmatest.Close(t, cli, srv)
}
