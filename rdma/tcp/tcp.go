package tcp

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gobps/gobps/internal/accept"
	"github.com/gobps/gobps/proto"
	"github.com/gobps/gobps/rdma"
	"github.com/gobps/gobps/rdma/internal/rawdial"
)

func init() {
	rdma.Register(rdma.Driver{Name: "tcp", Open: func(opt rdma.Options) (rdma.Transport, string, error) {
		return New(opt), "", nil
	}})
	rawdial.Register("tcp", func(ctx context.Context, tr rdma.Transport, addr string, h rdma.Handler) (rdma.Conn, error) {
		return tr.(*Transport).dial(ctx, addr, nil, h)
	})
}

// Net is the network a Transport listens and dials on: real TCP for
// New, or another network with the semantics of TCP's net.Conns (full
// duplex streams, deadlines, a Close that ends blocked reads and writes)
// for NewOn, such as the in-memory, fault-injecting rdma/memnet of tests.
// Its methods must be safe for concurrent use.
type Net interface {
	Listen(addr string) (net.Listener, error)
	Dial(ctx context.Context, addr string) (net.Conn, error)
}

// sockets is real TCP.
type sockets struct{}

func (sockets) Listen(addr string) (net.Listener, error) { return net.Listen("tcp", addr) }

func (sockets) Dial(ctx context.Context, addr string) (net.Conn, error) {
	var d net.Dialer
	return d.DialContext(ctx, "tcp", addr)
}

// Transport is the TCP transport.
//
// Locking: mu guards the sets of listeners and connections and closed;
// wg counts the goroutines the transport started (accept loops and
// readers), which Close waits for.
type Transport struct {
	opt rdma.Options
	net Net

	mu struct {
		sync.Mutex
		closed  bool
		conns   map[*conn]struct{}
		lns     map[*listener]struct{}
		shaking map[net.Conn]struct{} // accepted, in the auth handshake
	}
	wg sync.WaitGroup
}

// New returns a TCP transport.
func New(opt rdma.Options) *Transport { return NewOn(sockets{}, opt) }

// NewOn returns a transport that frames as TCP does over the connections
// of n: tests run the summation server and the worker engine unchanged on
// an in-memory network with NewOn(memnet.New(...), opt).
func NewOn(n Net, opt rdma.Options) *Transport {
	t := &Transport{opt: opt, net: n}
	t.mu.conns = map[*conn]struct{}{}
	t.mu.lns = map[*listener]struct{}{}
	t.mu.shaking = map[net.Conn]struct{}{}
	return t
}

// Caps implements rdma.Transport: payloads can be delivered in pieces.
func (t *Transport) Caps() rdma.Caps { return rdma.Caps{Name: "tcp", Chunks: true} }

// Counters implements rdma.Transport: TCP counts nothing (its copies are
// the kernel's).
func (t *Transport) Counters() rdma.Counters { return rdma.Counters{} }

func (t *Transport) logf(format string, args ...any) {
	if t.opt.Logf != nil {
		t.opt.Logf(format, args...)
	}
}

var errClosed = fmt.Errorf("rdma: tcp transport closed: %w", net.ErrClosed)

// Close implements rdma.Transport: it closes every listener and
// connection and returns once their goroutines have ended (each
// connection's handler has had its Closed call).
func (t *Transport) Close() error {
	t.mu.Lock()
	if t.mu.closed {
		t.mu.Unlock()
		t.wg.Wait()
		return nil
	}
	t.mu.closed = true
	lns := slices.Collect(maps.Keys(t.mu.lns))
	conns := slices.Collect(maps.Keys(t.mu.conns))
	shaking := slices.Collect(maps.Keys(t.mu.shaking))
	t.mu.Unlock()
	for _, l := range lns {
		l.Close()
	}
	for _, nc := range shaking {
		nc.Close()
	}
	for _, c := range conns {
		c.Close()
	}
	t.wg.Wait()
	return nil
}

// Listen implements rdma.Transport.
func (t *Transport) Listen(addr string, h rdma.Handler) (rdma.Listener, error) {
	ln, err := t.net.Listen(addr)
	if err != nil {
		return nil, fmt.Errorf("rdma: tcp listen %s: %w", addr, err)
	}
	l := &listener{t: t, ln: ln, stop: make(chan struct{}), done: make(chan struct{})}
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
		accept.Loop(ln, l.stop, t.logf, func(nc net.Conn) {
			t.accepted(nc, h)
		})
	}()
	return l, nil
}

