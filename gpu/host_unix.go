//go:build unix

package gpu

import "syscall"

// mapAnon maps n bytes of private anonymous memory. Memory outside the Go
// heap is what a device may DMA into; it is also invisible to the race
// detector, like real pinned memory (see the package documentation).
func mapAnon(n int) ([]byte, error) {
	return syscall.Mmap(-1, 0, n, syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_PRIVATE|syscall.MAP_ANON)
}

func unmapAnon(b []byte) error { return syscall.Munmap(b) }
