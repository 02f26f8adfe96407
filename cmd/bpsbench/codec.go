package main

import (
	"flag"
	"fmt"
	"math/rand"
	"runtime"
	"slices"
	"strings"
	"time"

	"github.com/gobps/gobps/proto"
	"github.com/gobps/gobps/summation/codec"
	"github.com/gobps/gobps/summation/kernel"
)

// codecCase is one measured operation of bpsbench codec.
type codecCase struct {
	name string
	// traffic is the bytes the operation reads plus the bytes it writes
	// (what bpsbench sum counts), for a tensor of n float32.
	traffic func(n, payload int) int
	run     func()
}

// codecTargets are issue 16's throughput targets: a case's traffic GB/s
// as a ratio to the float32 sum kernel's, or its tensor GB/s.
var codecTargets = []struct {
	name    string
	vsSum   bool
	min     float64
	comment string
}{
	{"onebit compress", true, 0.5, "≥ 0.5 × sum kernel (traffic)"},
	{"onebit decompress", true, 0.5, "≥ 0.5 × sum kernel (traffic)"},
	{"topk-1% compress", false, 1, "≥ 1 GB/s of float32 tensor"},
}

// codecBench measures the codecs of summation/codec on one core against the
// float32 summation kernel (dst += src) measured in the same run, round-robin.
func codecBench(args []string) error {
	fs := flag.NewFlagSet("codec", flag.ContinueOnError)
	sizeF := fs.String("size", "64MiB", "tensor size (float32 bytes)")
	reps := fs.Int("reps", 7, "rounds; each round measures every case once, in turn")
	dur := fs.Duration("time", 300*time.Millisecond, "length of one measurement")
	procs := fs.Int("procs", 1, "GOMAXPROCS during the measurements (the codecs use one goroutine)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	sizes, err := parseSizes(*sizeF)
	if err != nil || len(sizes) != 1 || sizes[0]%4 != 0 || sizes[0] < 1024 {
		return fmt.Errorf("-size %q: want one size, a multiple of 4 bytes, at least 1 KiB", *sizeF)
	}
	if *reps < 1 {
		return fmt.Errorf("-reps %d: need at least 1", *reps)
	}
	size := sizes[0]
	n := size / 4
	prev := runtime.GOMAXPROCS(*procs)
	defer runtime.GOMAXPROCS(prev)

	// A gradient-like tensor: normal values, every page written.
	x := make([]float32, n)
	r := rand.New(rand.NewSource(1))
	for i := range x {
		x[i] = float32(r.NormFloat64())
	}
	out := make([]float32, n)
	sumDst, sumSrc := make([]byte, size), make([]byte, size)
	ones(proto.Float32, sumSrc)
	ones(proto.Float32, sumDst)

	cases := []codecCase{{
		name:    "sum f32 (kernel.Add)",
		traffic: func(n, _ int) int { return 12 * n },
		run:     func() { kernel.Add(proto.Float32, sumDst, sumSrc) },
	}}
	at := codec.Step{Key: proto.MakeKey(1, 0)}
	for _, c := range []struct {
		name string
		kv   map[string]string
	}{
		{"onebit", map[string]string{"compressor": "onebit", "scaling": "true"}},
		{"onebit-noscale", map[string]string{"compressor": "onebit"}},
		{"topk-1%", map[string]string{"compressor": "topk", "k": "0.01"}},
		{"randomk-1%", map[string]string{"compressor": "randomk", "k": "0.01", "seed": "1"}},
		{"dithering-s8", map[string]string{"compressor": "dithering", "k": "8", "seed": "1"}},
		{"fp16", map[string]string{"compressor": "fp16"}},
		{"bf16", map[string]string{"compressor": "bf16"}},
	} {
		p, err := codec.Parse(c.kv)
		if err != nil {
			return err
		}
		cp, err := codec.New(p)
		if err != nil {
			return err
		}
		buf := make([]byte, cp.MaxSize(n))
		payload, err := cp.Compress(buf, x, at)
		if err != nil {
			return err
		}
		payload = slices.Clone(payload)
		// Check the payload before timing anything that reads it.
		if err := cp.Decompress(out, payload); err != nil {
			return fmt.Errorf("%s: %v", c.name, err)
		}
		cases = append(cases,
			codecCase{
				name:    c.name + " compress",
				traffic: func(n, pl int) int { return 4*n + pl },
				run: func() {
					at.Round++
					if _, err := cp.Compress(buf, x, at); err != nil {
						panic(err)
					}
				},
			},
			codecCase{
				name:    c.name + " decompress",
				traffic: func(n, pl int) int { return 4*n + pl },
				run: func() {
					if err := cp.Decompress(out, payload); err != nil {
						panic(err)
					}
				},
			},
			codecCase{
				name:    c.name + " decompress-add",
				traffic: func(n, pl int) int { return 8*n + pl },
				run: func() {
					if err := cp.DecompressAdd(out, payload); err != nil {
						panic(err)
					}
				},
			})
		plSize := len(payload)
		for i := len(cases) - 3; i < len(cases); i++ {
			t := cases[i].traffic
			cases[i].traffic = func(n, _ int) int { return t(n, plSize) }
		}
	}

	fmt.Printf("machine: %s, %d CPUs, GOMAXPROCS %d, %s; sum kernel %s, onebit packing %s\n",
		cpuModel(), runtime.NumCPU(), runtime.GOMAXPROCS(0), runtime.Version(), kernel.Impl(), codec.Impl())
	fmt.Printf("tensor: %s of float32 (%d elements), normal values; %d rounds of %v per case, round-robin\n", human(size), n, *reps, *dur)
	fmt.Printf("tensor GB/s  = float32 tensor bytes (4n) / s\n")
	fmt.Printf("traffic GB/s = (bytes read + bytes written) / s, as bpsbench sum counts: 12n for the sum (dst += src),\n")
	fmt.Printf("               4n + payload to compress or decompress, 8n + payload to decompress-add\n")
	fmt.Printf("vs sum       = a round's traffic GB/s / the sum kernel's traffic GB/s of the same round:\n")
	fmt.Printf("               median [min, max] over the rounds\n\n")

	res := make([][]float64, len(cases)) // traffic GB/s per case per round
	for rd := 0; rd < *reps; rd++ {
		for i, c := range cases {
			res[i] = append(res[i], rate(c.traffic(n, 0), *dur, c.run))
		}
	}
	fmt.Printf("%-28s %14s %22s %22s\n", "case", "tensor GB/s", "traffic GB/s", "vs sum")
	fmt.Printf("%-28s %14s %22s %22s\n", "", "median", "median [min, max]", "median [min, max]")
	ratios := make([][]float64, len(cases))
	for i, c := range cases {
		tensor := make([]float64, len(res[i]))
		for j, v := range res[i] {
			tensor[j] = v * float64(4*n) / float64(c.traffic(n, 0))
			ratios[i] = append(ratios[i], v/res[0][j])
		}
		fmt.Printf("%-28s %14.2f %8.2f [%5.2f, %5.2f] %8.3f [%5.3f, %5.3f]\n", c.name, median(tensor),
			median(res[i]), slices.Min(res[i]), slices.Max(res[i]),
			median(ratios[i]), slices.Min(ratios[i]), slices.Max(ratios[i]))
	}

	fmt.Println("\ntargets (issue 16), by the medians:")
	for _, t := range codecTargets {
		i := slices.IndexFunc(cases, func(c codecCase) bool { return c.name == t.name })
		if i < 0 {
			continue
		}
		got, unit := median(ratios[i]), "× sum"
		if !t.vsSum {
			tensor := make([]float64, len(res[i]))
			for j, v := range res[i] {
				tensor[j] = v * float64(4*n) / float64(cases[i].traffic(n, 0))
			}
			got, unit = median(tensor), "GB/s"
		}
		verdict := "met"
		if got < t.min {
			verdict = "MISSED"
		}
		fmt.Printf("  %-20s %7.3f %s, target %s: %s\n", t.name, got, unit, t.comment, verdict)
	}
	if !strings.Contains(codec.Impl(), "avx") {
		fmt.Println("  (onebit ran the Go code: no AVX2 here, or a noasm build)")
	}
	return nil
}
