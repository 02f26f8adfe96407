package summation

import (
	"errors"
	"fmt"
	"maps"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gobps/gobps/internal/auth"
	"github.com/gobps/gobps/proto"
	"github.com/gobps/gobps/rdma"
)

// Config configures a Server.
type Config struct {
	// Workers is the number of worker processes (ranks 0..Workers-1).
	Workers int
	// Pushers is how many of them push to (and pull from) every sum key
	// each round: Workers without local aggregation, one per machine with
	// it. 0 means Workers.
	Pushers int
	// Engines is the number of engine goroutines that sum.
	Engines int
	// Transport carries the data.
	Transport rdma.Transport
	// Addr is the data address to listen on, e.g. "127.0.0.1:0".
	Addr string
	// DeclareWarn is how long a key may stay declared by some workers and
	// not by the others before the server tells the workers that did, by
	// name and rank, whom they are waiting for (GOBPS_DECLARE_WARN): a
	// tensor used on some ranks only no longer hangs without a word. 0
	// means never.
	DeclareWarn time.Duration
	// DeclareTimeout, if not 0, is how long before such a key fails, for
	// the workers that declared it, with the same words
	// (GOBPS_DECLARE_TIMEOUT). A worker that is only slow to get there
	// (one rank loading data for minutes) would fail too, so it is off by
	// default.
	DeclareTimeout time.Duration
	// StallWarning: a round that has begun and waited this long without a
	// new push on its key is reported (GOBPS_STALL_WARNING): the server
	// logs, and tells the workers waiting, which workers have not pushed
	// which tensors. 0: never.
	StallWarning time.Duration
	// StallShutdown: a round stalled this long ends the job
	// (GOBPS_STALL_SHUTDOWN): every connected worker gets the report as a
	// fatal notice and fails with it, instead of waiting for ever. 0:
	// never.
	StallShutdown time.Duration
	// OnStall, if set, receives each stall report the server logs (from
	// the watch's goroutine; it must not block for long): the roles send
	// it to the coordinator, which logs it for the whole job.
	OnStall func(report string)
	// KeyLogf, if set, takes the lines about one key (a refused push or
	// pull, a failed or half-declared tensor) instead of Logf, with the
	// key apart, for structured logs.
	KeyLogf func(key proto.Key, format string, args ...any)
	// MemoryBudget bounds the bytes of keys the server accepts, summed
	// over every declaration (GOBPS_SERVER_MEMORY_BYTES): a declaration
	// frame that would take the declared bytes beyond it is refused
	// whole. Each declared byte costs the server about two (a sum buffer
	// for each of the two open rounds), plus the pushes in flight. 0
	// means no bound; cmd/internal/roles always sets one.
	MemoryBudget int64
	// Logf, if set, receives one line per notable event (bad frames,
	// refused requests, connections closed without a hello). The server
	// never logs otherwise.
	Logf func(format string, args ...any)
}

// Stats are counters for tests and benchmarks.
type Stats struct {
	Declares    int64 // declaration frames accepted (each may hold many keys)
	Pushes      int64 // pushes accepted
	Pulls       int64 // answers sent (whole, or the last piece of one)
	Pieces      int64 // answer pieces sent (answers streamed as their chunks' sums complete)
	Refused     int64 // requests answered with an error
	BadConns    int64 // connections closed for a bad frame
	NoHello     int64 // connections the transport closed for want of a hello
	Keys        int   // keys declared
	Declared    int64 // bytes of the keys declared (bounded by Config.MemoryBudget)
	EngineBytes []uint64
}

// Server is a summation server.
type Server struct {
	cfg    Config
	ln     rdma.Listener
	stable bool // the transport grants stable destinations (Caps.StableDest)

	mu struct {
		sync.RWMutex
		keys     map[proto.Key]*key
		partial  map[proto.Key]*key // keys some workers have not declared yet
		gone     []error            // by worker: why it left the job (Depart)
		joined   []bool             // by worker: out of data, answering with zeros (OpJoin)
		load     []uint64           // declared bytes per engine
		declared uint64             // declared bytes in all
		peers    map[rdma.Conn]*peer
		closed   bool // Close has begun: no new peer, no new goroutine
	}
	engines []*engine
	done    chan struct{}
	// stallFatal: the stall watch has ended the job (GOBPS_STALL_SHUTDOWN)
	stallFatal atomic.Bool
	closing    sync.Once
	// What Close waits for. Add to them only under mu with mu.closed
	// false (or in New), so that none grows once Close waits.
	wg    sync.WaitGroup // the goroutines the server started: engines and outboxes
	conns sync.WaitGroup // the connections it has heard from, until their Closed returns
	// calls counts the handler calls in progress (see enter), and bars
	// new ones once Close has set callsClosing; the call that leaves it
	// at zero after that closes idle.
	calls atomic.Int64
	idle  chan struct{}
	// final is the set of connections the server has heard from, fixed
	// when Close begins (nil before).
	final atomic.Pointer[map[rdma.Conn]*peer]

	id                                                          atomic.Uint32 // node id, the Sender of every frame
	declares, pushes, pulls, pieces, refused, badConns, noHello atomic.Int64
}

