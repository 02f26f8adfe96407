package summation

import (
	"context"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/gobps/gobps/proto"
	"github.com/gobps/gobps/rdma"
	"github.com/gobps/gobps/rdma/tcp"
)

// client is a raw worker connection that speaks frames directly.
type client struct {
	t      *testing.T
	conn   rdma.Conn
	frames chan frame
	closed chan error
}

type frame struct {
	h proto.Header
	p []byte
}

func (c *client) Dest(_ rdma.Conn, h *proto.Header) ([]byte, error) {
	return make([]byte, h.Length), nil
}
func (c *client) Handle(_ rdma.Conn, h *proto.Header, p []byte, err error) {
	c.frames <- frame{*h, p}
}
func (c *client) Closed(_ rdma.Conn, err error) { c.closed <- err }

func workerID(rank int) uint32 { return proto.NodeID(proto.RoleWorker, rank) }

// dial connects a worker of rank rank to s; its hello goes with Dial.
func dial(t *testing.T, s *Server, rank int) *client {
	t.Helper()
	c := &client{t: t, frames: make(chan frame, 64), closed: make(chan error, 1)}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	tr := tcp.New(rdma.Options{})
	conn, err := tr.Dial(ctx, s.Addr(), workerID(rank), c)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tr.Close() })
	c.conn = conn
	return c
}

// rawClient is a connection that speaks frames without a transport: it
// can do what Dial never does, such as send a push before any hello.
type rawClient struct {
	t  *testing.T
	nc net.Conn
}

func dialRaw(t *testing.T, s *Server) *rawClient {
	t.Helper()
	nc, err := net.Dial("tcp", s.Addr())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nc.Close() })
	return &rawClient{t: t, nc: nc}
}

func (c *rawClient) send(h proto.Header, p []byte) {
	c.t.Helper()
	if err := proto.WriteFrame(c.nc, h, p); err != nil {
		c.t.Fatal(err)
	}
}

func (c *rawClient) expectError(reqID uint64, want string) {
	c.t.Helper()
	c.nc.SetReadDeadline(time.Now().Add(5 * time.Second))
	h, p, err := proto.ReadFrame(c.nc, proto.MaxControlPayload)
	if err != nil {
		c.t.Fatalf("no answer: %v", err)
	}
	if h.Op != proto.OpError || h.ReqID != reqID || !strings.Contains(string(p), want) {
		c.t.Fatalf("got %v %q, want error for request %d containing %q", &h, p, reqID, want)
	}
	c.t.Logf("error to sender: %s", p)
}

func (c *client) send(h proto.Header, p []byte) {
	c.t.Helper()
	if err := c.conn.Send(h, p); err != nil {
		c.t.Fatal(err)
	}
}

func (c *client) next() frame {
	c.t.Helper()
	select {
	case f := <-c.frames:
		return f
	case <-time.After(5 * time.Second):
		c.t.Fatal("no answer within 5s")
	}
	return frame{}
}

// expectError reads the next frame: an error for reqID saying each of
// wants.
func (c *client) expectError(reqID uint64, wants ...string) {
	c.t.Helper()
	f := c.next()
	if f.h.Op != proto.OpError || f.h.ReqID != reqID {
		c.t.Fatalf("got %v %q, want error for request %d", &f.h, f.p, reqID)
	}
	for _, want := range wants {
		if !strings.Contains(string(f.p), want) {
			c.t.Fatalf("got %v %q, want error for request %d containing %q", &f.h, f.p, reqID, want)
		}
	}
	c.t.Logf("error to sender: %s", f.p)
}

func newServer(t *testing.T, workers int) *Server {
	t.Helper()
	tr := tcp.New(rdma.Options{})
	s, err := New(Config{Workers: workers, Engines: 2, Transport: tr, Addr: "127.0.0.1:0", Logf: t.Logf})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close(); tr.Close() })
	return s
}

var testKey = proto.Decl{Key: proto.MakeKey(0, 0), DType: proto.Int32, Root: proto.NoRoot, Bytes: 8}

