package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"image/color"
	"io"
	"math"
	"os"
	"os/exec"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/gobps/gobps/cmd/internal/scalemodel"
	"github.com/gobps/gobps/proto"
	"github.com/gobps/gobps/summation/kernel"
	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
)

// model is the scale model's front end (cmd/internal/scalemodel):
//
//	bpsbench model [flags]               predict gobps, ring and tree all-reduce
//	bpsbench model calibrate [flags]     measure this machine, write a profile
//	bpsbench model validate [flags] TSV… predicted against measured runs
//	                                     (scripts/bench_scale_validate.sh)
func model(args []string) error {
	if len(args) > 0 {
		switch args[0] {
		case "calibrate":
			return modelCalibrate(args[1:])
		case "validate":
			return modelValidate(args[1:])
		}
	}
	return modelPredict(args)
}

// modelPredict sweeps models × GPUs × links × placements and prints, for
// each, the iteration time of gobps, ring and tree all-reduce, the
// closed-form bounds and gobps's speed-up over the ring.
func modelPredict(args []string) error {
	fs := flag.NewFlagSet("model", flag.ContinueOnError)
	models := fs.String("model", "resnet50", "presets ("+strings.Join(scalemodel.PresetNames(), ", ")+", all), or SIZE for one tensor with no compute (64MiB)")
	gpusF := fs.String("gpus", "8,64,256,1024", "GPU counts")
	perMachine := fs.Int("per-machine", 8, "GPUs per machine (summed locally before the network)")
	placements := fs.String("placement", "dedicated,colocated", "server placement: dedicated, colocated, mixed")
	servers := fs.Int("servers", 0, "dedicated server machines (0: as many as worker machines)")
	links := fs.String("link", "25,100,200", "NIC goodput each way, Gbit/s; profile: the link goodput calibrate measured on the emulated cluster")
	latency := fs.Duration("latency", 10*time.Microsecond, "one-way latency of a message between machines")
	pcie := fs.Float64("pcie", 12, "GB/s between a GPU and host memory (0: no copy, as for CPU tensors)")
	intra := fs.Float64("intra", 130, "GB/s between the GPUs of a machine for all-reduce (NVLink); 0: unlimited")
	profileF := fs.String("profile", "", "profile from bpsbench model calibrate (summation rate, message overhead, loopback)")
	tcp := fs.Bool("tcp", false, "cap what each machine moves at the profile's loopback push_pull rate (gobps over TCP, CPU-bound); off: verbs")
	part := fs.String("partition", "4MiB", "BYTEPS_PARTITION_BYTES")
	credit := fs.String("credit", "", "BYTEPS_SCHEDULING_CREDIT in bytes (64MiB); empty: 4 partitions, gobps's default")
	threads := fs.Int("engine-threads", 0, "BYTEPS_SERVER_ENGINE_THREAD (0: gobps's default, 4)")
	bucket := fs.String("bucket", "25MiB", "all-reduce fusion bucket (PyTorch DDP's default 25 MiB)")
	grouped := fs.Bool("grouped", false, "simulate the worker machines in lockstep even where there are 16 or fewer")
	exact := fs.Bool("exact", false, "one pipeline per worker machine even beyond 16 (slow: minutes at 32 machines)")
	jitterF := fs.Float64("jitter", 0, "spread of each machine's backprop time (0.05: up to 5% slower), seeded")
	seed := fs.Int64("seed", 1, "seed of the jitter")
	iters := fs.Int("iters", 1, "iterations simulated (the median is reported)")
	md := fs.String("md", "", "also write the table here (Markdown)")
	png := fs.String("png", "", "write a plot here: speed-up over the ring against GPUs, one panel per model ({model} in the name writes one file per model)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("model: unexpected %q (subcommands: calibrate, validate)", fs.Arg(0))
	}
	var prof scalemodel.Profile
	if *profileF != "" {
		var err error
		if prof, err = scalemodel.LoadProfile(*profileF); err != nil {
			return err
		}
	}
	gpus, err := parseInts(*gpusF)
	if err != nil {
		return err
	}
	var rates []float64
	if *links == "profile" {
		if prof.LinkBits <= 0 {
			return errors.New("model: -link profile, but the profile has no link goodput (calibrate with -netcluster)")
		}
		*links = strconv.FormatFloat(prof.LinkBits/1e9, 'g', -1, 64)
	}
	for _, f := range strings.Split(*links, ",") {
		v, err := strconv.ParseFloat(strings.TrimSpace(f), 64)
		if err != nil || v <= 0 {
			return fmt.Errorf("model: bad -link %q", f)
		}
		rates = append(rates, v*1e9)
	}
	var pls []scalemodel.Placement
	for _, f := range strings.Split(*placements, ",") {
		p, err := scalemodel.ParsePlacement(strings.TrimSpace(f))
		if err != nil {
			return err
		}
		pls = append(pls, p)
	}
	var mods []scalemodel.Model
	names := strings.Split(*models, ",")
	if *models == "all" {
		names = scalemodel.PresetNames()
	}
	for _, n := range names {
		if sz, err := parseSizes(n); err == nil {
			mods = append(mods, scalemodel.Tensor(sz[0]))
			continue
		}
		m, err := scalemodel.Preset(n)
		if err != nil {
			return err
		}
		mods = append(mods, m)
	}
	pb, err := parseSizes(*part)
	if err != nil {
		return err
	}
	bb, err := parseSizes(*bucket)
	if err != nil {
		return err
	}
	creditBytes := 0
	if *credit != "" {
		cb, err := parseSizes(*credit)
		if err != nil {
			return err
		}
		creditBytes = cb[0]
	}
	var rows []predRow
	for _, mod := range mods {
		for _, g := range gpus {
			for _, r := range rates {
				for _, pl := range pls {
					c := scalemodel.Cluster{GPUs: g, GPUsPerMachine: *perMachine, Placement: pl, Servers: *servers,
						LinkBits: r, Latency: latency.Seconds(), PCIe: *pcie * 1e9, Intra: *intra * 1e9, Profile: prof,
						PartitionBytes: pb[0], CreditBytes: creditBytes, EngineThreads: *threads, BucketBytes: bb[0], Grouped: *grouped, Exact: *exact,
						Jitter: *jitterF, Seed: *seed, Iterations: *iters}
					if *tcp {
						c.EngineCap = prof.Loopback
					}
					row := predRow{model: mod, c: c}
					if row.ps, err = scalemodel.SimulatePS(c, mod); err != nil {
						return err
					}
					if row.ring, err = scalemodel.SimulateRing(c, mod); err != nil {
						return err
					}
					if row.tree, err = scalemodel.SimulateTree(c, mod); err != nil {
						return err
					}
					rows = append(rows, row)
				}
			}
		}
	}
	var sb strings.Builder
	writePredTable(&sb, rows, prof, *tcp)
	fmt.Print(sb.String())
	if *md != "" {
		if err := os.WriteFile(*md, []byte(sb.String()), 0o644); err != nil {
			return err
		}
	}
	if *png != "" {
		if strings.Contains(*png, "{model}") {
			for _, mod := range mods {
				var mine []predRow
				for _, r := range rows {
					if r.model.Name == mod.Name {
						mine = append(mine, r)
					}
				}
				name := strings.ReplaceAll(*png, "{model}", fileName(mod.Name))
				if err := writeSpeedupPlot(name, mine); err != nil {
					return fmt.Errorf("model: plot: %w", err)
				}
			}
		} else if err := writeSpeedupPlot(*png, rows); err != nil {
			return fmt.Errorf("model: plot: %w", err)
		}
	}
	return nil
}

