package scalemodel

import (
	"math"
	"testing"
)

// within reports whether got is within rel of want.
func within(got, want, rel float64) bool {
	return math.Abs(got-want) <= rel*math.Abs(want)
}

func gbit(x float64) float64 { return x * 1e9 }

// One worker and one dedicated server: the partitions go one way and the
// sums the other, on different directions of the full-duplex links, so
// the iteration is the single-link bound M/B plus the drain: the last
// 256 KiB piece of each lane's answer (2 lanes), which can leave only once
// the last push has arrived.
func TestOneWorkerOneServerIsTheLinkBound(t *testing.T) {
	for _, tc := range []struct {
		desc  string
		bytes int
		link  float64
	}{
		{"64 MiB at 1 Gbit/s", 64 << 20, gbit(1)},
		{"16 MiB at 200 Mbit/s", 16 << 20, 200e6},
		{"256 MiB at 100 Gbit/s", 256 << 20, gbit(100)},
	} {
		c := Cluster{GPUs: 1, Placement: Dedicated, Servers: 1, LinkBits: tc.link}
		r, err := SimulatePS(c, Tensor(tc.bytes))
		if err != nil {
			t.Fatal(err)
		}
		bound := float64(tc.bytes) / (tc.link / 8)
		if r.CommBound != bound {
			t.Errorf("%s: bound %v, want %v", tc.desc, r.CommBound, bound)
		}
		piece := float64(256<<10) / (tc.link / 8)
		if r.Iteration < bound || r.Iteration > (bound+2*piece)*(1+1e-9) {
			t.Errorf("%s: iteration %v, want the bound %v plus at most two pieces (%v)", tc.desc, r.Iteration, bound, 2*piece)
		}
	}
}

// The step-by-step ring gives its closed form: 2(N−1)/N·M/B plus 2(N−1)
// latencies, at any GPU count, on one machine (NVLink) or many (the NIC).
func TestRingIsItsClosedForm(t *testing.T) {
	for _, tc := range []struct {
		desc        string
		gpus, local int
		link, intra float64
		lat         float64
	}{
		{"4 machines of 1 GPU, 25 Gbit/s", 4, 1, gbit(25), 0, 0},
		{"64 GPUs in 8 machines, 100 Gbit/s, 5 µs", 64, 8, gbit(100), 150e9, 5e-6},
		{"1024 GPUs in 128 machines, 200 Gbit/s, 2 µs", 1024, 8, gbit(200), 150e9, 2e-6},
		{"8 GPUs in one machine over NVLink", 8, 8, gbit(100), 150e9, 5e-6},
	} {
		c := Cluster{GPUs: tc.gpus, GPUsPerMachine: tc.local, LinkBits: tc.link, Intra: tc.intra, Latency: tc.lat, BucketBytes: 1 << 40}
		const size = 100 << 20
		got := ringTime(c.withDefaults(), size)
		n := float64(tc.gpus)
		b := min(tc.link/8, tc.intra)
		lat := tc.lat
		if tc.gpus == tc.local {
			b, lat = tc.intra, 0
		}
		want := 2*(n-1)/n*size/b + 2*(n-1)*lat
		if !within(got, want, 1e-9) {
			t.Errorf("%s: ring %v, want %v", tc.desc, got, want)
		}
		// one bucket, no compute: the iteration is the ring
		r, err := SimulateRing(c, Tensor(size))
		if err != nil {
			t.Fatal(err)
		}
		if !within(r.Iteration, want, 1e-9) {
			t.Errorf("%s: SimulateRing %v, want %v", tc.desc, r.Iteration, want)
		}
		if tc.lat == 0 && !within(r.CommBound, want, 1e-9) {
			t.Errorf("%s: RingBound %v, want %v", tc.desc, r.CommBound, want)
		}
	}
}

// With unlimited links, PCIe, NVLink, summation and loopback, every
// method takes exactly the compute time.
func TestInfiniteBandwidthLeavesCompute(t *testing.T) {
	for _, name := range PresetNames() {
		mod, err := Preset(name)
		if err != nil {
			t.Fatal(err)
		}
		for _, pl := range []Placement{Dedicated, Colocated, Mixed} {
			c := Cluster{GPUs: 64, GPUsPerMachine: 8, Placement: pl, Servers: 4}
			for _, sim := range []func(Cluster, Model) (Result, error){SimulatePS, SimulateRing, SimulateTree} {
				r, err := sim(c, mod)
				if err != nil {
					t.Fatal(err)
				}
				// equal but for the order of float additions
				if !within(r.Iteration, mod.Compute(), 1e-12) || r.Exposed > 1e-12*mod.Compute() {
					t.Errorf("%s %v %s: iteration %v exposed %v, want the compute %v and 0", name, pl, r.Method, r.Iteration, r.Exposed, mod.Compute())
				}
			}
		}
	}
}

