package scalemodel

import (
	"fmt"
	"math"
	"math/rand"
	"slices"

	"github.com/gobps/gobps/proto"
	"github.com/gobps/gobps/scheduler"
)

// Result is one method's predicted iteration.
type Result struct {
	Method    string  // gobps, ring or tree
	Iteration float64 // seconds per iteration (the median over Iterations)
	Compute   float64 // forward and backward alone, seconds
	Exposed   float64 // Iteration − Compute: communication backprop did not hide
	CommBound float64 // the closed-form bandwidth bound of the gradient exchange, seconds
	Bytes     int     // gradient bytes per worker per iteration
	Grouped   bool    // the worker machines were simulated in lockstep (Cluster.Grouped)
}

// part is one partition of one tensor: its place, and the server's state
// of it in the iteration being simulated.
type part struct {
	key    proto.Key
	tensor int
	bytes  int
	server int
	owner  int // the local rank that sums it over the machine's GPUs and pushes it

	arrived []int     // per chunk: the pipelines whose push of it is in
	sumEnd  []float64 // per chunk: when the server has added in all that is in
	avail   float64   // answer bytes the server has summed
	answers []*flow   // per pipeline
}

// pipeline is the engine of one worker machine, or of a group of worker
// machines that move in lockstep (see Cluster.Grouped).
type pipeline struct {
	machines []int // the worker machines it stands for
	q        *scheduler.Queue[*job]
	d2h      fifo   // each GPU's copies to host memory (all GPUs alike, in parallel)
	owners   []fifo // each local rank's sums of the partitions it owns
	h2d      fifo   // each GPU's copies of the sums back
	lanes    []lane
	done     int // partitions whose sum is back
}

type lane struct {
	busy bool
	wait []*job
}

// job is one partition in one pipeline.
type job struct {
	k        *part
	pl       *pipeline
	pushed   float64 // push bytes the server has received
	push     *flow
	released bool // its credit is back
}

// psPlan is what does not change from one iteration to the next: the
// servers, the links and where each key goes.
type psPlan struct {
	c        Cluster
	m, local int // worker machines, GPUs each
	nServers int
	host     []int // each server's machine; worker machines are 0..m-1
	caps     []float64
	keys     []part // in model (declaration) order
}

func planPS(c Cluster, mod Model) (*psPlan, error) {
	m, local := c.machines()
	p := &psPlan{c: c, m: m, local: local}
	var weights []float64
	switch c.Placement {
	case Dedicated:
		for i := 0; i < c.Servers; i++ {
			p.host = append(p.host, m+i)
		}
	case Colocated:
		for i := 0; i < m; i++ {
			p.host = append(p.host, i)
		}
	case Mixed:
		x := proto.MixedShare(m, c.Servers)
		for i := 0; i < m; i++ {
			p.host = append(p.host, i)
			weights = append(weights, (1-x)/float64(m))
		}
		for i := 0; i < c.Servers; i++ {
			p.host = append(p.host, m+i)
			weights = append(weights, x/float64(c.Servers))
		}
	default:
		return nil, fmt.Errorf("scalemodel: unknown placement %v", c.Placement)
	}
	p.nServers = len(p.host)
	machines := m
	for _, h := range p.host {
		machines = max(machines, h+1)
	}
	p.caps = make([]float64, 2*machines) // 2i: machine i's uplink, 2i+1: its downlink
	for i := range p.caps {
		p.caps[i] = min(c.linkBytes(), rate(c.EngineCap))
	}
	b := proto.NewBalancer(p.nServers)
	if weights != nil {
		b = proto.NewWeightedBalancer(weights)
	}
	owners := proto.NewBalancer(local) // core/local spreads owners by bytes
	for t, l := range mod.Layers {
		ranges, err := proto.Partition(l.Bytes, c.PartitionBytes)
		if err != nil {
			return nil, fmt.Errorf("scalemodel: layer %s: %w", l.Name, err)
		}
		for j, r := range ranges {
			p.keys = append(p.keys, part{key: proto.Key(uint64(t)<<32 | uint64(j)), tensor: t, bytes: r.Len,
				server: b.Assign(uint64(r.Len)), owner: owners.Assign(uint64(r.Len))})
		}
	}
	return p, nil
}

// grouped reports whether the simulation moves all worker machines in
// lockstep (one pipeline for all), rather than one pipeline each.
func (c Cluster) grouped() bool {
	m, _ := c.machines()
	return c.Grouped || m > exactMachines && !c.Exact
}

// exactMachines is the most worker machines simulated one by one unless
// Grouped is set: the cost of the per-machine simulation grows with the
// square of the machines, and beyond this it takes seconds.
const exactMachines = 16