// fileName makes a model's name a file name: "GPT-2 1.5B" → "gpt-2-1.5b".
func fileName(s string) string {
	return strings.Trim(regexp.MustCompile(`[^a-z0-9.]+`).ReplaceAllString(strings.ToLower(s), "-"), "-")
}

type predRow struct {
	model          scalemodel.Model
	c              scalemodel.Cluster
	ps, ring, tree scalemodel.Result
}

func writePredTable(w io.Writer, rows []predRow, prof scalemodel.Profile, tcp bool) {
	if prof.Date != "" {
		fmt.Fprintf(w, "Profile: %s, measured %s: summation %.1f GB/s per engine thread, push_pull overhead %.0f µs, loopback push_pull %.2f GB/s%s\n\n",
			prof.CPU, prof.Date, prof.SumBytes/1e9, prof.MessageOverhead*1e6, prof.Loopback/1e9,
			map[bool]string{true: " (each machine capped at it: -tcp)", false: ""}[tcp])
	} else {
		fmt.Fprintf(w, "No profile: summation and per-message overhead free (give -profile from bpsbench model calibrate)\n\n")
	}
	model := ""
	for _, r := range rows {
		if r.model.Name != model {
			model = r.model.Name
			fmt.Fprintf(w, "**%s**: %.1f MB of gradients in %d tensors; compute %.1f ms per iteration on a %s, %s. %s.\n\n",
				model, float64(r.model.Bytes())/1e6, len(r.model.Layers), r.ps.Compute*1e3, r.model.GPU, r.model.Batch, r.model.Source)
			fmt.Fprintln(w, "| GPUs | machines | link Gbit/s | servers | gobps ms | exposed ms | ring ms | tree ms | PS bound ms | ring bound ms | ring ÷ gobps | best all-reduce ÷ gobps |")
			fmt.Fprintln(w, "|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|")
		}
		m := max(1, r.c.GPUs/max(1, r.c.GPUsPerMachine))
		srv := r.c.Placement.String()
		switch r.c.Placement {
		case scalemodel.Dedicated:
			srv = fmt.Sprintf("%d dedicated", cmp0(r.c.Servers, m))
		case scalemodel.Colocated:
			srv = fmt.Sprintf("%d co-located", m)
		case scalemodel.Mixed:
			srv = fmt.Sprintf("%d co-located + %d dedicated", m, cmp0(r.c.Servers, m))
		}
		if r.ps.Grouped && m > 1 && r.c.Placement != scalemodel.Dedicated {
			srv += " (lockstep)"
		}
		best := min(r.ring.Iteration, r.tree.Iteration)
		fmt.Fprintf(w, "| %d | %d | %g | %s | %.1f | %.1f | %.1f | %.1f | %.1f | %.1f | %.2f | %.2f |\n",
			r.c.GPUs, m, r.c.LinkBits/1e9, srv, r.ps.Iteration*1e3, r.ps.Exposed*1e3, r.ring.Iteration*1e3, r.tree.Iteration*1e3,
			r.ps.CommBound*1e3, r.ring.CommBound*1e3, r.ring.Iteration/r.ps.Iteration, best/r.ps.Iteration)
	}
}