func (c *client) declare(ds ...proto.Decl) {
	c.t.Helper()
	c.send(proto.Header{Op: proto.OpDeclare, ReqID: 1}, proto.EncodeDecls(ds))
	if f := c.next(); f.h.Op != proto.OpDeclareAck {
		c.t.Fatalf("declare answered %v %q", &f.h, f.p)
	}
}

// round pushes vals from each client for round r and checks every answer.
func round(t *testing.T, cs []*client, r uint64, vals [][]int32, want []int32) {
	t.Helper()
	for i, c := range cs {
		c.send(proto.Header{Op: proto.OpPush, DType: proto.Int32, Key: testKey.Key, Round: r, ReqID: 100 + r}, i32s(vals[i]...))
		c.send(proto.Header{Op: proto.OpPull, Key: testKey.Key, Round: r, ReqID: 100 + r}, nil)
	}
	for _, c := range cs {
		f := c.next()
		if f.h.Op != proto.OpPullResp || f.h.Round != r || string(f.p) != string(i32s(want...)) {
			t.Fatalf("round %d: got %v %v, want %v", r, &f.h, f.p, want)
		}
	}
}

func twoWorkers(t *testing.T) (*Server, []*client) {
	s := newServer(t, 2)
	cs := []*client{dial(t, s, 0), dial(t, s, 1)}
	for _, c := range cs {
		c.declare(testKey)
	}
	round(t, cs, 0, [][]int32{{1, 2}, {3, 4}}, []int32{4, 6})
	return s, cs
}

