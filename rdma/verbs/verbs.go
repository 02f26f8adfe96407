package verbs

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gobps/gobps/proto"
	"github.com/gobps/gobps/rdma"
	"github.com/gobps/gobps/rdma/ibv"
)

// conn is one connection: an RC queue pair with its own CQ and
// completion channel, a registered slab of receive buffers, eager send
// buffers and control slots, and the TCP socket it was bootstrapped over,
// kept open as a liveness channel. It is the driver of the connection's
// protocol machine (protocol): it posts work requests, polls completions,
// registers memory and wakes waiting Sends, and asks the machine for every
// decision (which id, slot or buffer; whether a message of the peer's is
// legal; where a write landed; what to release).
//
// Goroutines: poll (completions; never calls the rdma.Handler), serve (the
// rdma.Handler's goroutine: Dest, Handle, Closed) and watch (the TCP socket).
// Sends and Releases run on the callers' goroutines.
type conn struct {
	t        *Transport
	h        rdma.Handler
	nc       net.Conn
	remote   string
	checksum bool
	peer     qpInfo

	ch  ibv.CompChannel
	cq  ibv.CQ
	qp  ibv.QP
	mr  ibv.MR // the slab
	inl int    // QP's inline limit

	// slab layout: nRecv receive buffers, nEager eager send buffers (each
	// eagerBytes), nCtl control slots (each ctlSlotBytes).
	slab             []byte
	nRecv, nEager    int
	nCtl             int
	eagerOff, ctlOff int

	events chan event // poll → serve

	// qpMu orders posting against destruction: posters hold it shared and
	// check qpGone; the poller destroys the QP holding it exclusively.
	qpMu   sync.RWMutex
	qpGone bool
	// outstanding counts posted work requests not yet completed.
	outstanding atomic.Int64

	// Locking: mu guards the protocol machine, which every goroutine of
	// the connection calls (see protocol), and why the connection failed.
	// It is never held while posting, waiting or calling the handler.
	mu struct {
		sync.Mutex
		p        *protocol
		err      error // why it failed; nil when this side closed it
		graceful bool  // the peer closed its end: deliver what has arrived
		// wake[k] is closed, and cleared, when something a Send or
		// Release waits for (a resource of kind k) may have come free;
		// nil while nobody waits.
		wake [nWait]chan struct{}
	}
	done       chan struct{} // closed when the connection starts failing
	pollerDone chan struct{} // the poller exited
	dead       chan struct{} // the QP is destroyed: the NIC touches nothing of ours any more

	// Owned by serve.
	adm       rdma.Admission
	helloWait time.Duration // accepted connections: the hello timeout
	helloBy   time.Time     // and when it ends; zero for dialed ones
}

// waitFor names what a Send or Release may wait for.
type waitFor uint8

const (
	waitToken  waitFor = iota // one of SendDepth frames in flight
	waitEager                 // an eager send buffer
	waitCtl                   // a control slot
	waitCredit                // the credit of a stable destination of the peer's
	nWait
)

// waitLocked waits until something of kind k may have come free, and
// returns true; or false once the connection has failed. REQUIRES: c.mu,
// which it releases while it waits and holds again when it returns.
func (c *conn) waitLocked(k waitFor) bool {
	ch := c.mu.wake[k]
	if ch == nil {
		ch = make(chan struct{})
		c.mu.wake[k] = ch
	}
	c.mu.Unlock()
	ok := true
	select {
	case <-ch:
	case <-c.done:
		ok = false
	}
	c.mu.Lock()
	return ok
}

// wakeLocked wakes everything waiting for kind k: it may have come free.
// REQUIRES: c.mu.
func (c *conn) wakeLocked(k waitFor) {
	if ch := c.mu.wake[k]; ch != nil {
		close(ch)
		c.mu.wake[k] = nil
	}
}

// takeCtlLocked takes a control slot, waiting for one; false once the
// connection has failed. REQUIRES: c.mu (released while it waits).
func (c *conn) takeCtlLocked() (int, bool) {
	for {
		if slot, ok := c.mu.p.takeCtl(); ok {
			return slot, true
		}
		if !c.waitLocked(waitCtl) {
			return 0, false
		}
	}
}

// putCtl gives back a control slot whose work request completed or was
// never posted.
func (c *conn) putCtl(slot int) {
	c.mu.Lock()
	c.mu.p.putCtl(slot)
	c.wakeLocked(waitCtl)
	c.mu.Unlock()
}

// hdrPage is registered memory for stableHdrPage header slots.
type hdrPage struct {
	buf []byte
	mr  ibv.MR
}

// sendEvent is what a waiting rendezvous or stable Send is woken with: the
// peer's CTS, then its write's completion status. The machine hands out
// each at most once per send, and the Send takes the CTS before it posts
// the write, so a channel of one never blocks the poller.
type sendEvent struct {
	cts    cts
	status ibv.WCStatus
}

type eventKind uint8

const (
	evEager eventKind = iota + 1 // a whole frame in receive buffer buf
	evRTS                        // the peer announces frame sid with header hdr
	evWrite                      // the peer's write into slot landed: n bytes
)

