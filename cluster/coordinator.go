package cluster

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gobps/gobps/internal/accept"
	"github.com/gobps/gobps/internal/auth"
	"github.com/gobps/gobps/proto"
)

// DefaultHeartbeatTimeout is used when CoordinatorConfig.HeartbeatTimeout is 0.
const DefaultHeartbeatTimeout = 5 * time.Second

// ErrClosed is returned by Run when Close stopped it.
var ErrClosed = errors.New("cluster: coordinator closed")

// CoordinatorConfig configures a Coordinator.
type CoordinatorConfig struct {
	Addr       string // listen address, e.g. "127.0.0.1:0"
	NumWorkers int    // expected worker processes, >= 1
	NumServers int    // expected servers, >= 0
	// HeartbeatTimeout: a node silent this long is dead. 0 means
	// DefaultHeartbeatTimeout. Members must heartbeat well within it (their
	// default interval is 1s).
	HeartbeatTimeout time.Duration
	Logf             func(format string, args ...any) // optional
	// Listener, if set, is where the coordinator accepts connections
	// instead of listening on Addr (tests: an in-memory network that
	// injects faults). The coordinator closes it.
	Listener net.Listener
	// Auth, if enabled (see auth.Config.Enabled), is the job's
	// authentication: every accepted connection must pass Auth.Accept
	// (run on the connection's own goroutine, bounded by Auth's timeout)
	// before anything is read from it as a frame. A connection that fails
	// is closed and logged; nothing it sent is used. nil: no
	// authentication.
	Auth *auth.Config
	// Progress, if positive, is how often the coordinator logs the job's
	// progress from the workers' reports (GOBPS_PROGRESS; see Progress):
	// one line, prefixed "NOTICE: " (shown at every log level).
	Progress time.Duration
}

func (cfg *CoordinatorConfig) validate() error {
	if cfg.Addr == "" && cfg.Listener == nil {
		return errors.New("cluster: coordinator: empty listen address")
	}
	if cfg.NumWorkers < 1 || cfg.NumWorkers > proto.MaxRank+1 {
		return fmt.Errorf("cluster: coordinator: %d workers, want 1..%d", cfg.NumWorkers, proto.MaxRank+1)
	}
	if cfg.NumServers < 0 || cfg.NumServers > proto.MaxRank+1 {
		return fmt.Errorf("cluster: coordinator: %d servers, want 0..%d", cfg.NumServers, proto.MaxRank+1)
	}
	if cfg.HeartbeatTimeout == 0 {
		cfg.HeartbeatTimeout = DefaultHeartbeatTimeout
	}
	if cfg.HeartbeatTimeout < time.Millisecond {
		return fmt.Errorf("cluster: coordinator: heartbeat timeout %v, want >= 1ms", cfg.HeartbeatTimeout)
	}
	return nil
}

// Coordinator is the job's rendezvous point (BytePS's scheduler): it assigns
// ranks, publishes the address book, runs barriers, watches heartbeats,
// reports deaths and ends the job. See the package documentation.
type Coordinator struct {
	cfg    CoordinatorConfig
	ln     net.Listener
	tick   time.Duration // how often silence is checked and heartbeats are sent
	linger time.Duration // how long an orderly close waits for the peer

	mu struct {
		sync.Mutex
		started bool
		closed  bool
	}
	closing  chan struct{} // closed by Close
	runDone  chan struct{} // closed when Run has returned
	loopDone chan struct{} // closed when the event loop takes no more events
	events   chan event    // unbuffered: a posted event is always handled
	wg       sync.WaitGroup

	// Test hooks, set before Run, called by the loop: registered for each
	// registration; handling when it takes up a frame of a registered
	// node; sent for each frame queued for a registered node (heartbeats
	// aside); ticked after each check of silence.
	registered func(Node)
	handling   func(Node, proto.Op)
	sent       func(Node, proto.Op)
	ticked     func()

	// The fields below are owned by the goroutine running Run.
	peers        map[*peer]struct{} // every connection whose reader has not finished
	workers      []*peer            // by rank; nil where free
	servers      []*peer            // by rank; nil where free
	bookSent     bool
	shutdownSent bool
	dead         []NodeEvent
	barriers     [All + 1]barrier // indexed by Group
	backlogged   []*peer          // peers whose send queue overflowed, dropped after the current event

	stats    coordinatorStats // counted by the loop, read by Stats (stats.go)
	progress progress         // the workers' reports (progress.go); owned by the loop
}

