package kernel

import (
	"encoding/binary"
	"fmt"
	"testing"

	"github.com/gobps/gobps/proto"
)

// Compare implementations with benchstat over -count=10, e.g.
//
//	go test -run '^$' -bench 'Sum|Copy' -count 10 ./summation/kernel

var benchSizes = []int{4 << 10, 256 << 10, 4 << 20, 64 << 20}

func sizeName(n int) string {
	if n >= 1<<20 {
		return fmt.Sprintf("%dMiB", n>>20)
	}
	return fmt.Sprintf("%dKiB", n>>10)
}

// benchOperands returns dst and src of n bytes: src holds ones of dt, dst
// zeros, so the sums stay finite and normal (no case pays for denormals or
// NaNs). Every page of both is written, so that none reads as the shared
// zero page.
func benchOperands(dt proto.DType, n int) (dst, src []byte) {
	dst, src = make([]byte, n), make([]byte, n)
	for i := range dst {
		dst[i], src[i] = 1, 1
	}
	clear(dst)
	le := binary.LittleEndian
	for i := 0; i < n; i += dt.Size() {
		switch dt {
		case proto.Float32:
			le.PutUint32(src[i:], 0x3f800000)
		case proto.Float16:
			le.PutUint16(src[i:], 0x3c00)
		case proto.BFloat16:
			le.PutUint16(src[i:], 0x3f80)
		}
	}
	return dst, src
}

// BenchmarkSum measures Add (dst += src) for each implementation, dtype and
// size. Throughput counts the bytes read plus the bytes written, 3 × size.
func BenchmarkSum(b *testing.B) {
	for _, name := range []string{"avx512fp16", "avx512", "avx2", "generic"} {
		b.Run(name, func(b *testing.B) {
			restore, err := SetImpl(name)
			if err != nil {
				b.Skip(err)
			}
			defer restore()
			for _, dt := range []struct {
				name string
				dt   proto.DType
			}{{"f32", proto.Float32}, {"f16", proto.Float16}, {"bf16", proto.BFloat16}} {
				b.Run(dt.name, func(b *testing.B) {
					for _, n := range benchSizes {
						b.Run(sizeName(n), func(b *testing.B) {
							dst, src := benchOperands(dt.dt, n)
							b.SetBytes(3 * int64(n))
							b.ReportAllocs()
							for b.Loop() {
								Add(dt.dt, dst, src)
							}
						})
					}
				})
			}
		})
	}
}

// BenchmarkCopy is the baseline: a plain copy, 2 × size bytes read and
// written.
func BenchmarkCopy(b *testing.B) {
	for _, n := range benchSizes {
		b.Run(sizeName(n), func(b *testing.B) {
			dst, src := make([]byte, n), make([]byte, n)
			// Write every page first: an untouched page reads as the
			// shared zero page, always in cache.
			for i := range src {
				src[i], dst[i] = byte(i|1), byte(i|1)
			}
			b.SetBytes(2 * int64(n))
			b.ReportAllocs()
			for b.Loop() {
				copy(dst, src)
			}
		})
	}
}
