//go:build !amd64 || noasm || !gc

package stream

// Copy copies min(len(dst), len(src)) bytes from src to dst and returns that
// number: copy, on this platform or build.
func Copy(dst, src []byte) int { return copy(dst, src) }

// Read returns the OR of the first min(len(a), len(b)) bytes of a and of b,
// read by the Go loop on this platform or build.
func Read(a, b []byte) byte {
	n := min(len(a), len(b))
	return readOR(a[:n], b[:n])
}
