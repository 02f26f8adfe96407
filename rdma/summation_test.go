package rdma_test

import (
	"context"
	"encoding/binary"
	"os"
	"testing"
	"time"

	"github.com/gobps/gobps/proto"
	"github.com/gobps/gobps/rdma"
	"github.com/gobps/gobps/rdma/ibv"
	"github.com/gobps/gobps/rdma/verbs"
	"github.com/gobps/gobps/summation"
)

// worker is a raw worker connection to a summation server.
type worker struct {
	conn   rdma.Conn
	out    map[proto.Key][]byte // where answers land, in place
	frames chan proto.Header
	closed chan error
}

func (w *worker) Dest(_ rdma.Conn, h *proto.Header) ([]byte, error) {
	if h.Op == proto.OpPullResp {
		return w.out[h.Key], nil
	}
	return nil, nil
}
func (w *worker) Handle(_ rdma.Conn, h *proto.Header, p []byte, err error) {
	if err != nil || h.Op == proto.OpError {
		h.Op = proto.OpError // reported by the test
	}
	w.frames <- *h
}
func (w *worker) Closed(_ rdma.Conn, err error) { w.closed <- err }

func (w *worker) next(t *testing.T) proto.Header {
	t.Helper()
	select {
	case h := <-w.frames:
		return h
	case <-time.After(10 * time.Second):
		t.Fatal("no answer within 10s")
	}
	return proto.Header{}
}

// TestSummationServerOverVerbs runs the summation server on verbs over
// the emulation.
func TestSummationServerOverVerbs(t *testing.T) {
	e := ibv.NewEmulator(ibv.EmuOptions{})
	summationOverVerbs(t, func() rdma.Transport {
		v, why, err := verbs.New(e, rdma.Options{GIDIndex: -1, Checksum: true})
		if err != nil {
			t.Fatalf("%s: %v", why, err)
		}
		return v
	})
	if l := e.Live(); l != (ibv.EmuLive{}) {
		t.Errorf("verbs objects left: %+v", l)
	}
}

// TestVerbsRealSummationServer runs it on the real device, which rdma.Open
// must choose when verbs are required. It skips where they cannot be used,
// and fails there instead when GOBPS_IN_QEMU=1.
func TestVerbsRealSummationServer(t *testing.T) {
	summationOverVerbs(t, func() rdma.Transport {
		tr, why, err := rdma.Open(rdma.Options{Mode: rdma.ModeForce, GIDIndex: -1, Checksum: true})
		if err != nil {
			if os.Getenv("GOBPS_IN_QEMU") == "1" {
				t.Fatalf("GOBPS_IN_QEMU=1 but verbs cannot be used: %v", err)
			}
			t.Skipf("no usable RDMA device: %s", why)
		}
		t.Logf("%s", why)
		return tr
	})
}

