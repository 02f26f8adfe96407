package scheduler

import (
	"container/heap"
	"fmt"

	"github.com/gobps/gobps/proto"
)

// Item is one unit of work: usually one partition of one gradient.
type Item[T any] struct {
	Key      proto.Key
	Priority int // larger goes first
	Bytes    int // > 0; charged against the credit while in flight
	Value    T   // opaque to the queue
}

// Queue is a priority queue with a byte credit. See the package
// documentation for the order, the credit rule and the call protocol.
//
// Locking: none inside; the caller must serialise all calls.
type Queue[T any] struct {
	h        entries[T]
	credit   int
	inFlight int
	seq      uint64 // push counter, for FIFO among equal (Priority, Key)

	// INVARIANT: 0 <= inFlight.
	// INVARIANT: inFlight <= credit, or exactly one item handed out by
	// Next has not yet been returned by Done (the queue cannot tell which
	// items Done returns, only their bytes, so this one is the caller's to
	// keep: Done must return exactly what Next handed out).
}

// New returns an empty queue that keeps at most credit bytes in flight.
// It panics if credit <= 0.
func New[T any](credit int) *Queue[T] {
	if credit <= 0 {
		panic(fmt.Sprintf("scheduler: New: credit %d, want > 0", credit))
	}
	return &Queue[T]{credit: credit}
}

// Push queues it. It panics if it.Bytes <= 0.
func (q *Queue[T]) Push(it Item[T]) {
	if it.Bytes <= 0 {
		panic(fmt.Sprintf("scheduler: Push key %v: bytes %d, want > 0", it.Key, it.Bytes))
	}
	q.h = append(q.h, entry[T]{item: it, seq: q.seq})
	q.seq++
	// Sift the new last element up. Fix rather than heap.Push, which would
	// box the entry in an interface and allocate on every call.
	heap.Fix(&q.h, len(q.h)-1)
}

// Next hands out the head of the queue and charges its Bytes against the
// credit, if InFlight()+head.Bytes <= Credit() or nothing is in flight.
// Otherwise, or if the queue is empty, it returns false and changes
// nothing: call Next again after Done or Push.
func (q *Queue[T]) Next() (Item[T], bool) {
	n := len(q.h)
	if n == 0 {
		return Item[T]{}, false
	}
	head := q.h[0].item
	// Written as a subtraction so that it cannot overflow; credit-inFlight
	// is negative while an oversize item is in flight alone.
	if q.inFlight != 0 && head.Bytes > q.credit-q.inFlight {
		return Item[T]{}, false // strict: nothing overtakes a blocked head
	}
	// heap.Pop without its interface boxing: move the last entry to the
	// root, drop the old root, sift down.
	q.h[0] = q.h[n-1]
	q.h[n-1] = entry[T]{} // let go of Value for the GC
	q.h = q.h[:n-1]
	if n > 1 {
		heap.Fix(&q.h, 0)
	}
	q.inFlight += head.Bytes
	return head, true
}

// Done returns bytes of credit: call it with an item's Bytes once the item
// handed out by Next has gone. It panics if bytes is negative or larger
// than InFlight(). Done(0) does nothing.
func (q *Queue[T]) Done(bytes int) {
	if bytes < 0 || bytes > q.inFlight {
		panic(fmt.Sprintf("scheduler: Done(%d) with %d bytes in flight", bytes, q.inFlight))
	}
	q.inFlight -= bytes
}

// Drain removes every queued item, in no particular order, without
// charging any credit, and returns them: for a caller that is failing all
// pending work. Items already in flight are unaffected.
func (q *Queue[T]) Drain() []Item[T] {
	out := make([]Item[T], len(q.h))
	for i := range q.h {
		out[i] = q.h[i].item
	}
	clear(q.h)
	q.h = q.h[:0]
	return out
}

// Len returns the number of items queued and not yet handed out by Next.
func (q *Queue[T]) Len() int { return len(q.h) }

// InFlight returns the bytes handed out by Next and not yet returned by Done.
func (q *Queue[T]) InFlight() int { return q.inFlight }

// Credit returns the most bytes the queue keeps in flight, as given to New.
func (q *Queue[T]) Credit() int { return q.credit }

type entry[T any] struct {
	item Item[T]
	seq  uint64
}

// entries is a min-heap under before, for container/heap. Queue calls only
// heap.Fix on it; Push and Pop are there to satisfy heap.Interface.
type entries[T any] []entry[T]

// before reports whether a leaves the queue before b: larger Priority,
// then smaller Key, then earlier push.
func (a *entry[T]) before(b *entry[T]) bool {
	if a.item.Priority != b.item.Priority {
		return a.item.Priority > b.item.Priority
	}
	if a.item.Key != b.item.Key {
		return a.item.Key < b.item.Key
	}
	return a.seq < b.seq
}

func (h entries[T]) Len() int           { return len(h) }
func (h entries[T]) Less(i, j int) bool { return h[i].before(&h[j]) }
func (h entries[T]) Swap(i, j int)      { h[i], h[j] = h[j], h[i] }
func (h *entries[T]) Push(x any)        { *h = append(*h, x.(entry[T])) }
func (h *entries[T]) Pop() any {
	old := *h
	n := len(old)
	e := old[n-1]
	old[n-1] = entry[T]{}
	*h = old[:n-1]
	return e
}
