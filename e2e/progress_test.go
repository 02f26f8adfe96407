package e2e

import (
	"context"
	"regexp"
	"strconv"
	"testing"
	"time"
)

// TestProgress: bpsrun --progress makes the coordinator print the job's
// progress while it runs (GOBPS_PROGRESS sets the interval), at the
// default log level, with figures that fit what the job moves: every
// worker reports, and no push_pull moves more than its largest tensor each
// way.
func TestProgress(t *testing.T) {
	if testing.Short() {
		t.Skip("runs a job for a few seconds")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	// Every worker pushes to the server: slower than the one-machine
	// path, so that the job lasts for a few lines.
	j := start(t, ctx, []string{"GOBPS_PROGRESS=200ms", "BYTEPS_LOG_LEVEL=WARNING", "GOBPS_LOCAL_AGGREGATION=0"},
		"--local", "-np", "2", "--servers", "1", "--progress", "--",
		bin+"/testjob", "-tensors", "8", "-rounds", "400", "-max", "4194304")
	re := regexp.MustCompile(`^\[scheduler\] .*progress: 2 of 2 workers reporting: ([0-9.]+) push_pulls/s and ([0-9.]+) GB/s per worker; slowest worker [01]: `)
	got := j.waitFor(re, 2, time.Minute)
	m := re.FindStringSubmatch(got[len(got)-1].text)
	ops, _ := strconv.ParseFloat(m[1], 64)
	gbs, _ := strconv.ParseFloat(m[2], 64)
	if ops <= 0 || gbs <= 0 {
		t.Errorf("progress reports %v push_pulls/s and %v GB/s: %s", ops, gbs, got[len(got)-1].text)
	}
	// No tensor is larger than 4 MiB.
	if perOp := gbs * 1e9 / ops; perOp > (4<<20)*1.1 {
		t.Errorf("%.0f bytes per push_pull per worker, more than the job can move: %s", perOp, got[len(got)-1].text)
	}
	if code := j.wait(time.Minute); code != 0 {
		t.Fatalf("exit %d:\n%s", code, j.output())
	}
}
