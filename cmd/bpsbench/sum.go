package main

import (
	"bufio"
	"encoding/binary"
	"flag"
	"fmt"
	"math"
	"os"
	"runtime"
	"slices"
	"strings"
	"time"

	"github.com/gobps/gobps/proto"
	"github.com/gobps/gobps/summation/kernel"
	"github.com/gobps/gobps/summation/kernel/stream"
)

// sumDTypes maps the short dtype names bpsbench sum takes to dtypes.
var sumDTypes = map[string]proto.DType{
	"f32": proto.Float32, "f64": proto.Float64, "f16": proto.Float16, "bf16": proto.BFloat16,
	"i32": proto.Int32, "i64": proto.Int64, "u8": proto.Uint8,
}

// sumTargets are the targets: the ratio of sum GB/s to copy GB/s
// (or, for vsGeneric, to the generic loop's GB/s) a dtype must reach at a
// size.
var sumTargets = []struct {
	dtype     string
	size      int
	vsGeneric bool
	min       float64
}{
	{"f32", 64 << 20, false, 0.90},
	{"f16", 64 << 20, false, 0.75},
	{"bf16", 64 << 20, false, 0.75},
	{"f32", 256 << 10, true, 10},
}

// sum measures kernel.Add (dst += src) for each implementation × dtype ×
// size, against copy() and a non-temporal copy (stream.Copy) of the same
// size measured in the same run, and checks the targets of issue 4.
func sum(args []string) error {
	fs := flag.NewFlagSet("sum", flag.ContinueOnError)
	implsF := fs.String("impls", strings.Join(reversed(kernel.Impls()), ","), "implementations (this CPU has "+strings.Join(kernel.Impls(), ", ")+")")
	dtypesF := fs.String("dtypes", "f32,f16,bf16,f64,i32", "dtypes (f32, f64, f16, bf16, i32, i64, u8)")
	sizesF := fs.String("sizes", "4KiB,256KiB,4MiB,64MiB", "buffer sizes")
	reps := fs.Int("reps", 10, "measurements per configuration; the best is reported")
	dur := fs.Duration("time", 100*time.Millisecond, "length of one measurement")
	if err := fs.Parse(args); err != nil {
		return err
	}
	sizes, err := parseSizes(*sizesF)
	if err != nil {
		return err
	}
	impls := strings.Split(*implsF, ",")
	for _, name := range impls {
		restore, err := kernel.SetImpl(name)
		if err != nil {
			return err
		}
		restore()
	}
	dtNames := strings.Split(*dtypesF, ",")
	for _, n := range dtNames {
		if _, ok := sumDTypes[n]; !ok {
			return fmt.Errorf("unknown dtype %q", n)
		}
	}
	if *reps < 1 {
		return fmt.Errorf("-reps %d: need at least 1", *reps)
	}

	fmt.Printf("machine: %s, %d CPUs, GOMAXPROCS %d, %s; kernels available: %s (default %s)\n",
		cpuModel(), runtime.NumCPU(), runtime.GOMAXPROCS(0), runtime.Version(), strings.Join(kernel.Impls(), ", "), kernel.Impl())
	fmt.Printf("GB/s   = (bytes read + bytes written) / s: 3 × size for Add (dst += src), 2 × size for a copy\n")
	fmt.Printf("         best of %d measurements of %v, taken round-robin over all configurations of a size;\n", *reps, *dur)
	fmt.Printf("         median = the median of the same measurements\n")
	fmt.Printf("limit  = the faster of copy() and stream.Copy (non-temporal stores) of the same size, best GB/s\n")
	fmt.Printf("read   = stream.Read: only reading the two operands, counted as an Add (3 × size): beyond L1,\n")
	fmt.Printf("         where loads wait on the cache, no Add can beat it (in L1 its loop runs slower than the kernels')\n")
	fmt.Printf("ratio  = GB/s / limit;  copy() = GB/s / copy() GB/s;  vs generic = GB/s / generic GB/s\n")
	fmt.Printf("paired = the median over the rounds of (this measurement / the limit measured at the start of\n")
	fmt.Printf("         the same round): a ratio that a slow or fast spell of the machine moves less than the bests\n\n")
	fmt.Printf("%-10s %-5s %7s %8s %8s %8s %6s %6s %7s %10s\n", "impl", "dtype", "size", "GB/s", "median", "limit", "ratio", "paired", "copy()", "vs generic")

	type key struct {
		impl, dtype string
		size        int
	}
	best := map[key]float64{}
	paired := map[key]float64{}
	limit := map[int]float64{}
	bestCopy := map[int]float64{}
	bestRead := map[int]float64{}
	for _, size := range sizes {
		res, copyRes, streamRes, readRes := measureSums(impls, dtNames, size, *reps, *dur)
		bestRead[size] = slices.Max(readRes)
		c, st := slices.Max(copyRes), slices.Max(streamRes)
		l := max(c, st)
		limit[size], bestCopy[size] = l, c
		for _, name := range impls {
			for _, dn := range dtNames {
				r := res[name+"/"+dn]
				b := slices.Max(r)
				k := key{name, dn, size}
				best[k] = b
				ratios := make([]float64, len(r))
				for i := range r {
					ratios[i] = r[i] / max(copyRes[i], streamRes[i])
				}
				paired[k] = median(ratios)
				vs := ""
				if g, ok := res["generic/"+dn]; ok && name != "generic" {
					vs = fmt.Sprintf("%.1f×", b/slices.Max(g))
				}
				fmt.Printf("%-10s %-5s %7s %8.2f %8.2f %8.2f %6.2f %6.2f %7.2f %10s\n", name, dn, human(size), b, median(r), l, b/l, paired[k], b/c, vs)
			}
		}
		fmt.Printf("%-10s %-5s %7s %8.2f %8.2f\n", "copy()", "-", human(size), c, median(copyRes))
		fmt.Printf("%-10s %-5s %7s %8.2f %8.2f\n", "stream", "-", human(size), st, median(streamRes))
		fmt.Printf("%-10s %-5s %7s %8.2f %8.2f\n", "read", "-", human(size), bestRead[size], median(readRes))
	}

	fmt.Println("\ntargets (issue 4), against the limit (best against best, the paired median, and best against copy() alone):")
	for _, t := range sumTargets {
		for _, name := range impls {
			if name == "generic" {
				continue
			}
			b, ok := best[key{name, t.dtype, t.size}]
			if !ok {
				continue
			}
			k := key{name, t.dtype, t.size}
			got, what, alt := b/limit[t.size], "of limit", fmt.Sprintf(" (paired %.2f; %.2f of copy())", paired[k], b/bestCopy[t.size])
			if t.vsGeneric {
				g, ok := best[key{"generic", t.dtype, t.size}]
				if !ok {
					continue
				}
				got, what, alt = b/g, "× generic", fmt.Sprintf(" (reading alone: %.2f × generic)", bestRead[t.size]/g)
			}
			verdict := "met"
			if got < t.min {
				verdict = "MISSED"
			} else if !t.vsGeneric && paired[k] < t.min {
				verdict = "met by the bests, MISSED by the paired median"
			}
			fmt.Printf("  %-10s %-5s %7s: %6.2f %s%s, target ≥ %.2f: %s\n", name, t.dtype, human(t.size), got, what, alt, t.min, verdict)
		}
	}
	return nil
}