// SetID sets the node id the server puts in the Sender field of its frames
// (known only once it has joined the cluster, after it has listened).
func (s *Server) SetID(id uint32) { s.id.Store(id) }

// key is one declared key.
type key struct {
	decl   proto.Decl
	engine *engine
	// Who declared it: the worker whose declaration made the key, which
	// workers have, when it was made, and the error that failed the key
	// (its workers disagree about it). Guarded by Server.mu.
	first    int
	declared []bool
	missing  int
	since    time.Time
	warned   bool
	failed   error
	pool     struct {
		sync.Mutex
		free [][]byte
	}
	// rounds is owned by engine's goroutine.
	rounds *Rounds
	// progress counts the pushes accepted on the key (the stall watch
	// reads it); stallTold is the round last reported stalled, plus one
	// (owned by the engine).
	progress  atomic.Uint64
	stallTold uint64
}

func (k *key) scratch() []byte {
	k.pool.Lock()
	defer k.pool.Unlock()
	if n := len(k.pool.free); n > 0 {
		b := k.pool.free[n-1]
		k.pool.free = k.pool.free[:n-1]
		return b
	}
	return make([]byte, k.decl.Bytes)
}

func (k *key) release(bufs [][]byte) {
	k.pool.Lock()
	k.pool.free = append(k.pool.free, bufs...)
	k.pool.Unlock()
}

// peer is the server's view of one connection, from the first callback
// the transport made for it to Closed.
type peer struct {
	conn   rdma.Conn
	worker atomic.Int32 // -1 until hello
	out    *outbox
	chunks chunkPool
	// stable holds, by key, the buffer this connection's pushes land in
	// when its transport grants stable destinations (rdma.StableReceiver).
	stable struct {
		sync.Mutex
		bufs map[proto.Key][]byte
	}
}

// stableBuf returns the stable destination of key on p, or nil.
func (p *peer) stableBuf(k proto.Key) []byte {
	p.stable.Lock()
	defer p.stable.Unlock()
	return p.stable.bufs[k]
}

// chunkPool holds the chunk buffers a connection's reader receives pushes
// into. It is bounded: when every buffer waits to be summed, the reader
// waits too (back-pressure on the sender through TCP).
type chunkPool struct {
	free chan []byte
	made atomic.Int32
}

const chunksPerConn = 8

func (cp *chunkPool) get(done <-chan struct{}) []byte {
	select {
	case b := <-cp.free:
		return b
	default:
	}
	if cp.made.Add(1) <= chunksPerConn {
		return make([]byte, proto.PieceBytes)
	}
	select {
	case b := <-cp.free:
		return b
	case <-done:
		return nil
	}
}

func (cp *chunkPool) put(b []byte) {
	if cap(b) != proto.PieceBytes {
		return // a stand-in made while the server was closing
	}
	select {
	case cp.free <- b[:cap(b)]:
	default: // cannot happen: at most chunksPerConn buffers exist
	}
}

// New starts a server listening on cfg.Addr.
func New(cfg Config) (*Server, error) {
	if cfg.Workers < 1 {
		return nil, fmt.Errorf("summation: %d workers", cfg.Workers)
	}
	if cfg.Pushers == 0 {
		cfg.Pushers = cfg.Workers
	}
	if cfg.Pushers < 1 || cfg.Pushers > cfg.Workers {
		return nil, fmt.Errorf("summation: %d pushers per round for %d workers", cfg.Pushers, cfg.Workers)
	}
	if cfg.Engines < 1 {
		return nil, fmt.Errorf("summation: %d engines", cfg.Engines)
	}
	if cfg.Transport == nil {
		return nil, errors.New("summation: no transport")
	}
	if cfg.Logf == nil {
		cfg.Logf = func(string, ...any) {}
	}
	s := &Server{cfg: cfg, stable: cfg.Transport.Caps().StableDest, done: make(chan struct{}), idle: make(chan struct{})}
	s.mu.keys = make(map[proto.Key]*key)
	s.mu.partial = make(map[proto.Key]*key)
	s.mu.gone = make([]error, cfg.Workers)
	s.mu.joined = make([]bool, cfg.Workers)
	s.mu.load = make([]uint64, cfg.Engines)
	s.mu.peers = make(map[rdma.Conn]*peer)
	for i := 0; i < cfg.Engines; i++ {
		e := &engine{s: s, tasks: make(chan task, 1024)}
		s.engines = append(s.engines, e)
		s.wg.Add(1)
		go e.run()
	}
	if cfg.DeclareWarn > 0 || cfg.DeclareTimeout > 0 {
		s.wg.Add(1)
		go s.sweep()
	}
	if cfg.StallWarning > 0 || cfg.StallShutdown > 0 {
		s.wg.Add(1)
		go s.watchStalls()
	}
	ln, err := cfg.Transport.Listen(cfg.Addr, (*handler)(s))
	if err != nil {
		s.Close()
		return nil, fmt.Errorf("summation: %w", err)
	}
	s.ln = ln
	return s, nil
}

// Addr is the address workers dial.
func (s *Server) Addr() string { return s.ln.Addr() }