// phase is where a connection is in its life. A peer moves only forward:
// new -> registered -> active -> left or dead.
type phase uint8

const (
	phaseNew        phase = iota // connected, not yet registered
	phaseRegistered              // holds a rank; the book is not complete
	phaseActive                  // has been sent the book
	phaseLeft                    // said OpLeave
	phaseDead                    // lost without OpLeave after the book
)

// peer is one control connection.
type peer struct {
	conn     net.Conn
	out      chan outFrame // loop -> writer; only the loop sends and closes
	readDone chan struct{} // closed when the reader returns
	lastSeen atomic.Int64  // unix nanoseconds of the last frame read

	// claimed is the node id the peer claimed in the authentication
	// handshake (0: none, or no authentication); set before the peer
	// reaches the loop, read-only afterwards.
	claimed uint32

	// Owned by the loop.
	phase  phase
	closed bool // out is closed: nothing more is sent, the writer closes conn
	node   Node
}

type outFrame struct {
	h       proto.Header
	payload []byte
}

type eventKind uint8

const (
	evConn        eventKind = iota // a new connection
	evFrame                        // a frame other than a heartbeat
	evReadDone                     // the reader stopped with err
	evWriteFailed                  // the writer stopped with err
)

type event struct {
	kind    eventKind
	p       *peer
	conn    net.Conn
	claimed uint32 // evConn: the id the handshake claimed
	h       proto.Header
	payload []byte
	err     error
}

// barrier collects one group's current round.
type barrier struct {
	round   uint64           // the round being collected; the first is 1
	waiting map[*peer]uint64 // entered peers -> their request ids
}

// protocolError is a peer's violation of the control protocol.
type protocolError string

func (e protocolError) Error() string { return string(e) }

// NewCoordinator validates cfg and starts listening. Connections wait in the
// listen queue until Run is called.
func NewCoordinator(cfg CoordinatorConfig) (*Coordinator, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	ln := cfg.Listener
	if ln == nil {
		var err error
		if ln, err = net.Listen("tcp", cfg.Addr); err != nil {
			return nil, fmt.Errorf("cluster: coordinator: %w", err)
		}
	}
	c := &Coordinator{
		cfg:      cfg,
		ln:       ln,
		tick:     min(max(cfg.HeartbeatTimeout/4, time.Millisecond), time.Second, progressTick(cfg.Progress)),
		linger:   time.Second,
		closing:  make(chan struct{}),
		runDone:  make(chan struct{}),
		loopDone: make(chan struct{}),
		events:   make(chan event),
		peers:    make(map[*peer]struct{}),
		workers:  make([]*peer, cfg.NumWorkers),
		progress: progress{every: cfg.Progress},
		servers:  make([]*peer, cfg.NumServers),
	}
	for g := range c.barriers {
		c.barriers[g] = barrier{round: 1, waiting: make(map[*peer]uint64)}
	}
	return c, nil
}

// Addr is the address the coordinator listens on.
func (c *Coordinator) Addr() string { return c.ln.Addr().String() }

func (c *Coordinator) logf(format string, args ...any) {
	if c.cfg.Logf != nil {
		c.cfg.Logf(format, args...)
	}
}

// Run serves the job until it is over: it returns nil once every node has
// registered and then left; an error naming the dead nodes if any died (after
// the others have left); ctx.Err() if ctx is cancelled; ErrClosed after
// Close. When it returns, every connection is closed and every goroutine it
// started has exited. Run may be called once.
func (c *Coordinator) Run(ctx context.Context) error {
	c.mu.Lock()
	switch {
	case c.mu.closed:
		c.mu.Unlock()
		return ErrClosed
	case c.mu.started:
		c.mu.Unlock()
		return errors.New("cluster: coordinator: Run called twice")
	}
	c.mu.started = true
	c.mu.Unlock()
	defer close(c.runDone)

	c.wg.Add(1)
	go c.accept()
	err := c.loop(ctx)

	close(c.loopDone)
	_ = c.ln.Close()
	for p := range c.peers {
		c.closePeer(p)
		_ = p.conn.Close()
	}
	c.wg.Wait()
	return err
}