type event struct {
	kind eventKind
	buf  int
	n    uint32
	sid  uint32
	slot uint32
	hdr  [proto.HeaderSize]byte
}

// Work request ids: kind in the top byte, an index or send id below.
const (
	wrRecv  = 1
	wrEager = 2
	wrRTS   = 3
	wrCTS   = 4
	wrWrite = 5
	wrHdr   = 6 // RDMA write of a frame's header into a stable header slot (control slot)
	wrCred  = 7 // credit send (control slot)
)

func wrID(kind int, idx uint32) uint64 { return uint64(kind)<<56 | uint64(idx) }

var wrKindNames = [...]string{wrRecv: "receive", wrEager: "eager send", wrRTS: "RTS send", wrCTS: "CTS send", wrWrite: "RDMA write", wrHdr: "header write", wrCred: "credit send"}

func (c *conn) recvBuf(i int) []byte {
	return c.slab[i*eagerBytes : (i+1)*eagerBytes]
}
func (c *conn) eagerBuf(i int) []byte {
	return c.slab[c.eagerOff+i*eagerBytes : c.eagerOff+(i+1)*eagerBytes]
}
func (c *conn) ctlBuf(i int) []byte {
	return c.slab[c.ctlOff+i*ctlSlotBytes : c.ctlOff+(i+1)*ctlSlotBytes]
}

// slabAddr is the NIC address of b, a piece of the slab.
func (c *conn) slabAddr(b []byte) uint64 {
	return c.mr.Addr() + uint64(cap(c.slab)-cap(b))
}

func (c *conn) RemoteAddr() string { return c.remote }

// Close implements rdma.Conn.
func (c *conn) Close() error {
	c.fail(nil, false)
	return nil
}

// fail ends the connection with err (nil: closed by this side). graceful
// says the peer closed its end, so frames that arrived before are still
// handed over.
func (c *conn) fail(err error, graceful bool) {
	c.mu.Lock()
	if !c.mu.p.fail() {
		c.mu.Unlock()
		return
	}
	c.mu.err, c.mu.graceful = err, graceful
	c.mu.Unlock()
	close(c.done)
	c.nc.Close()
	c.qpMu.RLock()
	if !c.qpGone {
		_ = c.qp.Fail() // flush: every outstanding work request completes
	}
	c.qpMu.RUnlock()
}

func (c *conn) failed() (bool, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.mu.p.failed, c.mu.err
}

// sendErr is what Send returns once the connection has failed.
func (c *conn) sendErr(op proto.Op) error {
	_, err := c.failed()
	if err == nil {
		err = net.ErrClosed
	}
	return fmt.Errorf("rdma: send %s to %s: %w", op, c.remote, err)
}

func (c *conn) postSend(wr *ibv.SendWR) error {
	c.qpMu.RLock()
	defer c.qpMu.RUnlock()
	if c.qpGone {
		return net.ErrClosed
	}
	// Count first: once posted, the peer may see the message before
	// PostSend returns, and a test reading both sides' counters must find
	// it counted.
	// A header write into a stable slot is counted with its frame (Stable).
	var n *atomic.Uint64
	switch wr.Op {
	case ibv.OpSend:
		n = &c.t.cnt.sends
	case ibv.OpWriteWithImm:
		n = &c.t.cnt.writes
	}
	if n != nil {
		n.Add(1)
	}
	c.outstanding.Add(1)
	if err := c.qp.PostSend(wr); err != nil {
		c.outstanding.Add(-1)
		if n != nil {
			n.Add(^uint64(0))
		}
		return err
	}
	return nil
}

func (c *conn) postRecv(i int) error {
	c.qpMu.RLock()
	defer c.qpMu.RUnlock()
	if c.qpGone {
		return net.ErrClosed
	}
	b := c.recvBuf(i)
	c.outstanding.Add(1)
	if err := c.qp.PostRecv(&ibv.RecvWR{ID: wrID(wrRecv, uint32(i)), Addr: c.slabAddr(b), Len: uint32(len(b)), LKey: c.mr.LKey()}); err != nil {
		c.outstanding.Add(-1)
		return err
	}
	return nil
}

// repost gives receive buffer i back to the QP, unless the connection is
// going away.
func (c *conn) repost(i int) {
	if err := c.postRecv(i); err != nil && !errors.Is(err, net.ErrClosed) {
		c.fail(fmt.Errorf("rdma: %s: repost receive: %w", c.remote, err), false)
	}
}

// protoErr fails the connection for a message the peer should not have sent.
func (c *conn) protoErr(format string, args ...any) {
	c.badPeer(badFrame(format, args...))
}

// badPeer fails the connection with err, the protocol machine's verdict on
// a message of the peer's (it wraps proto.ErrBadFrame).
func (c *conn) badPeer(err error) { c.fail(c.fromPeer(err), false) }

// fromPeer says that err is about a message of the peer's.
func (c *conn) fromPeer(err error) error { return fmt.Errorf("rdma: from %s: %w", c.remote, err) }

