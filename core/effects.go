package core

import (
	"context"
	"fmt"
	"time"

	"github.com/gobps/gobps/core/lifecycle"
	"github.com/gobps/gobps/summation/kernel"
)

// The engine drives the partition lifecycle (core/lifecycle): every event
// is reported to the machine under Engine.mu, the effects it returns are
// taken under the same lock (takeLocked), and carried out after the lock is
// released (run). Effects that wait or copy much (local aggregation, GPU
// staging, copying a staging buffer back) run on goroutines of their own
// (spawn); the rest run on the goroutine that reported the event.

// opRef is what the engine keeps of an op: the machine hands it back in
// OpSpec.Ref.
type opRef struct {
	h      *Handle
	t      *Tensor
	stage  stage     // nil: the op works in the caller's buffer
	queued time.Time // when the op started, when tracing
}

// wait is a running wait that the lifecycle may cancel: a local Reduce or
// Result (by task), a stage's copy in (by op).
type wait struct {
	ctx    context.Context
	cancel context.CancelFunc
}

func refOf(op *lifecycle.Op) *opRef { return op.Spec.Ref.(*opRef) }

// stage is how an op's data gets into and out of an engine-owned staging
// buffer: GPU memory (gpu.go), or C memory over a transport that registers
// memory (copy.go).
type stage interface {
	// buffer is the staging buffer, or nil if in provides it.
	buffer() []byte
	// in fills the staging buffer and returns it (nil: buffer()). ctx ends
	// when the op must stop waiting.
	in(ctx context.Context) ([]byte, error)
	// out copies the result back when failed is nil, else releases the
	// staging without copying; either way the staging buffer is given up.
	out(failed error) error
	// async says whether in and out wait (a device), so that they need a
	// goroutine of their own.
	async() bool
}

// takeLocked takes the machine's effects. The ones that must be set up
// before anything else can happen are done here, under the lock: the
// contexts of waits that may be cancelled are made (so that a Cancel that
// comes before the wait has started still ends it), and Cancels are
// carried out. REQUIRES: e.mu.
func (e *Engine) takeLocked() []lifecycle.Effect { return e.appendLocked(nil) }

// appendLocked is takeLocked into dst's storage. REQUIRES: e.mu.
func (e *Engine) appendLocked(dst []lifecycle.Effect) []lifecycle.Effect {
	start := len(dst)
	dst = e.mu.m.AppendEffects(dst)
	for _, ef := range dst[start:] {
		switch ef.Kind {
		case lifecycle.LocalReduce, lifecycle.LocalResult:
			ctx, cancel := context.WithCancel(e.ctx)
			e.mu.waits[ef.Task] = wait{ctx, cancel}
		case lifecycle.StageIn:
			ctx, cancel := context.WithTimeout(e.ctx, e.cfg.GPUTimeout)
			e.mu.waits[ef.Op] = wait{ctx, cancel}
		case lifecycle.Cancel:
			if w, ok := e.mu.waits[ef.Task]; ok {
				w.cancel()
			}
		case lifecycle.CancelStage:
			if w, ok := e.mu.waits[ef.Op]; ok {
				w.cancel()
			}
		case lifecycle.Send:
			e.trace.dispatched(ef.Task)
		}
	}
	return dst
}

// waitCtx returns the context of the wait set up for key (a task or an op)
// by takeLocked.
func (e *Engine) waitCtx(key any) context.Context {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.mu.waits[key].ctx
}

// doneWaitingLocked forgets the wait of key, which has returned.
// REQUIRES: e.mu.
func (e *Engine) doneWaitingLocked(key any) {
	if w, ok := e.mu.waits[key]; ok {
		w.cancel()
		delete(e.mu.waits, key)
	}
}

// report runs event under the lock and carries out what it produced.
func (e *Engine) report(event func(m *lifecycle.Machine)) {
	e.mu.Lock()
	event(e.mu.m)
	effs := e.takeLocked()
	e.mu.Unlock()
	e.run(effs)
}

// run carries out effects taken from the machine, in order.
func (e *Engine) run(effs []lifecycle.Effect) {
	for _, ef := range effs {
		t := ef.Task
		switch ef.Kind {
		case lifecycle.Send:
			e.servers[t.Part.Server].lanes[t.Part.Lane].enqueue(t)
		case lifecycle.Cancel, lifecycle.CancelStage:
			// Done under the lock by takeLocked.
		case lifecycle.Divide:
			// On the reader's goroutine, as the answer has just come in.
			err := kernel.Div(t.Op.Spec.DType, t.Out, e.Size())
			e.report(func(m *lifecycle.Machine) { m.Divided(t, err) })
		case lifecycle.LocalIn, lifecycle.LocalReduce, lifecycle.LocalResult, lifecycle.LocalPublish, lifecycle.LocalOut:
			e.spawn(func() { e.runLocal(ef) })
		case lifecycle.LocalAbort:
			e.local.Abort(fmt.Errorf("local rank %d could not push and pull key %s: %w", e.cfg.LocalRank, t.Part.Key, ef.Err))
		case lifecycle.StageIn:
			r := refOf(ef.Op)
			if r.stage.async() {
				e.spawn(func() { e.stageIn(ef.Op) })
			} else {
				e.stageIn(ef.Op)
			}
		case lifecycle.StageOut:
			r := refOf(ef.Op)
			if r.stage.async() || len(r.stage.buffer()) >= asyncCopyBytes {
				e.spawn(func() { e.stageOut(ef.Op, ef.Err) })
			} else {
				e.stageOut(ef.Op, ef.Err)
			}
		case lifecycle.Finished:
			e.trace.finished(t, ef.Err)
			e.finishedTask(t, ef.Err)
		case lifecycle.Complete:
			// Counted as ended before its handle completes, so that a
			// caller whose Wait returned sees no operation in flight.
			e.opEnded()
			refOf(ef.Op).h.complete(ef.Err)
		}
	}
}

// asyncCopyBytes: copying a staging buffer back at least this large gets a
// goroutine of its own, so that the reader that finished the op goes back
// to reading.
const asyncCopyBytes = 1 << 20

func (e *Engine) stageIn(op *lifecycle.Op) {
	buf, err := refOf(op).stage.in(e.waitCtx(op))
	e.report(func(m *lifecycle.Machine) {
		e.doneWaitingLocked(op)
		m.StagedIn(op, buf, err)
	})
}

func (e *Engine) stageOut(op *lifecycle.Op, failed error) {
	err := refOf(op).stage.out(failed)
	e.report(func(m *lifecycle.Machine) { m.StagedOut(op, err) })
}

// spawn runs f on a goroutine that Close waits for; once Close has begun
// waiting, on the caller's goroutine (only failures' clean-up is left
// then, and it must still run).
func (e *Engine) spawn(f func()) {
	e.goMu.Lock()
	closed := e.goClosed
	if !closed {
		e.wg.Add(1)
	}
	e.goMu.Unlock()
	if closed {
		f()
		return
	}
	go func() {
		defer e.wg.Done()
		f()
	}()
}