// Close stops the coordinator: Run returns ErrClosed after closing every
// connection, and Close waits for that. Close is idempotent.
func (c *Coordinator) Close() error {
	c.mu.Lock()
	first := !c.mu.closed
	c.mu.closed = true
	started := c.mu.started
	c.mu.Unlock()
	if first {
		close(c.closing)
		_ = c.ln.Close()
	}
	if started {
		<-c.runDone
	}
	return nil
}

// post hands ev to the loop; it returns false once the loop has stopped.
func (c *Coordinator) post(ev event) bool {
	select {
	case c.events <- ev:
		return true
	case <-c.loopDone:
		return false
	}
}

func (c *Coordinator) accept() {
	defer c.wg.Done()
	logf := func(format string, args ...any) { c.logf("cluster: coordinator: "+format, args...) }
	// A transient Accept error (running out of file descriptors, say) is
	// retried with a backoff that ends when the loop stops.
	accept.Loop(c.ln, c.loopDone, logf, func(conn net.Conn) {
		if c.cfg.Auth.Enabled() {
			// Never on this goroutine: a slow or silent peer must not
			// hold up the others.
			c.wg.Add(1)
			go c.handshake(conn)
			return
		}
		if !c.post(event{kind: evConn, conn: conn}) {
			_ = conn.Close()
		}
	})
}

// handshake authenticates conn (Auth.Accept, bounded by its timeout) and
// hands it to the loop; a connection that fails is logged once and closed.
// A peer that spoke a plain control frame instead of the handshake (a
// member without the job's secret) is told why in an OpError, so that its
// Join fails with a clear reason rather than a lost connection; nothing it
// sent is read.
func (c *Coordinator) handshake(raw net.Conn) {
	defer c.wg.Done()
	stop := make(chan struct{})
	c.wg.Add(1)
	go func() { // Run's end interrupts the handshake
		defer c.wg.Done()
		select {
		case <-c.loopDone:
			_ = raw.Close()
		case <-stop:
		}
	}()
	rec := &firstBytes{Conn: raw}
	conn, claimed, err := c.cfg.Auth.Accept(rec, SchedulerID)
	close(stop)
	if err != nil {
		select {
		case <-c.loopDone: // interrupted: not the peer's fault
		default:
			c.logf("cluster: coordinator: refused connection from %s: authentication failed: %v", raw.RemoteAddr(), err)
			if rec.plainFrame() {
				c.tellUnauthenticated(raw)
			}
		}
		_ = raw.Close()
		return
	}
	if conn == net.Conn(rec) {
		conn = raw // no TLS: the recorder has done its job
	}
	if !c.post(event{kind: evConn, conn: conn, claimed: claimed}) {
		_ = conn.Close()
	}
}

// unauthenticatedMsg is what a peer that spoke a plain control frame to a
// coordinator that requires the handshake is told.
const unauthenticatedMsg = "this process did not authenticate: the job requires its handshake " +
	"(GOBPS_SECRET, and GOBPS_TLS_* if set, must be the same in every process of the job)"

// tellUnauthenticated sends unauthenticatedMsg in an OpError on raw and
// closes its sending side in order, waiting briefly (until the peer
// closes, at most the linger) so that its unread input does not turn the
// close into a reset that destroys the message.
func (c *Coordinator) tellUnauthenticated(raw net.Conn) {
	_ = raw.SetDeadline(time.Now().Add(c.linger))
	if proto.WriteFrame(raw, proto.Header{Op: proto.OpError, Sender: SchedulerID}, []byte(unauthenticatedMsg)) != nil {
		return
	}
	if cw, ok := raw.(interface{ CloseWrite() error }); ok && cw.CloseWrite() == nil {
		drained := make(chan struct{})
		go func() {
			_, _ = io.Copy(io.Discard, raw)
			close(drained)
		}()
		select {
		case <-drained:
		case <-c.loopDone:
			_ = raw.Close()
			<-drained
		}
	}
}

// firstBytes records the first bytes read from a connection, so that a
// refused handshake can tell a plain control frame (a member without the
// secret) from anything else.
type firstBytes struct {
	net.Conn
	n int
	b [4]byte
}

func (f *firstBytes) Read(p []byte) (int, error) {
	n, err := f.Conn.Read(p)
	if f.n < len(f.b) {
		f.n += copy(f.b[f.n:], p[:n])
	}
	return n, err
}

