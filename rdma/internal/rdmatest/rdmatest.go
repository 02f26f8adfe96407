// Package rdmatest holds what the transports' tests share: a Handler that
// records what it is given, the pairing of a listener and a dialer, the
// payload patterns and the traffic generators, and the kind of transport
// a shared behaviour runs on.
//
// The shared behaviours themselves are in package rdma_test (rdma's
// external tests, which may import every implementation); the tests of one
// implementation's internals are in its own package and use this one too.
package rdmatest

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gobps/gobps/internal/leakcheck"
	"github.com/gobps/gobps/proto"
	"github.com/gobps/gobps/rdma"
)

// Kind makes a server and a client transport of one implementation.
type Kind struct {
	Name  string
	Verbs bool
	// Make returns two transports; they are closed and checked for leaks
	// at the end of the test.
	Make func(t *testing.T, opt rdma.Options) (srv, cli rdma.Transport)
}

// Markers name the code of the transports' own goroutines (for
// leakcheck): what must be gone the moment Transport.Close returns.
var Markers = []string{"gobps/gobps/rdma/tcp.", "gobps/gobps/rdma/verbs.", "gobps/gobps/internal/accept."}

// CheckLeaks fails the test if goroutines of the transports or of these
// helpers outlive it (within leakcheck's grace).
func CheckLeaks(t *testing.T) { leakcheck.Check(t, "gobps/gobps/rdma/") }

// Close closes the transports, in order, and fails t if any goroutine of
// a transport is left once the last Close has returned: immediately, not
// eventually.
func Close(t *testing.T, trs ...rdma.Transport) {
	t.Helper()
	for _, tr := range trs {
		if err := tr.Close(); err != nil {
			t.Errorf("closing the %s transport: %v", tr.Caps().Name, err)
		}
	}
	NoTransportGoroutines(t, "after Transport.Close")
}

// NoTransportGoroutines fails t if a goroutine running a transport's code
// is there now. Close waits for its goroutines by their final
// WaitGroup.Done, and the runtime may not yet have let one return from
// there: those (leakcheck.Exiting), and only those, get a few yields of
// the processor to be gone; any other goroutine fails t at once.
func NoTransportGoroutines(t *testing.T, when string) {
	t.Helper()
	leakcheck.Immediately(t, when, func() []string {
		var left []string
		for _, m := range Markers {
			left = append(left, leakcheck.Goroutines(m)...)
		}
		return left
	}, leakcheck.Exiting)
}

// TCPKind makes TCP transports.
func TCPKind(newTCP func(rdma.Options) rdma.Transport) Kind {
	return Kind{Name: "tcp", Make: func(t *testing.T, opt rdma.Options) (rdma.Transport, rdma.Transport) {
		CheckLeaks(t)
		srv, cli := newTCP(opt), newTCP(opt)
		t.Cleanup(func() { Close(t, cli, srv) })
		return srv, cli
	}}
}

// Frame is one frame a Rec was handed.
type Frame struct {
	H       proto.Header
	Payload []byte
	Err     error
}

// Rec is a Handler that records what it is given: hellos (admitted
// OpHello frames) on Hellos, every other frame on Frames, Closed's errors
// on Closes, and each Conn the first time it is seen on Conns.
type Rec struct {
	Frames chan Frame
	Hellos chan Frame
	Closes chan error
	Conns  chan rdma.Conn
	// DestFn, if set, answers Dest; nil asks the transport to allocate.
	DestFn func(c rdma.Conn, h *proto.Header) ([]byte, error)

	mu   sync.Mutex
	seen map[rdma.Conn]bool
}

// NewRec returns an empty Rec.
func NewRec() *Rec {
	return &Rec{Frames: make(chan Frame, 4096), Hellos: make(chan Frame, 64), Closes: make(chan error, 64),
		Conns: make(chan rdma.Conn, 64), seen: map[rdma.Conn]bool{}}
}

// See notes c (handlers built on a Rec call it).
func (r *Rec) See(c rdma.Conn) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if !r.seen[c] {
		r.seen[c] = true
		r.Conns <- c
	}
}

func (r *Rec) Dest(c rdma.Conn, h *proto.Header) ([]byte, error) {
	r.See(c)
	r.mu.Lock()
	f := r.DestFn
	r.mu.Unlock()
	if f != nil {
		return f(c, h)
	}
	return nil, nil
}

// SetDest sets DestFn on a Rec whose connections may already be reading
// (the client's Rec of Connect, say).
func (r *Rec) SetDest(f func(c rdma.Conn, h *proto.Header) ([]byte, error)) {
	r.mu.Lock()
	r.DestFn = f
	r.mu.Unlock()
}

func (r *Rec) Handle(c rdma.Conn, h *proto.Header, p []byte, err error) {
	r.See(c)
	if h.Op == proto.OpHello && err == nil {
		r.Hellos <- Frame{*h, p, err}
		return
	}
	r.Frames <- Frame{*h, p, err}
}

func (r *Rec) Closed(c rdma.Conn, err error) { r.Closes <- err }