// Stats returns the current counters.
func (s *Server) Stats() Stats {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return Stats{
		Declares: s.declares.Load(), Pushes: s.pushes.Load(), Pulls: s.pulls.Load(), Pieces: s.pieces.Load(), Refused: s.refused.Load(),
		BadConns: s.badConns.Load(), NoHello: s.noHello.Load(), Keys: len(s.mu.keys), Declared: int64(s.mu.declared),
		EngineBytes: append([]uint64(nil), s.mu.load...),
	}
}

// Close stops the server and returns once every goroutine it started has
// ended and no call into it is in progress: it fixes the set of
// connections it has heard from, closes the listener (which waits for
// its accept loop), ends the engines' waits, bars new handler calls and
// waits for those in progress, closes every connection it has heard from
// and waits for each one's Closed (the last call its reader makes), then
// waits for the engines and every connection's outbox. A connection that
// never sent a frame is unknown to the server and ends with the transport
// (Transport.Close); a call for it after Close returns at once. Idempotent.
func (s *Server) Close() error {
	s.closing.Do(func() {
		s.mu.Lock()
		s.mu.closed = true
		final := maps.Clone(s.mu.peers)
		s.final.Store(&final)
		s.mu.Unlock()
		if s.ln != nil {
			s.ln.Close()
		}
		close(s.done)
		if s.calls.Or(callsClosing) == 0 {
			close(s.idle)
		}
		<-s.idle
		for c := range final {
			c.Close()
		}
		s.conns.Wait()
		s.wg.Wait()
	})
	return nil
}

// callsClosing is the bit of Server.calls that bars new calls.
const callsClosing = 1 << 62

// enter begins a handler call: false once Close has begun (the caller
// then closes its connection and returns at once). A call that entered
// calls exit when it returns; Close waits for that.
func (s *Server) enter() bool {
	for {
		v := s.calls.Load()
		if v&callsClosing != 0 {
			return false
		}
		if s.calls.CompareAndSwap(v, v+1) {
			return true
		}
	}
}

// exit ends a handler call begun by enter.
func (s *Server) exit() {
	if s.calls.Add(-1) == callsClosing {
		close(s.idle) // the last call Close waits for
	}
}

