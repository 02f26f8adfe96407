package scalemodel

import (
	"container/heap"
	"math"
)

// sim is the clock, the timers and the network of one simulated
// iteration. Ties in time run in the order they were scheduled, so a run
// is a pure function of its inputs.
type sim struct {
	now    float64
	timers timers
	seq    uint64
	net    *network
}

type timer struct {
	t   float64
	seq uint64
	fn  func()
}

type timers []timer

func (h timers) Len() int { return len(h) }
func (h timers) Less(i, j int) bool {
	if h[i].t != h[j].t {
		return h[i].t < h[j].t
	}
	return h[i].seq < h[j].seq
}
func (h timers) Swap(i, j int) { h[i], h[j] = h[j], h[i] }
func (h *timers) Push(x any)   { *h = append(*h, x.(timer)) }
func (h *timers) Pop() any {
	old := *h
	t := old[len(old)-1]
	*h = old[:len(old)-1]
	return t
}

// at runs fn at time t (now, if t is in the past).
func (s *sim) at(t float64, fn func()) {
	heap.Push(&s.timers, timer{t: max(t, s.now), seq: s.seq, fn: fn})
	s.seq++
}

// run advances the clock until no flow moves and no timer is left.
func (s *sim) run() {
	for {
		dt := s.net.next()
		te := math.Inf(1)
		if len(s.timers) > 0 {
			te = s.timers[0].t
		}
		if math.IsInf(dt, 1) && math.IsInf(te, 1) {
			return
		}
		if s.now+dt <= te {
			s.now += dt
			s.net.advance(dt)
			continue
		}
		s.net.advance(te - s.now)
		s.now = te
		for len(s.timers) > 0 && s.timers[0].t <= s.now {
			t := heap.Pop(&s.timers).(timer)
			t.fn()
		}
	}
}

// fifo is a resource that serves one job at a time in arrival order: a
// machine's PCIe copies, a server's summation.
type fifo struct{ free float64 }

// take books d seconds starting no earlier than now and returns the end.
func (f *fifo) take(now, d float64) float64 {
	start := max(now, f.free)
	f.free = start + d
	return f.free
}
