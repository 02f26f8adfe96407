package gpu

import (
	"errors"
	"fmt"
	"os"
	"sync"
)

// PageSize is the granularity of host staging memory: AllocPageable rounds
// sizes up to it and Pool buffers are multiples of it.
var PageSize = os.Getpagesize()

// roundPage rounds n up to a whole number of pages.
func roundPage(n int) int {
	return (n + PageSize - 1) / PageSize * PageSize
}

// AllocPageable allocates n bytes (rounded up to whole pages) of ordinary,
// pageable host memory outside the Go heap (an anonymous mmap on Unix), so
// that a device may copy to and from it while Go code runs: the fallback
// when pinning fails. Copies from and to pageable memory are slower and the
// CUDA driver may perform them synchronously.
func AllocPageable(n int) (HostBuffer, error) {
	if n <= 0 {
		return nil, fmt.Errorf("gpu: allocate %d bytes: size must be positive", n)
	}
	b, err := mapAnon(roundPage(n))
	if err != nil {
		return nil, fmt.Errorf("gpu: allocate %d bytes of host memory: %w", n, err)
	}
	return &mapped{b: b[:n:n], whole: b}, nil
}

// mapped is a HostBuffer over anonymous mapped memory.
type mapped struct {
	b     []byte
	whole []byte // the mapping, page-rounded

	mu    sync.Mutex
	freed bool
}

// Bytes implements HostBuffer.
func (m *mapped) Bytes() []byte { return m.b }

// Pinned implements HostBuffer: mapped memory is pageable.
func (m *mapped) Pinned() bool { return false }

// Free implements HostBuffer: it unmaps the memory.
func (m *mapped) Free() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.freed {
		return errors.New("gpu: host buffer freed twice")
	}
	m.freed = true
	return unmapAnon(m.whole)
}
