package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gobps/gobps/config"
	"github.com/gobps/gobps/core"
	"github.com/gobps/gobps/gpu"
	"github.com/gobps/gobps/internal/logging"
	"github.com/gobps/gobps/metrics"
	"github.com/gobps/gobps/proto"
)

// apiVersion is GOBPS_API_VERSION of gobps.h.
const apiVersion = 3

// status is a C API status code; the values are those of gobps.h (exports.go
// checks them against the header at compile time).
type status int

const (
	statusOK status = iota
	statusNotInitialized
	statusInvalidArgument
	statusBadHandle
	statusTimeout
	statusConfig
	statusFailed
	statusInternal
	statusNotSupported
)

// reduce ops of gobps.h.
const (
	opSum     = 0
	opAverage = 1
)

// callError is a failed call: the status the caller gets and the message of
// gobps_last_error.
type callError struct {
	code status
	err  error
}

func (e *callError) Error() string { return e.err.Error() }
func (e *callError) Unwrap() error { return e.err }

func fail(code status, format string, args ...any) error {
	return &callError{code: code, err: fmt.Errorf(format, args...)}
}

// statusOf maps an error to its status code: a callError's own, or for an
// engine error NOT_INITIALIZED when the engine was shut down and FAILED
// otherwise.
func statusOf(err error) status {
	var ce *callError
	switch {
	case err == nil:
		return statusOK
	case errors.As(err, &ce):
		return ce.code
	case errors.Is(err, core.ErrNotInitialized):
		return statusNotInitialized
	case errors.Is(err, gpu.ErrNotSupported):
		return statusNotSupported
	}
	return statusFailed
}

// library is the state behind the C API: one per process (lib).
//
// Locking: initMu serialises init and shutdown (init may block for as long
// as the job takes to gather); nothing else takes it, so other calls never
// wait for init. engine and shutDown are read without locks. tmu guards
// tensors; handles has its own lock. No lock is held while waiting on a
// handle.
type library struct {
	initMu   sync.Mutex
	shutDown atomic.Bool // set once, by shutdown

	engine atomic.Pointer[core.Engine] // nil before init and after shutdown
	// metrics is the endpoint of GOBPS_METRICS_ADDR (nil: none); guarded
	// by initMu.
	metrics *metrics.Endpoint

	tmu     sync.Mutex
	tensors map[string]*tensor

	handles handleTable
}

// tensor is a declaration as the C caller made it.
type tensor struct {
	t     *core.Tensor
	dtype proto.DType
	count int
	shape []int64 // nil: declared by count only (a vector)
	root  int     // -1: for push_pull
}

func (t *tensor) describe() string {
	what := fmt.Sprintf("%d elements of %s", t.count, t.dtype)
	if t.shape != nil {
		what = fmt.Sprintf("%s%v (%d elements)", t.dtype, t.shape, t.count)
	}
	if t.root >= 0 {
		return fmt.Sprintf("%s for broadcast from rank %d", what, t.root)
	}
	return what + " for push_pull"
}

// agrees reports whether a use described by u fits t: the same dtype, size
// and root, and the same shape where both name one.
func (t *tensor) agrees(u *tensor) bool {
	return t.dtype == u.dtype && t.count == u.count && t.root == u.root &&
		(t.shape == nil || u.shape == nil || slices.Equal(t.shape, u.shape))
}

var lib = newLibrary()

func newLibrary() *library {
	return &library{tensors: make(map[string]*tensor), handles: handleTable{m: make(map[int64]*core.Handle)}}
}

var errNotInit = fail(statusNotInitialized, "gobps: not initialized (call gobps_init first)")

// live returns the engine, or NOT_INITIALIZED.
func (l *library) live() (*core.Engine, error) {
	e := l.engine.Load()
	if e == nil {
		if l.shutDown.Load() {
			return nil, fail(statusNotInitialized, "gobps: shut down (gobps_shutdown was called)")
		}
		return nil, errNotInit
	}
	return e, nil
}

