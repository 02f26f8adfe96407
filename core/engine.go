package core

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sync"
	"time"

	"github.com/gobps/gobps/cluster"
	"github.com/gobps/gobps/config"
	"github.com/gobps/gobps/core/local"
	"github.com/gobps/gobps/proto"
	"github.com/gobps/gobps/rdma"
	// rdma.Open chooses among the transports registered by these two.
	_ "github.com/gobps/gobps/rdma/tcp"
	_ "github.com/gobps/gobps/rdma/verbs"
	"github.com/gobps/gobps/scheduler"
	"github.com/gobps/gobps/summation/kernel"
)

// ReduceOp says what PushPull leaves in the buffer.
type ReduceOp int

const (
	// Sum leaves the sum over all workers.
	Sum ReduceOp = iota
	// Average leaves the sum divided by the number of workers (floating-point
	// dtypes only).
	Average
)

// ErrNotInitialized is returned by calls on a nil or shut-down engine.
var ErrNotInitialized = errors.New("gobps: not initialized (call Init first)")

// Options configure Init.
type Options struct {
	// Config is the parsed environment; its Role must be worker.
	Config *config.Config
	// Transport overrides rdma.Open (tests).
	Transport rdma.Transport
	// Logf, if set, receives the engine's few notices (transport choice,
	// failures).
	Logf func(format string, args ...any)
}

// Engine is one worker's connection to the job.
type Engine struct {
	cfg    *config.Config
	logf   func(string, ...any)
	member *cluster.Member
	tr     rdma.Transport
	self   cluster.Node
	book   cluster.Book

	servers []*server
	kick    chan struct{}
	stop    chan struct{}
	ctx     context.Context // cancelled when stop is closed
	cancel  context.CancelFunc
	wg      sync.WaitGroup
	local   *local.Group // nil without local aggregation
	gpu     gpuState
	trace   *timeline // nil unless BYTEPS_TRACE_ON

	broken     chan struct{} // closed when the engine fails as a whole
	brokenOnce sync.Once

	declMu sync.Mutex // serialises declaration flushes

	mu struct {
		sync.Mutex
		tensors  map[string]*Tensor
		ntensors uint32
		pending  [][]proto.Decl // per server, not yet sent
		flushing bool           // declarations sent, answers not all in
		balancer *proto.Balancer
		queue    *scheduler.Queue[*task]
		reqs     map[uint64]*task
		declReqs map[uint64]chan error
		nextReq  uint64
		failed   error // set once: the whole engine is unusable
		shutdown bool
	}
}

// server is one summation server as this worker sees it.
type server struct {
	rank   int
	node   cluster.Node
	lanes  []*lane
	failed error         // guarded by Engine.mu
	dead   chan struct{} // closed when failed is set
}

func (s *server) String() string { return s.node.String() }

// lane is one connection to a server, with its sender goroutine.
type lane struct {
	e     *Engine
	srv   *server
	conn  rdma.Conn
	sendq chan *task
}

// Tensor is a declared tensor.
type Tensor struct {
	name     string
	index    uint32
	dtype    proto.DType
	nbytes   int
	root     int32
	priority int
	parts    []part
	local    []*localPart // per part; nil without local aggregation
	staging  [][]byte     // free engine-owned buffers for PushPullCopy; guarded by Engine.mu

	round uint64 // guarded by Engine.mu
}

type part struct {
	key proto.Key
	rng proto.Range
	srv int
}

// Name returns the name the tensor was declared with.
func (t *Tensor) Name() string { return t.name }

// Bytes returns the tensor's size in bytes.
func (t *Tensor) Bytes() int { return t.nbytes }

// DType returns the tensor's element type.
func (t *Tensor) DType() proto.DType { return t.dtype }

// Partitions returns the number of keys the tensor was split into.
func (t *Tensor) Partitions() int { return len(t.parts) }

