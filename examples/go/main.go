// Command go is gobps's Go training example: a small MLP trained with
// data-parallel minibatch SGD, every gradient averaged through gobps.
//
//	bpsrun --local -np 4 --servers 2 -- ./go -epochs 5
//	./go -single -epochs 5    # the same training in one process, no gobps
//
// The data set (Gaussian blobs, two per class, in 20 dimensions) and the
// order of the global batches come from -seed, so every worker has the same
// data and visits the same batches. Each step, worker r of n takes the r-th
// contiguous shard of B/n samples of the global batch of B, computes the
// gradient of the mean loss over its shard, and averages every parameter
// tensor's gradient over the workers with core.Average. The average of n
// shard means of equal size is the mean over the whole batch, so the
// distributed run follows the -single run step for step, up to the order in
// which floating-point sums are taken.
//
// Every worker initialises its weights from -seed plus its rank, so that only
// rank 0's weights match -single; rank 0's are broadcast to everyone before
// the first step, as a real job must (and a broken broadcast shows up as a
// mismatch). Rank 0 prints the loss and accuracy of each epoch over all
// workers; -out writes the final weights as JSON.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"math/rand/v2"
	"os"
	"strconv"
	"strings"
	"time"
	"unsafe"

	"github.com/gobps/gobps/config"
	"github.com/gobps/gobps/core"
	"github.com/gobps/gobps/proto"

	// NVML device discovery for the worker engine (see gpu.Discover).
	_ "github.com/gobps/gobps/gpu/nvml"
)

// The problem's fixed shape.
const (
	inputs      = 20
	classes     = 4
	testSamples = 1024
)

type options struct {
	epochs  int
	batch   int
	lr      float64
	seed    uint64
	samples int
	hidden  int
	out     string
	single  bool
	timeout time.Duration
}

func main() {
	var o options
	flag.IntVar(&o.epochs, "epochs", 5, "passes over the training set")
	flag.IntVar(&o.batch, "batch", 64, "global batch size, split evenly over the workers")
	flag.Float64Var(&o.lr, "lr", 0.1, "SGD learning rate")
	flag.Uint64Var(&o.seed, "seed", 1, "seed of the data, the batch order and the initial weights")
	flag.IntVar(&o.samples, "samples", 4096, "training samples")
	flag.IntVar(&o.hidden, "hidden", 32, "hidden units")
	flag.StringVar(&o.out, "out", "", "write the final weights as JSON to this file (rank 0 only; every rank if the name contains {rank}, which is replaced by the rank)")
	flag.BoolVar(&o.single, "single", false, "train in this process alone, without gobps (the reference run)")
	flag.DurationVar(&o.timeout, "timeout", 2*time.Minute, "bound on joining the job and on each push_pull")
	flag.Parse()
	if err := run(o); err != nil {
		fmt.Fprintln(os.Stderr, "train:", err)
		os.Exit(1)
	}
}

func run(o options) error {
	if o.epochs < 1 || o.batch < 1 || o.hidden < 1 || o.samples < o.batch {
		return fmt.Errorf("need -epochs, -batch, -hidden >= 1 and -samples >= -batch; have %d, %d, %d, %d", o.epochs, o.batch, o.hidden, o.samples)
	}
	if !littleEndian() {
		return errors.New("gobps buffers are little-endian; this machine is not")
	}
	w := &worker{size: 1}
	if !o.single {
		cfg, err := config.FromEnv()
		if err != nil {
			return fmt.Errorf("%w (run under bpsrun, or give -single)", err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), o.timeout)
		e, err := core.Init(ctx, core.Options{Config: cfg})
		cancel()
		if err != nil {
			return err
		}
		defer e.Shutdown()
		w = &worker{e: e, rank: e.Rank(), size: e.Size(), timeout: o.timeout}
	}
	if o.batch%w.size != 0 {
		return fmt.Errorf("-batch %d does not split evenly over %d workers", o.batch, w.size)
	}
	res, err := train(o, w)
	if err != nil {
		return err
	}
	if w.e != nil {
		if err := w.e.Shutdown(); err != nil {
			return fmt.Errorf("shutdown: %w", err)
		}
	}
	if o.out != "" && (w.rank == 0 || strings.Contains(o.out, "{rank}")) {
		return writeJSON(strings.ReplaceAll(o.out, "{rank}", strconv.Itoa(w.rank)), res)
	}
	return nil
}

// worker is this process's place in the job; e is nil with -single.
type worker struct {
	e          *core.Engine
	rank, size int
	timeout    time.Duration

	init  [numTensors]*core.Tensor // broadcast from rank 0
	grads [numTensors]*core.Tensor // averaged every step
	stats *core.Tensor             // epoch loss and accuracy, summed
}

// declare declares every tensor, in the same order on every worker.
func (w *worker) declare(p *Params) error {
	var err error
	for i, v := range p.T {
		if w.init[i], err = w.e.DeclareBroadcast("init/"+tensorNames[i], proto.Float64, len(v), 0); err != nil {
			return err
		}
	}
	for i, v := range p.T {
		if w.grads[i], err = w.e.Declare("grad/"+tensorNames[i], proto.Float64, len(v)); err != nil {
			return err
		}
	}
	w.stats, err = w.e.Declare("stats", proto.Float64, 2)
	return err
}

