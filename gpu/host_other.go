//go:build !unix

package gpu

// mapAnon falls back to the Go heap where there is no mmap; no GPU path of
// gobps runs on such systems, only the fake device in tests.
func mapAnon(n int) ([]byte, error) { return make([]byte, n), nil }

func unmapAnon(b []byte) error { return nil }
