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
// Read only reads two buffers, with the widest vector loads the CPU has: the
// rate no dst += src over the same buffers can beat, since it must read as
// much and also write. In cache, where the two differ most, it shows how
// much of a kernel's time goes to the cache's bandwidth.
//
//go:generate go run ../asmgen -stream -out copy_amd64.s -stubs copy_amd64.go -pkg stream
package stream
