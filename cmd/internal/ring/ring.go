// Package ring is a ring all-reduce of float32 vectors over gobps's
// transport (rdma.Transport): the baseline that the parameter server is
// compared with in scripts/bench_allreduce_vs_ps.sh.
//
// n ranks form a ring; each accepts one connection from its left neighbour
// (rank−1) and dials its right neighbour (rank+1). The vector is cut into n
// chunks. In n−1 reduce-scatter steps each rank sends one chunk to the
// right and adds the chunk it receives from the left into its own copy; after
// them rank r holds chunk r+1 summed over all ranks. In n−1 all-gather steps
// the summed chunks travel once more around the ring and are copied into
// place. Every rank sends and receives 2(n−1)/n of the vector, the least any
// all-reduce over a ring can move, so on links of B bytes/s an all-reduce of
// M bytes takes at least 2(n−1)/n · M/B.
//
// Each chunk is sent in segments (Config.SegmentBytes), so that a rank
// forwards the first segment of a step as soon as it has been summed rather
// than when the whole chunk has arrived: the steps overlap, as in NCCL and
// gloo.
//
// # Protocol
//
// Frames are proto.OpPush with DType Float32, Round = the number of the
// AllReduce call (from 1), Key = the frame's index within that call, and
// Sender = the sending rank. The receiver knows from (Round, Key) where the
// payload goes: straight into the caller's vector for all-gather steps, into a
// scratch buffer for reduce-scatter steps (then added in). A frame for the
// next call that arrives before this rank has started it waits in the
// transport (back-pressure through TCP) until it does.
//
// # Locking
//
// Ring.mu guards the receive state; the transport's reader goroutine for
// the left connection takes it in Dest and Handle, AllReduce takes it to
// wait for progress. No I/O happens under it.
package ring

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"
	"unsafe"

	"github.com/gobps/gobps/proto"
	"github.com/gobps/gobps/rdma"
	"github.com/gobps/gobps/rdma/tcp"
)

// Config describes one rank.
type Config struct {
	Rank, Size int
	// Listen is where this rank accepts its left neighbour (host:port).
	Listen string
	// Right is the address of the right neighbour's Listen.
	Right string
	// Transport carries the frames; nil means tcp.New.
	Transport rdma.Transport
	// SegmentBytes bounds one frame's payload (default 1 MiB, rounded down to
	// whole float32 values).
	SegmentBytes int
}

// DefaultSegmentBytes is the default Config.SegmentBytes.
const DefaultSegmentBytes = 1 << 20

// Ring is one rank's end of a ring.
type Ring struct {
	rank, n  int
	segElems int
	tr       rdma.Transport
	ln       rdma.Listener
	right    rdma.Conn

	mu   sync.Mutex
	cond *sync.Cond // signalled on every change below
	// guarded by mu
	left      rdma.Conn
	round     uint64 // the AllReduce call in progress or last finished
	active    bool   // round is in progress
	buf       []float32
	plan      []segment // this round's frames, in order (the same on both sides of a link)
	recvd     int       // frames of this round received and applied
	scratch   []float32
	err       error // the ring is broken
	closed    bool
	rightGone error // the right neighbour closed its end
}

// segment is one frame of an AllReduce: step s of the ring, elements
// [off, off+len) of the vector.
type segment struct {
	step     int
	off, len int
}