// plainFrame reports whether the first bytes read were a frame's magic.
func (f *firstBytes) plainFrame() bool {
	return f.n == len(f.b) && binary.LittleEndian.Uint32(f.b[:]) == proto.Magic
}

// read forwards p's frames to the loop. Heartbeats only refresh lastSeen.
func (c *Coordinator) read(p *peer) {
	defer c.wg.Done()
	defer close(p.readDone)
	first := true
	for {
		var h proto.Header
		var payload []byte
		var err error
		if first {
			h, payload, err = c.readFirst(p.conn)
		} else {
			h, payload, err = proto.ReadFrame(p.conn, proto.MaxControlPayload)
		}
		if err == nil && first && h.Op != proto.OpRegister {
			err = protocolError(fmt.Sprintf("first frame must be %s, got %s", proto.OpRegister, h.Op))
		}
		if err != nil {
			c.post(event{kind: evReadDone, p: p, err: err})
			return
		}
		first = false
		p.lastSeen.Store(time.Now().UnixNano())
		if h.Op == proto.OpHeartbeat {
			continue
		}
		if !c.post(event{kind: evFrame, p: p, h: h, payload: payload}) {
			return
		}
	}
}

// readFirst reads a connection's first frame. A peer that opens with the
// authentication handshake's hello (it has a secret, this coordinator has
// none) is refused at once: its hello is shorter than a frame header, so
// both sides would otherwise wait for a timeout.
func (c *Coordinator) readFirst(conn net.Conn) (proto.Header, []byte, error) {
	var m [len(auth.Magic)]byte
	if _, err := io.ReadFull(conn, m[:]); err != nil {
		return proto.Header{}, nil, err
	}
	if string(m[:]) == auth.Magic && (c.cfg.Auth == nil || len(c.cfg.Auth.Secret) == 0) {
		return proto.Header{}, nil, protocolError("the process started the job's authentication handshake, but this coordinator has no secret " +
			"(GOBPS_SECRET must be the same in every process of the job)")
	}
	return proto.ReadFrame(io.MultiReader(bytes.NewReader(m[:]), conn), proto.MaxControlPayload)
}

// write sends what the loop queues for p. When the loop closes p.out, write
// closes the connection in order: FIN after the last frame, then it waits a
// little for the peer to close its side, so that input still unread here does
// not turn the close into a reset that could destroy the last frames (an
// OpError saying why the peer is being dropped).
func (c *Coordinator) write(p *peer) {
	defer c.wg.Done()
	for f := range p.out {
		_ = p.conn.SetWriteDeadline(time.Now().Add(max(c.cfg.HeartbeatTimeout, time.Second)))
		if err := proto.WriteFrame(p.conn, f.h, f.payload); err != nil {
			c.post(event{kind: evWriteFailed, p: p, err: err})
			_ = p.conn.Close()
			return
		}
	}
	if cw, ok := p.conn.(interface{ CloseWrite() error }); ok && cw.CloseWrite() == nil {
		t := time.NewTimer(c.linger)
		select {
		case <-p.readDone:
			// The reader stopped, maybe on a bad frame with more input
			// behind it: drain that input until the peer closes.
			_ = p.conn.SetReadDeadline(time.Now().Add(c.linger))
			_, _ = io.Copy(io.Discard, p.conn)
		case <-t.C:
		case <-c.loopDone:
		}
		t.Stop()
	}
	_ = p.conn.Close()
}

func (c *Coordinator) loop(ctx context.Context) error {
	t := time.NewTicker(c.tick)
	defer t.Stop()
	for {
		var err error
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-c.closing:
			return ErrClosed
		case now := <-t.C:
			c.onTick(now)
		case ev := <-c.events:
			err = c.onEvent(ev)
		}
		for len(c.backlogged) > 0 {
			p := c.backlogged[0]
			c.backlogged = c.backlogged[1:]
			c.drop(p, "control connection backed up", false)
		}
		if err != nil {
			return err
		}
		if c.bookSent && c.live(All) == 0 {
			if len(c.dead) == 0 {
				c.logf("cluster: coordinator: every node has left; the job is over")
				return nil
			}
			msgs := make([]string, len(c.dead))
			for i, ev := range c.dead {
				msgs[i] = ev.String()
			}
			return errors.New("cluster: " + strings.Join(msgs, "; "))
		}
	}
}