// watch fails the connection when its TCP socket ends: the peer closed it,
// died, or the network did. This is what makes a dead peer an error rather
// than a hang (RNR retries are infinite while the peer's NIC answers).
func (c *conn) watch() {
	defer c.t.wg.Done()
	var b [1]byte
	_, err := c.nc.Read(b[:])
	switch {
	case err == nil:
		c.protoErr("unexpected data on the bootstrap socket")
	case errors.Is(err, io.EOF):
		c.fail(fmt.Errorf("rdma: %s closed the connection: %w", c.remote, io.EOF), true)
	default:
		c.fail(fmt.Errorf("rdma: connection to %s lost: %w", c.remote, err), false)
	}
}

// Send implements rdma.Conn. A frame without a tensor payload that fits a
// receive buffer goes eagerly, in one SEND (the payload is copied into a
// registered send buffer, so Send returns at once). Others go by
// rendezvous: an RTS with the header, the receiver's CTS with a destination,
// and one RDMA write with immediate straight from payload, which is
// registered through the MR cache; Send returns when the write completed.
// A frame of an (op, key) and length the peer granted a stable destination
// for is written there once the peer's credit is in, with no RTS or CTS.
func (c *conn) Send(h proto.Header, payload []byte) error {
	if err := rdma.Stamp(&h, payload, c.checksum); err != nil {
		return err
	}
	if failed, _ := c.failed(); failed {
		return c.sendErr(h.Op)
	}
	if !c.t.enterSend() {
		return c.sendErr(h.Op)
	}
	defer c.t.leaveSend()
	c.mu.Lock()
	rt, g := c.mu.p.route(&h)
	if g != nil && !c.mu.p.takeCredit(g) {
		// A stable destination of the peer: wait for its credit (the
		// peer's handler released the last frame written there) before
		// taking a token, so that waiting holds up no other frame.
		if hook := c.t.onCreditWait; hook != nil {
			c.mu.Unlock()
			hook()
			c.mu.Lock()
		}
		for !c.mu.p.takeCredit(g) {
			if !c.waitLocked(waitCredit) {
				c.mu.Unlock()
				return c.sendErr(h.Op)
			}
		}
	}
	// A token per frame in flight: blocks while SendDepth frames are.
	for !c.mu.p.takeToken() {
		if !c.waitLocked(waitToken) {
			if g != nil {
				c.mu.p.returnCredit(g)
				c.wakeLocked(waitCredit)
			}
			c.mu.Unlock()
			return c.sendErr(h.Op)
		}
	}
	if rt == routeEager {
		return c.sendEager(&h, payload) // unlocks; the token is returned on completion
	}
	c.mu.Unlock()
	err := c.sendWrite(&h, payload, g)
	c.mu.Lock()
	c.mu.p.putToken()
	c.wakeLocked(waitToken)
	c.mu.Unlock()
	return err
}

// sendEager sends h and payload in one SEND from an eager send buffer,
// holding a token that the SEND's completion gives back. REQUIRES: c.mu,
// which it releases.
func (c *conn) sendEager(h *proto.Header, payload []byte) error {
	i, ok := c.mu.p.takeEager()
	for !ok {
		if !c.waitLocked(waitEager) {
			break
		}
		i, ok = c.mu.p.takeEager()
	}
	if !ok || c.mu.p.failed {
		if ok {
			c.mu.p.putEager(i)
			c.wakeLocked(waitEager)
		}
		c.mu.p.putToken()
		c.wakeLocked(waitToken)
		c.mu.Unlock()
		return c.sendErr(h.Op)
	}
	c.mu.Unlock()
	b := c.eagerBuf(i)
	putMsgHeader(b, msgEager, 0, 0)
	h.Encode(b[msgHeaderSize:])
	n := msgHeaderSize + proto.HeaderSize + copy(b[msgHeaderSize+proto.HeaderSize:], payload)
	if len(payload) > 0 {
		c.t.cnt.copies.Add(1)
		c.t.cnt.copiedBytes.Add(uint64(len(payload)))
	}
	wr := ibv.SendWR{ID: wrID(wrEager, uint32(i)), Op: ibv.OpSend, Signaled: true,
		Addr: c.slabAddr(b), Len: uint32(n), LKey: c.mr.LKey(), Inline: n <= c.inl}
	c.t.cnt.eager.Add(1)
	if err := c.postSend(&wr); err != nil {
		c.t.cnt.eager.Add(^uint64(0))
		c.eagerDone(i)
		if !errors.Is(err, net.ErrClosed) {
			c.fail(fmt.Errorf("rdma: send %s to %s: %w", h.Op, c.remote, err), false)
		}
		return c.sendErr(h.Op)
	}
	return nil
}

// eagerDone gives back eager send buffer i and its frame's token.
func (c *conn) eagerDone(i int) {
	c.mu.Lock()
	c.mu.p.putEager(i)
	c.mu.p.putToken()
	c.wakeLocked(waitEager)
	c.wakeLocked(waitToken)
	c.mu.Unlock()
}

