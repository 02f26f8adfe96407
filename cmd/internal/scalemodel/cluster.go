package scalemodel

import (
	"errors"
	"fmt"
	"math"

	"github.com/gobps/gobps/proto"
)

// Placement says where the summation servers run.
type Placement int

const (
	// Dedicated: Servers machines of their own, CPU only.
	Dedicated Placement = iota
	// Colocated: one server on every worker machine, sharing its NIC.
	Colocated
	// Mixed: BytePS's mixed mode, a server on every worker machine plus
	// Servers dedicated ones that get proto.MixedShare of the bytes.
	Mixed
)

func (p Placement) String() string {
	switch p {
	case Dedicated:
		return "dedicated"
	case Colocated:
		return "colocated"
	case Mixed:
		return "mixed"
	}
	return fmt.Sprintf("Placement(%d)", int(p))
}

// ParsePlacement reads dedicated, colocated (or co-located) or mixed.
func ParsePlacement(s string) (Placement, error) {
	switch s {
	case "dedicated":
		return Dedicated, nil
	case "colocated", "co-located":
		return Colocated, nil
	case "mixed":
		return Mixed, nil
	}
	return 0, fmt.Errorf("scalemodel: placement %q: want dedicated, colocated or mixed", s)
}

// Cluster is the hardware and gobps's settings. Rates are in bytes per
// second (LinkBits in bits per second, as NICs are sold); a zero rate
// means unlimited.
type Cluster struct {
	GPUs           int // workers in all (one per GPU)
	GPUsPerMachine int // workers per machine, summed locally first (local aggregation)

	Placement Placement
	Servers   int // dedicated server machines (Dedicated, Mixed); 0: as many as worker machines

	LinkBits float64 // goodput of each NIC, each way, bit/s
	Latency  float64 // one-way latency of a message between machines, seconds
	PCIe     float64 // bytes/s between one GPU and host memory, each way (0: no GPU, no copy)
	Intra    float64 // bytes/s between GPUs of one machine for all-reduce (NVLink); 0: unlimited

	Profile Profile // what calibrate measured (summation, per-message overhead, loopback)
	// EngineCap caps what a machine's processes move each way, bytes/s,
	// whatever the NIC: set it to Profile.Loopback to model gobps over TCP
	// where the CPU, not the NIC, is the limit. 0: no cap (verbs).
	EngineCap float64

	PartitionBytes int // BYTEPS_PARTITION_BYTES; 0: 4 MiB
	CreditBytes    int // BYTEPS_SCHEDULING_CREDIT in bytes; 0: 4 partitions
	Lanes          int // GOBPS_TCP_LANES; 0: 2
	EngineThreads  int // BYTEPS_SERVER_ENGINE_THREAD; 0: 4
	ChunkBytes     int // the server's receive and answer piece; 0: 256 KiB
	BucketBytes    int // all-reduce fusion buffer; 0: 25 MiB (PyTorch DDP's default)
	TreeChunkBytes int // tree all-reduce pipeline chunk; 0: 1 MiB
	// SendBuffer is a connection's socket send buffer: the engine's send
	// of a push returns, and its credit comes back, once what is left of
	// it fits there. 0: 4 MiB, the most Linux's autotuning gives
	// (net.ipv4.tcp_wmem); negative: none (the credit comes back when the
	// last byte is delivered, as with RDMA writes).
	SendBuffer int

	// ForceDistributed is BYTEPS_FORCE_DISTRIBUTED: without it a job of one
	// machine with several GPUs sums in shared memory alone and never
	// reaches the servers (core's LocalOnly path).
	ForceDistributed bool

	// Jitter spreads each iteration's backprop time: every worker machine's
	// compute is scaled by 1+u, u uniform in [0, Jitter), and a partition
	// can go only when the slowest machine has it. Seed makes it
	// repeatable; Iterations > 1 simulates that many and reports their
	// median. Jitter 0 is deterministic whatever the seed.
	// Grouped simulates every worker machine in lockstep, as one pipeline
	// whose flows each stand for one transfer per machine, rather than a
	// pipeline per machine. It is exact for dedicated servers (every
	// worker machine does the same thing at the same time) and
	// pessimistic for co-located ones (a machine's push to its own server
	// finishes at once and lets it move ahead; in lockstep it waits, and
	// the whole group waits for its most congested member: at 16 machines
	// that made BERT-large on 25 Gbit/s links 16% slower than one pipeline
	// per machine, at 32 machines 21%). It is the default beyond 16 worker
	// machines, where one pipeline per machine takes minutes; see Exact.
	Grouped bool
	// Exact gives every worker machine a pipeline of its own at any size
	// (beyond 16 machines that takes minutes: the events grow with the
	// machines, and each shares the links among more flows).
	Exact bool

	Jitter     float64
	Seed       int64
	Iterations int
}