func (c *Coordinator) onEvent(ev event) error {
	p := ev.p
	switch ev.kind {
	case evConn:
		p = &peer{
			conn:     ev.conn,
			out:      make(chan outFrame, 256),
			readDone: make(chan struct{}),
			claimed:  ev.claimed,
		}
		p.lastSeen.Store(time.Now().UnixNano())
		c.peers[p] = struct{}{}
		c.wg.Add(2)
		go c.read(p)
		go c.write(p)
	case evFrame:
		if !p.closed {
			if c.handling != nil && p.phase != phaseNew {
				c.handling(p.node, ev.h.Op)
			}
			return c.onFrame(p, ev.h, ev.payload)
		}
	case evWriteFailed:
		c.drop(p, "connection lost: "+ev.err.Error(), false)
	case evReadDone:
		var pe protocolError
		if errors.As(ev.err, &pe) || errors.Is(ev.err, proto.ErrBadFrame) {
			c.drop(p, "protocol error: "+ev.err.Error(), true)
		} else {
			c.drop(p, "connection lost: "+ev.err.Error(), false)
		}
		delete(c.peers, p)
	}
	return nil
}

func (c *Coordinator) onFrame(p *peer, h proto.Header, payload []byte) error {
	if h.Sender != 0 && p.phase >= phaseRegistered && h.Sender != p.node.ID {
		c.drop(p, fmt.Sprintf("protocol error: %s frame with sender %#x, this node is %#x", h.Op, h.Sender, p.node.ID), true)
		return nil
	}
	switch h.Op {
	case proto.OpRegister:
		if p.phase != phaseNew {
			c.drop(p, "protocol error: registered twice", true)
			return nil
		}
		return c.register(p, payload)
	case proto.OpBarrier:
		c.enterBarrier(p, h)
	case proto.OpLeave:
		c.leave(p)
	case proto.OpProgress:
		pr, err := decodeProgress(payload)
		switch {
		case p.phase < phaseRegistered || p.node.Role != RoleWorker:
			c.drop(p, fmt.Sprintf("protocol error: %s frame from a node that is not a registered worker", h.Op), true)
		case err != nil:
			c.drop(p, "protocol error: "+err.Error(), true)
		default:
			c.progress.record(p.node.Rank, pr, time.Now())
		}
	case proto.OpReport:
		if p.phase < phaseRegistered {
			c.drop(p, "protocol error: report before registering", true)
			return nil
		}
		c.logf("WARNING: %s reports: %s", p.node, reportText(payload))
	default:
		c.drop(p, fmt.Sprintf("protocol error: unexpected %s frame from a node", h.Op), true)
	}
	return nil
}

func (c *Coordinator) onTick(now time.Time) {
	if l := c.progress.line(now, c.cfg.NumWorkers); l != "" {
		c.logf("NOTICE: %s", l)
	}
	for p := range c.peers {
		if p.closed {
			continue
		}
		if now.Sub(time.Unix(0, p.lastSeen.Load())) > c.cfg.HeartbeatTimeout {
			if p.phase == phaseNew {
				c.drop(p, fmt.Sprintf("no registration within %v", c.cfg.HeartbeatTimeout), true)
			} else {
				c.drop(p, fmt.Sprintf("no heartbeat for %v", c.cfg.HeartbeatTimeout), true)
			}
			continue
		}
		if p.phase == phaseRegistered || p.phase == phaseActive {
			c.send(p, proto.Header{Op: proto.OpHeartbeat}, nil)
		}
	}
	if c.ticked != nil {
		c.ticked()
	}
}

// send queues a frame for p without blocking. A peer whose queue is full is
// not reading: it is dropped once the current event is handled.
func (c *Coordinator) send(p *peer, h proto.Header, payload []byte) {
	if p.closed {
		return
	}
	h.Sender = SchedulerID
	if c.sent != nil && p.phase != phaseNew && h.Op != proto.OpHeartbeat {
		c.sent(p.node, h.Op)
	}
	select {
	case p.out <- outFrame{h, payload}:
	default:
		c.backlogged = append(c.backlogged, p)
	}
}

// closePeer stops sending to p; its writer then closes the connection.
func (c *Coordinator) closePeer(p *peer) {
	if !p.closed {
		p.closed = true
		close(p.out)
	}
}