// With dedicated servers every worker machine does the same thing at the
// same time, so one pipeline in lockstep gives what one pipeline per
// machine gives.
func TestLockstepIsExactForDedicatedServers(t *testing.T) {
	mod, err := Preset("resnet50")
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		desc     string
		machines int
		servers  int
		link     float64
	}{
		{"4 machines, 4 servers, 25 Gbit/s", 4, 4, gbit(25)},
		{"8 machines, 3 servers, 10 Gbit/s", 8, 3, gbit(10)},
		{"6 machines, 12 servers, 100 Gbit/s", 6, 12, gbit(100)},
	} {
		c := Cluster{GPUs: 8 * tc.machines, GPUsPerMachine: 8, Placement: Dedicated, Servers: tc.servers, LinkBits: tc.link,
			Latency: 10e-6, PCIe: 12e9, Profile: Profile{SumBytes: 5e9, MessageOverhead: 50e-6}}
		each, err := SimulatePS(c, mod)
		if err != nil {
			t.Fatal(err)
		}
		c.Grouped = true
		lock, err := SimulatePS(c, mod)
		if err != nil {
			t.Fatal(err)
		}
		if each.Grouped || !lock.Grouped {
			t.Fatalf("%s: Grouped %v and %v, want false and true", tc.desc, each.Grouped, lock.Grouped)
		}
		if !within(lock.Iteration, each.Iteration, 1e-9) {
			t.Errorf("%s: lockstep %v, one pipeline per machine %v", tc.desc, lock.Iteration, each.Iteration)
		}
	}
}

// A fixed seed gives a fixed result, also with jitter; another seed
// another one; and no jitter ignores the seed.
func TestSeed(t *testing.T) {
	mod, err := Preset("bert-large")
	if err != nil {
		t.Fatal(err)
	}
	c := Cluster{GPUs: 32, GPUsPerMachine: 8, Placement: Colocated, LinkBits: gbit(25), Latency: 10e-6, PCIe: 12e9,
		Profile: Profile{SumBytes: 5e9, MessageOverhead: 50e-6}, Jitter: 0.1, Seed: 7, Iterations: 3}
	var first [3]Result
	for i, sim := range []func(Cluster, Model) (Result, error){SimulatePS, SimulateRing, SimulateTree} {
		a, err := sim(c, mod)
		if err != nil {
			t.Fatal(err)
		}
		b, err := sim(c, mod)
		if err != nil {
			t.Fatal(err)
		}
		if a != b {
			t.Errorf("%s: seed 7 gave %+v, then %+v", a.Method, a, b)
		}
		first[i] = a
	}
	c.Seed = 8
	other, err := SimulatePS(c, mod)
	if err != nil {
		t.Fatal(err)
	}
	if other.Iteration == first[0].Iteration {
		t.Errorf("seeds 7 and 8 with 10%% jitter both gave %v", other.Iteration)
	}
	c.Jitter = 0
	a, _ := SimulatePS(c, mod)
	c.Seed = 9
	b, _ := SimulatePS(c, mod)
	if a != b {
		t.Errorf("no jitter: seed 8 gave %v, seed 9 %v", a.Iteration, b.Iteration)
	}
}

