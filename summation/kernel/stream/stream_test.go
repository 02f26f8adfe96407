package stream

import (
	"bytes"
	"fmt"
	"math/rand"
	"testing"
)

func TestCopy(t *testing.T) {
	r := rand.New(rand.NewSource(1))
	for i := 0; i < 300; i++ {
		n := r.Intn(8 << 10)
		if i%10 == 0 && !testing.Short() {
			n = r.Intn(4 << 20)
		}
		offD, offS := r.Intn(64), r.Intn(64)
		src := make([]byte, offS+n)
		dst := make([]byte, offD+n+64)
		r.Read(src)
		r.Read(dst)
		want := bytes.Clone(dst)
		copy(want[offD:offD+n], src[offS:])
		if got := Copy(dst[offD:offD+n], src[offS:]); got != n {
			t.Fatalf("Copy returned %d, want %d", got, n)
		}
		if !bytes.Equal(dst, want) {
			t.Fatalf("%d bytes at offsets %d/%d: wrong result or canary overwritten", n, offD, offS)
		}
	}
}

// BenchmarkCopy compares Copy with copy(); throughput counts the bytes read
// plus the bytes written, 2 × size.
func BenchmarkCopy(b *testing.B) {
	for _, c := range []struct {
		name string
		f    func(dst, src []byte) int
	}{{"builtin", func(d, s []byte) int { return copy(d, s) }}, {"stream", Copy}} {
		b.Run(c.name, func(b *testing.B) {
			for _, n := range []int{4 << 10, 256 << 10, 4 << 20, 64 << 20} {
				name := fmt.Sprintf("%dKiB", n>>10)
				if n >= 1<<20 {
					name = fmt.Sprintf("%dMiB", n>>20)
				}
				b.Run(name, func(b *testing.B) {
					dst, src := make([]byte, n), make([]byte, n)
					// Write every page: an untouched one reads as the
					// shared zero page.
					for i := range src {
						src[i], dst[i] = byte(i|1), byte(i|1)
					}
					b.SetBytes(2 * int64(n))
					b.ReportAllocs()
					for b.Loop() {
						c.f(dst, src)
					}
				})
			}
		})
	}
}

// TestRead checks that Read reads every byte of both buffers, up to the
// shorter one's length and no further: a single set bit anywhere in range
// must show in the result, and one past the end must not.
func TestRead(t *testing.T) {
	r := rand.New(rand.NewSource(2))
	for i := 0; i < 300; i++ {
		n := r.Intn(4 << 10)
		if i%10 == 0 {
			n = r.Intn(1 << 20)
		}
		a, b := make([]byte, n+r.Intn(300)), make([]byte, n)
		if r.Intn(2) == 0 {
			a, b = b, a
		}
		if got := Read(a, b); got != 0 {
			t.Fatalf("%d/%d zero bytes read as %#x", len(a), len(b), got)
		}
		for _, p := range [][]byte{a, b} {
			if len(p) > n {
				p[n+r.Intn(len(p)-n)] = 0xff // past the shorter length: not read
			}
			if n == 0 {
				continue
			}
			bit := byte(1) << r.Intn(8)
			at := r.Intn(n)
			p[at] = bit
			if got := Read(a, b); got != bit {
				t.Fatalf("%d/%d bytes, bit %#x at %d: Read = %#x", len(a), len(b), bit, at, got)
			}
			p[at] = 0
		}
	}
}
