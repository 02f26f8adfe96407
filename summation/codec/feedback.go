package codec

import (
	"fmt"
	"sync"
	"unsafe"

	"github.com/gobps/gobps/proto"
	"github.com/gobps/gobps/summation/kernel"
)

// ErrorFeedback wraps a codec in error feedback (Seide et al. 2014, Karimireddy
// et al. 2019; BytePS's vanilla_ef): per key, the residual e of the last
// compression is added to the next input before it is compressed, and what
// the payload fails to carry becomes the new residual:
//
//	c = x + e;  p = Compress(c);  e = c - Decompress(p)
//
// so that, over any number of steps, the sum of what was sent plus the
// final residual is the sum of the inputs, up to float32 rounding of the two
// updates of e per step. Workers wrap their codec in it, and servers the
// codec that recompresses sums.
//
// Locking: the state of each key is kept apart; calls of Compress for
// different keys may run at the same time, calls for one key must not.
// Decompress and DecompressAdd have no state.
type ErrorFeedback struct {
	inner Compressor
	mu    struct {
		sync.Mutex
		keys map[proto.Key]*efState
	}
}

type efState struct {
	residual []float32 // e, then c = x + e during a Compress
	scratch  []float32 // Decompress(p)
}

// NewErrorFeedback wraps c in error feedback, with a zero residual for every
// key.
func NewErrorFeedback(c Compressor) *ErrorFeedback {
	e := &ErrorFeedback{inner: c}
	e.mu.keys = map[proto.Key]*efState{}
	return e
}

func (e *ErrorFeedback) ID() ID            { return e.inner.ID() }
func (e *ErrorFeedback) MaxSize(n int) int { return e.inner.MaxSize(n) }

func (e *ErrorFeedback) Decompress(dst []float32, payload []byte) error {
	return e.inner.Decompress(dst, payload)
}

func (e *ErrorFeedback) DecompressAdd(dst []float32, payload []byte) error {
	return e.inner.DecompressAdd(dst, payload)
}

// state returns key's state, made for tensors of n elements; a key's
// tensors must keep their size.
func (e *ErrorFeedback) state(key proto.Key, n int) (*efState, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	st, ok := e.mu.keys[key]
	if !ok {
		st = &efState{residual: make([]float32, n), scratch: make([]float32, n)}
		e.mu.keys[key] = st
	}
	if len(st.residual) != n {
		return nil, fmt.Errorf("codec: error feedback for key %v: %d elements, earlier %d", key, n, len(st.residual))
	}
	return st, nil
}

// Compress compresses src plus key at.Key's residual and keeps the new
// residual. dst is checked first, so that the one error the codecs return
// for arguments that passed that check (a tensor of more than MaxElems) is
// the only one that can leave the residual with src added in.
func (e *ErrorFeedback) Compress(dst []byte, src []float32, at Step) ([]byte, error) {
	if len(dst) < e.inner.MaxSize(len(src)) {
		return nil, fmt.Errorf("codec: %s with error feedback: %d-byte buffer for %d elements, need %d", e.inner.ID(), len(dst), len(src), e.inner.MaxSize(len(src)))
	}
	st, err := e.state(at.Key, len(src))
	if err != nil {
		return nil, err
	}
	r := st.residual
	kernel.Add(proto.Float32, f32Bytes(r), f32Bytes(src)) // c = e + x
	p, err := e.inner.Compress(dst, r, at)
	if err != nil {
		return nil, err
	}
	if err := e.inner.Decompress(st.scratch, p); err != nil {
		return nil, fmt.Errorf("codec: error feedback: decompressing its own %s payload: %w", e.inner.ID(), err)
	}
	s := st.scratch[:len(r)]
	for i := range r {
		r[i] -= s[i]
	}
	return p, nil
}

// Residual returns a copy of key's residual, nil if it has none.
func (e *ErrorFeedback) Residual(key proto.Key) []float32 {
	e.mu.Lock()
	defer e.mu.Unlock()
	if st, ok := e.mu.keys[key]; ok {
		return append([]float32(nil), st.residual...)
	}
	return nil
}

// Forget drops key's state (its residual starts again from zero).
func (e *ErrorFeedback) Forget(key proto.Key) {
	e.mu.Lock()
	defer e.mu.Unlock()
	delete(e.mu.keys, key)
}

// Momentum wraps a codec in Nesterov momentum (BytePS's nesterov_momentum),
// for workers: per key, with factor mu,
//
//	m = mu·m + x;  Compress(x + mu·m)
//
// each product rounded to float32 before its add.
//
// Locking: as ErrorFeedback.
type Momentum struct {
	inner  Compressor
	factor float32
	mu     struct {
		sync.Mutex
		keys map[proto.Key]*momState
	}
}

type momState struct{ m, g []float32 }

// NewMomentum wraps c in Nesterov momentum with factor mu.
func NewMomentum(c Compressor, mu float32) *Momentum {
	m := &Momentum{inner: c, factor: mu}
	m.mu.keys = map[proto.Key]*momState{}
	return m
}

func (m *Momentum) ID() ID            { return m.inner.ID() }
func (m *Momentum) MaxSize(n int) int { return m.inner.MaxSize(n) }

func (m *Momentum) Decompress(dst []float32, payload []byte) error {
	return m.inner.Decompress(dst, payload)
}

func (m *Momentum) DecompressAdd(dst []float32, payload []byte) error {
	return m.inner.DecompressAdd(dst, payload)
}

func (m *Momentum) Compress(dst []byte, src []float32, at Step) ([]byte, error) {
	if len(dst) < m.inner.MaxSize(len(src)) {
		return nil, fmt.Errorf("codec: %s with momentum: %d-byte buffer for %d elements, need %d", m.inner.ID(), len(dst), len(src), m.inner.MaxSize(len(src)))
	}
	m.mu.Lock()
	st, ok := m.mu.keys[at.Key]
	if !ok {
		st = &momState{m: make([]float32, len(src)), g: make([]float32, len(src))}
		m.mu.keys[at.Key] = st
	}
	m.mu.Unlock()
	if len(st.m) != len(src) {
		return nil, fmt.Errorf("codec: momentum for key %v: %d elements, earlier %d", at.Key, len(src), len(st.m))
	}
	mu := m.factor
	mom, g := st.m, st.g[:len(st.m)]
	src = src[:len(mom)]
	for i, x := range src {
		v := float32(mu*mom[i]) + x
		mom[i] = v
		g[i] = x + float32(mu*v)
	}
	return m.inner.Compress(dst, g, at)
}

// State returns a copy of key's momentum, nil if it has none.
func (m *Momentum) State(key proto.Key) []float32 {
	m.mu.Lock()
	defer m.mu.Unlock()
	if st, ok := m.mu.keys[key]; ok {
		return append([]float32(nil), st.m...)
	}
	return nil
}

// Forget drops key's state.
func (m *Momentum) Forget(key proto.Key) {
	m.mu.Lock()
	defer m.mu.Unlock()
	delete(m.mu.keys, key)
}

// f32Bytes is the memory of f as bytes.
func f32Bytes(f []float32) []byte {
	return unsafe.Slice((*byte)(unsafe.Pointer(unsafe.SliceData(f))), 4*len(f))
}
