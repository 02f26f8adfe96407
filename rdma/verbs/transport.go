package verbs

import (
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"math/rand/v2"
	"net"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gobps/gobps/internal/accept"
	"github.com/gobps/gobps/proto"
	"github.com/gobps/gobps/rdma"
	"github.com/gobps/gobps/rdma/ibv"
)

// Transport is the RDMA verbs transport: RC queue pairs bootstrapped over TCP,
// eager SENDs for small control frames, and a rendezvous followed by one
// RDMA write with immediate, straight between registered buffers, for
// tensors. See the package documentation for the protocol.
//
// It runs on any ibv.Library: libibverbs (ibv.Load) or the emulation
// (ibv.NewEmulator).
type Transport struct {
	opt      rdma.Options
	ctx      ibv.Context
	port     int
	attr     ibv.PortAttr
	global   bool // RoCE: use the GRH
	gidIndex int
	gid      ibv.GID
	pd       ibv.PD
	maxQPWR  int // the device's limit of work requests per queue
	cache    *mrCache
	cnt      counters
	desc     string
	// onCreditWait, if set (tests), is called when a Send starts waiting
	// for the credit of a stable destination.
	onCreditWait func()

	mu struct {
		sync.Mutex
		closed  bool
		conns   map[*conn]struct{}
		lns     map[*listener]struct{}
		dialing map[net.Conn]struct{} // sockets of Dials in their handshake
		// closeDone is closed when the first Close has released
		// everything.
		closeDone chan struct{}
		sends     int        // Sends in progress, on callers' goroutines
		idle      *sync.Cond // signalled when sends drops to 0
	}
	wg sync.WaitGroup // accept loops, handshakes and connection goroutines
}

// enterSend counts a Send in progress, so that Close waits for it to put
// back the MR cache entries it holds before it deregisters the cache: a
// Send runs on its caller's goroutine and may still hold one for a moment
// after its connection's goroutines have ended. False once closed.
func (t *Transport) enterSend() bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.mu.closed {
		return false
	}
	t.mu.sends++
	return true
}

func (t *Transport) leaveSend() {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.mu.sends--; t.mu.sends == 0 && t.mu.idle != nil {
		t.mu.idle.Broadcast()
	}
}

// counters are the transport's rdma.Counters, counted atomically.
type counters struct {
	registrations, deregistrations, cacheHits, evictions  atomic.Uint64
	copies, copiedBytes, writes, sends, eager, rendezvous atomic.Uint64
	refused, stable, credits                              atomic.Uint64
}

// Counters implements rdma.Transport.
func (t *Transport) Counters() rdma.Counters {
	c := &t.cnt
	return rdma.Counters{
		Registrations: c.registrations.Load(), Deregistrations: c.deregistrations.Load(),
		CacheHits: c.cacheHits.Load(), Evictions: c.evictions.Load(),
		Copies: c.copies.Load(), CopiedBytes: c.copiedBytes.Load(), Writes: c.writes.Load(),
		Sends: c.sends.Load(), Eager: c.eager.Load(), Rendezvous: c.rendezvous.Load(), Refused: c.refused.Load(),
		Stable: c.stable.Load(), Credits: c.credits.Load(),
	}
}

// Timing of the verbs transport.
const (
	// handshakeTimeout bounds the TCP bootstrap of a connection.
	handshakeTimeout = 10 * time.Second
	// pollWait is how long the completion goroutine sleeps on the channel
	// before looking at the connection's state again.
	pollWait = 100 * time.Millisecond
	// drainTimeout bounds the wait for flushed completions after a
	// connection failed, before its QP is destroyed regardless.
	drainTimeout = 2 * time.Second
)

// Caps implements rdma.Transport: verbs grants stable destinations,
// registers payload memory (cached by address) and counts its work.
func (t *Transport) Caps() rdma.Caps {
	return rdma.Caps{Name: "verbs", StableDest: true, Registered: true, Counts: true}
}

// Describe names the device, port and addressing in use, e.g. "rxe0 port 1
// (RoCE v2, GID index 1 ::ffff:127.0.0.1, MTU 1024)".
func (t *Transport) Describe() string { return t.desc }