// sendWrite sends a frame written straight from payload, which it
// registers through the MR cache: by rendezvous (an RTS, the peer's CTS,
// the write), or, with g, whose credit it holds, into a stable destination
// of the peer's (an RDMA write of the header into the destination's header
// slot, then the write; the QP executes them in order, so the header is in
// place when the receiver sees the immediate). It returns once the write
// has completed.
func (c *conn) sendWrite(h *proto.Header, payload []byte, g *grant) error {
	ent, err := c.t.cache.get(payload)
	if err != nil {
		if g != nil {
			c.mu.Lock()
			c.mu.p.returnCredit(g) // unused: still ours
			c.wakeLocked(waitCredit)
			c.mu.Unlock()
		}
		return fmt.Errorf("rdma: send %s to %s: %w", h.Op, c.remote, err)
	}
	wake := make(chan sendEvent, 1)
	c.mu.Lock()
	sid, ok := c.mu.p.openSend(h, g, wake)
	if !ok {
		if g != nil {
			c.mu.p.returnCredit(g)
			c.wakeLocked(waitCredit)
		}
		c.mu.Unlock()
		c.t.cache.put(ent)
		return c.sendErr(h.Op)
	}
	slot, ok := c.takeCtlLocked() // for the RTS or the header write
	c.mu.Unlock()
	defer c.closeWrite(ent, sid)
	if !ok {
		return c.sendErr(h.Op)
	}
	b := c.ctlBuf(slot)
	var wr ibv.SendWR
	if g == nil {
		putMsgHeader(b, msgRTS, 0, sid)
		h.Encode(b[msgHeaderSize:])
		wr = ibv.SendWR{ID: wrID(wrRTS, uint32(slot)), Op: ibv.OpSend, Signaled: true,
			Addr: c.slabAddr(b), Len: rtsSize, LKey: c.mr.LKey(), Inline: rtsSize <= c.inl}
	} else {
		b = b[:proto.HeaderSize]
		h.Encode(b)
		wr = ibv.SendWR{ID: wrID(wrHdr, uint32(slot)), Op: ibv.OpWrite, Signaled: true,
			Addr: c.slabAddr(b), Len: proto.HeaderSize, LKey: c.mr.LKey(), RemoteAddr: g.hdrAddr, RKey: g.hdrRKey,
			Inline: proto.HeaderSize <= c.inl}
	}
	if err := c.postSend(&wr); err != nil {
		c.putCtl(slot)
		if !errors.Is(err, net.ErrClosed) {
			verb, what := "send", "RTS"
			if g != nil {
				verb, what = "write", "header"
			}
			c.fail(fmt.Errorf("rdma: %s %s %s to %s: %w", verb, h.Op, what, c.remote, err), false)
		}
		return c.sendErr(h.Op)
	}
	write := ibv.SendWR{ID: wrID(wrWrite, sid), Op: ibv.OpWriteWithImm, Signaled: true,
		Addr: ent.sge(payload), Len: h.Length, LKey: ent.mr.LKey()}
	if g != nil {
		c.t.cnt.stable.Add(1)
		write.RemoteAddr, write.RKey, write.Imm = g.addr, g.rkey, stableBit|g.id
	} else {
		var ev sendEvent
		select {
		case ev = <-wake:
		case <-c.done:
			return c.sendErr(h.Op)
		}
		// The machine checked the CTS (its length, its grant).
		m := &ev.cts
		c.t.cnt.rendezvous.Add(1)
		if m.refused {
			c.t.cnt.refused.Add(1)
			return nil // the receiver discarded it and told its handler, as TCP does
		}
		write.RemoteAddr, write.RKey, write.Imm = m.addr, m.rkey, m.slot
	}
	c.mu.Lock()
	c.mu.p.writePosted(sid)
	c.mu.Unlock()
	if err := c.postSend(&write); err != nil {
		c.mu.Lock()
		c.mu.p.writeNotPosted(sid)
		c.mu.Unlock()
		if !errors.Is(err, net.ErrClosed) {
			c.fail(fmt.Errorf("rdma: write %s to %s: %w", h.Op, c.remote, err), false)
		}
		return c.sendErr(h.Op)
	}
	select {
	case ev := <-wake:
		if ev.status != ibv.StatusSuccess {
			return c.sendErr(h.Op)
		}
		return nil
	case <-c.done:
		return c.sendErr(h.Op)
	}
}

// closeWrite ends a send opened by sendWrite. While the machine says the
// NIC may still read the payload (its write was posted and did not
// complete), it first waits until the QP is gone, so that the memory is
// never reused or evicted under a write.
func (c *conn) closeWrite(ent *mrEntry, sid uint32) {
	c.mu.Lock()
	writing := c.mu.p.closeSend(sid)
	c.mu.Unlock()
	if writing {
		<-c.dead
	}
	c.t.cache.put(ent)
}