// New starts rank cfg.Rank: it listens, dials the right neighbour (retrying
// until it listens) and waits for the left neighbour to connect, all bounded
// by ctx.
func New(ctx context.Context, cfg Config) (*Ring, error) {
	if cfg.Size < 1 || cfg.Rank < 0 || cfg.Rank >= cfg.Size {
		return nil, fmt.Errorf("ring: rank %d of %d", cfg.Rank, cfg.Size)
	}
	seg := cfg.SegmentBytes
	if seg <= 0 {
		seg = DefaultSegmentBytes
	}
	if seg < 4 || seg > proto.MaxPayload {
		return nil, fmt.Errorf("ring: segment of %d bytes: want 4 to %d", seg, proto.MaxPayload)
	}
	r := &Ring{rank: cfg.Rank, n: cfg.Size, segElems: seg / 4, tr: cfg.Transport}
	r.cond = sync.NewCond(&r.mu)
	if r.n == 1 {
		return r, nil
	}
	if r.tr == nil {
		r.tr = tcp.New(rdma.Options{})
	}
	ln, err := r.tr.Listen(cfg.Listen, leftHandler{r})
	if err != nil {
		return nil, fmt.Errorf("ring: rank %d: %w", r.rank, err)
	}
	r.ln = ln
	// Wake waiters when ctx ends during setup.
	stop := context.AfterFunc(ctx, func() {
		r.mu.Lock()
		r.cond.Broadcast()
		r.mu.Unlock()
	})
	defer stop()
	for {
		// The hello (Sender = this rank) goes with Dial.
		c, err := r.tr.Dial(ctx, cfg.Right, uint32(r.rank), rightHandler{r})
		if err == nil {
			r.right = c
			break
		}
		select {
		case <-ctx.Done():
			r.Close()
			return nil, fmt.Errorf("ring: rank %d: connect to right neighbour %s: %w", r.rank, cfg.Right, err)
		case <-time.After(50 * time.Millisecond):
		}
	}
	r.mu.Lock()
	for r.left == nil && r.err == nil && ctx.Err() == nil {
		r.cond.Wait()
	}
	err = r.err
	r.mu.Unlock()
	if err == nil && ctx.Err() != nil {
		err = fmt.Errorf("ring: rank %d: left neighbour never connected to %s: %w", r.rank, ln.Addr(), ctx.Err())
	}
	if err != nil {
		r.Close()
		return nil, err
	}
	return r, nil
}

// Addr is the address this rank accepts its left neighbour on.
func (r *Ring) Addr() string {
	if r.ln == nil {
		return ""
	}
	return r.ln.Addr()
}

// Rank is this rank; Size the number of ranks.
func (r *Ring) Rank() int { return r.rank }

// Size is the number of ranks.
func (r *Ring) Size() int { return r.n }

func (r *Ring) left1() int { return (r.rank + r.n - 1) % r.n }

// chunk returns the elements of chunk c of a count-element vector.
func chunk(c, n, count int) (off, l int) {
	lo, hi := c*count/n, (c+1)*count/n
	return lo, hi - lo
}

// plan lists the frames rank receives in an all-reduce of count elements
// over n ranks, in order. Rank r's receive plan is the send plan of rank
// r−1, so it also gives the order rank r−1 sends in. sendPlan gives rank's
// own sends.
func plan(rank, n, count, segElems int, send bool) []segment {
	var out []segment
	for s := 0; s < 2*(n-1); s++ {
		var c int
		if s < n-1 { // reduce-scatter
			c = rank - s - 1
			if send {
				c = rank - s
			}
		} else { // all-gather
			t := s - (n - 1)
			c = rank - t
			if send {
				c = rank + 1 - t
			}
		}
		c = ((c % n) + n) % n
		off, l := chunk(c, n, count)
		for o := 0; o < l; o += segElems {
			out = append(out, segment{step: s, off: off + o, len: min(segElems, l-o)})
		}
	}
	return out
}

