package main

import (
	"bufio"
	"errors"
	"flag"
	"fmt"
	"image/color"
	"io"
	"math"
	"os"
	"slices"
	"strconv"
	"strings"

	"github.com/gobps/gobps/proto"
	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
	"gonum.org/v1/plot/vg/vgimg"
)

// report reads the results scripts/bench_allreduce_vs_ps.sh collects (one
// tab-separated line per run), adds the bandwidth bounds of each method at
// the link goodput the script measured, prints a Markdown table and writes a
// PNG plot: time against model size, one panel per worker/server layout,
// one line per method, the bounds dashed.
func report(args []string) error {
	fs := flag.NewFlagSet("report", flag.ContinueOnError)
	in := fs.String("in", "", "results file (tab-separated, with a header line)")
	png := fs.String("png", "", "write the plot here")
	md := fs.String("md", "", "also write the Markdown table here")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *in == "" {
		return errors.New("report: give -in")
	}
	f, err := os.Open(*in)
	if err != nil {
		return err
	}
	rows, err := readRuns(f)
	f.Close()
	if err != nil {
		return fmt.Errorf("report: %s: %w", *in, err)
	}
	if len(rows) == 0 {
		return fmt.Errorf("report: %s holds no runs", *in)
	}
	var sb strings.Builder
	writeTable(&sb, rows)
	fmt.Print(sb.String())
	if *md != "" {
		if err := os.WriteFile(*md, []byte(sb.String()), 0o644); err != nil {
			return err
		}
	}
	if *png != "" {
		if err := writePlot(*png, rows); err != nil {
			return fmt.Errorf("report: plot: %w", err)
		}
	}
	return nil
}

// run is one line of the results: one method on one layout and size.
type run struct {
	method    string // ps, ring, gloo
	n, k      int    // workers; dedicated server hosts
	mode      string // dedicated, colocated, mixed
	bytes     int
	partition int
	rate      float64 // shaped link rate, bit/s
	goodput   float64 // measured TCP goodput per link, bit/s
	median    float64 // ms: the slowest worker's median iteration
	min, max  float64
}

var runColumns = []string{"method", "n", "k", "mode", "bytes", "partition", "rate_bps", "goodput_bps", "median_ms", "min_ms", "max_ms"}

func readRuns(r io.Reader) ([]run, error) {
	sc := bufio.NewScanner(r)
	var cols map[string]int
	var out []run
	line := 0
	for sc.Scan() {
		line++
		text := strings.TrimSpace(sc.Text())
		if text == "" || strings.HasPrefix(text, "#") {
			continue
		}
		fields := strings.Split(text, "\t")
		if cols == nil {
			cols = map[string]int{}
			for i, c := range fields {
				cols[c] = i
			}
			for _, c := range runColumns {
				if _, ok := cols[c]; !ok {
					return nil, fmt.Errorf("header lacks column %q", c)
				}
			}
			continue
		}
		get := func(c string) string {
			if i := cols[c]; i < len(fields) {
				return fields[i]
			}
			return ""
		}
		var err error
		num := func(c string) float64 {
			v, e := strconv.ParseFloat(get(c), 64)
			if e != nil && err == nil {
				err = fmt.Errorf("line %d: %s %q: %w", line, c, get(c), e)
			}
			return v
		}
		r := run{
			method: get("method"), mode: get("mode"),
			n: int(num("n")), k: int(num("k")), bytes: int(num("bytes")), partition: int(num("partition")),
			rate: num("rate_bps"), goodput: num("goodput_bps"),
			median: num("median_ms"), min: num("min_ms"), max: num("max_ms"),
		}
		if err != nil {
			return nil, err
		}
		out = append(out, r)
	}
	return out, sc.Err()
}

// Bounds, in ms, of an iteration that all-reduces m bytes over links of
// goodput bit/s each way. See docs/benchmarks.md, "The cost model".

// ringBound: every rank sends and receives 2(n−1)/n · M.
func ringBound(n, m int, goodput float64) float64 {
	return 2 * float64(n-1) / float64(n) * float64(m) * 8 / goodput * 1e3
}

