package rdma_test

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/gobps/gobps/proto"
	"github.com/gobps/gobps/rdma"
	"github.com/gobps/gobps/rdma/ibv"
	"github.com/gobps/gobps/rdma/internal/rdmatest"
	"github.com/gobps/gobps/rdma/tcp"
	"github.com/gobps/gobps/rdma/verbs"
)

// This file tests what every transport must do the same way, on TCP, on
// verbs over the emulation (everywhere) and on verbs over a real device
// (TestVerbsRealBehaviours: where one is usable, e.g. rxe in the QEMU guest
// of scripts/rdma_qemu.sh; it skips elsewhere, and fails instead when
// GOBPS_IN_QEMU=1): frames, refusals, failures, back-pressure, the hello
// and frame admission, and the lifecycle of transports, listeners and
// connections. Each implementation's own protocol is tested in its
// package.

var tcpKind = rdmatest.TCPKind(func(opt rdma.Options) rdma.Transport { return tcp.New(opt) })

// emuKind runs two verbs transports, as two processes would, on one
// emulated fabric.
func emuKind(eopt ibv.EmuOptions) rdmatest.Kind {
	return rdmatest.Kind{Name: "verbs-emu", Verbs: true, Make: func(t *testing.T, opt rdma.Options) (rdma.Transport, rdma.Transport) {
		rdmatest.CheckLeaks(t)
		e := ibv.NewEmulator(eopt)
		opt.GIDIndex = -1
		srv, why, err := verbs.New(e, opt)
		if err != nil {
			t.Fatalf("%s: %v", why, err)
		}
		cli, _, err := verbs.New(e, opt)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			rdmatest.Close(t, cli, srv)
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
	srv, why, err := verbs.New(lib, opt)
	if err != nil {
		t.Fatalf("%s: %v", why, err)
	}
	t.Logf("%s", why)
	cli, _, err := verbs.New(lib, opt)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { rdmatest.Close(t, cli, srv) })
	return srv, cli
}}

// realLib returns libibverbs if a usable device exists; otherwise the test
// skips saying what is missing, or fails when GOBPS_IN_QEMU=1 (the QEMU
// harness's proof that real verbs ran). rdma.Open, forced to verbs, says
// why verbs cannot be used.
func realLib(t *testing.T) ibv.Library {
	t.Helper()
	tr, why, err := rdma.Open(rdma.Options{Mode: rdma.ModeForce, GIDIndex: -1})
	if err != nil {
		skipOrFail(t, why)
	}
	tr.Close()
	lib, err := ibv.Load()
	if err != nil {
		skipOrFail(t, err.Error())
	}
	return lib
}

func skipOrFail(t *testing.T, why string) {
	t.Helper()
	if os.Getenv("GOBPS_IN_QEMU") == "1" {
		t.Fatalf("GOBPS_IN_QEMU=1 but verbs cannot be used: %s", why)
	}
	t.Skipf("no usable RDMA device: %s", why)
}

var behaviours = []struct {
	name string
	run  func(t *testing.T, k rdmatest.Kind)
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
	{"NoHelloCloses", testNoHello},
	{"HelloInTimeStays", testHelloInTime},
	{"TransportCloseEndsConns", testTransportClose},
	{"ListenerCloseKeepsConns", testListenerClose},
	{"CloseFromHandle", testCloseInHandle},
}

func runBehaviours(t *testing.T, k rdmatest.Kind) {
	for _, b := range behaviours {
		t.Run(b.name, func(t *testing.T) { b.run(t, k) })
	}
}

func TestTransportBehaviours(t *testing.T) {
	for _, k := range []rdmatest.Kind{tcpKind, emuKind(ibv.EmuOptions{})} {
		t.Run(k.Name, func(t *testing.T) { runBehaviours(t, k) })
	}
}

// TestVerbsRealBehaviours runs the shared behaviours on the real device.
func TestVerbsRealBehaviours(t *testing.T) {
	realLib(t)
	runBehaviours(t, realKind)
}