// AllReduce replaces buf, on every rank, with the element-wise sum of every
// rank's buf. All ranks must call it with vectors of the same length, the
// same number of times. ctx bounds the wait; after an error the ring is
// unusable.
func (r *Ring) AllReduce(ctx context.Context, buf []float32) error {
	if r.n == 1 {
		return nil
	}
	count := len(buf)
	recv := plan(r.rank, r.n, count, r.segElems, false)
	send := plan(r.rank, r.n, count, r.segElems, true)
	// index of the first received frame of each step, to find what a send
	// waits for: segment j of step s may go once segment j of step s−1 is in
	first := make([]int, 2*(r.n-1)+1)
	for i := range first {
		first[i] = -1
	}
	for i := len(recv) - 1; i >= 0; i-- {
		first[recv[i].step] = i
	}

	r.mu.Lock()
	if err := r.usableLocked(); err != nil {
		r.mu.Unlock()
		return err
	}
	if r.active {
		r.mu.Unlock()
		return errors.New("ring: concurrent AllReduce calls")
	}
	if need := min(r.segElems, count); len(r.scratch) < need {
		r.scratch = make([]float32, need)
	}
	r.round++
	round := r.round
	r.active, r.buf, r.plan, r.recvd = true, buf, recv, 0
	r.cond.Broadcast() // frames of this round may be waiting
	r.mu.Unlock()
	stop := context.AfterFunc(ctx, func() {
		r.mu.Lock()
		r.cond.Broadcast()
		r.mu.Unlock()
	})
	defer stop()
	defer func() {
		r.mu.Lock()
		r.active, r.buf, r.plan = false, nil, nil
		r.mu.Unlock()
	}()

	// waitFor waits until recvd > i.
	waitFor := func(i int) error {
		r.mu.Lock()
		defer r.mu.Unlock()
		for r.recvd <= i {
			if err := r.usableLocked(); err != nil {
				return err
			}
			if err := ctx.Err(); err != nil {
				return fmt.Errorf("ring: rank %d round %d: %w", r.rank, round, err)
			}
			r.cond.Wait()
		}
		return nil
	}
	j := 0 // segment index within the current step
	for i, sg := range send {
		if i > 0 && send[i-1].step != sg.step {
			j = 0
		}
		if sg.step > 0 {
			// the chunk sent in step s is the one received in step s−1,
			// cut into the same segments
			if err := waitFor(first[sg.step-1] + j); err != nil {
				return err
			}
		}
		r.mu.Lock()
		gone := r.rightGone
		r.mu.Unlock()
		if gone != nil {
			r.fail(fmt.Errorf("ring: rank %d: right neighbour: %w", r.rank, gone))
			return r.errNow()
		}
		h := proto.Header{Op: proto.OpPush, DType: proto.Float32, Sender: uint32(r.rank), Key: proto.Key(i), Round: round}
		if err := r.right.Send(h, f32bytes(buf[sg.off:sg.off+sg.len])); err != nil {
			r.fail(fmt.Errorf("ring: rank %d: send to right neighbour: %w", r.rank, err))
			return r.errNow()
		}
		j++
	}
	return waitFor(len(recv) - 1)
}

// Barrier returns once every rank has called it: an all-reduce of n values.
func (r *Ring) Barrier(ctx context.Context) error {
	return r.AllReduce(ctx, make([]float32, r.n))
}

func (r *Ring) usableLocked() error {
	if r.err != nil {
		return r.err
	}
	if r.closed {
		return errors.New("ring: closed")
	}
	return nil
}

func (r *Ring) errNow() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.usableLocked()
}

// fail breaks the ring with err (the first error wins).
func (r *Ring) fail(err error) {
	r.mu.Lock()
	if r.err == nil {
		r.err = err
	}
	r.cond.Broadcast()
	r.mu.Unlock()
}

// Close ends both connections. Call it after the last AllReduce on every
// rank has returned (a Barrier first makes sure of that).
func (r *Ring) Close() error {
	r.mu.Lock()
	r.closed = true
	left := r.left
	r.cond.Broadcast()
	r.mu.Unlock()
	var errs []error
	if r.ln != nil {
		errs = append(errs, r.ln.Close())
	}
	if r.right != nil {
		errs = append(errs, r.right.Close())
	}
	if left != nil {
		errs = append(errs, left.Close())
	}
	return errors.Join(errs...)
}

// leftHandler serves the connections accepted from the left neighbour.
type leftHandler struct{ r *Ring }

