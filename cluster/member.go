package cluster

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gobps/gobps/internal/auth"
	"github.com/gobps/gobps/proto"
)

// DefaultHeartbeatInterval is used when Options.HeartbeatInterval is 0.
const DefaultHeartbeatInterval = time.Second

// leaveTimeout bounds how long Leave waits for the coordinator to
// acknowledge the departure by closing the connection; giveUpTimeout is the
// same for a Join whose context ended.
const (
	leaveTimeout  = 2 * time.Second
	giveUpTimeout = 500 * time.Millisecond
)

// errEnded fails barriers pending when the membership ends cleanly.
var errEnded = errors.New("cluster: membership ended")

// Options tunes a Member.
type Options struct {
	// HeartbeatInterval is how often the member heartbeats; 0 means
	// DefaultHeartbeatInterval. Once the address book arrives it is lowered
	// to a third of the coordinator's timeout if it is longer than that.
	HeartbeatInterval time.Duration
	Logf              func(format string, args ...any) // optional
	// Dial, if set, makes each attempt to connect to the coordinator
	// (default: TCP with a 5 s timeout). Tests wrap the connection to
	// watch or stall what the member sends.
	Dial func(ctx context.Context, addr string) (net.Conn, error)
	// Auth, if enabled (see auth.Config.Enabled), is the job's
	// authentication: Join runs Auth.Dial on its connection to the
	// coordinator before it sends anything, claiming the node id of the
	// rank it asks for (0 when it asks for any). A handshake that fails
	// fails Join at once (it is not retried). nil: no authentication.
	Auth *auth.Config
}

// Member is a server's or worker's membership in the job: its control
// connection to the coordinator. See the package documentation.
type Member struct {
	conn      net.Conn
	coordAddr string
	logf      func(format string, args ...any)

	// Set by Join before it returns, read-only afterwards.
	self Node
	book Book

	sender   atomic.Uint32 // our node id once known, for frame headers
	interval atomic.Int64  // heartbeat interval, ns
	timeout  atomic.Int64  // coordinator's heartbeat timeout, ns; 0 until the book

	wmu sync.Mutex // serialises frames onto conn

	mu struct {
		sync.Mutex
		ended   bool
		err     error // why it ended; nil while running and after a clean end
		leaving bool
		nextReq uint64
		rounds  [All + 1]uint64 // barrier rounds entered, by Group
		pending map[uint64]chan error
	}

	bookc        chan bookMsg   // reader -> Join, capacity 1
	events       chan NodeEvent // created by the reader when the book arrives
	shutdown     chan struct{}
	shutdownOnce sync.Once
	done         chan struct{} // closed by end
	stopHB       chan struct{} // closed by Leave
	hbDone       chan struct{} // closed when the heartbeat goroutine returns
	wg           sync.WaitGroup

	leaveOnce sync.Once
	leaveErr  error
}