// The presets have the published parameter counts (torchvision's
// resnet50 and vgg16, GPT-2 XL), and their compute the published
// multiply-adds per sample.
func TestPresets(t *testing.T) {
	for _, tc := range []struct {
		name    string
		params  int
		tensors int
	}{
		{"resnet50", 25_557_032, 161},
		{"vgg16", 138_357_544, 32},
		{"gpt2-1.5b", 1_557_611_200, 580},
	} {
		m, err := Preset(tc.name)
		if err != nil {
			t.Fatal(err)
		}
		if got := m.Bytes() / 4; got != tc.params {
			t.Errorf("%s: %d parameters, want %d", tc.name, got, tc.params)
		}
		if len(m.Layers) != tc.tensors {
			t.Errorf("%s: %d tensors, want %d", tc.name, len(m.Layers), tc.tensors)
		}
		if err := m.Validate(); err != nil {
			t.Error(err)
		}
	}
	// compute: forward multiply-adds per image, from the shapes, against
	// the usual 4.1 G (ResNet-50) and 15.5 G (VGG-16)
	for _, tc := range []struct {
		name  string
		gmacs float64
	}{{"resnet50", 4.1}, {"vgg16", 15.5}} {
		m, _ := Preset(tc.name)
		gmacs := m.Forward() * v100FP32Conv / 64 / 2 / 1e9
		if !within(gmacs, tc.gmacs, 0.03) {
			t.Errorf("%s: %.2f G multiply-adds per image, want about %.1f", tc.name, gmacs, tc.gmacs)
		}
		if !within(m.Compute(), 3*m.Forward(), 1e-12) {
			t.Errorf("%s: backward is not twice forward", tc.name)
		}
	}
}

// Unlimited links but a slow server: n machines' pushes to one server
// are summed at its engine threads' rate, n·M/(threads·rate).
func TestSummationBound(t *testing.T) {
	const size = 64 << 20
	c := Cluster{GPUs: 4, GPUsPerMachine: 1, Placement: Dedicated, Servers: 1, EngineThreads: 2,
		Profile: Profile{SumBytes: 1e9}}
	r, err := SimulatePS(c, Tensor(size))
	if err != nil {
		t.Fatal(err)
	}
	want := 4.0 * size / 2e9
	if !within(r.Iteration, want, 1e-9) {
		t.Errorf("iteration %v, want %v", r.Iteration, want)
	}
}

// Max-min fairness: two flows share a link, a third crosses only its own
// and one of the two's other link; a flow of 3 members takes 3 shares.
func TestMaxMin(t *testing.T) {
	n := newNetwork([]float64{10, 10, 4})
	a := &flow{links: []int{0, 2}, members: []float64{1, 1}, cap: math.Inf(1), limit: 1}
	b := &flow{links: []int{0}, members: []float64{1}, cap: math.Inf(1), limit: 1}
	c := &flow{links: []int{1}, members: []float64{3}, cap: 2, limit: 1}
	for _, f := range []*flow{a, b, c} {
		n.activate(f)
	}
	n.rates()
	// a is held to 4 by link 2; b takes the rest of link 0; c's 3
	// members would share 10 but each is capped at 2
	if a.rate != 4 || b.rate != 6 || c.rate != 2 {
		t.Errorf("rates %v %v %v, want 4 6 2", a.rate, b.rate, c.rate)
	}
}

// One machine of 8 GPUs sums in shared memory and never reaches the
// servers: the link rate and the placement do not matter, unless
// ForceDistributed sends the sums through the servers.
func TestOneMachineIsLocal(t *testing.T) {
	mod, err := Preset("bert-large")
	if err != nil {
		t.Fatal(err)
	}
	var first float64
	for i, tc := range []struct {
		link float64
		pl   Placement
	}{{gbit(1), Dedicated}, {gbit(100), Dedicated}, {gbit(1), Colocated}} {
		c := Cluster{GPUs: 8, GPUsPerMachine: 8, Placement: tc.pl, LinkBits: tc.link, PCIe: 12e9, Profile: Profile{SumBytes: 10e9}}
		r, err := SimulatePS(c, mod)
		if err != nil {
			t.Fatal(err)
		}
		if i == 0 {
			first = r.Iteration
		} else if r.Iteration != first {
			t.Errorf("%v at %v bit/s: %v, want %v as at 1 Gbit/s dedicated", tc.pl, tc.link, r.Iteration, first)
		}
		if r.Iteration <= mod.Compute() {
			t.Errorf("%v: %v, want more than the compute %v (the PCIe copies and the local sums)", tc.pl, r.Iteration, mod.Compute())
		}
	}
	c := Cluster{GPUs: 8, GPUsPerMachine: 8, Placement: Dedicated, LinkBits: gbit(1), PCIe: 12e9, Profile: Profile{SumBytes: 10e9}, ForceDistributed: true}
	r, err := SimulatePS(c, mod)
	if err != nil {
		t.Fatal(err)
	}
	if want := float64(mod.Bytes()) / (gbit(1) / 8); r.Iteration < want {
		t.Errorf("forced through one dedicated server at 1 Gbit/s: %v, want at least M/B = %v", r.Iteration, want)
	}
}