// frameLocked checks that h is the next frame of the current round, waiting
// while it belongs to a round this rank has not started. REQUIRES: r.mu.
func (r *Ring) frameLocked(c rdma.Conn, h *proto.Header) (segment, error) {
	if c != r.left {
		return segment{}, fmt.Errorf("ring: rank %d: frame %s from a connection that is not the left neighbour", r.rank, h)
	}
	if h.Op != proto.OpPush || h.DType != proto.Float32 || int(h.Sender) != r.left1() {
		return segment{}, fmt.Errorf("ring: rank %d: unexpected frame %s", r.rank, h)
	}
	// A frame of a round this rank has not started waits for it.
	for h.Round > r.round {
		if err := r.usableLocked(); err != nil {
			return segment{}, err
		}
		r.cond.Wait()
	}
	if h.Round != r.round || !r.active {
		return segment{}, fmt.Errorf("ring: rank %d: frame for round %d during round %d", r.rank, h.Round, r.round)
	}
	if int(h.Key) != r.recvd || r.recvd >= len(r.plan) {
		return segment{}, fmt.Errorf("ring: rank %d round %d: frame %d, expected %d of %d", r.rank, r.round, h.Key, r.recvd, len(r.plan))
	}
	sg := r.plan[r.recvd]
	if int(h.Length) != 4*sg.len {
		return segment{}, fmt.Errorf("ring: rank %d round %d frame %d: %d bytes, expected %d", r.rank, r.round, h.Key, h.Length, 4*sg.len)
	}
	return sg, nil
}

func (l leftHandler) Dest(c rdma.Conn, h *proto.Header) ([]byte, error) {
	r := l.r
	r.mu.Lock()
	defer r.mu.Unlock()
	sg, err := r.frameLocked(c, h)
	if err != nil {
		r.failLocked(err)
		return nil, err
	}
	if sg.step < r.n-1 {
		return f32bytes(r.scratch[:sg.len]), nil
	}
	return f32bytes(r.buf[sg.off : sg.off+sg.len]), nil
}

func (l leftHandler) Handle(c rdma.Conn, h *proto.Header, payload []byte, err error) {
	r := l.r
	r.mu.Lock()
	defer r.mu.Unlock()
	if h.Op == proto.OpHello {
		if r.left == nil && int(h.Sender) == r.left1() && h.Length == 0 {
			r.left = c
			r.cond.Broadcast()
		} else {
			c.Close()
		}
		return
	}
	if err != nil {
		c.Close()
		return
	}
	sg, err := r.frameLocked(c, h)
	if err != nil {
		r.failLocked(err)
		c.Close()
		return
	}
	if sg.step < r.n-1 {
		add(r.buf[sg.off:sg.off+sg.len], r.scratch[:sg.len])
	}
	r.recvd++
	r.cond.Broadcast()
}

func (l leftHandler) Closed(c rdma.Conn, err error) {
	r := l.r
	r.mu.Lock()
	defer r.mu.Unlock()
	if c == r.left && !r.closed {
		if err == nil {
			err = errors.New("connection closed")
		}
		r.failLocked(fmt.Errorf("ring: rank %d: left neighbour (rank %d): %w", r.rank, r.left1(), err))
	}
}

func (r *Ring) failLocked(err error) {
	if r.err == nil {
		r.err = err
	}
	r.cond.Broadcast()
}

// rightHandler serves the connection to the right neighbour, which sends
// nothing back.
type rightHandler struct{ r *Ring }

func (rh rightHandler) Dest(c rdma.Conn, h *proto.Header) ([]byte, error) {
	return nil, fmt.Errorf("ring: unexpected frame %s from the right neighbour", h)
}

func (rh rightHandler) Handle(c rdma.Conn, h *proto.Header, payload []byte, err error) {
	rh.r.fail(fmt.Errorf("ring: rank %d: unexpected frame %s from the right neighbour", rh.r.rank, h))
	c.Close()
}

// Closed notes that the right neighbour is gone. That is no error by
// itself: a neighbour that has received all it needs closes its end while
// this rank may still be receiving the last frames from the left. The next
// send fails instead.
func (rh rightHandler) Closed(c rdma.Conn, err error) {
	r := rh.r
	r.mu.Lock()
	defer r.mu.Unlock()
	if err == nil {
		err = errors.New("connection closed")
	}
	r.rightGone = err
}

func f32bytes(v []float32) []byte {
	if len(v) == 0 {
		return nil
	}
	return unsafe.Slice((*byte)(unsafe.Pointer(&v[0])), 4*len(v))
}

// add sets dst[i] += src[i].
func add(dst, src []float32) {
	src = src[:len(dst)]
	for i := range dst {
		dst[i] += src[i]
	}
}
