package core

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/gobps/gobps/core/local"
	"github.com/gobps/gobps/summation/kernel"
)

// Local aggregation (BytePS's): the workers of one machine sum a partition
// in shared memory first, and only the local rank that owns the partition
// pushes that sum and pulls the global one, which every local rank then
// copies out. A machine with L workers sends one copy to the servers, not
// L, and the ownership (core/local balances it by bytes) spreads the
// pushing over the local ranks. Broadcast tensors skip it: their root
// pushes and every worker pulls, as without.

// localPart is a partition's local-aggregation state.
type localPart struct {
	seg *local.Segment
	// last is closed when this partition's previous round has finished
	// locally; rounds of one key go through shared memory strictly in
	// order. Guarded by Engine.mu.
	last chan struct{}
}

// localJoinTimeout bounds the wait for every local rank to join the group.
const localJoinTimeout = 60 * time.Second

// shmDir is where the segments live: /dev/shm when the machine has one.
func shmDir() string {
	if fi, err := os.Stat("/dev/shm"); err == nil && fi.IsDir() {
		return "/dev/shm"
	}
	return os.TempDir()
}

// joinLocal joins this machine's group when local aggregation applies: more
// than one worker per machine, and not turned off. The group is named after
// the job (the coordinator's address) and the machine (DMLC_WORKER_ID).
func (e *Engine) joinLocal(ctx context.Context) error {
	cfg := e.cfg
	if !cfg.LocalAggregation || cfg.LocalSize < 2 {
		return nil
	}
	if cfg.WorkerID < 0 {
		return errors.New("gobps: local aggregation needs DMLC_WORKER_ID (the machine's index) when BYTEPS_LOCAL_SIZE > 1; set it, or set GOBPS_LOCAL_AGGREGATION=0")
	}
	name := strings.NewReplacer(":", "_", "/", "_", "[", "", "]", "").Replace(fmt.Sprintf("%s-m%d", cfg.RootAddr(), cfg.WorkerID))
	g, err := local.Join(ctx, local.Config{
		Dir: shmDir(), Group: name, Size: cfg.LocalSize, Rank: cfg.LocalRank,
		JoinTimeout: localJoinTimeout, Logf: e.logf,
	})
	if err != nil {
		return fmt.Errorf("gobps: local aggregation: %w", err)
	}
	e.local = g
	return nil
}

// declareLocalLocked creates the shared segments of a new sum tensor.
// REQUIRES: e.mu.
func (e *Engine) declareLocalLocked(t *Tensor) error {
	if e.local == nil || t.root >= 0 {
		return nil
	}
	t.local = make([]*localPart, len(t.parts))
	for i, p := range t.parts {
		seg, err := e.local.Declare(p.key, p.rng.Len, t.dtype)
		if err != nil {
			return fmt.Errorf("gobps: declare %q locally: %w", t.name, err)
		}
		lp := &localPart{seg: seg, last: make(chan struct{})}
		close(lp.last)
		t.local[i] = lp
	}
	return nil
}

// startLocalLocked starts one round of every partition of t through local
// aggregation. REQUIRES: e.mu.
func (e *Engine) startLocalLocked(h *Handle, t *Tensor, buf []byte, op ReduceOp, round uint64) {
	for i, p := range t.parts {
		lp := t.local[i]
		prev, done := lp.last, make(chan struct{})
		lp.last = done
		b := buf[p.rng.Off : p.rng.Off+p.rng.Len]
		e.wg.Add(1)
		go func() {
			defer e.wg.Done()
			defer close(done)
			h.partDone(e.runLocal(t, p, lp, prev, round, b, op))
		}()
	}
}

// runLocal is one partition's round: contribute, then either (owner) sum
// the machine's contributions, push and pull that sum and publish it, or
// wait for the owner's result; then copy the result out. It returns only
// when it no longer touches b.
func (e *Engine) runLocal(t *Tensor, p part, lp *localPart, prev <-chan struct{}, round uint64, b []byte, op ReduceOp) error {
	srv := e.servers[p.srv]
	ctx, cancel := context.WithCancel(e.ctx)
	defer cancel()
	go func() {
		select {
		case <-srv.dead:
		case <-e.broken:
		case <-ctx.Done():
			return
		}
		cancel()
	}()
	select {
	case <-prev:
	case <-ctx.Done():
		return e.localStopped(srv)
	}
	r := round
	seg := lp.seg
	copy(seg.Input(), b)
	if err := seg.Contribute(r); err != nil {
		return e.localErr(srv, err)
	}
	var res []byte
	if seg.IsOwner() {
		sum, err := seg.Reduce(ctx, r)
		if err != nil {
			return e.localErr(srv, err)
		}
		if err := e.pushPullOwned(t, p, round, sum); err != nil {
			// The others wait for a Publish that will not come: fail the
			// group, with the reason, rather than leave them to time out.
			e.local.Abort(fmt.Errorf("local rank %d could not push and pull key %s: %w", e.cfg.LocalRank, p.key, err))
			return err
		}
		if err := seg.Publish(r); err != nil {
			return e.localErr(srv, err)
		}
		res = sum
	} else {
		var err error
		if res, err = seg.Wait(ctx, r); err != nil {
			return e.localErr(srv, err)
		}
	}
	copy(b, res)
	if err := seg.Done(r); err != nil {
		return e.localErr(srv, err)
	}
	if op == Average {
		return kernel.Div(t.dtype, b, e.Size())
	}
	return nil
}

// pushPullOwned sends the machine's sum of one partition to its server and
// waits for the global sum in the same buffer, through the usual queue,
// credit and lanes.
func (e *Engine) pushPullOwned(t *Tensor, p part, round uint64, sum []byte) error {
	inner := newHandle(t.name, 1)
	tk := &task{h: inner, t: t, p: p, round: round, in: sum, out: sum, op: Sum, push: true}
	inner.tasks = []*task{tk}
	s := e.servers[p.srv]
	tk.lane = s.lanes[int(uint64(p.key)%uint64(len(s.lanes)))]
	e.mu.Lock()
	if err := e.startableLocked(t); err != nil {
		e.mu.Unlock()
		return err
	}
	e.enqueueLocked(tk)
	e.poke()
	e.mu.Unlock()
	select {
	case <-inner.done:
	case <-e.stop:
		// Shutting down: fail it unless a lane is reading or writing sum
		// right now; then that lane finishes it, promptly, since its
		// connection is being closed.
		e.mu.Lock()
		e.finishLocked(tk, ErrNotInitialized)
		e.mu.Unlock()
	}
	return inner.cause()
}

// localErr names the root cause of a local failure: a failed server or
// engine explains a cancelled wait better than the wait itself.
func (e *Engine) localErr(srv *server, err error) error {
	if errors.Is(err, context.Canceled) {
		return e.localStopped(srv)
	}
	return fmt.Errorf("local aggregation: %w", err)
}

func (e *Engine) localStopped(srv *server) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	if srv.failed != nil {
		return srv.failed
	}
	if err := e.usableLocked(); err != nil {
		return err
	}
	return errors.New("local aggregation stopped")
}
