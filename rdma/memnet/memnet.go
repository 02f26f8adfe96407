package memnet

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// DefaultBufferBytes is the default of Options.BufferBytes.
const DefaultBufferBytes = 256 << 10

// Options configure a Network.
type Options struct {
	// BufferBytes bounds the bytes of one direction of a link that were
	// written and not yet read: a write waits for room, as on a socket
	// whose buffers are full. 0 means DefaultBufferBytes.
	BufferBytes int
	// Policy, if set, decides what happens to each write (see Action).
	Policy Policy
}

// Dir is a direction of a link.
type Dir uint8

const (
	// FromDialer is what the end Dial returned writes and the end Accept
	// returned reads.
	FromDialer Dir = iota
	// FromListener is the other way.
	FromListener
)

func (d Dir) String() string {
	switch d {
	case FromDialer:
		return "from dialer"
	case FromListener:
		return "from listener"
	}
	return "dir(" + strconv.Itoa(int(d)) + ")"
}

// Write says which write a Policy is asked about.
type Write struct {
	Link  uint64 // the link's ID: 0, 1, ... in the order of the Dials
	Dir   Dir
	N     uint64 // the write's number in its direction, from 0
	Bytes int    // its length
}

// Action is what happens to one write. The zero Action delivers it as is.
type Action struct {
	// Delay holds the write's bytes back from the reader for this long,
	// on top of the direction's delay (Link.SetDelay); bytes of one
	// direction are never reordered.
	Delay time.Duration
	// Stall blocks this write and every later one in its direction for
	// this long (or until Resume, a break or a close).
	Stall time.Duration
	// Fail fails the write with an error wrapping ErrInjected after its
	// first Keep bytes went through. The link stays up.
	Fail bool
	// Keep is how many bytes of a failed write go through first.
	Keep int
	// Break breaks the link instead of writing anything: both ends fail
	// at once (ErrBroken).
	Break bool
}

// Policy decides what happens to a write. It is called once per Write
// call, on the writer's goroutine, without locks held; concurrent writes on
// different links call it concurrently.
type Policy func(w Write) Action

// Errors.
var (
	// ErrBroken is wrapped by the errors of a broken link's ends.
	ErrBroken = fmt.Errorf("memnet: link broken: %w", syscall.ECONNRESET)
	// ErrInjected is wrapped by the error of a write failed on purpose.
	ErrInjected = errors.New("memnet: injected write failure")

	errPeerClosed = fmt.Errorf("memnet: the peer closed its end: %w", syscall.EPIPE)
)

// Addr is a memnet address.
type Addr string

// Network implements net.Addr.
func (Addr) Network() string { return "memnet" }

func (a Addr) String() string { return string(a) }

// Network is an in-memory network. Its methods are safe for concurrent
// use.
type Network struct {
	opt Options

	mu struct {
		sync.Mutex
		closed bool
		lns    map[string]*listener
		links  map[uint64]*Link
		next   uint64         // the next link's ID
		ports  map[string]int // the last number given to a name ending in ":0"
	}
}

// New returns an empty network.
func New(opt Options) *Network {
	if opt.BufferBytes <= 0 {
		opt.BufferBytes = DefaultBufferBytes
	}
	n := &Network{opt: opt}
	n.mu.lns = map[string]*listener{}
	n.mu.links = map[uint64]*Link{}
	n.mu.ports = map[string]int{}
	return n
}

var errNetClosed = fmt.Errorf("memnet: network closed: %w", net.ErrClosed)

// Listen listens at addr, a name such as "srv0:1"; one ending in ":0"
// gets the next free number in place of the 0.
func (n *Network) Listen(addr string) (net.Listener, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.mu.closed {
		return nil, fmt.Errorf("memnet: listen %s: %w", addr, errNetClosed)
	}
	if host, ok := strings.CutSuffix(addr, ":0"); ok {
		for {
			n.mu.ports[host]++
			addr = host + ":" + strconv.Itoa(n.mu.ports[host])
			if n.mu.lns[addr] == nil {
				break
			}
		}
	}
	if n.mu.lns[addr] != nil {
		return nil, fmt.Errorf("memnet: listen %s: %w", addr, syscall.EADDRINUSE)
	}
	l := &listener{n: n, addr: Addr(addr), changed: make(chan struct{})}
	n.mu.lns[addr] = l
	return l, nil
}