// init joins the job described by lookup, waiting at most timeout for it to
// gather (no bound when timeout <= 0). Engine notices go to logw.
func (l *library) init(timeout time.Duration, lookup func(string) (string, bool), logw io.Writer) error {
	l.initMu.Lock()
	defer l.initMu.Unlock()
	if l.engine.Load() != nil {
		return nil
	}
	if l.shutDown.Load() {
		return fail(statusFailed, "gobps: init after shutdown: a process joins a job only once")
	}
	cfg, err := config.Parse(lookup)
	if err != nil {
		return fail(statusConfig, "gobps: init: %w (start workers with bpsrun, which sets the environment; see docs/env.md)", err)
	}
	if cfg.Role != config.Worker {
		return fail(statusConfig, "gobps: init: DMLC_ROLE=%s; only a worker process calls gobps_init", cfg.Role)
	}
	ctx := context.Background()
	if timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, timeout)
		defer cancel()
	}
	lg := newLogger(logw, cfg)
	logf, warnf := lg.Logf, lg.Warnf
	// The metrics endpoint listens before the job is joined, so that an
	// address in use fails init before the other processes count on this
	// one; it serves once the rank is known.
	ep, err := metrics.Listen(cfg.MetricsAddr)
	if err != nil {
		return fail(statusFailed, "gobps: init: %w", err)
	}
	e, err := core.Init(ctx, core.Options{Config: cfg, Logf: logf, Warnf: warnf})
	if err != nil {
		ep.Close()
		return fail(statusFailed, "gobps: init: %w", err)
	}
	lg.SetRank(e.Rank())
	if err := metrics.ServeWorker(ep, e); err != nil {
		ep.Close()
		e.Shutdown()
		return fail(statusFailed, "gobps: init: %w", err)
	}
	if ep != nil {
		logf("gobps: metrics at %s", ep.URL())
	}
	l.metrics = ep
	l.engine.Store(e)
	return nil
}

// newLogger logs the engine's notices (its Logf, at INFO, the way bpsrun
// logs its roles: shown when BYTEPS_LOG_LEVEL is INFO or more verbose) and
// its warnings (Warnf, at WARN, shown by default) to w, as console lines or
// JSON (GOBPS_LOG_FORMAT), with role worker and the worker's rank: the
// configured one (-1 when unset) until the job gives it.
func newLogger(w io.Writer, cfg *config.Config) *logging.Logger {
	return logging.New(w, logging.Options{Format: cfg.LogFormat, Level: cfg.LogLevel,
		Role: string(config.Worker), Rank: cfg.WorkerID})
}

// shutdown leaves the job.
func (l *library) shutdown() error {
	l.initMu.Lock()
	defer l.initMu.Unlock()
	e := l.engine.Load()
	if e == nil {
		if l.shutDown.Load() {
			return fail(statusNotInitialized, "gobps: shutdown: already shut down")
		}
		return fail(statusNotInitialized, "gobps: shutdown: not initialized (call gobps_init first)")
	}
	l.shutDown.Store(true)
	l.engine.Store(nil)
	l.tmu.Lock()
	clear(l.tensors)
	l.tmu.Unlock()
	err := e.Shutdown()
	l.metrics.Close()
	l.metrics = nil
	if err != nil {
		return fail(statusFailed, "gobps: shutdown: %w", err)
	}
	return nil
}

// join runs Engine.Join, bounded by timeout (forever if negative).
func (l *library) join(timeout time.Duration) error {
	return l.bounded("join", timeout, func(ctx context.Context, e *core.Engine) error { return e.Join(ctx) })
}

// suspend runs Engine.Suspend, bounded by timeout (forever if negative).
func (l *library) suspend(timeout time.Duration) error {
	return l.bounded("suspend", timeout, func(ctx context.Context, e *core.Engine) error { return e.Suspend(ctx) })
}

// resume runs Engine.Resume, bounded by timeout (forever if negative).
func (l *library) resume(workers, servers int, timeout time.Duration) error {
	e, err := l.live()
	if err != nil {
		return err
	}
	if workers != e.Size() || servers != e.NumServers() {
		return fail(statusInvalidArgument, "gobps: resume with %d workers and %d servers: this job has %d and %d, and changing the size of a job (elastic training) is not implemented yet",
			workers, servers, e.Size(), e.NumServers())
	}
	return l.bounded("resume", timeout, func(ctx context.Context, e *core.Engine) error { return e.Resume(ctx, workers, servers) })
}

// bounded runs f on the engine with a context bounded by timeout (forever
// if negative); a timeout is statusTimeout, any other error statusFailed.
func (l *library) bounded(what string, timeout time.Duration, f func(context.Context, *core.Engine) error) error {
	e, err := l.live()
	if err != nil {
		return err
	}
	ctx := context.Background()
	if timeout >= 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, timeout)
		defer cancel()
	}
	if err := f(ctx, e); err != nil {
		if errors.Is(err, context.DeadlineExceeded) {
			return fail(statusTimeout, "%w (%s: not every worker got there within %v)", err, what, timeout)
		}
		return fail(statusFailed, "%w", err)
	}
	return nil
}

// info is rank, size, local rank or local size.
func (l *library) info(f func(*core.Engine) int) (int, error) {
	e, err := l.live()
	if err != nil {
		return 0, err
	}
	return f(e), nil
}

// checkDType converts a C dtype.
func checkDType(what string, dtype int) (proto.DType, error) {
	if dtype <= 0 || dtype > math.MaxUint8 || !proto.DType(dtype).Valid() {
		return 0, fail(statusInvalidArgument, "gobps: %s: unknown dtype %d (see GOBPS_FLOAT32 ... in gobps.h)", what, dtype)
	}
	return proto.DType(dtype), nil
}