func testPayloadLandsInDestination(t *testing.T, k rdmatest.Kind) {
	for _, sum := range []bool{false, true} {
		t.Run(fmt.Sprintf("checksum=%v", sum), func(t *testing.T) {
			srv, cli := k.Make(t, rdma.Options{Checksum: sum})
			sh := rdmatest.NewRec()
			dst := make([]byte, 1<<20)
			sh.DestFn = func(_ rdma.Conn, h *proto.Header) ([]byte, error) { return dst[:h.Length], nil }
			c, _ := rdmatest.Connect(t, srv, cli, sh)
			p := rdmatest.Pattern(make([]byte, 1<<20), 1)
			if err := c.Send(proto.Header{Op: proto.OpPush, DType: proto.Float32, Key: 9, Round: 3}, p); err != nil {
				t.Fatal(err)
			}
			f := sh.Next(t)
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

func testRefusedPayload(t *testing.T, k rdmatest.Kind) {
	srv, cli := k.Make(t, rdma.Options{})
	sh := rdmatest.NewRec()
	sh.DestFn = func(_ rdma.Conn, h *proto.Header) ([]byte, error) {
		if h.Key == 1 {
			return nil, errors.New("key 1 was never declared")
		}
		return make([]byte, h.Length), nil
	}
	c, _ := rdmatest.Connect(t, srv, cli, sh)
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
		if f := sh.Next(t); f.Err == nil || f.Payload != nil || !strings.Contains(f.Err.Error(), "never declared") {
			t.Fatalf("refused frame: %+v", f)
		}
	}
	if f := sh.Next(t); f.Err != nil || string(f.Payload) != "ok" {
		t.Fatalf("next frame after a refusal: %+v", f)
	}
}

func testControlFrames(t *testing.T, k rdmatest.Kind) {
	srv, cli := k.Make(t, rdma.Options{})
	sh := rdmatest.NewRec()
	c, _ := rdmatest.Connect(t, srv, cli, sh)
	decls := make([]proto.Decl, 5000) // 120 KB: too big for an eager SEND
	for i := range decls {
		decls[i] = proto.Decl{Key: proto.MakeKey(uint32(i), 0), DType: proto.Float32, Root: proto.NoRoot, Bytes: 4}
	}
	frames := []struct {
		h proto.Header
		p []byte
	}{
		{proto.Header{Op: proto.OpHello, Sender: 3 << 24}, nil}, // sent by Dial (rdmatest.Self)
		{proto.Header{Op: proto.OpError, ReqID: 7}, []byte("boom")},
		{proto.Header{Op: proto.OpDeclare, ReqID: 8}, proto.EncodeDecls(decls)},
		{proto.Header{Op: proto.OpPull, Key: 5, Round: 2, ReqID: 9}, nil},
	}
	for _, f := range frames[1:] {
		if err := c.Send(f.h, f.p); err != nil {
			t.Fatal(err)
		}
	}
	for i, want := range frames {
		var f rdmatest.Frame
		if i == 0 {
			f = sh.NextHello(t)
		} else {
			f = sh.Next(t)
		}
		if f.Err != nil || f.H.Op != want.h.Op || f.H.ReqID != want.h.ReqID || !bytes.Equal(f.Payload, want.p) {
			t.Fatalf("got %v (%d bytes, %v), want %v", &f.H, len(f.Payload), f.Err, &want.h)
		}
	}
}

func testPeerClose(t *testing.T, k rdmatest.Kind) {
	srv, cli := k.Make(t, rdma.Options{})
	sh := rdmatest.NewRec()
	c, ch := rdmatest.Connect(t, srv, cli, sh)
	sh.NextHello(t)
	c.Close()
	if err := ch.WaitClosed(t, 5*time.Second); err != nil {
		t.Fatalf("own close reported as %v", err)
	}
	if err := sh.WaitClosed(t, 5*time.Second); err == nil {
		t.Fatal("peer close reported as nil")
	}
	if err := c.Send(proto.Header{Op: proto.OpHello}, nil); err == nil {
		t.Fatal("send after close succeeded")
	}
	if err := c.Send(proto.Header{Op: proto.OpPush, DType: proto.Uint8}, []byte("x")); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("send after close: %v, want net.ErrClosed", err)
	}
}

func testConcurrentSends(t *testing.T, k rdmatest.Kind) {
	srv, cli := k.Make(t, rdma.Options{})
	sh := rdmatest.NewRec()
	sh.DestFn = func(_ rdma.Conn, h *proto.Header) ([]byte, error) { return make([]byte, h.Length), nil }
	c, _ := rdmatest.Connect(t, srv, cli, sh)
	if err := rdmatest.SendMany(c, sh, proto.OpPush, 8, 40, 200<<10); err != nil {
		t.Fatal(err)
	}
}

func testBackPressure(t *testing.T, k rdmatest.Kind) {
	srv, cli := k.Make(t, rdma.Options{SendDepth: 2, RecvDepth: 2})
	sh := rdmatest.NewRec()
	sh.DestFn = func(_ rdma.Conn, h *proto.Header) ([]byte, error) { return make([]byte, h.Length), nil }
	c, _ := rdmatest.Connect(t, srv, cli, sh)
	if err := rdmatest.SendMany(c, sh, proto.OpPush, 4, 100, 10<<10); err != nil {
		t.Fatal(err)
	}
}

// testBothWays sends from both ends at once with tiny depths, so that
// each side's sends wait for the other's receives (RNR on verbs) while its
// own receives wait on its handler: nothing may deadlock.
func testBothWays(t *testing.T, k rdmatest.Kind) {
	srv, cli := k.Make(t, rdma.Options{SendDepth: 2, RecvDepth: 1})
	sh := rdmatest.NewRec()
	alloc := func(_ rdma.Conn, h *proto.Header) ([]byte, error) { return make([]byte, h.Length), nil }
	sh.DestFn = alloc
	c, ch := rdmatest.Connect(t, srv, cli, sh)
	ch.SetDest(alloc)
	sh.NextHello(t)
	sc := <-sh.Conns
	// Tensors go both ways as they do between a worker and a server:
	// pushes to the server, answers back.
	back := make(chan error, 1)
	go func() { back <- rdmatest.SendMany(sc, ch, proto.OpPullResp, 3, 60, 8<<10) }()
	if err := rdmatest.SendMany(c, sh, proto.OpPush, 3, 60, 8<<10); err != nil {
		t.Fatal(err)
	}
	if err := <-back; err != nil {
		t.Fatal(err)
	}
}

func testCRCMismatch(t *testing.T, k rdmatest.Kind) {
	srv, cli := k.Make(t, rdma.Options{}) // no checksum option: the header below goes as given
	sh := rdmatest.NewRec()
	sh.DestFn = func(_ rdma.Conn, h *proto.Header) ([]byte, error) { return make([]byte, h.Length), nil }
	c, _ := rdmatest.Connect(t, srv, cli, sh)
	p := rdmatest.Pattern(make([]byte, 64<<10), 3)
	h := proto.Header{Op: proto.OpPush, DType: proto.Uint8, Flags: proto.FlagCRC, CRC: proto.Checksum(p) + 1}
	c.Send(h, p) // may fail: the receiver closes the connection
	err := sh.WaitClosed(t, 5*time.Second)
	if !errors.Is(err, proto.ErrBadFrame) || !strings.Contains(err.Error(), "crc") {
		t.Fatalf("closed with %v, want a crc error", err)
	}
	select {
	case f := <-sh.Frames:
		t.Fatalf("frame with a bad CRC handed over: %v", &f.H)
	default:
	}
}

func testGarbage(t *testing.T, k rdmatest.Kind) {
	srv, cli := k.Make(t, rdma.Options{})
	sh := rdmatest.NewRec()
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
	err = sh.WaitClosed(t, 5*time.Second)
	if !errors.Is(err, proto.ErrBadFrame) || !strings.Contains(err.Error(), "magic") {
		t.Fatalf("closed with %v", err)
	}
	// The listener still serves others.
	rdmatest.Dial(t, cli, ln.Addr(), 4, rdmatest.NewRec())
	if f := sh.NextHello(t); f.H.Sender != 4 {
		t.Fatalf("%+v", f)
	}
}

func testPushPull(t *testing.T, k rdmatest.Kind) {
	srv, cli := k.Make(t, rdma.Options{})
	rdmatest.PushPullRounds(t, srv, cli, 4, 96<<10, 0, 3)
}

// TestOpenHere runs Open on this machine: where no RDMA device exists it
// must fall back to TCP and say why; forced, it must fail with that reason.
func TestOpenHere(t *testing.T) {
	tr, why, err := rdma.Open(rdma.Options{GIDIndex: -1})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("Open: %s: %s", tr.Caps().Name, why)
	if tr.Caps().Name == "verbs" {
		tr.Close()
		return
	}
	if why == "" || !strings.HasSuffix(why, "; using TCP") {
		t.Fatalf("fell back to TCP with reason %q", why)
	}
	_, fwhy, err := rdma.Open(rdma.Options{Mode: rdma.ModeForce, GIDIndex: -1})
	if err == nil || !strings.Contains(err.Error(), fwhy) || !strings.HasPrefix(why, fwhy) {
		t.Fatalf("forced: %v (reason %q), auto said %q", err, fwhy, why)
	}
	if tr, why, _ := rdma.Open(rdma.Options{Mode: rdma.ModeOff}); tr.Caps().Name != "tcp" || !strings.Contains(why, "BYTEPS_ENABLE_RDMA=0") {
		t.Fatalf("off: %s, %q", tr.Caps().Name, why)
	}
}