func TestMalformedFrame(t *testing.T) {
	s, cs := twoWorkers(t)
	nc, err := net.Dial("tcp", s.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	var b [proto.HeaderSize]byte
	(&proto.Header{Op: proto.OpPush, DType: proto.Int32, Length: 8}).Encode(b[:])
	b[4] = 77 // unknown version
	nc.Write(b[:])
	nc.SetReadDeadline(time.Now().Add(5 * time.Second))
	if n, err := nc.Read(b[:]); err == nil {
		t.Fatalf("connection with a malformed frame stayed open (read %d bytes)", n)
	}
	round(t, cs, 1, [][]int32{{1, 1}, {2, 2}}, []int32{3, 3})
	// The transport hangs up before it tells the server why, so the count
	// may lag the close we saw: give it up to 5 s.
	for deadline := time.Now().Add(5 * time.Second); s.Stats().BadConns == 0 && time.Now().Before(deadline); {
		time.Sleep(time.Millisecond)
	}
	if st := s.Stats(); st.BadConns != 1 {
		t.Fatalf("bad connections %d, want 1", st.BadConns)
	}
}

func TestPushDisagreesWithDeclaration(t *testing.T) {
	_, cs := twoWorkers(t)
	cs[0].send(proto.Header{Op: proto.OpPush, DType: proto.Int32, Key: testKey.Key, Round: 1, ReqID: 7}, i32s(1, 2, 3))
	cs[0].expectError(7, "push of 12 bytes, declared 8")
	cs[0].send(proto.Header{Op: proto.OpPush, DType: proto.Float32, Key: testKey.Key, Round: 1, ReqID: 8}, i32s(1, 2))
	cs[0].expectError(8, "push of float32, declared int32")
	// the same worker and the other one carry on with a correct round
	round(t, cs, 1, [][]int32{{5, 5}, {6, 6}}, []int32{11, 11})
	// a second declaration that disagrees is refused too
	bad := testKey
	bad.Bytes = 16
	cs[1].send(proto.Header{Op: proto.OpDeclare, ReqID: 9}, proto.EncodeDecls([]proto.Decl{bad}))
	cs[1].expectError(9, "declared as 16 bytes")
	round(t, cs, 2, [][]int32{{1, 0}, {0, 1}}, []int32{1, 1})
}

func TestUndeclaredKey(t *testing.T) {
	_, cs := twoWorkers(t)
	k := proto.MakeKey(42, 0)
	cs[1].send(proto.Header{Op: proto.OpPush, DType: proto.Int32, Key: k, ReqID: 5}, i32s(1, 2))
	cs[1].expectError(5, "key 42.0 was never declared")
	cs[1].send(proto.Header{Op: proto.OpPull, Key: k, ReqID: 6}, nil)
	cs[1].expectError(6, "never declared")
	round(t, cs, 1, [][]int32{{1, 1}, {1, 1}}, []int32{2, 2})
}

func TestHelloRequired(t *testing.T) {
	s, cs := twoWorkers(t)
	anon := dialRaw(t, s)
	anon.send(proto.Header{Op: proto.OpPush, DType: proto.Int32, Key: testKey.Key, Round: 1, ReqID: 3}, i32s(9, 9))
	anon.expectError(3, "push before hello")
	rogue := dial(t, s, 7)
	rogue.expectError(0, "not a worker rank")
	round(t, cs, 1, [][]int32{{1, 1}, {1, 1}}, []int32{2, 2})
}

func TestEnginesBalancedByBytes(t *testing.T) {
	s := newServer(t, 1)
	c := dial(t, s, 0)
	c.declare(
		proto.Decl{Key: 1, DType: proto.Uint8, Root: proto.NoRoot, Bytes: 1000},
		proto.Decl{Key: 2, DType: proto.Uint8, Root: proto.NoRoot, Bytes: 10},
		proto.Decl{Key: 3, DType: proto.Uint8, Root: proto.NoRoot, Bytes: 10},
		proto.Decl{Key: 4, DType: proto.Uint8, Root: proto.NoRoot, Bytes: 500},
	)
	if got := s.Stats().EngineBytes; got[0] != 1000 || got[1] != 520 {
		t.Fatalf("engine bytes %v, want [1000 520]", got)
	}
}

// answer reads one pull's answer of n bytes, whole or in pieces (each piece
// once, in any order), and returns it.
func (c *client) answer(t *testing.T, n int) []byte {
	t.Helper()
	out := make([]byte, n)
	got := 0
	for got < n {
		f := c.next()
		if f.h.Op != proto.OpPullResp {
			t.Fatalf("want an answer, got %v", &f.h)
		}
		off := 0
		if f.h.Flags&proto.FlagPiece != 0 {
			off = int(f.h.Piece) * proto.PieceBytes
		} else if got != 0 {
			t.Fatalf("a whole answer after %d bytes of pieces", got)
		}
		if off+len(f.p) > n {
			t.Fatalf("piece %v ends past %d", &f.h, n)
		}
		copy(out[off:], f.p)
		got += len(f.p)
	}
	return out
}

// TestLargeKeyChunked sums a key several chunks long from three workers
// over TCP for several rounds; the server receives each push in chunks and
// sums them as they arrive. Two workers ask for the sum with their push
// (FlagPull), and may get it in pieces; the third pulls after its push.
func TestLargeKeyChunked(t *testing.T) {
	const n = (5*proto.PieceBytes + 4000) / 4
	s := newServer(t, 3)
	d := proto.Decl{Key: proto.MakeKey(1, 0), DType: proto.Int32, Root: proto.NoRoot, Bytes: 4 * n}
	cs := []*client{dial(t, s, 0), dial(t, s, 1), dial(t, s, 2)}
	for _, c := range cs {
		c.declare(d)
	}
	for r := uint64(0); r < 4; r++ {
		want := make([]int32, n)
		for w, c := range cs {
			vs := make([]int32, n)
			for i := range vs {
				vs[i] = int32(i*(w+1)) + int32(r)
				want[i] += vs[i]
			}
			if w < 2 {
				// A push that asks for the sum too, as the engine sends.
				c.send(proto.Header{Op: proto.OpPush, Flags: proto.FlagPull, DType: proto.Int32, Key: d.Key, Round: r, ReqID: r}, i32s(vs...))
				continue
			}
			c.send(proto.Header{Op: proto.OpPush, DType: proto.Int32, Key: d.Key, Round: r, ReqID: r}, i32s(vs...))
			c.send(proto.Header{Op: proto.OpPull, Key: d.Key, Round: r, ReqID: r}, nil)
		}
		for _, c := range cs {
			if got := c.answer(t, 4*n); string(got) != string(i32s(want...)) {
				t.Fatalf("round %d: wrong answer", r)
			}
		}
	}
	if st := s.Stats(); st.Pushes != 12 {
		t.Fatalf("%d pushes counted, want 12", st.Pushes)
	}
}
