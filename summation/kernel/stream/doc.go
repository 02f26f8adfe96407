// Package stream copies memory the fastest way found on this machine, for a
// baseline: bpsbench sum compares the summation kernels with it and with
// Go's copy().
//
// On amd64 with AVX2, Copy uses non-temporal stores (VMOVNTDQ), which write
// whole cache lines to memory without reading them first and without
// keeping them in cache. For buffers larger than the caches that is about
// twice as fast as copy() on the development machine (a Xeon VM whose
// copy() is REP MOVSQ); for data that is used again soon it is slower,
// which is why gobps itself does not use it. Elsewhere, and in the noasm
// build, Copy is copy().
//
// Read only reads two buffers, with the widest vector loads the CPU has.
// Where the buffers are larger than L1, so that the loads wait on L2 or
// memory, no dst += src over the same buffers can beat it: it must read as
// much and also write. In L2 it shows how much of a kernel's time goes to
// the cache's bandwidth. (In L1 its OR loop runs slower than the kernels,
// and it bounds nothing.)
//
//go:generate go run ../asmgen -stream -out copy_amd64.s -stubs copy_amd64.go -pkg stream
package stream