// drop closes p's connection for reason, telling the peer why when tell is
// set, and settles what p's departure means for the job.
func (c *Coordinator) drop(p *peer, reason string, tell bool) {
	if p.closed {
		return
	}
	if tell {
		c.send(p, proto.Header{Op: proto.OpError}, []byte(reason))
	}
	c.closePeer(p)
	switch p.phase {
	case phaseNew:
		c.logf("cluster: coordinator: closed connection from %s: %s", p.conn.RemoteAddr(), reason)
	case phaseRegistered:
		// Gone before the book was complete: give the rank back, so that a
		// restarted process can take it.
		c.free(p)
		c.logf("cluster: coordinator: %s went away before the address book was complete: %s", p.node, reason)
	case phaseActive:
		c.died(p, reason)
	}
}

func (c *Coordinator) slots(r Role) []*peer {
	if r == RoleServer {
		return c.servers
	}
	return c.workers
}

func (c *Coordinator) free(p *peer) {
	if s := c.slots(p.node.Role); s[p.node.Rank] == p {
		s[p.node.Rank] = nil
	}
}

// live counts the active (booked, neither left nor dead) members of g.
func (c *Coordinator) live(g Group) int {
	n := 0
	for _, r := range []Role{RoleWorker, RoleServer} {
		if !g.has(r) {
			continue
		}
		for _, q := range c.slots(r) {
			if q != nil && q.phase == phaseActive {
				n++
			}
		}
	}
	return n
}

func (c *Coordinator) register(p *peer, payload []byte) error {
	refuse := func(format string, args ...any) error {
		c.drop(p, fmt.Sprintf(format, args...), true)
		return nil
	}
	if c.bookSent {
		return refuse("the job's membership is already complete (%d workers, %d servers); elastic membership is not supported",
			c.cfg.NumWorkers, c.cfg.NumServers)
	}
	var reg Registration
	if err := json.Unmarshal(payload, &reg); err != nil {
		return refuse("malformed registration: %v", err)
	}
	if err := reg.check(); err != nil {
		return refuse("malformed registration: %v", err)
	}
	slots := c.slots(reg.Role)
	rank := -1
	switch {
	case len(slots) == 0:
		return refuse("this job has no %ss", reg.Role)
	case reg.Role == RoleWorker && reg.WorkerID >= 0:
		n := c.cfg.NumWorkers
		if reg.WorkerID >= n || reg.LocalSize > n {
			return refuse("worker id %d with local size %d is outside the job's %d workers", reg.WorkerID, reg.LocalSize, n)
		}
		rank = reg.WorkerID*reg.LocalSize + reg.LocalRank
		if rank >= n {
			return refuse("worker rank %d (worker id %d * local size %d + local rank %d) is outside 0..%d",
				rank, reg.WorkerID, reg.LocalSize, reg.LocalRank, n-1)
		}
		if err := c.checkClaim(p, reg.Role, rank); err != nil {
			return refuse("%v", err)
		}
		if q := slots[rank]; q != nil {
			return refuse("worker rank %d (worker id %d, local rank %d) is already taken by %s",
				rank, reg.WorkerID, reg.LocalRank, publicName(q.node))
		}
	case reg.Role == RoleServer && reg.WorkerID >= 0:
		if reg.WorkerID >= len(slots) {
			return refuse("server rank %d is outside 0..%d", reg.WorkerID, len(slots)-1)
		}
		rank = reg.WorkerID
		if err := c.checkClaim(p, reg.Role, rank); err != nil {
			return refuse("%v", err)
		}
		if q := slots[rank]; q != nil {
			return refuse("server rank %d is already taken by %s", rank, publicName(q.node))
		}
	default:
		// The lowest free rank: a rank held by a registered node is never
		// free, so a newcomer never takes over a live node's rank.
		for i, q := range slots {
			if q == nil {
				rank = i
				break
			}
		}
		if rank < 0 {
			return refuse("all %d %s ranks are taken", len(slots), reg.Role)
		}
		if err := c.checkClaim(p, reg.Role, rank); err != nil {
			return refuse("%v", err)
		}
	}
	// INVARIANT: slots[rank] is free here; a registration never displaces
	// the node that holds a rank (that one keeps it until it leaves or
	// dies, and after the book no rank is ever given again).

	host := ""
	if h, _, err := net.SplitHostPort(p.conn.RemoteAddr().String()); err == nil {
		host = h
	}
	addr := reg.Addr
	if reg.Role == RoleServer {
		// A server listening on all interfaces reports an address nobody can
		// dial; use the host it registered from.
		h, port, _ := net.SplitHostPort(addr)
		if ip := net.ParseIP(h); (h == "" || ip != nil && ip.IsUnspecified()) && host != "" {
			addr = net.JoinHostPort(host, port)
		}
	}
	p.node = Node{Role: reg.Role, Rank: rank, ID: NodeID(reg.Role, rank), Addr: addr, Host: host, PID: reg.PID}
	p.phase = phaseRegistered
	slots[rank] = p
	c.logf("cluster: coordinator: registered %s from %s", p.node, host)
	if c.registered != nil {
		c.registered(p.node)
	}
	for _, s := range [][]*peer{c.workers, c.servers} {
		for _, q := range s {
			if q == nil {
				return nil
			}
		}
	}
	return c.sendBook()
}

