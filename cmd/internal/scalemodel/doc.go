// Package scalemodel predicts what gobps does on clusters larger than the
// ones this project can run: the time of one synchronous training
// iteration, and the communication backprop does not hide, for gobps's
// parameter server and, beside it, for ring and tree all-reduce.
//
// It is an event simulation of gobps's pipeline, not a formula:
//
//   - backprop produces each layer's gradient at the time the model's
//     per-layer compute says, from the last layer to the first;
//   - each tensor is split into partitions of BYTEPS_PARTITION_BYTES and
//     each partition goes to a server by proto.Balancer, as the engine
//     does (weighted by proto.MixedShare in mixed mode);
//   - local aggregation: each of a machine's GPUs copies the partition to
//     host memory over PCIe, and the partition's owner (a local rank,
//     balanced by bytes as core/local does) adds the other copies into
//     its own, one partition after another on each owner;
//   - the partition enters a scheduler.Queue (the engine's own: priority
//     −tensor index, the credit of BYTEPS_SCHEDULING_CREDIT bytes), goes
//     out on its lane (GOBPS_TCP_LANES connections per server, key mod
//     lanes, one push at a time on each), and its credit comes back once
//     the rest of it fits in the socket's send buffer;
//   - the links are full-duplex NICs shared max-min fairly by the flows
//     crossing them (progressive filling); a push is delivered in 256 KiB
//     pieces, the server adds each in on its engine threads at the
//     calibrated summation rate, and each summed piece streams back to
//     every worker while the rest of the push is still arriving, so the
//     push of one partition overlaps the answers of the ones before;
//   - the sum is copied back to the GPUs over PCIe.
//
// A job of one machine with several GPUs stops after local aggregation:
// the owner's sum is the whole sum (Cluster.ForceDistributed sends it
// through the servers all the same, as BYTEPS_FORCE_DISTRIBUTED does).
//
// Up to 16 worker machines each have a pipeline of their own; beyond
// that (or with Cluster.Grouped) one pipeline stands for all of them,
// its flows each standing for one transfer per machine in lockstep:
// exact for dedicated servers, pessimistic for co-located ones where the
// network is the bottleneck (Cluster.Exact keeps one pipeline per
// machine at any size, at a cost of minutes beyond 16 machines).
//
// What it leaves out: TCP's loss and window dynamics and its unfairness
// among flows in one FIFO (the model shares max-min fairly between
// flows), the CPU cost of the transport beyond Cluster.EngineCap, PCIe
// switch contention, compression, and the overlap of the next forward
// pass with the last sums.
//
// SimulateRing and SimulateTree model the all-reduce baselines: gradients
// fused into buckets in backprop order, each all-reduced step by step
// (ring: 2(N−1) steps over all N GPUs; tree: NCCL's double binary tree
// between machines, pipelined in chunks). PSBound, RingBound and TreeBound
// are the closed-form bandwidth bounds printed beside the simulation.
//
// Rates the hardware's data sheet cannot give come from a Profile, which
// `bpsbench model calibrate` measures on a machine. Everything is
// deterministic: the same inputs give the same result, and the optional
// compute jitter draws from a seeded source.
//
// Preset returns the four models docs/scale.md uses (ResNet-50, VGG-16,
// BERT-large, GPT-2 1.5B): tensor sizes from the architectures' shapes in
// declaration order, per-layer compute from their FLOPs at a stated
// sustained rate of a V100.
package scalemodel