// machines returns the worker machines and the workers on each.
func (c Cluster) machines() (m, local int) {
	local = c.GPUsPerMachine
	if local <= 0 || local > c.GPUs {
		local = c.GPUs
	}
	return c.GPUs / local, local
}

func (c Cluster) withDefaults() Cluster {
	if c.PartitionBytes == 0 {
		c.PartitionBytes = proto.DefaultPartitionBytes
	}
	c.PartitionBytes = proto.RoundPartitionBytes(c.PartitionBytes)
	if c.CreditBytes == 0 {
		c.CreditBytes = 4 * c.PartitionBytes
	}
	if c.Lanes == 0 {
		c.Lanes = 2
	}
	if c.EngineThreads == 0 {
		c.EngineThreads = 4
	}
	if c.ChunkBytes == 0 {
		c.ChunkBytes = 256 << 10
	}
	if c.BucketBytes == 0 {
		c.BucketBytes = 25 << 20
	}
	if c.TreeChunkBytes == 0 {
		c.TreeChunkBytes = 1 << 20
	}
	if c.SendBuffer == 0 {
		c.SendBuffer = 4 << 20
	}
	if c.Iterations == 0 {
		c.Iterations = 1
	}
	m, _ := c.machines()
	if c.Servers == 0 && c.Placement != Colocated {
		c.Servers = m
	}
	return c
}

// Validate reports a cluster the model cannot run.
func (c Cluster) Validate() error {
	var errs []error
	if c.GPUs < 1 {
		errs = append(errs, fmt.Errorf("GPUs %d, want >= 1", c.GPUs))
	}
	if c.GPUsPerMachine > 0 && c.GPUs%c.GPUsPerMachine != 0 && c.GPUs > c.GPUsPerMachine {
		errs = append(errs, fmt.Errorf("GPUs %d is not a multiple of %d per machine", c.GPUs, c.GPUsPerMachine))
	}
	for _, v := range []struct {
		name string
		x    float64
	}{{"LinkBits", c.LinkBits}, {"Latency", c.Latency}, {"PCIe", c.PCIe}, {"Intra", c.Intra}, {"EngineCap", c.EngineCap}, {"Jitter", c.Jitter},
		{"Profile.SumBytes", c.Profile.SumBytes}, {"Profile.MessageOverhead", c.Profile.MessageOverhead}, {"Profile.Loopback", c.Profile.Loopback}} {
		if v.x < 0 || math.IsNaN(v.x) {
			errs = append(errs, fmt.Errorf("%s %v, want >= 0", v.name, v.x))
		}
	}
	if c.Servers < 0 || c.PartitionBytes < 0 || c.CreditBytes < 0 || c.Lanes < 0 || c.EngineThreads < 0 ||
		c.ChunkBytes < 0 || c.BucketBytes < 0 || c.TreeChunkBytes < 0 || c.Iterations < 0 {
		errs = append(errs, errors.New("negative count or size"))
	}
	if c.Placement == Mixed && c.Servers == 0 {
		errs = append(errs, errors.New("mixed placement needs Servers > 0 dedicated machines"))
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("scalemodel: cluster: %w", err)
	}
	return nil
}

// rate turns 0 (unlimited) into +Inf.
func rate(x float64) float64 {
	if x <= 0 {
		return math.Inf(1)
	}
	return x
}

// linkBytes is the NIC goodput in bytes/s (+Inf if unlimited).
func (c Cluster) linkBytes() float64 { return rate(c.LinkBits / 8) }