// Close implements rdma.Transport: it closes every connection and
// listener, abandons the handshakes of Dials in progress, waits for every
// goroutine of the transport and for the Sends in progress, and releases
// the device. A second Close waits for the first and returns nil.
func (t *Transport) Close() error {
	t.mu.Lock()
	if t.mu.closed {
		done := t.mu.closeDone
		t.mu.Unlock()
		<-done
		return nil
	}
	t.mu.closed = true
	t.mu.closeDone = make(chan struct{})
	defer close(t.mu.closeDone)
	conns := slices.Collect(maps.Keys(t.mu.conns))
	lns := slices.Collect(maps.Keys(t.mu.lns))
	for nc := range t.mu.dialing {
		nc.Close()
	}
	t.mu.Unlock()
	for _, l := range lns {
		l.Close()
	}
	for _, c := range conns {
		c.Close()
	}
	t.wg.Wait()
	// Sends fail promptly once their connections are closed.
	t.mu.Lock()
	if t.mu.idle == nil {
		t.mu.idle = sync.NewCond(&t.mu.Mutex)
	}
	for t.mu.sends > 0 {
		t.mu.idle.Wait()
	}
	t.mu.Unlock()
	t.cache.close()
	return errors.Join(t.pd.Close(), t.ctx.Close())
}

func (t *Transport) logf(format string, args ...any) {
	if t.opt.Logf != nil {
		t.opt.Logf(format, args...)
	}
}

// Listen implements rdma.Transport. Peers dial addr over TCP, as with the
// TCP transport, and the connection's queue pairs are set up over that
// socket.
func (t *Transport) Listen(addr string, h rdma.Handler) (rdma.Listener, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("rdma: verbs listen %s: %w", addr, err)
	}
	l := &listener{t: t, ln: ln, stop: make(chan struct{}), done: make(chan struct{}), pending: map[net.Conn]struct{}{}}
	t.mu.Lock()
	if t.mu.closed {
		t.mu.Unlock()
		ln.Close()
		return nil, errClosed
	}
	t.mu.lns[l] = struct{}{}
	t.wg.Add(1)
	t.mu.Unlock()
	go func() {
		defer t.wg.Done()
		defer close(l.done)
		accept.Loop(ln, l.stop, t.logf, func(nc net.Conn) { l.bootstrap(nc, h) })
	}()
	return l, nil
}

var errClosed = fmt.Errorf("rdma: verbs transport closed: %w", net.ErrClosed)

// listener is a bootstrap listener: it accepts TCP connections and sets
// up a queue pair over each (handshake), on a goroutine per connection.
type listener struct {
	t    *Transport
	ln   net.Listener
	once sync.Once
	stop chan struct{}  // closed by Close: ends a backoff of the accept loop
	done chan struct{}  // closed when the accept loop has returned
	wg   sync.WaitGroup // bootstraps in progress

	mu      sync.Mutex
	closed  bool
	pending map[net.Conn]struct{} // sockets still in their handshake
}

func (l *listener) Addr() string { return l.ln.Addr().String() }

// Close implements rdma.Listener: it stops accepting, abandons the
// handshakes in progress and waits for the accept loop and for them.
func (l *listener) Close() error {
	var err error
	l.once.Do(func() {
		l.mu.Lock()
		l.closed = true
		for nc := range l.pending {
			nc.Close()
		}
		l.mu.Unlock()
		close(l.stop)
		err = l.ln.Close()
		l.t.mu.Lock()
		delete(l.t.mu.lns, l)
		l.t.mu.Unlock()
	})
	<-l.done
	l.wg.Wait()
	return err
}

// bootstrap sets up a connection accepted on nc, on a goroutine of its
// own (the accept loop's serve).
func (l *listener) bootstrap(nc net.Conn, h rdma.Handler) {
	accepted := time.Now()
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		nc.Close()
		return
	}
	l.pending[nc] = struct{}{}
	l.wg.Add(1)
	l.t.wg.Add(1)
	l.mu.Unlock()
	go func() {
		defer l.t.wg.Done()
		defer l.wg.Done()
		c, err := l.t.handshake(context.Background(), nc, h, nil, accepted)
		l.mu.Lock()
		delete(l.pending, nc)
		closed := l.closed
		l.mu.Unlock()
		if err != nil {
			if !closed {
				// Tell the handler, as a bad first frame on TCP
				// would: a peer that speaks another protocol, or
				// a broken device.
				h.Closed(&deadConn{remote: nc.RemoteAddr().String()}, err)
			}
			return
		}
		c.start()
	}()
}

