package scalemodel

import "math"

// network is a fluid model of the links: every active flow moves at a rate
// that the links' capacities share max-min fairly (progressive filling),
// each flow weighted by how many members it has on a link. A flow with m
// members on a link stands for m identical transfers that move in lockstep
// (the same partition pushed by m symmetric worker machines), so it takes m
// shares of that link.
//
// Locking: none; the simulation is single-threaded.
type network struct {
	caps  []float64 // bytes/s of each link; +Inf for none
	flows []*flow   // active flows (sent < limit)
	dirty bool      // rates must be recomputed

	// scratch for rates
	rem    []float64
	weight []float64
}

// flow is one transfer (or a group of lockstep transfers) over some links.
type flow struct {
	links   []int     // the links it crosses
	members []float64 // its members on each of links
	cap     float64   // most bytes/s per member (a single TCP stream's), +Inf for none

	sent  float64 // bytes per member so far
	limit float64 // it stops (and reached is called) when sent reaches limit
	total float64 // bytes per member in all

	rate   float64 // bytes/s per member, set by rates
	frozen bool
	active bool

	// reached is called when sent reaches limit; it may raise limit (the
	// flow goes on) or leave it (the flow stops until activate).
	reached func(f *flow)
}

func newNetwork(caps []float64) *network {
	return &network{caps: caps, rem: make([]float64, len(caps)), weight: make([]float64, len(caps))}
}

// activate puts f among the moving flows, if it has bytes to move.
func (n *network) activate(f *flow) {
	if f.active || f.sent >= f.limit {
		return
	}
	f.active = true
	n.flows = append(n.flows, f)
	n.dirty = true
}

// rates shares the links max-min fairly among the active flows.
func (n *network) rates() {
	n.dirty = false
	copy(n.rem, n.caps)
	for _, f := range n.flows {
		f.rate, f.frozen = 0, false
	}
	unfrozen := len(n.flows)
	level := 0.0
	for unfrozen > 0 {
		clear(n.weight)
		for _, f := range n.flows {
			if f.frozen {
				continue
			}
			for i, l := range f.links {
				n.weight[l] += f.members[i]
			}
		}
		// the smallest raise of the common level that fills a link or
		// reaches a flow's cap
		step := math.Inf(1)
		for l, w := range n.weight {
			if w > 0 {
				step = min(step, n.rem[l]/w)
			}
		}
		for _, f := range n.flows {
			if !f.frozen {
				step = min(step, f.cap-level)
			}
		}
		if math.IsInf(step, 1) {
			for _, f := range n.flows {
				if !f.frozen {
					f.rate, f.frozen = math.Inf(1), true
				}
			}
			return
		}
		step = max(step, 0)
		level += step
		for l, w := range n.weight {
			if w > 0 {
				n.rem[l] -= step * w
			}
		}
		for _, f := range n.flows {
			if f.frozen {
				continue
			}
			full := level >= f.cap*(1-1e-12)
			for _, l := range f.links {
				if n.rem[l] <= n.caps[l]*1e-12 {
					full = true
					break
				}
			}
			if full {
				f.rate, f.frozen = level, true
				unfrozen--
			}
		}
	}
}

// next returns the time from now until the first active flow reaches its
// limit (+Inf if none moves).
func (n *network) next() float64 {
	if n.dirty {
		n.rates()
	}
	dt := math.Inf(1)
	for _, f := range n.flows {
		if f.rate > 0 {
			dt = min(dt, (f.limit-f.sent)/f.rate)
		}
	}
	return dt
}

// advance moves every active flow by dt and calls reached for those at
// their limit, in the order they became active.
func (n *network) advance(dt float64) {
	var done []*flow
	for _, f := range n.flows {
		if math.IsInf(f.rate, 1) {
			f.sent = f.limit
		} else {
			f.sent += f.rate * dt
		}
		// a relative tolerance: float steps never land exactly
		if f.sent >= f.limit-1e-9*max(1, f.limit) {
			f.sent = f.limit
			done = append(done, f)
		}
	}
	if len(done) == 0 {
		return
	}
	n.dirty = true
	keep := n.flows[:0]
	for _, f := range n.flows {
		if f.sent < f.limit {
			keep = append(keep, f)
		} else {
			f.active = false
		}
	}
	clear(n.flows[len(keep):])
	n.flows = keep
	for _, f := range done {
		f.reached(f)
	}
}