// checkCount checks an element count and returns the size in bytes.
func checkCount(what string, dt proto.DType, count int64) (int, error) {
	if count < 0 {
		return 0, fail(statusInvalidArgument, "gobps: %s: negative element count %d", what, count)
	}
	if count > int64(math.MaxInt/dt.Size()) {
		return 0, fail(statusInvalidArgument, "gobps: %s: %d elements of %s do not fit in memory", what, count, dt)
	}
	return int(count) * dt.Size(), nil
}

// declare declares name, or checks it against its earlier declaration.
// root is -1 for push_pull. shape, if not nil, is the tensor's shape (count
// is then its product); a name first used by count alone (push_pull
// declares on first use) is a vector to the servers.
func (l *library) declare(name string, dtype int, count int64, root int, shape []int64) (*tensor, error) {
	e, err := l.live()
	if err != nil {
		return nil, err
	}
	if name == "" {
		return nil, fail(statusInvalidArgument, "gobps: declare: empty tensor name")
	}
	what := fmt.Sprintf("declare %q", name)
	dt, err := checkDType(what, dtype)
	if err != nil {
		return nil, err
	}
	if shape != nil {
		if count, err = checkShape(what, dt, shape); err != nil {
			return nil, err
		}
	}
	if _, err := checkCount(what, dt, count); err != nil {
		return nil, err
	}
	if root >= 0 && root >= e.Size() || root < -1 {
		return nil, fail(statusInvalidArgument, "gobps: %s: broadcast root %d is not a rank (0..%d)", what, root, e.Size()-1)
	}
	want := &tensor{dtype: dt, count: int(count), shape: slices.Clone(shape), root: root}
	l.tmu.Lock()
	defer l.tmu.Unlock()
	if t, ok := l.tensors[name]; ok {
		if !t.agrees(want) {
			return nil, fail(statusInvalidArgument, "gobps: %q is declared as %s; now used as %s", name, t.describe(), want.describe())
		}
		return t, nil
	}
	if count == 0 {
		// The engine has no use for an empty tensor; remember the
		// declaration so that later uses are checked against it.
		l.tensors[name] = want
		return want, nil
	}
	engShape := shape
	if engShape == nil {
		engShape = []int64{count}
	}
	if root >= 0 {
		want.t, err = e.DeclareBroadcastShape(name, dt, engShape, root)
	} else {
		want.t, err = e.DeclareShape(name, dt, engShape)
	}
	if err != nil {
		return nil, err
	}
	l.tensors[name] = want
	return want, nil
}

// checkShape checks a shape and returns its element count: every
// dimension at least 0, at most proto.MaxDims of them, and a product that
// fits in memory. An empty shape is a scalar.
func checkShape(what string, dt proto.DType, shape []int64) (int64, error) {
	if len(shape) > proto.MaxDims {
		return 0, fail(statusInvalidArgument, "gobps: %s: %d dimensions; at most %d", what, len(shape), proto.MaxDims)
	}
	count := int64(1)
	for _, d := range shape {
		if d < 0 {
			return 0, fail(statusInvalidArgument, "gobps: %s: shape %v has a negative dimension", what, shape)
		}
		if d > 0 && count > int64(math.MaxInt/dt.Size())/d {
			return 0, fail(statusInvalidArgument, "gobps: %s: shape %v does not fit in memory", what, shape)
		}
		count *= d
	}
	return count, nil
}

// reduction checks a push_pull's op, declares its tensor, and starts it
// with start unless the tensor has no elements (then the handle is complete
// at once). what names the call in errors ("push_pull", "push_pull_cuda");
// check, if set, validates the call once the tensor is known to have
// elements.
func (l *library) reduction(what, name string, dtype int, count int64, op int, check func() error,
	start func(e *core.Engine, t *core.Tensor, op core.ReduceOp) (*core.Handle, error)) (int64, error) {
	if op != opSum && op != opAverage {
		return 0, fail(statusInvalidArgument, "gobps: %s %q: unknown reduce op %d (GOBPS_SUM or GOBPS_AVERAGE)", what, name, op)
	}
	t, err := l.declare(name, dtype, count, -1, nil)
	if err != nil {
		return 0, err
	}
	if op == opAverage && !t.dtype.IsFloat() {
		return 0, fail(statusInvalidArgument, "gobps: %s %q: cannot average %s; use GOBPS_SUM", what, name, t.dtype)
	}
	if t.t == nil { // no elements
		return l.handles.add(nil), nil
	}
	if check != nil {
		if err := check(); err != nil {
			return 0, err
		}
	}
	e, err := l.live()
	if err != nil {
		return 0, err
	}
	rop := core.Sum
	if op == opAverage {
		rop = core.Average
	}
	h, err := start(e, t.t, rop)
	if err != nil {
		return 0, err
	}
	return l.handles.add(h), nil
}