// Dial connects to the listener at addr. It does not wait for Accept:
// the connection waits in the listener's backlog, and the returned end
// may write at once.
func (n *Network) Dial(ctx context.Context, addr string) (net.Conn, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("memnet: dial %s: %w", addr, err)
	}
	n.mu.Lock()
	if n.mu.closed {
		n.mu.Unlock()
		return nil, fmt.Errorf("memnet: dial %s: %w", addr, errNetClosed)
	}
	ln := n.mu.lns[addr]
	if ln == nil {
		n.mu.Unlock()
		return nil, fmt.Errorf("memnet: dial %s: %w", addr, syscall.ECONNREFUSED)
	}
	l := n.newLinkLocked(addr)
	n.mu.Unlock()
	if !ln.enqueue(l.ends[1]) {
		l.Break()
		l.ends[0].Close()
		l.ends[1].Close()
		return nil, fmt.Errorf("memnet: dial %s: %w", addr, syscall.ECONNREFUSED)
	}
	return l.ends[0], nil
}

// Links returns the links with an end still open, by ID.
func (n *Network) Links() []*Link {
	n.mu.Lock()
	defer n.mu.Unlock()
	out := make([]*Link, 0, len(n.mu.links))
	for _, l := range n.mu.links {
		out = append(out, l)
	}
	slices.SortFunc(out, func(a, b *Link) int { return cmp.Compare(a.id, b.id) })
	return out
}

// Close closes every listener and both ends of every link, which ends
// every Read, Write and Accept waiting on them. Listen and Dial fail
// afterwards. Idempotent.
func (n *Network) Close() error {
	n.mu.Lock()
	n.mu.closed = true
	lns := make([]*listener, 0, len(n.mu.lns))
	for _, l := range n.mu.lns {
		lns = append(lns, l)
	}
	links := make([]*Link, 0, len(n.mu.links))
	for _, l := range n.mu.links {
		links = append(links, l)
	}
	n.mu.Unlock()
	for _, l := range lns {
		l.Close()
	}
	for _, l := range links {
		l.ends[0].Close()
		l.ends[1].Close()
	}
	return nil
}

func (n *Network) newLinkLocked(addr string) *Link {
	l := &Link{n: n, id: n.mu.next, addr: addr}
	n.mu.next++
	l.open.Store(2)
	for d := range l.pipes {
		l.pipes[d] = &pipe{dir: Dir(d), cap: n.opt.BufferBytes, changed: make(chan struct{})}
	}
	local := Addr("memnet-" + strconv.FormatUint(l.id, 10))
	l.ends[0] = &Conn{l: l, rd: l.pipes[FromListener], wr: l.pipes[FromDialer], local: local, remote: Addr(addr)}
	l.ends[1] = &Conn{l: l, rd: l.pipes[FromDialer], wr: l.pipes[FromListener], local: Addr(addr), remote: local}
	n.mu.links[l.id] = l
	return l
}

func (n *Network) forget(l *Link) {
	n.mu.Lock()
	delete(n.mu.links, l.id)
	n.mu.Unlock()
}

func (n *Network) unlisten(l *listener) {
	n.mu.Lock()
	if n.mu.lns[string(l.addr)] == l {
		delete(n.mu.lns, string(l.addr))
	}
	n.mu.Unlock()
}

// listener is a net.Listener: a backlog of connections Dial made.
type listener struct {
	n    *Network
	addr Addr

	mu      sync.Mutex
	backlog []*Conn
	closed  bool
	changed chan struct{} // closed and replaced when backlog or closed change
}