// peer returns the server's view of c, made at c's first call into the
// server; nil once Close has begun (the caller then closes c and
// returns). REQUIRES: a call begun by enter.
func (s *Server) peer(c rdma.Conn) *peer {
	s.mu.RLock()
	p := s.mu.peers[c]
	closed := s.mu.closed
	s.mu.RUnlock()
	if closed {
		return nil
	}
	if p != nil {
		return p
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.mu.closed {
		return nil
	}
	if p = s.mu.peers[c]; p == nil {
		p = &peer{conn: c, chunks: chunkPool{free: make(chan []byte, chunksPerConn)}}
		p.worker.Store(-1)
		s.conns.Add(1)
		s.wg.Add(1)
		p.out = newOutbox(c, s.wg.Done)
		s.mu.peers[c] = p
	}
	return p
}

// enterPeer begins a handler call for c and returns the server's view of
// c; nil, with no call begun, once Close has begun.
func (s *Server) enterPeer(c rdma.Conn) *peer {
	if !s.enter() {
		return nil
	}
	p := s.peer(c)
	if p == nil {
		s.exit()
	}
	return p
}

// errClosing refuses the frames that arrive while the server closes.
var errClosing = errors.New("summation: server closing")

func (s *Server) lookup(k proto.Key) *key {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.mu.keys[k]
}

// keyLogf logs a line about key k through KeyLogf, else Logf.
func (s *Server) keyLogf(k proto.Key, format string, args ...any) {
	if s.cfg.KeyLogf != nil {
		s.cfg.KeyLogf(k, format, args...)
		return
	}
	s.cfg.Logf(format, args...)
}

// refuse answers request h on p with err.
func (s *Server) refuse(p *peer, h *proto.Header, err error) {
	s.refused.Add(1)
	if h.Op == proto.OpPush || h.Op == proto.OpPull || h.Op == proto.OpJoin {
		s.keyLogf(h.Key, "summation: refused %s from %s: %v", h.Op, p.conn.RemoteAddr(), err)
	} else {
		s.cfg.Logf("summation: refused %s from %s: %v", h.Op, p.conn.RemoteAddr(), err)
	}
	p.out.send(proto.Header{Op: proto.OpError, Sender: s.id.Load(), Key: h.Key, Round: h.Round, ReqID: h.ReqID}, []byte(err.Error()), nil)
}

// keyFailure is a key to fail, and why.
type keyFailure struct {
	k   *key
	err error
}

// declare creates or checks every key worker w declares. It refuses the
// whole batch if any declaration disagrees with an earlier one (in this
// batch, or another worker's), or if its new keys would take the declared
// bytes beyond the memory budget. A key whose workers disagree also fails
// for the workers that declared it first (they would wait for ever for
// pushes that mean something else): it is returned, for the caller to
// fail on the key's engine once the lock is released. Each declaration was
// checked on its own by proto.DecodeDecls.
func (s *Server) declare(ds []proto.Decl, w int) ([]keyFailure, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var errs []error
	var fails []keyFailure
	batch := make(map[proto.Key]proto.Decl, len(ds))
	var adds, added uint64 // new keys and their bytes
	for _, d := range ds {
		if d.Root >= int32(s.cfg.Workers) {
			errs = append(errs, fmt.Errorf("key %s: broadcast root %d, but there are %d workers", d.Key, d.Root, s.cfg.Workers))
			continue
		}
		if k, known := s.mu.keys[d.Key]; known {
			if !k.decl.Same(d) {
				err := mismatch(d, w, k.decl, k.first)
				errs = append(errs, err)
				// Another worker's tensor under the same key: the key is
				// lost for the workers that declared it too. (A worker
				// that contradicts its own earlier declaration is only
				// refused.)
				if !k.declared[w] && k.failed == nil {
					k.failed = err
					fails = append(fails, keyFailure{k, err})
				}
			}
			continue
		}
		if earlier, ok := batch[d.Key]; ok {
			if !earlier.Same(d) {
				errs = append(errs, mismatch(d, w, earlier, w))
			}
			continue
		}
		batch[d.Key] = d
		adds++
		added += d.Bytes
	}
	if len(errs) > 0 {
		for _, f := range fails {
			delete(s.mu.partial, f.k.decl.Key)
		}
		return fails, errors.Join(errs...)
	}
	if b := s.cfg.MemoryBudget; b > 0 && s.mu.declared+added > uint64(b) {
		return nil, fmt.Errorf("declaring %d new keys of %d bytes would take this server to %d declared bytes, beyond its memory budget of %d bytes (GOBPS_SERVER_MEMORY_BYTES; %d bytes declared so far)",
			adds, added, s.mu.declared+added, b, s.mu.declared)
	}
	now := time.Now()
	for _, d := range ds {
		if k, ok := s.mu.keys[d.Key]; ok {
			if !k.declared[w] {
				k.declared[w] = true
				if k.missing--; k.missing == 0 {
					delete(s.mu.partial, d.Key)
				}
			}
			continue
		}
		best := 0
		for i, l := range s.mu.load {
			if l < s.mu.load[best] {
				best = i
			}
		}
		s.mu.load[best] += d.Bytes
		s.mu.declared += d.Bytes
		k := &key{decl: d, engine: s.engines[best], rounds: NewRoundsOf(d, s.cfg.Workers, s.cfg.Pushers),
			first: w, declared: make([]bool, s.cfg.Workers), missing: s.cfg.Workers - 1, since: now}
		k.declared[w] = true
		for w, err := range s.mu.gone {
			if err != nil {
				k.rounds.Depart(w, err) // a fresh key: nothing to answer
			}
		}
		for w, j := range s.mu.joined {
			if j {
				k.rounds.Join(w, true) // nothing has begun: nobody to tell
			}
		}
		s.mu.keys[d.Key] = k
		if k.missing > 0 {
			s.mu.partial[d.Key] = k
		}
	}
	return nil, nil
}

// mismatch says that worker w declares d as a key that worker first
// declared as earlier.
func mismatch(d proto.Decl, w int, earlier proto.Decl, first int) error {
	part := func(d proto.Decl) string {
		s := fmt.Sprintf("%d bytes of %s", d.Bytes, d.DType)
		if d.Root >= 0 {
			s += fmt.Sprintf(", broadcast from worker %d", d.Root)
		}
		return s
	}
	sizes := ""
	if part(d) != part(earlier) {
		sizes = fmt.Sprintf(" declared as %s, earlier as %s", part(d), part(earlier))
	}
	return fmt.Errorf("key %s%s: worker %d declares it as a part of tensor %s, worker %d declared it as a part of tensor %s; "+
		"every worker must declare the same tensors, with the same names, dtypes and shapes, in the same order",
		d.Key, sizes, w, d.Tensor(), first, earlier.Tensor())
}

// Depart tells the server that worker w has left the job (what says how,
// naming it: the coordinator's event). Every round that needs a push of w
// that never came fails, now for the pulls waiting on it and later for
// every push or pull of it, with an error that names w and says what to
// do; the rounds w did push still complete without its pulls. Under local
// aggregation a round needs the push of a machine, lost once all its
// workers have left.
func (s *Server) Depart(w int, what string) {
	if w < 0 || w >= s.cfg.Workers {
		return
	}
	err := fmt.Errorf("%s; its push is missing from this round, which can never complete: every worker must make the same push_pull calls "+
		"(with uneven data, gobps.torch.join() lets a worker that has run out answer the others' rounds with zeros until all have)", what)
	s.mu.Lock()
	if s.mu.gone[w] != nil {
		s.mu.Unlock()
		return
	}
	s.mu.gone[w] = err
	keys := make([]*key, 0, len(s.mu.keys))
	for _, k := range s.mu.keys {
		keys = append(keys, k)
	}
	s.mu.Unlock()
	s.cfg.Logf("summation: %s", what)
	for _, k := range keys {
		k.engine.submit(task{kind: taskDepart, key: k, worker: w, err: err})
	}
}

// join records that worker w has run out of data and answers the others'
// rounds with zeros (on), or no longer does: every key is told, and tells
// w of the rounds that began without it (OpBehind). The tasks are queued
// before join returns, so a push that arrives after the worker's
// OpJoinAck finds every key knowing.
func (s *Server) join(w int, on bool) {
	s.mu.Lock()
	s.mu.joined[w] = on
	keys := make([]*key, 0, len(s.mu.keys))
	for _, k := range s.mu.keys {
		keys = append(keys, k)
	}
	s.mu.Unlock()
	for _, k := range keys {
		k.engine.submit(task{kind: taskJoin, key: k, worker: w, on: on})
	}
}

// peerOf returns a connection of worker w, or nil.
func (s *Server) peerOf(w int) *peer {
	s.mu.RLock()
	defer s.mu.RUnlock()
	for _, p := range s.mu.peers {
		if int(p.worker.Load()) == w {
			return p
		}
	}
	return nil
}

// failKeys fails each key on its engine: its waiting pulls get the error,
// and so does every later push and pull of it.
func (s *Server) failKeys(fails []keyFailure) {
	for _, f := range fails {
		s.keyLogf(f.k.decl.Key, "summation: %v", f.err)
		f.k.engine.submit(task{kind: taskFail, key: f.k, err: f.err})
	}
}

// sweep tells the workers of keys that some of them declared and the
// others did not, within DeclareWarn, whom they wait for; and fails those
// keys after DeclareTimeout, if set.
func (s *Server) sweep() {
	defer s.wg.Done()
	every := s.cfg.DeclareWarn
	if every == 0 || (s.cfg.DeclareTimeout > 0 && s.cfg.DeclareTimeout < every) {
		every = s.cfg.DeclareTimeout
	}
	t := time.NewTicker(min(max(every/4, time.Millisecond), time.Second))
	defer t.Stop()
	for {
		select {
		case <-s.done:
			return
		case now := <-t.C:
			notes, fails := s.stale(now)
			for _, n := range notes {
				h := proto.Header{Op: proto.OpError, Sender: s.id.Load()}
				if n.fatal {
					h.Flags = proto.FlagFatal
				}
				n.p.out.send(h, []byte(n.text), nil)
			}
			s.failKeys(fails)
		}
	}
}

// note is a notice to one connection: an OpError with no request id,
// which a worker logs as a warning.
type note struct {
	p     *peer
	text  string
	fatal bool // FlagFatal: the worker fails as a whole
}

// stale finds the keys declared by some workers only: longer than
// DeclareWarn ago, it says so to those workers; longer than DeclareTimeout,
// it takes them out of the partial set and returns them to fail.
func (s *Server) stale(now time.Time) ([]note, []keyFailure) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var notes []note
	var fails []keyFailure
	for key, k := range s.mu.partial {
		age := now.Sub(k.since)
		timeout := s.cfg.DeclareTimeout > 0 && age >= s.cfg.DeclareTimeout
		if !timeout && (k.warned || s.cfg.DeclareWarn == 0 || age < s.cfg.DeclareWarn) {
			continue
		}
		var did, not []int
		for w, ok := range k.declared {
			if ok {
				did = append(did, w)
			} else {
				not = append(not, w)
			}
		}
		what := fmt.Sprintf("tensor %s (key %s) was declared by worker(s) %v but not by worker(s) %v after %v: "+
			"every worker must declare, and push, the same tensors", k.decl.Tensor(), key, did, not, age.Round(time.Millisecond))
		text := what + "; the workers that did wait for the others (GOBPS_DECLARE_TIMEOUT fails the tensor instead)"
		if timeout {
			delete(s.mu.partial, key)
			k.failed = fmt.Errorf("%s (GOBPS_DECLARE_TIMEOUT %v)", what, s.cfg.DeclareTimeout)
			fails = append(fails, keyFailure{k, k.failed})
			text = k.failed.Error()
		} else {
			k.warned = true
			s.keyLogf(key, "summation: %s", text)
		}
		seen := map[int]bool{}
		for _, p := range s.mu.peers {
			if w := int(p.worker.Load()); w >= 0 && k.declared[w] && !seen[w] {
				seen[w] = true
				notes = append(notes, note{p, text, timeout})
			}
		}
	}
	return notes, fails
}

