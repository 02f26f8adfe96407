package codec

import (
	"fmt"
	"math/rand"
	"testing"

	"github.com/gobps/gobps/proto"
	"github.com/gobps/gobps/summation/kernel"
)

// benchCodecs are the configurations the benchmarks sweep.
var benchCodecs = []map[string]string{
	{"compressor": "onebit", "scaling": "true"},
	{"compressor": "onebit"},
	{"compressor": "topk", "k": "0.01"},
	{"compressor": "randomk", "k": "0.01"},
	{"compressor": "dithering", "k": "8"},
	{"compressor": "fp16"},
}

func benchName(kv map[string]string) string {
	p, _ := Parse(kv)
	switch p.Codec {
	case OneBit:
		return fmt.Sprintf("onebit-scaling=%v", p.Scaling)
	case TopK, RandomK:
		return fmt.Sprintf("%s-k=%v", p.Codec, p.K)
	case Dithering:
		return fmt.Sprintf("dithering-s=%d", p.Levels)
	}
	return p.Codec.String()
}

// BenchmarkCodec measures Compress, Decompress and DecompressAdd per codec ×
// size (× implementation for onebit). Bytes are the float32 tensor's.
func BenchmarkCodec(b *testing.B) {
	for _, size := range []int{256 << 10, 4 << 20} {
		n := size / 4
		x := make([]float32, n)
		r := rand.New(rand.NewSource(1))
		for i := range x {
			x[i] = float32(r.NormFloat64())
		}
		out := make([]float32, n)
		for _, kv := range benchCodecs {
			p, _ := Parse(kv)
			c, _ := New(p)
			impls := []string{Impl()}
			if p.Codec == OneBit {
				impls = Impls()
			}
			buf := make([]byte, c.MaxSize(n))
			for _, impl := range impls {
				restore, _ := SetImpl(impl)
				pl, _ := c.Compress(buf, x, Step{Key: 1})
				pre := fmt.Sprintf("%s/%s/%dKiB", benchName(kv), impl, size>>10)
				b.Run(pre+"/compress", func(b *testing.B) {
					b.SetBytes(int64(size))
					b.ReportAllocs()
					for i := 0; i < b.N; i++ {
						c.Compress(buf, x, Step{Key: 1, Round: uint64(i)})
					}
				})
				b.Run(pre+"/decompress", func(b *testing.B) {
					b.SetBytes(int64(size))
					b.ReportAllocs()
					for i := 0; i < b.N; i++ {
						c.Decompress(out, pl)
					}
				})
				b.Run(pre+"/decompressadd", func(b *testing.B) {
					clear(out)
					b.SetBytes(int64(size))
					b.ReportAllocs()
					for i := 0; i < b.N; i++ {
						c.DecompressAdd(out, pl)
					}
				})
				restore()
			}
		}
		// The summation kernel over the same size, for scale.
		b.Run(fmt.Sprintf("sum-f32/%s/%dKiB", kernel.Impl(), size>>10), func(b *testing.B) {
			src, dst := make([]byte, size), make([]byte, size)
			b.SetBytes(int64(size))
			for i := 0; i < b.N; i++ {
				kernel.Add(proto.Float32, dst, src)
			}
		})
	}
}
