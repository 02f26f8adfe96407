package core

import (
	"context"
	"errors"
	"fmt"

	"github.com/gobps/gobps/cluster"
)

// ErrSuspended is the error of an operation started while the engine is
// suspended (Suspend), until Resume.
var ErrSuspended = errors.New("gobps: suspended (call resume first)")

// opEnded counts an operation's completion, and wakes Suspend when none is
// left.
func (e *Engine) opEnded() {
	e.mu.Lock()
	e.mu.open--
	var idle []chan struct{}
	if e.mu.open == 0 {
		idle, e.mu.idle = e.mu.idle, nil
	}
	e.mu.Unlock()
	for _, ch := range idle {
		close(ch)
	}
}

// Suspend pauses the job, as BytePS's suspend does: every worker calls
// it. New operations fail with ErrSuspended, the ones in flight complete,
// and Suspend returns once every worker has suspended (a barrier), so that
// no round is left half done. The tensors, the connections and the round
// counters stay: Resume goes on with the same job.
//
// BytePS re-registers a resumed worker and may change the job's size
// (elastic training); that needs the elastic membership of the
// fault-tolerance design, which gobps does not have yet, so Resume accepts
// only the size the job has.
func (e *Engine) Suspend(ctx context.Context) error {
	if e == nil {
		return ErrNotInitialized
	}
	e.mu.Lock()
	if err := e.usableLocked(); err != nil {
		e.mu.Unlock()
		if errors.Is(err, ErrSuspended) {
			return errors.New("gobps: suspend: already suspended")
		}
		return err
	}
	if e.mu.joined {
		e.mu.Unlock()
		return errors.New("gobps: suspend: in join")
	}
	e.mu.suspended = true
	var idle chan struct{}
	if e.mu.open > 0 {
		idle = make(chan struct{})
		e.mu.idle = append(e.mu.idle, idle)
	}
	e.mu.Unlock()
	if idle != nil {
		select {
		case <-idle:
		case <-ctx.Done():
			return fmt.Errorf("gobps: suspend: waiting for the operations in flight: %w", ctx.Err())
		}
	}
	if err := e.member.Barrier(ctx, cluster.Workers); err != nil {
		return fmt.Errorf("gobps: suspend: waiting for every worker to suspend: %w", err)
	}
	e.logf("gobps: worker %d suspended", e.self.Rank)
	return nil
}

// Resume ends a suspension once every worker resumes (a barrier).
// workers and servers must be the job's size: changing it needs elastic
// membership (see Suspend).
func (e *Engine) Resume(ctx context.Context, workers, servers int) error {
	if e == nil {
		return ErrNotInitialized
	}
	e.mu.Lock()
	suspended, shutdown, failed := e.mu.suspended, e.mu.shutdown, e.mu.failed
	e.mu.Unlock()
	switch {
	case shutdown:
		return ErrNotInitialized
	case failed != nil:
		return failed
	case !suspended:
		return errors.New("gobps: resume: not suspended (call suspend first)")
	case workers != e.Size() || servers != e.NumServers():
		return fmt.Errorf("gobps: resume with %d workers and %d servers: this job has %d and %d, and changing the size of a job (elastic training) is not implemented yet; resume with the same size",
			workers, servers, e.Size(), e.NumServers())
	}
	if err := e.member.Barrier(ctx, cluster.Workers); err != nil {
		return fmt.Errorf("gobps: resume: waiting for every worker to resume: %w", err)
	}
	e.mu.Lock()
	e.mu.suspended = false
	e.mu.Unlock()
	e.logf("gobps: worker %d resumed", e.self.Rank)
	return nil
}
