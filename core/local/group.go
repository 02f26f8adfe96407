package local

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/gobps/gobps/internal/auth"
	"github.com/gobps/gobps/proto"
)

// DefaultDir is where Join puts its socket and shared memory when
// Config.Dir is empty: the tmpfs that Linux mounts for POSIX shared memory.
const DefaultDir = "/dev/shm"

// DefaultJoinTimeout is Config.JoinTimeout when it is zero.
const DefaultJoinTimeout = 60 * time.Second

// MaxSize is the largest group: rank 0 hands every rank the sockets to all
// the others in one message, and Linux passes at most 253 descriptors at once.
const MaxSize = 255

// writeTimeout bounds one write to a local peer. Peers read all the time, so
// a write that takes this long means the peer is stopped or wedged.
const writeTimeout = 10 * time.Second

// ErrClosed is returned by calls on a group after its own Close.
var ErrClosed = errors.New("local: group closed")

// Config describes one local rank's group. Every rank of a group passes the
// same Dir, Group and Size.
type Config struct {
	// Dir holds the rendezvous socket and the shared-memory files. Empty
	// means DefaultDir. It must be on a filesystem every local rank sees
	// (tmpfs: a disk-backed directory works but may write back to disk).
	Dir string
	// Group names this machine's group of worker processes: identical in
	// all its ranks, different from any other group and job that can share
	// Dir at the same time. Any string; it is sanitised into file names.
	Group string
	// Size is the number of local ranks (BYTEPS_LOCAL_SIZE), 1 to MaxSize.
	Size int
	// Rank is this process's local rank (BYTEPS_LOCAL_RANK), 0 to Size-1.
	// Rank 0 hosts the rendezvous.
	Rank int
	// JoinTimeout bounds how long Join waits for every local rank to arrive.
	// Zero means DefaultJoinTimeout.
	JoinTimeout time.Duration
	// Auth, if it holds a secret, makes every connection to rank 0's socket
	// prove the job's secret before anything else is read from it (see
	// auth.Config.Accept and Dial), as the local rank it claims in its
	// hello: every rank of the group must pass the same secret. The
	// handshake's ids are uint32(local rank)+1. Only the secret's
	// challenge-response is used (TLS, if set, is ignored: the socket
	// never leaves the host, and descriptors cannot pass through TLS).
	// Nil or without a secret: no handshake.
	Auth *auth.Config
	// Logf, if set, receives rare notices (stale files removed, refused
	// connections). It is never called with a lock held.
	Logf func(format string, args ...any)
	// Behind, if set, is told that round of key began without this rank
	// while it has joined (SetJoined): the rank is to contribute zeros to
	// it. It is called with the group's lock held, so it must not block
	// or call into the group.
	Behind func(key proto.Key, round uint64)
	// StallWarning, if positive: the owner of a key whose round has waited
	// this long for other ranks' contributions reports it (Logf), once
	// per round. StallShutdown, if positive: after this long it aborts the
	// group with the report, so that every rank fails with it instead of
	// waiting for ever.
	StallWarning, StallShutdown time.Duration
	// Stalled, if set, words the report of round of key waiting, for
	// waited, for the ranks missing (local rank and pid each); fatal says
	// it ends the group. Nil: a plain report in local ranks. It is called
	// without the group's lock.
	Stalled func(key proto.Key, round uint64, missing []Rank, waited time.Duration, fatal bool) string

	// admitted, if set (by tests), is called by rank 0 as it admits each
	// other rank during the join.
	admitted func(rank int)
}

// Rank names a local rank in a stall report: its rank and process id.
type Rank struct {
	Rank, PID int
}

