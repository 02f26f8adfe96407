package rdma

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gobps/gobps/internal/leakcheck"
	"github.com/gobps/gobps/proto"
	"github.com/gobps/gobps/rdma/ibv"
)

// This file tests the transports' common behaviour on TCP, on verbs over the
// emulation (everywhere) and on verbs over a real device (TestVerbsReal*:
// where one is usable, e.g. rxe in the QEMU guest of scripts/rdma_qemu.sh;
// they skip elsewhere, and fail instead when GOBPS_IN_QEMU=1), plus the
// verbs transport's own protocol: rendezvous, back-pressure, the MR cache,
// counters, failures and Open.

// kind makes a server and a client transport of one implementation.
type kind struct {
	name  string
	verbs bool
	// make returns two transports; they are closed and checked for leaks
	// at the end of the test.
	make func(t *testing.T, opt Options) (srv, cli Transport)
}

var tcpKind = kind{name: "tcp", make: func(t *testing.T, opt Options) (Transport, Transport) {
	checkLeaks(t)
	return NewTCP(opt), NewTCP(opt)
}}

// emuKind runs two verbs transports, as two processes would, on one
// emulated fabric.
func emuKind(eopt ibv.EmuOptions) kind {
	return kind{name: "verbs-emu", verbs: true, make: func(t *testing.T, opt Options) (Transport, Transport) {
		checkLeaks(t)
		e := ibv.NewEmulator(eopt)
		opt.GIDIndex = -1
		srv, why, err := NewVerbs(e, opt)
		if err != nil {
			t.Fatalf("%s: %v", why, err)
		}
		cli, _, err := NewVerbs(e, opt)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			if err := errors.Join(cli.Close(), srv.Close()); err != nil {
				t.Errorf("closing the transports: %v", err)
			}
			if l := e.Live(); l != (ibv.EmuLive{}) {
				t.Errorf("verbs objects left after Close: %+v", l)
			}
		})
		return srv, cli
	}}
}

// realKind runs two verbs transports on the real device, in one process.
var realKind = kind{name: "verbs-real", verbs: true, make: func(t *testing.T, opt Options) (Transport, Transport) {
	checkLeaks(t)
	lib := realLib(t)
	opt.GIDIndex = -1
	srv, why, err := NewVerbs(lib, opt)
	if err != nil {
		t.Fatalf("%s: %v", why, err)
	}
	t.Logf("%s", why)
	cli, _, err := NewVerbs(lib, opt)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := errors.Join(cli.Close(), srv.Close()); err != nil {
			t.Errorf("closing the transports: %v", err)
		}
	})
	return srv, cli
}}

// realLib returns libibverbs if a usable device exists; otherwise the test
// skips saying what is missing, or fails when GOBPS_IN_QEMU=1 (the QEMU
// harness's proof that real verbs ran).
func realLib(t *testing.T) ibv.Library {
	t.Helper()
	if names, why := sysfsDevices(); len(names) == 0 {
		skipOrFail(t, why)
	}
	lib, err := ibv.Load()
	if err != nil {
		skipOrFail(t, err.Error())
	}
	v, why, err := NewVerbs(lib, Options{GIDIndex: -1})
	if err != nil {
		skipOrFail(t, why)
	}
	v.Close()
	return lib
}

func skipOrFail(t *testing.T, why string) {
	t.Helper()
	if os.Getenv("GOBPS_IN_QEMU") == "1" {
		t.Fatalf("GOBPS_IN_QEMU=1 but verbs cannot be used: %s", why)
	}
	t.Skipf("no usable RDMA device: %s", why)
}

// checkLeaks fails the test if goroutines of this package outlive it.
func checkLeaks(t *testing.T) { leakcheck.Check(t, "gobps/gobps/rdma.") }

// hrec is a Handler that records what it is given.
type hrec struct {
	frames chan frame
	closed chan error
	conns  chan Conn
	mu     sync.Mutex
	seen   map[Conn]bool
	dest   func(c Conn, h *proto.Header) ([]byte, error)
}

func newHrec() *hrec {
	return &hrec{frames: make(chan frame, 4096), closed: make(chan error, 16), conns: make(chan Conn, 16), seen: map[Conn]bool{}}
}

func (r *hrec) see(c Conn) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if !r.seen[c] {
		r.seen[c] = true
		r.conns <- c
	}
}

func (r *hrec) Dest(c Conn, h *proto.Header) ([]byte, error) {
	r.see(c)
	if r.dest != nil {
		return r.dest(c, h)
	}
	return nil, nil
}

func (r *hrec) Handle(c Conn, h *proto.Header, p []byte, err error) {
	r.see(c)
	r.frames <- frame{*h, p, err}
}

func (r *hrec) Closed(c Conn, err error) { r.closed <- err }

func (r *hrec) next(t *testing.T) frame {
	t.Helper()
	select {
	case f := <-r.frames:
		return f
	case <-time.After(10 * time.Second):
		t.Fatal("no frame within 10s")
	}
	return frame{}
}

func (r *hrec) waitClosed(t *testing.T, within time.Duration) error {
	t.Helper()
	select {
	case err := <-r.closed:
		return err
	case <-time.After(within):
		t.Fatalf("Closed not called within %v", within)
	}
	return nil
}

// connect listens on srv with h and dials it from cli; the client's frames
// go to the returned hrec.
func connect(t *testing.T, srv, cli Transport, h Handler) (Conn, *hrec) {
	t.Helper()
	ln, err := srv.Listen("127.0.0.1:0", h)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	ch := newHrec()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := cli.Dial(ctx, ln.Addr(), ch)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c, ch
}

// pattern fills b with bytes derived from seed.
func pattern(b []byte, seed uint64) []byte {
	r := rand.New(rand.NewPCG(seed, 7))
	for i := 0; i+8 <= len(b); i += 8 {
		binary.LittleEndian.PutUint64(b[i:], r.Uint64())
	}
	for i := len(b) &^ 7; i < len(b); i++ {
		b[i] = byte(r.Uint32())
	}
	return b
}