// waitAll waits for every handle, even after one fails: their buffers are
// not ours until they complete.
func (w *worker) waitAll(hs []*core.Handle) error {
	var first error
	for _, h := range hs {
		if err := h.WaitTimeout(w.timeout); err != nil && first == nil {
			first = err
		}
	}
	return first
}

// Result is what -out writes.
type Result struct {
	Mode    string    `json:"mode"` // "single" or "gobps"
	Rank    int       `json:"rank"`
	Size    int       `json:"size"`
	Seed    uint64    `json:"seed"`
	Batch   int       `json:"batch"`
	LR      float64   `json:"lr"`
	Loss    []float64 `json:"loss"` // per epoch, mean over every sample of every worker
	Acc     []float64 `json:"acc"`  // per epoch, training accuracy before each step
	TestAcc float64   `json:"test_acc"`
	Tensors []Tensor  `json:"tensors"` // final weights, in model order
}

// Tensor is one parameter tensor of a Result.
type Tensor struct {
	Name string    `json:"name"`
	Data []float64 `json:"data"`
}

func train(o options, w *worker) (*Result, error) {
	start := time.Now()
	data, test := MakeBlobs(o.seed, o.samples, testSamples, inputs, classes)
	p := NewParams(inputs, o.hidden, classes)
	g := NewParams(inputs, o.hidden, classes)
	p.Init(rand.New(rand.NewPCG(o.seed+uint64(w.rank), 2)))

	shard := o.batch / w.size
	steps := o.samples / o.batch
	if w.e != nil {
		if err := w.declare(p); err != nil {
			return nil, err
		}
		var hs []*core.Handle
		for i, v := range p.T {
			h, err := w.e.Broadcast(w.init[i], bytesOf(v))
			if err != nil {
				return nil, errors.Join(err, w.waitAll(hs))
			}
			hs = append(hs, h)
		}
		if err := w.waitAll(hs); err != nil {
			return nil, fmt.Errorf("broadcast initial weights: %w", err)
		}
		if w.rank == 0 {
			fmt.Printf("gobps: %d workers, %d servers over %s; global batch %d = %d × %d, %d steps per epoch\n",
				w.size, w.e.NumServers(), w.e.Transport(), o.batch, w.size, shard, steps)
		}
	} else {
		fmt.Printf("single process: global batch %d, %d steps per epoch\n", o.batch, steps)
	}

	res := &Result{Mode: "single", Rank: w.rank, Size: w.size, Seed: o.seed, Batch: o.batch, LR: o.lr}
	if w.e != nil {
		res.Mode = "gobps"
	}
	var sc scratch
	var hs []*core.Handle
	var perr error
	ready := func(t int) {
		if w.e == nil || perr != nil {
			return
		}
		h, err := w.e.PushPull(w.grads[t], bytesOf(g.T[t]), core.Average)
		if err != nil {
			perr = err
			return
		}
		hs = append(hs, h)
	}
	stats := make([]float64, 2)
	for epoch := 1; epoch <= o.epochs; epoch++ {
		perm := rand.New(rand.NewPCG(o.seed, 1000+uint64(epoch))).Perm(o.samples)
		clear(stats)
		for s := 0; s < steps; s++ {
			batch := perm[s*o.batch : (s+1)*o.batch]
			mine := batch[w.rank*shard : (w.rank+1)*shard]
			hs = hs[:0]
			loss, correct := p.Grad(data, mine, g, &sc, ready)
			if err := errors.Join(perr, w.waitAll(hs)); err != nil {
				return nil, fmt.Errorf("epoch %d step %d: %w", epoch, s, err)
			}
			p.Step(g, o.lr)
			stats[0] += loss
			stats[1] += float64(correct)
		}
		if w.e != nil {
			h, err := w.e.PushPull(w.stats, bytesOf(stats), core.Sum)
			if err == nil {
				err = h.WaitTimeout(w.timeout)
			}
			if err != nil {
				return nil, fmt.Errorf("epoch %d stats: %w", epoch, err)
			}
		}
		seen := float64(steps * o.batch)
		res.Loss = append(res.Loss, stats[0]/seen)
		res.Acc = append(res.Acc, stats[1]/seen)
		if w.rank == 0 {
			fmt.Printf("epoch %d loss %.4f acc %.3f\n", epoch, stats[0]/seen, stats[1]/seen)
		}
	}
	res.TestAcc = p.Accuracy(test)
	if w.rank == 0 {
		fmt.Printf("test acc %.3f (%d held-out samples) in %v\n", res.TestAcc, test.Len(), time.Since(start).Round(time.Millisecond))
	}
	for i, v := range p.T {
		res.Tensors = append(res.Tensors, Tensor{Name: tensorNames[i], Data: v})
	}
	return res, nil
}

func writeJSON(path string, v any) error {
	b, err := json.Marshal(v) // float64s are written exactly (shortest round-trip form)
	if err != nil {
		return fmt.Errorf("encode %s: %w", path, err)
	}
	if err := os.WriteFile(path, append(b, '\n'), 0o644); err != nil {
		return err
	}
	return nil
}

// bytesOf views v as its raw bytes, without copying: what gobps sends and
// receives in place.
func bytesOf(v []float64) []byte {
	if len(v) == 0 {
		return nil
	}
	return unsafe.Slice((*byte)(unsafe.Pointer(&v[0])), len(v)*8)
}

func littleEndian() bool {
	x := uint16(1)
	return *(*byte)(unsafe.Pointer(&x)) == 1
}
