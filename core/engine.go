package core

import (
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"sync"
	"time"

	"github.com/gobps/gobps/cluster"
	"github.com/gobps/gobps/config"
	"github.com/gobps/gobps/core/lifecycle"
	"github.com/gobps/gobps/core/local"
	"github.com/gobps/gobps/gpu"
	"github.com/gobps/gobps/internal/auth"
	"github.com/gobps/gobps/proto"
	"github.com/gobps/gobps/rdma"
	// rdma.Open chooses among the transports registered by these two.
	_ "github.com/gobps/gobps/rdma/tcp"
	_ "github.com/gobps/gobps/rdma/verbs"
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
	// CauseGrace is how long a worker's or local peer's death waits for a
	// server failure that may explain it, to name that as the cause (a
	// program exits when its push_pull fails, so its death often follows
	// a server's). Init's zero means 200 ms; engines built otherwise (the
	// fault schedules) do not wait.
	CauseGrace time.Duration
	// Transport overrides rdma.Open (tests: an in-memory transport that
	// injects faults). The engine closes only a transport it opened.
	Transport rdma.Transport
	// Logf, if set, receives the engine's few notices (transport choice,
	// failures).
	Logf func(format string, args ...any)
	// Warnf, if set, receives the warnings a user must see: a server's
	// notice that a tensor waits for workers that never declared it, a
	// worker that left the job. Nil sends them to Logf.
	Warnf func(format string, args ...any)
	// OpenDevice, if set, opens GPU device index in place of CUDA: tests
	// and test programs give the fake device here (gpu/fake). Production
	// code leaves it nil.
	OpenDevice func(index int) (gpu.Device, error)
}

// membership is what the engine needs of its cluster membership
// (*cluster.Member): tests of the engine alone give a stand-in.
type membership interface {
	Events() <-chan cluster.NodeEvent
	Done() <-chan struct{}
	Err() error
	Leave() error
	Barrier(ctx context.Context, g cluster.Group) error
}

// Engine is one worker's connection to the job.
//
// Goroutines: one sender per lane, and the watcher of cluster events, all
// started by Init; and one per running stage effect (local aggregation,
// GPU staging), started by spawn. Close waits for every one of them, and
// for every lane's reader (the transport's) to have said Closed.
//
// Locking: mu guards the tensors, the declarations and the partition
// lifecycle (mu.m, which holds the scheduler queue and the request table).
// Nothing under mu does I/O or waits: effects are taken from the machine
// under mu and carried out after it is released (see effects.go). declMu
// serialises Declare, whose local-aggregation segments are files; flushMu
// serialises declaration flushes.
type Engine struct {
	cfg    *config.Config
	logf   func(string, ...any)
	warnf  func(string, ...any)
	member membership
	tr     rdma.Transport
	ownTr  bool // opened by Init: closed by Shutdown
	self   cluster.Node
	book   cluster.Book
	auth   *auth.Config // the job's authentication (nil: none), for the local group
	names  sync.Map     // tensor index (uint32) -> name, for the local stall report

	causeGrace time.Duration // Options.CauseGrace
	localOnly  bool          // push_pull sums end in local aggregation (config.LocalOnly)
	// serverDown is closed when the first server fails (failServer),
	// with serverDownErr set before; serverFailure waits on it.
	serverDown     chan struct{}
	serverDownErr  error
	serverDownOnce sync.Once
	servers        []*server
	local          *local.Group // nil without local aggregation
	gpu            gpuState
	trace          *timeline // nil unless BYTEPS_TRACE_ON

	stop   chan struct{} // closed once, when the engine closes
	ctx    context.Context
	cancel context.CancelFunc

	broken     chan struct{} // closed when the engine fails as a whole
	brokenOnce sync.Once
	closeOnce  sync.Once

	declMu  sync.Mutex
	flushMu sync.Mutex
	ghostMu sync.Mutex // serialises ghost rounds (join.go)

	// spawned goroutines: spawn counts them under goMu while goClosed is
	// false; after that it runs the effect on the caller's goroutine.
	goMu     sync.Mutex
	goClosed bool
	wg       sync.WaitGroup

	mu struct {
		sync.Mutex
		m        *lifecycle.Machine
		tensors  map[string]*Tensor
		byIndex  []*Tensor         // by Tensor.index; nil while only reserved
		reserved map[string]uint32 // Reserve: name -> index, until declared
		ntensors uint32
		pending  [][]proto.Decl // per server, not yet sent
		flushing bool           // declarations sent, answers not all in
		balancer *proto.Balancer
		declReqs map[uint64]chan error
		nextDecl uint64
		failed   error // set once: the whole engine is unusable
		shutdown bool
		joined   bool      // in Join, before every worker has joined
		ghosts   []*Handle // ghost rounds started in this Join
		// open counts the operations started and not complete; idle
		// holds the waiters for it to reach 0 (Suspend).
		open      int
		idle      []chan struct{}
		suspended bool
		// waits are the running waits the lifecycle may cancel (local
		// Reduce and Result by task, a stage's copy in by op).
		waits map[any]wait
	}
}