type listener struct {
	t    *Transport
	ln   net.Listener
	once sync.Once
	stop chan struct{} // closed by Close: ends a backoff of the accept loop
	done chan struct{} // closed when the accept loop has returned
}

func (l *listener) Addr() string { return l.ln.Addr().String() }

// Close implements rdma.Listener: it stops accepting and waits for the
// accept loop.
func (l *listener) Close() error {
	var err error
	l.once.Do(func() {
		close(l.stop)
		err = l.ln.Close()
		l.t.mu.Lock()
		delete(l.t.mu.lns, l)
		l.t.mu.Unlock()
	})
	<-l.done
	return err
}

// Dial implements rdma.Transport: the hello is the first frame.
func (t *Transport) Dial(ctx context.Context, addr string, self uint32, h rdma.Handler) (rdma.Conn, error) {
	return t.dial(ctx, addr, &proto.Header{Op: proto.OpHello, Sender: self}, h)
}

// dial connects to addr and sends hello first (none when nil: tests of
// admission, through rawdial).
func (t *Transport) dial(ctx context.Context, addr string, hello *proto.Header, h rdma.Handler) (rdma.Conn, error) {
	t.mu.Lock()
	closed := t.mu.closed
	t.mu.Unlock()
	if closed {
		return nil, errClosed
	}
	nc, err := t.net.Dial(ctx, addr)
	if err != nil {
		return nil, fmt.Errorf("rdma: tcp dial %s: %w", addr, err)
	}
	noDelay(nc)
	if t.opt.Auth.Enabled() {
		var self uint32
		if hello != nil {
			self = hello.Sender
		}
		raw := nc
		if nc, _, err = t.opt.Auth.Dial(raw, self); err != nil {
			raw.Close()
			return nil, fmt.Errorf("rdma: tcp dial %s: %w", addr, err)
		}
	}
	c := t.newConn(nc, proto.WorkerSide)
	if hello != nil {
		if err := c.Send(*hello, nil); err != nil {
			nc.Close()
			return nil, fmt.Errorf("rdma: tcp dial %s: hello: %w", addr, err)
		}
	}
	if !t.run(c, h) {
		return nil, errClosed
	}
	return c, nil
}

// accepted serves a connection Listen accepted, which must say hello
// within the hello timeout: until it does, reads have that deadline.
func (t *Transport) accepted(nc net.Conn, h rdma.Handler) {
	noDelay(nc)
	if t.opt.Auth.Enabled() {
		t.authenticate(nc, h)
		return
	}
	c := t.newConn(nc, proto.ServerSide)
	c.helloWait = t.opt.HelloWait()
	_ = nc.SetReadDeadline(time.Now().Add(c.helloWait))
	t.run(c, h)
}

// authenticate runs the job's handshake on an accepted connection, on a
// goroutine of its own (a silent peer must not hold up the accept loop),
// and serves the connection if it passes; its hello must then name the
// node the handshake proved. The hello timeout counts from the accept and
// bounds the handshake too. A peer that fails is closed and reported to
// the handler (Closed, with a connection that was never served), as a
// peer without a hello is; nothing it sent reaches the handler. Close
// closes connections still in their handshake.
func (t *Transport) authenticate(nc net.Conn, h rdma.Handler) {
	accepted := time.Now()
	t.mu.Lock()
	if t.mu.closed {
		t.mu.Unlock()
		nc.Close()
		return
	}
	t.mu.shaking[nc] = struct{}{}
	t.wg.Add(1)
	t.mu.Unlock()
	go func() {
		defer t.wg.Done()
		remote := nc.RemoteAddr().String()
		wait := t.opt.HelloWait()
		au := *t.opt.Auth
		au.Timeout = wait
		ac, peer, err := au.Accept(nc, 0)
		t.mu.Lock()
		delete(t.mu.shaking, nc)
		closed := t.mu.closed
		t.mu.Unlock()
		if err != nil || closed {
			nc.Close()
			if err != nil && !closed {
				if errors.Is(err, os.ErrDeadlineExceeded) {
					err = rdma.NoHello(remote, wait)
				} else {
					err = fmt.Errorf("rdma: tcp handshake: %w", err)
				}
				h.Closed(&refusedConn{remote: remote}, err)
			}
			return
		}
		c := t.newConn(ac, proto.ServerSide)
		c.remote = remote
		c.adm.Bind(peer)
		c.helloWait = wait
		_ = ac.SetReadDeadline(accepted.Add(wait))
		t.run(c, h)
	}()
}

// refusedConn stands for a connection that failed the handshake: the
// handler's Closed gets it, and nothing can be sent on it.
type refusedConn struct{ remote string }

