package ibv

import (
	"bytes"
	"errors"
	"strings"
	"syscall"
	"testing"
	"time"
)

// end is one side of an emulated connection.
type end struct {
	ctx Context
	pd  PD
	ch  CompChannel
	cq  CQ
	qp  QP
	mr  MR
	buf []byte
}

func newEnd(t *testing.T, e *Emulator, bufBytes int) *end {
	t.Helper()
	ctx, err := e.Open("emu0")
	if err != nil {
		t.Fatal(err)
	}
	x := &end{ctx: ctx, buf: make([]byte, bufBytes)}
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	x.pd, err = ctx.AllocPD()
	must(err)
	x.ch, err = ctx.NewCompChannel()
	must(err)
	x.cq, err = ctx.NewCQ(64, x.ch)
	must(err)
	x.qp, err = x.pd.NewQP(x.cq, QPCaps{MaxSendWR: 16, MaxRecvWR: 16, MaxInline: 64})
	must(err)
	x.mr, err = x.pd.Register(x.buf, AccessLocalWrite|AccessRemoteWrite)
	must(err)
	must(x.qp.Init(1, AccessRemoteWrite))
	return x
}

func (x *end) close(t *testing.T) {
	t.Helper()
	for _, f := range []func() error{x.qp.Close, x.mr.Deregister, x.cq.Close, x.ch.Close, x.pd.Close, x.ctx.Close} {
		if err := f(); err != nil {
			t.Error(err)
		}
	}
}

func connect(t *testing.T, a, b *end, rnrRetry uint8) {
	t.Helper()
	gid, _ := a.ctx.GID(1, 1)
	for _, p := range []struct{ x, y *end }{{a, b}, {b, a}} {
		if err := p.x.qp.ReadyToReceive(RTRAttr{Port: 1, MTU: MTU1024, DestQPN: p.y.qp.Num(), Global: true, DestGID: gid, SGIDIndex: 1, HopLimit: 1, MinRNRTimer: 12}); err != nil {
			t.Fatal(err)
		}
		if err := p.x.qp.ReadyToSend(RTSAttr{Timeout: 14, RetryCnt: 7, RNRRetry: rnrRetry}); err != nil {
			t.Fatal(err)
		}
	}
}

func poll(t *testing.T, x *end) WC {
	t.Helper()
	var wc [1]WC
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		n, err := x.cq.Poll(wc[:])
		if err != nil {
			t.Fatal(err)
		}
		if n == 1 {
			return wc[0]
		}
		if err := x.cq.Notify(); err != nil {
			t.Fatal(err)
		}
		if n, _ := x.cq.Poll(wc[:]); n == 1 {
			return wc[0]
		}
		if _, err := x.ch.Wait(50 * time.Millisecond); err != nil {
			t.Fatal(err)
		}
	}
	t.Fatal("no completion within 5s")
	return WC{}
}

func empty(t *testing.T, x *end) {
	t.Helper()
	var wc [1]WC
	if n, _ := x.cq.Poll(wc[:]); n != 0 {
		t.Fatalf("unexpected completion %+v", wc[0])
	}
}

func TestEmuWriteWithImm(t *testing.T) {
	e := NewEmulator(EmuOptions{})
	a, b := newEnd(t, e, 4096), newEnd(t, e, 4096)
	connect(t, a, b, 7)
	copy(a.buf, "hello, remote memory")
	if err := b.qp.PostRecv(&RecvWR{ID: 77, Addr: b.mr.Addr(), Len: 64, LKey: b.mr.LKey()}); err != nil {
		t.Fatal(err)
	}
	err := a.qp.PostSend(&SendWR{ID: 1, Op: OpWriteWithImm, Signaled: true, Addr: a.mr.Addr(), Len: 20, LKey: a.mr.LKey(),
		RemoteAddr: b.mr.Addr() + 100, RKey: b.mr.RKey(), Imm: 0xdeadbeef})
	if err != nil {
		t.Fatal(err)
	}
	if wc := poll(t, a); wc.ID != 1 || wc.Status != StatusSuccess || wc.Op != WCWrite {
		t.Fatalf("sender completion %+v", wc)
	}
	wc := poll(t, b)
	if wc.ID != 77 || wc.Op != WCRecvWriteWithImm || !wc.HasImm || wc.Imm != 0xdeadbeef || wc.Len != 20 {
		t.Fatalf("receiver completion %+v", wc)
	}
	if got := string(b.buf[100:120]); got != "hello, remote memory" {
		t.Fatalf("remote memory holds %q", got)
	}
	if !bytes.Equal(b.buf[:100], make([]byte, 100)) {
		t.Fatal("write touched bytes before its target")
	}
	a.close(t)
	b.close(t)
	if l := e.Live(); l != (EmuLive{}) {
		t.Fatalf("leaked %+v", l)
	}
}

