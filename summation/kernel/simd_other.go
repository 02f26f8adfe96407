//go:build !amd64 || noasm || !gc

package kernel

// available lists the implementations this build runs: without SIMD
// kernels (another architecture, gccgo, or the noasm tag), only "generic".
func available() []*impl { return []*impl{generic} }
