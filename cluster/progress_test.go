package cluster

import (
	"fmt"
	"strings"
	"testing"
	"time"
)

// TestProgressLine: rates come from each worker's last two reports; the
// slowest is the one with the fewest push_pulls a second; workers silent
// for three intervals, and those that left, are not counted; a line is
// due once an interval.
func TestProgressLine(t *testing.T) {
	t0 := time.Unix(1000, 0)
	pr := progress{every: time.Second}
	if l := pr.line(t0, 3); l != "" {
		t.Errorf("a line before any report: %q", l)
	}
	pr.record(0, Progress{Ops: 100, Bytes: 1e9}, t0)
	pr.record(1, Progress{Ops: 100, Bytes: 1e9}, t0)
	pr.record(2, Progress{Ops: 5, Bytes: 5}, t0)
	pr.record(0, Progress{Ops: 300, Bytes: 3e9}, t0.Add(time.Second))
	pr.record(1, Progress{Ops: 200, Bytes: 2e9}, t0.Add(2*time.Second))
	// worker 0: 200 ops and 2e9 bytes in 1 s; worker 1: 100 and 1e9 in 2 s.
	want := "progress: 2 of 3 workers reporting: 125.0 push_pulls/s and 1.250 GB/s per worker; slowest worker 1: 50.0 push_pulls/s, 0.500 GB/s"
	if l := pr.line(t0.Add(2*time.Second), 3); l != want {
		t.Errorf("got  %q\nwant %q", l, want)
	}
	if l := pr.line(t0.Add(2500*time.Millisecond), 3); l != "" {
		t.Errorf("a second line within the interval: %q", l)
	}
	pr.forget(1)
	if l := pr.line(t0.Add(3*time.Second), 3); !strings.HasPrefix(l, "progress: 1 of 3 workers") {
		t.Errorf("after worker 1 left: %q", l)
	}
	if l := pr.line(t0.Add(10*time.Second), 3); l != "" {
		t.Errorf("a line from stale reports: %q", l)
	}
	// A counter that went backwards (a restarted worker) gives no rate.
	pr.record(0, Progress{Ops: 1, Bytes: 1}, t0.Add(11*time.Second))
	if l := pr.line(t0.Add(12*time.Second), 3); l != "" {
		t.Errorf("a rate from a counter that went back: %q", l)
	}
	if _, err := decodeProgress(make([]byte, 15)); err == nil {
		t.Error("a 15-byte progress payload decoded")
	}
	if p, err := decodeProgress(Progress{Ops: 7, Bytes: 1 << 40}.encode()); err != nil || p != (Progress{7, 1 << 40}) {
		t.Errorf("round trip: %+v, %v", p, err)
	}
}

// TestProgressReports: workers' reports reach the coordinator, which logs
// the job's progress line as a NOTICE; a server that sends one is dropped
// as a protocol error.
func TestProgressReports(t *testing.T) {
	t.Parallel()
	ctx := timeout(t, 8*time.Second)
	lines := make(chan string, 256)
	tc := startCoordinator(t, CoordinatorConfig{NumWorkers: 2, NumServers: 1, Progress: 100 * time.Millisecond,
		Logf: func(format string, a ...any) {
			select {
			case lines <- fmt.Sprintf(format, a...):
			default:
			}
		}}, nil)
	ms := joinAll(t, ctx, tc.Addr(), Options{}, worker(0), worker(1), server("127.0.0.1:7000", 7))
	// Both report every 20 ms; worker 0 completes 1 push_pull between
	// reports, worker 1 a thousand: whatever the timing of the reports,
	// worker 0 is the slowest.
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for i := uint64(1); ; i++ {
		for w := 0; w < 2; w++ {
			if err := ms[w].Progress(Progress{Ops: i * uint64(1+999*w), Bytes: i << 20}); err != nil {
				t.Fatal(err)
			}
		}
		select {
		case <-tick.C:
		case <-ctx.Done():
			t.Fatal("no progress line")
		}
		found := ""
		for len(lines) > 0 {
			if l := <-lines; strings.HasPrefix(l, "NOTICE: progress: 2 of 2 workers reporting") {
				found = l
			}
		}
		if found != "" {
			if !strings.Contains(found, "slowest worker 0") {
				t.Errorf("worker 0 reports fewer push_pulls, but: %s", found)
			}
			break
		}
	}
	if err := ms[2].Progress(Progress{}); err != nil {
		t.Fatal(err)
	}
	select {
	case <-ms[2].Done():
		wantErr(t, ms[2].Err(), "not a registered worker")
	case <-ctx.Done():
		t.Fatal("a server's progress frame was accepted")
	}
}