// checkClaim refuses a registration as role and rank from a peer whose
// authentication handshake claimed another node id. A peer that claimed
// none (0: no authentication, or a member that asks for any rank) may
// register as anything.
func (c *Coordinator) checkClaim(p *peer, role Role, rank int) error {
	if p.claimed == 0 || p.claimed == NodeID(role, rank) {
		return nil
	}
	claimed := fmt.Sprintf("%#x", p.claimed)
	if r, k, ok := SplitNodeID(p.claimed); ok {
		claimed = fmt.Sprintf("%s %d (%s)", r, k, claimed)
	}
	return fmt.Errorf("the registration as %s %d does not match the id the authentication handshake claimed: %s", role, rank, claimed)
}

// publicName names n for a refusal sent to a peer that has not (yet)
// registered: role, rank and pid, without the addresses the job's nodes
// listen on.
func publicName(n Node) string {
	n.Addr = ""
	return n.String()
}

// sendBook publishes the address book to every node once all have registered.
func (c *Coordinator) sendBook() error {
	var book Book
	for _, q := range c.workers {
		book.Workers = append(book.Workers, q.node)
	}
	for _, q := range c.servers {
		book.Servers = append(book.Servers, q.node)
	}
	c.bookSent = true
	for _, s := range [][]*peer{c.workers, c.servers} {
		for _, q := range s {
			b, err := json.Marshal(bookMsg{Self: q.node, Book: book, HeartbeatTimeout: c.cfg.HeartbeatTimeout})
			if err != nil {
				return fmt.Errorf("cluster: encode address book: %w", err)
			}
			if len(b) > proto.MaxControlPayload {
				return fmt.Errorf("cluster: the address book of %d nodes is %d bytes, over the control frame limit of %d",
					len(book.Workers)+len(book.Servers), len(b), proto.MaxControlPayload)
			}
			q.phase = phaseActive
			c.stats.active[statIndex(q.node.Role)].Add(1)
			c.send(q, proto.Header{Op: proto.OpBook}, b)
		}
	}
	c.logf("cluster: coordinator: address book complete: %d workers, %d servers", len(book.Workers), len(book.Servers))
	return nil
}

// died settles the death of an active node: everyone else hears of it, and
// barriers that wait on it fail.
func (c *Coordinator) died(p *peer, reason string) {
	p.phase = phaseDead
	c.stats.active[statIndex(p.node.Role)].Add(-1)
	c.stats.deaths[statIndex(p.node.Role)].Add(1)
	if p.node.Role == RoleWorker {
		c.progress.forget(p.node.Rank)
	}
	ev := NodeEvent{Node: p.node, Reason: reason}
	c.dead = append(c.dead, ev)
	c.logf("cluster: coordinator: %s", ev)
	b, _ := json.Marshal(ev) // cannot fail: plain strings and ints
	for _, s := range [][]*peer{c.workers, c.servers} {
		for _, q := range s {
			if q.phase == phaseActive {
				c.send(q, proto.Header{Op: proto.OpNodeDead}, b)
			}
		}
	}
	for g := Workers; g <= All; g++ {
		if !g.has(p.node.Role) {
			continue
		}
		bar := &c.barriers[g]
		for q, id := range bar.waiting {
			c.send(q, proto.Header{Op: proto.OpError, Key: proto.Key(g), Round: bar.round, ReqID: id}, []byte(ev.String()))
		}
		if len(bar.waiting) > 0 {
			clear(bar.waiting)
			bar.round++
		}
	}
	c.checkShutdown()
}