// Join registers with the coordinator at coordAddr and returns once the
// address book is complete. It dials until it gets through, backing off, so
// the coordinator may start after the node; ctx bounds the whole wait. A
// registration the coordinator refuses (duplicate rank, rank out of range,
// too many nodes, malformed) fails with the coordinator's reason. With
// Options.Auth, Join authenticates each connection before it registers; a
// failed handshake (the processes disagree on the job's secret or
// certificates) fails Join at once, naming the cause. If ctx ends
// while Join waits for the book, Join deregisters (waiting up to half a
// second for the coordinator) so that a retry finds the rank free again.
func Join(ctx context.Context, coordAddr string, reg Registration, opt Options) (*Member, error) {
	if opt.HeartbeatInterval == 0 {
		opt.HeartbeatInterval = DefaultHeartbeatInterval
	}
	if opt.HeartbeatInterval < 0 {
		return nil, fmt.Errorf("cluster: join: heartbeat interval %v is negative", opt.HeartbeatInterval)
	}
	if err := reg.check(); err != nil {
		return nil, fmt.Errorf("cluster: join: %w", err)
	}
	if _, _, err := net.SplitHostPort(coordAddr); err != nil {
		return nil, fmt.Errorf("cluster: join: coordinator address: %w", err)
	}
	payload, err := json.Marshal(reg)
	if err != nil {
		return nil, fmt.Errorf("cluster: join: encode registration: %w", err)
	}
	conn, err := dial(ctx, coordAddr, opt.Dial)
	if err != nil {
		return nil, err
	}
	if conn, err = authenticate(ctx, conn, coordAddr, reg, opt.Auth); err != nil {
		return nil, err
	}
	m := &Member{
		conn:      conn,
		coordAddr: coordAddr,
		logf:      opt.Logf,
		bookc:     make(chan bookMsg, 1),
		shutdown:  make(chan struct{}),
		done:      make(chan struct{}),
		stopHB:    make(chan struct{}),
		hbDone:    make(chan struct{}),
	}
	if m.logf == nil {
		m.logf = func(string, ...any) {}
	}
	m.mu.pending = make(map[uint64]chan error)
	m.interval.Store(int64(opt.HeartbeatInterval))
	if err := m.write(proto.Header{Op: proto.OpRegister}, payload); err != nil {
		_ = conn.Close()
		return nil, fmt.Errorf("cluster: join: register with %s: %w", coordAddr, err)
	}
	// Heartbeats start now: waiting for the rest of the job may take longer
	// than the coordinator's timeout.
	m.wg.Add(2)
	go m.read(reg.Role)
	go m.heartbeat()

	select {
	case b := <-m.bookc:
		m.self, m.book = b.Self, b.Book
		return m, nil
	case <-m.done:
		m.wg.Wait()
		if err := m.Err(); err != nil {
			return nil, err
		}
		return nil, fmt.Errorf("cluster: join %s: connection ended before the address book arrived", coordAddr)
	case <-ctx.Done():
		// Deregister before returning, so that the rank is free again when
		// the caller retries.
		m.leaveOnce.Do(func() { m.leaveErr = m.depart(giveUpTimeout) })
		return nil, fmt.Errorf("cluster: join %s: waiting for the address book: %w", coordAddr, ctx.Err())
	}
}

// dial connects to addr with attempt (nil: TCP), retrying with backoff
// until ctx is done.
func dial(ctx context.Context, addr string, attempt func(context.Context, string) (net.Conn, error)) (net.Conn, error) {
	if attempt == nil {
		d := net.Dialer{Timeout: 5 * time.Second}
		attempt = func(ctx context.Context, addr string) (net.Conn, error) { return d.DialContext(ctx, "tcp", addr) }
	}
	backoff := 20 * time.Millisecond
	for {
		conn, err := attempt(ctx, addr)
		if err == nil {
			return conn, nil
		}
		t := time.NewTimer(backoff)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, fmt.Errorf("cluster: join: coordinator at %s not reachable: %w (last attempt: %v)", addr, ctx.Err(), err)
		case <-t.C:
		}
		backoff = min(2*backoff, time.Second)
	}
}

// authenticate runs the job's handshake (a no-op without authentication) on
// a fresh connection to the coordinator, and returns the connection to use.
// On error it has closed conn. A handshake is never retried: a refusal
// means the processes of the job disagree on the secret (or certificates),
// which another try cannot mend.
func authenticate(ctx context.Context, conn net.Conn, coordAddr string, reg Registration, cfg *auth.Config) (net.Conn, error) {
	if !cfg.Enabled() {
		return conn, nil
	}
	stop := context.AfterFunc(ctx, func() { _ = conn.Close() })
	ac, _, err := cfg.Dial(conn, reg.claimedID())
	interrupted := !stop()
	if err == nil && !interrupted {
		return ac, nil
	}
	_ = conn.Close()
	switch {
	case interrupted:
		return nil, fmt.Errorf("cluster: join: authenticating with the coordinator at %s: %w", coordAddr, ctx.Err())
	case errors.Is(err, auth.ErrRefused):
		return nil, fmt.Errorf("cluster: join: the coordinator at %s refused this process's handshake: %w "+
			"(GOBPS_SECRET, and GOBPS_TLS_* if set, must be the same in every process of the job)", coordAddr, err)
	default:
		return nil, fmt.Errorf("cluster: join: authenticating with the coordinator at %s: %w", coordAddr, err)
	}
}

