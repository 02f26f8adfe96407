package verbs

import (
	"errors"
	"fmt"
	"sync"
	"testing"

	"github.com/gobps/gobps/proto"
	"github.com/gobps/gobps/rdma"
	"github.com/gobps/gobps/rdma/ibv"
	"github.com/gobps/gobps/rdma/internal/rdmatest"
)

// BenchmarkPushPull measures one push/pull round of one key over the
// emulation: a push (an RDMA write into the server's buffer), an eager
// pull, and the answer written into the worker's buffer. "stable" serves
// the pushes from a stable destination (rdma.StableReceiver, the summation
// server's path: no RTS/CTS in steady state), "dest" through Dest (a
// rendezvous per frame). The emulation copies the bytes in the caller's
// goroutine, so the figures measure the protocol's own work (locks,
// channels, allocations, posts and completions) more than a NIC would.
//
//	go test -run '^$' -bench PushPull -count 6 ./rdma/verbs
func BenchmarkPushPull(b *testing.B) {
	for _, stable := range []bool{true, false} {
		for _, size := range []int{4 << 10, 1 << 20} {
			name := "dest"
			if stable {
				name = "stable"
			}
			b.Run(fmt.Sprintf("%s/%dKiB", name, size>>10), func(b *testing.B) { benchPushPull(b, stable, size) })
		}
	}
}

// benchServer answers each push's pull with a pull response from a fixed
// buffer, releasing the push's stable destination first; the answers go
// from a goroutine of its own (a Handler must not wait for a rendezvous on
// its connection).
type benchServer struct {
	*rdmatest.Rec
	stable  bool
	mu      sync.Mutex
	in, out map[proto.Key][]byte
	answers chan func()
}

func (s *benchServer) buf(m map[proto.Key][]byte, k proto.Key, n uint32) []byte {
	s.mu.Lock()
	defer s.mu.Unlock()
	if b := m[k]; len(b) == int(n) {
		return b
	}
	b := make([]byte, n)
	m[k] = b
	return b
}

func (s *benchServer) Dest(_ rdma.Conn, h *proto.Header) ([]byte, error) {
	return s.buf(s.in, h.Key, h.Length), nil
}

func (s *benchServer) Handle(c rdma.Conn, h *proto.Header, p []byte, err error) {
	switch {
	case err != nil:
		s.answers <- func() { s.Frames <- rdmatest.Frame{H: *h, Err: err} }
	case h.Op == proto.OpPush:
		if s.stable {
			c.Release(h.Op, h.Key)
		}
	case h.Op == proto.OpPull:
		hh := proto.Header{Op: proto.OpPullResp, DType: proto.Uint8, Key: h.Key, Round: h.Round, ReqID: h.ReqID}
		s.mu.Lock()
		n := len(s.in[h.Key]) // the answer is as long as the key's push
		s.mu.Unlock()
		out := s.buf(s.out, h.Key, uint32(n))
		s.answers <- func() {
			if err := c.Send(hh, out); err != nil {
				s.Frames <- rdmatest.Frame{H: hh, Err: err}
			}
		}
	}
}

// stableBench is a benchServer that grants stable destinations.
type stableBench struct{ *benchServer }

func (s stableBench) StableDest(_ rdma.Conn, h *proto.Header) ([]byte, bool, error) {
	return s.buf(s.in, h.Key, h.Length), true, nil
}

// benchConn connects a client to a benchServer over the emulation; the
// client's pull responses land in out. Everything is closed when b ends.
func benchConn(b *testing.B, stable bool, out []byte) (rdma.Conn, *rdmatest.Rec, *benchServer) {
	e := ibv.NewEmulator(ibv.EmuOptions{})
	opt := rdma.Options{GIDIndex: -1}
	srv, _, err := New(e, opt)
	if err != nil {
		b.Fatal(err)
	}
	cli, _, err := New(e, opt)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		if err := errors.Join(cli.Close(), srv.Close()); err != nil {
			b.Error(err)
		}
	})
	bs := &benchServer{Rec: rdmatest.NewRec(), stable: stable, in: map[proto.Key][]byte{}, out: map[proto.Key][]byte{},
		answers: make(chan func(), 16)}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for f := range bs.answers {
			f()
		}
	}()
	b.Cleanup(func() { close(bs.answers); <-done })
	var h rdma.Handler = bs
	if stable {
		h = stableBench{bs}
	}
	ln, err := srv.Listen("127.0.0.1:0", h)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { ln.Close() })
	ch := rdmatest.NewRec()
	ch.SetDest(func(rdma.Conn, *proto.Header) ([]byte, error) { return out, nil })
	c, err := cli.Dial(b.Context(), ln.Addr(), rdmatest.Self, ch)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { c.Close() })
	return c, ch, bs
}

func benchPushPull(b *testing.B, stable bool, size int) {
	in, out := make([]byte, size), make([]byte, size)
	c, ch, bs := benchConn(b, stable, out)
	key := proto.MakeKey(1, 0)
	round := func(r uint64) {
		if err := c.Send(proto.Header{Op: proto.OpPush, DType: proto.Uint8, Key: key, Round: r, ReqID: r}, in); err != nil {
			b.Fatal(err)
		}
		if err := c.Send(proto.Header{Op: proto.OpPull, Key: key, Round: r, ReqID: r}, nil); err != nil {
			b.Fatal(err)
		}
		select {
		case f := <-ch.Frames:
			if f.Err != nil || f.H.Op != proto.OpPullResp || len(f.Payload) != size {
				b.Fatalf("round %d: %v %v", r, &f.H, f.Err)
			}
		case f := <-bs.Frames:
			b.Fatalf("round %d: server: %v %v", r, &f.H, f.Err)
		}
	}
	for r := range uint64(3) { // warm: registrations, the stable grant
		round(r)
	}
	b.SetBytes(int64(2 * size))
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; b.Loop(); i++ {
		round(uint64(3 + i))
	}
}

// BenchmarkParallelPush: 8 goroutines push 64 KiB frames, each of its own
// key, on one connection, into a server that releases them at once: the
// connection's lock, tokens and control slots under contention.
//
//	go test -run '^$' -bench ParallelPush -benchtime 20000x -count 6 ./rdma/verbs
func BenchmarkParallelPush(b *testing.B) {
	for _, stable := range []bool{true, false} {
		name := "dest"
		if stable {
			name = "stable"
		}
		b.Run(name, func(b *testing.B) {
			c, _, _ := benchConn(b, stable, nil)
			const g = 8
			b.SetBytes(64 << 10)
			b.ReportAllocs()
			b.ResetTimer()
			var wg sync.WaitGroup
			for w := range g {
				wg.Add(1)
				go func() {
					defer wg.Done()
					buf := make([]byte, 64<<10)
					n := b.N / g
					if w < b.N%g {
						n++
					}
					for range n {
						if err := c.Send(proto.Header{Op: proto.OpPush, DType: proto.Uint8, Key: proto.Key(w)}, buf); err != nil {
							b.Error(err)
							return
						}
					}
				}()
			}
			wg.Wait()
		})
	}
}
