package core

import (
	"errors"
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
// per tensor in the steady state (so registered once): a copy in when the
// call is made and a copy out before the handle completes. The C library
// uses them when the transport is verbs; over TCP nothing is registered
// and C memory goes straight to the socket.

// PushPullCopy is PushPull through an engine-owned staging buffer: buf is
// copied in now, and the result is copied into buf before the handle
// completes. buf must stay valid until then, as for PushPull.
func (e *Engine) PushPullCopy(t *Tensor, buf []byte, op ReduceOp) (*Handle, error) {
	return e.viaStaging(t, buf, func(b []byte) (*Handle, error) { return e.PushPull(t, b, op) })
}

// BroadcastCopy is Broadcast through an engine-owned staging buffer, like
// PushPullCopy.
func (e *Engine) BroadcastCopy(t *Tensor, buf []byte) (*Handle, error) {
	return e.viaStaging(t, buf, func(b []byte) (*Handle, error) { return e.Broadcast(t, b) })
}

func (e *Engine) viaStaging(t *Tensor, buf []byte, start func([]byte) (*Handle, error)) (*Handle, error) {
	if e == nil {
		return nil, ErrNotInitialized
	}
	if t == nil {
		return nil, errors.New("gobps: nil tensor")
	}
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
	put := func() {
		e.mu.Lock()
		t.staging = append(t.staging, st)
		e.mu.Unlock()
	}
	copy(st, buf)
	inner, err := start(st)
	if err != nil {
		put()
		return nil, err
	}
	h := newHandle(t.name, 1)
	e.wg.Add(1)
	go func() {
		defer e.wg.Done()
		err := inner.cause()
		if err == nil {
			copy(buf, st)
		}
		put()
		h.partDone(err)
	}()
	return h, nil
}