// enqueue adds c to the backlog; false if the listener is closed.
func (l *listener) enqueue(c *Conn) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return false
	}
	l.backlog = append(l.backlog, c)
	close(l.changed)
	l.changed = make(chan struct{})
	return true
}

// Accept implements net.Listener.
func (l *listener) Accept() (net.Conn, error) {
	for {
		l.mu.Lock()
		if l.closed {
			l.mu.Unlock()
			return nil, &net.OpError{Op: "accept", Net: "memnet", Addr: l.addr, Err: net.ErrClosed}
		}
		if len(l.backlog) > 0 {
			c := l.backlog[0]
			l.backlog = l.backlog[1:]
			l.mu.Unlock()
			return c, nil
		}
		ch := l.changed
		l.mu.Unlock()
		<-ch
	}
}

// Close implements net.Listener: connections in the backlog are reset.
func (l *listener) Close() error {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return &net.OpError{Op: "close", Net: "memnet", Addr: l.addr, Err: net.ErrClosed}
	}
	l.closed = true
	pending := l.backlog
	l.backlog = nil
	close(l.changed)
	l.changed = make(chan struct{})
	l.mu.Unlock()
	l.n.unlisten(l)
	for _, c := range pending {
		c.l.Break()
		c.Close()
	}
	return nil
}

// Addr implements net.Listener.
func (l *listener) Addr() net.Addr { return l.addr }

// Link is one connection: two ends (the Conns Dial and Accept return) and
// a pipe each way. Its methods fault it by hand; they are safe for
// concurrent use.
type Link struct {
	n     *Network
	id    uint64
	addr  string
	pipes [2]*pipe // by Dir
	ends  [2]*Conn // the dialer's, the listener's
	open  atomic.Int32
}

// ID is the link's number: 0, 1, ... in the order of the Dials.
func (l *Link) ID() uint64 { return l.id }

// Addr is the address that was dialed.
func (l *Link) Addr() string { return l.addr }

// Break breaks the link: both ends fail at once with ErrBroken, in their
// blocked and later reads and writes, and data not yet read is lost.
func (l *Link) Break() {
	for _, p := range l.pipes {
		p.mu.Lock()
		p.broken = true
		p.q, p.queued = nil, 0
		p.notifyLocked()
		p.mu.Unlock()
	}
}

// Stall makes writes in direction d block until Resume (or a break or a
// close).
func (l *Link) Stall(d Dir) {
	p := l.pipes[d]
	p.mu.Lock()
	p.stalled = true
	p.mu.Unlock()
}

// Resume ends a stall of direction d, by hand or by a policy.
func (l *Link) Resume(d Dir) {
	p := l.pipes[d]
	p.mu.Lock()
	p.stalled = false
	p.stallEnd = time.Time{}
	p.notifyLocked()
	p.mu.Unlock()
}

// FailNextWrite makes the next write in direction d fail with an error
// wrapping ErrInjected before any of it went through.
func (l *Link) FailNextWrite(d Dir) {
	p := l.pipes[d]
	p.mu.Lock()
	p.failNext = true
	p.mu.Unlock()
}

// SetDelay holds every later write in direction d back from the reader
// for delay (on top of what a policy adds).
func (l *Link) SetDelay(d Dir, delay time.Duration) {
	p := l.pipes[d]
	p.mu.Lock()
	p.delay = delay
	p.mu.Unlock()
}

// Waiting is the number of writers blocked in direction d now (by a
// stall or a full buffer): what a test waits for to know that a write is
// held up.
func (l *Link) Waiting(d Dir) int {
	p := l.pipes[d]
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.waiting
}

// pipe is one direction of a link.
type pipe struct {
	dir Dir
	cap int

	mu        sync.Mutex
	q         []chunk
	queued    int       // bytes in q
	lastReady time.Time // when the last chunk of q may be read
	writes    uint64    // Write calls so far
	delay     time.Duration
	stalled   bool      // by hand, until Resume
	stallEnd  time.Time // by a policy, until then
	failNext  bool
	waiting   int  // writers blocked
	rclosed   bool // the reading end was closed: data dropped, writes fail
	wclosed   bool // the writing end was closed: reads drain, then io.EOF
	broken    bool
	changed   chan struct{} // closed and replaced on every change
}

