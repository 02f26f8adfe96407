package memnet

import "time"

// Faults are the odds of a Random policy: each is the probability that
// one write gets that fault. Break and Fail exclude each other (a write
// that breaks its link does not also fail); Stall and Delay combine with
// either.
type Faults struct {
	Break float64 // the write breaks its link
	Fail  float64 // the write fails after a random part of it went through
	Stall float64 // the write stalls its direction for up to MaxStall
	Delay float64 // the write is delayed by up to MaxDelay
	// MaxStall and MaxDelay bound the drawn stalls and delays.
	MaxStall, MaxDelay time.Duration
	// LinkDelay, if set, gives each direction of each link a steady delay
	// of its own, drawn below LinkDelay, added to every write: traffic on
	// the different links between two peers (lanes) is then reordered.
	LinkDelay time.Duration
}

// Random returns a policy that draws the faults of f from seed. Each
// decision is a hash of the seed, the link's ID, the direction and the
// write's number, so the same seed gives every write the same fate
// whatever the order in which the links' writers ran.
func Random(seed uint64, f Faults) Policy {
	return func(w Write) Action {
		var a Action
		if f.LinkDelay > 0 {
			a.Delay = scale(f.LinkDelay, draw(seed, w.Link, uint64(w.Dir), ^uint64(0), 0))
		}
		u := func(i uint64) float64 { return draw(seed, w.Link, uint64(w.Dir), w.N, i) }
		switch {
		case u(1) < f.Break:
			a.Break = true
		case u(2) < f.Fail:
			a.Fail = true
			a.Keep = int(u(3) * float64(w.Bytes+1))
		}
		if u(4) < f.Stall {
			a.Stall = scale(f.MaxStall, u(5))
		}
		if u(6) < f.Delay {
			a.Delay += scale(f.MaxDelay, u(7))
		}
		return a
	}
}

func scale(d time.Duration, u float64) time.Duration { return time.Duration(u * float64(d)) }

// draw is a uniform number in [0, 1) that depends only on its arguments.
func draw(seed, link, dir, n, i uint64) float64 {
	h := mix(seed ^ 0x9e3779b97f4a7c15)
	for _, v := range [...]uint64{link, dir, n, i} {
		h = mix(h ^ v)
	}
	return float64(h>>11) / (1 << 53)
}

// mix is splitmix64's finaliser.
func mix(z uint64) uint64 {
	z += 0x9e3779b97f4a7c15
	z = (z ^ z>>30) * 0xbf58476d1ce4e5b9
	z = (z ^ z>>27) * 0x94d049bb133111eb
	return z ^ z>>31
}
