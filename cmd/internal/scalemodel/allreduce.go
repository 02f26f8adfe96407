package scalemodel

import (
	"math"
	"math/bits"
	"math/rand"
)

// SimulateRing predicts one iteration with ring all-reduce (NCCL's ring,
// Horovod, PyTorch DDP): gradients are fused into buckets of BucketBytes
// in backprop order, and each bucket is all-reduced, one after another,
// as soon as backprop has produced it and the one before is done.
func SimulateRing(c Cluster, mod Model) (Result, error) {
	return simulateAllReduce(c, mod, "ring", ringTime)
}

// SimulateTree is SimulateRing with NCCL's double binary tree between the
// machines.
func SimulateTree(c Cluster, mod Model) (Result, error) {
	return simulateAllReduce(c, mod, "tree", treeTime)
}

func simulateAllReduce(c Cluster, mod Model, method string, op func(Cluster, int) float64) (Result, error) {
	if err := c.Validate(); err != nil {
		return Result{}, err
	}
	if err := mod.Validate(); err != nil {
		return Result{}, err
	}
	c = c.withDefaults()
	m, _ := c.machines()
	rng := rand.New(rand.NewSource(c.Seed))
	var its, comps []float64
	for range c.Iterations {
		scale := jitter(rng, c.Jitter, m)
		fwd := mod.Forward() * scale
		t := fwd
		end := 0.0
		bucket := 0
		flush := func() {
			if bucket > 0 {
				end = max(end, t) + op(c, bucket)
				bucket = 0
			}
		}
		for i := len(mod.Layers) - 1; i >= 0; i-- {
			t += mod.Layers[i].Backward * scale
			bucket += mod.Layers[i].Bytes
			if bucket >= c.BucketBytes {
				flush()
			}
		}
		flush()
		its = append(its, max(t, end))
		comps = append(comps, t)
	}
	it, compute := median(its), median(comps)
	bound := RingBound(c, mod.Bytes())
	if method == "tree" {
		bound = TreeBound(c, mod.Bytes())
	}
	return Result{Method: method, Iteration: it, Compute: compute, Exposed: max(0, it-compute), CommBound: bound, Bytes: mod.Bytes()}, nil
}

// ringTime is the time of one ring all-reduce of size bytes over all the
// GPUs, step by step: 2(N−1) steps (reduce-scatter, then all-gather), in
// each of which every GPU sends one N-th of the data to the next and
// receives one from the one before, all links at once. A step lasts as
// long as its slowest link: a machine's NIC when the ring spans machines
// (each machine's NIC carries one segment each way per step), NVLink
// within one machine; plus the latency of a message.
func ringTime(c Cluster, size int) float64 {
	m, _ := c.machines()
	n := c.GPUs
	if n == 1 {
		return 0
	}
	seg := float64(size) / float64(n)
	link := rate(c.Intra)
	lat := 0.0
	if m > 1 {
		link = min(link, c.linkBytes())
		lat = c.Latency
	}
	t := 0.0
	for range 2 * (n - 1) {
		t += lat + seg/link
	}
	return t
}

// treeTime is one all-reduce with NCCL's double binary tree between the
// machines (each machine first reduces over NVLink and last broadcasts
// over it). The data goes in chunks of TreeChunkBytes, half of each over
// each tree; a chunk climbs one level per step and comes down one level
// per step. In a step a machine's NIC takes in up to one chunk of reduce
// traffic (half a chunk from each of two children in the tree where it is
// inside) and one of broadcast (half a chunk from its parent in each tree),
// and sends as much out.
func treeTime(c Cluster, size int) float64 {
	m, local := c.machines()
	t := 0.0
	if local > 1 {
		// reduce and broadcast along a chain of the machine's GPUs, pipelined
		t += 2 * float64(size) / rate(c.Intra)
	}
	if m == 1 {
		return t
	}
	chunk := float64(min(c.TreeChunkBytes, size))
	chunks := int(math.Ceil(float64(size) / chunk))
	depth := bits.Len(uint(m - 1)) // levels of a binary tree over m machines
	nic := c.linkBytes()
	for s := range chunks + 2*depth - 1 {
		load := 0.0
		if s < chunks+depth-1 && s >= 0 { // some chunk is climbing
			load += chunk
		}
		if s >= depth && s-depth < chunks+depth-1 { // some chunk is coming down
			load += chunk
		}
		t += c.Latency + load/nic
	}
	return t
}
