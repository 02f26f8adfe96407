package proto

import (
	"fmt"
	"math"
	"slices"
)

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
// server whose bytes, with the key's, are the smallest share of its weight,
// ties to the lowest index. With equal weights that is the server with the
// fewest bytes so far. Every worker that assigns the same keys in the same
// order, with the same weights, gets the same answer.
type Balancer struct {
	load   []uint64
	weight []float64
}

// NewBalancer returns a Balancer over n servers of equal weight.
func NewBalancer(n int) *Balancer {
	b := &Balancer{load: make([]uint64, n), weight: make([]float64, n)}
	for i := range b.weight {
		b.weight[i] = 1
	}
	return b
}

// NewWeightedBalancer returns a Balancer that gives server i bytes in
// proportion to weights[i]. A server of weight 0 gets no key unless every
// weight is 0 (then all count as equal); negative weights count as 0.
func NewWeightedBalancer(weights []float64) *Balancer {
	b := NewBalancer(len(weights))
	if slices.ContainsFunc(weights, func(w float64) bool { return w > 0 }) {
		b.weight = append(b.weight[:0], weights...)
	}
	return b
}

// Assign returns the server for a key of nbytes and accounts for it.
func (b *Balancer) Assign(nbytes uint64) int {
	best, bestShare := 0, math.Inf(1)
	for i, l := range b.load {
		if w := b.weight[i]; w > 0 {
			if share := float64(l+nbytes) / w; share < bestShare {
				best, bestShare = i, share
			}
		}
	}
	b.load[best] += nbytes
	return best
}

// Load returns the bytes assigned to each server so far.
func (b *Balancer) Load() []uint64 { return append([]uint64(nil), b.load...) }

// MixedShare is the share of the bytes BytePS's mixed mode gives the k
// dedicated servers when each of n worker machines also runs a server:
// x = 2k(n−1) / (n² + k(n−2)), at which a worker machine (x·M + 2(1−x)(n−1)/n·M
// per iteration) and a dedicated one (n·x·M/k) are equally busy; capped at 1
// (reached at k = n), 0 without dedicated servers or with one worker machine.
func MixedShare(n, k int) float64 {
	if n <= 1 || k <= 0 {
		return 0
	}
	return min(1, float64(2*k*(n-1))/float64(n*n+k*(n-2)))
}