func (r *refusedConn) Send(h proto.Header, _ []byte) error {
	return fmt.Errorf("rdma: send %s to %s: %w", h.Op, r.remote, net.ErrClosed)
}
func (r *refusedConn) Release(proto.Op, proto.Key) {}
func (r *refusedConn) Close() error                { return nil }
func (r *refusedConn) RemoteAddr() string          { return r.remote }

func noDelay(nc net.Conn) {
	if tc, ok := nc.(*net.TCPConn); ok {
		_ = tc.SetNoDelay(true)
	}
}

func (t *Transport) newConn(nc net.Conn, side proto.Side) *conn {
	return &conn{t: t, nc: nc, checksum: t.opt.Checksum, remote: nc.RemoteAddr().String(), adm: rdma.NewAdmission(side)}
}

// run starts c's reader, or closes c and returns false if the transport is
// closed.
func (t *Transport) run(c *conn, h rdma.Handler) bool {
	t.mu.Lock()
	if t.mu.closed {
		t.mu.Unlock()
		c.nc.Close()
		return false
	}
	t.mu.conns[c] = struct{}{}
	t.wg.Add(1)
	t.mu.Unlock()
	go c.readLoop(h)
	return true
}

// conn is one TCP connection: frames are written by the callers of Send,
// one writev each, and read by readLoop, which calls the Handler.
type conn struct {
	t        *Transport
	nc       net.Conn
	checksum bool
	remote   string

	// Owned by the reader.
	adm       rdma.Admission
	helloWait time.Duration // accepted connections: the hello timeout

	wmu  sync.Mutex // serialises frames; guards hdr and bufs
	hdr  [proto.HeaderSize]byte
	bufs [2][]byte

	// closed is set by Close, or by the reader when the connection ends.
	// It is not guarded by wmu: a Send blocked in its write (a peer that
	// stopped reading) holds wmu for as long as it is blocked, and Close
	// must not wait behind it. Closing the socket makes that write return.
	closed    atomic.Bool
	closeOnce sync.Once
	werr      atomic.Pointer[error] // the failed write that closed the connection
}

func (c *conn) RemoteAddr() string { return c.remote }

// Release implements rdma.Conn: TCP grants no stable destinations.
func (c *conn) Release(proto.Op, proto.Key) {}

// Send implements rdma.Conn: one writev with the header and the payload.
func (c *conn) Send(h proto.Header, payload []byte) error {
	if err := rdma.Stamp(&h, payload, c.checksum); err != nil {
		return err
	}
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if c.closed.Load() {
		return fmt.Errorf("rdma: send %s to %s: %w", h.Op, c.remote, net.ErrClosed)
	}
	h.Encode(c.hdr[:])
	c.bufs[0], c.bufs[1] = c.hdr[:], payload
	v := net.Buffers(c.bufs[:])
	if len(payload) == 0 {
		v = v[:1]
	}
	_, err := v.WriteTo(c.nc)
	c.bufs[1] = nil
	if err != nil {
		err = fmt.Errorf("rdma: send %s to %s: %w", h.Op, c.remote, err)
		c.fail(err)
		return err
	}
	return nil
}

// fail closes the connection after a failed write, which may have left
// part of a frame on the wire: it cannot carry another. Closed gets err,
// unless this side had closed the connection already (the write failed
// because of that).
func (c *conn) fail(err error) {
	if c.closed.Load() {
		return
	}
	c.werr.CompareAndSwap(nil, &err)
	c.Close()
}

// Close implements rdma.Conn. It waits neither for the reader nor for a
// Send in progress: it marks the connection closed and closes the socket,
// which fails a write blocked on a peer that does not read.
func (c *conn) Close() error {
	c.closed.Store(true)
	var err error
	c.closeOnce.Do(func() { err = c.nc.Close() })
	return err
}

// readLoop reads frames until the connection fails or is closed, then
// calls Closed.
func (c *conn) readLoop(h rdma.Handler) {
	defer c.t.wg.Done()
	err := c.read(h)
	if c.helloWait > 0 && !c.adm.Hello() && errors.Is(err, os.ErrDeadlineExceeded) {
		err = rdma.NoHello(c.remote, c.helloWait)
	}
	byUs := c.closed.Swap(true)
	c.closeOnce.Do(func() { _ = c.nc.Close() })
	if byUs {
		err = nil
		if werr := c.werr.Load(); werr != nil {
			err = *werr
		}
	}
	c.t.mu.Lock()
	delete(c.t.mu.conns, c)
	c.t.mu.Unlock()
	h.Closed(c, err)
}

