package tcp

import (
	"bytes"
	"context"
	"errors"
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gobps/gobps/internal/leakcheck"
	"github.com/gobps/gobps/proto"
	"github.com/gobps/gobps/rdma"
	"github.com/gobps/gobps/rdma/internal/rdmatest"
	"github.com/gobps/gobps/rdma/memnet"
)

// The transport over rdma/memnet (NewOn): what the fault-injecting tests
// of the server and the engine build on.

// memPair connects a server and a client transport on n; srv handles the
// server's frames. It returns the client's Conn and Rec and the link.
func memPair(t *testing.T, n *memnet.Network, opt rdma.Options, srv *rdmatest.Rec) (rdma.Conn, *rdmatest.Rec, *memnet.Link) {
	t.Helper()
	rdmatest.CheckLeaks(t)
	st, ct := NewOn(n, opt), NewOn(n, opt)
	t.Cleanup(func() { rdmatest.Close(t, ct, st) })
	c, cli := rdmatest.Connect(t, st, ct, srv)
	links := n.Links()
	if len(links) != 1 {
		t.Fatalf("%d links, want 1", len(links))
	}
	return c, cli, links[0]
}

// settle waits, up to 5 s, until the goroutines the test function
// started have ended: one that has sent its result may still be leaving
// when the test ends, and rdmatest.Close, which fails on any goroutine
// of this package left after Transport.Close, would count it.
func settle() {
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(time.Millisecond) {
		if len(leakcheck.Goroutines("created by github.com/gobps/gobps/rdma/tcp.Test")) == 0 {
			return
		}
	}
}

func TestOverMemnet(t *testing.T) {
	n := memnet.New(memnet.Options{BufferBytes: 64 << 10})
	defer n.Close()
	srv := rdmatest.NewRec()
	srv.DestFn = func(_ rdma.Conn, h *proto.Header) ([]byte, error) { return make([]byte, h.Length), nil }
	c, _, _ := memPair(t, n, rdma.Options{Checksum: true}, srv)
	if f := srv.NextHello(t); f.H.Sender != rdmatest.Self {
		t.Fatalf("hello %+v", f.H)
	}
	p := rdmatest.Pattern(make([]byte, 3<<20+5), 1)
	if err := c.Send(proto.Header{Op: proto.OpPush, DType: proto.Uint8, Key: 3}, p); err != nil {
		t.Fatal(err)
	}
	if f := srv.Next(t); f.Err != nil || !bytes.Equal(f.Payload, p) {
		t.Fatalf("frame %v, err %v", &f.H, f.Err)
	}
}

// TestNoHelloOverMemnet: the hello deadline holds on a net.Conn other
// than a TCP socket.
func TestNoHelloOverMemnet(t *testing.T) {
	n := memnet.New(memnet.Options{})
	defer n.Close()
	rdmatest.CheckLeaks(t)
	tr := NewOn(n, rdma.Options{HelloTimeout: 50 * time.Millisecond})
	defer rdmatest.Close(t, tr)
	srv := rdmatest.NewRec()
	ln, err := tr.Listen("srv:0", srv)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	nc, err := n.Dial(context.Background(), ln.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	if err := srv.WaitClosed(t, 5*time.Second); !errors.Is(err, rdma.ErrNoHello) {
		t.Fatalf("closed with %v, want ErrNoHello", err)
	}
}

// TestFailedWriteClosesConn: a write that fails after part of a frame
// went out leaves the stream unusable, so the transport closes the
// connection: the Send fails, the sender's Closed gets the write's error
// (not nil, as for a close of its own), and the peer sees the connection
// end mid-frame rather than a garbled next frame.
func TestFailedWriteClosesConn(t *testing.T) {
	var fail atomic.Bool
	n := memnet.New(memnet.Options{Policy: func(w memnet.Write) memnet.Action {
		// The client's write 4 is the payload of its second frame (the
		// hello was write 0; each frame is a header and a payload
		// write): its header went through, the payload stops after 3
		// bytes.
		if fail.Load() && w.Dir == memnet.FromDialer && w.N == 4 {
			return memnet.Action{Fail: true, Keep: 3}
		}
		return memnet.Action{}
	}})
	defer n.Close()
	srv := rdmatest.NewRec()
	c, cli, _ := memPair(t, n, rdma.Options{}, srv)
	srv.NextHello(t)
	if err := c.Send(proto.Header{Op: proto.OpPush, DType: proto.Uint8, Key: 1}, []byte("whole")); err != nil {
		t.Fatal(err)
	}
	if f := srv.Next(t); string(f.Payload) != "whole" {
		t.Fatalf("first frame %q", f.Payload)
	}
	fail.Store(true) // no write is in flight: the Send above returned
	err := c.Send(proto.Header{Op: proto.OpPush, DType: proto.Uint8, Key: 2}, []byte("broken"))
	if !errors.Is(err, memnet.ErrInjected) {
		t.Fatalf("Send returned %v, want the injected failure", err)
	}
	if got := cli.WaitClosed(t, 5*time.Second); !errors.Is(got, memnet.ErrInjected) {
		t.Fatalf("the sender's Closed got %v, want the write's error", got)
	}
	if got := srv.WaitClosed(t, 5*time.Second); got == nil || !strings.Contains(got.Error(), "payload") {
		t.Fatalf("the peer's Closed got %v, want the payload cut short", got)
	}
	if err := c.Send(proto.Header{Op: proto.OpPush, DType: proto.Uint8, Key: 3}, []byte("after")); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("Send after the failure: %v", err)
	}
}

// TestCloseDoesNotWaitForStalledSend is TestCloseDoesNotWaitForBlockedSend
// on memnet, where the Send is known to be blocked in its write: the
// direction is stalled and the link counts the waiting writer.
func TestCloseDoesNotWaitForStalledSend(t *testing.T) {
	n := memnet.New(memnet.Options{})
	defer n.Close()
	c, _, l := memPair(t, n, rdma.Options{}, rdmatest.NewRec())
	defer settle()
	l.Stall(memnet.FromDialer)
	sent := make(chan error, 1)
	go func() { sent <- c.Send(proto.Header{Op: proto.OpPush, DType: proto.Uint8, Key: 1}, []byte("held")) }()
	for deadline := time.Now().Add(5 * time.Second); l.Waiting(memnet.FromDialer) == 0; {
		if time.Now().After(deadline) {
			t.Fatal("the Send did not block within 5s")
		}
		time.Sleep(time.Millisecond)
	}
	closed := make(chan error, 1)
	go func() { closed <- c.Close() }()
	select {
	case <-closed:
	case <-time.After(5 * time.Second):
		l.Resume(memnet.FromDialer)
		<-closed
		t.Fatal("Close waited for a stalled Send")
	}
	select {
	case err := <-sent:
		if !errors.Is(err, net.ErrClosed) {
			t.Fatalf("the stalled Send returned %v after Close, want net.ErrClosed", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the stalled Send did not fail within 5s of Close")
	}
}