// declBit marks the request ids of declarations: the partitions' ids,
// which the lifecycle hands out, count up from 1 and never reach it.
const declBit = 1 << 63

// server is one summation server as this worker sees it.
type server struct {
	rank   int
	node   cluster.Node
	lanes  []*lane
	failed error         // guarded by Engine.mu
	dead   chan struct{} // closed when failed is set
}

func (s *server) String() string { return s.node.String() }

// Tensor is a declared tensor.
type Tensor struct {
	name     string
	index    uint32
	dtype    proto.DType
	shape    []int64
	reserved bool // its place was reserved (Reserve): servers and owners by key
	nbytes   int
	root     int32
	priority int
	parts    []lifecycle.Part
	local    []*local.Segment // per part; nil without local aggregation
	owners   []bool           // per part: this rank owns it locally
	staging  [][]byte         // free engine-owned buffers for PushPullCopy; guarded by Engine.mu

	round uint64 // guarded by Engine.mu
}

// Name returns the name the tensor was declared with.
func (t *Tensor) Name() string { return t.name }

// Bytes returns the tensor's size in bytes.
func (t *Tensor) Bytes() int { return t.nbytes }

// DType returns the tensor's element type.
func (t *Tensor) DType() proto.DType { return t.dtype }

// Partitions returns the number of keys the tensor was split into.
func (t *Tensor) Partitions() int { return len(t.parts) }

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
	au, err := cfg.Auth()
	if err != nil {
		return nil, fmt.Errorf("gobps: %w", err)
	}
	if au == nil {
		warnf := opt.Warnf
		if warnf == nil {
			warnf = logf
		}
		warnf("gobps: %s", auth.Unauthenticated)
	}
	tr, own := opt.Transport, false
	if tr == nil {
		var why string
		var err error
		tr, why, err = rdma.Open(transportOptions(cfg, au))
		if err != nil {
			return nil, fmt.Errorf("gobps: %w", err)
		}
		own = true
		logf("transport %s: %s", tr.Caps().Name, why)
	}
	m, err := cluster.Join(ctx, cfg.RootAddr(), cluster.Registration{
		Role: cluster.RoleWorker, WorkerID: cfg.WorkerID, LocalRank: cfg.LocalRank,
		LocalSize: cfg.LocalSize, PID: os.Getpid(),
	}, cluster.Options{HeartbeatInterval: cfg.HeartbeatInterval, Auth: au, Logf: logf})
	if err != nil {
		if own {
			tr.Close()
		}
		return nil, fmt.Errorf("gobps: join %s: %w", cfg.RootAddr(), err)
	}
	if opt.CauseGrace == 0 {
		opt.CauseGrace = serverGrace
	}
	e, err := start(ctx, cfg, opt, m, m.Self(), m.Book(), tr, own)
	if err != nil {
		return nil, err
	}
	return e, nil
}

