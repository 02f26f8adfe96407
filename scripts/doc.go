// Package scripts holds gobps's shell scripts (the emulated cluster,
// netcluster.sh, and the allreduce-vs-PS benchmark, bench_allreduce_vs_ps.sh)
// and no Go code. Its test runs the benchmark's short version, the CI sanity
// check: 2 workers and 2 servers on 10 Mbit/s links, a 1 MiB model, the
// push_pull sum exact and its time within 25% of the bandwidth bound. It
// skips when it cannot create network namespaces (not root, or no iproute2).
package scripts
