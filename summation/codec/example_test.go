package codec_test

import (
	"fmt"

	"github.com/gobps/gobps/proto"
	"github.com/gobps/gobps/summation/codec"
)

// Two workers push one key compressed with top-k and error feedback; the
// server adds the pushes into a sum, recompresses it once with its own error
// feedback and answers both pulls with that payload.
func Example() {
	p, err := codec.Parse(map[string]string{"compressor": "topk", "k": "2", "ef": "vanilla"})
	if err != nil {
		panic(err)
	}
	decl := p.Encode(nil) // carried by the declaration
	sp, err := codec.Decode(decl)
	if err != nil || !sp.Equal(p) {
		panic("the server disagrees on the codec")
	}
	server, _ := codec.NewServer(sp)
	workers := make([]codec.Compressor, 2)
	for i := range workers {
		workers[i], _ = codec.NewWorker(p)
	}
	grads := [][]float32{{1, -5, 0.5, 2, 0}, {1, 4, -3, 0.25, 0}}
	at := codec.Step{Key: proto.MakeKey(0, 0), Round: 1}

	sum := make([]float32, 5)
	for i, w := range workers {
		push, _ := w.Compress(make([]byte, w.MaxSize(5)), grads[i], at)
		if err := server.DecompressAdd(sum, push); err != nil {
			panic(err)
		}
	}
	answer, _ := server.Compress(make([]byte, server.MaxSize(5)), sum, at)
	pulled := make([]float32, 5)
	if err := workers[0].Decompress(pulled, answer); err != nil {
		panic(err)
	}
	fmt.Println("sum of pushes:", sum)
	fmt.Println("pulled:       ", pulled)
	fmt.Println("worker 0 keeps", workers[0].(*codec.ErrorFeedback).Residual(at.Key))
	fmt.Println("server keeps  ", server.(*codec.ErrorFeedback).Residual(at.Key))
	// Output:
	// sum of pushes: [0 -1 -3 2 0]
	// pulled:        [0 0 -3 2 0]
	// worker 0 keeps [1 0 0.5 0 0]
	// server keeps   [0 -1 0 0 0]
}
