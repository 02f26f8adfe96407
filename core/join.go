package core

import (
	"context"
	"errors"
	"fmt"

	"github.com/gobps/gobps/cluster"
	"github.com/gobps/gobps/proto"
)

// Uneven inputs (DDP's Join): a worker that has run out of data calls
// Join, which returns once every worker has. Meanwhile the worker answers
// the others' rounds with zeros: the servers (OpBehind) and, under local
// aggregation, the machine's owners of keys (local.Config.Behind) tell it
// of every round that begins without it, and it runs the tensor's
// operation on a buffer of zeros up to that round, a "ghost" round, as if
// the training loop had called it. The sums the others get are then those
// of the workers that still have data (an Average divides by every
// worker, as DDP's Join does by default).
//
// When every worker has joined, no round is left half done: a ghost
// round only ever answers a round another worker began, and that worker
// finished it before it joined. Join then waits for its ghost rounds,
// ends the join on the servers and in the local group, and meets the
// others at a second barrier, so that nobody begins a new round while a
// worker could still take it for one to answer with zeros.

// Join says that this worker has run out of data, answers the other
// workers' rounds with zeros until every worker has called Join, and
// returns then (or when ctx ends, or the job fails: an error). Every
// worker must call it, once its last PushPull has completed; the tensors
// stay declared and the job can go on (another epoch) afterwards.
func (e *Engine) Join(ctx context.Context) error {
	if e == nil {
		return ErrNotInitialized
	}
	e.mu.Lock()
	err := e.usableLocked()
	if err == nil && e.mu.joined {
		err = errors.New("gobps: Join: already joined (Join is running in another thread)")
	}
	if err == nil {
		e.mu.joined = true
	}
	e.mu.Unlock()
	if err != nil {
		return err
	}
	err = e.join(ctx)
	e.mu.Lock()
	e.mu.joined = false
	e.mu.Unlock()
	return err
}

func (e *Engine) join(ctx context.Context) error {
	// Declarations first: a ghost round must not wait on one.
	if err := e.flush(); err != nil {
		return err
	}
	if err := e.tellServers(ctx, true); err != nil {
		return err
	}
	if e.local != nil {
		e.local.SetJoined(true)
	}
	e.logf("gobps: worker %d joined: answering the others' rounds with zeros until every worker has", e.self.Rank)
	if err := e.member.Barrier(ctx, cluster.Workers); err != nil {
		return fmt.Errorf("gobps: Join: waiting for every worker to join: %w", err)
	}
	// Every worker has joined: no new round begins, and the ghost rounds
	// in flight complete (each answers a round another worker finished).
	e.ghostMu.Lock()
	e.mu.Lock()
	e.mu.joined = false
	ghosts := e.mu.ghosts
	e.mu.ghosts = nil
	e.mu.Unlock()
	e.ghostMu.Unlock()
	var errs []error
	for _, h := range ghosts {
		select {
		case <-h.Done():
			if h.err != nil {
				errs = append(errs, h.err)
			}
		case <-ctx.Done():
			return fmt.Errorf("gobps: Join: a round answered with zeros (%q) did not complete: %w", h.name, ctx.Err())
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("gobps: Join: answering another worker's round: %w", err)
	}
	if e.local != nil {
		e.local.SetJoined(false)
	}
	if err := e.tellServers(ctx, false); err != nil {
		return err
	}
	if err := e.member.Barrier(ctx, cluster.Workers); err != nil {
		return fmt.Errorf("gobps: Join: waiting for every worker to end its join: %w", err)
	}
	return nil
}

// tellServers says OpJoin (joined or not) to every server and waits for
// every answer.
func (e *Engine) tellServers(ctx context.Context, joined bool) error {
	round := uint64(0)
	if joined {
		round = 1
	}
	type req struct {
		s     *server
		id    uint64
		reply chan error
	}
	reqs := make([]req, len(e.servers))
	e.mu.Lock()
	for i, s := range e.servers {
		e.mu.nextDecl++
		reqs[i] = req{s, declBit | e.mu.nextDecl, make(chan error, 1)}
		e.mu.declReqs[reqs[i].id] = reqs[i].reply
	}
	e.mu.Unlock()
	for _, r := range reqs {
		if err := r.s.lanes[0].conn.Send(proto.Header{Op: proto.OpJoin, Sender: e.self.ID, ReqID: r.id, Round: round}, nil); err != nil {
			e.mu.Lock()
			e.answerDeclLocked(r.id, r.reply, fmt.Errorf("%s: %w", r.s, err))
			e.mu.Unlock()
		}
	}
	for _, r := range reqs {
		select {
		case err := <-r.reply:
			if err != nil {
				return fmt.Errorf("gobps: Join: %w", err)
			}
		case <-ctx.Done():
			return fmt.Errorf("gobps: Join: waiting for %s: %w", r.s, ctx.Err())
		case <-e.stop:
			return ErrNotInitialized
		}
	}
	return nil
}

// behind is told that round of key began without this worker: if it has
// joined, it runs the key's tensor up to that round with zeros. It does
// not wait (it is called from a lane's reader and the local group's).
func (e *Engine) behind(key proto.Key, round uint64) {
	e.mu.Lock()
	joined := e.mu.joined
	var t *Tensor
	if i := key.Tensor(); int(i) < len(e.mu.byIndex) {
		t = e.mu.byIndex[i]
	}
	e.mu.Unlock()
	switch {
	case !joined:
		return // a notice that crossed the end of a join
	case t == nil:
		e.warnf("gobps: a round of key %s began, but this worker never declared its tensor: it cannot answer it with zeros, and the others will wait (declare the same tensors on every worker)", key)
		return
	}
	e.spawn(func() { e.ghost(t, round) })
}

// ghost runs t with zeros until its next round is past round. ghostMu
// serialises ghosts, so that two notices of one round start it once.
func (e *Engine) ghost(t *Tensor, round uint64) {
	e.ghostMu.Lock()
	defer e.ghostMu.Unlock()
	for {
		e.mu.Lock()
		more := e.mu.joined && t.round <= round && e.usableLocked() == nil
		e.mu.Unlock()
		if !more {
			return
		}
		push := t.root == proto.NoRoot || int(t.root) == e.self.Rank
		h, err := e.start(t, make([]byte, t.nbytes), Sum, push, nil)
		if err != nil {
			e.warnf("gobps: answering a round of %q with zeros: %v", t.name, err)
			return
		}
		e.mu.Lock()
		e.mu.ghosts = append(e.mu.ghosts, h)
		e.mu.Unlock()
	}
}
