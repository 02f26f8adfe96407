package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// validate reads benchmark results, predicts each layout and reports
// the error against the median of its runs.
func TestModelValidate(t *testing.T) {
	dir := t.TempDir()
	tsv := filepath.Join(dir, "results.tsv")
	// three runs of 2 workers and 2 dedicated servers, 64 MiB at
	// 1 Gbit/s goodput: M/B is 536.9 ms, the model says a little more
	results := "method\tn\tk\tmode\tbytes\tpartition\tcredit\trate_bps\tgoodput_bps\tmedian_ms\tmin_ms\tmax_ms\titers\n" +
		"ps\t2\t2\tdedicated\t67108864\t4194304\t0\t1000000000\t1000000000\t540\t530\t560\t5\n" +
		"ps\t2\t2\tdedicated\t67108864\t4194304\t0\t1000000000\t1000000000\t600\t590\t610\t5\n" +
		"ring\t2\t0\tnone\t67108864\t4194304\t0\t1000000000\t1000000000\t999\t999\t999\t5\n" +
		"ps\t2\t2\tdedicated\t67108864\t4194304\t0\t1000000000\t1000000000\t550\t540\t555\t5\n"
	if err := os.WriteFile(tsv, []byte(results), 0o644); err != nil {
		t.Fatal(err)
	}
	md := filepath.Join(dir, "v.md")
	if err := model([]string{"validate", "-md", md, tsv}); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(md)
	if err != nil {
		t.Fatal(err)
	}
	var row string
	for _, l := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(l, "| 1 Gbit/s | 2 | 2 dedicated") {
			row = l
		}
	}
	// the ring line is not a PS run; the three PS runs: median 550, 540–600
	if !strings.Contains(row, "| 3 |") || !strings.Contains(row, "| 550.0 | 540.0–600.0 |") || !strings.Contains(row, "| 536.9 |") {
		t.Errorf("row %q: want 3 runs, median 550.0, range 540.0–600.0 and the bound 536.9", row)
	}
}

// predict writes a table and a plot.
func TestModelPredict(t *testing.T) {
	dir := t.TempDir()
	md, png := filepath.Join(dir, "t.md"), filepath.Join(dir, "p_{model}.png")
	if err := model([]string{"-model", "resnet50", "-gpus", "8,16", "-link", "25", "-md", md, "-png", png}); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(md)
	if err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(string(b), "\n| 16 | 2 | 25 |"); n != 2 {
		t.Errorf("%d rows of 16 GPUs on 25 Gbit/s, want 2 (dedicated, co-located):\n%s", n, b)
	}
	if _, err := os.Stat(filepath.Join(dir, "p_resnet-50.png")); err != nil {
		t.Error(err)
	}
	if err := model([]string{"-model", "nosuch"}); err == nil {
		t.Error("an unknown preset gave no error")
	}
}
