package proto

import "fmt"

// PageSize is the granularity of partitions: every partition but the last
// of a tensor is a whole number of pages, so partitions of a page-aligned
// buffer stay page-aligned (which RDMA registration and SIMD like), and every
// element size divides it.
const PageSize = 4096

// DefaultPartitionBytes is the default of BYTEPS_PARTITION_BYTES.
const DefaultPartitionBytes = 4 << 20

// RoundPartitionBytes rounds a requested partition size to a whole number of
// pages, never below one page.
func RoundPartitionBytes(n int) int {
	if n < PageSize {
		return PageSize
	}
	return n / PageSize * PageSize
}

// Range is one partition: bytes [Off, Off+Len) of a tensor.
type Range struct {
	Off, Len int
}

// Partition splits a tensor of nbytes into ranges of at most partBytes
// (already rounded with RoundPartitionBytes). A zero-byte tensor has no
// partitions.
func Partition(nbytes, partBytes int) ([]Range, error) {
	if nbytes < 0 {
		return nil, fmt.Errorf("proto: negative tensor size %d", nbytes)
	}
	if partBytes <= 0 || partBytes%PageSize != 0 {
		return nil, fmt.Errorf("proto: partition size %d is not a positive multiple of %d", partBytes, PageSize)
	}
	n := (nbytes + partBytes - 1) / partBytes
	out := make([]Range, n)
	for i := range out {
		off := i * partBytes
		out[i] = Range{Off: off, Len: min(partBytes, nbytes-off)}
	}
	return out, nil
}

// Balancer assigns keys to servers, balanced by bytes: each key goes to the
// server with the fewest bytes so far, ties to the lowest index. Every worker
// that assigns the same keys in the same order gets the same answer.
type Balancer struct {
	load []uint64
}

// NewBalancer returns a Balancer over n servers.
func NewBalancer(n int) *Balancer { return &Balancer{load: make([]uint64, n)} }

// Assign returns the server for a key of nbytes and accounts for it.
func (b *Balancer) Assign(nbytes uint64) int {
	best := 0
	for i, l := range b.load {
		if l < b.load[best] {
			best = i
		}
	}
	b.load[best] += nbytes
	return best
}

// Load returns the bytes assigned to each server so far.
func (b *Balancer) Load() []uint64 { return append([]uint64(nil), b.load...) }