// behaviours run on every transport.
var behaviours = []struct {
	name string
	run  func(t *testing.T, k kind)
}{
	{"PayloadLandsInDestination", testPayloadLandsInDestination},
	{"RefusedPayloadIsDiscarded", testRefusedPayload},
	{"ControlFrames", testControlFrames},
	{"PeerCloseReported", testPeerClose},
	{"ConcurrentSends", testConcurrentSends},
	{"BackPressure", testBackPressure},
	{"BothWaysUnderBackPressure", testBothWays},
	{"CRCMismatchCloses", testCRCMismatch},
	{"GarbageClosesWithReason", testGarbage},
	{"PushPullExchange", testPushPull},
}

func runBehaviours(t *testing.T, k kind) {
	for _, b := range behaviours {
		t.Run(b.name, func(t *testing.T) { b.run(t, k) })
	}
}

func TestTransportBehaviours(t *testing.T) {
	for _, k := range []kind{tcpKind, emuKind(ibv.EmuOptions{})} {
		t.Run(k.name, func(t *testing.T) { runBehaviours(t, k) })
	}
}

func testPayloadLandsInDestination(t *testing.T, k kind) {
	for _, sum := range []bool{false, true} {
		t.Run(fmt.Sprintf("checksum=%v", sum), func(t *testing.T) {
			srv, cli := k.make(t, Options{Checksum: sum})
			sh := newHrec()
			dst := make([]byte, 1<<20)
			sh.dest = func(_ Conn, h *proto.Header) ([]byte, error) { return dst[:h.Length], nil }
			c, _ := connect(t, srv, cli, sh)
			p := pattern(make([]byte, 1<<20), 1)
			if err := c.Send(proto.Header{Op: proto.OpPush, DType: proto.Float32, Key: 9, Round: 3}, p); err != nil {
				t.Fatal(err)
			}
			f := sh.next(t)
			if f.err != nil || f.h.Key != 9 || f.h.Round != 3 || int(f.h.Length) != len(p) {
				t.Fatalf("got %v %v", &f.h, f.err)
			}
			if &f.payload[0] != &dst[0] || !bytes.Equal(dst, p) {
				t.Fatal("payload did not land in the destination")
			}
			if (f.h.Flags&proto.FlagCRC != 0) != sum {
				t.Fatalf("checksum flag %v, want %v", f.h.Flags, sum)
			}
		})
	}
}

func testRefusedPayload(t *testing.T, k kind) {
	srv, cli := k.make(t, Options{})
	sh := newHrec()
	sh.dest = func(_ Conn, h *proto.Header) ([]byte, error) {
		if h.Key == 1 {
			return nil, errors.New("key 1 was never declared")
		}
		return make([]byte, h.Length), nil
	}
	c, _ := connect(t, srv, cli, sh)
	for _, h := range []proto.Header{
		{Op: proto.OpPush, DType: proto.Uint8, Key: 1}, // rendezvous on verbs
		{Op: proto.OpError, Key: 1},                    // eager on verbs
		{Op: proto.OpPush, DType: proto.Uint8, Key: 2}, // accepted
	} {
		p := []byte("ok")
		if h.Key == 1 {
			p = make([]byte, 1000)
		}
		if err := c.Send(h, p); err != nil {
			t.Fatalf("send %v: %v", &h, err)
		}
	}
	for i := 0; i < 2; i++ {
		if f := sh.next(t); f.err == nil || f.payload != nil || !strings.Contains(f.err.Error(), "never declared") {
			t.Fatalf("refused frame: %+v", f)
		}
	}
	if f := sh.next(t); f.err != nil || string(f.payload) != "ok" {
		t.Fatalf("next frame after a refusal: %+v", f)
	}
}

func testControlFrames(t *testing.T, k kind) {
	srv, cli := k.make(t, Options{})
	sh := newHrec()
	c, _ := connect(t, srv, cli, sh)
	decls := make([]proto.Decl, 5000) // 120 KB: too big for an eager SEND
	for i := range decls {
		decls[i] = proto.Decl{Key: proto.MakeKey(uint32(i), 0), DType: proto.Float32, Root: proto.NoRoot, Bytes: 4}
	}
	frames := []struct {
		h proto.Header
		p []byte
	}{
		{proto.Header{Op: proto.OpHello, Sender: 3 << 24}, nil},
		{proto.Header{Op: proto.OpError, ReqID: 7}, []byte("boom")},
		{proto.Header{Op: proto.OpDeclare, ReqID: 8}, proto.EncodeDecls(decls)},
		{proto.Header{Op: proto.OpPull, Key: 5, Round: 2, ReqID: 9}, nil},
	}
	for _, f := range frames {
		if err := c.Send(f.h, f.p); err != nil {
			t.Fatal(err)
		}
	}
	for _, want := range frames {
		f := sh.next(t)
		if f.err != nil || f.h.Op != want.h.Op || f.h.ReqID != want.h.ReqID || !bytes.Equal(f.payload, want.p) {
			t.Fatalf("got %v (%d bytes, %v), want %v", &f.h, len(f.payload), f.err, &want.h)
		}
	}
}

func testPeerClose(t *testing.T, k kind) {
	srv, cli := k.make(t, Options{})
	sh := newHrec()
	c, ch := connect(t, srv, cli, sh)
	if err := c.Send(proto.Header{Op: proto.OpHello}, nil); err != nil {
		t.Fatal(err)
	}
	sh.next(t)
	c.Close()
	if err := ch.waitClosed(t, 5*time.Second); err != nil {
		t.Fatalf("own close reported as %v", err)
	}
	if err := sh.waitClosed(t, 5*time.Second); err == nil {
		t.Fatal("peer close reported as nil")
	}
	if err := c.Send(proto.Header{Op: proto.OpHello}, nil); err == nil {
		t.Fatal("send after close succeeded")
	}
	if err := c.Send(proto.Header{Op: proto.OpPush, DType: proto.Uint8}, []byte("x")); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("send after close: %v, want net.ErrClosed", err)
	}
}