// task is one partition of one PushPull.
type task struct {
	h       *Handle
	t       *Tensor
	p       part
	round   uint64
	in, out []byte
	op      ReduceOp
	push    bool // false for a broadcast receiver: pull only
	reqID   uint64
	lane    *lane
	// state, guarded by Engine.mu
	sent      bool  // handed out by the queue: credit taken
	credited  bool  // the credit taken when sent has been returned
	sending   bool  // the lane's sender is reading in
	failed    error // a failure that came while sending, applied after
	receiving bool  // the reader is writing into out
	got       int   // bytes of the answer in out (answers may come in pieces)
	finished  bool
	times     taskTimes // with tracing only
}

// Init joins the job described by opt.Config and connects to every server.
// It returns once the coordinator has published the full address book and
// every lane is connected; ctx bounds that wait.
func Init(ctx context.Context, opt Options) (*Engine, error) {
	cfg := opt.Config
	if cfg == nil {
		return nil, errors.New("gobps: Init without a config")
	}
	if cfg.Role != config.Worker {
		return nil, fmt.Errorf("gobps: Init in a %s process; DMLC_ROLE must be worker", cfg.Role)
	}
	logf := opt.Logf
	if logf == nil {
		logf = func(string, ...any) {}
	}
	tr := opt.Transport
	if tr == nil {
		var why string
		var err error
		tr, why, err = rdma.Open(rdma.Options{Checksum: cfg.Checksum, Mode: rdma.Mode(cfg.RDMAMode()), Device: cfg.RDMADevice, GIDIndex: cfg.RDMAGIDIndex, SendDepth: cfg.RDMASendDepth, RecvDepth: cfg.RDMARecvDepth, MRCacheBytes: cfg.RDMAMRCacheBytes})
		if err != nil {
			return nil, fmt.Errorf("gobps: %w", err)
		}
		logf("transport %s: %s", tr.Caps().Name, why)
	}
	m, err := cluster.Join(ctx, cfg.RootAddr(), cluster.Registration{
		Role: cluster.RoleWorker, WorkerID: cfg.WorkerID, LocalRank: cfg.LocalRank,
		LocalSize: cfg.LocalSize, PID: os.Getpid(),
	}, cluster.Options{HeartbeatInterval: cfg.HeartbeatInterval, Logf: logf})
	if err != nil {
		return nil, fmt.Errorf("gobps: join %s: %w", cfg.RootAddr(), err)
	}
	e := &Engine{
		cfg: cfg, logf: logf, member: m, tr: tr, self: m.Self(), book: m.Book(),
		kick: make(chan struct{}, 1), stop: make(chan struct{}), broken: make(chan struct{}),
	}
	e.ctx, e.cancel = context.WithCancel(context.Background())
	if cfg.TraceOn {
		e.trace = newTimeline(cfg.TraceDir, e.self.Rank)
	}
	e.mu.tensors = make(map[string]*Tensor)
	if cfg.MixedMode {
		weights, note := mixedWeights(e.book)
		e.mu.balancer = proto.NewWeightedBalancer(weights)
		logf("gobps: %s", note)
	} else {
		e.mu.balancer = proto.NewBalancer(len(e.book.Servers))
	}
	e.mu.pending = make([][]proto.Decl, len(e.book.Servers))
	e.mu.queue = scheduler.New[*task](cfg.SchedulingCredit)
	e.mu.reqs = make(map[uint64]*task)
	e.mu.declReqs = make(map[uint64]chan error)
	if err := e.connect(ctx); err != nil {
		e.close()
		return nil, err
	}
	if err := e.joinLocal(ctx); err != nil {
		e.close()
		return nil, err
	}
	e.discoverGPUs()
	e.wg.Add(2)
	go e.dispatch()
	go e.watch()
	return e, nil
}

func (e *Engine) connect(ctx context.Context) error {
	lanes := max(e.cfg.Lanes, 1)
	for i, n := range e.book.Servers {
		s := &server{rank: i, node: n, dead: make(chan struct{})}
		e.servers = append(e.servers, s)
		for j := 0; j < lanes; j++ {
			l := &lane{e: e, srv: s, sendq: make(chan *task, 1024)}
			c, err := e.tr.Dial(ctx, n.Addr, e.self.ID, l) // sends the hello
			if err != nil {
				return fmt.Errorf("gobps: connect to %s: %w", n, err)
			}
			l.conn = c
			s.lanes = append(s.lanes, l)
			e.wg.Add(1)
			go l.send()
		}
	}
	return nil
}