// handler implements rdma.Handler for the server's connections.
type handler Server

// checkPush validates a push header against the key's declaration.
func (s *Server) checkPush(p *peer, hd *proto.Header) (*key, error) {
	if p.worker.Load() < 0 {
		return nil, errors.New("push before hello")
	}
	k := s.lookup(hd.Key)
	if k == nil {
		return nil, fmt.Errorf("key %s was never declared", hd.Key)
	}
	if hd.DType != k.decl.DType {
		return nil, fmt.Errorf("key %s: push of %s, declared %s", hd.Key, hd.DType, k.decl.DType)
	}
	if uint64(hd.Length) != k.decl.Bytes {
		return nil, fmt.Errorf("key %s: push of %d bytes, declared %d", hd.Key, hd.Length, k.decl.Bytes)
	}
	return k, nil
}

func (h *handler) Dest(c rdma.Conn, hd *proto.Header) ([]byte, error) {
	s := (*Server)(h)
	p := s.enterPeer(c)
	if p == nil {
		c.Close()
		return nil, errClosing
	}
	defer s.exit()
	switch hd.Op {
	case proto.OpPush:
		k, err := s.checkPush(p, hd)
		if err != nil {
			return nil, err
		}
		return k.scratch(), nil
	case proto.OpDeclare, proto.OpError:
		return nil, nil
	}
	return nil, fmt.Errorf("unexpected %d-byte payload on %s", hd.Length, hd.Op)
}