// deadConn stands for a connection whose handshake failed.
type deadConn struct {
	remote string
}

func (d *deadConn) Send(h proto.Header, _ []byte) error {
	return fmt.Errorf("rdma: send %s to %s: %w", h.Op, d.remote, net.ErrClosed)
}
func (d *deadConn) Release(proto.Op, proto.Key) {}
func (d *deadConn) Close() error                { return nil }
func (d *deadConn) RemoteAddr() string          { return d.remote }

// Dial implements rdma.Transport: the hello is the first frame.
func (t *Transport) Dial(ctx context.Context, addr string, self uint32, h rdma.Handler) (rdma.Conn, error) {
	return t.dial(ctx, addr, &proto.Header{Op: proto.OpHello, Sender: self}, h)
}

// dial connects to addr and sends hello first (none when nil: tests of
// admission, through rawdial).
func (t *Transport) dial(ctx context.Context, addr string, hello *proto.Header, h rdma.Handler) (rdma.Conn, error) {
	t.mu.Lock()
	if t.mu.closed {
		t.mu.Unlock()
		return nil, errClosed
	}
	t.wg.Add(1)
	t.mu.Unlock()
	defer t.wg.Done()
	var d net.Dialer
	nc, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("rdma: verbs dial %s: %w", addr, err)
	}
	// Close abandons the handshake, as Listener.Close does those it
	// accepted.
	t.mu.Lock()
	if t.mu.closed {
		t.mu.Unlock()
		nc.Close()
		return nil, errClosed
	}
	t.mu.dialing[nc] = struct{}{}
	t.mu.Unlock()
	c, err := t.handshake(ctx, nc, h, hello, time.Time{})
	t.mu.Lock()
	delete(t.mu.dialing, nc)
	t.mu.Unlock()
	if err != nil {
		return nil, err
	}
	c.start()
	return c, nil
}