// claimedID is the node id r asks for, which the member claims in the
// authentication handshake: that of its rank when it names one, 0 when it
// lets the coordinator pick (or names a rank no node id can hold; the
// coordinator refuses that registration anyway).
func (r Registration) claimedID() uint32 {
	rank := -1
	switch {
	case r.WorkerID < 0:
	case r.Role == RoleWorker:
		if r.WorkerID <= proto.MaxRank && r.LocalSize <= proto.MaxRank+1 {
			rank = r.WorkerID*r.LocalSize + r.LocalRank
		}
	case r.Role == RoleServer:
		rank = r.WorkerID
	}
	if rank < 0 || rank > proto.MaxRank {
		return 0
	}
	return NodeID(r.Role, rank)
}

// Self is this node's entry in the address book.
func (m *Member) Self() Node { return m.self }

// Book is the job's address book (a copy).
func (m *Member) Book() Book { return m.book.clone() }

// Events delivers the deaths of other nodes, and the departures of
// workers that leave while others still run (NodeEvent.Left). It is buffered for every node in
// the book, so the member never blocks on it; it is never closed (select on
// Done as well).
func (m *Member) Events() <-chan NodeEvent { return m.events }

// ShutdownRequested is closed when the coordinator says the job is over
// (every worker is gone); servers wait on it, then Leave.
func (m *Member) ShutdownRequested() <-chan struct{} { return m.shutdown }

// Done is closed when the control connection ends for any reason.
func (m *Member) Done() <-chan struct{} { return m.done }

// Err says why the membership ended: nil while it runs, after a clean Leave,
// and when the coordinator went away after requesting shutdown.
func (m *Member) Err() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.mu.err
}

// Barrier blocks until every live member of g has called Barrier(g) as many
// times as this one, or until ctx is done. If a member of g has died, it
// fails with an error naming that node. A node must be in g. Cancelling ctx
// leaves this node counted in the round it entered: its next Barrier on g
// fails unless that round was released meanwhile.
func (m *Member) Barrier(ctx context.Context, g Group) error {
	if !g.valid() {
		return fmt.Errorf("cluster: barrier: unknown group %d", uint8(g))
	}
	if !g.has(m.self.Role) {
		return fmt.Errorf("cluster: barrier %s: %s is not in the group", g, m.self)
	}
	m.mu.Lock()
	if m.mu.ended || m.mu.leaving {
		err := m.mu.err
		m.mu.Unlock()
		if err == nil {
			err = errEnded
		}
		return fmt.Errorf("cluster: barrier %s: %w", g, err)
	}
	m.mu.rounds[g]++
	round := m.mu.rounds[g]
	m.mu.nextReq++
	id := m.mu.nextReq
	ch := make(chan error, 1)
	m.mu.pending[id] = ch
	m.mu.Unlock()

	if err := m.write(proto.Header{Op: proto.OpBarrier, Key: proto.Key(g), Round: round, ReqID: id}, nil); err != nil {
		m.end(m.lost(err)) // fails ch
	}
	select {
	case err := <-ch:
		if err != nil {
			return fmt.Errorf("cluster: barrier %s (round %d): %w", g, round, err)
		}
		return nil
	case <-ctx.Done():
		m.mu.Lock()
		delete(m.mu.pending, id)
		m.mu.Unlock()
		return fmt.Errorf("cluster: barrier %s (round %d): %w", g, round, ctx.Err())
	}
}

// Leave departs cleanly: heartbeats stop, the coordinator is told, and Leave
// waits (briefly) for it to close the connection. It returns once every
// goroutine of the member has exited. It is idempotent; if the membership had
// already ended with an error, Leave returns that error.
func (m *Member) Leave() error {
	m.leaveOnce.Do(func() { m.leaveErr = m.depart(leaveTimeout) })
	return m.leaveErr
}