// links returns the links a push from the machines of pl to server s
// crosses, with the members on each (machines that share the server's
// host send over loopback and cross none), and those of the answers.
func (p *psPlan) links(machines []int, s int) (push []int, pushM []float64, ans []int, ansM []float64) {
	h := p.host[s]
	remote := 0
	for _, w := range machines {
		if w == h {
			continue
		}
		remote++
		push = append(push, 2*w)
		pushM = append(pushM, 1)
		ans = append(ans, 2*w+1)
		ansM = append(ansM, 1)
	}
	if remote > 0 {
		push = append(push, 2*h+1)
		pushM = append(pushM, float64(remote))
		ans = append(ans, 2*h)
		ansM = append(ansM, float64(remote))
	}
	return push, pushM, ans, ansM
}

// SimulatePS predicts one gobps sync iteration of mod on c.
func SimulatePS(c Cluster, mod Model) (Result, error) {
	if err := c.Validate(); err != nil {
		return Result{}, err
	}
	if err := mod.Validate(); err != nil {
		return Result{}, err
	}
	c = c.withDefaults()
	p, err := planPS(c, mod)
	if err != nil {
		return Result{}, err
	}
	rng := rand.New(rand.NewSource(c.Seed))
	its := make([]float64, 0, c.Iterations)
	comps := make([]float64, 0, c.Iterations)
	for range c.Iterations {
		scale := jitter(rng, c.Jitter, p.m)
		t, err := p.iteration(mod, scale)
		if err != nil {
			return Result{}, err
		}
		its = append(its, t)
		comps = append(comps, mod.Compute()*scale)
	}
	it, compute := median(its), median(comps)
	return Result{Method: "gobps", Iteration: it, Compute: compute, Exposed: max(0, it-compute),
		CommBound: PSBound(c, mod.Bytes()), Bytes: mod.Bytes(), Grouped: c.grouped()}, nil
}

// jitter draws the slowest of m machines' compute scales.
func jitter(rng *rand.Rand, j float64, m int) float64 {
	if j <= 0 {
		return 1
	}
	worst := 0.0
	for range m {
		worst = max(worst, rng.Float64()*j)
	}
	return 1 + worst
}

func median(v []float64) float64 {
	s := slices.Clone(v)
	slices.Sort(s)
	return s[(len(s)-1)/2]
}