// start builds the engine over a membership and a transport, connects to
// every server and starts the engine's goroutines. On error everything it
// made is released, the membership left and an owned transport closed.
func start(ctx context.Context, cfg *config.Config, opt Options, m membership, self cluster.Node, book cluster.Book, tr rdma.Transport, own bool) (*Engine, error) {
	logf := opt.Logf
	if logf == nil {
		logf = func(string, ...any) {}
	}
	warnf := opt.Warnf
	if warnf == nil {
		warnf = logf
	}
	au, err := cfg.Auth()
	if err != nil {
		if own {
			tr.Close()
		}
		m.Leave()
		return nil, fmt.Errorf("gobps: %w", err)
	}
	e := &Engine{
		cfg: cfg, logf: logf, warnf: warnf, member: m, tr: tr, ownTr: own, self: self, book: book,
		auth: au, causeGrace: opt.CauseGrace, stop: make(chan struct{}), broken: make(chan struct{}), serverDown: make(chan struct{}),
	}
	e.gpu.open = opt.OpenDevice
	e.ctx, e.cancel = context.WithCancel(context.Background())
	if cfg.TraceOn {
		e.trace = newTimeline(cfg.TraceDir, self.Rank)
	}
	e.mu.tensors = make(map[string]*Tensor)
	e.mu.reserved = make(map[string]uint32)
	if cfg.MixedMode {
		weights, note := mixedWeights(book)
		e.mu.balancer = proto.NewWeightedBalancer(weights)
		logf("gobps: %s", note)
	} else {
		e.mu.balancer = proto.NewBalancer(len(book.Servers))
	}
	e.mu.pending = make([][]proto.Decl, len(book.Servers))
	e.mu.m = lifecycle.New(lifecycle.Config{Credit: cfg.SchedulingCredit, Servers: len(book.Servers)})
	e.mu.declReqs = make(map[uint64]chan error)
	e.mu.waits = make(map[any]wait)
	if err := e.connect(ctx); err != nil {
		e.close()
		return nil, err
	}
	if err := e.joinLocal(ctx); err != nil {
		e.close()
		return nil, err
	}
	switch {
	case e.local != nil && cfg.LocalOnly():
		e.localOnly = true
		e.logf("gobps: every worker is on this machine: push_pull sums come from shared memory, with no server round trip (BYTEPS_FORCE_DISTRIBUTED=1 sends them through the servers)")
	case e.local != nil:
		e.logf("gobps: push_pull sums: %d machines of %d workers; each machine's sum in shared memory, then through the servers", cfg.NumWorker, cfg.LocalSize)
	default:
		e.logf("gobps: push_pull sums: every worker pushes to the servers")
	}
	e.discoverGPUs()
	e.wg.Add(1)
	go e.watch()
	if p, ok := e.member.(progressReporter); ok && cfg.Progress > 0 {
		e.wg.Add(1)
		go e.reportProgress(p, cfg.Progress)
	}
	return e, nil
}

// progressReporter is the membership's side of GOBPS_PROGRESS.
type progressReporter interface {
	Progress(cluster.Progress) error
}

// reportProgress tells the coordinator this worker's counts every
// interval, until the engine stops or the membership ends.
func (e *Engine) reportProgress(p progressReporter, every time.Duration) {
	defer e.wg.Done()
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-t.C:
			m := e.Metrics()
			pr := cluster.Progress{Ops: m.OpsCompleted, Bytes: m.BytesCompleted}
			if err := p.Progress(pr); err != nil {
				return // the membership is ending; watch reports why
			}
		case <-e.member.Done():
			return
		case <-e.stop:
			return
		}
	}
}

// transportOptions maps the configuration onto the transport's options.
func transportOptions(cfg *config.Config, au *auth.Config) rdma.Options {
	return rdma.Options{Checksum: cfg.Checksum, Mode: rdma.Mode(cfg.RDMAMode()), Device: cfg.RDMADevice,
		GIDIndex: cfg.RDMAGIDIndex, SendDepth: cfg.RDMASendDepth, RecvDepth: cfg.RDMARecvDepth,
		MRCacheBytes: cfg.RDMAMRCacheBytes, Auth: au}
}