// Next returns the next frame other than a hello, or fails t after 10 s.
func (r *Rec) Next(t *testing.T) Frame {
	t.Helper()
	select {
	case f := <-r.Frames:
		return f
	case <-time.After(10 * time.Second):
		t.Fatal("no frame within 10s")
	}
	return Frame{}
}

// NextHello returns the next hello, or fails t after 10 s.
func (r *Rec) NextHello(t *testing.T) Frame {
	t.Helper()
	select {
	case f := <-r.Hellos:
		return f
	case <-time.After(10 * time.Second):
		t.Fatal("no hello within 10s")
	}
	return Frame{}
}

// WaitClosed returns the error of the next Closed call, or fails t if
// there is none within d.
func (r *Rec) WaitClosed(t *testing.T, within time.Duration) error {
	t.Helper()
	select {
	case err := <-r.Closes:
		return err
	case <-time.After(within):
		t.Fatalf("Closed not called within %v", within)
	}
	return nil
}

// Self is the node id Connect dials with: worker 0.
var Self = proto.NodeID(proto.RoleWorker, 0)

// Connect listens on srv with h and dials it from cli as Self; the
// client's frames go to the returned Rec. The listener and the Conn are
// closed at the end of the test.
func Connect(t *testing.T, srv, cli rdma.Transport, h rdma.Handler) (rdma.Conn, *Rec) {
	t.Helper()
	ln, err := srv.Listen("127.0.0.1:0", h)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	ch := NewRec()
	return Dial(t, cli, ln.Addr(), Self, ch), ch
}

// Dial dials addr from cli as self with h, within 10 s; the Conn is closed
// at the end of the test.
func Dial(t *testing.T, cli rdma.Transport, addr string, self uint32, h rdma.Handler) rdma.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := cli.Dial(ctx, addr, self, h)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// Pattern fills b with bytes derived from seed.
func Pattern(b []byte, seed uint64) []byte {
	r := rand.New(rand.NewPCG(seed, 7))
	for i := 0; i+8 <= len(b); i += 8 {
		binary.LittleEndian.PutUint64(b[i:], r.Uint64())
	}
	for i := len(b) &^ 7; i < len(b); i++ {
		b[i] = byte(r.Uint32())
	}
	return b
}

// SendMany sends n frames from each of g goroutines, mixing tensor frames
// of op (OpPush from a worker, OpPullResp from a server) of random sizes
// (rendezvous on verbs) with small error frames (eager), and checks that
// every one arrives intact at sh. It may run on any goroutine.
func SendMany(c rdma.Conn, sh *Rec, op proto.Op, g, n, maxBytes int) error {
	errs := make(chan error, g+1)
	for w := 0; w < g; w++ {
		go func() {
			r := rand.New(rand.NewPCG(uint64(w), 1))
			buf := make([]byte, maxBytes)
			for i := 0; i < n; i++ {
				id := uint64(w)<<32 | uint64(i)
				h := proto.Header{Op: op, DType: proto.Uint8, ReqID: id}
				size := 1 + r.IntN(maxBytes)
				if i%3 == 2 {
					h = proto.Header{Op: proto.OpError, ReqID: id}
					size = r.IntN(200)
				}
				if err := c.Send(h, Pattern(buf[:size], id)); err != nil {
					errs <- fmt.Errorf("goroutine %d frame %d: %w", w, i, err)
					return
				}
			}
			errs <- nil
		}()
	}
	got := map[uint64]bool{}
	total, running := g*n, g
	for len(got) < total {
		var f Frame
		select {
		case err := <-errs:
			if err != nil {
				return err
			}
			running-- // a sender finished
			continue
		case f = <-sh.Frames:
		case <-time.After(10 * time.Second):
			return fmt.Errorf("%d of %d frames arrived; no more within 10s", len(got), total)
		}
		if f.Err != nil {
			return fmt.Errorf("frame %d: %w", f.H.ReqID, f.Err)
		}
		want := Pattern(make([]byte, f.H.Length), f.H.ReqID)
		if !bytes.Equal(f.Payload, want) || got[f.H.ReqID] {
			return fmt.Errorf("frame %d: wrong payload or duplicate", f.H.ReqID)
		}
		got[f.H.ReqID] = true
	}
	for ; running > 0; running-- {
		if err := <-errs; err != nil {
			return err
		}
	}
	return nil
}

// PushPullServer answers each push with a pull response carrying the
// payload plus one in every byte, from fixed buffers per key, the way a
// summation server answers from its key's sum buffer.
type PushPullServer struct {
	*Rec
	mu    sync.Mutex
	in    map[proto.Key][]byte // where pushes land
	out   map[proto.Key][]byte // what pulls are answered from
	queue chan func()
	done  chan struct{}
}