func (c *Config) validate() error {
	switch {
	case c.Group == "":
		return errors.New("local: Config.Group is empty")
	case c.Size < 1 || c.Size > MaxSize:
		return fmt.Errorf("local: group size %d is outside 1..%d", c.Size, MaxSize)
	case c.Rank < 0 || c.Rank >= c.Size:
		return fmt.Errorf("local: local rank %d is outside 0..%d", c.Rank, c.Size-1)
	case c.JoinTimeout < 0:
		return fmt.Errorf("local: negative JoinTimeout %v", c.JoinTimeout)
	}
	if c.Dir == "" {
		c.Dir = DefaultDir
	}
	if c.JoinTimeout == 0 {
		c.JoinTimeout = DefaultJoinTimeout
	}
	c.Auth = c.Auth.WithoutTLS() // nil without a secret
	st, err := os.Stat(c.Dir)
	if err != nil {
		return fmt.Errorf("local: shared-memory directory: %w", err)
	}
	if !st.IsDir() {
		return fmt.Errorf("local: shared-memory directory %s is not a directory", c.Dir)
	}
	return nil
}

// baseName turns a group name into the prefix of every file the group
// creates: "gobps." + the group with characters other than letters, digits,
// '-' and '_' replaced by '_', cut to 32 bytes, + "-" + a hash of the whole
// name (so that groups which sanitise alike stay apart). It never contains a
// '.' after "gobps.", so "gobps.<base>." prefixes only this group's files.
func baseName(group string) string {
	h := fnv.New64a()
	h.Write([]byte(group))
	clean := []byte(group)
	if len(clean) > 32 {
		clean = clean[:32]
	}
	for i, c := range clean {
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '-' || c == '_') {
			clean[i] = '_'
		}
	}
	return fmt.Sprintf("gobps.%s-%016x", clean, h.Sum64())
}

// maxSocketPath is the longest path a unix socket address holds on Linux
// (sun_path is 108 bytes with the terminating NUL).
const maxSocketPath = 107

// socketPath is the rendezvous socket of the group base in dir: base.sock,
// or, when that is too long for a socket address, a shorter name made of
// base's hash alone.
func socketPath(dir, base string) (string, error) {
	p := filepath.Join(dir, base+".sock")
	if len(p) <= maxSocketPath {
		return p, nil
	}
	p = filepath.Join(dir, "gobps."+base[strings.LastIndexByte(base, '-')+1:]+".sock")
	if len(p) <= maxSocketPath {
		return p, nil
	}
	return "", fmt.Errorf("local: socket path %s is %d bytes, more than a unix socket address holds (%d): use a shorter Dir", p, len(p), maxSocketPath)
}

// Group is one process's membership in its machine's group of local ranks.
// It is safe for concurrent use.
//
// Locking: mu guards the group's and every segment's round state; nothing
// blocks while holding it (no I/O, no summing). declMu serialises Declare.
type Group struct {
	cfg   Config
	base  string // file name prefix, see baseName
	job   string // "<pid of rank 0>-<nonce>": names this job's files
	pids  []int  // by local rank
	peers []*peer

	failed  chan struct{} // closed when mu.err is set
	readers sync.WaitGroup
	writers sync.WaitGroup
	// busy counts calls that touch mapped memory or files (Declare,
	// Reduce); Close waits for them before unmapping. Add only under mu
	// while !mu.closed.
	busy sync.WaitGroup

	declMu sync.Mutex
	load   []uint64 // bytes owned by each rank so far; guarded by declMu

	mu struct {
		sync.Mutex
		err    error // first failure; then every call fails with it
		closed bool
		segs   map[uint64]*Segment
		order  []*Segment // in declaration order
		// early holds contributions that arrived before this rank declared
		// their key (at most one per peer and key).
		early  map[uint64][]early
		nearly int
		// left holds, by rank, why a peer that closed its group cleanly is
		// gone: calls that need it fail with that error, the others go on.
		left []error
		// departed is closed and replaced when a peer leaves cleanly.
		departed chan struct{}
		// joined holds, by rank (this one's too), the ranks that have run
		// out of data and answer rounds with zeros (SetJoined).
		joined  []bool
		nJoined int
	}
}

// early is a contribution received for a key not declared here yet.
type early struct {
	from int
	f    frame
}

// maxEarly bounds the buffered early contributions: far more than any job
// declares, small enough that a misbehaving peer cannot exhaust memory.
const maxEarly = 1 << 20