// psBound: the busiest link of a parameter-server iteration, with keys
// spread evenly by bytes over the servers.
//   - dedicated (k server hosts): a worker sends and receives M, a server
//     n·M/k: max(1, n/k) · M/B.
//   - colocated (one server on every worker host): a host sends its
//     worker's pushes to the n−1 other servers and its server's answers to
//     the n−1 other workers: 2(n−1)/n · M/B, the ring's bound.
//   - mixed (n colocated servers plus k dedicated hosts, BytePS's mixed
//     mode: the share x = proto.MixedShare(n, k) of the bytes on the
//     dedicated ones): a worker host moves x·M + 2(1−x)(n−1)/n · M, a
//     dedicated host n·x·M/k.
func psBound(mode string, n, k, m int, goodput float64) float64 {
	M := float64(m)
	var load float64 // bytes over the busiest link, one way
	switch mode {
	case "colocated":
		load = 2 * float64(n-1) / float64(n) * M
	case "mixed":
		x := proto.MixedShare(n, k)
		load = max(x*M+2*(1-x)*float64(n-1)/float64(n)*M, float64(n)*x*M/float64(k))
	default:
		load = max(1, float64(n)/float64(k)) * M
	}
	return load * 8 / goodput * 1e3
}

// psTail is what whole-partition answers add to psBound: a server answers a
// key only once every worker's push of it is in, so the answers of the last
// key (one partition to each remote worker) leave after its busiest link
// has carried everything else.
func psTail(mode string, n, m, partition int, goodput float64) float64 {
	p := float64(min(partition, m))
	remote := float64(n) // workers a server answers over the network
	if mode == "colocated" {
		remote = float64(n - 1)
	}
	return remote * p * 8 / goodput * 1e3
}

func (r run) bound() float64 {
	if r.method == "ps" {
		return psBound(r.mode, r.n, r.k, r.bytes, r.goodput)
	}
	return ringBound(r.n, r.bytes, r.goodput)
}

// layout names a worker/server arrangement.
type layout struct {
	n, k int
	mode string
}

func (l layout) servers() string {
	switch l.mode {
	case "colocated":
		return fmt.Sprintf("%d co-located", l.n)
	case "mixed":
		return fmt.Sprintf("%d co-located + %d dedicated", l.n, l.k)
	}
	return fmt.Sprintf("%d dedicated", l.k)
}

func (l layout) title() string { return fmt.Sprintf("n=%d workers, %s servers", l.n, l.servers()) }

// group indexes runs by layout and size.
type group struct {
	layouts []layout
	sizes   map[layout][]int
	by      map[layout]map[int]map[string]run
}

func groupRuns(rows []run) group {
	g := group{sizes: map[layout][]int{}, by: map[layout]map[int]map[string]run{}}
	for _, r := range rows {
		l := layout{r.n, r.k, r.mode}
		if r.method != "ps" {
			// the all-reduce baselines use only the worker hosts: they
			// belong to every layout with the same n
			l = layout{r.n, -1, ""}
		}
		if g.by[l] == nil {
			g.by[l] = map[int]map[string]run{}
			if r.method == "ps" {
				g.layouts = append(g.layouts, l)
			}
		}
		if g.by[l][r.bytes] == nil {
			g.by[l][r.bytes] = map[string]run{}
			g.sizes[l] = append(g.sizes[l], r.bytes)
		}
		g.by[l][r.bytes][r.method] = r
	}
	for l := range g.sizes {
		slices.Sort(g.sizes[l])
	}
	// a baseline with no PS layout of its n still gets a row
	for l := range g.by {
		if l.k == -1 && !slices.ContainsFunc(g.layouts, func(p layout) bool { return p.n == l.n }) {
			g.layouts = append(g.layouts, l)
		}
	}
	slices.SortStableFunc(g.layouts, func(a, b layout) int {
		if a.n != b.n {
			return a.n - b.n
		}
		order := map[string]int{"colocated": 0, "mixed": 2, "dedicated": 1}
		if a.mode != b.mode {
			return order[a.mode] - order[b.mode]
		}
		return a.k - b.k
	})
	return g
}

// runsAt returns the runs of layout l at size s, baselines included.
func (g group) runsAt(l layout, s int) map[string]run {
	out := map[string]run{}
	for m, r := range g.by[layout{l.n, -1, ""}][s] {
		out[m] = r
	}
	if l.k >= 0 {
		for m, r := range g.by[l][s] {
			out[m] = r
		}
	}
	return out
}

func (g group) sizesOf(l layout) []int {
	s := slices.Clone(g.sizes[layout{l.n, -1, ""}])
	if l.k >= 0 {
		s = append(s, g.sizes[l]...)
	}
	slices.Sort(s)
	return slices.Compact(s)
}

