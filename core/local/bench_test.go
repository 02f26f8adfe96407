package local

import (
	"context"
	"fmt"
	"sync"
	"testing"

	"github.com/gobps/gobps/proto"
)

// BenchmarkRound measures one round of one float32 key (Contribute, Reduce,
// Publish, Wait, Done in every rank) for groups of ranks inside this
// process: the same sockets and shared memory as between processes, minus
// the process switches. SetBytes counts the bytes every rank contributes.
func BenchmarkRound(b *testing.B) {
	for _, size := range []int{2, 4} {
		for _, nbytes := range []int{4 << 10, 4 << 20} {
			b.Run(fmt.Sprintf("ranks=%d/bytes=%d", size, nbytes), func(b *testing.B) {
				gs := make([]*Group, size)
				var wg sync.WaitGroup
				dir := b.TempDir()
				for r := range size {
					wg.Go(func() {
						var err error
						gs[r], err = Join(context.Background(), Config{Dir: dir, Group: "bench", Size: size, Rank: r})
						if err != nil {
							b.Error(err)
						}
					})
				}
				wg.Wait()
				if b.Failed() {
					b.FailNow()
				}
				defer func() {
					for _, g := range gs {
						g.Close()
					}
				}()
				segs := make([]*Segment, size)
				for r, g := range gs {
					s, err := g.Declare(proto.MakeKey(0, 0), nbytes, proto.Float32)
					if err != nil {
						b.Fatal(err)
					}
					segs[r] = s
				}
				ctx := context.Background()
				b.SetBytes(int64(nbytes * size))
				b.ReportAllocs()
				b.ResetTimer()
				for i := range uint64(b.N) {
					for _, s := range segs {
						wg.Go(func() {
							var err error
							if err = s.Contribute(i); err == nil {
								if s.IsOwner() {
									if _, err = s.Reduce(ctx, i); err == nil {
										err = s.Publish(i)
									}
								} else {
									_, err = s.Wait(ctx, i)
								}
							}
							if err == nil {
								err = s.Done(i)
							}
							if err != nil {
								b.Error(err)
							}
						})
					}
					wg.Wait()
				}
			})
		}
	}
}