// StableDest implements rdma.StableReceiver on transports that grant
// stable destinations (Caps.StableDest: verbs): each worker's pushes of a
// key land in one buffer of its own, allocated once, which the push's task
// sums by copy or add (never swapping it into the round) and then releases
// (Conn.Release) for the next push.
func (h *handler) StableDest(c rdma.Conn, hd *proto.Header) ([]byte, bool, error) {
	s := (*Server)(h)
	if !s.stable || hd.Op != proto.OpPush {
		return nil, false, nil
	}
	p := s.enterPeer(c)
	if p == nil {
		c.Close()
		return nil, false, errClosing
	}
	defer s.exit()
	k, err := s.checkPush(p, hd)
	if err != nil {
		return nil, false, err
	}
	buf := make([]byte, k.decl.Bytes)
	p.stable.Lock()
	if p.stable.bufs == nil {
		p.stable.bufs = map[proto.Key][]byte{}
	}
	p.stable.bufs[hd.Key] = buf
	p.stable.Unlock()
	return buf, true, nil
}

// Chunks implements rdma.ChunkReceiver: a push is summed chunk by chunk by
// its key's engine while the rest of it is still being received.
func (h *handler) Chunks(c rdma.Conn, hd *proto.Header) (rdma.ChunkSink, bool, error) {
	s := (*Server)(h)
	if hd.Op != proto.OpPush {
		return nil, false, nil
	}
	p := s.enterPeer(c)
	if p == nil {
		c.Close()
		return nil, false, errClosing
	}
	defer s.exit()
	k, err := s.checkPush(p, hd)
	if err != nil {
		return nil, false, err
	}
	ps := &pushState{}
	k.engine.submit(task{kind: taskBegin, key: k, peer: p, hdr: *hd, push: ps})
	return &pushSink{s: s, p: p, k: k, hdr: *hd, state: ps}, true, nil
}

// pushState is shared by the tasks of one chunked push; only the key's
// engine touches it.
type pushState struct {
	refused bool
}

// pushSink receives one push's chunks on the connection's reader goroutine.
type pushSink struct {
	s       *Server
	p       *peer
	k       *key
	hdr     proto.Header
	state   *pushState
	pending []byte // handed out by Buffer, not yet Filled
}

func (ps *pushSink) Buffer(off, n int) []byte {
	b := ps.p.chunks.get(ps.s.done)
	if b == nil { // server closing
		b = make([]byte, n)
	}
	ps.pending = b
	return b[:n]
}

func (ps *pushSink) Filled(off int, b []byte) {
	ps.pending = nil
	ps.k.engine.submit(task{kind: taskChunk, key: ps.k, peer: ps.p, hdr: ps.hdr, push: ps.state, data: b, off: off})
}

func (ps *pushSink) Abort(error) {
	if ps.pending != nil {
		ps.p.chunks.put(ps.pending)
		ps.pending = nil
	}
}

func (h *handler) Handle(c rdma.Conn, hd *proto.Header, payload []byte, err error) {
	s := (*Server)(h)
	p := s.enterPeer(c)
	if p == nil {
		c.Close()
		return
	}
	defer s.exit()
	if err != nil {
		s.refuse(p, hd, err)
		return
	}
	switch hd.Op {
	case proto.OpHello:
		role, rank, ok := proto.SplitNodeID(hd.Sender)
		if !ok || role != proto.RoleWorker || rank >= s.cfg.Workers {
			s.refuse(p, hd, fmt.Errorf("hello from node %#x: not a worker rank below %d", hd.Sender, s.cfg.Workers))
			return
		}
		p.worker.Store(int32(rank))
	case proto.OpDeclare:
		if p.worker.Load() < 0 {
			s.refuse(p, hd, errors.New("declare before hello"))
			return
		}
		ds, err := proto.DecodeDecls(payload)
		if err == nil {
			var fails []keyFailure
			fails, err = s.declare(ds, int(p.worker.Load()))
			s.failKeys(fails)
		}
		if err != nil {
			s.refuse(p, hd, err)
			return
		}
		s.declares.Add(1)
		p.out.send(proto.Header{Op: proto.OpDeclareAck, Sender: s.id.Load(), ReqID: hd.ReqID}, nil, nil)
	case proto.OpPush:
		if hd.Length == 0 {
			// The transports refuse it (proto.Admit) before it gets here;
			// were one not to, it must still be answered.
			s.refuse(p, hd, errors.New("push without a payload"))
			return
		}
		if payload == nil {
			return // chunked: its tasks are queued already
		}
		k := s.lookup(hd.Key) // Dest found it; keys are never removed
		kind := taskPush
		if b := p.stableBuf(hd.Key); len(b) > 0 && len(payload) == len(b) && &b[0] == &payload[0] {
			kind = taskPushStable
		}
		k.engine.submit(task{kind: kind, key: k, peer: p, hdr: *hd, data: payload})
	case proto.OpPull:
		w := p.worker.Load()
		k := s.lookup(hd.Key)
		switch {
		case w < 0:
			s.refuse(p, hd, errors.New("pull before hello"))
		case k == nil:
			s.refuse(p, hd, fmt.Errorf("key %s was never declared", hd.Key))
		default:
			k.engine.submit(task{kind: taskPull, key: k, peer: p, hdr: *hd})
		}
	case proto.OpJoin:
		s.join(int(p.worker.Load()), hd.Round == 1)
		p.out.send(proto.Header{Op: proto.OpJoinAck, Sender: s.id.Load(), ReqID: hd.ReqID}, nil, nil)
	case proto.OpError:
		s.cfg.Logf("summation: %s reports: %s", c.RemoteAddr(), payload)
	default:
		s.refuse(p, hd, fmt.Errorf("unexpected %s", hd.Op))
	}
}

