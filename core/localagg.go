package core

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/gobps/gobps/core/lifecycle"
	"github.com/gobps/gobps/core/local"
	"github.com/gobps/gobps/proto"
	"github.com/gobps/gobps/summation/kernel"
)

// Local aggregation (BytePS's): the workers of one machine sum a partition
// in shared memory first, and only the local rank that owns the partition
// pushes that sum and pulls the global one, which every local rank then
// copies out. A machine with L workers sends one copy to the servers, not
// L, and the ownership (core/local balances it by bytes) spreads the
// pushing over the local ranks. Broadcast tensors skip it: their root
// pushes and every worker pulls, as without.
//
// The rounds themselves are stages of the partition lifecycle (LocalIn,
// LocalReduce or LocalResult, LocalPublish, LocalOut): this file carries
// them out on the key's segment.

// localJoinTimeout bounds the wait for every local rank to join the group.
const localJoinTimeout = 60 * time.Second

// shmDir is where the segments live: /dev/shm when the machine has one.
func shmDir() string {
	if fi, err := os.Stat("/dev/shm"); err == nil && fi.IsDir() {
		return "/dev/shm"
	}
	return os.TempDir()
}

// localGroup names the local group of machine (DMLC_WORKER_ID) of the job
// whose coordinator is at root.
func localGroup(root string, machine int) string {
	return strings.NewReplacer(":", "_", "/", "_", "[", "", "]", "").Replace(fmt.Sprintf("%s-m%d", root, machine))
}

// RemoveLocalFiles removes what local aggregation left in shared memory on
// this machine for machine (DMLC_WORKER_ID) of the job whose coordinator
// is at root (host:port), made by processes that no longer exist, and
// returns the names removed. bpsrun calls it when the job's processes on a
// host have ended: a worker killed with SIGKILL cannot clean up.
func RemoveLocalFiles(root string, machine int) []string {
	return local.RemoveDead(shmDir(), localGroup(root, machine))
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
	g, err := local.Join(ctx, local.Config{
		Dir: shmDir(), Group: localGroup(cfg.RootAddr(), cfg.WorkerID), Size: cfg.LocalSize, Rank: cfg.LocalRank,
		JoinTimeout: localJoinTimeout, Logf: e.warnf, Behind: e.behind, Auth: e.auth,
		StallWarning: cfg.StallWarning, StallShutdown: cfg.StallShutdown, Stalled: e.localStall,
	})
	if err != nil {
		return fmt.Errorf("gobps: local aggregation: %w", err)
	}
	e.local = g
	return nil
}

// declareLocal creates the shared segments of a new sum tensor. It does
// file I/O: the caller holds declMu, not mu.
func (e *Engine) declareLocal(t *Tensor) error {
	if e.local == nil || t.root >= 0 {
		return nil
	}
	t.local = make([]*local.Segment, len(t.parts))
	t.owners = make([]bool, len(t.parts))
	for i, p := range t.parts {
		var seg *local.Segment
		var err error
		if t.reserved {
			// Its ranks may declare it in different orders: an owner
			// that does not depend on the order.
			seg, err = e.local.DeclareOwned(p.Key, p.Len, t.dtype, int(mix(uint64(p.Key))%uint64(e.local.Size())))
		} else {
			seg, err = e.local.Declare(p.Key, p.Len, t.dtype)
		}
		if err != nil {
			return fmt.Errorf("gobps: declare %q locally: %w", t.name, err)
		}
		t.local[i], t.owners[i] = seg, seg.IsOwner()
	}
	return nil
}

// runLocal carries out one local-aggregation stage of a task, on a
// goroutine of its own, and reports its end.
func (e *Engine) runLocal(ef lifecycle.Effect) {
	t := ef.Task
	seg := refOf(t.Op).t.local[t.Index]
	r := t.Round
	switch ef.Kind {
	case lifecycle.LocalIn:
		copy(seg.Input(), t.Buf)
		err := e.localErr(seg.Contribute(r))
		e.report(func(m *lifecycle.Machine) { m.LocalInDone(t, err) })
	case lifecycle.LocalReduce:
		sum, err := seg.Reduce(e.waitCtx(t), r)
		err = e.localErr(err)
		e.report(func(m *lifecycle.Machine) {
			e.doneWaitingLocked(t)
			m.Reduced(t, sum, err)
		})
	case lifecycle.LocalResult:
		res, err := seg.Wait(e.waitCtx(t), r)
		err = e.localErr(err)
		e.report(func(m *lifecycle.Machine) {
			e.doneWaitingLocked(t)
			m.ResultReady(t, res, err)
		})
	case lifecycle.LocalPublish:
		err := e.localErr(seg.Publish(r))
		e.report(func(m *lifecycle.Machine) { m.Published(t, err) })
	case lifecycle.LocalOut:
		copy(t.Buf, t.Result)
		err := e.localErr(seg.Done(r))
		if err == nil && t.Op.Spec.Average {
			err = kernel.Div(t.Op.Spec.DType, t.Buf, e.Size())
		}
		e.report(func(m *lifecycle.Machine) { m.LocalOutDone(t, err) })
	}
}

// localStall words the local group's stall report: the tensor by name,
// the ranks missing by worker rank.
func (e *Engine) localStall(key proto.Key, round uint64, missing []local.Rank, waited time.Duration, fatal bool) string {
	tensor := fmt.Sprintf("the tensor of key %s, which this worker has not declared,", key)
	if v, ok := e.names.Load(key.Tensor()); ok {
		tensor = fmt.Sprintf("tensor %q (key %s)", v.(string), key)
	}
	var who []string
	for _, r := range missing {
		w := fmt.Sprintf("local rank %d (pid %d)", r.Rank, r.PID)
		for _, n := range e.book.Workers {
			if n.PID == r.PID && n.Host == e.self.Host {
				w = fmt.Sprintf("worker %d (pid %d)", n.Rank, r.PID)
			}
		}
		who = append(who, w)
	}
	text := fmt.Sprintf("stall: %s round %d has waited %v for %s to push it (in this machine's local aggregation); "+
		"every worker must push_pull the same tensors each step", tensor, round, waited.Round(10*time.Millisecond), strings.Join(who, ", "))
	if fatal {
		text += fmt.Sprintf(" (GOBPS_STALL_SHUTDOWN %v: ending the job)", e.cfg.StallShutdown)
	} else {
		text += " (GOBPS_STALL_SHUTDOWN ends the job instead)"
	}
	e.relay(text)
	return text
}

// relay sends a stall report to the coordinator, which logs it for the
// whole job, so that the launcher shows it at the default log level.
func (e *Engine) relay(text string) {
	if r, ok := e.member.(interface{ Report(string) error }); ok {
		e.spawn(func() { _ = r.Report(text) })
	}
}

// localErr says where an error of the local group comes from, naming a
// local peer by its worker rank too, as every other error does. (A wait
// that the lifecycle cancelled fails with the cause it recorded first, so
// its context's error is never what the handle reports.)
func (e *Engine) localErr(err error) error {
	if err == nil {
		return nil
	}
	var pe *local.PeerError
	if errors.As(err, &pe) {
		for _, w := range e.book.Workers {
			if w.PID == pe.PID && w.Host == e.self.Host {
				err = fmt.Errorf("%s: %w", w, err)
				break
			}
		}
		// A local peer that vanished may have died of a server's death
		// (its program exits when its push_pull fails): name that too.
		if cause := e.serverFailure(e.causeGrace); cause != nil {
			return fmt.Errorf("local aggregation: %w (after %v)", err, cause)
		}
	}
	return fmt.Errorf("local aggregation: %w", err)
}
