package scheduler

import (
	"cmp"
	"fmt"
	mathrand "math/rand"
	"math/rand/v2"
	"slices"
	"testing"
	"testing/quick"

	"github.com/gobps/gobps/proto"
)

// refQueue is the dumb reference: a slice kept sorted by a stable sort
// after every push, so push order breaks the remaining ties for free.
type refQueue struct {
	items    []Item[int]
	credit   int
	inFlight int
}

func (r *refQueue) push(it Item[int]) {
	r.items = append(r.items, it)
	slices.SortStableFunc(r.items, func(a, b Item[int]) int {
		if c := cmp.Compare(b.Priority, a.Priority); c != 0 {
			return c
		}
		return cmp.Compare(a.Key, b.Key)
	})
}

func (r *refQueue) next() (Item[int], bool) {
	if len(r.items) == 0 {
		return Item[int]{}, false
	}
	head := r.items[0]
	if r.inFlight+head.Bytes <= r.credit || r.inFlight == 0 {
		r.items = r.items[1:]
		r.inFlight += head.Bytes
		return head, true
	}
	return Item[int]{}, false
}

// checkAgainstReference drives a Queue and the reference with the same
// random operations and fails on the first difference. Each pushed item's
// Value is a unique id, so equal results mean the very same item.
func checkAgainstReference(t *testing.T, seed uint64, ops int) {
	t.Helper()
	rng := rand.New(rand.NewPCG(seed, 0x9e3779b97f4a7c15))
	credit := 1 + rng.IntN(200)
	maxKey := 1 + rng.IntN(10) // few keys: many ties
	q := New[int](credit)
	ref := &refQueue{credit: credit}

	var (
		pushed    int
		outgoing  []Item[int]     // handed out by Next, Done not yet called
		handedOut = map[int]int{} // id -> times handed out
	)
	fail := func(step int, format string, args ...any) {
		t.Helper()
		t.Fatalf("seed %d credit %d step %d: %s", seed, credit, step, fmt.Sprintf(format, args...))
	}
	next := func(step int) bool {
		t.Helper()
		got, gotOK := q.Next()
		want, wantOK := ref.next()
		if got != want || gotOK != wantOK {
			fail(step, "Next() = %+v, %v; reference %+v, %v", got, gotOK, want, wantOK)
		}
		if gotOK {
			outgoing = append(outgoing, got)
			handedOut[got.Value]++
		}
		return gotOK
	}
	done := func(step int) {
		t.Helper()
		// Completions arrive in any order.
		i := rng.IntN(len(outgoing))
		it := outgoing[i]
		outgoing = slices.Delete(outgoing, i, i+1)
		q.Done(it.Bytes)
		ref.inFlight -= it.Bytes
	}
	check := func(step int) {
		t.Helper()
		if q.Len() != len(ref.items) || q.InFlight() != ref.inFlight || q.Credit() != credit {
			fail(step, "Len %d InFlight %d Credit %d; reference %d %d %d",
				q.Len(), q.InFlight(), q.Credit(), len(ref.items), ref.inFlight, credit)
		}
		sum := 0
		for _, it := range outgoing {
			sum += it.Bytes
		}
		if q.InFlight() != sum {
			fail(step, "InFlight %d, outstanding items hold %d bytes", q.InFlight(), sum)
		}
		if q.InFlight() > credit && len(outgoing) != 1 {
			fail(step, "InFlight %d over credit with %d items in flight", q.InFlight(), len(outgoing))
		}
	}

	for step := range ops {
		switch r := rng.IntN(10); {
		case r < 4:
			it := Item[int]{
				Key:      proto.Key(rng.IntN(maxKey)),
				Priority: rng.IntN(5) - 2,
				Bytes:    1 + rng.IntN(credit/2+1),
				Value:    pushed,
			}
			if rng.IntN(20) == 0 {
				it.Bytes = 1 + rng.IntN(2*credit) // sometimes oversize
			}
			pushed++
			q.Push(it)
			ref.push(it)
		case r < 7:
			next(step)
		default:
			if len(outgoing) > 0 {
				done(step)
			}
		}
		check(step)
	}

	// Drain. With nothing in flight a non-empty queue must hand something
	// out: no deadlock.
	for step := ops; q.Len() > 0 || len(outgoing) > 0; step++ {
		if len(outgoing) == 0 && !next(step) {
			fail(step, "deadlock: nothing in flight, %d queued, Next refuses", q.Len())
		}
		for next(step) {
		}
		if len(outgoing) > 0 {
			done(step)
		}
		check(step)
	}
	if len(handedOut) != pushed {
		t.Fatalf("seed %d: pushed %d items, %d distinct handed out", seed, pushed, len(handedOut))
	}
	for id, n := range handedOut {
		if n != 1 || id < 0 || id >= pushed {
			t.Fatalf("seed %d: item %d handed out %d times", seed, id, n)
		}
	}
}