// Closed implements rdma.Handler. A connection closed for a bad frame,
// or by the transport for want of a hello (rdma.Options.HelloTimeout),
// is counted and logged once, with its address; one the peer or this
// side closed is not.
func (h *handler) Closed(c rdma.Conn, err error) {
	s := (*Server)(h)
	if s.enter() {
		defer s.exit()
	} else if (*s.final.Load())[c] == nil {
		return // unknown to the server, which has closed
	}
	s.mu.Lock()
	p := s.mu.peers[c]
	delete(s.mu.peers, c)
	s.mu.Unlock()
	if p != nil {
		defer s.conns.Done()
		p.out.close()
	}
	switch {
	case errors.Is(err, proto.ErrBadFrame):
		s.cfg.Logf("summation: closed %s: %v", c.RemoteAddr(), err)
		s.badConns.Add(1)
	case errors.Is(err, rdma.ErrNoHello):
		s.cfg.Logf("summation: closed %s: %v", c.RemoteAddr(), err)
		s.noHello.Add(1)
	case errors.Is(err, auth.ErrRefused):
		// Failed the job's handshake: nothing it sent was read.
		s.cfg.Logf("summation: refused %s: %v", c.RemoteAddr(), err)
		s.badConns.Add(1)
	}
}

type taskKind uint8

const (
	taskPush taskKind = iota
	taskBegin
	taskChunk
	taskPull
	taskServed
	taskPushStable // a push in its connection's stable destination: summed by copy, then released
	taskFail       // the key's workers disagree about it: fail it (err)
	taskDepart     // worker left the job (err says how)
	taskJoin       // worker joined (on) or ended its join
	taskStall      // the stall watch asks whether a round waits for pushes (reply)
)

type task struct {
	kind   taskKind
	key    *key
	peer   *peer
	hdr    proto.Header
	data   []byte
	round  uint64
	off    int
	push   *pushState   // chunked pushes
	err    error        // taskFail, taskDepart
	worker int          // taskDepart, taskJoin
	on     bool         // taskJoin
	reply  chan<- stall // taskStall
}

// engine sums the keys assigned to it, one task at a time.
type engine struct {
	s     *Server
	tasks chan task
}

func (e *engine) submit(t task) {
	select {
	case e.tasks <- t:
	case <-e.s.done:
	}
}

func (e *engine) run() {
	defer e.s.wg.Done()
	for {
		select {
		case t := <-e.tasks:
			e.do(t)
		case <-e.s.done:
			return
		}
	}
}

// pullToo registers the pull that a push with FlagPull carries, once the
// push was accepted, and adds what it produced to res.
func (e *engine) pullToo(t task, res *Result) error {
	if t.hdr.Flags&proto.FlagPull == 0 {
		return nil
	}
	r, err := t.key.rounds.Pull(Pull{Worker: int(t.peer.worker.Load()), ReqID: t.hdr.ReqID, Reply: t.peer}, t.hdr.Round)
	res.Answers = append(res.Answers, r.Answers...)
	res.Free = append(res.Free, r.Free...)
	res.Failed = append(res.Failed, r.Failed...)
	return err
}

// do carries out t, and the served notices of answers that could not be
// sent (their connection's outbox had shut): those are done here and
// not submitted, since an engine that waited for room in its own queue
// would wait for ever.
func (e *engine) do(t task) {
	for todo := []task{t}; len(todo) > 0; {
		t, todo = todo[0], todo[1:]
		todo = append(todo, e.step(t)...)
	}
}