// NewPushPullServer starts one; Close stops it.
func NewPushPullServer() *PushPullServer {
	s := &PushPullServer{Rec: NewRec(), in: map[proto.Key][]byte{}, out: map[proto.Key][]byte{},
		queue: make(chan func(), 1024), done: make(chan struct{})}
	s.Rec.DestFn = func(_ rdma.Conn, h *proto.Header) ([]byte, error) {
		s.mu.Lock()
		defer s.mu.Unlock()
		b := s.in[h.Key]
		if b == nil {
			b = make([]byte, h.Length)
			s.in[h.Key] = b
			s.out[h.Key] = make([]byte, h.Length)
		}
		return b, nil
	}
	go func() {
		defer close(s.done)
		for f := range s.queue {
			f()
		}
	}()
	return s
}

// Close stops the server's sender goroutine and waits for it.
func (s *PushPullServer) Close() {
	close(s.queue)
	<-s.done
}

func (s *PushPullServer) Handle(c rdma.Conn, h *proto.Header, p []byte, err error) {
	if err != nil || h.Op != proto.OpPush {
		s.Rec.Handle(c, h, p, err)
		return
	}
	s.mu.Lock()
	out := s.out[h.Key]
	s.mu.Unlock()
	for i := range p {
		out[i] = p[i] + 1
	}
	hh := *h
	// Reply from another goroutine: a Handler must not wait for a
	// rendezvous on its own connection.
	s.queue <- func() {
		if err := c.Send(proto.Header{Op: proto.OpPullResp, DType: hh.DType, Key: hh.Key, Round: hh.Round, ReqID: hh.ReqID}, out); err != nil {
			s.Rec.Handle(c, &hh, nil, err)
		}
	}
}

// PushPullRounds pushes keys from fixed buffers and receives the answers
// into fixed buffers, for rounds rounds; after warm rounds it snapshots the
// transports' counters and returns the work of the remaining rounds.
func PushPullRounds(t *testing.T, srv, cli rdma.Transport, keys, size, warm, rounds int) (srvWork, cliWork rdma.Counters) {
	t.Helper()
	s := NewPushPullServer()
	defer s.Close()
	c, ch := Connect(t, srv, cli, s)
	in, out := make([][]byte, keys), make([][]byte, keys)
	for k := range in {
		in[k], out[k] = make([]byte, size), make([]byte, size)
	}
	ch.SetDest(func(_ rdma.Conn, h *proto.Header) ([]byte, error) {
		if h.Op != proto.OpPullResp {
			return nil, nil
		}
		return out[h.Key], nil
	})
	var s0, c0 rdma.Counters
	for r := 0; r < rounds; r++ {
		if r == warm {
			s0, c0 = srv.Counters(), cli.Counters()
		}
		for k := 0; k < keys; k++ {
			Pattern(in[k], uint64(r*keys+k))
			if err := c.Send(proto.Header{Op: proto.OpPush, DType: proto.Uint8, Key: proto.Key(k), Round: uint64(r), ReqID: uint64(r*keys + k)}, in[k]); err != nil {
				t.Fatal(err)
			}
			if err := c.Send(proto.Header{Op: proto.OpPull, Key: proto.Key(k), Round: uint64(r), ReqID: uint64(r*keys + k)}, nil); err != nil {
				t.Fatal(err)
			}
		}
		for k := 0; k < keys; k++ {
			f := ch.Next(t)
			if f.Err != nil || f.H.Op != proto.OpPullResp || f.H.Round != uint64(r) {
				t.Fatalf("round %d: %v %v", r, &f.H, f.Err)
			}
			key := int(f.H.Key)
			if &f.Payload[0] != &out[key][0] {
				t.Fatal("answer not received in place")
			}
			for i := range out[key] {
				if out[key][i] != in[key][i]+1 {
					t.Fatalf("round %d key %d byte %d: got %d, want %d", r, key, i, out[key][i], in[key][i]+1)
				}
			}
		}
		// The pulls are eager frames without payload; the server saw them.
		for k := 0; k < keys; k++ {
			if f := s.Next(t); f.H.Op != proto.OpPull {
				t.Fatalf("server got %v", &f.H)
			}
		}
	}
	return srv.Counters().Sub(s0), cli.Counters().Sub(c0)
}

// WantPeerDeath checks that a Send pending when the peer died (at start)
// fails within 5 s, and that the sender's Conn reports the death rather
// than a clean close.
func WantPeerDeath(t *testing.T, what string, sent <-chan error, start time.Time, ch *Rec) {
	t.Helper()
	select {
	case err := <-sent:
		if err == nil {
			t.Fatalf("%s succeeded", what)
		}
		t.Logf("%s failed after %v: %v", what, time.Since(start), err)
	case <-time.After(5 * time.Second):
		t.Fatalf("%s hangs", what)
	}
	if err := ch.WaitClosed(t, 5*time.Second); err == nil {
		t.Fatal("peer death reported as a clean close")
	} else {
		t.Logf("client closed with: %v", err)
	}
}

// Contains reports whether err's text contains every one of words.
func Contains(err error, words ...string) bool {
	if err == nil {
		return false
	}
	for _, w := range words {
		if !strings.Contains(err.Error(), w) {
			return false
		}
	}
	return true
}