type chunk struct {
	b     []byte
	ready time.Time
}

// notifyLocked wakes every goroutine waiting on p. REQUIRES: p.mu.
func (p *pipe) notifyLocked() {
	close(p.changed)
	p.changed = make(chan struct{})
}

func (p *pipe) notify() {
	p.mu.Lock()
	p.notifyLocked()
	p.mu.Unlock()
}

// Conn is one end of a link: a net.Conn.
type Conn struct {
	l      *Link
	rd, wr *pipe
	local  Addr
	remote Addr
	closed atomic.Bool
	rdl    atomic.Pointer[time.Time]
	wdl    atomic.Pointer[time.Time]
}

// Link is the link c is an end of.
func (c *Conn) Link() *Link { return c.l }

func (c *Conn) opErr(op string, err error) error {
	return &net.OpError{Op: op, Net: "memnet", Source: c.local, Addr: c.remote, Err: err}
}

func deadline(p *atomic.Pointer[time.Time]) time.Time {
	if t := p.Load(); t != nil {
		return *t
	}
	return time.Time{}
}

// wait blocks until ch is closed, until passes (if not zero) or the
// deadline dl passes (if not zero: an error).
func wait(ch <-chan struct{}, dl, until time.Time) error {
	var dlc, uc <-chan time.Time
	if !dl.IsZero() {
		t := time.NewTimer(time.Until(dl))
		defer t.Stop()
		dlc = t.C
	}
	if !until.IsZero() {
		t := time.NewTimer(time.Until(until))
		defer t.Stop()
		uc = t.C
	}
	select {
	case <-ch:
	case <-uc:
	case <-dlc:
		return os.ErrDeadlineExceeded
	}
	return nil
}

// Read implements net.Conn.
func (c *Conn) Read(b []byte) (int, error) {
	p := c.rd
	for {
		p.mu.Lock()
		switch {
		case p.rclosed:
			p.mu.Unlock()
			return 0, c.opErr("read", net.ErrClosed)
		case p.broken:
			p.mu.Unlock()
			return 0, c.opErr("read", ErrBroken)
		}
		now := time.Now()
		var until time.Time
		if len(p.q) > 0 {
			if !p.q[0].ready.After(now) {
				n := 0
				for n < len(b) && len(p.q) > 0 && !p.q[0].ready.After(now) {
					h := &p.q[0]
					m := copy(b[n:], h.b)
					n += m
					if h.b = h.b[m:]; len(h.b) == 0 {
						p.q[0] = chunk{}
						p.q = p.q[1:]
					}
				}
				p.queued -= n
				p.notifyLocked()
				p.mu.Unlock()
				return n, nil
			}
			until = p.q[0].ready
		} else if p.wclosed {
			p.mu.Unlock()
			return 0, io.EOF
		}
		if len(b) == 0 {
			p.mu.Unlock()
			return 0, nil
		}
		dl := deadline(&c.rdl)
		if !dl.IsZero() && !now.Before(dl) {
			p.mu.Unlock()
			return 0, c.opErr("read", os.ErrDeadlineExceeded)
		}
		ch := p.changed
		p.mu.Unlock()
		if err := wait(ch, dl, until); err != nil {
			return 0, c.opErr("read", err)
		}
	}
}