func (c *conn) read(h rdma.Handler) error {
	r := bufio.NewReaderSize(c.nc, 64<<10)
	var hb [proto.HeaderSize]byte
	for {
		if _, err := io.ReadFull(r, hb[:]); err != nil {
			if errors.Is(err, io.ErrUnexpectedEOF) {
				return fmt.Errorf("rdma: %s closed mid-header: %w", c.remote, err)
			}
			return err
		}
		var hdr proto.Header
		if err := hdr.Decode(hb[:]); err != nil {
			return fmt.Errorf("rdma: from %s: %w", c.remote, err)
		}
		if err := c.adm.Admit(&hdr); err != nil {
			if errors.Is(err, proto.ErrBadFrame) {
				return fmt.Errorf("rdma: from %s: %w", c.remote, err)
			}
			// Refused: skip the payload unread, and tell the handler.
			if err := c.discard(r, &hdr); err != nil {
				return err
			}
			h.Handle(c, &hdr, nil, err)
			continue
		}
		if hdr.Op == proto.OpHello && c.helloWait > 0 {
			_ = c.nc.SetReadDeadline(time.Time{}) // in time
		}
		var payload []byte
		var refused error
		if cr, ok := h.(rdma.ChunkReceiver); ok && hdr.Length > 0 {
			sink, ok, err := cr.Chunks(c, &hdr)
			switch {
			case err != nil:
				if err := c.discard(r, &hdr); err != nil {
					return err
				}
				h.Handle(c, &hdr, nil, err)
				continue
			case ok:
				if err := c.readChunks(r, &hdr, sink); err != nil {
					sink.Abort(err)
					return err
				}
				h.Handle(c, &hdr, nil, nil)
				continue
			}
		}
		if hdr.Length > 0 {
			dst, err := h.Dest(c, &hdr)
			switch {
			case err != nil:
				refused = err
				if err := c.discard(r, &hdr); err != nil {
					return err
				}
			case dst == nil:
				if hdr.Length > proto.MaxControlPayload {
					return fmt.Errorf("rdma: from %s: %w: no destination for a %d-byte %s payload", c.remote, proto.ErrBadFrame, hdr.Length, hdr.Op)
				}
				dst = make([]byte, hdr.Length)
				fallthrough
			default:
				if len(dst) != int(hdr.Length) {
					return fmt.Errorf("rdma: handler gave %d bytes for a %d-byte %s payload", len(dst), hdr.Length, hdr.Op)
				}
				if _, err := io.ReadFull(r, dst); err != nil {
					return fmt.Errorf("rdma: read %s payload from %s: %w", hdr.Op, c.remote, err)
				}
				if err := hdr.CheckPayload(dst); err != nil {
					return fmt.Errorf("rdma: from %s: %w", c.remote, err)
				}
				payload = dst
			}
		}
		h.Handle(c, &hdr, payload, refused)
	}
}

// discard skips h's payload in bounded memory (io.Discard's buffer).
func (c *conn) discard(r io.Reader, h *proto.Header) error {
	if _, err := io.CopyN(io.Discard, r, int64(h.Length)); err != nil {
		return fmt.Errorf("rdma: discard %s payload from %s: %w", h.Op, c.remote, err)
	}
	return nil
}

// readChunks reads h's payload into the sink's buffers, proto.PieceBytes
// at a time. With a checksum, the CRC is computed over the pieces as they
// come and checked before the last piece is handed over.
func (c *conn) readChunks(r io.Reader, h *proto.Header, sink rdma.ChunkSink) error {
	n := int(h.Length)
	var crc uint32
	for off := 0; off < n; off += proto.PieceBytes {
		m := min(proto.PieceBytes, n-off)
		b := sink.Buffer(off, m)
		if len(b) != m {
			return fmt.Errorf("rdma: sink gave %d bytes for a %d-byte piece", len(b), m)
		}
		if _, err := io.ReadFull(r, b); err != nil {
			return fmt.Errorf("rdma: read %s payload from %s: %w", h.Op, c.remote, err)
		}
		if h.Flags&proto.FlagCRC != 0 {
			crc = proto.UpdateChecksum(crc, b)
			if off+m == n && crc != h.CRC {
				return fmt.Errorf("rdma: from %s: %w: payload crc %#08x, header says %#08x", c.remote, proto.ErrBadFrame, crc, h.CRC)
			}
		}
		sink.Filled(off, b)
	}
	return nil
}