func TestEmuSendWaitsForReceiveWithRNRRetry7(t *testing.T) {
	e := NewEmulator(EmuOptions{})
	a, b := newEnd(t, e, 4096), newEnd(t, e, 4096)
	defer a.close(t)
	defer b.close(t)
	connect(t, a, b, 7)
	copy(a.buf, "first")
	copy(a.buf[8:], "second")
	for i, off := range []uint64{0, 8} {
		if err := a.qp.PostSend(&SendWR{ID: uint64(i), Op: OpSend, Signaled: true, Addr: a.mr.Addr() + off, Len: 6, LKey: a.mr.LKey()}); err != nil {
			t.Fatal(err)
		}
	}
	empty(t, a) // both wait: no receive posted
	empty(t, b)
	for i := 0; i < 2; i++ {
		if err := b.qp.PostRecv(&RecvWR{ID: uint64(10 + i), Addr: b.mr.Addr() + uint64(64*i), Len: 64, LKey: b.mr.LKey()}); err != nil {
			t.Fatal(err)
		}
	}
	for i := 0; i < 2; i++ {
		if wc := poll(t, a); wc.ID != uint64(i) || wc.Status != StatusSuccess {
			t.Fatalf("send %d completion %+v", i, wc)
		}
		if wc := poll(t, b); wc.ID != uint64(10+i) || wc.Op != WCRecv || wc.Len != 6 {
			t.Fatalf("receive %d completion %+v", i, wc)
		}
	}
	if string(b.buf[:5]) != "first" || string(b.buf[64:70]) != "second" {
		t.Fatalf("received %q, %q", b.buf[:5], b.buf[64:70])
	}
}

func TestEmuErrors(t *testing.T) {
	tests := []struct {
		desc     string
		rnrRetry uint8
		wr       func(a, b *end) SendWR
		want     WCStatus
	}{
		{"RNR without retry", 0, func(a, b *end) SendWR {
			return SendWR{Op: OpSend, Addr: a.mr.Addr(), Len: 8, LKey: a.mr.LKey()}
		}, StatusRNRRetryExc},
		{"bad rkey", 7, func(a, b *end) SendWR {
			return SendWR{Op: OpWrite, Addr: a.mr.Addr(), Len: 8, LKey: a.mr.LKey(), RemoteAddr: b.mr.Addr(), RKey: b.mr.RKey() + 100}
		}, StatusRemAccessErr},
		{"write past the region", 7, func(a, b *end) SendWR {
			return SendWR{Op: OpWrite, Addr: a.mr.Addr(), Len: 8, LKey: a.mr.LKey(), RemoteAddr: b.mr.Addr() + 4090, RKey: b.mr.RKey()}
		}, StatusRemAccessErr},
		{"bad lkey", 7, func(a, b *end) SendWR {
			return SendWR{Op: OpWrite, Addr: a.mr.Addr(), Len: 8, LKey: 3, RemoteAddr: b.mr.Addr(), RKey: b.mr.RKey()}
		}, StatusLocProtErr},
	}
	for _, tt := range tests {
		t.Run(tt.desc, func(t *testing.T) {
			e := NewEmulator(EmuOptions{})
			a, b := newEnd(t, e, 4096), newEnd(t, e, 4096)
			defer a.close(t)
			defer b.close(t)
			connect(t, a, b, tt.rnrRetry)
			wr := tt.wr(a, b)
			wr.ID = 5
			if err := a.qp.PostSend(&wr); err != nil {
				t.Fatal(err)
			}
			wc := poll(t, a)
			if wc.ID != 5 || wc.Status != tt.want || wc.StatusText != tt.want.String() {
				t.Fatalf("completion %+v, want status %v", wc, tt.want)
			}
			// The QP is in ERROR now: later work is flushed.
			if err := a.qp.PostSend(&SendWR{ID: 6, Op: OpSend}); err != nil {
				t.Fatal(err)
			}
			if wc := poll(t, a); wc.ID != 6 || wc.Status != StatusFlushErr {
				t.Fatalf("after the error: %+v", wc)
			}
		})
	}
}

