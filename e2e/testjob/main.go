// Command testjob is the worker program of gobps's end-to-end tests. It runs
// under bpsrun and checks what the engine returns against values it
// computes itself.
//
//	-mode exactsum: declare many tensors of random sizes and mixed dtypes,
//	  push_pull them for several rounds with integer-valued data, and check
//	  every pulled sum exactly against the sum computed locally.
//	-mode hold: push_pull one tensor in a loop (bounded by -rounds and
//	  -timeout) until it fails, and report how long the failure took to
//	  surface.
package main

import (
	"context"
	"encoding/binary"
	"flag"
	"fmt"
	"math"
	"math/rand"
	"os"
	"time"

	"github.com/gobps/gobps/config"
	"github.com/gobps/gobps/core"
	"github.com/gobps/gobps/gpu"
	"github.com/gobps/gobps/gpu/fake"
	"github.com/gobps/gobps/proto"
	"github.com/gobps/gobps/summation/kernel"

	// NVML device discovery for the worker engine (see gpu.Discover).
	_ "github.com/gobps/gobps/gpu/nvml"
)

func main() {
	mode := flag.String("mode", "exactsum", "exactsum | hold")
	tensors := flag.Int("tensors", 200, "number of tensors")
	rounds := flag.Int("rounds", 20, "rounds")
	maxBytes := flag.Int("max", 16<<20, "largest tensor in bytes")
	seed := flag.Int64("seed", 1, "seed shared by every worker")
	timeout := flag.Duration("timeout", 5*time.Minute, "give up after this long")
	device := flag.Bool("device", false, "keep every other tensor in GPU memory on the fake device (gpu/fake), written late by a simulated backprop")
	fakeDelay := flag.Duration("fake-delay", 0, "with -device: each copy of the fake device sleeps this long plus a random part up to as long again, to shake out ordering bugs")
	flag.Parse()
	cfg, err := config.FromEnv()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	opt := core.Options{Config: cfg, Warnf: func(format string, args ...any) {
		fmt.Fprintf(os.Stderr, "WARN "+format+"\n", args...)
	}}
	if *device {
		// The fake device is injected by this test program, never read
		// from the environment by production code.
		seed := uint64(cfg.WorkerID*cfg.LocalSize+cfg.LocalRank) << 8
		opt.OpenDevice = func(index int) (gpu.Device, error) {
			return fake.New(fake.Options{Index: index, CopyDelay: *fakeDelay, MaxJitter: *fakeDelay, Seed: seed | uint64(index)}), nil
		}
	}
	e, err := core.Init(ctx, opt)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	switch *mode {
	case "exactsum":
		err = exactSum(e, *tensors, *rounds, *maxBytes, *seed, *device)
	case "hold":
		err = hold(e, *rounds, *timeout)
	default:
		err = fmt.Errorf("unknown mode %q", *mode)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "testjob:", err)
		os.Exit(1)
	}
	if err := e.Shutdown(); err != nil {
		fmt.Fprintln(os.Stderr, "testjob: shutdown:", err)
		os.Exit(1)
	}
}

// value is worker rank's integer value for element i of tensor t in round r:
// a(i) + rank*b(i), so the sum over n workers is n*a + b*n(n-1)/2 and the
// expected sum costs one evaluation per element. |sum| stays below 64, exact
// in every dtype (bfloat16 holds integers up to 256).
func value(t, r, i, rank int) (a, b int) {
	a = (i*7+t*3+r)%9 - 4
	b = (i+t+r*5)%5 - 2
	return a + rank*b, b
}

func expected(t, r, i, n int) int {
	a0, b := value(t, r, i, 0)
	return n*a0 + b*n*(n-1)/2
}

func put(dt proto.DType, buf []byte, i, v int) {
	le := binary.LittleEndian
	switch dt {
	case proto.Float32:
		le.PutUint32(buf[4*i:], math.Float32bits(float32(v)))
	case proto.Float64:
		le.PutUint64(buf[8*i:], math.Float64bits(float64(v)))
	case proto.Float16:
		le.PutUint16(buf[2*i:], kernel.F32ToF16(float32(v)))
	case proto.BFloat16:
		le.PutUint16(buf[2*i:], kernel.F32ToBF16(float32(v)))
	case proto.Int32:
		le.PutUint32(buf[4*i:], uint32(int32(v)))
	case proto.Int64:
		le.PutUint64(buf[8*i:], uint64(int64(v)))
	case proto.Uint8:
		buf[i] = uint8(v) // wraps, as the sum does
	}
}

type tensor struct {
	t     *core.Tensor
	buf   []byte
	want  []byte
	count int
	dev   gpu.DevPtr // nonzero: the tensor lives in (fake) device memory
}

