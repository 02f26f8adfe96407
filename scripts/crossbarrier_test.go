package scripts

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestCrossBarrierBench runs bench_crossbarrier.sh in its smallest form (2
// workers, 1 server host, 100 Mbit/s, the small CNN, one run of each
// optimizer) so that the benchmark keeps working: both optimizers train,
// report a throughput, and their timelines line up into the table.
func TestCrossBarrierBench(t *testing.T) {
	needCluster(t)
	if err := exec.Command("/usr/bin/python3", "-c", "import torch").Run(); err != nil {
		t.Skipf("/usr/bin/python3 cannot import torch (apt-get install python3-torch): %v", err)
	}
	p := prefix(t)
	dir := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	var out bytes.Buffer
	start := time.Now()
	cmd := script(ctx, p, &out, "bench_crossbarrier.sh", "--rate", "100mbit", "--workers", "2", "--servers", "1",
		"--repeats", "1", "--iters", "1", "--model", "cnn", "--out", dir)
	err := cmd.Run()
	t.Logf("bench_crossbarrier.sh took %v:\n%s", time.Since(start).Round(time.Second), out.String())
	if err != nil {
		t.Fatalf("bench_crossbarrier.sh: %v", err)
	}
	if left := leftovers(t, p); len(left) > 0 {
		t.Errorf("namespaces left behind: %v", left)
	}
	b, err := os.ReadFile(filepath.Join(dir, "results.tsv"))
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]float64{}
	for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n")[1:] {
		f := strings.Split(line, "\t")
		if len(f) != 3 {
			t.Fatalf("bad results line %q", line)
		}
		v, err := strconv.ParseFloat(f[2], 64)
		if err != nil || v <= 0 {
			t.Errorf("%s: samples/s %q", f[1], f[2])
		}
		got[f[1]] = v
	}
	if _, ok := got["distributed"]; !ok {
		t.Errorf("no DistributedOptimizer result in %s", b)
	}
	if _, ok := got["crossbarrier"]; !ok {
		t.Errorf("no CrossBarrier result in %s", b)
	}
	table, _ := os.ReadFile(filepath.Join(dir, "table.md"))
	for _, want := range []string{"| period |", "| overlapped with next forward |", "crossbarrier ("} {
		if !bytes.Contains(table, []byte(want)) {
			t.Errorf("table.md lacks %q:\n%s", want, table)
		}
	}
}
