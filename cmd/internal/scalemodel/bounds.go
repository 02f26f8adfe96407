package scalemodel

import "github.com/gobps/gobps/proto"

// The closed-form bounds printed beside the simulation: the seconds the
// busiest NIC needs for its bytes of one gradient exchange of m bytes,
// with no latency, no compute and perfect overlap. See docs/benchmarks.md,
// "The cost model", for the derivations (n there is the number of worker
// machines here: local aggregation leaves one push per machine per key).

// PSBound: dedicated servers max(1, n/k)·M/B; co-located 2(n−1)/n·M/B;
// mixed 2n(n−1)/(n²+k(n−2))·M/B at BytePS's split.
func PSBound(c Cluster, m int) float64 {
	c = c.withDefaults()
	n, local := c.machines()
	if n == 1 && local > 1 && !c.ForceDistributed {
		return 0 // summed in shared memory, no network
	}
	M := float64(m)
	var load float64
	switch c.Placement {
	case Colocated:
		load = 2 * float64(n-1) / float64(n) * M
	case Mixed:
		x := proto.MixedShare(n, c.Servers)
		load = max(x*M+2*(1-x)*float64(n-1)/float64(n)*M, float64(n)*x*M/float64(c.Servers))
	default:
		load = max(1, float64(n)/float64(c.Servers)) * M
	}
	return load / c.linkBytes()
}

// RingBound: 2(N−1)/N·M/B over the GPUs' ring (N GPUs; each machine's NIC
// carries that much each way).
func RingBound(c Cluster, m int) float64 {
	n := c.GPUs
	if n <= 1 {
		return 0
	}
	c = c.withDefaults()
	b := c.linkBytes()
	if mm, _ := c.machines(); mm == 1 {
		b = rate(c.Intra)
	}
	return 2 * float64(n-1) / float64(n) * float64(m) / b
}

// TreeBound: 2·M/B, each machine's NIC carrying M in each direction per
// phase (the double binary tree's bandwidth is the ring's for large n).
func TreeBound(c Cluster, m int) float64 {
	c = c.withDefaults()
	if mm, _ := c.machines(); mm == 1 {
		return 2 * float64(m) / rate(c.Intra)
	}
	return 2 * float64(m) / c.linkBytes()
}