func exactSum(e *core.Engine, ntensors, rounds, maxBytes int, seed int64, device bool) error {
	var dev *fake.Device
	var fw *fake.Stream
	if device {
		d, err := e.GPUDevice(0)
		if err != nil {
			return err
		}
		var ok bool
		if dev, ok = d.(*fake.Device); !ok {
			return fmt.Errorf("-device: device 0 is %s, not the fake device", d.Name())
		}
		fw = dev.NewFrameworkStream()
		defer fw.Close()
	}
	late := rand.New(rand.NewSource(seed + int64(e.Rank()))) // backprop's timing differs per worker
	rng := rand.New(rand.NewSource(seed))                    // same on every worker: same declarations
	dtypes := proto.AllDTypes()
	var ts []tensor
	total := 0
	for i := 0; i < ntensors; i++ {
		dt := dtypes[rng.Intn(len(dtypes))]
		// log-uniform sizes from 1 byte to maxBytes, with the extremes present
		nb := int(math.Exp(rng.Float64() * math.Log(float64(maxBytes))))
		switch i {
		case 0:
			dt, nb = proto.Uint8, 1
		case 1:
			nb = maxBytes
		}
		count := max(1, nb/dt.Size())
		t, err := e.Declare(fmt.Sprintf("t%d", i), dt, count)
		if err != nil {
			return err
		}
		x := tensor{t: t, buf: make([]byte, t.Bytes()), want: make([]byte, t.Bytes()), count: count}
		if dev != nil && i%2 == 1 {
			if x.dev, err = dev.Malloc(t.Bytes()); err != nil {
				return err
			}
		}
		ts = append(ts, x)
		total += t.Bytes()
	}
	rank, n := e.Rank(), e.Size()
	fmt.Printf("rank %d of %d: %d tensors, %.1f MiB per round, %d servers over %s\n", rank, n, ntensors, float64(total)/(1<<20), e.NumServers(), e.Transport())
	start := time.Now()
	hs := make([]*core.Handle, len(ts))
	for r := 0; r < rounds; r++ {
		for ti := range ts {
			x := &ts[ti]
			dt := x.t.DType()
			for i := 0; i < x.count; i++ {
				v, _ := value(ti, r, i, rank)
				put(dt, x.buf, i, v)
				put(dt, x.want, i, expected(ti, r, i, n))
			}
		}
		// Start every tensor, then wait: the scheduler orders the traffic.
		// A device tensor's gradient is written by "backprop" on the
		// framework stream a little later; PushPullDevice must wait for it.
		for ti := range ts {
			x := &ts[ti]
			var h *core.Handle
			var err error
			if x.dev != 0 {
				if err := fw.WriteAfter(time.Duration(late.Intn(300))*time.Microsecond, x.dev, x.buf); err != nil {
					return err
				}
				h, err = e.PushPullDevice(x.t, 0, uintptr(x.dev), fw.Handle(), core.Sum)
			} else {
				h, err = e.PushPull(x.t, x.buf, core.Sum)
			}
			if err != nil {
				return err
			}
			hs[ti] = h
		}
		for ti, h := range hs {
			if err := h.Wait(); err != nil {
				return fmt.Errorf("round %d: %w", r, err)
			}
			x := &ts[ti]
			if x.dev != 0 {
				// WriteAfter copied x.buf when it was called; read the
				// result back from device memory.
				if err := dev.Read(x.dev, x.buf); err != nil {
					return err
				}
			}
			if string(x.buf) != string(x.want) {
				for i := range x.buf {
					if x.buf[i] != x.want[i] {
						return fmt.Errorf("round %d tensor %d (%s, %d bytes): first wrong byte %d: got %d want %d",
							r, ti, x.t.DType(), len(x.buf), i, x.buf[i], x.want[i])
					}
				}
			}
		}
	}
	el := time.Since(start)
	if dev != nil {
		fmt.Printf("rank %d: device tensors staged through %s\n", rank, dev.Name())
	}
	fmt.Printf("rank %d: all %d rounds exact (%d tensors, %.1f MiB per round) in %v\n", rank, rounds, ntensors, float64(total)/(1<<20), el.Round(time.Millisecond))
	return nil
}

func hold(e *core.Engine, rounds int, timeout time.Duration) error {
	// 16 MiB: with the default 4 MiB partitions, keys on every server
	t, err := e.Declare("hold", proto.Float32, 4<<20)
	if err != nil {
		return err
	}
	buf := make([]byte, t.Bytes())
	deadline := time.Now().Add(timeout)
	for r := 0; r < rounds && time.Now().Before(deadline); r++ {
		h, err := e.PushPull(t, buf, core.Sum)
		if err != nil {
			return fmt.Errorf("pushpull failed to start round %d: %w", r, err)
		}
		if r == 0 {
			fmt.Println("first round started")
		}
		start := time.Now()
		if err := h.Wait(); err != nil {
			return fmt.Errorf("pushpull failed after %.3fs: %w", time.Since(start).Seconds(), err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	return fmt.Errorf("no failure within %d rounds", rounds)
}