// peer is this process's connection to another local rank.
type peer struct {
	rank int
	pid  int
	conn net.Conn

	mu      sync.Mutex
	out     []byte        // frames waiting for the writer
	queued  uint64        // bytes ever queued in out
	sent    uint64        // bytes the writer has written
	wake    chan struct{} // capacity 1: out grew or closing was set
	closing bool          // the writer stops once out is flushed
	dead    bool          // the peer left or the writer failed: send drops frames
}

func (p *peer) String() string { return fmt.Sprintf("local rank %d (pid %d)", p.rank, p.pid) }

// send queues f for p's writer. It never blocks.
func (p *peer) send(f frame) {
	p.mu.Lock()
	if !p.dead && !p.closing {
		n := len(p.out)
		p.out = appendFrame(p.out, f)
		p.queued += uint64(len(p.out) - n)
	}
	p.mu.Unlock()
	p.poke()
}

// flushed reports whether everything queued for p has been written (or
// never will be).
func (p *peer) flushed() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.dead || p.sent >= p.queued
}

func (p *peer) poke() {
	select {
	case p.wake <- struct{}{}:
	default:
	}
}

// PeerError says that another local rank left, died, or broke the protocol.
type PeerError struct {
	Rank int   // local rank of the peer
	PID  int   // its process id
	Err  error // what happened
}

func (e *PeerError) Error() string {
	return fmt.Sprintf("local: local rank %d (pid %d) %v", e.Rank, e.PID, e.Err)
}

func (e *PeerError) Unwrap() error { return e.Err }

// Join rendezvouses with the other Size-1 ranks of cfg.Group and returns
// this rank's membership. Rank 0 listens on a unix socket in cfg.Dir; the
// others dial it, retrying until it appears, and with cfg.Auth prove the
// job's secret before anything else (a refusal fails Join at once). When the group is not complete
// within cfg.JoinTimeout, rank 0 gives up and tells the ranks that came
// which ranks did not, and they all fail with that (a rank that reached
// rank 0 waits up to 2 s longer for this verdict). Join fails at once when
// ctx ends. Every rank must Close the group when done.
func Join(ctx context.Context, cfg Config) (*Group, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	g := &Group{cfg: cfg, base: baseName(cfg.Group), failed: make(chan struct{}), load: make([]uint64, cfg.Size)}
	g.mu.segs = make(map[uint64]*Segment)
	g.mu.early = make(map[uint64][]early)
	g.mu.left = make([]error, cfg.Size)
	g.mu.departed = make(chan struct{})
	g.mu.joined = make([]bool, cfg.Size)
	deadline := time.Now().Add(cfg.JoinTimeout)
	var (
		j   joined
		err error
	)
	switch {
	case cfg.Size == 1:
		j, err = joinAlone()
	case cfg.Rank == 0:
		hctx, cancel := context.WithDeadline(ctx, deadline)
		j, err = g.host(hctx)
		cancel()
	default:
		j, err = g.dial(ctx, deadline)
	}
	if err != nil {
		return nil, fmt.Errorf("local: join group %q as local rank %d of %d: %w", cfg.Group, cfg.Rank, cfg.Size, err)
	}
	g.job = fmt.Sprintf("%d-%016x", j.pids[0], j.nonce)
	g.pids = j.pids
	g.peers = make([]*peer, cfg.Size)
	for r, c := range j.conns {
		if c == nil {
			continue
		}
		p := &peer{rank: r, pid: j.pids[r], conn: c, wake: make(chan struct{}, 1)}
		g.peers[r] = p
		g.readers.Add(1)
		go g.read(p)
		g.writers.Add(1)
		go g.write(p)
	}
	if cfg.StallWarning > 0 || cfg.StallShutdown > 0 {
		g.readers.Add(1) // Close waits for it as for the readers
		go g.watchLaggards()
	}
	return g, nil
}

// Rank is this process's local rank.
func (g *Group) Rank() int { return g.cfg.Rank }

// Size is the number of local ranks.
func (g *Group) Size() int { return g.cfg.Size }