func cmp0(v, def int) int {
	if v == 0 {
		return def
	}
	return v
}

// writeSpeedupPlot draws ring ÷ gobps against GPUs (log axis), one panel
// per model, one line per link rate and placement.
func writeSpeedupPlot(path string, rows []predRow) error {
	var models []string
	for _, r := range rows {
		if !slices.Contains(models, r.model.Name) {
			models = append(models, r.model.Name)
		}
	}
	type key struct {
		link float64
		pl   scalemodel.Placement
	}
	palette := []color.Color{color.RGBA{0x1f, 0x77, 0xb4, 0xff}, color.RGBA{0xd6, 0x27, 0x28, 0xff}, color.RGBA{0x2c, 0xa0, 0x2c, 0xff},
		color.RGBA{0x94, 0x67, 0xbd, 0xff}, color.RGBA{0xff, 0x7f, 0x0e, 0xff}}
	var panels []*plot.Plot
	for _, name := range models {
		p := plot.New()
		p.Title.Text = name + ": ring all-reduce time ÷ gobps time"
		p.X.Label.Text = "GPUs"
		p.Y.Label.Text = "speed-up of gobps over the ring (>1: gobps faster)"
		p.X.Scale = plot.LogScale{}
		p.X.Tick.Marker = logTicks{}
		p.Legend.Top, p.Legend.Left = true, true
		p.Add(plotter.NewGrid())
		var keys []key
		for _, r := range rows {
			if r.model.Name != name {
				continue
			}
			if k := (key{r.c.LinkBits, r.c.Placement}); !slices.Contains(keys, k) {
				keys = append(keys, k)
			}
		}
		var links []float64
		for _, k := range keys {
			if !slices.Contains(links, k.link) {
				links = append(links, k.link)
			}
		}
		for _, k := range keys {
			var xy plotter.XYs
			for _, r := range rows {
				if r.model.Name == name && r.c.LinkBits == k.link && r.c.Placement == k.pl {
					xy = append(xy, plotter.XY{X: float64(r.c.GPUs), Y: r.ring.Iteration / r.ps.Iteration})
				}
			}
			ln, pts, err := plotter.NewLinePoints(xy)
			if err != nil {
				return err
			}
			col := palette[slices.Index(links, k.link)%len(palette)]
			ln.Color, pts.Color, ln.Width = col, col, vg.Points(1.5)
			if k.pl != scalemodel.Dedicated {
				ln.Dashes = []vg.Length{vg.Points(5), vg.Points(3)}
				pts.Shape = draw.BoxGlyph{}
			}
			p.Add(ln, pts)
			p.Legend.Add(fmt.Sprintf("%g Gbit/s, %s", k.link/1e9, k.pl), ln, pts)
		}
		one, err := plotter.NewLine(plotter.XYs{{X: float64(rows[0].c.GPUs), Y: 1}, {X: float64(rows[len(rows)-1].c.GPUs), Y: 1}})
		if err == nil {
			one.Color, one.Dashes = color.Gray{0x80}, []vg.Length{vg.Points(1), vg.Points(2)}
			p.Add(one)
		}
		panels = append(panels, p)
	}
	return writePanels(path, panels, 1, 6*vg.Inch, 4.5*vg.Inch)
}