// sendMany sends n frames from each of g goroutines, mixing tensors of
// random sizes (rendezvous on verbs) with small error frames (eager), and
// checks that every one arrives intact at sh. It may run on any goroutine.
func sendMany(c Conn, sh *hrec, g, n, maxBytes int) error {
	errs := make(chan error, g+1)
	for w := 0; w < g; w++ {
		go func() {
			r := rand.New(rand.NewPCG(uint64(w), 1))
			buf := make([]byte, maxBytes)
			for i := 0; i < n; i++ {
				id := uint64(w)<<32 | uint64(i)
				h := proto.Header{Op: proto.OpPush, DType: proto.Uint8, ReqID: id}
				size := 1 + r.IntN(maxBytes)
				if i%3 == 2 {
					h = proto.Header{Op: proto.OpError, ReqID: id}
					size = r.IntN(200)
				}
				if err := c.Send(h, pattern(buf[:size], id)); err != nil {
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
		var f frame
		select {
		case err := <-errs:
			if err != nil {
				return err
			}
			running-- // a sender finished
			continue
		case f = <-sh.frames:
		case <-time.After(10 * time.Second):
			return fmt.Errorf("%d of %d frames arrived; no more within 10s", len(got), total)
		}
		if f.err != nil {
			return fmt.Errorf("frame %d: %w", f.h.ReqID, f.err)
		}
		want := pattern(make([]byte, f.h.Length), f.h.ReqID)
		if !bytes.Equal(f.payload, want) || got[f.h.ReqID] {
			return fmt.Errorf("frame %d: wrong payload or duplicate", f.h.ReqID)
		}
		got[f.h.ReqID] = true
	}
	for ; running > 0; running-- {
		if err := <-errs; err != nil {
			return err
		}
	}
	return nil
}

func testConcurrentSends(t *testing.T, k kind) {
	srv, cli := k.make(t, Options{})
	sh := newHrec()
	sh.dest = func(_ Conn, h *proto.Header) ([]byte, error) { return make([]byte, h.Length), nil }
	c, _ := connect(t, srv, cli, sh)
	if err := sendMany(c, sh, 8, 40, 200<<10); err != nil {
		t.Fatal(err)
	}
}

func testBackPressure(t *testing.T, k kind) {
	srv, cli := k.make(t, Options{SendDepth: 2, RecvDepth: 2})
	sh := newHrec()
	sh.dest = func(_ Conn, h *proto.Header) ([]byte, error) { return make([]byte, h.Length), nil }
	c, _ := connect(t, srv, cli, sh)
	if err := sendMany(c, sh, 4, 100, 10<<10); err != nil {
		t.Fatal(err)
	}
}

// testBothWays sends from both ends at once with tiny depths, so that
// each side's sends wait for the other's receives (RNR on verbs) while its
// own receives wait on its handler: nothing may deadlock.
func testBothWays(t *testing.T, k kind) {
	srv, cli := k.make(t, Options{SendDepth: 2, RecvDepth: 1})
	sh := newHrec()
	alloc := func(_ Conn, h *proto.Header) ([]byte, error) { return make([]byte, h.Length), nil }
	sh.dest = alloc
	c, ch := connect(t, srv, cli, sh)
	ch.dest = alloc
	if err := c.Send(proto.Header{Op: proto.OpHello}, nil); err != nil {
		t.Fatal(err)
	}
	sh.next(t)
	sc := <-sh.conns
	back := make(chan error, 1)
	go func() { back <- sendMany(sc, ch, 3, 60, 8<<10) }()
	if err := sendMany(c, sh, 3, 60, 8<<10); err != nil {
		t.Fatal(err)
	}
	if err := <-back; err != nil {
		t.Fatal(err)
	}
}

func testCRCMismatch(t *testing.T, k kind) {
	srv, cli := k.make(t, Options{}) // no checksum option: the header below goes as given
	sh := newHrec()
	sh.dest = func(_ Conn, h *proto.Header) ([]byte, error) { return make([]byte, h.Length), nil }
	c, _ := connect(t, srv, cli, sh)
	p := pattern(make([]byte, 64<<10), 3)
	h := proto.Header{Op: proto.OpPush, DType: proto.Uint8, Flags: proto.FlagCRC, CRC: proto.Checksum(p) + 1}
	c.Send(h, p) // may fail: the receiver closes the connection
	err := sh.waitClosed(t, 5*time.Second)
	if !errors.Is(err, proto.ErrBadFrame) || !strings.Contains(err.Error(), "crc") {
		t.Fatalf("closed with %v, want a crc error", err)
	}
	select {
	case f := <-sh.frames:
		t.Fatalf("frame with a bad CRC handed over: %v", &f.h)
	default:
	}
}

func testGarbage(t *testing.T, k kind) {
	srv, cli := k.make(t, Options{})
	sh := newHrec()
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
	nc.Write(bytes.Repeat([]byte("garbage!"), 10))
	err = sh.waitClosed(t, 5*time.Second)
	if !errors.Is(err, proto.ErrBadFrame) || !strings.Contains(err.Error(), "magic") {
		t.Fatalf("closed with %v", err)
	}
	// The listener still serves others.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := cli.Dial(ctx, ln.Addr(), newHrec())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Send(proto.Header{Op: proto.OpHello, Sender: 4}, nil); err != nil {
		t.Fatal(err)
	}
	if f := sh.next(t); f.h.Sender != 4 {
		t.Fatalf("%+v", f)
	}
}

// pushPullServer answers each push with a pull response carrying the
// payload plus one in every byte, from fixed buffers per key, the way a
// summation server answers from its key's sum buffer.
type pushPullServer struct {
	*hrec
	mu    sync.Mutex
	in    map[proto.Key][]byte // where pushes land
	out   map[proto.Key][]byte // what pulls are answered from
	queue chan func()
}

func newPushPullServer() *pushPullServer {
	s := &pushPullServer{hrec: newHrec(), in: map[proto.Key][]byte{}, out: map[proto.Key][]byte{}, queue: make(chan func(), 1024)}
	s.hrec.dest = func(_ Conn, h *proto.Header) ([]byte, error) {
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
		for f := range s.queue {
			f()
		}
	}()
	return s
}

func (s *pushPullServer) Handle(c Conn, h *proto.Header, p []byte, err error) {
	if err != nil || h.Op != proto.OpPush {
		s.hrec.Handle(c, h, p, err)
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
			s.hrec.Handle(c, &hh, nil, err)
		}
	}
}

// pushPullRounds pushes keys from fixed buffers and receives the answers
// into fixed buffers, for rounds rounds; after warm rounds it snapshots the
// transports' counters and returns the work of the remaining rounds.
func pushPullRounds(t *testing.T, srv, cli Transport, keys, size, warm, rounds int) (srvWork, cliWork Counters) {
	t.Helper()
	s := newPushPullServer()
	defer close(s.queue)
	c, ch := connect(t, srv, cli, s)
	in, out := make([][]byte, keys), make([][]byte, keys)
	for k := range in {
		in[k], out[k] = make([]byte, size), make([]byte, size)
	}
	ch.dest = func(_ Conn, h *proto.Header) ([]byte, error) {
		if h.Op != proto.OpPullResp {
			return nil, nil
		}
		return out[h.Key], nil
	}
	var s0, c0 Counters
	for r := 0; r < rounds; r++ {
		if r == warm {
			s0, _ = CountersOf(srv)
			c0, _ = CountersOf(cli)
		}
		for k := 0; k < keys; k++ {
			pattern(in[k], uint64(r*keys+k))
			if err := c.Send(proto.Header{Op: proto.OpPush, DType: proto.Uint8, Key: proto.Key(k), Round: uint64(r), ReqID: uint64(r*keys + k)}, in[k]); err != nil {
				t.Fatal(err)
			}
			if err := c.Send(proto.Header{Op: proto.OpPull, Key: proto.Key(k), Round: uint64(r), ReqID: uint64(r*keys + k)}, nil); err != nil {
				t.Fatal(err)
			}
		}
		for k := 0; k < keys; k++ {
			f := ch.next(t)
			if f.err != nil || f.h.Op != proto.OpPullResp || f.h.Round != uint64(r) {
				t.Fatalf("round %d: %v %v", r, &f.h, f.err)
			}
			key := int(f.h.Key)
			if &f.payload[0] != &out[key][0] {
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
			if f := s.next(t); f.h.Op != proto.OpPull {
				t.Fatalf("server got %v", &f.h)
			}
		}
	}
	s1, _ := CountersOf(srv)
	c1, _ := CountersOf(cli)
	return s1.Sub(s0), c1.Sub(c0)
}

func testPushPull(t *testing.T, k kind) {
	srv, cli := k.make(t, Options{})
	pushPullRounds(t, srv, cli, 4, 96<<10, 0, 3)
}

// TestVerbsEmu runs the verbs-only tests on the emulation.
func TestVerbsEmu(t *testing.T) {
	runVerbsOnly(t, emuKind(ibv.EmuOptions{}))
}

// TestVerbsReal runs every test on the real device.
func TestVerbsReal(t *testing.T) {
	realLib(t)
	runBehaviours(t, realKind)
	runVerbsOnly(t, realKind)
}

func runVerbsOnly(t *testing.T, k kind) {
	for _, b := range []struct {
		name string
		run  func(t *testing.T, k kind)
	}{
		{"SteadyStateNoRegistrationsNoCopies", testSteadyState},
		{"PeerDiesWhileSendWaits", testPeerDies},
		{"CloseFailsPendingSend", testCloseFailsPendingSend},
		{"TransportCloseEndsConns", testTransportClose},
		{"RegionsShareTheCache", testRegions},
		{"StableDestinations", testStableDest},
	} {
		t.Run(b.name, func(t *testing.T) { b.run(t, k) })
	}
}

// testSteadyState is the acceptance test: once buffers are warm, a
// push/pull round registers nothing and copies no payload on either side:
// one RDMA write per push and per answer.
func testSteadyState(t *testing.T, k kind) {
	srv, cli := k.make(t, Options{Checksum: true})
	const keys, rounds, warm = 3, 6, 1
	sw, cw := pushPullRounds(t, srv, cli, keys, 256<<10, warm, rounds)
	t.Logf("server, rounds %d..%d: %+v", warm, rounds-1, sw)
	t.Logf("client, rounds %d..%d: %+v", warm, rounds-1, cw)
	steady := rounds - warm
	for _, w := range []struct {
		side string
		c    Counters
	}{{"server", sw}, {"client", cw}} {
		if w.c.Registrations != 0 || w.c.Copies != 0 || w.c.CopiedBytes != 0 {
			t.Errorf("%s: %d registrations and %d copies (%d bytes) in steady state, want none",
				w.side, w.c.Registrations, w.c.Copies, w.c.CopiedBytes)
		}
		if w.c.Writes != uint64(keys*steady) || w.c.Rendezvous != uint64(keys*steady) {
			t.Errorf("%s: %d writes and %d rendezvous for %d frames", w.side, w.c.Writes, w.c.Rendezvous, keys*steady)
		}
	}
	if cw.Eager != uint64(keys*steady) {
		t.Errorf("client sent %d eager frames, want %d pulls", cw.Eager, keys*steady)
	}
	if cw.CacheHits < uint64(2*keys*steady) {
		t.Errorf("client: %d MR cache hits, want at least %d (each push and each answer)", cw.CacheHits, 2*keys*steady)
	}
}

// stableRec is an hrec that is a StableReceiver: one buffer per key.
type stableRec struct {
	*hrec
	smu   sync.Mutex
	bufs  map[proto.Key][]byte
	calls int
}

func (r *stableRec) StableDest(c Conn, h *proto.Header) ([]byte, bool, error) {
	r.see(c)
	r.smu.Lock()
	defer r.smu.Unlock()
	r.calls++
	b := make([]byte, h.Length)
	r.bufs[h.Key] = b
	return b, true, nil
}

func (r *stableRec) buf(k proto.Key) []byte {
	r.smu.Lock()
	defer r.smu.Unlock()
	return r.bufs[k]
}

// testStableDest checks the one-time rendezvous: the first frame of an
// (op, key) goes by RTS/CTS and grants the handler's stable buffer; later
// frames are written straight into it, one per Release, with no RTS or
// CTS; a frame of another length takes the per-frame path; and a Send
// waiting for a credit fails promptly when the peer goes away.
func testStableDest(t *testing.T, k kind) {
	srv, cli := k.make(t, Options{Checksum: true})
	sv, cv := srv.(*Verbs), cli.(*Verbs)
	sh := &stableRec{hrec: newHrec(), bufs: map[proto.Key][]byte{}}
	sh.dest = func(_ Conn, h *proto.Header) ([]byte, error) { return make([]byte, h.Length), nil }
	c, ch := connect(t, srv, cli, sh)
	const size = 64 << 10
	key := proto.MakeKey(7, 0)
	data := make([]byte, size)
	send := func(round uint64) error {
		return c.Send(proto.Header{Op: proto.OpPush, DType: proto.Uint8, Key: key, Round: round}, pattern(data, round))
	}
	want := make([]byte, size)
	check := func(round uint64) {
		t.Helper()
		f := sh.next(t)
		b := sh.buf(key)
		if f.err != nil || f.h.Round != round || f.h.Key != key || len(f.payload) != size || &f.payload[0] != &b[0] {
			t.Fatalf("round %d: got %v (err %v), %d bytes, in the stable buffer: %v", round, &f.h, f.err, len(f.payload), len(f.payload) > 0 && &f.payload[0] == &b[0])
		}
		if !bytes.Equal(f.payload, pattern(want, round)) {
			t.Fatalf("round %d: payload differs", round)
		}
	}

	c0, s0 := cv.Counters(), sv.Counters()
	if err := send(1); err != nil {
		t.Fatal(err)
	}
	check(1)
	sc := <-sh.conns
	rel := sc.(Releaser)
	if d := cv.Counters().Sub(c0); d.Rendezvous != 1 || d.Stable != 0 {
		t.Fatalf("first frame: %+v, want one rendezvous", d)
	}

	// Without a credit the next Send waits; Release lets it go.
	sent := make(chan error, 1)
	go func() { sent <- send(2) }()
	select {
	case err := <-sent:
		t.Fatalf("Send before Release returned %v", err)
	case f := <-sh.frames:
		t.Fatalf("frame %v written before Release", &f.h)
	case <-time.After(200 * time.Millisecond):
	}
	rel.Release(proto.OpPush, key)
	select {
	case err := <-sent:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Send still waits after Release")
	}
	check(2)

	const rounds = 10
	c1, s1 := cv.Counters(), sv.Counters()
	for r := uint64(3); r < 3+rounds; r++ {
		rel.Release(proto.OpPush, key)
		if err := send(r); err != nil {
			t.Fatal(err)
		}
		check(r)
	}
	cd, sd := cv.Counters().Sub(c1), sv.Counters().Sub(s1)
	t.Logf("client, %d stable frames: %+v", rounds, cd)
	t.Logf("server: %+v", sd)
	if cd.Stable != rounds || cd.Writes != rounds || cd.Rendezvous != 0 || cd.Sends != 0 || cd.Registrations != 0 || cd.Copies != 0 {
		t.Errorf("client: %+v; want %d stable writes and nothing else", cd, rounds)
	}
	if sd.Sends != rounds || sd.Credits != rounds || sd.Registrations != 0 || sd.Copies != 0 {
		t.Errorf("server: %+v; want %d credits and nothing else", sd, rounds)
	}
	if sh.calls != 1 {
		t.Errorf("StableDest called %d times, want once", sh.calls)
	}

	// Another length: the per-frame path, into Dest's buffer.
	rel.Release(proto.OpPush, key)
	c2 := cv.Counters()
	small := pattern(make([]byte, 8<<10), 99)
	if err := c.Send(proto.Header{Op: proto.OpPush, DType: proto.Uint8, Key: key, Round: 99}, small); err != nil {
		t.Fatal(err)
	}
	if f := sh.next(t); f.h.Round != 99 || !bytes.Equal(f.payload, small) || &f.payload[0] == &sh.buf(key)[0] {
		t.Fatalf("frame of another length: %v", &f.h)
	}
	if d := cv.Counters().Sub(c2); d.Rendezvous != 1 || d.Stable != 0 {
		t.Errorf("frame of another length: %+v, want one rendezvous", d)
	}
	// The credit is still there for the next frame of the stable length.
	if err := send(100); err != nil {
		t.Fatal(err)
	}
	check(100)
	if s0 := sv.Counters().Sub(s0); s0.Stable != 0 {
		t.Errorf("server sent %d stable frames", s0.Stable)
	}

	// No credit (100 is not released) and the peer dies: Send fails.
	go func() { sent <- send(101) }()
	time.Sleep(50 * time.Millisecond)
	start := time.Now()
	sc.Close()
	wantPeerDeath(t, "a send waiting for a credit of a dead peer", sent, start, ch)
	rel.Release(proto.OpPush, key) // on a dead Conn: nothing
	if err := sh.waitClosed(t, 5*time.Second); err != nil {
		t.Fatalf("server's own close reported as %v", err)
	}
}

// wantPeerDeath checks that a Send pending when the peer died (at start)
// fails within 5 s, and that the sender's Conn reports the death rather
// than a clean close.
func wantPeerDeath(t *testing.T, what string, sent <-chan error, start time.Time, ch *hrec) {
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
	if err := ch.waitClosed(t, 5*time.Second); err == nil {
		t.Fatal("peer death reported as a clean close")
	} else {
		t.Logf("client closed with: %v", err)
	}
}

func testPeerDies(t *testing.T, k kind) {
	srv, cli := k.make(t, Options{})
	sh := newHrec()
	release := make(chan struct{})
	arrived := make(chan struct{}, 1)
	sh.dest = func(_ Conn, h *proto.Header) ([]byte, error) {
		arrived <- struct{}{}
		<-release // the server stalls on this frame
		return make([]byte, h.Length), nil
	}
	c, ch := connect(t, srv, cli, sh)
	sent := make(chan error, 1)
	go func() {
		sent <- c.Send(proto.Header{Op: proto.OpPush, DType: proto.Uint8}, make([]byte, 100<<10))
	}()
	<-arrived
	sc := <-sh.conns
	start := time.Now()
	sc.Close() // the server's end goes away: TCP closed, QP in ERROR
	wantPeerDeath(t, "a send to a dead peer", sent, start, ch)
	close(release)
	if err := sh.waitClosed(t, 5*time.Second); err != nil {
		t.Fatalf("server's own close reported as %v", err)
	}
}

func testCloseFailsPendingSend(t *testing.T, k kind) {
	srv, cli := k.make(t, Options{})
	sh := newHrec()
	release := make(chan struct{})
	arrived := make(chan struct{}, 1)
	sh.dest = func(_ Conn, h *proto.Header) ([]byte, error) {
		arrived <- struct{}{}
		<-release
		return make([]byte, h.Length), nil
	}
	c, ch := connect(t, srv, cli, sh)
	defer close(release)
	sent := make(chan error, 1)
	go func() { sent <- c.Send(proto.Header{Op: proto.OpPush, DType: proto.Uint8}, make([]byte, 4096)) }()
	<-arrived
	c.Close()
	select {
	case err := <-sent:
		if !errors.Is(err, net.ErrClosed) {
			t.Fatalf("pending send after Close: %v, want net.ErrClosed", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("pending send not failed by Close")
	}
	if err := ch.waitClosed(t, 5*time.Second); err != nil {
		t.Fatalf("own close reported as %v", err)
	}
}

func testTransportClose(t *testing.T, k kind) {
	srv, cli := k.make(t, Options{})
	sh := newHrec()
	_, ch := connect(t, srv, cli, sh)
	if err := cli.(*Verbs).Close(); err != nil {
		t.Fatal(err)
	}
	if err := ch.waitClosed(t, 5*time.Second); err != nil {
		t.Fatalf("client conn closed with %v", err)
	}
	if err := sh.waitClosed(t, 5*time.Second); err == nil {
		t.Fatal("server saw a clean close")
	}
	if _, err := cli.Dial(context.Background(), "127.0.0.1:1", newHrec()); err == nil {
		t.Fatal("dial on a closed transport succeeded")
	}
}

func testRegions(t *testing.T, k kind) {
	srv, cli := k.make(t, Options{})
	buf := make([]byte, 1<<20)
	r, err := cli.Register(buf)
	if err != nil {
		t.Fatal(err)
	}
	before, _ := CountersOf(cli)
	pushPullOnce := func(p []byte) {
		t.Helper()
		sh := newHrec()
		sh.dest = func(_ Conn, h *proto.Header) ([]byte, error) { return make([]byte, h.Length), nil }
		c, _ := connect(t, srv, cli, sh)
		if err := c.Send(proto.Header{Op: proto.OpPush, DType: proto.Uint8}, p); err != nil {
			t.Fatal(err)
		}
		sh.next(t)
	}
	pushPullOnce(buf[4096 : 8192+5]) // a piece of the registered buffer
	after, _ := CountersOf(cli)
	if d := after.Sub(before); d.Registrations != 1 { // the connection's buffers only
		t.Fatalf("sending from a registered buffer registered %d times", d.Registrations)
	}
	if err := r.Deregister(); err != nil {
		t.Fatal(err)
	}
	if d, _ := CountersOf(cli); d.Deregistrations == after.Deregistrations {
		t.Fatal("Deregister left the registration")
	}
}

// TestMRCache checks hits, containment, LRU eviction and that a region in
// use is never evicted.
func TestMRCache(t *testing.T) {
	e := ibv.NewEmulator(ibv.EmuOptions{})
	ctx, _ := e.Open("emu0")
	pd, _ := ctx.AllocPD()
	var cnt counters
	c := newMRCache(pd, 3*4096, &cnt, t.Logf)
	bufs := make([][]byte, 5)
	for i := range bufs {
		bufs[i] = make([]byte, 4096)
	}
	get := func(b []byte) *mrEntry {
		t.Helper()
		ent, err := c.get(b)
		if err != nil {
			t.Fatal(err)
		}
		return ent
	}
	a := get(bufs[0])
	c.put(a)
	if again := get(bufs[0]); again != a {
		t.Fatal("second get of the same slice registered it again")
	} else {
		c.put(again)
	}
	if sub := get(bufs[0][100:200]); sub != a || sub.sge(bufs[0][100:200]) != a.mr.Addr()+100 {
		t.Fatal("a slice inside a registered region was not found in it")
	} else {
		c.put(sub)
	}
	busy := get(bufs[1]) // in use throughout
	c.put(get(bufs[2]))
	c.put(get(bufs[3])) // 4 × 4 KiB > 12 KiB: evicts bufs[0], the least recently used idle one
	if cnt.evictions.Load() != 1 || c.registered() != 3*4096 {
		t.Fatalf("%d evictions, %d bytes registered", cnt.evictions.Load(), c.registered())
	}
	c.put(get(bufs[4])) // evicts bufs[2]; never bufs[1], which is in use
	if busy.mr == nil {
		t.Fatal("a region in use was evicted")
	}
	if got := get(bufs[3]); got.mr == nil {
		t.Fatal("bufs[3] should still be cached")
	} else {
		c.put(got)
	}
	if cnt.registrations.Load() != 5 || cnt.cacheHits.Load() != 3 {
		t.Fatalf("%d registrations, %d hits; want 5, 3", cnt.registrations.Load(), cnt.cacheHits.Load())
	}
	c.put(busy)
	c.close()
	if cnt.deregistrations.Load() != cnt.registrations.Load() {
		t.Fatalf("%d registrations, %d deregistrations after close", cnt.registrations.Load(), cnt.deregistrations.Load())
	}
	pd.Close()
	ctx.Close()
	if l := e.Live(); l != (ibv.EmuLive{}) {
		t.Fatalf("left %+v", l)
	}
}

// TestVerbsEmuMemlock: a registration the locked-memory limit refuses is an
// error naming RLIMIT_MEMLOCK, on the sending side (Send fails) and on the
// receiving side (the frame is refused with that reason); the connection
// survives both.
func TestVerbsEmuMemlock(t *testing.T) {
	srv, cli := emuKind(ibv.EmuOptions{MemlockBytes: 700 << 10}).make(t, Options{SendDepth: 4, RecvDepth: 4})
	sh := newHrec()
	sh.dest = func(_ Conn, h *proto.Header) ([]byte, error) { return make([]byte, h.Length), nil }
	c, _ := connect(t, srv, cli, sh)
	// Receiver: the client's 512 KiB fit, the server's 512 KiB do not.
	if err := c.Send(proto.Header{Op: proto.OpPush, DType: proto.Uint8}, make([]byte, 512<<10)); err != nil {
		t.Fatalf("refused frame: Send says %v", err)
	}
	f := sh.next(t)
	if f.err == nil || !strings.Contains(f.err.Error(), "RLIMIT_MEMLOCK") || !strings.Contains(f.err.Error(), "ibv_reg_mr") {
		t.Fatalf("receiver-side registration failure handed over as %v", f.err)
	}
	t.Logf("receiver: %v", f.err)
	// Sender: 1 MiB cannot be registered at all.
	err := c.Send(proto.Header{Op: proto.OpPush, DType: proto.Uint8}, make([]byte, 1<<20))
	if err == nil || !strings.Contains(err.Error(), "RLIMIT_MEMLOCK") || !strings.Contains(strings.ToLower(err.Error()), "cannot allocate memory") {
		t.Fatalf("sender-side registration failure: %v", err)
	}
	t.Logf("sender: %v", err)
	// The connection still works.
	if err := c.Send(proto.Header{Op: proto.OpPush, DType: proto.Uint8}, []byte("still here")); err != nil {
		t.Fatal(err)
	}
	if f := sh.next(t); f.err != nil || string(f.payload) != "still here" {
		t.Fatalf("after the failures: %+v", f)
	}
}

// TestVerbsEmuRNRBackPressure: one receive buffer, many eager frames at
// once; the sender waits for receives (RNR, retried) and nothing is lost.
func TestVerbsEmuRNRBackPressure(t *testing.T) {
	srv, cli := emuKind(ibv.EmuOptions{}).make(t, Options{SendDepth: 64, RecvDepth: 1})
	sh := newHrec()
	c, _ := connect(t, srv, cli, sh)
	var wg sync.WaitGroup
	for g := 0; g < 4; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 50; i++ {
				if err := c.Send(proto.Header{Op: proto.OpError, ReqID: uint64(g*100 + i)}, []byte("x")); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	for i := 0; i < 200; i++ {
		if f := sh.next(t); f.err != nil {
			t.Fatal(f.err)
		}
	}
	wg.Wait()
}

// TestVerbsEmuTCPPeer: a TCP-transport peer dialing a verbs listener gets a
// clear error, not a hang.
func TestVerbsEmuTCPPeer(t *testing.T) {
	srv, _ := emuKind(ibv.EmuOptions{}).make(t, Options{})
	sh := newHrec()
	ln, err := srv.Listen("127.0.0.1:0", sh)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := NewTCP(Options{}).Dial(ctx, ln.Addr(), newHrec())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.Send(proto.Header{Op: proto.OpHello}, nil)
	// Either our hello reached the listener (which then names the TCP
	// transport), or the TCP side read the listener's verbs hello as a bad
	// frame and hung up first: both say that the transports must match.
	err = sh.waitClosed(t, 5*time.Second)
	if msg := fmt.Sprint(err); !strings.Contains(msg, "TCP transport") && !strings.Contains(msg, "same transport") {
		t.Fatalf("closed with %v", err)
	}
}

func TestOpen(t *testing.T) {
	noDev := func() ([]string, string) { return nil, "no RDMA devices in /sys/class/infiniband" }
	hasDev := func() ([]string, string) { return []string{"emu0"}, "" }
	emu := func(d ...ibv.EmuDevice) func() (ibv.Library, error) {
		return func() (ibv.Library, error) { return ibv.NewEmulator(ibv.EmuOptions{Devices: d}), nil }
	}
	down := ibv.DefaultEmuDevice("emu0")
	down.Ports[0].State = ibv.PortDown
	noLib := func() (ibv.Library, error) {
		return nil, fmt.Errorf("%w: libibverbs.so.1: cannot open shared object file: No such file or directory", ibv.ErrNotSupported)
	}
	tests := []struct {
		desc     string
		opt      Options
		env      openEnv
		name     string // transport chosen; "" for an error
		contains string // in the reason (and in the error)
	}{
		{"auto without devices", Options{}, openEnv{noDev, noLib}, "tcp", "no RDMA devices in /sys/class/infiniband; using TCP"},
		{"forced without devices", Options{Mode: ModeForce}, openEnv{noDev, noLib}, "", "no RDMA devices in /sys/class/infiniband"},
		{"off", Options{Mode: ModeOff}, openEnv{hasDev, emu(ibv.DefaultEmuDevice("emu0"))}, "tcp", "RDMA disabled by BYTEPS_ENABLE_RDMA=0"},
		{"no library", Options{}, openEnv{hasDev, noLib}, "tcp", "libibverbs.so.1: cannot open shared object file"},
		{"forced, no library", Options{Mode: ModeForce}, openEnv{hasDev, noLib}, "", "libibverbs.so.1: cannot open shared object file"},
		{"library lists nothing", Options{}, openEnv{hasDev, func() (ibv.Library, error) {
			return ibv.NewEmulator(ibv.EmuOptions{Devices: []ibv.EmuDevice{}}), nil
		}}, "tcp", "libibverbs lists no devices (the kernel has emu0: is the provider library"},
		{"port down", Options{}, openEnv{hasDev, emu(down)}, "tcp", "emu0 port 1 is DOWN; using TCP"},
		{"forced, port down", Options{Mode: ModeForce}, openEnv{hasDev, emu(down)}, "", "emu0 port 1 is DOWN"},
		{"usable", Options{GIDIndex: -1}, openEnv{hasDev, emu(ibv.DefaultEmuDevice("emu0"))}, "verbs",
			"using verbs on emu0 port 1 (RoCE v2, GID index 1 ::ffff:127.0.0.1, MTU 1024)"},
		{"GID index chosen", Options{GIDIndex: 0}, openEnv{hasDev, emu(ibv.DefaultEmuDevice("emu0"))}, "verbs", "(IB/RoCE v1, GID index 0 fe80::"},
		{"GID index empty", Options{GIDIndex: 5, Mode: ModeForce}, openEnv{hasDev, emu(ibv.DefaultEmuDevice("emu0"))}, "", "GID index 5 (GOBPS_RDMA_GID_INDEX)"},
		{"second device has the active port", Options{GIDIndex: -1}, openEnv{hasDev, emu(down, ibv.DefaultEmuDevice("emu1"))}, "verbs", "using verbs on emu1 port 1"},
		{"named device", Options{Device: "emu1", GIDIndex: -1}, openEnv{hasDev, emu(ibv.DefaultEmuDevice("emu0"), ibv.DefaultEmuDevice("emu1"))}, "verbs", "using verbs on emu1"},
		{"unknown device", Options{Device: "mlx5_9"}, openEnv{hasDev, emu(ibv.DefaultEmuDevice("emu0"))}, "tcp", `no RDMA device "mlx5_9" (GOBPS_RDMA_DEVICE); there are emu0`},
		{"bad mode", Options{Mode: "sometimes"}, openEnv{hasDev, noLib}, "", ""},
	}
	for _, tt := range tests {
		t.Run(tt.desc, func(t *testing.T) {
			tr, why, err := open(tt.opt, tt.env)
			t.Logf("reason: %s; error: %v", why, err)
			if tt.name == "" {
				if err == nil || tr != nil {
					t.Fatalf("got %v, want an error", tr)
				}
				if !strings.Contains(err.Error(), tt.contains) || !strings.Contains(why, tt.contains) {
					t.Fatalf("error %q / reason %q do not say %q", err, why, tt.contains)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if tr.Name() != tt.name || !strings.Contains(why, tt.contains) {
				t.Fatalf("got %s with reason %q, want %s with %q", tr.Name(), why, tt.name, tt.contains)
			}
			if v, ok := tr.(*Verbs); ok {
				if err := v.Close(); err != nil {
					t.Fatal(err)
				}
			}
		})
	}
}

// TestOpenHere runs Open on this machine: where no RDMA device exists it
// must fall back to TCP and say why; forced, it must fail with that reason.
func TestOpenHere(t *testing.T) {
	tr, why, err := Open(Options{GIDIndex: -1})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("Open: %s: %s", tr.Name(), why)
	if v, ok := tr.(*Verbs); ok {
		v.Close()
		return
	}
	if why == "" || !strings.HasSuffix(why, "; using TCP") {
		t.Fatalf("fell back to TCP with reason %q", why)
	}
	_, fwhy, err := Open(Options{Mode: ModeForce, GIDIndex: -1})
	if err == nil || !strings.Contains(err.Error(), fwhy) || !strings.HasPrefix(why, fwhy) {
		t.Fatalf("forced: %v (reason %q), auto said %q", err, fwhy, why)
	}
	if tr, why, _ := Open(Options{Mode: ModeOff}); tr.Name() != "tcp" || !strings.Contains(why, "BYTEPS_ENABLE_RDMA=0") {
		t.Fatalf("off: %s, %q", tr.Name(), why)
	}
}

func TestQPInfoRoundTripAndChecks(t *testing.T) {
	q := qpInfo{LinkLayer: ibv.LinkEthernet, MTU: ibv.MTU1024, LID: 7,
		GID: ibv.GID{15: 1}, SendDepth: 128, RecvDepth: 64, EagerBytes: eagerBytes}
	got, err := decodeHello(q.encodeHello())
	if err != nil || got != q {
		t.Fatalf("hello round trip: %+v, %v", got, err)
	}
	q.QPN, q.PSN = 0x1234, 0xabcdef
	if err := decodeQPAddr(q.encodeQPAddr(), &got); err != nil || got != q {
		t.Fatalf("QP address round trip: %+v, %v", got, err)
	}
	for _, tt := range []struct {
		desc string
		mut  func(b []byte)
		want string
	}{
		{"magic", func(b []byte) { b[0] = 'X' }, "bootstrap magic"},
		{"tcp peer", func(b []byte) { binary.LittleEndian.PutUint32(b, proto.Magic) }, "TCP transport"},
		{"version", func(b []byte) { b[4] = 9 }, "version 9"},
		{"mtu", func(b []byte) { b[7] = 0 }, "MTU code 0"},
		{"depth", func(b []byte) { binary.LittleEndian.PutUint32(b[12:], 0) }, "depths 0/64"},
		{"eager", func(b []byte) { binary.LittleEndian.PutUint32(b[20:], 1) }, "receive buffers of 1 bytes"},
	} {
		b := q.encodeHello()
		tt.mut(b)
		if _, err := decodeHello(b); !errors.Is(err, proto.ErrBadFrame) || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: %v, want %q", tt.desc, err, tt.want)
		}
	}
	if err := decodeQPAddr(make([]byte, qpAddrSize), &got); !errors.Is(err, proto.ErrBadFrame) || !strings.Contains(err.Error(), "QPN 0") {
		t.Errorf("QPN 0: %v", err)
	}
	m := cts{sid: 3, slot: 9, rkey: 77, addr: 1 << 40, n: 4096}
	b := make([]byte, ctlSlotBytes)
	if got, err := decodeCTS(b[:m.encode(b)]); err != nil || got != m {
		t.Fatalf("CTS round trip: %+v, %v", got, err)
	}
}