func TestAgainstReference(t *testing.T) {
	seeds, ops := 200, 1000
	if testing.Short() {
		seeds = 30
	}
	for seed := range uint64(seeds) {
		checkAgainstReference(t, seed, ops)
	}
}

// TestQuickAgainstReference lets testing/quick pick the seeds, from a fixed
// source so that a failure reproduces.
func TestQuickAgainstReference(t *testing.T) {
	cfg := &quick.Config{MaxCount: 100, Rand: mathrand.New(mathrand.NewSource(1))}
	if testing.Short() {
		cfg.MaxCount = 10
	}
	f := func(seed uint64, ops uint16) bool {
		checkAgainstReference(t, seed, int(ops%4096))
		return true
	}
	if err := quick.Check(f, cfg); err != nil {
		t.Fatal(err)
	}
}

func TestPushNextDoNotAllocate(t *testing.T) {
	q := New[*int](1 << 20)
	v := new(int)
	for i := range 1024 {
		q.Push(Item[*int]{Key: proto.Key(i), Priority: i % 7, Bytes: 1, Value: v})
	}
	i := 0
	allocs := testing.AllocsPerRun(1000, func() {
		q.Push(Item[*int]{Key: proto.Key(i), Priority: i % 7, Bytes: 1, Value: v})
		it, _ := q.Next()
		q.Done(it.Bytes)
		i++
	})
	if allocs != 0 {
		t.Fatalf("Push+Next+Done: %v allocations, want 0", allocs)
	}
}

func BenchmarkPushNext(b *testing.B) {
	for _, depth := range []int{0, 64, 4096} {
		b.Run(fmt.Sprintf("depth=%d", depth), func(b *testing.B) {
			rng := rand.New(rand.NewPCG(1, 2))
			q := New[int](1 << 30)
			for i := range depth {
				q.Push(Item[int]{Key: proto.Key(rng.IntN(1 << 16)), Priority: rng.IntN(64), Bytes: 1, Value: i})
			}
			b.ReportAllocs()
			i := 0
			for b.Loop() {
				q.Push(Item[int]{Key: proto.Key(i & 0xffff), Priority: i & 63, Bytes: 1, Value: i})
				it, ok := q.Next()
				if !ok {
					b.Fatal("Next refused")
				}
				q.Done(it.Bytes)
				i++
			}
		})
	}
}

func TestDrain(t *testing.T) {
	q := New[int](10)
	q.Push(Item[int]{Key: 1, Bytes: 8, Value: 1})
	q.Push(Item[int]{Key: 2, Bytes: 8, Value: 2})
	q.Push(Item[int]{Key: 3, Bytes: 8, Value: 3})
	if _, ok := q.Next(); !ok {
		t.Fatal("first Next")
	}
	got := q.Drain()
	if len(got) != 2 || q.Len() != 0 || q.InFlight() != 8 {
		t.Fatalf("Drain = %v, Len %d, InFlight %d", got, q.Len(), q.InFlight())
	}
	if got[0].Value+got[1].Value != 5 {
		t.Fatalf("drained the wrong items: %v", got)
	}
}
