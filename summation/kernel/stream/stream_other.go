//go:build !amd64 || noasm || !gc

package stream

// Copy copies min(len(dst), len(src)) bytes from src to dst and returns that
// number: copy, on this platform or build.
func Copy(dst, src []byte) int { return copy(dst, src) }