// poll takes completions off the CQ, waiting on the completion channel,
// until the connection has failed and every posted work request has
// completed (flushed) or drainTimeout has passed. Then it destroys the QP
// and the connection's verbs objects, and closes dead.
func (c *conn) poll() {
	defer c.t.wg.Done()
	defer close(c.dead)
	defer close(c.pollerDone)
	defer c.destroy()
	wcs := make([]ibv.WC, 32)
	var failedAt time.Time
	for {
		n, err := c.cq.Poll(wcs)
		if err != nil {
			c.fail(fmt.Errorf("rdma: %s: %w", c.remote, err), false)
			return
		}
		for i := range wcs[:n] {
			c.complete(&wcs[i])
		}
		if n == len(wcs) {
			continue
		}
		if failed, _ := c.failed(); failed {
			if c.outstanding.Load() <= 0 {
				return
			}
			if failedAt.IsZero() {
				failedAt = time.Now()
			} else if time.Since(failedAt) > drainTimeout {
				return
			}
		}
		if n > 0 {
			continue
		}
		if err := c.cq.Notify(); err != nil {
			c.fail(fmt.Errorf("rdma: %s: %w", c.remote, err), false)
			return
		}
		// A completion that came between the last poll and Notify raises
		// no event: poll once more before waiting.
		if n, err = c.cq.Poll(wcs); err == nil && n > 0 {
			for i := range wcs[:n] {
				c.complete(&wcs[i])
			}
			continue
		}
		if _, err := c.ch.Wait(pollWait); err != nil {
			c.fail(fmt.Errorf("rdma: %s: %w", c.remote, err), false)
			return
		}
	}
}

// destroy releases the connection's verbs objects once nothing is posted
// (or the drain timed out): after the QP is destroyed the NIC no longer
// reads or writes our memory through it.
func (c *conn) destroy() {
	c.qpMu.Lock()
	c.qpGone = true
	c.qpMu.Unlock()
	var errs []error
	errs = append(errs, c.qp.Close(), c.cq.Close(), c.ch.Close(), c.mr.Deregister())
	c.t.cnt.deregistrations.Add(1)
	if err := errors.Join(errs...); err != nil {
		c.t.logf("rdma: releasing connection with %s: %v", c.remote, err)
	}
}

// complete handles one work completion (poll's goroutine).
func (c *conn) complete(wc *ibv.WC) {
	c.outstanding.Add(-1)
	kind, idx := int(wc.ID>>56), uint32(wc.ID)
	if kind < wrRecv || kind > wrCred {
		c.protoErr("completion with unknown work request id %#x", wc.ID)
		return
	}
	if wc.Status != ibv.StatusSuccess {
		if failed, _ := c.failed(); !failed || wc.Status != ibv.StatusFlushErr {
			text := wc.StatusText
			if text == "" {
				text = wc.Status.String()
			}
			c.fail(fmt.Errorf("rdma: %s with %s failed: %s (status %d, vendor error %#x)",
				wrKindNames[kind], c.remote, text, wc.Status, wc.VendorErr), false)
		}
		if kind == wrWrite {
			c.wrote(idx, wc.Status)
		}
		return
	}
	switch kind {
	case wrRecv:
		c.received(int(idx), wc)
	case wrEager:
		c.eagerDone(int(idx))
	case wrRTS, wrCTS, wrHdr, wrCred:
		c.putCtl(int(idx))
	case wrWrite:
		c.wrote(idx, wc.Status)
	}
}

// wrote hands the completion of send sid's write to its Send, if that is
// still waiting for it.
func (c *conn) wrote(sid uint32, st ibv.WCStatus) {
	c.mu.Lock()
	w := c.mu.p.wrote(sid, st == ibv.StatusSuccess)
	c.mu.Unlock()
	if w != nil {
		w.(chan sendEvent) <- sendEvent{status: st}
	}
}

// received handles a receive completion on buffer i (poll's goroutine).
// Everything but an eager frame is taken out of the buffer at once and the
// buffer reposted; an eager frame's buffer is reposted by serve once the
// frame is copied out.
func (c *conn) received(i int, wc *ibv.WC) {
	if i >= c.nRecv {
		c.protoErr("receive completion for buffer %d of %d", i, c.nRecv)
		return
	}
	if wc.Op == ibv.WCRecvWriteWithImm {
		c.repost(i)
		if !wc.HasImm {
			c.protoErr("RDMA write without immediate data")
			return
		}
		c.event(event{kind: evWrite, slot: wc.Imm, n: wc.Len})
		return
	}
	if wc.Op != ibv.WCRecv {
		c.protoErr("receive completion with opcode %d", wc.Op)
		return
	}
	b := c.recvBuf(i)
	if wc.Len < msgHeaderSize || int(wc.Len) > len(b) {
		c.protoErr("message of %d bytes", wc.Len)
		return
	}
	b = b[:wc.Len]
	switch b[0] {
	case msgEager:
		if len(b) < msgHeaderSize+proto.HeaderSize {
			c.protoErr("eager message of %d bytes", len(b))
			return
		}
		c.event(event{kind: evEager, buf: i, n: wc.Len})
	case msgRTS:
		if len(b) != rtsSize {
			c.protoErr("RTS of %d bytes, want %d", len(b), rtsSize)
			return
		}
		ev := event{kind: evRTS, sid: binary.LittleEndian.Uint32(b[4:])}
		copy(ev.hdr[:], b[msgHeaderSize:])
		c.repost(i)
		c.event(ev)
	case msgCTS:
		m, err := decodeCTS(b)
		c.repost(i)
		if err != nil {
			c.badPeer(err)
			return
		}
		c.mu.Lock()
		w, err := c.mu.p.cts(&m)
		c.mu.Unlock()
		if err != nil {
			c.badPeer(err)
			return
		}
		w.(chan sendEvent) <- sendEvent{cts: m}
	case msgCredit:
		if len(b) != creditSize {
			c.protoErr("credit of %d bytes, want %d", len(b), creditSize)
			return
		}
		id := binary.LittleEndian.Uint32(b[4:])
		c.repost(i)
		c.mu.Lock()
		err := c.mu.p.credit(id)
		if err == nil {
			c.wakeLocked(waitCredit)
		}
		c.mu.Unlock()
		if err != nil {
			c.badPeer(err)
		}
	default:
		c.protoErr("message kind %d", b[0])
	}
}