// depart says OpLeave and waits up to wait for the coordinator to close the
// connection, then ends the membership and waits for its goroutines.
func (m *Member) depart(wait time.Duration) error {
	m.mu.Lock()
	ended := m.mu.ended
	m.mu.leaving = true
	m.mu.Unlock()
	if ended {
		m.wg.Wait()
		return m.Err()
	}
	close(m.stopHB)
	<-m.hbDone // no heartbeat may follow OpLeave
	if err := m.write(proto.Header{Op: proto.OpLeave}, nil); err != nil {
		err = fmt.Errorf("cluster: leave: %w", m.lost(err))
		m.end(err)
		m.wg.Wait()
		return err
	}
	t := time.NewTimer(wait)
	select {
	case <-m.done:
	case <-t.C:
		m.end(nil)
	}
	t.Stop()
	m.wg.Wait()
	return m.Err()
}

// write sends one frame, stamped with our node id.
func (m *Member) write(h proto.Header, payload []byte) error {
	m.wmu.Lock()
	defer m.wmu.Unlock()
	h.Sender = m.sender.Load()
	d := 10 * time.Second
	if t := time.Duration(m.timeout.Load()); t > 0 {
		d = max(t, time.Second)
	}
	_ = m.conn.SetWriteDeadline(time.Now().Add(d))
	return proto.WriteFrame(m.conn, h, payload)
}

// MaxReport is the most of a report (Member.Report) that the coordinator
// logs.
const MaxReport = 16 << 10

// Report sends text to the coordinator, which logs it at WARN naming this
// node, so that the job's launcher shows it with the coordinator's lines
// (a server's stall report, say). Text beyond MaxReport bytes is cut.
func (m *Member) Report(text string) error {
	if len(text) > MaxReport {
		text = text[:MaxReport]
	}
	select {
	case <-m.done:
		if err := m.Err(); err != nil {
			return err
		}
		return errors.New("cluster: report after the membership ended")
	default:
	}
	return m.write(proto.Header{Op: proto.OpReport}, []byte(text))
}

// lost wraps an I/O error on the control connection.
func (m *Member) lost(err error) error {
	return fmt.Errorf("cluster: lost coordinator at %s: %w", m.coordAddr, err)
}

// end ends the membership with err (nil for a clean end); only the first call
// counts. It closes the connection, fails pending barriers and closes done.
func (m *Member) end(err error) {
	m.mu.Lock()
	if m.mu.ended {
		m.mu.Unlock()
		return
	}
	m.mu.ended = true
	m.mu.err = err
	pending := m.mu.pending
	m.mu.pending = nil
	m.mu.Unlock()
	_ = m.conn.Close()
	if err == nil {
		err = errEnded
	}
	for _, ch := range pending {
		ch <- err
	}
	close(m.done)
}

// answer completes barrier request id.
func (m *Member) answer(id uint64, err error) {
	m.mu.Lock()
	ch := m.mu.pending[id]
	delete(m.mu.pending, id)
	m.mu.Unlock()
	if ch != nil {
		ch <- err
	}
}

// readerVerdict bounds how long a failed heartbeat waits for the reader to
// say why the connection ended before it ends the membership itself.
const readerVerdict = time.Second

func (m *Member) heartbeat() {
	defer m.wg.Done()
	defer close(m.hbDone)
	cur := time.Duration(m.interval.Load())
	t := time.NewTicker(cur)
	defer t.Stop()
	for {
		select {
		case <-m.done:
			return
		case <-m.stopHB:
			return
		case <-t.C:
		}
		if iv := time.Duration(m.interval.Load()); iv != cur {
			cur = iv
			t.Reset(cur)
		}
		if err := m.write(proto.Header{Op: proto.OpHeartbeat}, nil); err != nil {
			// The connection failed under the write. The reader usually
			// knows why (the coordinator says why it drops a node just
			// before it closes the connection): let it end the membership
			// with that, if it does so promptly.
			wait := time.NewTimer(readerVerdict)
			select {
			case <-m.done:
			case <-m.stopHB: // leaving: Leave ends the membership
			case <-wait.C:
				m.end(m.lost(err))
			}
			wait.Stop()
			return
		}
	}
}

