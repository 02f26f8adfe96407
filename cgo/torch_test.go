package main

import (
	"errors"
	"fmt"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// The PyTorch plugin's tests: python/tests/torch_job.py cases and the
// examples in examples/pytorch, run with Debian's /usr/bin/python3 (the
// interpreter python3-torch and python3-sklearn are built for).

const python = "/usr/bin/python3"

var (
	pyOnce sync.Once
	pySkip map[string]string // module -> why it cannot be imported
)

// needPython skips the test unless /usr/bin/python3 imports every module.
func needPython(t *testing.T, modules ...string) {
	t.Helper()
	pyOnce.Do(func() {
		pySkip = map[string]string{}
		for _, m := range []string{"torch", "sklearn"} {
			out, err := exec.Command(python, "-c", "import "+m).CombinedOutput()
			if err != nil {
				lines := strings.Split(strings.TrimSpace(string(out)), "\n")
				pySkip[m] = fmt.Sprintf("%s cannot import %s (%v: %s); install python3-torch and python3-sklearn "+
					"(apt-get install -y python3-torch python3-sklearn) to run the PyTorch tests",
					python, m, err, lines[len(lines)-1])
			}
		}
	})
	for _, m := range modules {
		if why, ok := pySkip[m]; ok {
			t.Skip(why)
		}
	}
}

// pyEnv is the environment of the Python workers: this tree's python/
// package and the freshly built library, and no .pyc files in the tree.
func pyEnv(t *testing.T, extra ...string) []string {
	dir := binaries(t)
	return jobEnv(append([]string{
		"PYTHONPATH=" + filepath.Join(root(t), "python"),
		"GOBPS_LIB=" + filepath.Join(dir, "libgobps.so"),
		"PYTHONDONTWRITEBYTECODE=1",
	}, extra...)...)
}

// torchJob runs a case of torch_job.py under bpsrun and checks that every
// rank reports it ok.
func torchJob(t *testing.T, np, servers int, args ...string) string {
	t.Helper()
	return pyJob(t, "python/tests/torch_job.py", np, servers, args...)
}

// compatJob runs a case of torch_compat_job.py (the byteps.torch API
// beyond DistributedOptimizer) the same way.
func compatJob(t *testing.T, np, servers int, args ...string) string {
	t.Helper()
	return pyJob(t, "python/tests/torch_compat_job.py", np, servers, args...)
}

func pyJob(t *testing.T, script string, np, servers int, args ...string) string {
	t.Helper()
	if testing.Short() {
		t.Skip("starts a multi-process job")
	}
	needPython(t, "torch")
	cmd := append([]string{python, script}, args...)
	out := bpsrun(t, 2*time.Minute, pyEnv(t), np, servers, cmd...)
	wantLines(t, out, np, args[0]+" ok rank %d")
	return out
}

// logLines logs the lines of out that contain s.
func logLines(t *testing.T, out, s string) {
	for _, l := range strings.Split(out, "\n") {
		if strings.Contains(l, s) {
			t.Log(l)
		}
	}
}

// TestTorchErrors: calls before init, a non-contiguous tensor, unsupported
// dtypes and other bad calls raise clear Python exceptions; so does a call
// after shutdown.
func TestTorchErrors(t *testing.T) {
	torchJob(t, 1, 1, "errors")
}

// TestTorchNoJob: without a library, and without a job's environment, the
// exceptions say what is missing.
func TestTorchNoJob(t *testing.T) {
	if testing.Short() {
		t.Skip("builds libgobps.so")
	}
	needPython(t, "torch")
	for _, c := range []struct {
		name string
		env  []string
	}{
		{"nolib", jobEnv("PYTHONPATH="+filepath.Join(root(t), "python"), "PYTHONDONTWRITEBYTECODE=1",
			"GOBPS_LIB="+filepath.Join(t.TempDir(), "missing", "libgobps.so"))},
		{"noenv", pyEnv(t)},
	} {
		out, err := run(t, time.Minute, c.env, python, "python/tests/torch_job.py", c.name)
		if err != nil || !strings.Contains(out, c.name+" ok rank -") {
			t.Errorf("%s: %v\n%s", c.name, err, out)
		}
	}
}

// TestTorchGrads: DistributedOptimizer's gradients equal the mean of the
// workers' gradients on different data, within 1e-6 relative for float32
// and float64 models (also with backward_passes_per_step=2), and within
// fp16 rounding with Compression.fp16.
func TestTorchGrads(t *testing.T) {
	for _, np := range []int{2, 3} {
		t.Run(fmt.Sprintf("workers=%d", np), func(t *testing.T) {
			logLines(t, torchJob(t, np, 2, "grads"), "worst relative error")
		})
	}
}

// TestTorchTrain: two workers training for a few steps end with the
// weights of one process trained on the concatenated batches (1e-5).
func TestTorchTrain(t *testing.T) {
	logLines(t, torchJob(t, 2, 2, "train"), "train:")
}

// TestTorchBroadcast: broadcast_parameters and broadcast_optimizer_state
// make every rank's parameters, buffers, optimizer state and options
// identical to rank 0's (an optimizer empty on rank 0 only gets rank 0's
// state from a zero-gradient step).
func TestTorchBroadcast(t *testing.T) {
	logLines(t, torchJob(t, 3, 2, "broadcast", t.TempDir()), "broadcast:")
}

// TestTorchOverlap: the first gradient's push_pull starts, and push_pulls
// complete, before backward has computed the first layer's gradient.
func TestTorchOverlap(t *testing.T) {
	logLines(t, torchJob(t, 2, 2, "overlap"), "overlap step")
}

// TestTorchDDP: parallel.DistributedDataParallel starts every rank from
// rank 0's parameters; two workers training on halves of each batch end
// with the weights of one process trained on the whole batches (1e-5);
// gradients are the mean when backward returns, also after no_sync
// accumulation and for a branch only one rank uses; buffers follow rank 0
// at every forward (or stay each rank's own without broadcast_buffers).
func TestTorchDDP(t *testing.T) {
	logLines(t, compatJob(t, 2, 2, "ddp"), "ddp:")
}

// TestTorchCrossBarrier: CrossBarrier (per-layer updates in a background
// thread, forward pre-hooks) trains two workers to the weights of one
// process on the whole batches, with SGD (momentum, nesterov, weight
// decay, two backward passes per step), Adam and RMSprop; misuse raises
// clear errors.
func TestTorchCrossBarrier(t *testing.T) {
	logLines(t, compatJob(t, 2, 2, "crossbarrier"), "crossbarrier ")
}

// TestTorchCrossBarrierOverlap: with the last layer's update made 300 ms
// slow, the next forward pass starts its first layer before that update
// has ended and reaches the last layer only after it; the weights still
// match one process.
func TestTorchCrossBarrierOverlap(t *testing.T) {
	logLines(t, compatJob(t, 2, 2, "crossoverlap"), "crossoverlap")
}

// TestTorchFreshOptimizerState: broadcast_optimizer_state on a fresh Adam
// and SGD with momentum (plain and under DistributedOptimizer) leaves
// every rank with exactly rank 0's state after a zero-gradient step,
// without moving the parameters; training from there matches one process.
func TestTorchFreshOptimizerState(t *testing.T) {
	logLines(t, compatJob(t, 3, 2, "freshstate"), "freshstate")
}

// TestTorchMetrics: push_pull of 0-dim tensors (byteps's metric_average),
// sums, integer counts, gradients through push_pull, byteps_push_pull,
// push_pull_group_sync_inplace's counts, and get_pushpull_speed (its
// arithmetic on a fake clock, and a live figure bounded by the bytes over
// the elapsed time).
func TestTorchMetrics(t *testing.T) {
	logLines(t, compatJob(t, 2, 2, "metrics"), "metrics:")
}

// TestTorchBytepsCompat: "import byteps" fails by default; under bpsrun
// --byteps-compat a script written as BytePS's examples are (byteps.torch,
// its DistributedDataParallel, cross_barrier, metric averaging) runs
// unedited and matches one process; bpsrun says where it looked when it
// cannot find the shim; environment mode puts the shim on the path too.
func TestTorchBytepsCompat(t *testing.T) {
	if testing.Short() {
		t.Skip("starts multi-process jobs")
	}
	needPython(t, "torch")
	dir := binaries(t)
	t.Run("not by default", func(t *testing.T) {
		out, err := run(t, time.Minute, pyEnv(t), python, "-c", "import byteps")
		if err == nil || !strings.Contains(out, "No module named 'byteps'") {
			t.Errorf("import byteps without the shim: %v\n%s", err, out)
		}
	})
	for _, mode := range []string{"optimizer", "ddp", "cross_barrier"} {
		t.Run(mode, func(t *testing.T) {
			out, err := run(t, 2*time.Minute, pyEnv(t), filepath.Join(dir, "bpsrun"), "--byteps-compat", "--local",
				"-np", "2", "--servers", "2", "--", python, "python/tests/byteps_example.py", "--mode", mode)
			if err != nil {
				t.Fatalf("bpsrun --byteps-compat: %v\n%s", err, out)
			}
			wantLines(t, out, 2, "byteps_example "+mode+" ok rank %d")
			logLines(t, out, "byteps_example "+mode+":")
		})
	}
	t.Run("no shim", func(t *testing.T) {
		// No PYTHONPATH, and a bpsrun outside the source tree.
		out, err := run(t, time.Minute, jobEnv("GOBPS_LIB="+filepath.Join(dir, "libgobps.so")),
			filepath.Join(dir, "bpsrun"), "--byteps-compat", "--local", "--", python, "-c", "pass")
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.ExitCode() != 2 || !strings.Contains(out, "byteps shim") ||
			!strings.Contains(out, filepath.Join(dir, "..", "python", "compat")) {
			t.Errorf("bpsrun --byteps-compat without the shim: %v (want exit status 2 and where it looked)\n%s", err, out)
		}
	})
	t.Run("environment mode", func(t *testing.T) {
		env := pyEnv(t, "DMLC_ROLE=worker", "DMLC_NUM_WORKER=1", "DMLC_NUM_SERVER=1",
			"DMLC_PS_ROOT_URI=127.0.0.1", "DMLC_PS_ROOT_PORT=9")
		out, err := run(t, time.Minute, env, filepath.Join(dir, "bpsrun"), "--byteps-compat", python, "-c",
			"import byteps.torch, gobps.torch, os; assert byteps.torch is gobps.torch; "+
				"print('shim at', os.environ['PYTHONPATH'].split(os.pathsep)[0])")
		want := "shim at " + filepath.Join(root(t), "python", "compat")
		if err != nil || !strings.Contains(out, want) {
			t.Errorf("DMLC_ROLE=worker bpsrun --byteps-compat: %v; want %q\n%s", err, want, out)
		}
	})
}

// TestTorchExamples runs examples/pytorch briefly: train_digits must learn,
// and benchmark.py must report throughput in each of its modes.
func TestTorchExamples(t *testing.T) {
	if testing.Short() {
		t.Skip("starts multi-process jobs")
	}
	needPython(t, "torch", "sklearn")
	t.Run("train_digits", func(t *testing.T) {
		out := bpsrun(t, 2*time.Minute, pyEnv(t), 2, 2, python, "examples/pytorch/train_digits.py", "--epochs", "5")
		m := regexp.MustCompile(`\[worker 0\] epoch  5/5  loss ([0-9.]+)  test accuracy ([0-9.]+)%  ([0-9]+) samples/s`).FindStringSubmatch(out)
		if m == nil {
			t.Fatalf("no epoch 5 line:\n%s", out)
		}
		if acc, _ := strconv.ParseFloat(m[2], 64); acc < 85 {
			t.Errorf("test accuracy %.2f%% after 5 epochs; want at least 85%%\n%s", acc, out)
		}
		logLines(t, out, "epoch")
	})
	quick := []string{"--num-warmup-batches", "1", "--num-batches-per-iter", "2", "--num-iters", "2", "--batch-size", "8"}
	result := regexp.MustCompile(`RESULT mode=(\w+) model=cnn workers=2 samples_per_sec=[0-9.]+`)
	t.Run("benchmark_gobps", func(t *testing.T) {
		out := bpsrun(t, 2*time.Minute, pyEnv(t), 2, 2, append([]string{python, "examples/pytorch/benchmark.py"}, quick...)...)
		if m := result.FindStringSubmatch(out); m == nil || m[1] != "gobps" {
			t.Fatalf("no gobps RESULT line:\n%s", out)
		}
	})
	t.Run("benchmark_compute", func(t *testing.T) {
		out, err := run(t, 2*time.Minute, pyEnv(t), python, append([]string{"examples/pytorch/benchmark.py", "--mode", "compute", "--np", "2"}, quick...)...)
		if m := result.FindStringSubmatch(out); err != nil || m == nil || m[1] != "compute" {
			t.Fatalf("benchmark.py --mode compute: %v\n%s", err, out)
		}
	})
	t.Run("benchmark_ddp", func(t *testing.T) {
		out, err := run(t, 2*time.Minute, pyEnv(t), python, append([]string{"examples/pytorch/benchmark.py", "--mode", "ddp", "--np", "2"}, quick...)...)
		if m := result.FindStringSubmatch(out); err != nil || m == nil || m[1] != "ddp" {
			t.Fatalf("benchmark.py --mode ddp: %v\n%s", err, out)
		}
	})
}