// event hands ev to serve. The queue is sized so that a peer keeping to
// the depths it announced never fills it.
func (c *conn) event(ev event) {
	select {
	case c.events <- ev:
	default:
		c.protoErr("more messages in flight than the peer's send depth %d allows", c.peer.SendDepth)
	}
}

// serve is the rdma.Handler's goroutine: it turns events into Dest, Handle and
// finally Closed calls.
func (c *conn) serve() {
	defer c.t.wg.Done()
	var err error
	// An accepted connection is closed if its hello is not in by helloBy.
	var helloC <-chan time.Time
	if !c.helloBy.IsZero() {
		timer := time.NewTimer(time.Until(c.helloBy))
		defer timer.Stop()
		helloC = timer.C
	}
loop:
	for {
		select {
		case ev := <-c.events:
			if err = c.handle(&ev); err != nil {
				c.fail(err, false)
				break loop
			}
			if helloC != nil && c.adm.Hello() {
				helloC = nil
			}
		case <-helloC:
			if !c.adm.Hello() {
				err = rdma.NoHello(c.remote, c.helloWait)
				c.fail(err, false)
				break loop
			}
			helloC = nil
		case <-c.done:
			break loop
		}
	}
	<-c.pollerDone
	c.mu.Lock()
	graceful, cerr := c.mu.graceful, c.mu.err
	c.mu.Unlock()
	if graceful && err == nil {
		// The peer closed after its last frames had landed: hand over
		// every complete frame that arrived before the close.
	drain:
		for {
			select {
			case ev := <-c.events:
				if ev.kind == evRTS {
					continue // can no longer be answered
				}
				if err := c.handle(&ev); err != nil {
					cerr = err
					break drain
				}
			default:
				break drain
			}
		}
	}
	<-c.dead
	// No write can land any more: release every registration of the
	// receiving half (open slots, stable destinations, header pages).
	c.mu.Lock()
	regs := c.mu.p.teardown()
	c.mu.Unlock()
	for _, r := range regs {
		c.releaseReg(r)
	}
	c.t.mu.Lock()
	delete(c.t.mu.conns, c)
	c.t.mu.Unlock()
	c.h.Closed(c, cerr)
}

// releaseReg releases a registration the protocol machine hands back: an
// MR cache entry, a temporary MR or a page of header slots.
func (c *conn) releaseReg(r any) {
	var mr ibv.MR
	switch r := r.(type) {
	case *mrEntry:
		c.t.cache.put(r)
		return
	case *hdrPage:
		mr = r.mr
	case ibv.MR:
		mr = r
	default:
		panic(fmt.Sprintf("verbs: release of %T", r))
	}
	if err := mr.Deregister(); err != nil {
		c.t.logf("rdma: %v", err)
	}
	c.t.cnt.deregistrations.Add(1)
}

// handle processes one event on serve's goroutine. An error fails the
// connection.
func (c *conn) handle(ev *event) error {
	switch ev.kind {
	case evEager:
		return c.eager(ev)
	case evRTS:
		return c.rts(ev)
	case evWrite:
		if ev.slot&stableBit != 0 {
			return c.stableLanded(ev.slot&^stableBit, ev.n)
		}
		c.mu.Lock()
		s, err := c.mu.p.landSlot(ev.slot, ev.n)
		c.mu.Unlock()
		if s != nil {
			c.releaseReg(s.reg)
		}
		if err != nil {
			return c.fromPeer(err)
		}
		if err := s.hdr.CheckPayload(s.dst); err != nil {
			return c.fromPeer(err)
		}
		c.h.Handle(c, &s.hdr, s.dst, nil)
	}
	return nil
}

