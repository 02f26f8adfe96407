//go:build !cgo

package nvml

// Without cgo (CGO_ENABLED=0, the default when cross-compiling) go-nvml
// cannot load NVML, so this package registers nothing and gpu.Discover
// reports no discoverer: programs that import it still build, and run in
// host mode.