// Write implements net.Conn. The policy is asked about it first.
func (c *Conn) Write(b []byte) (int, error) {
	p := c.wr
	p.mu.Lock()
	w := Write{Link: c.l.id, Dir: p.dir, N: p.writes, Bytes: len(b)}
	p.writes++
	failNext := p.failNext
	p.failNext = false
	p.mu.Unlock()
	var act Action
	if pol := c.l.n.opt.Policy; pol != nil {
		act = pol(w)
	}
	if failNext {
		act.Fail, act.Keep = true, 0
	}
	switch {
	case act.Break:
		c.l.Break()
		return 0, c.opErr("write", ErrBroken)
	case act.Stall > 0:
		p.mu.Lock()
		if end := time.Now().Add(act.Stall); end.After(p.stallEnd) {
			p.stallEnd = end
		}
		p.mu.Unlock()
	}
	if act.Fail {
		keep := min(max(act.Keep, 0), len(b))
		n, err := c.put(b[:keep], act.Delay)
		if err != nil {
			return n, err
		}
		return n, c.opErr("write", fmt.Errorf("%w after %d of %d bytes (link %d %s, write %d)", ErrInjected, keep, len(b), w.Link, w.Dir, w.N))
	}
	return c.put(b, act.Delay)
}

// put queues b for the reader, as room allows, each piece readable extra
// (plus the direction's delay) after it was queued.
func (c *Conn) put(b []byte, extra time.Duration) (int, error) {
	p := c.wr
	written := 0
	for written < len(b) {
		p.mu.Lock()
		var err error
		switch {
		case p.wclosed:
			err = net.ErrClosed
		case p.broken:
			err = ErrBroken
		case p.rclosed:
			err = errPeerClosed
		}
		if err != nil {
			p.mu.Unlock()
			return written, c.opErr("write", err)
		}
		now := time.Now()
		var until time.Time
		blocked := p.stalled
		if now.Before(p.stallEnd) {
			blocked, until = true, p.stallEnd
		}
		if room := p.cap - p.queued; !blocked && room > 0 {
			m := min(room, len(b)-written)
			ready := now.Add(p.delay + extra)
			if ready.Before(p.lastReady) {
				ready = p.lastReady
			}
			p.lastReady = ready
			p.q = append(p.q, chunk{b: append([]byte(nil), b[written:written+m]...), ready: ready})
			p.queued += m
			written += m
			p.notifyLocked()
			p.mu.Unlock()
			continue
		}
		dl := deadline(&c.wdl)
		if !dl.IsZero() && !now.Before(dl) {
			p.mu.Unlock()
			return written, c.opErr("write", os.ErrDeadlineExceeded)
		}
		ch := p.changed
		p.waiting++
		p.mu.Unlock()
		err = wait(ch, dl, until)
		p.mu.Lock()
		p.waiting--
		p.mu.Unlock()
		if err != nil {
			return written, c.opErr("write", err)
		}
	}
	return written, nil
}

// Close implements net.Conn: this end's blocked and later reads and
// writes fail with an error wrapping net.ErrClosed; the peer reads what
// was written before, then io.EOF, and its writes fail.
func (c *Conn) Close() error {
	if c.closed.Swap(true) {
		return c.opErr("close", net.ErrClosed)
	}
	c.rd.mu.Lock()
	c.rd.rclosed = true
	c.rd.q, c.rd.queued = nil, 0
	c.rd.notifyLocked()
	c.rd.mu.Unlock()
	c.wr.mu.Lock()
	c.wr.wclosed = true
	c.wr.notifyLocked()
	c.wr.mu.Unlock()
	if c.l.open.Add(-1) == 0 {
		c.l.n.forget(c.l)
	}
	return nil
}

// LocalAddr implements net.Conn.
func (c *Conn) LocalAddr() net.Addr { return c.local }

// RemoteAddr implements net.Conn.
func (c *Conn) RemoteAddr() net.Addr { return c.remote }

// SetDeadline implements net.Conn.
func (c *Conn) SetDeadline(t time.Time) error {
	c.SetReadDeadline(t)
	return c.SetWriteDeadline(t)
}

// SetReadDeadline implements net.Conn.
func (c *Conn) SetReadDeadline(t time.Time) error {
	c.rdl.Store(&t)
	c.rd.notify()
	return nil
}

// SetWriteDeadline implements net.Conn.
func (c *Conn) SetWriteDeadline(t time.Time) error {
	c.wdl.Store(&t)
	c.wr.notify()
	return nil
}
