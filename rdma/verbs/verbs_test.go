package verbs

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gobps/gobps/proto"
	"github.com/gobps/gobps/rdma"
	"github.com/gobps/gobps/rdma/ibv"
	"github.com/gobps/gobps/rdma/internal/rdmatest"
	"github.com/gobps/gobps/rdma/tcp"
)

// This file tests the verbs transport's own protocol on the emulation
// (everywhere) and on a real device (TestVerbsReal*: where one is usable,
// e.g. rxe in the QEMU guest of scripts/rdma_qemu.sh; they skip elsewhere,
// and fail instead when GOBPS_IN_QEMU=1): rendezvous, stable destinations,
// back-pressure, the MR cache, counters, failures, the wire formats and
// device discovery. What every transport must do alike is tested in
// package rdma_test.

// emuKind runs two verbs transports, as two processes would, on one
// emulated fabric.
func emuKind(eopt ibv.EmuOptions) rdmatest.Kind {
	return rdmatest.Kind{Name: "verbs-emu", Verbs: true, Make: func(t *testing.T, opt rdma.Options) (rdma.Transport, rdma.Transport) {
		rdmatest.CheckLeaks(t)
		e := ibv.NewEmulator(eopt)
		opt.GIDIndex = -1
		srv, why, err := New(e, opt)
		if err != nil {
			t.Fatalf("%s: %v", why, err)
		}
		cli, _, err := New(e, opt)
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
var realKind = rdmatest.Kind{Name: "verbs-real", Verbs: true, Make: func(t *testing.T, opt rdma.Options) (rdma.Transport, rdma.Transport) {
	rdmatest.CheckLeaks(t)
	lib := realLib(t)
	opt.GIDIndex = -1
	srv, why, err := New(lib, opt)
	if err != nil {
		t.Fatalf("%s: %v", why, err)
	}
	t.Logf("%s", why)
	cli, _, err := New(lib, opt)
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
	v, why, err := New(lib, rdma.Options{GIDIndex: -1})
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

// TestVerbsEmu runs the verbs-only tests on the emulation.
func TestVerbsEmu(t *testing.T) {
	runVerbsOnly(t, emuKind(ibv.EmuOptions{}))
}

// TestVerbsReal runs the verbs-only tests on the real device (the shared
// behaviours run there in rdma_test's TestVerbsRealBehaviours).
func TestVerbsReal(t *testing.T) {
	realLib(t)
	runVerbsOnly(t, realKind)
}

func runVerbsOnly(t *testing.T, k rdmatest.Kind) {
	for _, b := range []struct {
		name string
		run  func(t *testing.T, k rdmatest.Kind)
	}{
		{"SteadyStateNoRegistrationsNoCopies", testSteadyState},
		{"PeerDiesWhileSendWaits", testPeerDies},
		{"CloseFailsPendingSend", testCloseFailsPendingSend},
		{"RegionsShareTheCache", testRegions},
		{"StableDestinations", testStableDest},
	} {
		t.Run(b.name, func(t *testing.T) { b.run(t, k) })
	}
}

// testSteadyState is the acceptance test: once buffers are warm, a
// push/pull round registers nothing and copies no payload on either side:
// one RDMA write per push and per answer.
func testSteadyState(t *testing.T, k rdmatest.Kind) {
	srv, cli := k.Make(t, rdma.Options{Checksum: true})
	const keys, rounds, warm = 3, 6, 1
	sw, cw := rdmatest.PushPullRounds(t, srv, cli, keys, 256<<10, warm, rounds)
	t.Logf("server, rounds %d..%d: %+v", warm, rounds-1, sw)
	t.Logf("client, rounds %d..%d: %+v", warm, rounds-1, cw)
	steady := rounds - warm
	for _, w := range []struct {
		side string
		c    rdma.Counters
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
	*rdmatest.Rec
	smu   sync.Mutex
	bufs  map[proto.Key][]byte
	calls int
}

func (r *stableRec) StableDest(c rdma.Conn, h *proto.Header) ([]byte, bool, error) {
	r.See(c)
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
func testStableDest(t *testing.T, k rdmatest.Kind) {
	srv, cli := k.Make(t, rdma.Options{Checksum: true})
	sv, cv := srv.(*Transport), cli.(*Transport)
	// goWaiting runs send on a goroutine and returns once it waits for
	// its credit (the transport's hook says so).
	waiting := make(chan struct{}, 1)
	goWaiting := func(send func() error, sent chan<- error) {
		t.Helper()
		cv.onCreditWait = func() { waiting <- struct{}{} }
		go func() { sent <- send() }()
		select {
		case <-waiting:
			cv.onCreditWait = nil // the Send has read it: nothing else does
		case <-time.After(10 * time.Second):
			t.Fatal("Send did not wait for a credit within 10s")
		}
	}
	sh := &stableRec{Rec: rdmatest.NewRec(), bufs: map[proto.Key][]byte{}}
	sh.DestFn = func(_ rdma.Conn, h *proto.Header) ([]byte, error) { return make([]byte, h.Length), nil }
	c, ch := rdmatest.Connect(t, srv, cli, sh)
	const size = 64 << 10
	key := proto.MakeKey(7, 0)
	data := make([]byte, size)
	send := func(round uint64) error {
		return c.Send(proto.Header{Op: proto.OpPush, DType: proto.Uint8, Key: key, Round: round}, rdmatest.Pattern(data, round))
	}
	want := make([]byte, size)
	check := func(round uint64) {
		t.Helper()
		f := sh.Next(t)
		b := sh.buf(key)
		if f.Err != nil || f.H.Round != round || f.H.Key != key || len(f.Payload) != size || &f.Payload[0] != &b[0] {
			t.Fatalf("round %d: got %v (err %v), %d bytes, in the stable buffer: %v", round, &f.H, f.Err, len(f.Payload), len(f.Payload) > 0 && &f.Payload[0] == &b[0])
		}
		if !bytes.Equal(f.Payload, rdmatest.Pattern(want, round)) {
			t.Fatalf("round %d: payload differs", round)
		}
	}

	c0, s0 := cv.Counters(), sv.Counters()
	if err := send(1); err != nil {
		t.Fatal(err)
	}
	check(1)
	sc := <-sh.Conns
	rel := sc // Release is part of rdma.Conn
	if d := cv.Counters().Sub(c0); d.Rendezvous != 1 || d.Stable != 0 {
		t.Fatalf("first frame: %+v, want one rendezvous", d)
	}

	// Without a credit the next Send waits; Release lets it go. Once the
	// Send is waiting for its credit it has not returned and has written
	// nothing.
	sent := make(chan error, 1)
	goWaiting(func() error { return send(2) }, sent)
	select {
	case err := <-sent:
		t.Fatalf("Send before Release returned %v", err)
	case f := <-sh.Frames:
		t.Fatalf("frame %v written before Release", &f.H)
	default:
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
	small := rdmatest.Pattern(make([]byte, 8<<10), 99)
	if err := c.Send(proto.Header{Op: proto.OpPush, DType: proto.Uint8, Key: key, Round: 99}, small); err != nil {
		t.Fatal(err)
	}
	if f := sh.Next(t); f.H.Round != 99 || !bytes.Equal(f.Payload, small) || &f.Payload[0] == &sh.buf(key)[0] {
		t.Fatalf("frame of another length: %v", &f.H)
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
	goWaiting(func() error { return send(101) }, sent)
	start := time.Now()
	sc.Close()
	rdmatest.WantPeerDeath(t, "a send waiting for a credit of a dead peer", sent, start, ch)
	rel.Release(proto.OpPush, key) // on a dead rdma.Conn: nothing
	if err := sh.WaitClosed(t, 5*time.Second); err != nil {
		t.Fatalf("server's own close reported as %v", err)
	}
}

func testPeerDies(t *testing.T, k rdmatest.Kind) {
	srv, cli := k.Make(t, rdma.Options{})
	sh := rdmatest.NewRec()
	release := make(chan struct{})
	arrived := make(chan struct{}, 1)
	sh.DestFn = func(_ rdma.Conn, h *proto.Header) ([]byte, error) {
		arrived <- struct{}{}
		<-release // the server stalls on this frame
		return make([]byte, h.Length), nil
	}
	c, ch := rdmatest.Connect(t, srv, cli, sh)
	sent := make(chan error, 1)
	go func() {
		sent <- c.Send(proto.Header{Op: proto.OpPush, DType: proto.Uint8}, make([]byte, 100<<10))
	}()
	<-arrived
	sc := <-sh.Conns
	start := time.Now()
	sc.Close() // the server's end goes away: TCP closed, QP in ERROR
	rdmatest.WantPeerDeath(t, "a send to a dead peer", sent, start, ch)
	close(release)
	if err := sh.WaitClosed(t, 5*time.Second); err != nil {
		t.Fatalf("server's own close reported as %v", err)
	}
}

func testCloseFailsPendingSend(t *testing.T, k rdmatest.Kind) {
	srv, cli := k.Make(t, rdma.Options{})
	sh := rdmatest.NewRec()
	release := make(chan struct{})
	arrived := make(chan struct{}, 1)
	sh.DestFn = func(_ rdma.Conn, h *proto.Header) ([]byte, error) {
		arrived <- struct{}{}
		<-release
		return make([]byte, h.Length), nil
	}
	c, ch := rdmatest.Connect(t, srv, cli, sh)
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
	if err := ch.WaitClosed(t, 5*time.Second); err != nil {
		t.Fatalf("own close reported as %v", err)
	}
}

// testRegions: memory registered through the MR cache (as a caller's
// long-lived buffer would be) is used by a send from a slice inside it,
// with no registration of its own, and stays registered while idle until
// the cache lets it go (Transport.Close).
func testRegions(t *testing.T, k rdmatest.Kind) {
	srv, cli := k.Make(t, rdma.Options{})
	cv := cli.(*Transport)
	buf := make([]byte, 1<<20)
	ent, err := cv.cache.get(buf)
	if err != nil {
		t.Fatal(err)
	}
	before := cli.Counters()
	pushOnce := func(p []byte) {
		t.Helper()
		sh := rdmatest.NewRec()
		sh.DestFn = func(_ rdma.Conn, h *proto.Header) ([]byte, error) { return make([]byte, h.Length), nil }
		c, _ := rdmatest.Connect(t, srv, cli, sh)
		if err := c.Send(proto.Header{Op: proto.OpPush, DType: proto.Uint8}, p); err != nil {
			t.Fatal(err)
		}
		sh.Next(t)
	}
	pushOnce(buf[4096 : 8192+5]) // a piece of the registered buffer
	after := cli.Counters()
	if d := after.Sub(before); d.Registrations != 1 { // the connection's buffers only
		t.Fatalf("sending from a registered buffer registered %d times", d.Registrations)
	}
	cv.cache.put(ent)
	if ent.mr == nil {
		t.Fatal("an idle registration was dropped at once")
	}
	if err := cli.Close(); err != nil {
		t.Fatal(err)
	}
	if d := cli.Counters(); ent.mr != nil || d.Deregistrations == after.Deregistrations || d.Deregistrations != d.Registrations {
		t.Fatalf("Close left the registration (%d registrations, %d deregistrations)", d.Registrations, d.Deregistrations)
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
	srv, cli := emuKind(ibv.EmuOptions{MemlockBytes: 700 << 10}).Make(t, rdma.Options{SendDepth: 4, RecvDepth: 4})
	sh := rdmatest.NewRec()
	sh.DestFn = func(_ rdma.Conn, h *proto.Header) ([]byte, error) { return make([]byte, h.Length), nil }
	c, _ := rdmatest.Connect(t, srv, cli, sh)
	// Receiver: the client's 512 KiB fit, the server's 512 KiB do not.
	if err := c.Send(proto.Header{Op: proto.OpPush, DType: proto.Uint8}, make([]byte, 512<<10)); err != nil {
		t.Fatalf("refused frame: Send says %v", err)
	}
	f := sh.Next(t)
	if f.Err == nil || !strings.Contains(f.Err.Error(), "RLIMIT_MEMLOCK") || !strings.Contains(f.Err.Error(), "ibv_reg_mr") {
		t.Fatalf("receiver-side registration failure handed over as %v", f.Err)
	}
	t.Logf("receiver: %v", f.Err)
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
	if f := sh.Next(t); f.Err != nil || string(f.Payload) != "still here" {
		t.Fatalf("after the failures: %+v", f)
	}
}

// TestVerbsEmuRNRBackPressure: one receive buffer, many eager frames at
// once; the sender waits for receives (RNR, retried) and nothing is lost.
func TestVerbsEmuRNRBackPressure(t *testing.T) {
	srv, cli := emuKind(ibv.EmuOptions{}).Make(t, rdma.Options{SendDepth: 64, RecvDepth: 1})
	sh := rdmatest.NewRec()
	c, _ := rdmatest.Connect(t, srv, cli, sh)
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
		if f := sh.Next(t); f.Err != nil {
			t.Fatal(f.Err)
		}
	}
	wg.Wait()
}

// TestVerbsEmuTCPPeer: a TCP-transport peer dialing a verbs listener gets a
// clear error, not a hang.
func TestVerbsEmuTCPPeer(t *testing.T) {
	srv, _ := emuKind(ibv.EmuOptions{}).Make(t, rdma.Options{})
	sh := rdmatest.NewRec()
	ln, err := srv.Listen("127.0.0.1:0", sh)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	tt := tcp.New(rdma.Options{})
	defer tt.Close()
	c, err := tt.Dial(ctx, ln.Addr(), rdmatest.Self, rdmatest.NewRec())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	// Either our hello reached the listener (which then names the TCP
	// transport), or the TCP side read the listener's verbs hello as a bad
	// frame and hung up first: both say that the transports must match.
	err = sh.WaitClosed(t, 5*time.Second)
	if msg := fmt.Sprint(err); !strings.Contains(msg, "TCP transport") && !strings.Contains(msg, "same transport") {
		t.Fatalf("closed with %v", err)
	}
}

// TestOpen runs rdma.Open's choice with this package's driver looking at
// fake sysfs and libibverbs, and the TCP driver as the fallback.
func TestOpen(t *testing.T) {
	var tcpDriver rdma.Driver
	for _, d := range rdma.Drivers() {
		if d.Name == "tcp" {
			tcpDriver = d
		}
	}
	if tcpDriver.Open == nil {
		t.Fatal("the tcp driver is not registered")
	}
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
		opt      rdma.Options
		env      openEnv
		name     string // transport chosen; "" for an error
		contains string // in the reason (and in the error)
	}{
		{"auto without devices", rdma.Options{}, openEnv{noDev, noLib}, "tcp", "no RDMA devices in /sys/class/infiniband; using TCP"},
		{"forced without devices", rdma.Options{Mode: rdma.ModeForce}, openEnv{noDev, noLib}, "", "no RDMA devices in /sys/class/infiniband"},
		{"off", rdma.Options{Mode: rdma.ModeOff}, openEnv{hasDev, emu(ibv.DefaultEmuDevice("emu0"))}, "tcp", "RDMA disabled by BYTEPS_ENABLE_RDMA=0"},
		{"no library", rdma.Options{}, openEnv{hasDev, noLib}, "tcp", "libibverbs.so.1: cannot open shared object file"},
		{"forced, no library", rdma.Options{Mode: rdma.ModeForce}, openEnv{hasDev, noLib}, "", "libibverbs.so.1: cannot open shared object file"},
		{"library lists nothing", rdma.Options{}, openEnv{hasDev, func() (ibv.Library, error) {
			return ibv.NewEmulator(ibv.EmuOptions{Devices: []ibv.EmuDevice{}}), nil
		}}, "tcp", "libibverbs lists no devices (the kernel has emu0: is the provider library"},
		{"port down", rdma.Options{}, openEnv{hasDev, emu(down)}, "tcp", "emu0 port 1 is DOWN; using TCP"},
		{"forced, port down", rdma.Options{Mode: rdma.ModeForce}, openEnv{hasDev, emu(down)}, "", "emu0 port 1 is DOWN"},
		{"usable", rdma.Options{GIDIndex: -1}, openEnv{hasDev, emu(ibv.DefaultEmuDevice("emu0"))}, "verbs",
			"using verbs on emu0 port 1 (RoCE v2, GID index 1 ::ffff:127.0.0.1, MTU 1024)"},
		{"GID index chosen", rdma.Options{GIDIndex: 0}, openEnv{hasDev, emu(ibv.DefaultEmuDevice("emu0"))}, "verbs", "(IB/RoCE v1, GID index 0 fe80::"},
		{"GID index empty", rdma.Options{GIDIndex: 5, Mode: rdma.ModeForce}, openEnv{hasDev, emu(ibv.DefaultEmuDevice("emu0"))}, "", "GID index 5 (GOBPS_RDMA_GID_INDEX)"},
		{"second device has the active port", rdma.Options{GIDIndex: -1}, openEnv{hasDev, emu(down, ibv.DefaultEmuDevice("emu1"))}, "verbs", "using verbs on emu1 port 1"},
		{"named device", rdma.Options{Device: "emu1", GIDIndex: -1}, openEnv{hasDev, emu(ibv.DefaultEmuDevice("emu0"), ibv.DefaultEmuDevice("emu1"))}, "verbs", "using verbs on emu1"},
		{"unknown device", rdma.Options{Device: "mlx5_9"}, openEnv{hasDev, emu(ibv.DefaultEmuDevice("emu0"))}, "tcp", `no RDMA device "mlx5_9" (GOBPS_RDMA_DEVICE); there are emu0`},
		{"bad mode", rdma.Options{Mode: "sometimes"}, openEnv{hasDev, noLib}, "", ""},
	}
	for _, tt := range tests {
		t.Run(tt.desc, func(t *testing.T) {
			tr, why, err := rdma.OpenWith(tt.opt, []rdma.Driver{driver(tt.env), tcpDriver})
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
			if tr.Caps().Name != tt.name || !strings.Contains(why, tt.contains) {
				t.Fatalf("got %s with reason %q, want %s with %q", tr.Caps().Name, why, tt.name, tt.contains)
			}
			if err := tr.Close(); err != nil {
				t.Fatal(err)
			}
		})
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

// TestVerbsEmuCloseAbortsDial: Transport.Close does not wait out the
// bootstrap of a Dial in progress (up to 10 s): it abandons it, and the
// Dial fails.
func TestVerbsEmuCloseAbortsDial(t *testing.T) {
	_, cli := emuKind(ibv.EmuOptions{}).Make(t, rdma.Options{})
	// A peer that accepts and never bootstraps.
	raw, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		if nc, err := raw.Accept(); err == nil {
			accepted <- nc
		}
	}()
	dialed := make(chan error, 1)
	go func() {
		_, err := cli.Dial(context.Background(), raw.Addr().String(), rdmatest.Self, rdmatest.NewRec())
		dialed <- err
	}()
	select {
	case nc := <-accepted:
		defer nc.Close()
	case <-time.After(10 * time.Second):
		t.Fatal("the Dial did not connect within 10s")
	}
	cv := cli.(*Transport)
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(time.Millisecond) {
		cv.mu.Lock()
		n := len(cv.mu.dialing)
		cv.mu.Unlock()
		if n == 1 {
			break // in its bootstrap
		}
		if time.Now().After(deadline) {
			t.Fatal("the Dial did not start its bootstrap within 10s")
		}
	}
	closed := make(chan error, 1)
	go func() { closed <- cli.Close() }()
	select {
	case err := <-closed:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Close waits for a Dial in its bootstrap")
	}
	select {
	case err := <-dialed:
		if err == nil {
			t.Fatal("a Dial abandoned by Close succeeded")
		}
		t.Logf("the Dial: %v", err)
	case <-time.After(5 * time.Second):
		t.Fatal("the Dial did not return after Close")
	}
}

// TestVerbsEmuListenerCloseAbandonsBootstrap: Listener.Close abandons the
// bootstraps in progress and waits for them; the handler is not told of
// connections it never had.
func TestVerbsEmuListenerCloseAbandonsBootstrap(t *testing.T) {
	srv, _ := emuKind(ibv.EmuOptions{}).Make(t, rdma.Options{})
	sh := rdmatest.NewRec()
	ln, err := srv.Listen("127.0.0.1:0", sh)
	if err != nil {
		t.Fatal(err)
	}
	nc, err := net.Dial("tcp", ln.Addr()) // and never bootstrap
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	l := ln.(*listener)
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(time.Millisecond) {
		l.mu.Lock()
		n := len(l.pending)
		l.mu.Unlock()
		if n == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the bootstrap did not start within 10s")
		}
	}
	closed := make(chan error, 1)
	go func() { closed <- ln.Close() }()
	select {
	case <-closed:
	case <-time.After(5 * time.Second):
		t.Fatal("Listener.Close waits out a bootstrap")
	}
	rdmatest.NoTransportGoroutines(t, "after Listener.Close")
	select {
	case err := <-sh.Closes:
		t.Fatalf("the handler heard of an abandoned bootstrap: %v", err)
	default: // the bootstrap's goroutine has ended: it would have told it by now
	}
}