// measureSums measures, for one size, every impl × dtype and the two copies,
// reps times each, round-robin so that a slow spell of the machine spreads
// over all of them. It returns GB/s figures keyed by "impl/dtype", and those
// of copy(), of stream.Copy and of stream.Read.
func measureSums(impls, dtNames []string, size, reps int, dur time.Duration) (res map[string][]float64, copyRes, streamRes, readRes []float64) {
	dst, src, cdst := make([]byte, size), make([]byte, size), make([]byte, size)
	// Write every page: an untouched page reads as the kernel's one shared
	// zero page, always in cache, which would make the copy look fast.
	for i := range src {
		src[i], cdst[i] = byte(i|1), byte(i|1)
	}
	res = map[string][]float64{}
	for r := 0; r < reps; r++ {
		copyRes = append(copyRes, rate(2*size, dur, func() { copy(cdst, src) }))
		streamRes = append(streamRes, rate(2*size, dur, func() { stream.Copy(cdst, src) }))
		readRes = append(readRes, rate(3*size, dur, func() { stream.Read(cdst, src) }))
		for _, name := range impls {
			restore, _ := kernel.SetImpl(name) // checked by the caller
			for _, dn := range dtNames {
				dt := sumDTypes[dn]
				ones(dt, src)
				clear(dst)
				res[name+"/"+dn] = append(res[name+"/"+dn], rate(3*size, dur, func() { kernel.Add(dt, dst, src) }))
			}
			restore()
		}
	}
	return res, copyRes, streamRes, readRes
}

// rate runs f, which moves bytes bytes, for about d after one warm-up call,
// and returns GB/s. Calls are timed in batches of at least a millisecond or
// so, so that reading the clock costs nothing next to them.
func rate(bytes int, d time.Duration, f func()) float64 {
	f()
	batch := 1
	for {
		t0 := time.Now()
		for i := 0; i < batch; i++ {
			f()
		}
		if time.Since(t0) >= time.Millisecond || batch >= 1<<20 {
			break
		}
		batch *= 2
	}
	n := 0
	t0 := time.Now()
	var el time.Duration
	for el < d {
		for i := 0; i < batch; i++ {
			f()
		}
		n += batch
		el = time.Since(t0)
	}
	return float64(n) * float64(bytes) / el.Seconds() / 1e9
}

// ones fills p with the value 1 of dt, so that the sums stay finite and
// normal (no denormal or NaN slows a kernel down).
func ones(dt proto.DType, p []byte) {
	le := binary.LittleEndian
	for i := 0; i < len(p); i += dt.Size() {
		switch dt {
		case proto.Float32:
			le.PutUint32(p[i:], math.Float32bits(1))
		case proto.Float64:
			le.PutUint64(p[i:], math.Float64bits(1))
		case proto.Float16:
			le.PutUint16(p[i:], kernel.F32ToF16(1))
		case proto.BFloat16:
			le.PutUint16(p[i:], kernel.F32ToBF16(1))
		case proto.Int32:
			le.PutUint32(p[i:], 1)
		case proto.Int64:
			le.PutUint64(p[i:], 1)
		case proto.Uint8:
			p[i] = 1
		}
	}
}

func median(v []float64) float64 {
	s := slices.Clone(v)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

func reversed(s []string) []string {
	s = slices.Clone(s)
	slices.Reverse(s)
	return s
}

// cpuModel returns the processor's model name from /proc/cpuinfo, or
// GOARCH where there is none.
func cpuModel() string {
	f, err := os.Open("/proc/cpuinfo")
	if err != nil {
		return runtime.GOARCH
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if k, v, ok := strings.Cut(sc.Text(), ":"); ok && strings.TrimSpace(k) == "model name" {
			return strings.TrimSpace(v)
		}
	}
	return runtime.GOARCH
}
