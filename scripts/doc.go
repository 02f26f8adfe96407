// Package scripts holds gobps's shell scripts (the emulated cluster,
// netcluster.sh, with netjob.sh's helpers for starting roles on its
// hosts; the allreduce-vs-PS benchmark, bench_allreduce_vs_ps.sh; the
// CrossBarrier-vs-DistributedOptimizer benchmark, bench_crossbarrier.sh,
// and timeline_overlap.py, which lines up its step and communication
// timelines) and no Go code. Its tests run each benchmark's short version,
// the CI sanity checks: 2 workers and 2 servers on 10 Mbit/s links, a 1 MiB
// model, the push_pull sum exact and its time within 25% of the bandwidth
// bound; and one PyTorch run of each optimizer. They skip when they cannot
// create network namespaces (not root, or no iproute2), or without torch.
package scripts