// PID returns the process id of local rank r.
func (g *Group) PID(r int) int { return g.pids[r] }

// Err returns the group's failure, or nil while it is usable: a peer died,
// broke the protocol or left after a failure of its own (a *PeerError), a
// declaration disagreed, or ErrClosed after Close. A peer that closes its
// group cleanly does not fail it (see Close).
func (g *Group) Err() error {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.mu.err
}

// Done is closed when the group fails or is closed; Err then says why.
func (g *Group) Done() <-chan struct{} { return g.failed }

func (g *Group) logf(format string, args ...any) {
	if g.cfg.Logf != nil {
		g.cfg.Logf(format, args...)
	}
}

// fail records err as the group's failure, unless one is recorded already,
// and wakes every waiter. With tell, it also sends the reason to every peer
// (for failures only this rank can see, such as a protocol error; a death
// or a departure every peer sees for itself).
func (g *Group) fail(err error, tell bool) {
	g.mu.Lock()
	if g.mu.err != nil {
		g.mu.Unlock()
		return
	}
	g.mu.err = err
	close(g.failed)
	g.mu.Unlock()
	if tell {
		reason := []byte(err.Error())
		if len(reason) > maxFramePayload {
			reason = reason[:maxFramePayload]
		}
		for _, p := range g.peers {
			if p != nil {
				p.send(frame{op: opAbort, payload: reason})
			}
		}
		// A process often exits as soon as its operation has failed:
		// let the cause reach the kernel first, or the others hear only
		// that this rank vanished.
		deadline := time.Now().Add(abortFlush)
		for _, p := range g.peers {
			for p != nil && !p.flushed() && time.Now().Before(deadline) {
				time.Sleep(time.Millisecond)
			}
		}
	}
}

// abortFlush bounds how long Abort waits for its frames to be written.
const abortFlush = 500 * time.Millisecond

// Abort fails the group with cause, here and in every other rank, whose
// pending and later calls then fail with a *PeerError naming this rank and
// cause. An owner that cannot finish a round (its push or pull failed) calls
// it, so that the ranks waiting for its Publish learn why at once rather
// than wait for their context. It returns once the news is written to every
// peer (at most abortFlush), so that a process that exits right after its
// operation failed still tells the others why. Abort does nothing if the
// group has failed already; Close must still be called.
func (g *Group) Abort(cause error) {
	if cause == nil {
		cause = errors.New("aborted")
	}
	g.fail(fmt.Errorf("local: local rank %d aborted the group: %w", g.cfg.Rank, cause), true)
}

// lost reports that p's connection broke, unless this rank is closing.
func (g *Group) lost(p *peer, err error) {
	g.mu.Lock()
	closed := g.mu.closed
	g.mu.Unlock()
	if !closed {
		g.fail(&PeerError{Rank: p.rank, PID: p.pid, Err: fmt.Errorf("died or disconnected: %w", err)}, false)
	}
}

// leave records that p closed its group cleanly. The group stays usable
// for whatever does not need p (the end of a job: the ranks finish their
// last rounds at different times); waits that need p fail.
func (g *Group) leave(p *peer) {
	p.mu.Lock()
	p.dead = true // nobody reads what we would send
	p.out = nil
	p.mu.Unlock()
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.mu.err != nil {
		return
	}
	g.mu.left[p.rank] = &PeerError{Rank: p.rank, PID: p.pid, Err: errors.New("closed the group")}
	close(g.mu.departed)
	g.mu.departed = make(chan struct{})
}

