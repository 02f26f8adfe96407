package rdma

import (
	"bytes"
	"errors"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/gobps/gobps/proto"
)

type frame struct {
	h       proto.Header
	payload []byte
	err     error
}

// pair connects two TCP transports with opt; srv handles the server's
// frames, the returned hrec the client's.
func pair(t *testing.T, opt Options, srv *hrec) (Conn, *hrec) {
	t.Helper()
	tr := NewTCP(opt)
	return connect(t, tr, tr, srv)
}

func TestPayloadLandsInDestination(t *testing.T) {
	for _, sum := range []bool{false, true} {
		srv := newHrec()
		dst := make([]byte, 1<<20)
		srv.dest = func(_ Conn, h *proto.Header) ([]byte, error) { return dst[:h.Length], nil }
		c, _ := pair(t, Options{Checksum: sum}, srv)
		p := bytes.Repeat([]byte{1, 2, 3, 4}, 1<<18)
		if err := c.Send(proto.Header{Op: proto.OpPush, DType: proto.Float32, Key: 9, Round: 3}, p); err != nil {
			t.Fatal(err)
		}
		f := srv.next(t)
		if f.err != nil || f.h.Key != 9 || f.h.Round != 3 || int(f.h.Length) != len(p) {
			t.Fatalf("got %v %v", &f.h, f.err)
		}
		if &f.payload[0] != &dst[0] || !bytes.Equal(dst, p) {
			t.Fatal("payload did not land in the destination")
		}
		if (f.h.Flags&proto.FlagCRC != 0) != sum {
			t.Fatalf("checksum flag %v, want %v", f.h.Flags, sum)
		}
	}
}

func TestRefusedPayloadIsDiscarded(t *testing.T) {
	srv := newHrec()
	srv.dest = func(_ Conn, h *proto.Header) ([]byte, error) {
		if h.Key == 1 {
			return nil, errors.New("key 1 was never declared")
		}
		return nil, nil
	}
	c, _ := pair(t, Options{}, srv)
	c.Send(proto.Header{Op: proto.OpPush, DType: proto.Uint8, Key: 1}, make([]byte, 1000))
	c.Send(proto.Header{Op: proto.OpPush, DType: proto.Uint8, Key: 2}, []byte("ok"))
	if f := srv.next(t); f.err == nil || f.payload != nil {
		t.Fatalf("refused frame: %+v", f)
	}
	if f := srv.next(t); f.err != nil || string(f.payload) != "ok" {
		t.Fatalf("next frame after a refusal: %+v", f)
	}
}

func TestMalformedFrameClosesWithReason(t *testing.T) {
	srv := newHrec()
	tr := NewTCP(Options{})
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
	case err := <-srv.closed:
		if !errors.Is(err, proto.ErrBadFrame) || !strings.Contains(err.Error(), "magic") {
			t.Fatalf("closed with %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("bad frame did not close the connection")
	}
	// the listener still serves others
	c, _ := pair(t, Options{}, srv)
	if err := c.Send(proto.Header{Op: proto.OpHello, Sender: 4}, nil); err != nil {
		t.Fatal(err)
	}
	if f := srv.next(t); f.h.Sender != 4 {
		t.Fatalf("%+v", f)
	}
}

func TestPeerCloseReported(t *testing.T) {
	srv := newHrec()
	c, cli := pair(t, Options{}, srv)
	c.Close()
	if err := <-cli.closed; err != nil {
		t.Fatalf("own close reported as %v", err)
	}
	select {
	case err := <-srv.closed:
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