// eager hands over an eager frame, copied out of its receive buffer
// (serve's goroutine).
func (c *conn) eager(ev *event) error {
	b := c.recvBuf(ev.buf)[:ev.n]
	var hdr proto.Header
	if err := hdr.Decode(b[msgHeaderSize:]); err != nil {
		return c.fromPeer(err)
	}
	body := b[msgHeaderSize+proto.HeaderSize:]
	if len(body) != int(hdr.Length) {
		return c.fromPeer(badFrame("%s with %d payload bytes, header says %d", hdr.Op, len(body), hdr.Length))
	}
	if err := c.adm.Admit(&hdr); err != nil {
		if errors.Is(err, proto.ErrBadFrame) {
			return c.fromPeer(err)
		}
		c.repost(ev.buf) // the body is never copied out
		c.h.Handle(c, &hdr, nil, err)
		return nil
	}
	var payload []byte
	var refused error
	if hdr.Length > 0 {
		dst, err := c.h.Dest(c, &hdr)
		switch {
		case err != nil:
			refused = err
		case dst == nil:
			dst = make([]byte, hdr.Length)
			fallthrough
		default:
			if len(dst) != int(hdr.Length) {
				return fmt.Errorf("rdma: handler gave %d bytes for a %d-byte %s payload", len(dst), hdr.Length, hdr.Op)
			}
			copy(dst, body)
			c.t.cnt.copies.Add(1)
			c.t.cnt.copiedBytes.Add(uint64(len(dst)))
			if err := hdr.CheckPayload(dst); err != nil {
				return c.fromPeer(err)
			}
			payload = dst
		}
	}
	c.repost(ev.buf)
	c.h.Handle(c, &hdr, payload, refused)
	return nil
}

// rts answers the peer's announcement of a frame with a CTS: a
// destination (a stable one for the first frame of an (op, key) a
// StableReceiver keeps, or Dest's, or one the transport allocates), or a
// refusal (serve's goroutine).
func (c *conn) rts(ev *event) error {
	var hdr proto.Header
	if err := hdr.Decode(ev.hdr[:]); err != nil {
		return c.fromPeer(err)
	}
	c.mu.Lock()
	err := c.mu.p.rts(&hdr)
	c.mu.Unlock()
	if err != nil {
		return c.fromPeer(err)
	}
	// refuse answers with a refused CTS, so the payload is never written,
	// and hands the handler the reason.
	refuse := func(why error) error {
		if err := c.sendCTS(cts{sid: ev.sid, refused: true}); err != nil {
			return err
		}
		c.h.Handle(c, &hdr, nil, why)
		return nil
	}
	if err := c.adm.Admit(&hdr); err != nil {
		if errors.Is(err, proto.ErrBadFrame) {
			return c.fromPeer(err)
		}
		return refuse(err)
	}
	sd, err := c.stableDest(&hdr)
	var dst []byte
	if sd != nil {
		dst = sd.buf
	} else if err == nil {
		dst, err = c.h.Dest(c, &hdr)
	}
	if err != nil {
		return refuse(err)
	}
	var reg any
	var addr uint64
	var rkey uint32
	switch {
	case dst == nil:
		if hdr.Length > proto.MaxControlPayload {
			return c.fromPeer(badFrame("no destination for a %d-byte %s payload", hdr.Length, hdr.Op))
		}
		dst = make([]byte, hdr.Length)
		var tmp ibv.MR
		if tmp, err = c.t.pd.Register(dst, ibv.AccessLocalWrite|ibv.AccessRemoteWrite); err == nil {
			c.t.cnt.registrations.Add(1)
			reg, addr, rkey = tmp, tmp.Addr(), tmp.RKey()
		}
	case len(dst) != int(hdr.Length):
		return fmt.Errorf("rdma: handler gave %d bytes for a %d-byte %s payload", len(dst), hdr.Length, hdr.Op)
	default:
		var ent *mrEntry
		if ent, err = c.t.cache.get(dst); err == nil {
			reg, addr, rkey = ent, ent.sge(dst), ent.mr.RKey()
		}
	}
	if err != nil {
		// No registration, no write: refuse the frame with the reason
		// (e.g. RLIMIT_MEMLOCK), and keep the connection.
		return refuse(fmt.Errorf("rdma: receive %s from %s: %w", hdr.Op, c.remote, err))
	}
	c.mu.Lock()
	slot := c.mu.p.openSlot(&hdr, dst, reg)
	c.mu.Unlock()
	m := cts{sid: ev.sid, slot: slot, n: hdr.Length, addr: addr, rkey: rkey}
	if sd != nil {
		pg := sd.page.(*hdrPage)
		m.stable, m.id, m.hdrRKey = true, sd.id, pg.mr.RKey()
		m.hdrAddr = pg.mr.Addr() + uint64(sd.hdrOff)
	}
	return c.sendCTS(m)
}