// modelCalibrate measures what the model cannot know from data sheets and
// writes a profile: the summation rate of one goroutine (summation/kernel,
// float32 into a 256 KiB sum, the piece the server sums), the overhead of
// one push_pull (a one-page tensor, one worker, one server on loopback:
// the pushpull benchmark's code path) and the loopback push_pull rate
// (64 MiB in 4 MiB partitions). Given the emulated cluster's script it
// also runs its verify and records the links' goodput.
func modelCalibrate(args []string) error {
	fs := flag.NewFlagSet("model calibrate", flag.ContinueOnError)
	out := fs.String("out", "profile.json", "write the profile here")
	dur := fs.Duration("time", 2*time.Second, "measuring time of each push_pull measurement")
	nc := fs.String("netcluster", "", "scripts/netcluster.sh of a cluster that is up: also measure its links (verify)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	p := scalemodel.Profile{CPU: cpuDescription(), Date: time.Now().UTC().Format(time.RFC3339)}

	// summation: a 256 KiB piece added into a sum buffer that walks over
	// 64 MiB, as a server's keys' buffers do (so the sum comes from
	// memory, not from cache); median of 5 timings of about 0.2 s
	const piece, region = 256 << 10, 64 << 20
	dst, src := make([]byte, region), make([]byte, piece)
	ones(proto.Float32, src)
	off := 0
	var rates []float64
	for range 5 {
		rates = append(rates, 1e9*rate(piece, 200*time.Millisecond, func() {
			kernel.Add(proto.Float32, dst[off:off+piece], src)
			off = (off + piece) % region
		}))
	}
	p.SumBytes = median(rates)
	p.Notes = append(p.Notes, fmt.Sprintf("summation: kernel.Add float32, 256 KiB pieces into a 64 MiB sum region, implementation %s, median of 5", kernel.Impl()))

	small, err := measure(proto.PageSize, 1, 1, proto.PageSize, 2, false, *dur, nil, false)
	if err != nil {
		return fmt.Errorf("model calibrate: one-page push_pull: %w", err)
	}
	p.MessageOverhead = small.perIter.Seconds()
	big, err := measure(64<<20, 1, 1, 4<<20, 2, false, *dur, nil, false)
	if err != nil {
		return fmt.Errorf("model calibrate: 64 MiB push_pull: %w", err)
	}
	p.Loopback = big.goodput
	p.Notes = append(p.Notes, fmt.Sprintf("push_pull on loopback, 1 worker, 1 server, 2 lanes: 4 KiB %v per iteration (median, %d iterations), 64 MiB %.2f GB/s (%d iterations)",
		small.perIter, small.iters, big.goodput/1e9, big.iters))

	if *nc != "" {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		cmd := exec.CommandContext(ctx, *nc, "verify", "6s")
		cmd.Env = os.Environ()
		if os.Getenv("BPSBENCH") == "" {
			// verify runs bpsbench netperf on the hosts: this binary
			if self, err := os.Executable(); err == nil {
				cmd.Env = append(cmd.Env, "BPSBENCH="+self)
			}
		}
		var so bytes.Buffer
		cmd.Stdout, cmd.Stderr = &so, os.Stderr
		if err := cmd.Run(); err != nil {
			return fmt.Errorf("model calibrate: %s verify: %w", *nc, err)
		}
		m := regexp.MustCompile(`goodput_bps=([0-9]+)`).FindStringSubmatch(so.String())
		if m == nil {
			return fmt.Errorf("model calibrate: %s verify printed no goodput_bps", *nc)
		}
		p.LinkBits, _ = strconv.ParseFloat(m[1], 64)
		p.Notes = append(p.Notes, "link: "+strings.TrimSpace(lastLine(so.String())))
	}
	if err := scalemodel.SaveProfile(*out, p); err != nil {
		return err
	}
	fmt.Printf("profile %s: summation %.2f GB/s per thread, push_pull overhead %.0f µs, loopback push_pull %.2f GB/s", *out, p.SumBytes/1e9, p.MessageOverhead*1e6, p.Loopback/1e9)
	if p.LinkBits > 0 {
		fmt.Printf(", link %.1f Mbit/s", p.LinkBits/1e6)
	}
	fmt.Println()
	return nil
}

func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return lines[len(lines)-1]
}