// summationOverVerbs runs the real summation server on the verbs transport
// (newVerbs makes one transport per process): two workers push int32 tensors straight from their
// buffers and receive the sums straight into theirs. After the first rounds
// have warmed the server's buffers and the MR caches, a round costs no
// payload copy anywhere and no registration on the workers (the server
// registers only a push buffer its pool adds, once): each push is one RDMA
// write into a server key buffer, each answer one write from the sum
// buffer.
func summationOverVerbs(t *testing.T, newVerbs func() rdma.Transport) {
	st := newVerbs()
	srv, err := summation.New(summation.Config{Workers: 2, Engines: 2, Transport: st, Addr: "127.0.0.1:0", Logf: t.Logf})
	if err != nil {
		t.Fatal(err)
	}
	const keys, elems = 3, 64 << 10 // 256 KiB per key
	var decls []proto.Decl
	for k := 0; k < keys; k++ {
		decls = append(decls, proto.Decl{Key: proto.MakeKey(uint32(k), 0), DType: proto.Int32, Root: proto.NoRoot, Bytes: 4 * elems})
	}
	var wts []rdma.Transport
	var ws []*worker
	in := make([][][]byte, 2)
	for rank := 0; rank < 2; rank++ {
		wt := newVerbs()
		w := &worker{out: map[proto.Key][]byte{}, frames: make(chan proto.Header, 64), closed: make(chan error, 1)}
		for _, d := range decls {
			w.out[d.Key] = make([]byte, d.Bytes)
			in[rank] = append(in[rank], make([]byte, d.Bytes))
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		c, err := wt.Dial(ctx, srv.Addr(), proto.NodeID(proto.RoleWorker, rank), w)
		cancel()
		if err != nil {
			t.Fatal(err)
		}
		w.conn = c
		send := func(h proto.Header, p []byte) {
			t.Helper()
			if err := c.Send(h, p); err != nil {
				t.Fatal(err)
			}
		}
		send(proto.Header{Op: proto.OpDeclare, ReqID: 1}, proto.EncodeDecls(decls))
		if h := w.next(t); h.Op != proto.OpDeclareAck {
			t.Fatalf("declare answered with %v", &h)
		}
		wts, ws = append(wts, wt), append(ws, w)
	}
	counters := func() (s, w rdma.Counters) {
		s = st.Counters()
		for _, wt := range wts {
			c := wt.Counters()
			w.Registrations += c.Registrations
			w.Copies += c.Copies
			w.Writes += c.Writes
			w.Sends += c.Sends
			w.Eager += c.Eager
			w.Rendezvous += c.Rendezvous
			w.Stable += c.Stable
		}
		return s, w
	}
	const warm, rounds = 4, 20
	var s0, w0 rdma.Counters
	for r := uint64(0); r < rounds; r++ {
		if r == warm {
			s0, w0 = counters()
		}
		for rank, w := range ws {
			for k, d := range decls {
				for i := 0; i < elems; i++ {
					binary.LittleEndian.PutUint32(in[rank][k][4*i:], uint32(int(r)*1000+rank*100+k+i))
				}
				h := proto.Header{Op: proto.OpPush, DType: proto.Int32, Key: d.Key, Round: r, ReqID: r*100 + uint64(k)}
				if err := w.conn.Send(h, in[rank][k]); err != nil {
					t.Fatal(err)
				}
				h.Op, h.DType = proto.OpPull, 0
				if err := w.conn.Send(h, nil); err != nil {
					t.Fatal(err)
				}
			}
		}
		for _, w := range ws {
			for range decls {
				h := w.next(t)
				if h.Op != proto.OpPullResp || h.Round != r {
					t.Fatalf("round %d: got %v", r, &h)
				}
				k := int(h.Key.Tensor())
				out := w.out[h.Key]
				for i := 0; i < elems; i++ {
					want := uint32(2*(int(r)*1000+k+i) + 100)
					if got := binary.LittleEndian.Uint32(out[4*i:]); got != want {
						t.Fatalf("round %d key %d element %d: %d, want %d", r, k, i, got, want)
					}
				}
			}
		}
	}
	s1, w1 := counters()
	sd, wd := s1.Sub(s0), w1.Sub(w0)
	t.Logf("server, last %d rounds: %+v", rounds-warm, sd)
	t.Logf("workers, last %d rounds: registrations %d, copies %d, writes %d, stable %d, rendezvous %d, sends %d",
		rounds-warm, wd.Registrations, wd.Copies, wd.Writes, wd.Stable, wd.Rendezvous, wd.Sends)
	frames := uint64((rounds - warm) * keys * 2)
	if sd.Copies != 0 || wd.Registrations != 0 || wd.Copies != 0 {
		t.Errorf("steady state: server %d copies, workers %d registrations %d copies; want none",
			sd.Copies, wd.Registrations, wd.Copies)
	}
	// Pushes land in the server's stable destinations (one per key and
	// worker, registered in the first round), answers come from the sum
	// buffers: nothing new to register.
	if sd.Registrations != 0 {
		t.Errorf("steady state: the server registered %d times", sd.Registrations)
	}
	if sd.Writes != frames || wd.Writes != frames {
		t.Errorf("%d server writes and %d worker writes for %d pushes and %d answers", sd.Writes, wd.Writes, frames, frames)
	}
	// A push is a header write and one write with immediate into its
	// stable destination, no RTS or CTS; the server credits each once
	// summed. Only the answers keep the per-frame rendezvous: the
	// server's SENDs are their RTSs and the credits, the workers' their
	// pulls (eager) and the answers' CTSs.
	if wd.Stable != frames || wd.Rendezvous != 0 || sd.Credits != frames || sd.Rendezvous != frames {
		t.Errorf("workers: %d stable pushes, %d rendezvous; server: %d credits, %d rendezvous; want %d, 0, %d, %d",
			wd.Stable, wd.Rendezvous, sd.Credits, sd.Rendezvous, frames, frames, frames)
	}
	if sd.Sends != 2*frames || wd.Sends != 2*frames || wd.Eager != frames {
		t.Errorf("server sent %d messages, workers %d (%d eager); want %d, %d (%d)", sd.Sends, wd.Sends, wd.Eager, 2*frames, 2*frames, frames)
	}

	srv.Close()
	for i, w := range ws {
		w.conn.Close()
		<-w.closed
		if err := wts[i].Close(); err != nil {
			t.Error(err)
		}
	}
	if err := st.Close(); err != nil {
		t.Error(err)
	}
}