func writeTable(w io.Writer, rows []run) {
	g := groupRuns(rows)
	fmt.Fprintln(w, "Times are the slowest worker's median iteration, in ms; B is the TCP goodput per link that `netcluster.sh verify` measured. Bounds are at B: PS max(1, n/k)·M/B (dedicated), 2(n−1)/n·M/B (co-located, as the ring); \"+tail\" adds the last partition's answers (see the cost model).")
	fmt.Fprintln(w)
	fmt.Fprintln(w, "| n | servers | size | B Mbit/s | gobps PS | ring (Go) | gloo | PS bound | PS bound +tail | ring bound | PS ÷ PS bound | ring ÷ ring bound | ring ÷ PS | gloo ÷ PS |")
	fmt.Fprintln(w, "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
	cell := func(v float64) string {
		if math.IsNaN(v) || v == 0 {
			return "–"
		}
		return fmt.Sprintf("%.1f", v)
	}
	ratio := func(a, b float64) string {
		if math.IsNaN(a) || math.IsNaN(b) || a == 0 || b == 0 {
			return "–"
		}
		return fmt.Sprintf("%.2f", a/b)
	}
	for _, l := range g.layouts {
		servers := l.servers()
		if l.k < 0 {
			servers = "(no PS run)"
		}
		for _, s := range g.sizesOf(l) {
			rs := g.runsAt(l, s)
			val := func(m string) float64 {
				if r, ok := rs[m]; ok {
					return r.median
				}
				return math.NaN()
			}
			var any run
			for _, r := range rs {
				any = r
				break
			}
			ps, rg, gl := val("ps"), val("ring"), val("gloo")
			psB, psT := math.NaN(), math.NaN()
			if r, ok := rs["ps"]; ok {
				psB = r.bound()
				psT = psB + psTail(r.mode, r.n, r.bytes, r.partition, r.goodput)
			}
			ringB := ringBound(l.n, s, any.goodput)
			fmt.Fprintf(w, "| %d | %s | %s | %.1f | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n",
				l.n, servers, human(s), any.goodput/1e6, cell(ps), cell(rg), cell(gl),
				cell(psB), cell(psT), cell(ringB), ratio(ps, psB), ratio(rg, ringB), ratio(rg, ps), ratio(gl, ps))
		}
	}
}

var methodStyle = map[string]struct {
	label string
	color color.Color
}{
	"ps":   {"gobps push_pull", color.RGBA{R: 0x1f, G: 0x77, B: 0xb4, A: 0xff}},
	"ring": {"ring all-reduce (Go)", color.RGBA{R: 0xd6, G: 0x27, B: 0x28, A: 0xff}},
	"gloo": {"gloo all_reduce", color.RGBA{R: 0x2c, G: 0xa0, B: 0x2c, A: 0xff}},
}

func writePlot(path string, rows []run) error {
	g := groupRuns(rows)
	var panels []*plot.Plot
	for _, l := range g.layouts {
		p := plot.New()
		p.Title.Text = l.title()
		if l.k < 0 {
			p.Title.Text = fmt.Sprintf("n=%d workers (all-reduce only)", l.n)
		}
		p.X.Label.Text = "model size (MiB)"
		p.Y.Label.Text = "iteration (ms)"
		p.X.Scale, p.Y.Scale = plot.LogScale{}, plot.LogScale{}
		p.X.Tick.Marker, p.Y.Tick.Marker = logTicks{}, logTicks{}
		p.Legend.Top, p.Legend.Left = true, true
		p.Legend.TextStyle.Font.Size = vg.Points(8)
		sizes := g.sizesOf(l)
		var xt []plot.Tick
		for _, sz := range sizes {
			xt = append(xt, plot.Tick{Value: float64(sz) / (1 << 20), Label: strconv.FormatFloat(float64(sz)/(1<<20), 'g', -1, 64)})
		}
		p.X.Tick.Marker = plot.ConstantTicks(xt)
		series := func(f func(map[string]run) (float64, bool)) plotter.XYs {
			var xy plotter.XYs
			for _, s := range sizes {
				if v, ok := f(g.runsAt(l, s)); ok && v > 0 {
					xy = append(xy, plotter.XY{X: float64(s) / (1 << 20), Y: v})
				}
			}
			return xy
		}
		// explicit ranges: a log axis needs them when there is one size
		lo, hi := math.Inf(1), 0.0
		for _, s := range sizes {
			for _, r := range g.runsAt(l, s) {
				for _, v := range []float64{r.median, r.bound(), ringBound(r.n, r.bytes, r.goodput)} {
					if v > 0 {
						lo, hi = min(lo, v), max(hi, v)
					}
				}
			}
		}
		if hi > 0 {
			p.Y.Min, p.Y.Max = lo/1.2, hi*1.2
		}
		p.X.Min, p.X.Max = float64(sizes[0])/(1<<20)/1.5, float64(sizes[len(sizes)-1])/(1<<20)*1.5
		for _, m := range []string{"ps", "ring", "gloo"} {
			xy := series(func(rs map[string]run) (float64, bool) { r, ok := rs[m]; return r.median, ok })
			if len(xy) == 0 {
				continue
			}
			ln, pts, err := plotter.NewLinePoints(xy)
			if err != nil {
				return err
			}
			st := methodStyle[m]
			ln.Color, pts.Color = st.color, st.color
			ln.Width = vg.Points(1.5)
			p.Add(ln, pts)
			p.Legend.Add(st.label, ln, pts)
		}
		dashed := []vg.Length{vg.Points(5), vg.Points(3)}
		bounds := []struct {
			label string
			col   color.Color
			f     func(map[string]run) (float64, bool)
		}{
			{"PS bound", methodStyle["ps"].color, func(rs map[string]run) (float64, bool) {
				r, ok := rs["ps"]
				return r.bound(), ok
			}},
			{"PS bound + last partition's answers", methodStyle["ps"].color, func(rs map[string]run) (float64, bool) {
				r, ok := rs["ps"]
				return r.bound() + psTail(r.mode, r.n, r.bytes, r.partition, r.goodput), ok
			}},
			{"ring bound", methodStyle["ring"].color, func(rs map[string]run) (float64, bool) {
				for _, r := range rs {
					return ringBound(r.n, r.bytes, r.goodput), true
				}
				return 0, false
			}},
		}
		for _, b := range bounds {
			xy := series(b.f)
			if len(xy) == 0 {
				continue
			}
			ln, err := plotter.NewLine(xy)
			if err != nil {
				return err
			}
			ln.Color, ln.Dashes, ln.Width = b.col, dashed, vg.Points(1)
			if strings.Contains(b.label, "+") {
				ln.Dashes = []vg.Length{vg.Points(1), vg.Points(3)}
			}
			p.Add(ln)
			p.Legend.Add(b.label, ln)
		}
		panels = append(panels, p)
	}
	return writePanels(path, panels, min(3, len(panels)), 5*vg.Inch, 4*vg.Inch)
}

// writePanels writes panels to path as one PNG, cols a row, each pw by ph,
// left to right and top to bottom.
func writePanels(path string, panels []*plot.Plot, cols int, pw, ph vg.Length) error {
	rowsN := (len(panels) + cols - 1) / cols
	img := vgimg.New(vg.Length(cols)*pw, vg.Length(rowsN)*ph)
	dc := draw.New(img)
	grid := make([][]*plot.Plot, rowsN)
	for i := range grid {
		grid[i] = make([]*plot.Plot, cols)
		for j := range grid[i] {
			if k := i*cols + j; k < len(panels) {
				grid[i][j] = panels[k]
			}
		}
	}
	canvases := plot.Align(grid, draw.Tiles{Rows: rowsN, Cols: cols, PadX: vg.Millimeter * 4, PadY: vg.Millimeter * 4,
		PadTop: vg.Millimeter * 2, PadBottom: vg.Millimeter * 2, PadLeft: vg.Millimeter * 2, PadRight: vg.Millimeter * 2}, dc)
	for i := range grid {
		for j, p := range grid[i] {
			if p != nil {
				p.Draw(canvases[i][j])
			}
		}
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if _, err := (vgimg.PngCanvas{Canvas: img}).WriteTo(f); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// logTicks labels a log axis at 1, 2 and 5 times powers of ten (and at
// every integer multiple when that gives fewer than two labels), so that
// an axis spanning less than a decade still has numbers on it.
type logTicks struct{}

func (logTicks) Ticks(lo, hi float64) []plot.Tick {
	if lo <= 0 || hi <= lo {
		return nil
	}
	gen := func(mults []float64) []plot.Tick {
		var out []plot.Tick
		for e := math.Floor(math.Log10(lo)); math.Pow(10, e) <= hi; e++ {
			for _, m := range mults {
				v := m * math.Pow(10, e)
				if v >= lo*(1-1e-9) && v <= hi*(1+1e-9) {
					out = append(out, plot.Tick{Value: v, Label: strconv.FormatFloat(v, 'g', -1, 64)})
				}
			}
		}
		return out
	}
	t := gen([]float64{1, 2, 5})
	if len(t) < 2 {
		t = gen([]float64{1, 2, 3, 4, 5, 6, 7, 8, 9})
	}
	return t
}