// read is p's reader goroutine: it dispatches every frame from p until the
// connection ends.
func (g *Group) read(p *peer) {
	defer g.readers.Done()
	br := bufio.NewReaderSize(p.conn, 16<<10)
	for {
		f, err := readFrame(br)
		if err != nil {
			g.lost(p, err)
			return
		}
		switch f.op {
		case opBye:
			if len(f.payload) > 0 {
				g.fail(&PeerError{Rank: p.rank, PID: p.pid, Err: fmt.Errorf("closed the group after a failure: %s", f.payload)}, false)
			} else {
				g.leave(p)
			}
			return
		case opAbort:
			g.fail(&PeerError{Rank: p.rank, PID: p.pid, Err: fmt.Errorf("gave up: %s", f.payload)}, false)
			return
		case opContrib, opPublish, opDone, opJoin, opNeed:
			if err := g.handle(p.rank, f); err != nil {
				g.fail(&PeerError{Rank: p.rank, PID: p.pid, Err: err}, true)
				return
			}
		default:
			g.fail(&PeerError{Rank: p.rank, PID: p.pid, Err: fmt.Errorf("sent an unexpected %s frame", f.op)}, true)
			return
		}
	}
}

// write is p's writer goroutine: it sends whatever send queued, as few
// writes as it can, until Close asks it to stop and everything is flushed.
func (g *Group) write(p *peer) {
	defer g.writers.Done()
	var buf []byte
	for {
		p.mu.Lock()
		for len(p.out) == 0 && !p.closing {
			p.mu.Unlock()
			<-p.wake
			p.mu.Lock()
		}
		buf, p.out = p.out, buf[:0]
		p.mu.Unlock()
		if len(buf) == 0 { // closing and flushed
			return
		}
		p.conn.SetWriteDeadline(time.Now().Add(writeTimeout))
		n, err := p.conn.Write(buf)
		p.mu.Lock()
		p.sent += uint64(n)
		p.mu.Unlock()
		if err != nil {
			p.mu.Lock()
			p.dead = true
			p.out = nil
			p.mu.Unlock()
			// A peer that closed or died makes writes fail too, but its
			// reader tells the two apart (bye, or EOF without one); a
			// peer that stops reading is a failure only the writer sees.
			if errors.Is(err, os.ErrDeadlineExceeded) {
				g.lost(p, fmt.Errorf("stopped reading: a write took more than %v", writeTimeout))
			}
			return
		}
	}
}

// Close leaves the group. It tells the other ranks, whose calls that need
// this rank (waiting for its contribution, Done or Publish, or contributing
// to a key it owns) then fail with a *PeerError saying it closed the group;
// their other calls go on, since ranks finish their last rounds at different
// times. (If this rank's group had failed, the others fail too, with the
// cause.) Close then waits for Declare and Reduce calls in progress, unmaps
// every segment and removes the files still on disk that nobody can use any
// more (see Segment.release). Slices from Input and Result must not be used
// after Close. Calls
// after Close fail with ErrClosed. Close is idempotent.
func (g *Group) Close() error {
	g.mu.Lock()
	if g.mu.closed {
		g.mu.Unlock()
		return nil
	}
	g.mu.closed = true
	// A rank that leaves because the group failed says why, so that a peer
	// that hears the departure before the cause still names the cause.
	var why []byte
	if g.mu.err == nil {
		g.mu.err = ErrClosed
		close(g.failed)
	} else {
		why = []byte(g.mu.err.Error())
		why = why[:min(len(why), maxFramePayload)]
	}
	segs := g.mu.order
	g.mu.Unlock()

	for _, p := range g.peers {
		if p == nil {
			continue
		}
		p.mu.Lock()
		if !p.dead {
			p.out = appendFrame(p.out, frame{op: opBye, payload: why})
		}
		p.closing = true
		p.mu.Unlock()
		p.poke()
	}
	g.writers.Wait()
	var errs []error
	for _, p := range g.peers {
		if p != nil {
			if err := p.conn.Close(); err != nil {
				errs = append(errs, fmt.Errorf("local: close connection to %v: %w", p, err))
			}
		}
	}
	g.readers.Wait()
	g.busy.Wait()
	for _, s := range segs {
		if err := s.release(); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// enter registers a call that touches mapped memory or files, so that Close
// waits for it; it fails when the group has failed or closed. The caller
// calls g.busy.Done when finished.
func (g *Group) enter() error {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.mu.err != nil {
		return g.mu.err
	}
	g.busy.Add(1)
	return nil
}