// A dialed connection (hello not nil) sends its hello as its first frame
// before handshake returns. An accepted one (accepted not zero) must get
// its hello within the hello timeout of accepted, the bootstrap included.
func (t *Transport) handshake(ctx context.Context, nc net.Conn, h rdma.Handler, hello *proto.Header, accepted time.Time) (_ *conn, err error) {
	remote := nc.RemoteAddr().String()
	if tc, ok := nc.(*net.TCPConn); ok {
		_ = tc.SetNoDelay(true)
	}
	side := proto.WorkerSide
	if !accepted.IsZero() {
		side = proto.ServerSide
	}
	c := &conn{
		t: t, h: h, nc: nc, remote: remote, checksum: t.opt.Checksum, adm: rdma.NewAdmission(side),
		done: make(chan struct{}), pollerDone: make(chan struct{}), dead: make(chan struct{}),
	}
	deadline := time.Now().Add(handshakeTimeout)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	helloBound := false // the hello timeout ends the bootstrap's time
	if !accepted.IsZero() {
		c.helloWait = t.opt.HelloWait()
		c.helloBy = accepted.Add(c.helloWait)
		if !c.helloBy.After(deadline) {
			deadline, helloBound = c.helloBy, true
		}
	}
	defer func() {
		if err != nil {
			nc.Close()
			c.release()
			if helloBound && errors.Is(err, os.ErrDeadlineExceeded) {
				err = fmt.Errorf("%w (its verbs bootstrap did not finish: %v)", rdma.NoHello(remote, c.helloWait), err)
				return
			}
			err = fmt.Errorf("rdma: verbs connection with %s: %w", remote, err)
		}
	}()
	if t.opt.Auth.Enabled() {
		// The job's handshake (and TLS) on the bootstrap socket first:
		// nothing of the peer's is read before it has passed.
		var ac net.Conn
		var peer uint32
		if side == proto.ServerSide {
			au := *t.opt.Auth
			au.Timeout = time.Until(deadline)
			ac, peer, err = au.Accept(nc, 0)
			c.adm.Bind(peer)
		} else {
			var self uint32
			if hello != nil {
				self = hello.Sender
			}
			ac, _, err = t.opt.Auth.Dial(nc, self)
		}
		if err != nil {
			return nil, err // the listener tells the handler
		}
		nc, c.nc = ac, ac
	}
	_ = nc.SetDeadline(deadline)
	stop := afterFunc(ctx, func() { _ = nc.SetDeadline(time.Unix(1, 0)) })
	defer stop()

	// Hello first: the QP is sized from both sides' depths.
	sd, rd := t.opt.SendDepth, t.opt.RecvDepth
	mine := qpInfo{
		LinkLayer: t.attr.LinkLayer, MTU: t.attr.ActiveMTU, LID: t.attr.LID, GID: t.gid,
		SendDepth: uint32(sd), RecvDepth: uint32(rd), EagerBytes: eagerBytes,
	}
	if _, err = nc.Write(mine.encodeHello()); err != nil {
		return nil, fmt.Errorf("send bootstrap: %w", err)
	}
	var b [helloSize]byte
	// The magic first: a peer speaking another protocol may send less than
	// a whole hello and wait for an answer.
	if _, err = io.ReadFull(nc, b[:4]); err != nil {
		if errors.Is(err, os.ErrDeadlineExceeded) || errors.Is(err, net.ErrClosed) {
			return nil, fmt.Errorf("receive bootstrap: %w", err) // too slow, or abandoned by this side
		}
		// A peer of the TCP transport reads our hello as a bad frame and
		// hangs up, often before its own first frame reaches us.
		return nil, fmt.Errorf("receive bootstrap: %w (the peer hung up before its verbs hello: "+
			"every process of a job must choose the same transport, BYTEPS_ENABLE_RDMA)", err)
	}
	if err = checkMagic(b[:]); err != nil {
		return nil, err
	}
	if _, err = io.ReadFull(nc, b[4:]); err != nil {
		return nil, fmt.Errorf("receive bootstrap: %w", err)
	}
	if c.peer, err = decodeHello(b[:]); err != nil {
		return nil, err
	}
	if ours, theirs := isEthernet(t.attr.LinkLayer), isEthernet(c.peer.LinkLayer); ours != theirs {
		return nil, fmt.Errorf("link layers differ: ours is %s, the peer's %s", t.attr.LinkLayer, c.peer.LinkLayer)
	}

	// Control slots (RTS and CTS messages being sent): our frames in
	// flight, plus one CTS per peer frame in flight, plus spare. With that
	// many, sendCTS can wait only for a slot whose message has reached the
	// peer and awaits its ACK, which the peer's NIC sends whatever its
	// software does: the two sides' serve goroutines cannot wait on each
	// other. The send queue holds every control message and, per frame in
	// flight, a write or an eager SEND.
	c.nRecv, c.nEager, c.nCtl = rd, min(sd, 16), sd+int(c.peer.SendDepth)+4
	sq := c.nCtl + sd + 4
	if t.maxQPWR > 0 && sq > t.maxQPWR {
		return nil, fmt.Errorf("%d work requests per queue needed (send depths %d and %d), the device allows %d: lower GOBPS_RDMA_SEND_DEPTH",
			sq, sd, c.peer.SendDepth, t.maxQPWR)
	}
	if c.ch, err = t.ctx.NewCompChannel(); err != nil {
		return nil, err
	}
	if c.cq, err = t.ctx.NewCQ(sq+rd+16, c.ch); err != nil {
		return nil, err
	}
	if c.qp, err = t.pd.NewQP(c.cq, ibv.QPCaps{MaxSendWR: sq, MaxRecvWR: rd, MaxInline: inlineBytes}); err != nil {
		return nil, err
	}
	c.inl = c.qp.MaxInline()
	if err = c.qp.Init(t.port, ibv.AccessRemoteWrite|ibv.AccessLocalWrite); err != nil {
		return nil, err
	}
	c.eagerOff = c.nRecv * eagerBytes
	c.ctlOff = c.eagerOff + c.nEager*eagerBytes
	c.slab = make([]byte, c.ctlOff+c.nCtl*ctlSlotBytes)
	if c.mr, err = t.pd.Register(c.slab, ibv.AccessLocalWrite); err != nil {
		return nil, fmt.Errorf("register %d bytes of connection buffers: %w", len(c.slab), err)
	}
	t.cnt.registrations.Add(1)
	for i := 0; i < c.nRecv; i++ {
		if err = c.postRecv(i); err != nil {
			return nil, err
		}
	}

	// Then the QP addresses, and connect.
	mine.QPN, mine.PSN = c.qp.Num(), rand.Uint32()&0xffffff
	if _, err = nc.Write(mine.encodeQPAddr()); err != nil {
		return nil, fmt.Errorf("send bootstrap: %w", err)
	}
	if _, err = io.ReadFull(nc, b[:qpAddrSize]); err != nil {
		return nil, fmt.Errorf("receive bootstrap: %w", err)
	}
	if err = decodeQPAddr(b[:qpAddrSize], &c.peer); err != nil {
		return nil, err
	}
	if err = c.qp.ReadyToReceive(ibv.RTRAttr{
		Port: t.port, MTU: min(t.attr.ActiveMTU, c.peer.MTU), DestQPN: c.peer.QPN, RecvPSN: c.peer.PSN,
		DestLID: c.peer.LID, Global: t.global, DestGID: c.peer.GID, SGIDIndex: t.gidIndex, HopLimit: 64,
		MinRNRTimer: 12, // 0.64 ms
	}); err != nil {
		return nil, err
	}
	if err = c.qp.ReadyToSend(ibv.RTSAttr{SendPSN: mine.PSN, Timeout: 14, RetryCnt: 7, RNRRetry: 7}); err != nil {
		return nil, err
	}
	// Neither side sends before both QPs are ready: a packet reaching a QP
	// still in INIT is dropped and costs a retry timeout.
	if _, err = nc.Write([]byte{1}); err != nil {
		return nil, fmt.Errorf("send ready: %w", err)
	}
	if _, err = io.ReadFull(nc, b[:1]); err != nil || b[0] != 1 {
		if err == nil {
			err = fmt.Errorf("%w: ready byte %d", proto.ErrBadFrame, b[0])
		}
		return nil, fmt.Errorf("receive ready: %w", err)
	}
	if !stop() && ctx.Err() != nil {
		return nil, ctx.Err() // too late: the deadline may be in the past now
	}
	_ = nc.SetDeadline(time.Time{})

	c.mu.p = newProtocol(protoConfig{sendDepth: sd, eagerBufs: c.nEager, ctlSlots: c.nCtl,
		eagerMax: min(int(c.peer.EagerBytes), eagerBytes)})
	// Events are bounded by the protocol: eager frames by our receive
	// buffers, RTSs and writes by the peer's frames in flight (an RTS and a
	// write per frame at most, as a frame's write completes before its
	// token is reused).
	// Writes into stable destinations add at most one per destination,
	// as each needs a credit given after the last was handled.
	c.events = make(chan event, rd+2*int(c.peer.SendDepth)+8+maxStableGrants)

	if hello != nil {
		// A dialed connection's first frame, sent before Dial returns: an
		// eager SEND, whose completion waits in the CQ for the poller.
		if err = c.Send(*hello, nil); err != nil {
			return nil, err
		}
	}

	t.mu.Lock()
	defer t.mu.Unlock()
	if t.mu.closed {
		return nil, errors.New("transport closed")
	}
	t.mu.conns[c] = struct{}{}
	t.wg.Add(3)
	return c, nil
}

// afterFunc is context.AfterFunc whose stop, once f has started, waits
// for f to return: no goroutine of the handshake outlives it.
func afterFunc(ctx context.Context, f func()) (stop func() bool) {
	fired := make(chan struct{})
	s := context.AfterFunc(ctx, func() {
		defer close(fired)
		f()
	})
	var once sync.Once
	var stopped bool
	return func() bool {
		once.Do(func() {
			if stopped = s(); !stopped {
				<-fired
			}
		})
		return stopped
	}
}

func isEthernet(l ibv.LinkLayer) bool { return l == ibv.LinkEthernet }

// release frees what handshake made, in reverse order. Only for a
// connection that never started.
func (c *conn) release() {
	if c.qp != nil {
		c.qp.Close()
	}
	if c.mr != nil {
		c.mr.Deregister()
		c.t.cnt.deregistrations.Add(1)
	}
	if c.cq != nil {
		c.cq.Close()
	}
	if c.ch != nil {
		c.ch.Close()
	}
}

// start runs the connection's goroutines (counted in t.wg by handshake).
func (c *conn) start() {
	go c.poll()
	go c.serve()
	go c.watch()
}