// pushPull starts reducing buf (count elements of dtype) with op.
func (l *library) pushPull(name string, buf []byte, dtype int, count int64, op int) (int64, error) {
	return l.reduction("push_pull", name, dtype, count, op, nil,
		func(e *core.Engine, t *core.Tensor, op core.ReduceOp) (*core.Handle, error) {
			if stageCallerMemory(e) {
				return e.PushPullCopy(t, buf, op)
			}
			return e.PushPull(t, buf, op)
		})
}

// stageCallerMemory says whether callers' buffers must go through buffers
// the engine owns: with a transport that registers payload memory and
// caches registrations by address (Caps.Registered: verbs), which cannot
// tell a C buffer freed and reallocated at the same address from the one
// it registered (see core.Engine.PushPullCopy). Over TCP they go to the
// socket directly.
func stageCallerMemory(e *core.Engine) bool { return e.Caps().Registered }

// pushPullCUDA is pushPull for count elements at device pointer ptr on a
// CUDA device, written by work queued on stream.
func (l *library) pushPullCUDA(name string, ptr uintptr, dtype int, count int64, op, device int, stream uintptr) (int64, error) {
	if device < 0 {
		return 0, fail(statusInvalidArgument, "gobps: push_pull_cuda %q: device %d is not a CUDA device index", name, device)
	}
	check := func() error {
		if ptr == 0 {
			return fail(statusInvalidArgument, "gobps: push_pull_cuda %q: NULL device pointer for %d elements", name, count)
		}
		return nil
	}
	return l.reduction("push_pull_cuda", name, dtype, count, op, check,
		func(e *core.Engine, t *core.Tensor, op core.ReduceOp) (*core.Handle, error) {
			return e.PushPullDevice(t, device, ptr, stream, op)
		})
}

// broadcast starts copying root's buf to every worker.
func (l *library) broadcast(name string, buf []byte, dtype int, count int64, root int) (int64, error) {
	e, err := l.live()
	if err != nil {
		return 0, err
	}
	if root < 0 || root >= e.Size() {
		return 0, fail(statusInvalidArgument, "gobps: broadcast %q: root %d is not a rank (0..%d)", name, root, e.Size()-1)
	}
	t, err := l.declare(name, dtype, count, root, nil)
	if err != nil {
		return 0, err
	}
	if t.t == nil {
		return l.handles.add(nil), nil
	}
	broadcast := e.Broadcast
	if stageCallerMemory(e) {
		broadcast = e.BroadcastCopy
	}
	h, err := broadcast(t.t, buf)
	if err != nil {
		return 0, err
	}
	return l.handles.add(h), nil
}

// poll reports whether handle id has completed.
func (l *library) poll(id int64) (bool, error) {
	h, err := l.handle(id)
	if err != nil {
		return false, err
	}
	return h == nil || h.Poll(), nil
}

// wait waits at most timeout (forever if negative) for handle id, consumes
// it if it completed, and returns the operation's error.
func (l *library) wait(id int64, timeout time.Duration) error {
	h, err := l.handle(id)
	if err != nil {
		return err
	}
	if h != nil && !h.Poll() {
		if timeout == 0 {
			return fail(statusTimeout, "gobps: handle %d: not done", id)
		}
		if timeout > 0 {
			tm := time.NewTimer(timeout)
			select {
			case <-h.Done():
				tm.Stop()
			case <-tm.C:
				return fail(statusTimeout, "gobps: handle %d: not done after %v", id, timeout)
			}
		} else {
			<-h.Done()
		}
	}
	l.handles.remove(id)
	if h == nil {
		return nil
	}
	return h.Wait()
}

func (l *library) handle(id int64) (*core.Handle, error) {
	h, ok := l.handles.get(id)
	if ok {
		return h, nil
	}
	if _, err := l.live(); err != nil && l.handles.empty() {
		return nil, err
	}
	return nil, fail(statusBadHandle, "gobps: unknown handle %d (never returned, or already consumed by gobps_wait)", id)
}

// handleTable maps the C API's handle ids to engine handles. A nil
// *core.Handle is an operation on zero elements: complete from the start.
type handleTable struct {
	mu   sync.Mutex
	next int64
	m    map[int64]*core.Handle
}

func (t *handleTable) add(h *core.Handle) int64 {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.next++
	t.m[t.next] = h
	return t.next
}

func (t *handleTable) get(id int64) (*core.Handle, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	h, ok := t.m[id]
	return h, ok
}

func (t *handleTable) remove(id int64) {
	t.mu.Lock()
	defer t.mu.Unlock()
	delete(t.m, id)
}

func (t *handleTable) empty() bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.next == 0
}