// Rank is this worker's rank, 0..Size()-1.
func (e *Engine) Rank() int { return e.self.Rank }

// Size is the number of workers.
func (e *Engine) Size() int { return len(e.book.Workers) }

// LocalRank is this worker's rank on its machine.
func (e *Engine) LocalRank() int { return e.cfg.LocalRank }

// LocalSize is the number of workers on this machine.
func (e *Engine) LocalSize() int { return e.cfg.LocalSize }

// NumServers is the number of summation servers.
func (e *Engine) NumServers() int { return len(e.servers) }

// Transport names the transport in use.
func (e *Engine) Transport() string { return e.tr.Caps().Name }

// Caps says what the transport in use does (rdma.Caps).
func (e *Engine) Caps() rdma.Caps { return e.tr.Caps() }

// Declare declares a tensor of count elements of dtype for PushPull.
// Every worker must declare the same tensors in the same order. Declaring a
// name again returns the earlier tensor if it matches.
func (e *Engine) Declare(name string, dtype proto.DType, count int) (*Tensor, error) {
	return e.declare(name, dtype, count, proto.NoRoot)
}

// DeclareBroadcast declares a tensor that Broadcast copies from root.
func (e *Engine) DeclareBroadcast(name string, dtype proto.DType, count, root int) (*Tensor, error) {
	if root < 0 || root >= e.Size() {
		return nil, fmt.Errorf("gobps: broadcast root %d outside 0..%d", root, e.Size()-1)
	}
	return e.declare(name, dtype, count, int32(root))
}

func (e *Engine) declare(name string, dtype proto.DType, count int, root int32) (*Tensor, error) {
	if e == nil {
		return nil, ErrNotInitialized
	}
	if !dtype.Valid() {
		return nil, fmt.Errorf("gobps: declare %q: unknown dtype %d", name, uint8(dtype))
	}
	if count <= 0 {
		return nil, fmt.Errorf("gobps: declare %q: %d elements; a tensor needs at least one", name, count)
	}
	nbytes := count * dtype.Size()
	e.mu.Lock()
	defer e.mu.Unlock()
	if err := e.usableLocked(); err != nil {
		return nil, err
	}
	if t, ok := e.mu.tensors[name]; ok {
		if t.dtype != dtype || t.nbytes != nbytes || t.root != root {
			return nil, fmt.Errorf("gobps: %q declared again as %d bytes of %s, earlier %d bytes of %s", name, nbytes, dtype, t.nbytes, t.dtype)
		}
		return t, nil
	}
	rs, err := proto.Partition(nbytes, e.cfg.PartitionBytes)
	if err != nil {
		return nil, fmt.Errorf("gobps: declare %q: %w", name, err)
	}
	t := &Tensor{name: name, index: e.mu.ntensors, dtype: dtype, nbytes: nbytes, root: root, priority: -int(e.mu.ntensors)}
	for i, r := range rs {
		t.parts = append(t.parts, part{key: proto.MakeKey(t.index, uint32(i)), rng: r})
	}
	// The local segments first: a failure there leaves nothing declared.
	if err := e.declareLocalLocked(t); err != nil {
		return nil, err
	}
	e.mu.ntensors++
	for i := range t.parts {
		p := &t.parts[i]
		p.srv = e.mu.balancer.Assign(uint64(p.rng.Len))
		e.mu.pending[p.srv] = append(e.mu.pending[p.srv], proto.Decl{Key: p.key, DType: dtype, Root: root, Bytes: uint64(p.rng.Len)})
	}
	e.mu.tensors[name] = t
	return t, nil
}

// startableLocked reports why t cannot be pushed now: a failed server that
// holds one of its keys (named first, as the likelier root cause), or the
// engine's own failure. REQUIRES: e.mu.
func (e *Engine) startableLocked(t *Tensor) error {
	if !e.mu.shutdown {
		for _, p := range t.parts {
			if err := e.servers[p.srv].failed; err != nil {
				return err
			}
		}
	}
	return e.usableLocked()
}