func (c *Coordinator) leave(p *peer) {
	if p.phase == phaseRegistered {
		c.drop(p, "left before the address book was complete", false)
		return
	}
	if p.phase == phaseActive {
		c.stats.active[statIndex(p.node.Role)].Add(-1)
		c.stats.departures[statIndex(p.node.Role)].Add(1)
	}
	if p.node.Role == RoleWorker {
		c.progress.forget(p.node.Rank)
	}
	p.phase = phaseLeft
	c.closePeer(p)
	c.logf("cluster: coordinator: %s left", p.node)
	if p.node.Role == RoleWorker && !c.shutdownSent {
		if n := c.live(Workers); n > 0 {
			// A worker that leaves before the others: they (and the
			// servers, which fail the rounds that need its pushes) hear
			// of it at once, rather than wait for it.
			ev := NodeEvent{Node: p.node, Left: true, Reason: fmt.Sprintf("it shut down while %d other worker(s) still run", n)}
			b, _ := json.Marshal(ev) // cannot fail: plain strings and ints
			for _, s := range [][]*peer{c.workers, c.servers} {
				for _, q := range s {
					if q.phase == phaseActive {
						c.send(q, proto.Header{Op: proto.OpNodeLeft}, b)
					}
				}
			}
		}
	}
	for g := Workers; g <= All; g++ {
		if g.has(p.node.Role) {
			delete(c.barriers[g].waiting, p)
			c.tryRelease(g)
		}
	}
	c.checkShutdown()
}

// checkShutdown tells the servers the job is over once no worker is active.
func (c *Coordinator) checkShutdown() {
	if !c.bookSent || c.shutdownSent || c.live(Workers) > 0 {
		return
	}
	c.shutdownSent = true
	c.logf("cluster: coordinator: every worker is gone; shutting the servers down")
	for _, q := range c.servers {
		if q.phase == phaseActive {
			c.send(q, proto.Header{Op: proto.OpShutdown}, nil)
		}
	}
}

func (c *Coordinator) enterBarrier(p *peer, h proto.Header) {
	if p.phase != phaseActive {
		c.drop(p, "protocol error: barrier before the address book", true)
		return
	}
	g := Group(h.Key)
	fail := func(format string, args ...any) {
		c.send(p, proto.Header{Op: proto.OpError, Key: h.Key, Round: h.Round, ReqID: h.ReqID}, fmt.Appendf(nil, format, args...))
	}
	if h.Key > proto.Key(All) || !g.valid() {
		fail("unknown barrier group %d", uint64(h.Key))
		return
	}
	if !g.has(p.node.Role) {
		fail("%s is not in barrier group %s", p.node, g)
		return
	}
	for _, ev := range c.dead {
		if g.has(ev.Node.Role) {
			fail("%s", ev)
			return
		}
	}
	bar := &c.barriers[g]
	if _, ok := bar.waiting[p]; ok {
		fail("%s is already waiting in barrier %s round %d", p.node, g, bar.round)
		return
	}
	if h.Round != bar.round {
		fail("%s entered barrier %s round %d, the group is at round %d", p.node, g, h.Round, bar.round)
		return
	}
	bar.waiting[p] = h.ReqID
	c.tryRelease(g)
}

// tryRelease releases g's barrier if every active member of g has entered.
func (c *Coordinator) tryRelease(g Group) {
	bar := &c.barriers[g]
	if len(bar.waiting) == 0 || len(bar.waiting) < c.live(g) {
		return
	}
	// INVARIANT: waiting holds only active members of g (leavers are
	// removed, a death clears it), so equal counts mean all have entered.
	for q, id := range bar.waiting {
		c.send(q, proto.Header{Op: proto.OpBarrierOK, Key: proto.Key(g), Round: bar.round, ReqID: id}, nil)
	}
	clear(bar.waiting)
	bar.round++
}

// reportText is a node's report as the coordinator logs it: valid UTF-8,
// one line, at most MaxReport bytes.
func reportText(b []byte) string {
	if len(b) > MaxReport {
		b = b[:MaxReport]
	}
	s := strings.ToValidUTF8(string(b), "\uFFFD")
	return strings.Map(func(r rune) rune {
		if r < ' ' || r == 0x7f {
			return ' '
		}
		return r
	}, s)
}