// stableDest returns the stable destination to grant for the frame h
// announces, or nil for the per-frame path (serve's goroutine). It asks the
// handler (a rdma.StableReceiver) for the first frame of h's (op, key), and
// registers the buffer and, when the machine needs one, a page of header
// slots. An error refuses the frame.
func (c *conn) stableDest(h *proto.Header) (*stableDest, error) {
	sr, ok := c.h.(rdma.StableReceiver)
	c.mu.Lock()
	ask := c.mu.p.askStable(h, ok)
	c.mu.Unlock()
	if !ask {
		return nil, nil
	}
	buf, ok, err := sr.StableDest(c, h)
	if err != nil {
		return nil, err
	}
	if !ok {
		c.mu.Lock()
		c.mu.p.declineStable(h)
		c.mu.Unlock()
		return nil, nil
	}
	if len(buf) != int(h.Length) {
		return nil, fmt.Errorf("rdma: handler gave a %d-byte stable destination for a %d-byte %s payload", len(buf), h.Length, h.Op)
	}
	c.mu.Lock()
	need := c.mu.p.needHdrPage()
	c.mu.Unlock()
	if need {
		b := make([]byte, stableHdrPage*stableHdrBytes)
		mr, err := c.t.pd.Register(b, ibv.AccessLocalWrite|ibv.AccessRemoteWrite)
		if err != nil {
			return nil, fmt.Errorf("rdma: receive %s from %s: header slots: %w", h.Op, c.remote, err)
		}
		c.t.cnt.registrations.Add(1)
		c.mu.Lock()
		c.mu.p.addHdrPage(&hdrPage{buf: b, mr: mr})
		c.mu.Unlock()
	}
	ent, err := c.t.cache.get(buf) // held for the life of the connection
	if err != nil {
		return nil, fmt.Errorf("rdma: receive %s from %s: %w", h.Op, c.remote, err)
	}
	c.mu.Lock()
	d := c.mu.p.grantStable(h, buf, ent)
	c.mu.Unlock()
	return d, nil
}

// stableLanded handles a write of n bytes into stable destination id: its
// header is in the header slot (serve's goroutine).
func (c *conn) stableLanded(id, n uint32) error {
	c.mu.Lock()
	d, err := c.mu.p.landStable(id, n)
	c.mu.Unlock()
	if err != nil {
		return c.fromPeer(err)
	}
	var hdr proto.Header
	if err := hdr.Decode(d.page.(*hdrPage).buf[d.hdrOff : d.hdrOff+proto.HeaderSize]); err != nil {
		return fmt.Errorf("rdma: from %s: stable destination %d: %w", c.remote, id, err)
	}
	if err := d.check(&hdr); err != nil {
		return c.fromPeer(err)
	}
	if err := c.adm.Admit(&hdr); err != nil {
		if errors.Is(err, proto.ErrBadFrame) {
			return c.fromPeer(err)
		}
		// Refused: the destination is free again for the next frame.
		c.Release(d.sk.op, d.sk.key)
		c.h.Handle(c, &hdr, nil, err)
		return nil
	}
	if err := hdr.CheckPayload(d.buf); err != nil {
		return c.fromPeer(err)
	}
	c.h.Handle(c, &hdr, d.buf, nil)
	return nil
}

// Release implements rdma.Conn: the handler is done with the frame of (op,
// key) in its stable destination; the peer gets a credit to write the next.
func (c *conn) Release(op proto.Op, key proto.Key) {
	c.mu.Lock()
	id, ok := c.mu.p.release(stableKey{op, key})
	if !ok {
		c.mu.Unlock()
		return
	}
	// A control slot is freed by a send completion, which the peer's NIC
	// produces without its software: this waits briefly at most.
	slot, ok := c.takeCtlLocked()
	c.mu.Unlock()
	if !ok {
		return
	}
	b := c.ctlBuf(slot)
	putMsgHeader(b, msgCredit, 0, id)
	c.t.cnt.credits.Add(1)
	if err := c.postSend(&ibv.SendWR{ID: wrID(wrCred, uint32(slot)), Op: ibv.OpSend, Signaled: true,
		Addr: c.slabAddr(b), Len: creditSize, LKey: c.mr.LKey(), Inline: creditSize <= c.inl}); err != nil {
		c.t.cnt.credits.Add(^uint64(0))
		c.putCtl(slot)
		if !errors.Is(err, net.ErrClosed) {
			c.fail(fmt.Errorf("rdma: send credit to %s: %w", c.remote, err), false)
		}
	}
}

// sendCTS answers an RTS (serve's goroutine). It waits for a control slot
// only on send completions, which the peer's NIC produces without its
// software's help, so it cannot deadlock with the peer.
func (c *conn) sendCTS(m cts) error {
	c.mu.Lock()
	slot, ok := c.takeCtlLocked()
	c.mu.Unlock()
	if !ok {
		return nil
	}
	b := c.ctlBuf(slot)
	n := m.encode(b)
	if err := c.postSend(&ibv.SendWR{ID: wrID(wrCTS, uint32(slot)), Op: ibv.OpSend, Signaled: true,
		Addr: c.slabAddr(b), Len: uint32(n), LKey: c.mr.LKey(), Inline: n <= c.inl}); err != nil {
		c.putCtl(slot)
		if errors.Is(err, net.ErrClosed) {
			return nil
		}
		return fmt.Errorf("rdma: send CTS to %s: %w", c.remote, err)
	}
	return nil
}