func (e *Engine) usableLocked() error {
	switch {
	case e.mu.shutdown:
		return ErrNotInitialized
	case e.mu.failed != nil:
		return e.mu.failed
	}
	return nil
}

// flush sends every pending declaration, one frame per server, all servers
// at once, and waits for every answer. Flushes are serialised (declMu), so
// one that finds nothing pending returns only after any flush in flight
// has finished.
func (e *Engine) flush() error {
	e.declMu.Lock()
	defer e.declMu.Unlock()
	e.mu.Lock()
	type req struct {
		s     *server
		id    uint64
		ds    []proto.Decl
		reply chan error
	}
	var reqs []req
	for i, ds := range e.mu.pending {
		if len(ds) == 0 {
			continue
		}
		e.mu.nextReq++
		r := req{s: e.servers[i], id: e.mu.nextReq, ds: ds, reply: make(chan error, 1)}
		e.mu.declReqs[r.id] = r.reply
		reqs = append(reqs, r)
		e.mu.pending[i] = nil
	}
	e.mu.flushing = len(reqs) > 0
	e.mu.Unlock()
	defer func() {
		e.mu.Lock()
		e.mu.flushing = false
		e.mu.Unlock()
	}()
	var errs []error
	for _, r := range reqs {
		err := r.s.lanes[0].conn.Send(proto.Header{Op: proto.OpDeclare, Sender: e.self.ID, ReqID: r.id}, proto.EncodeDecls(r.ds))
		if err != nil {
			e.failServer(r.s, err)
		}
	}
	for _, r := range reqs {
		select {
		case err := <-r.reply:
			if err != nil {
				errs = append(errs, fmt.Errorf("declare to %s: %w", r.s, err))
			}
		case <-e.stop:
			errs = append(errs, ErrNotInitialized)
		}
	}
	if len(errs) > 0 {
		err := fmt.Errorf("gobps: %w", errors.Join(errs...))
		e.mu.Lock()
		if e.mu.failed == nil {
			e.mu.failed = err // the servers disagree with us: nothing can be summed safely
		}
		e.brokenOnce.Do(func() { close(e.broken) })
		e.mu.Unlock()
		return err
	}
	return nil
}

// PushPull sums buf over all workers, in place, asynchronously. buf must be
// exactly the tensor's size and must not be touched until the handle
// completes.
func (e *Engine) PushPull(t *Tensor, buf []byte, op ReduceOp) (*Handle, error) {
	if e == nil {
		return nil, ErrNotInitialized
	}
	if t.root != proto.NoRoot {
		return nil, fmt.Errorf("gobps: %q was declared for broadcast; use Broadcast", t.name)
	}
	if op == Average && !t.dtype.IsFloat() {
		return nil, fmt.Errorf("gobps: %q: cannot average %s; use Sum", t.name, t.dtype)
	}
	if op != Sum && op != Average {
		return nil, fmt.Errorf("gobps: unknown reduce op %d", op)
	}
	return e.start(t, buf, op, true)
}

// Broadcast copies root's buf into every worker's buf, asynchronously. The
// tensor must have been declared with DeclareBroadcast.
func (e *Engine) Broadcast(t *Tensor, buf []byte) (*Handle, error) {
	if e == nil {
		return nil, ErrNotInitialized
	}
	if t.root == proto.NoRoot {
		return nil, fmt.Errorf("gobps: %q was not declared for broadcast", t.name)
	}
	return e.start(t, buf, Sum, e.self.Rank == int(t.root))
}

