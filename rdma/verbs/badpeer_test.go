package verbs

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/gobps/gobps/proto"
	"github.com/gobps/gobps/rdma"
	"github.com/gobps/gobps/rdma/ibv"
	"github.com/gobps/gobps/rdma/internal/rdmatest"
)

// This file tests the driver against a peer that breaks the protocol: the
// server's end of a connection SENDs control messages it should not, and
// the client's end must close with the protocol machine's reason, never
// hang a Send or crash. (The machine's own verdicts are tested in
// protocol_test.go and protocol_random_test.go.)

// inject SENDs msg from c's control slots, as a control message of c's
// own would go.
func inject(t *testing.T, c *conn, msg []byte) {
	t.Helper()
	c.mu.Lock()
	slot, ok := c.takeCtlLocked()
	c.mu.Unlock()
	if !ok {
		t.Fatal("the injecting connection has failed")
	}
	b := c.ctlBuf(slot)
	n := copy(b, msg)
	if err := c.postSend(&ibv.SendWR{ID: wrID(wrCred, uint32(slot)), Op: ibv.OpSend, Signaled: true,
		Addr: c.slabAddr(b), Len: uint32(n), LKey: c.mr.LKey(), Inline: n <= c.inl}); err != nil {
		t.Fatal(err)
	}
}

func credit(id uint32) []byte {
	b := make([]byte, creditSize)
	putMsgHeader(b, msgCredit, 0, id)
	return b
}

// pollUntil polls cond, under c.mu, for at most 10 s.
func pollUntil(t *testing.T, c *conn, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(time.Millisecond) {
		c.mu.Lock()
		ok := cond()
		c.mu.Unlock()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within 10s", what)
		}
	}
}

// TestVerbsEmuBadPeer: messages no honest peer sends close the connection
// as bad frames with the machine's reason.
func TestVerbsEmuBadPeer(t *testing.T) {
	m := make([]byte, ctlSlotBytes)
	n := (&cts{sid: 77, slot: 1, n: 10}).encode(m)
	for _, tt := range []struct {
		desc, want string
		msg        []byte
	}{
		{"credit never granted", "credit for stable destination 9, which was never granted", credit(9)},
		{"CTS for no send", "CTS for send 77, which is not waiting for one", m[:n]},
		{"CTS of a bad size", "CTS of 9 bytes, want 32", append(m[:8:8], 0)},
		{"unknown kind", "message kind 9", []byte{9, 0, 0, 0, 0, 0, 0, 0}},
	} {
		t.Run(tt.desc, func(t *testing.T) {
			srv, cli := emuKind(ibv.EmuOptions{}).Make(t, rdma.Options{})
			sh := rdmatest.NewRec()
			c, ch := rdmatest.Connect(t, srv, cli, sh)
			if err := c.Send(proto.Header{Op: proto.OpPush, DType: proto.Uint8}, []byte("hello")); err != nil {
				t.Fatal(err)
			}
			sh.Next(t)
			inject(t, (<-sh.Conns).(*conn), tt.msg)
			err := ch.WaitClosed(t, 5*time.Second)
			if !errors.Is(err, proto.ErrBadFrame) || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("closed with %v, want a bad frame: %s", err, tt.want)
			}
		})
	}
}

// TestVerbsEmuCreditWhileHeld: a credit that comes while a Send holds the
// stable destination's one credit (taken, not yet used) is not due: the
// connection fails, and the Send, which then cannot use the credit and
// gives it back, returns at once. The code before the protocol machine
// took that credit into the grant's channel of one, and the Send's give-back
// then blocked forever on the full channel (and Transport.Close with it).
func TestVerbsEmuCreditWhileHeld(t *testing.T) {
	srv, cli := emuKind(ibv.EmuOptions{}).Make(t, rdma.Options{})
	cv := cli.(*Transport)
	sh := &stableRec{Rec: rdmatest.NewRec(), bufs: map[proto.Key][]byte{}}
	c, ch := rdmatest.Connect(t, srv, cli, sh)
	cc := c.(*conn)
	key := proto.MakeKey(3, 0)
	push := func() error {
		return c.Send(proto.Header{Op: proto.OpPush, DType: proto.Uint8, Key: key}, make([]byte, 8<<10))
	}
	if err := push(); err != nil { // the grant
		t.Fatal(err)
	}
	sh.Next(t)
	sc := (<-sh.Conns).(*conn)
	sc.Release(proto.OpPush, key)
	g := func() *grant { return cc.mu.p.grants[stableKey{proto.OpPush, key}] }
	pollUntil(t, cc, "the credit", func() bool { return g() != nil && g().credit == creditHeld })

	// The next Send takes the credit and stops in the MR cache, held here.
	cv.cache.mu.Lock()
	locked := true
	defer func() {
		if locked {
			cv.cache.mu.Unlock()
		}
	}()
	sent := make(chan error, 1)
	go func() { sent <- push() }()
	pollUntil(t, cc, "the Send taking the credit", func() bool { return g().credit == creditTaken })
	inject(t, sc, credit(0))
	err := ch.WaitClosed(t, 5*time.Second)
	if !errors.Is(err, proto.ErrBadFrame) || !strings.Contains(err.Error(), "second credit for stable destination 0") {
		t.Fatalf("closed with %v", err)
	}
	// The Send's registration fails: it gives the credit back and returns.
	cv.cache.closed = true
	cv.cache.mu.Unlock()
	locked = false
	select {
	case err := <-sent:
		if err == nil {
			t.Fatal("the Send succeeded")
		}
		t.Logf("the Send: %v", err)
	case <-time.After(5 * time.Second):
		t.Fatal("the Send hangs after giving back its credit")
	}
	cv.cache.mu.Lock()
	cv.cache.closed = false
	cv.cache.mu.Unlock()
}
