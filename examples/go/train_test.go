package main

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestDistributedMatchesSingle trains for 5 epochs with 4 workers and 2
// servers under bpsrun, and in one process without gobps, and compares the
// final weights.
func TestDistributedMatchesSingle(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs a 7-process job")
	}
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	dir := t.TempDir()
	command(ctx, t, moduleRoot(t), "go", "build", "-o", dir+string(filepath.Separator), "./cmd/bpsrun", "./examples/go")
	bin, bpsrun := filepath.Join(dir, "go"), filepath.Join(dir, "bpsrun")

	const epochs, workers = 5, 4
	refPath := filepath.Join(dir, "ref.json")
	command(ctx, t, dir, bin, "-single", "-epochs", fmt.Sprint(epochs), "-out", refPath)
	out := command(ctx, t, dir, bpsrun, "--local", "-np", fmt.Sprint(workers), "--servers", "2", "--",
		bin, "-epochs", fmt.Sprint(epochs), "-out", filepath.Join(dir, "dist-{rank}.json"))
	t.Logf("bpsrun output:\n%s", out)
	if !strings.Contains(out, fmt.Sprintf("[worker 0] epoch %d loss ", epochs)) {
		t.Errorf("rank 0 did not print epoch %d's loss", epochs)
	}

	ref := readResult(t, refPath)
	var dist []*Result
	for r := 0; r < workers; r++ {
		res := readResult(t, filepath.Join(dir, fmt.Sprintf("dist-%d.json", r)))
		if res.Mode != "gobps" || res.Rank != r || res.Size != workers {
			t.Fatalf("dist-%d.json: mode %q rank %d size %d; want gobps, %d, %d", r, res.Mode, res.Rank, res.Size, r, workers)
		}
		dist = append(dist, res)
	}

	// Every rank applies the same averaged gradient (pulled from the same
	// servers) to the same broadcast weights: bit-identical.
	for r := 1; r < workers; r++ {
		for i, tn := range dist[r].Tensors {
			for j, v := range tn.Data {
				if w0 := dist[0].Tensors[i].Data[j]; math.Float64bits(v) != math.Float64bits(w0) {
					t.Fatalf("rank %d %s[%d] = %v, rank 0 has %v", r, tn.Name, j, v, w0)
				}
			}
		}
	}

	// Against the single-process run the only difference is the order of
	// float64 summation: each worker sums its 16 samples and divides by 16,
	// a server sums the 4 shard means in the order they arrive and each
	// worker divides by 4, where the reference sums 64 samples and divides
	// by 64. That costs a few ulps per step (measured: max |Δw| between
	// 2.8e-16 and 3.9e-16 after 320 steps, varying with the arrival order),
	// so 1e-9 relative leaves six orders of magnitude for growth over the
	// steps while still catching any real error in sharding, averaging or
	// broadcast: a missing Average divide, a wrong shard or a rank left on
	// its own initial weights moves some weight by more than 1e-3.
	const tol = 1e-9
	var maxErr float64
	bad := 0
	for i, tn := range ref.Tensors {
		got := dist[0].Tensors[i]
		if got.Name != tn.Name || len(got.Data) != len(tn.Data) {
			t.Fatalf("tensor %d: gobps has %s[%d], single %s[%d]", i, got.Name, len(got.Data), tn.Name, len(tn.Data))
		}
		for j, w := range tn.Data {
			d := math.Abs(got.Data[j] - w)
			maxErr = max(maxErr, d)
			if !(d <= tol*(1+math.Abs(w))) {
				if bad++; bad > 5 {
					continue
				}
				t.Errorf("%s[%d]: gobps %v, single %v, |Δ| %.3g > %g·(1+|w|)", tn.Name, j, got.Data[j], w, d, tol)
			}
		}
	}
	if bad > 0 {
		t.Errorf("%d weights differ by more than the tolerance (first 5 above)", bad)
	}
	t.Logf("max |w_gobps - w_single| = %.3g", maxErr)
	for e := range ref.Loss {
		if d := math.Abs(dist[0].Loss[e] - ref.Loss[e]); !(d <= tol*(1+ref.Loss[e])) {
			t.Errorf("epoch %d loss: gobps %v, single %v", e+1, dist[0].Loss[e], ref.Loss[e])
		}
	}

	// And it learned something.
	if first, last := ref.Loss[0], ref.Loss[len(ref.Loss)-1]; !(last < 0.8*first) {
		t.Errorf("loss went from %.4f to %.4f over %d epochs; want a drop of at least 20%%", first, last, epochs)
	}
}

// TestGradMatchesFiniteDifferences checks the hand-written backward pass
// against central differences of the mean loss.
func TestGradMatchesFiniteDifferences(t *testing.T) {
	data, _ := MakeBlobs(3, 32, 0, 5, 3)
	p := NewParams(5, 4, 3)
	p.Init(rand.New(rand.NewPCG(3, 2)))
	g := NewParams(5, 4, 3)
	idx := []int{0, 3, 5, 7, 11, 31}
	var sc scratch
	var announced []int
	p.Grad(data, idx, g, &sc, func(i int) { announced = append(announced, i) })
	if len(announced) != numTensors {
		t.Fatalf("ready called for tensors %v; want each of %d once", announced, numTensors)
	}
	meanLoss := func() float64 {
		l, _ := p.Grad(data, idx, NewParams(5, 4, 3), &sc, nil)
		return l / float64(len(idx))
	}
	const h = 1e-6
	for ti, v := range p.T {
		for j := range v {
			old := v[j]
			v[j] = old + h
			up := meanLoss()
			v[j] = old - h
			down := meanLoss()
			v[j] = old
			want := (up - down) / (2 * h)
			if got := g.T[ti][j]; math.Abs(got-want) > 1e-7*(1+math.Abs(want)) {
				t.Errorf("%s[%d]: backward %v, finite difference %v", tensorNames[ti], j, got, want)
			}
		}
	}
}

// command runs a command bounded by ctx and returns its combined output; any
// failure is fatal.
func command(ctx context.Context, t *testing.T, dir, name string, args ...string) string {
	t.Helper()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Dir = dir
	cmd.WaitDelay = 10 * time.Second // don't hang on pipes held by orphaned children
	start := time.Now()
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v (after %v, ctx: %v)\n%s", filepath.Base(name), strings.Join(args, " "), err,
			time.Since(start).Round(time.Millisecond), ctx.Err(), out)
	}
	return string(out)
}

func moduleRoot(t *testing.T) string {
	t.Helper()
	dir, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			t.Fatal("no go.mod above the test's directory")
		}
		dir = parent
	}
}

func readResult(t *testing.T, path string) *Result {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var r Result
	if err := json.Unmarshal(b, &r); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	if len(r.Tensors) != numTensors || len(r.Loss) == 0 {
		t.Fatalf("%s: %d tensors, %d epochs of loss", path, len(r.Tensors), len(r.Loss))
	}
	return &r
}