func (e *Engine) start(t *Tensor, buf []byte, op ReduceOp, push bool) (*Handle, error) {
	if len(buf) != t.nbytes {
		return nil, fmt.Errorf("gobps: %q: buffer of %d bytes, declared %d", t.name, len(buf), t.nbytes)
	}
	e.mu.Lock()
	if err := e.startableLocked(t); err != nil {
		e.mu.Unlock()
		return nil, err
	}
	// Declarations still to send, or sent by a concurrent call whose
	// answers are not all in: either way this push must wait for them, or
	// it could reach a server (over another lane) before its key's
	// declaration does.
	dirty := e.mu.flushing
	for _, ds := range e.mu.pending {
		dirty = dirty || len(ds) > 0
	}
	e.mu.Unlock()
	if dirty {
		if err := e.flush(); err != nil {
			return nil, err
		}
	}
	h := newHandle(t.name, len(t.parts))
	h.tasks = make([]*task, 0, len(t.parts))
	e.mu.Lock()
	defer e.mu.Unlock()
	if err := e.startableLocked(t); err != nil {
		return nil, err
	}
	round := t.round
	t.round++
	if e.local != nil && push && t.root < 0 {
		e.startLocalLocked(h, t, buf, op, round)
		return h, nil
	}
	for _, p := range t.parts {
		b := buf[p.rng.Off : p.rng.Off+p.rng.Len]
		tk := &task{h: h, t: t, p: p, round: round, in: b, out: b, op: op, push: push}
		h.tasks = append(h.tasks, tk)
		s := e.servers[p.srv]
		tk.lane = s.lanes[int(uint64(p.key)%uint64(len(s.lanes)))]
		if s.failed != nil {
			e.finishLocked(tk, s.failed)
			continue
		}
		if h.abandoned {
			e.finishLocked(tk, errAbandoned)
			continue
		}
		e.enqueueLocked(tk)
	}
	e.poke()
	return h, nil
}

// enqueueLocked queues tk for dispatch. REQUIRES: e.mu.
func (e *Engine) enqueueLocked(tk *task) {
	tk.times.queued = e.trace.now()
	e.mu.queue.Push(scheduler.Item[*task]{Key: tk.p.key, Priority: tk.t.priority, Bytes: tk.p.rng.Len, Value: tk})
}

func (e *Engine) poke() {
	select {
	case e.kick <- struct{}{}:
	default:
	}
}

// dispatch hands partitions to their lanes as the credit allows.
func (e *Engine) dispatch() {
	defer e.wg.Done()
	var out []*task
	for {
		select {
		case <-e.kick:
		case <-e.stop:
			return
		}
		e.mu.Lock()
		for {
			it, ok := e.mu.queue.Next()
			if !ok {
				break
			}
			tk := it.Value
			tk.sent = true
			tk.times.dispatched = e.trace.now()
			if tk.finished { // failed while queued
				e.mu.queue.Done(tk.p.rng.Len)
				continue
			}
			if err := tk.lane.srv.failed; err != nil {
				e.finishLocked(tk, err)
				continue
			}
			e.mu.nextReq++
			tk.reqID = e.mu.nextReq
			e.mu.reqs[tk.reqID] = tk
			out = append(out, tk)
		}
		e.mu.Unlock()
		for _, tk := range out {
			select {
			case tk.lane.sendq <- tk:
			case <-e.stop:
				return
			}
		}
		out = out[:0]
	}
}

// send pushes and pulls the partitions handed to this lane, in order.
func (l *lane) send() {
	defer l.e.wg.Done()
	for {
		var tk *task
		select {
		case tk = <-l.sendq:
		case <-l.e.stop:
			return
		}
		l.e.mu.Lock()
		if tk.finished {
			// Failed or abandoned before it left: its handle may have
			// completed, so its buffer is the caller's again. Never touch it.
			l.e.mu.Unlock()
			continue
		}
		tk.sending = true
		tk.times.sending = l.e.trace.now()
		l.e.mu.Unlock()
		h := proto.Header{Sender: l.e.self.ID, Key: tk.p.key, Round: tk.round, ReqID: tk.reqID, DType: tk.t.dtype}
		var err error
		if tk.push {
			// The push asks for the sum too (FlagPull), so the server can
			// stream it back while the pushes are still arriving.
			h.Op, h.Flags = proto.OpPush, proto.FlagPull
			err = l.conn.Send(h, tk.in)
		} else {
			h.Op, h.DType = proto.OpPull, 0
			err = l.conn.Send(h, nil)
		}
		l.e.mu.Lock()
		tk.sending = false
		tk.times.sent = l.e.trace.now()
		if tk.finished {
			l.e.trace.record(tk) // answered before the push returned
		}
		if tk.failed != nil {
			l.e.finishLocked(tk, tk.failed)
		}
		l.e.mu.Unlock()
		if err != nil {
			l.e.failServer(l.srv, err)
			continue
		}
		// The push is on the wire: return its credit now, not when the
		// sum comes back. The sum waits for every worker's push, so credit
		// held until then lets two workers that dispatched in different
		// orders wait on each other forever (each holds the credit the
		// other's missing push needs). BytePS also frees the credit when
		// the push completes.
		l.e.mu.Lock()
		l.e.returnCreditLocked(tk)
		l.e.mu.Unlock()
	}
}