func (e *Engine) connect(ctx context.Context) error {
	lanes := max(e.cfg.Lanes, 1)
	for i, n := range e.book.Servers {
		s := &server{rank: i, node: n, dead: make(chan struct{})}
		e.servers = append(e.servers, s)
		for j := 0; j < lanes; j++ {
			l := newLane(e, s, j)
			c, err := e.tr.Dial(ctx, n.Addr, e.self.ID, l)
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

// Caps describes the transport in use.
func (e *Engine) Caps() rdma.Caps { return e.tr.Caps() }

// Declare declares a tensor of count elements of dtype for PushPull (a
// vector: DeclareShape gives a shape). Every worker must declare the same
// tensors, by name, dtype and shape, in the same order: the servers
// compare every worker's declarations and refuse a mismatch. Declaring a
// name again returns the earlier tensor if it matches.
func (e *Engine) Declare(name string, dtype proto.DType, count int) (*Tensor, error) {
	return e.declare(name, dtype, []int64{int64(count)}, proto.NoRoot)
}

// Reserve fixes name's place in the declaration order, as BytePS's
// declare(name) does, before its dtype and shape are known: its priority
// and keys are those of the place it reserved, whatever is declared (or
// first pushed) in between, and its servers are chosen by its keys, not by
// the order in which the workers come to declare it. Every worker must
// reserve the same names in the same order. Reserving a declared or
// reserved name does nothing.
func (e *Engine) Reserve(name string) error {
	if e == nil {
		return ErrNotInitialized
	}
	if name == "" || len(name) > proto.MaxNameBytes {
		return fmt.Errorf("gobps: reserve: a name of %d bytes; 1 to %d", len(name), proto.MaxNameBytes)
	}
	e.declMu.Lock()
	defer e.declMu.Unlock()
	e.mu.Lock()
	defer e.mu.Unlock()
	if err := e.usableLocked(); err != nil {
		return err
	}
	if _, ok := e.mu.tensors[name]; ok {
		return nil
	}
	if _, ok := e.mu.reserved[name]; ok {
		return nil
	}
	e.mu.reserved[name] = e.mu.ntensors
	e.mu.ntensors++
	e.mu.byIndex = append(e.mu.byIndex, nil)
	return nil
}

// mix scrambles a key into a server choice (splitmix64's finaliser).
func mix(x uint64) uint64 {
	x ^= x >> 30
	x *= 0xbf58476d1ce4e5b9
	x ^= x >> 27
	x *= 0x94d049bb133111eb
	return x ^ x>>31
}

// DeclareShape is Declare for a tensor of the given shape; an empty shape
// is a scalar (one element).
func (e *Engine) DeclareShape(name string, dtype proto.DType, shape []int64) (*Tensor, error) {
	return e.declare(name, dtype, shape, proto.NoRoot)
}

// DeclareBroadcast declares a tensor that Broadcast copies from root.
func (e *Engine) DeclareBroadcast(name string, dtype proto.DType, count, root int) (*Tensor, error) {
	return e.DeclareBroadcastShape(name, dtype, []int64{int64(count)}, root)
}

// DeclareBroadcastShape is DeclareBroadcast for a tensor of the given shape.
func (e *Engine) DeclareBroadcastShape(name string, dtype proto.DType, shape []int64, root int) (*Tensor, error) {
	if e == nil {
		return nil, ErrNotInitialized
	}
	if root < 0 || root >= e.Size() {
		return nil, fmt.Errorf("gobps: broadcast root %d outside 0..%d", root, e.Size()-1)
	}
	return e.declare(name, dtype, shape, int32(root))
}

func (e *Engine) declare(name string, dtype proto.DType, shape []int64, root int32) (*Tensor, error) {
	if e == nil {
		return nil, ErrNotInitialized
	}
	if !dtype.Valid() {
		return nil, fmt.Errorf("gobps: declare %q: unknown dtype %d", name, uint8(dtype))
	}
	if len(name) > proto.MaxNameBytes {
		return nil, fmt.Errorf("gobps: declare %q: a name of %d bytes; at most %d", name[:32]+"...", len(name), proto.MaxNameBytes)
	}
	if len(shape) > proto.MaxDims {
		return nil, fmt.Errorf("gobps: declare %q: %d dimensions; at most %d", name, len(shape), proto.MaxDims)
	}
	count := 1
	for _, n := range shape {
		if n <= 0 {
			return nil, fmt.Errorf("gobps: declare %q: shape %v has %d elements; a tensor needs at least one", name, shape, n)
		}
		if int64(count) > int64(proto.MaxPayload)/n {
			return nil, fmt.Errorf("gobps: declare %q: shape %v is too large", name, shape)
		}
		count *= int(n)
	}
	shape = slices.Clone(shape)
	nbytes := count * dtype.Size()
	// Declarations are serialised by declMu, not mu: a declaration with
	// local aggregation creates and maps shared-memory files, and no I/O
	// happens under mu.
	e.declMu.Lock()
	defer e.declMu.Unlock()
	e.mu.Lock()
	err := e.usableLocked()
	t, dup := e.mu.tensors[name]
	index, reserved := e.mu.reserved[name]
	if !reserved {
		index = e.mu.ntensors
	}
	e.mu.Unlock()
	switch {
	case err != nil:
		return nil, err
	case dup:
		if t.dtype != dtype || t.nbytes != nbytes || t.root != root || !slices.Equal(t.shape, shape) {
			return nil, fmt.Errorf("gobps: %q declared again as %d bytes of %s%v, earlier %d bytes of %s%v", name, nbytes, dtype, shape, t.nbytes, t.dtype, t.shape)
		}
		return t, nil
	}
	rs, err := proto.Partition(nbytes, e.cfg.PartitionBytes)
	if err != nil {
		return nil, fmt.Errorf("gobps: declare %q: %w", name, err)
	}
	t = &Tensor{name: name, index: index, dtype: dtype, shape: shape, nbytes: nbytes, root: root, priority: -int(index), reserved: reserved}
	lanes := max(e.cfg.Lanes, 1)
	for i, r := range rs {
		k := proto.MakeKey(t.index, uint32(i))
		t.parts = append(t.parts, lifecycle.Part{Key: k, Off: r.Off, Len: r.Len, Lane: int(uint64(k) % uint64(lanes))})
	}
	e.names.Store(t.index, name) // for reports that know only a key
	// The local segments first, outside mu: a failure there leaves
	// nothing declared.
	if err := e.declareLocal(t); err != nil {
		return nil, err
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if err := e.usableLocked(); err != nil {
		return nil, err
	}
	if t.reserved {
		delete(e.mu.reserved, name)
	} else {
		e.mu.ntensors++
		e.mu.byIndex = append(e.mu.byIndex, nil)
	}
	for i := range t.parts {
		p := &t.parts[i]
		if t.reserved {
			// Reserved tensors get their sizes in whatever order the
			// workers first use them: their servers must not depend on
			// that order, as the balancer's do.
			p.Server = int(mix(uint64(p.Key)) % uint64(len(e.servers)))
		} else {
			p.Server = e.mu.balancer.Assign(uint64(p.Len))
		}
		e.mu.pending[p.Server] = append(e.mu.pending[p.Server], proto.Decl{Key: p.Key, DType: dtype, Root: root, Bytes: uint64(p.Len), Name: name, Shape: shape})
	}
	e.mu.tensors[name] = t
	e.mu.byIndex[index] = t
	return t, nil
}

// startableLocked reports why t cannot be pushed now: a failed server that
// holds one of its keys (named first, as the likelier root cause), or the
// engine's own failure. REQUIRES: e.mu.
func (e *Engine) startableLocked(t *Tensor) error {
	if !e.mu.shutdown {
		for _, p := range t.parts {
			if err := e.servers[p.Server].failed; err != nil {
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
	case e.mu.suspended:
		return ErrSuspended
	}
	return nil
}

// flush sends every pending declaration, in as few frames per server as
// the control-frame limit allows, all servers at once, and waits for every
// answer. Flushes are serialised (flushMu), so one that finds nothing
// pending returns only after any flush in flight has finished.
func (e *Engine) flush() error {
	e.flushMu.Lock()
	defer e.flushMu.Unlock()
	type req struct {
		s     *server
		id    uint64
		ds    []proto.Decl
		reply chan error
	}
	var reqs []req
	e.mu.Lock()
	for i, ds := range e.mu.pending {
		for len(ds) > 0 {
			// As many as fit in one control frame.
			n, size := 0, 0
			for n < len(ds) && size+ds[n].EncodedSize() <= proto.MaxControlPayload {
				size += ds[n].EncodedSize()
				n++
			}
			e.mu.nextDecl++
			r := req{s: e.servers[i], id: declBit | e.mu.nextDecl, ds: ds[:n], reply: make(chan error, 1)}
			e.mu.declReqs[r.id] = r.reply
			reqs = append(reqs, r)
			ds = ds[n:]
		}
		e.mu.pending[i] = nil
	}
	e.mu.flushing = len(reqs) > 0
	e.mu.Unlock()
	defer func() {
		e.mu.Lock()
		e.mu.flushing = false
		e.mu.Unlock()
	}()
	for _, r := range reqs {
		err := r.s.lanes[0].conn.Send(proto.Header{Op: proto.OpDeclare, Sender: e.self.ID, ReqID: r.id}, proto.EncodeDecls(r.ds))
		if err != nil {
			e.failServer(r.s, err)
		}
	}
	var errs []error
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
		// The servers disagree with us: nothing can be summed safely.
		err := fmt.Errorf("gobps: %w", errors.Join(errs...))
		e.failAll(err)
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
	if err := checkReduce(t, op); err != nil {
		return nil, err
	}
	return e.start(t, buf, op, true, nil)
}

func checkReduce(t *Tensor, op ReduceOp) error {
	if t == nil {
		return errors.New("gobps: PushPull of a nil tensor")
	}
	if t.root != proto.NoRoot {
		return fmt.Errorf("gobps: %q was declared for broadcast; use Broadcast", t.name)
	}
	if op == Average && !t.dtype.IsFloat() {
		return fmt.Errorf("gobps: %q: cannot average %s; use Sum", t.name, t.dtype)
	}
	if op != Sum && op != Average {
		return fmt.Errorf("gobps: unknown reduce op %d", op)
	}
	return nil
}

// Broadcast copies root's buf into every worker's buf, asynchronously. The
// tensor must have been declared with DeclareBroadcast.
func (e *Engine) Broadcast(t *Tensor, buf []byte) (*Handle, error) {
	if e == nil {
		return nil, ErrNotInitialized
	}
	if err := checkBroadcast(t); err != nil {
		return nil, err
	}
	return e.start(t, buf, Sum, e.self.Rank == int(t.root), nil)
}

func checkBroadcast(t *Tensor) error {
	if t == nil {
		return errors.New("gobps: Broadcast of a nil tensor")
	}
	if t.root == proto.NoRoot {
		return fmt.Errorf("gobps: %q was not declared for broadcast", t.name)
	}
	return nil
}

// start starts one round of t: buf is the caller's buffer, or nil with a
// stage that provides its own (staging).
func (e *Engine) start(t *Tensor, buf []byte, op ReduceOp, push bool, st stage) (*Handle, error) {
	if st == nil && len(buf) != t.nbytes {
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
	h := newHandle(t.name)
	spec := lifecycle.OpSpec{
		Name: t.name, DType: t.dtype, Priority: t.priority, Parts: t.parts, Buf: buf,
		Push: push, Average: op == Average, Ref: &opRef{h: h, t: t, stage: st, queued: e.trace.started()},
	}
	if st != nil {
		spec.Buf = st.buffer()
		spec.StageIn, spec.StageOut = true, true
	}
	if t.local != nil && push {
		spec.Local = t.owners
		spec.LocalOnly = e.localOnly
	}
	e.mu.Lock()
	if err := e.startableLocked(t); err != nil {
		e.mu.Unlock()
		return nil, err
	}
	spec.Round = t.round
	t.round++
	e.mu.open++
	e.mu.m.Start(spec)
	effs := e.takeLocked()
	e.mu.Unlock()
	e.run(effs)
	return h, nil
}

// failServer marks s failed and fails everything pending on it.
func (e *Engine) failServer(s *server, cause error) {
	e.mu.Lock()
	if s.failed != nil {
		e.mu.Unlock()
		return
	}
	s.failed = fmt.Errorf("gobps: %s failed: %w", s, cause)
	close(s.dead)
	e.serverDownOnce.Do(func() {
		e.serverDownErr = s.failed
		close(e.serverDown)
	})
	e.mu.m.ServerFailed(s.rank, s.failed)
	e.answerDeclsLocked(s.failed)
	// Once Shutdown has begun, the servers hang up as the job ends: not
	// worth a notice.
	quiet := e.mu.shutdown
	effs := e.takeLocked()
	e.mu.Unlock()
	if !quiet {
		e.logf("%v", s.failed)
	}
	for _, l := range s.lanes {
		l.conn.Close()
	}
	e.run(effs)
	if e.local != nil && !quiet {
		// Every rank of this machine needs that server (a job does not
		// survive a server yet): tell them why now, before this process
		// fails its handles and perhaps exits, or they hear only that it
		// vanished.
		e.local.Abort(s.failed)
	}
}

// answerDeclsLocked fails every declaration waiting for its answer: a
// server has failed, or the engine. (A flush waits for all of its
// declarations; one failure fails it, so each may as well hear it.)
// REQUIRES: e.mu.
func (e *Engine) answerDeclsLocked(err error) {
	for id, ch := range e.mu.declReqs {
		e.answerDeclLocked(id, ch, err)
	}
}

// answerDeclLocked gives declaration request id its answer, once: its
// reply channel holds one, and the request is forgotten, so that a later
// answer for it (the server's, after a failure was given) finds nothing
// and nothing ever blocks under the lock. REQUIRES: e.mu.
func (e *Engine) answerDeclLocked(id uint64, ch chan error, err error) {
	delete(e.mu.declReqs, id)
	select {
	case ch <- err:
	default: // cannot happen: the channel holds one answer, and id gets one
	}
}

// failAll makes the engine unusable and fails everything pending, and
// aborts the local group: the machine's other workers wait for this one's
// contributions, which will never come, and fail now, with the reason.
func (e *Engine) failAll(err error) {
	e.stopAll(err)
	if e.local != nil {
		e.local.Abort(err)
	}
}

// stopAll makes the engine unusable and fails everything pending. Shutdown
// calls it, and leaves the local group cleanly afterwards: the other local
// ranks may still be finishing their last rounds.
func (e *Engine) stopAll(err error) {
	e.mu.Lock()
	if e.mu.failed == nil {
		e.mu.failed = err
	}
	e.brokenOnce.Do(func() { close(e.broken) })
	e.mu.m.Stop(err)
	e.answerDeclsLocked(err)
	effs := e.takeLocked()
	e.mu.Unlock()
	e.run(effs)
}

// watch turns cluster events into failures.
func (e *Engine) watch() {
	defer e.wg.Done()
	for {
		select {
		case ev := <-e.member.Events():
			if ev.Left {
				// A worker that shut down before this one: the servers
				// fail the rounds that need its pushes, naming it. At the
				// end of every job the workers leave one after another,
				// so this is news, not a warning: a push_pull it breaks
				// says so itself.
				e.logf("gobps: %s; a push_pull that needs it will fail", ev)
				continue
			}
			if ev.Node.Role == cluster.RoleServer && ev.Node.Rank < len(e.servers) {
				e.failServer(e.servers[ev.Node.Rank], errors.New(ev.Reason))
				continue
			}
			// A worker died: no round can complete without its pushes.
			// It may have died of a server's death (a program exits when
			// its push_pull fails), which this engine may hear of a
			// moment later, on its own lane or from the coordinator: give
			// that a moment, and name it as the cause.
			err := fmt.Errorf("gobps: %s died: %s", ev.Node, ev.Reason)
			if cause := e.serverFailure(e.causeGrace); cause != nil {
				err = fmt.Errorf("%w (after %v)", err, cause)
			}
			e.failAll(err)
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

// serverGrace is Init's default Options.CauseGrace.
const serverGrace = 200 * time.Millisecond

// serverFailure returns the failure of a server this engine has seen fail,
// waiting up to grace for one; nil if none has.
func (e *Engine) serverFailure(grace time.Duration) error {
	select {
	case <-e.serverDown:
		return e.serverDownErr
	default:
	}
	if grace <= 0 {
		return nil
	}
	t := time.NewTimer(grace)
	defer t.Stop()
	select {
	case <-e.serverDown:
		return e.serverDownErr
	case <-t.C:
	case <-e.stop:
	}
	return nil
}

// Shutdown leaves the job and releases everything. Pending handles fail.
// It returns after every goroutine the engine started has ended.
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
	err := e.close()
	if terr := e.trace.write(); terr != nil {
		err = errors.Join(err, terr)
	} else if e.trace != nil {
		e.logf("gobps: timeline written to %s", e.trace.path())
	}
	return err
}

// close stops everything, once: it fails what is pending, leaves the job,
// closes every connection and waits for every goroutine (lane senders and
// readers, the watcher, stage effects), then releases the GPU devices, the
// local group and an owned transport. It returns the error of leaving.
func (e *Engine) close() error {
	var err error
	e.closeOnce.Do(func() {
		e.stopAll(ErrNotInitialized)
		if e.member != nil {
			err = e.member.Leave()
		}
		close(e.stop)
		e.cancel()
		for _, s := range e.servers {
			for _, l := range s.lanes {
				if l.conn != nil {
					l.conn.Close()
				}
			}
		}
		// The readers' last callbacks (Closed) may still produce effects;
		// wait for them before refusing new goroutines.
		for _, s := range e.servers {
			for _, l := range s.lanes {
				if l.conn != nil {
					<-l.closed
				}
			}
		}
		e.goMu.Lock()
		e.goClosed = true
		e.goMu.Unlock()
		e.wg.Wait()
		e.closeGPUs()
		if e.local != nil {
			// Only now: nothing reads or writes the shared segments any more.
			if lerr := e.local.Close(); lerr != nil {
				e.logf("gobps: leave the local group: %v", lerr)
			}
		}
		if e.ownTr {
			if terr := e.tr.Close(); terr != nil {
				e.logf("gobps: close the transport: %v", terr)
			}
		}
	})
	return err
}

// Handle is the completion of one PushPull or Broadcast.
type Handle struct {
	name string
	done chan struct{}
	err  error // set before done is closed
}

func newHandle(name string) *Handle {
	return &Handle{name: name, done: make(chan struct{})}
}

// complete ends h with err; the lifecycle calls for it exactly once.
func (h *Handle) complete(err error) {
	if err != nil {
		h.err = fmt.Errorf("%q: %w", h.name, err)
	}
	close(h.done)
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
	return h.err
}

// WaitTimeout is Wait bounded by d.
func (h *Handle) WaitTimeout(d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-h.done:
		return h.err
	case <-t.C:
		return fmt.Errorf("gobps: %q not done after %v", h.name, d)
	}
}