// read handles the coordinator's frames until the connection ends.
func (m *Member) read(role Role) {
	defer m.wg.Done()
	booked := false
	protocol := func(format string, args ...any) {
		m.end(fmt.Errorf("cluster: coordinator at %s: protocol error: %s", m.coordAddr, fmt.Sprintf(format, args...)))
	}
	for {
		if t := m.timeout.Load(); t > 0 {
			_ = m.conn.SetReadDeadline(time.Now().Add(time.Duration(t)))
		}
		h, payload, err := proto.ReadFrame(m.conn, proto.MaxControlPayload)
		if err != nil {
			m.mu.Lock()
			clean := m.mu.leaving
			m.mu.Unlock()
			select {
			case <-m.shutdown:
				clean = true
			default:
			}
			var ne net.Error
			switch {
			case clean:
				m.end(nil)
			case errors.As(err, &ne) && ne.Timeout():
				m.end(fmt.Errorf("cluster: lost coordinator at %s: nothing heard for %v", m.coordAddr, time.Duration(m.timeout.Load())))
			default:
				m.end(m.lost(err))
			}
			return
		}
		if !booked && h.Op != proto.OpBook && h.Op != proto.OpHeartbeat && h.Op != proto.OpError {
			protocol("%s frame before the address book", h.Op)
			return
		}
		switch h.Op {
		case proto.OpHeartbeat:
		case proto.OpBook:
			var b bookMsg
			if booked {
				protocol("second address book")
				return
			}
			if err := json.Unmarshal(payload, &b); err != nil {
				protocol("malformed address book: %v", err)
				return
			}
			if b.Self.Role != role || b.Self.ID != NodeID(b.Self.Role, b.Self.Rank) || b.HeartbeatTimeout <= 0 {
				protocol("inconsistent address book (self %s id %#x, heartbeat timeout %v)", b.Self, b.Self.ID, b.HeartbeatTimeout)
				return
			}
			booked = true
			m.events = make(chan NodeEvent, len(b.Book.Workers)+len(b.Book.Servers)+16)
			m.sender.Store(b.Self.ID)
			m.timeout.Store(int64(b.HeartbeatTimeout))
			if iv := time.Duration(m.interval.Load()); iv > b.HeartbeatTimeout/3 {
				m.interval.Store(int64(max(b.HeartbeatTimeout/3, time.Millisecond)))
				m.logf("cluster: heartbeat interval %v is too long for the coordinator's timeout of %v; using %v",
					iv, b.HeartbeatTimeout, time.Duration(m.interval.Load()))
			}
			m.bookc <- b
		case proto.OpNodeDead, proto.OpNodeLeft:
			var ev NodeEvent
			if err := json.Unmarshal(payload, &ev); err != nil {
				protocol("malformed %s event: %v", h.Op, err)
				return
			}
			ev.Left = h.Op == proto.OpNodeLeft
			select {
			case m.events <- ev:
			default:
				m.logf("cluster: event queue full, dropped: %s", ev)
			}
		case proto.OpBarrierOK:
			m.answer(h.ReqID, nil)
		case proto.OpError:
			msg := string(payload)
			if h.ReqID != 0 {
				m.answer(h.ReqID, errors.New(msg))
				continue
			}
			if !booked {
				m.end(fmt.Errorf("cluster: join %s refused: %s", m.coordAddr, msg))
			} else {
				m.end(fmt.Errorf("cluster: coordinator at %s dropped this node: %s", m.coordAddr, msg))
			}
			return
		case proto.OpShutdown:
			m.shutdownOnce.Do(func() { close(m.shutdown) })
		default:
			protocol("unexpected %s frame", h.Op)
			return
		}
	}
}
