package core

import (
	"errors"
	"fmt"
	"sync"

	"github.com/gobps/gobps/core/lifecycle"
	"github.com/gobps/gobps/proto"
	"github.com/gobps/gobps/rdma"
)

// lane is one connection to a server: a sender goroutine that pushes the
// partitions the lifecycle hands it, in order, and the transport's reader,
// which calls the lane's rdma.Handler methods. A key always uses lane
// key mod lanes, so one key's frames stay in order.
type lane struct {
	e      *Engine
	srv    *server
	idx    int
	conn   rdma.Conn
	closed chan struct{} // closed by Closed: the reader is gone

	q struct {
		sync.Mutex
		tasks []*lifecycle.Task
	}
	wake chan struct{} // one token: tasks were queued

	latency latency // push-pull times of its partitions (metrics.go)
}

func newLane(e *Engine, s *server, idx int) *lane {
	return &lane{e: e, srv: s, idx: idx, closed: make(chan struct{}), wake: make(chan struct{}, 1)}
}

// enqueue hands t to the sender. It never blocks: the credit bounds what
// the lifecycle dispatches, and the queue is a slice.
func (l *lane) enqueue(t *lifecycle.Task) {
	l.q.Lock()
	l.q.tasks = append(l.q.tasks, t)
	l.q.Unlock()
	select {
	case l.wake <- struct{}{}:
	default:
	}
}

// send pushes (or pulls) the partitions handed to this lane, in order.
func (l *lane) send() {
	e := l.e
	defer e.wg.Done()
	var batch []*lifecycle.Task
	var effs []lifecycle.Effect
	for {
		select {
		case <-l.wake:
		case <-e.stop:
			return
		}
		l.q.Lock()
		batch, l.q.tasks = l.q.tasks, batch[:0]
		l.q.Unlock()
		for i, t := range batch {
			batch[i] = nil
			now := l.latency.stampFor()
			e.mu.Lock()
			ok := e.mu.m.Sending(t)
			if ok {
				t.Stamp = now
			}
			e.mu.Unlock()
			if !ok {
				// Failed or abandoned before it left: its handle may have
				// completed, so its buffer is the caller's again.
				continue
			}
			e.trace.mark(t, stepSending)
			h := proto.Header{Sender: e.self.ID, Key: t.Part.Key, Round: t.Round, ReqID: t.ReqID, DType: t.Op.Spec.DType}
			var err error
			if t.Op.Spec.Push {
				// The push asks for the sum too (FlagPull), so the server
				// can stream it back while the pushes are still arriving.
				h.Op, h.Flags = proto.OpPush, proto.FlagPull
				err = l.conn.Send(h, t.In)
			} else {
				h.Op, h.DType = proto.OpPull, 0
				err = l.conn.Send(h, nil)
			}
			e.trace.mark(t, stepSent)
			if err != nil {
				e.failServer(l.srv, err)
			}
			e.mu.Lock()
			e.mu.m.Sent(t, err)
			effs = e.appendLocked(effs[:0])
			e.mu.Unlock()
			e.run(effs)
		}
	}
}

// Dest implements rdma.Handler: a pull answer lands in the caller's buffer
// (or the machine's sum in shared memory), where the lifecycle places it.
func (l *lane) Dest(c rdma.Conn, h *proto.Header) ([]byte, error) {
	if h.Op != proto.OpPullResp {
		return nil, nil
	}
	e := l.e
	e.mu.Lock()
	dst, first, err := e.mu.m.AnswerDest(h)
	var t *lifecycle.Task
	if first && e.trace != nil {
		t = e.mu.m.Request(h.ReqID)
	}
	e.mu.Unlock()
	if t != nil {
		e.trace.mark(t, stepFirst)
	}
	return dst, err
}

// Handle implements rdma.Handler.
func (l *lane) Handle(c rdma.Conn, h *proto.Header, payload []byte, err error) {
	e := l.e
	switch {
	case err != nil:
		// A frame we refused: an answer we cannot place (the server and we
		// disagree about a request), or one the transport refused. Fail
		// that request rather than leave it waiting.
		e.mu.Lock()
		known := e.mu.m.AnswerFailed(h.ReqID, fmt.Errorf("from %s: %w", l.srv, err))
		effs := e.takeLocked()
		e.mu.Unlock()
		if !known {
			e.logf("gobps: refused %s from %s: %v", h.Op, l.srv, err)
		}
		e.run(effs)
	case h.Op == proto.OpPullResp:
		e.mu.Lock()
		e.mu.m.AnswerIn(h.ReqID, len(payload))
		effs := e.takeLocked()
		e.mu.Unlock()
		e.run(effs)
	case h.Op == proto.OpError && h.ReqID == 0 && h.Flags&proto.FlagFatal != 0:
		// A tensor we declared failed for good (GOBPS_DECLARE_TIMEOUT):
		// its rounds may wait where no answer reaches them.
		e.failAll(fmt.Errorf("gobps: %s: %s", l.srv, payload))
	case h.Op == proto.OpError && h.ReqID == 0:
		// A notice about no request of ours: a tensor we declared and
		// push waits for workers that have not declared it.
		e.warnf("gobps: %s says: %s", l.srv, payload)
	case h.Op == proto.OpBehind:
		e.behind(h.Key, h.Round)
	case h.Op == proto.OpDeclareAck || h.Op == proto.OpJoinAck || h.Op == proto.OpError:
		var rerr error
		if h.Op == proto.OpError {
			rerr = fmt.Errorf("%s: %s", l.srv, payload)
		}
		e.mu.Lock()
		var effs []lifecycle.Effect
		stray := false
		if ch, ok := e.mu.declReqs[h.ReqID]; ok {
			e.answerDeclLocked(h.ReqID, ch, rerr)
		} else if t := e.mu.m.Request(h.ReqID); t != nil && rerr != nil {
			e.mu.m.AnswerFailed(h.ReqID, fmt.Errorf("%q key %s round %d: %w", t.Op.Spec.Name, t.Part.Key, t.Round, rerr))
			effs = e.takeLocked()
		} else {
			stray = rerr != nil
		}
		e.mu.Unlock()
		if stray {
			e.logf("gobps: %v (request %d, which is not pending)", rerr, h.ReqID)
		}
		e.run(effs)
	default:
		e.logf("gobps: unexpected %s from %s", h.Op, l.srv)
	}
}

// Closed implements rdma.Handler: the reader is gone. The server has
// failed, and what this lane was receiving will not be completed.
func (l *lane) Closed(c rdma.Conn, err error) {
	defer close(l.closed)
	if err == nil {
		err = errors.New("connection closed")
	}
	e := l.e
	e.failServer(l.srv, fmt.Errorf("connection lost: %w", err))
	e.mu.Lock()
	e.mu.m.LaneClosed(l.srv.rank, l.idx, l.srv.failed)
	effs := e.takeLocked()
	e.mu.Unlock()
	e.run(effs)
}
