package main

import (
	"fmt"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

// The cases of python/tests/torch_checks_job.py: user mistakes that used
// to give wrong sums or hang, and uneven jobs (a worker out of data, one
// that leaves early, a suspended job), each under bpsrun with two workers
// on one emulated machine (local aggregation) and on two (--local-size 1).

// checksJob runs a case under bpsrun; out is the job's output, err its
// failure.
func checksJob(t *testing.T, localSize int, env []string, args ...string) (string, error) {
	t.Helper()
	if testing.Short() {
		t.Skip("starts a multi-process job")
	}
	needPython(t, "torch")
	dir := binaries(t)
	cmd := []string{"--local", "-np", "2", "--servers", "2", "--local-size", fmt.Sprint(localSize), "--",
		python, "python/tests/torch_checks_job.py"}
	return run(t, 2*time.Minute, pyEnv(t, env...), filepath.Join(dir, "bpsrun"), append(cmd, args...)...)
}

// eachLayout runs f with local aggregation (one machine of two workers)
// and without (two machines of one).
func eachLayout(t *testing.T, f func(t *testing.T, localSize int)) {
	for _, ls := range []int{2, 1} {
		t.Run(fmt.Sprintf("local-size=%d", ls), func(t *testing.T) { f(t, ls) })
	}
}

func wantCase(t *testing.T, localSize int, env []string, args ...string) string {
	t.Helper()
	out, err := checksJob(t, localSize, env, args...)
	if err != nil {
		t.Fatalf("%s: %v\n%s", args[0], err, out)
	}
	wantLines(t, out, 2, args[0]+" ok rank %d")
	logLines(t, out, args[0]+":")
	return out
}

// TestTorchMistakes: workers that push_pull differently named tensors, the
// same tensors in different orders, or one name with different shapes get
// an error naming both tensors within seconds, on every worker; nothing is
// summed.
func TestTorchMistakes(t *testing.T) {
	for _, c := range []string{"names", "order", "shape"} {
		t.Run(c, func(t *testing.T) {
			eachLayout(t, func(t *testing.T, ls int) { wantCase(t, ls, nil, c) })
		})
	}
}

// TestTorchOneRankDeclares: a tensor only rank 0 uses draws a warning
// naming it and the missing worker after GOBPS_DECLARE_WARN, and fails on
// rank 0 after GOBPS_DECLARE_TIMEOUT, naming both.
func TestTorchOneRankDeclares(t *testing.T) {
	eachLayout(t, func(t *testing.T, ls int) {
		out := wantCase(t, ls, []string{"GOBPS_DECLARE_WARN=1s", "GOBPS_DECLARE_TIMEOUT=3s"}, "onerank", t.TempDir())
		if !strings.Contains(out, "WARN") || !strings.Contains(out, `"lonely"`) {
			t.Errorf("no warning naming the tensor in the output:\n%s", out)
		}
	})
}

// TestTorchEarlyExit: a worker that leaves the job after one step ends the
// other's next step with an error naming it, not a hang.
func TestTorchEarlyExit(t *testing.T) {
	eachLayout(t, func(t *testing.T, ls int) { wantCase(t, ls, nil, "earlyexit") })
}

// TestTorchJoin: uneven inputs under DistributedOptimizer inside join()
// end cleanly with the weights of one process's arithmetic (a step only
// rank 1 takes averages its gradient over both workers), and the job goes
// on afterwards.
func TestTorchJoin(t *testing.T) {
	eachLayout(t, func(t *testing.T, ls int) { wantCase(t, ls, nil, "join") })
}

// TestTorchSuspendResume: suspend refuses new work until resume; resume
// with the job's size (also in byteps's elastic form) goes on with right
// sums, and training across a suspension matches one process; another
// size is refused as not implemented.
func TestTorchSuspendResume(t *testing.T) {
	eachLayout(t, func(t *testing.T, ls int) { wantCase(t, ls, nil, "suspend") })
}

// TestTorchReserve: names declared without a tensor (byteps's
// declare(name)) may then be started in any order by each worker.
func TestTorchReserve(t *testing.T) {
	eachLayout(t, func(t *testing.T, ls int) { wantCase(t, ls, nil, "reserve") })
}

// TestTorchStall: a worker that skips one tensor of a step is named, with
// the tensor (or, by its machine's local group, which it never declared the
// tensor to, the key), by the stall report (GOBPS_STALL_WARNING=1s) in the job's
// output, and the job ends with it (GOBPS_STALL_SHUTDOWN=3s) instead of
// hanging: the waiting rank's push_pull fails with the report. The
// coordinator relays the report to the job's log.
func TestTorchStall(t *testing.T) {
	eachLayout(t, func(t *testing.T, ls int) {
		out := wantCase(t, ls, []string{"GOBPS_STALL_WARNING=1s", "GOBPS_STALL_SHUTDOWN=3s"}, "stall", t.TempDir())
		if !strings.Contains(out, "stall: ") || !strings.Contains(out, "key 1.0") || !strings.Contains(out, "worker") {
			t.Errorf("no stall report naming the key and the worker in the output:\n%s", out)
		}
		// The coordinator relays it (at WARN, shown by default), naming
		// the node that saw it.
		if !regexp.MustCompile(`(?m)^\[scheduler\] .*WARN .*reports: stall: .*worker`).MatchString(out) {
			t.Errorf("the coordinator did not relay the stall report:\n%s", out)
		}
	})
}