// returnCreditLocked gives back the credit tk took when it was handed
// out, once. REQUIRES: e.mu.
func (e *Engine) returnCreditLocked(tk *task) {
	if tk.sent && !tk.credited {
		tk.credited = true
		e.mu.queue.Done(tk.p.rng.Len)
		e.poke()
	}
}

// Dest implements rdma.Handler: a pull answer lands in the caller's buffer.
func (l *lane) Dest(c rdma.Conn, h *proto.Header) ([]byte, error) {
	if h.Op != proto.OpPullResp {
		return nil, nil
	}
	e := l.e
	e.mu.Lock()
	defer e.mu.Unlock()
	tk := e.mu.reqs[h.ReqID]
	off, whole := 0, h.Flags&proto.FlagPiece == 0
	if !whole {
		off = int(h.Piece) * proto.PieceBytes
	}
	switch {
	case tk == nil || tk.finished:
		return nil, fmt.Errorf("answer to unknown request %d", h.ReqID)
	case tk.p.key != h.Key || tk.round != h.Round || tk.t.dtype != h.DType:
		return nil, fmt.Errorf("answer %s does not match request (key %s round %d, %d bytes of %s)", h, tk.p.key, tk.round, len(tk.out), tk.t.dtype)
	case whole && (len(tk.out) != int(h.Length) || tk.got != 0),
		!whole && (off+int(h.Length) > len(tk.out) || tk.got+int(h.Length) > len(tk.out)):
		return nil, fmt.Errorf("answer %s does not fit request (%d of %d bytes in)", h, tk.got, len(tk.out))
	}
	tk.receiving = true
	if tk.got == 0 {
		tk.times.first = e.trace.now()
	}
	return tk.out[off : off+int(h.Length)], nil
}

// Handle implements rdma.Handler.
func (l *lane) Handle(c rdma.Conn, h *proto.Header, payload []byte, err error) {
	e := l.e
	switch {
	case err != nil:
		// An answer we cannot place: the server and we disagree about a
		// request. Fail it rather than leave it waiting.
		e.mu.Lock()
		if tk := e.mu.reqs[h.ReqID]; tk != nil {
			e.finishLocked(tk, fmt.Errorf("from %s: %w", l.srv, err))
		}
		e.mu.Unlock()
	case h.Op == proto.OpPullResp:
		e.mu.Lock()
		tk := e.mu.reqs[h.ReqID]
		tk.receiving = false
		if tk.got += int(h.Length); tk.got < len(tk.out) {
			// More pieces to come. A failure meanwhile finishes the task
			// (nothing writes into out between pieces); later pieces are
			// then refused by Dest.
			if tk.failed != nil {
				e.finishLocked(tk, tk.failed)
			}
			e.mu.Unlock()
			return
		}
		e.mu.Unlock()
		var derr error
		if tk.op == Average {
			derr = kernel.Div(tk.t.dtype, tk.out, e.Size())
		}
		e.mu.Lock()
		tk.receiving = false
		e.finishLocked(tk, derr)
		e.mu.Unlock()
	case h.Op == proto.OpDeclareAck || h.Op == proto.OpError:
		var rerr error
		if h.Op == proto.OpError {
			rerr = fmt.Errorf("%s: %s", l.srv, payload)
		}
		e.mu.Lock()
		if ch, ok := e.mu.declReqs[h.ReqID]; ok {
			delete(e.mu.declReqs, h.ReqID)
			ch <- rerr
		} else if tk := e.mu.reqs[h.ReqID]; tk != nil && rerr != nil {
			e.finishLocked(tk, fmt.Errorf("%q key %s round %d: %w", tk.t.name, tk.p.key, tk.round, rerr))
		}
		e.mu.Unlock()
	default:
		e.logf("gobps: unexpected %s from %s", h.Op, l.srv)
	}
}