// iteration simulates one iteration; every worker machine's backprop is
// scaled by scale. It returns the time from the start of the forward pass
// to the later of the end of backprop and the last sum in GPU memory.
func (p *psPlan) iteration(mod Model, scale float64) (float64, error) {
	c := p.c
	s := &sim{net: newNetwork(p.caps)}
	sumRate := c.Profile.SumBytes * float64(c.EngineThreads) // 0: free
	chunk := float64(c.ChunkBytes)
	loop := math.Inf(1) // a push to a server on the same machine
	// the overhead of a push_pull, half when the push leaves, half when
	// the answer is in
	over := c.Profile.MessageOverhead / 2

	var pls []*pipeline
	if c.grouped() {
		all := make([]int, p.m)
		for i := range all {
			all[i] = i
		}
		pls = []*pipeline{{machines: all}}
	} else {
		for i := range p.m {
			pls = append(pls, &pipeline{machines: []int{i}})
		}
	}
	type route struct {
		push, ans   []int
		pushM, ansM []float64
	}
	routes := make([][]route, len(pls)) // per pipeline, per server
	for i, pl := range pls {
		pl.q = scheduler.New[*job](c.CreditBytes)
		pl.owners = make([]fifo, p.local)
		pl.lanes = make([]lane, p.nServers*c.Lanes)
		routes[i] = make([]route, p.nServers)
		for sv := range p.nServers {
			r := &routes[i][sv]
			r.push, r.pushM, r.ans, r.ansM = p.links(pl.machines, sv)
		}
	}
	plIndex := map[*pipeline]int{}
	for i, pl := range pls {
		plIndex[pl] = i
	}
	keys := slices.Clone(p.keys)
	nChunks := func(k *part) int { return (k.bytes + c.ChunkBytes - 1) / c.ChunkBytes }
	for i := range keys {
		k := &keys[i]
		k.arrived = make([]int, nChunks(k))
		k.sumEnd = make([]float64, nChunks(k))
		k.answers = make([]*flow, len(pls))
	}
	servers := make([]fifo, p.nServers)
	laneOf := func(j *job) *lane {
		return &j.pl.lanes[j.k.server*c.Lanes+int(uint64(j.k.key)%uint64(c.Lanes))]
	}

	var dispatch func(pl *pipeline)
	var startPush, release func(j *job)
	sndbuf := float64(max(0, c.SendBuffer))
	end := 0.0

	answerReached := func(k *part, pl *pipeline) func(f *flow) {
		return func(f *flow) {
			if f.sent < f.total {
				return // waits for the server's next summed chunk
			}
			at := s.now + c.Latency + over
			if c.PCIe > 0 {
				at = pl.h2d.take(at, float64(k.bytes)/c.PCIe)
			}
			s.at(at, func() {
				end = max(end, s.now)
				pl.done++
			})
		}
	}
	summed := func(k *part, n float64) {
		k.avail += n
		for i, pl := range pls {
			f := k.answers[i]
			if f == nil {
				r := routes[i][k.server]
				f = &flow{links: r.ans, members: r.ansM, cap: loop, total: float64(k.bytes), reached: answerReached(k, pl)}
				k.answers[i] = f
			}
			f.limit = k.avail
			s.net.activate(f)
		}
	}
	pushReached := func(j *job) func(f *flow) {
		return func(f *flow) {
			k := j.k
			ci := int(j.pushed / chunk)
			n := min(chunk, f.total-j.pushed)
			j.pushed += n
			// the server adds each contribution in as it arrives, on the
			// key's engine thread; the chunk is summed when all are in
			svc := 0.0
			if sumRate > 0 {
				svc = float64(len(j.pl.machines)) * n / sumRate
			}
			k.sumEnd[ci] = max(k.sumEnd[ci], servers[k.server].take(s.now, svc))
			k.arrived[ci]++
			if k.arrived[ci] == len(pls) {
				s.at(k.sumEnd[ci], func() { summed(k, n) })
			}
			release(j)
			if j.pushed < f.total {
				f.limit = min(f.total, f.limit+chunk)
				s.net.activate(f)
				return
			}
			// the whole push is in: the connection takes the next
			l := laneOf(j)
			l.busy = false
			if len(l.wait) > 0 {
				next := l.wait[0]
				l.wait = l.wait[1:]
				startPush(next)
			}
			dispatch(j.pl)
		}
	}
	// release gives a push's credit back once the engine's send has
	// returned: when what is left of it fits in the socket's send buffer
	release = func(j *job) {
		if j.released || float64(j.k.bytes)-j.pushed > sndbuf {
			return
		}
		j.released = true
		j.pl.q.Done(j.k.bytes)
		dispatch(j.pl)
	}
	startPush = func(j *job) {
		laneOf(j).busy = true
		r := routes[plIndex[j.pl]][j.k.server]
		j.push = &flow{links: r.push, members: r.pushM, cap: loop,
			total: float64(j.k.bytes), limit: min(float64(j.k.bytes), chunk), reached: pushReached(j)}
		s.at(s.now+over+c.Latency, func() {
			s.net.activate(j.push)
			release(j)
		})
	}
	dispatch = func(pl *pipeline) {
		for {
			it, ok := pl.q.Next()
			if !ok {
				return
			}
			j := it.Value
			if l := laneOf(j); l.busy {
				l.wait = append(l.wait, j)
				continue
			}
			startPush(j)
		}
	}

	// backprop hands out gradients from the last layer to the first
	fwd, bwd := mod.Forward()*scale, 0.0
	ready := make([]float64, len(mod.Layers))
	for t := len(mod.Layers) - 1; t >= 0; t-- {
		bwd += mod.Layers[t].Backward * scale
		ready[t] = fwd + bwd
	}
	compute := fwd + bwd
	order := make([]int, len(keys))
	for i := range order {
		order[i] = i
	}
	// the last layer's gradient first; a tensor's partitions in order
	slices.SortStableFunc(order, func(a, b int) int { return keys[b].tensor - keys[a].tensor })
	localOnly := p.m == 1 && p.local > 1 && !c.ForceDistributed
	for _, pl := range pls {
		for _, i := range order {
			k := &keys[i]
			at := ready[k.tensor]
			// local aggregation: every GPU copies it to host memory, then
			// its owner adds the others' copies into its own
			if c.PCIe > 0 {
				at = pl.d2h.take(at, float64(k.bytes)/c.PCIe)
			}
			if p.local > 1 && c.Profile.SumBytes > 0 {
				at = pl.owners[k.owner].take(at, float64(p.local-1)*float64(k.bytes)/c.Profile.SumBytes)
			}
			if localOnly {
				// one machine: the owner's sum is the whole sum, published
				// from shared memory (issue 19), no server round trip
				if c.PCIe > 0 {
					at = pl.h2d.take(at, float64(k.bytes)/c.PCIe)
				}
				s.at(at, func() {
					end = max(end, s.now)
					pl.done++
				})
				continue
			}
			j := &job{k: k, pl: pl}
			s.at(at, func() {
				pl.q.Push(scheduler.Item[*job]{Key: k.key, Priority: -k.tensor, Bytes: k.bytes, Value: j})
				dispatch(pl)
			})
		}
	}
	s.run()
	for _, pl := range pls {
		if pl.done != len(keys) {
			return 0, fmt.Errorf("scalemodel: internal: %d of %d partitions finished", pl.done, len(keys))
		}
	}
	return max(end, compute), nil
}