// cpuDescription is the model name with its family and model numbers.
func cpuDescription() string {
	b, err := os.ReadFile("/proc/cpuinfo")
	if err != nil {
		return cpuModel()
	}
	var fam, mod string
	for _, l := range strings.Split(string(b), "\n") {
		k, v, ok := strings.Cut(l, ":")
		if !ok {
			continue
		}
		switch strings.TrimSpace(k) {
		case "cpu family":
			if fam == "" {
				fam = strings.TrimSpace(v)
			}
		case "model":
			if mod == "" {
				mod = strings.TrimSpace(v)
			}
		}
	}
	return fmt.Sprintf("%s (family %s, model %s)", cpuModel(), fam, mod)
}

// modelValidate reads the results of bench_allreduce_vs_ps.sh runs (its
// results.tsv, ps rows), groups the runs of each layout, and compares
// their measured median with the model's prediction at the goodput the
// runs measured: one worker per host, no compute, one float32 tensor.
func modelValidate(args []string) error {
	fs := flag.NewFlagSet("model validate", flag.ContinueOnError)
	profileF := fs.String("profile", "", "profile from bpsbench model calibrate")
	md := fs.String("md", "", "also write the table here")
	latency := fs.Duration("latency", 50*time.Microsecond, "one-way latency between the emulated hosts")
	lanes := fs.Int("lanes", 0, "GOBPS_TCP_LANES the runs used (0: gobps's default, 2)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() == 0 {
		return errors.New("model validate: give results.tsv files")
	}
	var prof scalemodel.Profile
	if *profileF != "" {
		var err error
		if prof, err = scalemodel.LoadProfile(*profileF); err != nil {
			return err
		}
	}
	type layoutKey struct {
		rate        float64
		n, k        int
		mode        string
		bytes, part int
	}
	groups := map[layoutKey][]run{}
	var order []layoutKey
	for _, path := range fs.Args() {
		f, err := os.Open(path)
		if err != nil {
			return err
		}
		rs, err := readRuns(f)
		f.Close()
		if err != nil {
			return fmt.Errorf("model validate: %s: %w", path, err)
		}
		for _, r := range rs {
			if r.method != "ps" {
				continue
			}
			k := layoutKey{r.rate, r.n, r.k, r.mode, r.bytes, r.partition}
			if _, ok := groups[k]; !ok {
				order = append(order, k)
			}
			groups[k] = append(groups[k], r)
		}
	}
	slices.SortStableFunc(order, func(a, b layoutKey) int {
		if a.rate != b.rate {
			return int(a.rate - b.rate)
		}
		if a.n != b.n {
			return a.n - b.n
		}
		return strings.Compare(a.mode, b.mode)
	})
	var sb strings.Builder
	fmt.Fprintf(&sb, "| rate | n | servers | size | runs | B Mbit/s (median) | predicted ms | measured median ms | runs' min–max ms | error | PS bound ms |\n")
	fmt.Fprintf(&sb, "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|\n")
	var worst float64
	for _, k := range order {
		rs := groups[k]
		var meds, goods []float64
		for _, r := range rs {
			meds = append(meds, r.median)
			goods = append(goods, r.goodput)
		}
		good := median(goods)
		pl, err := scalemodel.ParsePlacement(k.mode)
		if err != nil {
			return err
		}
		c := scalemodel.Cluster{GPUs: k.n, GPUsPerMachine: 1, Placement: pl, Servers: k.k, LinkBits: good,
			Latency: latency.Seconds(), Profile: prof, PartitionBytes: k.part, Lanes: *lanes}
		pred, err := scalemodel.SimulatePS(c, scalemodel.PSWorker(k.bytes))
		if err != nil {
			return err
		}
		meas := median(meds)
		e := (pred.Iteration*1e3 - meas) / meas
		worst = max(worst, math.Abs(e))
		srv := fmt.Sprintf("%d dedicated", k.k)
		if pl == scalemodel.Colocated {
			srv = fmt.Sprintf("%d co-located", k.n)
		} else if pl == scalemodel.Mixed {
			srv = fmt.Sprintf("%d co-located + %d dedicated", k.n, k.k)
		}
		fmt.Fprintf(&sb, "| %s | %d | %s | %s | %d | %.1f | %.1f | %.1f | %.1f–%.1f | %+.1f%% | %.1f |\n",
			rateName(k.rate), k.n, srv, human(k.bytes), len(rs), good/1e6, pred.Iteration*1e3, meas, slices.Min(meds), slices.Max(meds), 100*e, pred.CommBound*1e3)
	}
	fmt.Fprintf(&sb, "\nWorst error: %.1f%%\n", 100*worst)
	fmt.Print(sb.String())
	if *md != "" {
		return os.WriteFile(*md, []byte(sb.String()), 0o644)
	}
	return nil
}

func rateName(bps float64) string {
	if bps >= 1e9 {
		return fmt.Sprintf("%g Gbit/s", bps/1e9)
	}
	return fmt.Sprintf("%g Mbit/s", bps/1e6)
}