// Closed implements rdma.Handler.
func (l *lane) Closed(c rdma.Conn, err error) {
	if err == nil {
		err = errors.New("connection closed")
	}
	l.e.failServer(l.srv, fmt.Errorf("connection lost: %w", err))
	// The reader is gone: fail what it was receiving too. (failServer
	// skipped those: until now the reader might still have been writing
	// into their buffers.)
	l.e.mu.Lock()
	for _, tk := range l.e.mu.reqs {
		if tk.lane == l {
			tk.receiving = false
			l.e.finishLocked(tk, l.srv.failed)
		}
	}
	l.e.mu.Unlock()
}

// finishLocked completes one task. REQUIRES: e.mu.
func (e *Engine) finishLocked(tk *task, err error) {
	if tk.finished {
		return
	}
	if tk.receiving && err != nil {
		// A receiving task is finished by its reader (Handle or Closed),
		// never under it: with this error if more pieces of its answer
		// were still to come, successfully if the answer is all in.
		if tk.failed == nil {
			tk.failed = err
		}
		return
	}
	if tk.sending && err != nil {
		// The sender is reading the caller's buffer: it finishes the task
		// with this error once the send has returned, so the handle never
		// completes while its buffer is still being read.
		if tk.failed == nil {
			tk.failed = err
		}
		return
	}
	tk.finished = true
	tk.times.done, tk.times.err = e.trace.now(), err
	if !tk.sending {
		e.trace.record(tk) // else the sender records it once its Send returns
	}
	if tk.reqID != 0 {
		delete(e.mu.reqs, tk.reqID)
	}
	e.returnCreditLocked(tk)
	tk.h.partDone(err)
	if err != nil && !tk.h.abandoned {
		// One partition failed: the handle fails now rather than wait for
		// partitions that may never complete. Siblings still queued or
		// waiting for an answer are abandoned (a late answer is discarded
		// by Dest); one whose answer is being received finishes when it is
		// in, so the buffer is never written after the handle completes.
		tk.h.abandoned = true
		for _, sib := range tk.h.tasks {
			if !sib.finished && !sib.receiving {
				e.finishLocked(sib, errAbandoned)
			}
		}
	}
}

var errAbandoned = errors.New("abandoned after another partition failed")

// failServer marks s failed and fails everything pending on it.
func (e *Engine) failServer(s *server, cause error) {
	e.mu.Lock()
	if s.failed != nil {
		e.mu.Unlock()
		return
	}
	s.failed = fmt.Errorf("gobps: %s failed: %w", s, cause)
	close(s.dead)
	for _, tk := range e.mu.reqs {
		if tk.lane.srv == s {
			e.finishLocked(tk, s.failed)
		}
	}
	for _, ch := range e.mu.declReqs {
		select {
		case ch <- s.failed:
		default:
		}
	}
	// Once Shutdown has begun, the servers hang up as the job ends: not
	// worth a notice.
	quiet := e.mu.shutdown
	e.mu.Unlock()
	if !quiet {
		e.logf("%v", s.failed)
	}
	for _, l := range s.lanes {
		l.conn.Close()
	}
}

// failAll makes the engine unusable and fails everything pending.
func (e *Engine) failAll(err error) {
	e.mu.Lock()
	if e.mu.failed == nil {
		e.mu.failed = err
	}
	e.brokenOnce.Do(func() { close(e.broken) })
	for _, tk := range e.mu.reqs {
		e.finishLocked(tk, err)
	}
	for _, ch := range e.mu.declReqs {
		select {
		case ch <- err:
		default:
		}
	}
	e.mu.Unlock()
	e.drainQueue(err)
}

func (e *Engine) drainQueue(err error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	for _, it := range e.mu.queue.Drain() {
		e.finishLocked(it.Value, err)
	}
}

// workerDeathSettle is how long a worker's death waits before it fails
// everything, so that a server failure behind it is reported first.
const workerDeathSettle = 500 * time.Millisecond