// step carries out t and returns the served notices to do next.
func (e *engine) step(t task) (next []task) {
	s, k := e.s, t.key
	var res Result
	var err error
	switch t.kind {
	case taskPush:
		res, err = k.rounds.Push(int(t.peer.worker.Load()), t.hdr.Round, t.data)
		if err != nil {
			k.release([][]byte{t.data})
		} else {
			s.pushes.Add(1)
			err = e.pullToo(t, &res)
		}
	case taskPushStable:
		res, err = k.rounds.PushCopy(int(t.peer.worker.Load()), t.hdr.Round, t.data)
		if err == nil {
			s.pushes.Add(1)
			err = e.pullToo(t, &res)
		}
		// Summed (or refused): the peer may write the next push there.
		t.peer.conn.Release(proto.OpPush, k.decl.Key)
	case taskBegin:
		if res, err = k.rounds.Begin(int(t.peer.worker.Load()), t.hdr.Round); err != nil {
			t.push.refused = true
		} else {
			// Registered now, the pull gets each chunk of the sum as it
			// completes, while the rest of the pushes arrive.
			err = e.pullToo(t, &res)
		}
	case taskChunk:
		if !t.push.refused {
			res = k.rounds.Chunk(int(t.peer.worker.Load()), t.hdr.Round, t.off, t.data)
			if t.off+len(t.data) == int(k.decl.Bytes) {
				s.pushes.Add(1)
			}
		}
		t.peer.chunks.put(t.data)
	case taskPull:
		res, err = k.rounds.Pull(Pull{Worker: int(t.peer.worker.Load()), ReqID: t.hdr.ReqID, Reply: t.peer}, t.hdr.Round)
	case taskServed:
		res = k.rounds.Served(t.round)
	case taskFail:
		res = k.rounds.Fail(t.err)
	case taskDepart:
		res = k.rounds.Depart(t.worker, t.err)
	case taskJoin:
		res = k.rounds.Join(t.worker, t.on)
	case taskStall:
		st := stall{key: k}
		st.round, st.missing, st.waiting = k.rounds.Waiting()
		st.new = st.waiting && k.stallTold != st.round+1
		if st.waiting {
			k.stallTold = st.round + 1
		}
		t.reply <- st
		return nil
	}
	if err == nil && (t.kind == taskPush || t.kind == taskPushStable || t.kind == taskBegin) {
		k.progress.Add(1)
	}
	for _, b := range res.Behind {
		if p := s.peerOf(b.Worker); p != nil {
			p.out.send(proto.Header{Op: proto.OpBehind, Sender: s.id.Load(), Key: k.decl.Key, Round: b.Round}, nil, nil)
		}
	}
	if err != nil {
		s.refuse(t.peer, &t.hdr, err)
	}
	k.release(res.Free)
	for _, f := range res.Failed {
		p := f.Pull.Reply.(*peer)
		s.refuse(p, &proto.Header{Op: proto.OpPull, Key: k.decl.Key, ReqID: f.Pull.ReqID}, f.Err)
	}
	for _, a := range res.Answers {
		p := a.Pull.Reply.(*peer)
		round := a.Round
		hdr := proto.Header{Op: proto.OpPullResp, DType: k.decl.DType, Sender: s.id.Load(), Key: k.decl.Key, Round: round, ReqID: a.Pull.ReqID}
		if a.Piece >= 0 {
			hdr.Flags, hdr.Piece = proto.FlagPiece, uint32(a.Piece)
			s.pieces.Add(1)
		}
		var sent func()
		if a.Last {
			// The pull is served once its last piece has been sent (or
			// failed): the outbox sends a connection's frames in order.
			sent = func() {
				s.pulls.Add(1)
				e.submit(task{kind: taskServed, key: k, round: round})
			}
		}
		if !p.out.send(hdr, a.Buf, sent) && a.Last {
			next = append(next, task{kind: taskServed, key: k, round: round})
		}
	}
	return next
}

// outbox sends frames on one connection in order, from its own goroutine,
// so that an engine never waits on a socket. A Send that fails shuts the
// outbox and closes the connection: the worker learns of it from the
// close rather than by waiting for answers that will not come.
type outbox struct {
	conn rdma.Conn
	done func() // called when run returns
	mu   sync.Mutex
	cond *sync.Cond
	q    []outFrame
	shut bool
}

type outFrame struct {
	hdr     proto.Header
	payload []byte
	sent    func() // called after the send returned, successful or not
}

// newOutbox starts c's outbox; done is called when its goroutine ends.
func newOutbox(c rdma.Conn, done func()) *outbox {
	o := &outbox{conn: c, done: done}
	o.cond = sync.NewCond(&o.mu)
	go o.run()
	return o
}

// send queues a frame; sent, if not nil, is called on the outbox's
// goroutine once the Send returned, successful or not. It returns false,
// without calling sent, when the outbox has shut: the frame will not be
// sent.
func (o *outbox) send(h proto.Header, payload []byte, sent func()) bool {
	o.mu.Lock()
	if o.shut {
		o.mu.Unlock()
		return false
	}
	o.q = append(o.q, outFrame{h, payload, sent})
	o.mu.Unlock()
	o.cond.Signal()
	return true
}

func (o *outbox) close() {
	o.mu.Lock()
	o.shut = true
	o.mu.Unlock()
	o.cond.Signal()
}

func (o *outbox) run() {
	defer o.done()
	for {
		o.mu.Lock()
		for len(o.q) == 0 && !o.shut {
			o.cond.Wait()
		}
		q := o.q
		o.q = nil
		shut := o.shut
		o.mu.Unlock()
		for _, f := range q {
			if !shut {
				if err := o.conn.Send(f.hdr, f.payload); err != nil {
					shut = true
					o.conn.Close()
				}
			}
			if f.sent != nil {
				f.sent()
			}
		}
		if shut {
			o.close()
			// Drain anything queued meanwhile, releasing its buffers.
			o.mu.Lock()
			q = o.q
			o.q = nil
			o.mu.Unlock()
			for _, f := range q {
				if f.sent != nil {
					f.sent()
				}
			}
			return
		}
	}
}