func TestEmuDeadPeerAndFlush(t *testing.T) {
	e := NewEmulator(EmuOptions{})
	a, b := newEnd(t, e, 4096), newEnd(t, e, 4096)
	defer a.close(t)
	connect(t, a, b, 7)
	// A send waiting for a receive fails when the peer dies.
	if err := a.qp.PostSend(&SendWR{ID: 1, Op: OpSend, Signaled: true, Addr: a.mr.Addr(), Len: 8, LKey: a.mr.LKey()}); err != nil {
		t.Fatal(err)
	}
	if err := a.qp.PostRecv(&RecvWR{ID: 2, Addr: a.mr.Addr(), Len: 64, LKey: a.mr.LKey()}); err != nil {
		t.Fatal(err)
	}
	empty(t, a)
	b.close(t)
	if wc := poll(t, a); wc.ID != 1 || wc.Status != StatusRetryExcErr {
		t.Fatalf("send to a dead peer: %+v", wc)
	}
	if wc := poll(t, a); wc.ID != 2 || wc.Status != StatusFlushErr {
		t.Fatalf("receive flushed: %+v", wc)
	}
}

func TestEmuMemlock(t *testing.T) {
	e := NewEmulator(EmuOptions{MemlockBytes: 64 << 10})
	ctx, _ := e.Open("emu0")
	pd, _ := ctx.AllocPD()
	m, err := pd.Register(make([]byte, 32<<10), AccessLocalWrite)
	if err != nil {
		t.Fatal(err)
	}
	_, err = pd.Register(make([]byte, 64<<10), AccessLocalWrite)
	if !errors.Is(err, syscall.ENOMEM) {
		t.Fatalf("register past the limit: %v", err)
	}
	for _, want := range []string{"ibv_reg_mr", "cannot allocate memory", "RLIMIT_MEMLOCK is 64 KiB", "registering 64 KiB"} {
		if !strings.Contains(strings.ToLower(err.Error()), strings.ToLower(want)) {
			t.Errorf("error %q does not say %q", err, want)
		}
	}
	if err := pd.Close(); !errors.Is(err, syscall.EBUSY) {
		t.Errorf("closing a PD with an MR: %v", err)
	}
	m.Deregister()
	pd.Close()
	ctx.Close()
	if l := e.Live(); l != (EmuLive{}) {
		t.Fatalf("leaked %+v", l)
	}
}

func TestEmuWrongGIDNeverConnects(t *testing.T) {
	e := NewEmulator(EmuOptions{})
	a, b := newEnd(t, e, 4096), newEnd(t, e, 4096)
	defer a.close(t)
	defer b.close(t)
	var wrong GID
	wrong[0] = 0xfe
	if err := a.qp.ReadyToReceive(RTRAttr{Port: 1, MTU: MTU1024, DestQPN: b.qp.Num(), Global: true, DestGID: wrong, SGIDIndex: 1}); err != nil {
		t.Fatal(err)
	}
	if err := a.qp.ReadyToSend(RTSAttr{RetryCnt: 7, RNRRetry: 7}); err != nil {
		t.Fatal(err)
	}
	gid, _ := b.ctx.GID(1, 1)
	b.qp.ReadyToReceive(RTRAttr{Port: 1, MTU: MTU1024, DestQPN: a.qp.Num(), Global: true, DestGID: gid, SGIDIndex: 1})
	b.qp.ReadyToSend(RTSAttr{RetryCnt: 7, RNRRetry: 7})
	b.qp.PostRecv(&RecvWR{ID: 9, Addr: b.mr.Addr(), Len: 64, LKey: b.mr.LKey()})
	a.qp.PostSend(&SendWR{ID: 1, Op: OpSend, Addr: a.mr.Addr(), Len: 8, LKey: a.mr.LKey()})
	if wc := poll(t, a); wc.Status != StatusRetryExcErr {
		t.Fatalf("send to the wrong GID: %+v", wc)
	}
}