// watch turns cluster events into failures.
func (e *Engine) watch() {
	defer e.wg.Done()
	for {
		select {
		case ev := <-e.member.Events():
			err := fmt.Errorf("gobps: %s died: %s", ev.Node, ev.Reason)
			if ev.Node.Role == cluster.RoleServer && ev.Node.Rank < len(e.servers) {
				e.failServer(e.servers[ev.Node.Rank], fmt.Errorf("%s", ev.Reason))
			} else {
				// A worker's death is often the echo of a server's: the
				// worker failed on the dead server and exited before our
				// own connections to that server reported it. Give them
				// a moment, so that pending work fails naming the root
				// cause; everything still pending then fails with this.
				select {
				case <-time.After(workerDeathSettle):
				case <-e.stop:
					return
				}
				e.failAll(err)
			}
		case <-e.member.Done():
			if err := e.member.Err(); err != nil {
				e.failAll(fmt.Errorf("gobps: %w", err))
			}
			return
		case <-e.stop:
			return
		}
	}
}

// Shutdown leaves the job and releases everything. Pending handles fail.
func (e *Engine) Shutdown() error {
	if e == nil {
		return ErrNotInitialized
	}
	e.mu.Lock()
	if e.mu.shutdown {
		e.mu.Unlock()
		return nil
	}
	e.mu.shutdown = true
	e.mu.Unlock()
	err := e.member.Leave()
	e.close()
	e.failAll(ErrNotInitialized)
	if terr := e.trace.write(); terr != nil {
		err = errors.Join(err, terr)
	} else if e.trace != nil {
		e.logf("gobps: timeline written to %s", e.trace.path())
	}
	return err
}

func (e *Engine) close() {
	select {
	case <-e.stop:
	default:
		close(e.stop)
		e.cancel()
	}
	for _, s := range e.servers {
		for _, l := range s.lanes {
			if l.conn != nil {
				l.conn.Close()
			}
		}
	}
	if e.member != nil {
		e.member.Leave()
	}
	// Fail what is still queued or waiting, so the goroutines waiting on
	// it (local aggregation, GPU staging) end.
	e.failAll(ErrNotInitialized)
	e.wg.Wait()
	e.closeGPUs()
	if e.local != nil {
		// Only now: nothing reads or writes the shared segments any more.
		if err := e.local.Close(); err != nil {
			e.logf("gobps: leave the local group: %v", err)
		}
	}
}

// Handle is the completion of one PushPull or Broadcast.
type Handle struct {
	name string
	done chan struct{}
	// tasks and abandoned are guarded by Engine.mu.
	tasks     []*task
	abandoned bool

	mu   sync.Mutex
	left int
	err  error
}

func newHandle(name string, parts int) *Handle {
	h := &Handle{name: name, done: make(chan struct{}), left: parts}
	if parts == 0 {
		close(h.done)
	}
	return h
}

// cause waits for h and returns the error that failed it without the
// handle's own naming of the tensor, for the engine's handles that wrap
// another handle of the same tensor (local aggregation, staging).
func (h *Handle) cause() error {
	<-h.done
	h.mu.Lock()
	defer h.mu.Unlock()
	return errors.Unwrap(h.err)
}

func (h *Handle) partDone(err error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if err != nil && h.err == nil {
		h.err = fmt.Errorf("%q: %w", h.name, err)
	}
	h.left--
	if h.left == 0 {
		close(h.done)
	}
}

// Done is closed when every partition has completed or failed.
func (h *Handle) Done() <-chan struct{} { return h.done }

// Poll reports whether the handle has completed.
func (h *Handle) Poll() bool {
	select {
	case <-h.done:
		return true
	default:
		return false
	}
}

// Wait blocks until the handle completes and returns its error.
func (h *Handle) Wait() error {
	<-h.done
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.err
}

// WaitTimeout is Wait bounded by d.
func (h *Handle) WaitTimeout(d time.Duration) error {
	select {
	case <-h.done:
		return h.Wait()
	case <-time.After(d):
		return fmt.Errorf("gobps: %q not done after %v", h.name, d)
	}
}
