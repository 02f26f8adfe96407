package core

import (
	"context"
	"fmt"
)

// Buffers the engine does not own. The verbs transport registers a
// buffer once and keeps the registration in a cache keyed by address,
// which is only safe for memory that cannot be freed while registered: Go
// memory (the cache pins it) and the engine's own staging buffers. Memory
// from C (the C library's callers) can be freed and reallocated at the
// same address, where a cached registration would still point at the old
// pages and the data would be lost without an error. PushPullCopy and
// BroadcastCopy therefore go through a staging buffer the engine owns, one
// per tensor in the steady state (so registered once): the op's StageIn
// copies the caller's buffer in, and its StageOut copies the result back
// before the handle completes. The C library uses them when the transport
// registers memory (rdma.Caps.Registered); over TCP nothing is registered
// and C memory goes straight to the socket.

// PushPullCopy is PushPull through an engine-owned staging buffer: buf is
// copied in now, and the result is copied into buf before the handle
// completes. buf must stay valid until then, as for PushPull.
func (e *Engine) PushPullCopy(t *Tensor, buf []byte, op ReduceOp) (*Handle, error) {
	if e == nil {
		return nil, ErrNotInitialized
	}
	if err := checkReduce(t, op); err != nil {
		return nil, err
	}
	return e.viaStaging(t, buf, op, true)
}

// BroadcastCopy is Broadcast through an engine-owned staging buffer, like
// PushPullCopy.
func (e *Engine) BroadcastCopy(t *Tensor, buf []byte) (*Handle, error) {
	if e == nil {
		return nil, ErrNotInitialized
	}
	if err := checkBroadcast(t); err != nil {
		return nil, err
	}
	return e.viaStaging(t, buf, Sum, e.self.Rank == int(t.root))
}

func (e *Engine) viaStaging(t *Tensor, buf []byte, op ReduceOp, push bool) (*Handle, error) {
	if len(buf) != t.nbytes {
		return nil, fmt.Errorf("gobps: %q: buffer of %d bytes, declared %d", t.name, len(buf), t.nbytes)
	}
	e.mu.Lock()
	var st []byte
	if n := len(t.staging); n > 0 {
		st, t.staging = t.staging[n-1], t.staging[:n-1]
	} else {
		st = make([]byte, t.nbytes)
	}
	e.mu.Unlock()
	c := &copyStage{e: e, t: t, caller: buf, st: st}
	h, err := e.start(t, nil, op, push, c)
	if err != nil {
		c.put()
	}
	return h, err
}

// copyStage stages one op through an engine-owned buffer.
type copyStage struct {
	e      *Engine
	t      *Tensor
	caller []byte
	st     []byte
}

func (c *copyStage) buffer() []byte { return c.st }
func (c *copyStage) async() bool    { return false }

func (c *copyStage) in(context.Context) ([]byte, error) {
	copy(c.st, c.caller)
	return nil, nil
}

func (c *copyStage) out(failed error) error {
	if failed == nil {
		copy(c.caller, c.st)
	}
	c.put()
	return nil
}

// put gives the staging buffer back to the tensor.
func (c *copyStage) put() {
	c.e.mu.Lock()
	c.t.staging = append(c.t.staging, c.st)
	c.e.mu.Unlock()
}
