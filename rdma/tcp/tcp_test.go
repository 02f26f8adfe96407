package tcp

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/gobps/gobps/proto"
	"github.com/gobps/gobps/rdma"
	"github.com/gobps/gobps/rdma/internal/rdmatest"
)

// pair connects two TCP transports with opt; srv handles the server's
// frames, the returned Rec the client's.
func pair(t *testing.T, opt rdma.Options, srv *rdmatest.Rec) (rdma.Conn, *rdmatest.Rec) {
	t.Helper()
	tr := New(opt)
	t.Cleanup(func() { rdmatest.Close(t, tr) })
	return rdmatest.Connect(t, tr, tr, srv)
}

func TestPayloadLandsInDestination(t *testing.T) {
	for _, sum := range []bool{false, true} {
		t.Run(fmt.Sprintf("checksum=%v", sum), func(t *testing.T) {
			srv := rdmatest.NewRec()
			dst := make([]byte, 1<<20)
			srv.DestFn = func(_ rdma.Conn, h *proto.Header) ([]byte, error) { return dst[:h.Length], nil }
			c, _ := pair(t, rdma.Options{Checksum: sum}, srv)
			p := bytes.Repeat([]byte{1, 2, 3, 4}, 1<<18)
			if err := c.Send(proto.Header{Op: proto.OpPush, DType: proto.Float32, Key: 9, Round: 3}, p); err != nil {
				t.Fatal(err)
			}
			f := srv.Next(t)
			if f.Err != nil || f.H.Key != 9 || f.H.Round != 3 || int(f.H.Length) != len(p) {
				t.Fatalf("got %v %v", &f.H, f.Err)
			}
			if &f.Payload[0] != &dst[0] || !bytes.Equal(dst, p) {
				t.Fatal("payload did not land in the destination")
			}
			if (f.H.Flags&proto.FlagCRC != 0) != sum {
				t.Fatalf("checksum flag %v, want %v", f.H.Flags, sum)
			}
		})
	}
}

func TestRefusedPayloadIsDiscarded(t *testing.T) {
	srv := rdmatest.NewRec()
	srv.DestFn = func(_ rdma.Conn, h *proto.Header) ([]byte, error) {
		if h.Key == 1 {
			return nil, errors.New("key 1 was never declared")
		}
		return nil, nil
	}
	c, _ := pair(t, rdma.Options{}, srv)
	c.Send(proto.Header{Op: proto.OpPush, DType: proto.Uint8, Key: 1}, make([]byte, 1000))
	c.Send(proto.Header{Op: proto.OpPush, DType: proto.Uint8, Key: 2}, []byte("ok"))
	if f := srv.Next(t); f.Err == nil || f.Payload != nil {
		t.Fatalf("refused frame: %+v", f)
	}
	if f := srv.Next(t); f.Err != nil || string(f.Payload) != "ok" {
		t.Fatalf("next frame after a refusal: %+v", f)
	}
}

func TestMalformedFrameClosesWithReason(t *testing.T) {
	srv := rdmatest.NewRec()
	tr := New(rdma.Options{})
	defer tr.Close()
	ln, err := tr.Listen("127.0.0.1:0", srv)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	nc, err := net.Dial("tcp", ln.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	nc.Write(bytes.Repeat([]byte("garbage!"), 10))
	select {
	case err := <-srv.Closes:
		if !errors.Is(err, proto.ErrBadFrame) || !strings.Contains(err.Error(), "magic") {
			t.Fatalf("closed with %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("bad frame did not close the connection")
	}
	// the listener still serves others
	rdmatest.Dial(t, tr, ln.Addr(), 4, rdmatest.NewRec())
	if f := srv.NextHello(t); f.H.Sender != 4 {
		t.Fatalf("%+v", f)
	}
}

func TestPeerCloseReported(t *testing.T) {
	srv := rdmatest.NewRec()
	c, cli := pair(t, rdma.Options{}, srv)
	c.Close()
	if err := cli.WaitClosed(t, 5*time.Second); err != nil {
		t.Fatalf("own close reported as %v", err)
	}
	select {
	case err := <-srv.Closes:
		if err == nil {
			t.Fatal("peer close reported as nil")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("peer close not reported")
	}
	if err := c.Send(proto.Header{Op: proto.OpHello}, nil); err == nil {
		t.Fatal("send after close succeeded")
	}
}

// TestCloseDoesNotWaitForBlockedSend: a Send blocked in its write on a
// peer that does not read (a stopped process: its receive buffer is full
// and the kernel advertises a zero window) holds the connection's write
// lock for as long as it is blocked. Close must not wait for that lock:
// it returns at once, and the Send then fails.
func TestCloseDoesNotWaitForBlockedSend(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	peer := make(chan net.Conn, 1)
	go func() {
		nc, err := ln.Accept()
		if err != nil {
			close(peer)
			return
		}
		nc.(*net.TCPConn).SetReadBuffer(4 << 10)
		peer <- nc // and never read from it
	}()
	tr := New(rdma.Options{})
	defer rdmatest.Close(t, tr)
	defer settle()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := tr.Dial(ctx, ln.Addr().String(), 1, rdmatest.NewRec())
	if err != nil {
		t.Fatal(err)
	}
	nc, ok := <-peer
	if !ok {
		t.Fatal("accept failed")
	}
	defer nc.Close()

	// 64 MiB cannot fit in the socket buffers of both ends: the Send
	// blocks in its write, holding the write lock.
	sent := make(chan error, 1)
	go func() {
		sent <- c.Send(proto.Header{Op: proto.OpPush, DType: proto.Uint8, Key: 1}, make([]byte, 64<<20))
	}()
	tc := c.(*conn)
	for deadline := time.Now().Add(5 * time.Second); ; {
		if !tc.wmu.TryLock() {
			break // the Send holds it
		}
		tc.wmu.Unlock()
		select {
		case err := <-sent:
			t.Fatalf("the Send to a peer that does not read returned: %v", err)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatal("the Send did not take the write lock within 5s")
		}
		runtime.Gosched()
	}

	closed := make(chan error, 1)
	go func() { closed <- c.Close() }()
	select {
	case <-closed:
	case <-time.After(5 * time.Second):
		nc.Close() // let the Send, and so the Close, finish
		<-closed
		t.Fatal("Close waited for a Send blocked on a peer that does not read")
	}
	select {
	case err := <-sent:
		if err == nil || !errors.Is(err, net.ErrClosed) {
			t.Fatalf("the blocked Send returned %v after Close, want an error wrapping net.ErrClosed", err)
		}
		t.Logf("blocked Send: %v", err)
	case <-time.After(5 * time.Second):
		t.Fatal("the blocked Send did not fail within 5s of Close")
	}
}
