package summation

import (
	"fmt"
	"sync"
	"testing"

	"github.com/gobps/gobps/proto"
	"github.com/gobps/gobps/summation/kernel"
)

// BenchmarkKeySplit asks whether summing one large key with several
// goroutines pays off: dst += src over 64 MiB of float32, by one goroutine
// or split into equal parts summed at once. Bytes count read + written.
func BenchmarkKeySplit(b *testing.B) {
	const n = 64 << 20
	dst, src := make([]byte, n), make([]byte, n)
	for _, parts := range []int{1, 2, 4} {
		b.Run(fmt.Sprintf("goroutines=%d", parts), func(b *testing.B) {
			b.SetBytes(3 * n)
			for i := 0; i < b.N; i++ {
				var wg sync.WaitGroup
				step := n / parts
				for p := 0; p < parts; p++ {
					wg.Add(1)
					go func(d, s []byte) {
						defer wg.Done()
						kernel.Add(proto.Float32, d, s)
					}(dst[p*step:(p+1)*step], src[p*step:(p+1)*step])
				}
				wg.Wait()
			}
		})
	}
}

// BenchmarkRoundsChunked measures the round state machine's per-byte cost
// for a 4 MiB key pushed in chunks by 4 workers: one round per iteration,
// everything summed, every pull answered and served.
func BenchmarkRoundsChunked(b *testing.B) {
	const size = 4 << 20
	const workers = 4
	d := proto.Decl{Key: 1, DType: proto.Float32, Root: proto.NoRoot, Bytes: size}
	r := NewRounds(d, workers)
	chunk := make([]byte, proto.PieceBytes)
	b.SetBytes(workers * size)
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		round := uint64(i)
		for w := 0; w < workers; w++ {
			if _, err := r.Begin(w, round); err != nil {
				b.Fatal(err)
			}
			for off := 0; off < size; off += proto.PieceBytes {
				r.Chunk(w, round, off, chunk)
			}
		}
		for w := 0; w < workers; w++ {
			if _, err := r.Pull(Pull{Worker: w}, round); err != nil {
				b.Fatal(err)
			}
			r.Served(round)
		}
	}
}
