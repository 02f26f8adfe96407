package e2e

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/gobps/gobps/summation/kernel"
)

var bin string // directory with bpsrun and testjob

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "gobps-e2e")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	bin = dir
	build := exec.Command("go", "build", "-tags="+buildTags, "-o", dir+"/", "../cmd/bpsrun", "./testjob")
	build.Stdout, build.Stderr = os.Stdout, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "build:", err)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// job is a running bpsrun whose output lines are collected with the time
// each arrived.
type job struct {
	t     *testing.T
	cmd   *exec.Cmd
	mu    sync.Mutex
	lines []line
	more  chan struct{}
	done  chan struct{}
	err   error
}

type line struct {
	at   time.Time
	text string
}

func start(t *testing.T, ctx context.Context, env []string, args ...string) *job {
	t.Helper()
	cmd := exec.CommandContext(ctx, filepath.Join(bin, "bpsrun"), args...)
	cmd.Env = append(os.Environ(), env...)
	cmd.WaitDelay = 5 * time.Second
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = cmd.Stdout // one stream, in order
	j := &job{t: t, cmd: cmd, more: make(chan struct{}, 1), done: make(chan struct{})}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		sc := bufio.NewScanner(out)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			j.mu.Lock()
			j.lines = append(j.lines, line{time.Now(), sc.Text()})
			j.mu.Unlock()
			select {
			case j.more <- struct{}{}:
			default:
			}
		}
		j.err = cmd.Wait()
		close(j.done)
	}()
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-j.done
	})
	return j
}

// waitFor waits until n lines match re, and returns them.
func (j *job) waitFor(re *regexp.Regexp, n int, d time.Duration) []line {
	j.t.Helper()
	deadline := time.After(d)
	for {
		j.mu.Lock()
		var got []line
		for _, l := range j.lines {
			if re.MatchString(l.text) {
				got = append(got, l)
			}
		}
		j.mu.Unlock()
		if len(got) >= n {
			return got
		}
		select {
		case <-j.more:
		case <-j.done:
			j.t.Fatalf("job ended with %d of %d lines matching %q:\n%s", len(got), n, re, j.output())
		case <-deadline:
			j.t.Fatalf("%d of %d lines matching %q after %v:\n%s", len(got), n, re, d, j.output())
		}
	}
}

func (j *job) output() string {
	j.mu.Lock()
	defer j.mu.Unlock()
	var b strings.Builder
	for _, l := range j.lines {
		b.WriteString(l.text + "\n")
	}
	return b.String()
}

// wait waits for bpsrun to exit and returns its exit code.
func (j *job) wait(d time.Duration) int {
	j.t.Helper()
	select {
	case <-j.done:
	case <-time.After(d):
		j.t.Fatalf("bpsrun still running after %v:\n%s", d, j.output())
	}
	if j.err == nil {
		return 0
	}
	if ee, ok := j.err.(*exec.ExitError); ok {
		return ee.ExitCode()
	}
	j.t.Fatalf("bpsrun: %v", j.err)
	return -1
}

func alive(pid int) bool { return syscall.Kill(pid, 0) == nil }

func pids(t *testing.T, j *job) map[string]int {
	out := map[string]int{}
	re := regexp.MustCompile(`^bpsrun: started (.+) \(pid (\d+)\)$`)
	j.mu.Lock()
	defer j.mu.Unlock()
	for _, l := range j.lines {
		if m := re.FindStringSubmatch(l.text); m != nil {
			out[m[1]], _ = strconv.Atoi(m[2])
		}
	}
	return out
}

// TestExactSums is the foundation's acceptance run: 4 workers, 2 servers,
// 200 tensors of random sizes from 1 B to 16 MiB in every dtype, 20 rounds;
// every pulled sum is compared exactly with the sum computed locally (the
// worker program does the comparison and exits non-zero on any mismatch).
func TestExactSums(t *testing.T) {
	args := []string{"--local", "-v", "-np", "4", "--servers", "2", "--", filepath.Join(bin, "testjob")}
	if testing.Short() {
		args = append(args, "-tensors", "40", "-rounds", "3", "-max", "1048576")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	j := start(t, ctx, nil, args...)
	if code := j.wait(5 * time.Minute); code != 0 {
		t.Fatalf("bpsrun exited %d:\n%s", code, j.output())
	}
	exact := j.waitFor(regexp.MustCompile(`^\[worker \d\] rank \d: all \d+ rounds exact`), 4, time.Second)
	for _, l := range exact {
		t.Log(l.text)
	}
	// The servers say which kernels summed: the SIMD ones this CPU has
	// (as this test process sees it), or generic when built with noasm.
	wantKernels := kernel.Impl() + " kernels"
	for _, l := range j.waitFor(regexp.MustCompile(`^\[server \d\] .*serving`), 2, time.Second) {
		if !strings.Contains(l.text, wantKernels) {
			t.Errorf("server line %q: want %q", l.text, wantKernels)
		}
		t.Log(l.text)
	}
	// every process's output carries its role and rank
	for _, want := range []string{"[worker 0] rank 0 of 4", "[worker 3] rank 3 of 4"} {
		if !strings.Contains(j.output(), want) {
			t.Errorf("no line %q in output", want)
		}
	}
}

// TestLocalAggregation emulates 2 machines of 2 workers each: the workers
// of a machine sum in shared memory, and the servers must count exactly
// one push per machine per key per round, with every sum still exact. With
// GOBPS_LOCAL_AGGREGATION=0 every worker pushes.
func TestLocalAggregation(t *testing.T) {
	const rounds = 3
	for _, tc := range []struct {
		name      string
		env       []string
		perMember int // pushes per key per round
	}{
		{"on", nil, 2},
		{"off", []string{"GOBPS_LOCAL_AGGREGATION=0"}, 4},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
			defer cancel()
			j := start(t, ctx, tc.env, "--local", "-v", "-np", "4", "--local-size", "2", "--servers", "2", "--",
				filepath.Join(bin, "testjob"), "-tensors", "30", "-rounds", strconv.Itoa(rounds), "-max", "1048576")
			if code := j.wait(3 * time.Minute); code != 0 {
				t.Fatalf("bpsrun exited %d:\n%s", code, j.output())
			}
			j.waitFor(regexp.MustCompile(`^\[worker \d\] rank \d: all \d+ rounds exact`), 4, time.Second)
			re := regexp.MustCompile(`^\[server \d\] .*job over: (\d+) keys, (\d+) pushes`)
			keys, pushes := 0, 0
			for _, l := range j.waitFor(re, 2, time.Second) {
				m := re.FindStringSubmatch(l.text)
				k, _ := strconv.Atoi(m[1])
				p, _ := strconv.Atoi(m[2])
				keys, pushes = keys+k, pushes+p
				t.Log(l.text)
			}
			if want := keys * rounds * tc.perMember; keys == 0 || pushes != want {
				t.Fatalf("servers counted %d pushes for %d keys × %d rounds (want %d: %d per key per round)", pushes, keys, rounds, want, tc.perMember)
			}
		})
	}
}

// TestFakeGPUJob is a whole multi-process job with half the tensors in GPU
// memory on the fake device: each gradient is written late by a simulated
// backprop on the framework's stream, every copy is delayed at random, and
// the sums read back from device memory must be exact. It runs with local
// aggregation (2 machines of 2 workers), as GPU machines would.
func TestFakeGPUJob(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	j := start(t, ctx, nil,
		"--local", "-np", "4", "--local-size", "2", "--servers", "2", "--",
		filepath.Join(bin, "testjob"), "-device", "-fake-delay", "200us", "-tensors", "30", "-rounds", "3", "-max", "1048576")
	if code := j.wait(3 * time.Minute); code != 0 {
		t.Fatalf("bpsrun exited %d:\n%s", code, j.output())
	}
	j.waitFor(regexp.MustCompile(`^\[worker \d\] rank \d: device tensors staged through gobps fake GPU`), 4, time.Second)
	for _, l := range j.waitFor(regexp.MustCompile(`^\[worker \d\] rank \d: all \d+ rounds exact`), 4, time.Second) {
		t.Log(l.text)
	}
}

// TestDeadServerFailsFast kills one server mid-run: every worker's pending
// PushPull must fail with an error naming that server within 10 s, and
// bpsrun must exit non-zero saying so.
func TestDeadServerFailsFast(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	j := start(t, ctx, nil, "--local", "-np", "3", "--servers", "2", "--",
		filepath.Join(bin, "testjob"), "-mode", "hold", "-rounds", "1000000", "-timeout", "60s")
	j.waitFor(regexp.MustCompile(`first round started`), 3, 60*time.Second)
	time.Sleep(300 * time.Millisecond) // well into the loop
	pid := pids(t, j)["server 1"]
	if pid == 0 {
		t.Fatalf("no pid for server 1:\n%s", j.output())
	}
	killed := time.Now()
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	fails := j.waitFor(regexp.MustCompile(`^\[worker \d\] testjob: pushpull failed`), 3, 15*time.Second)
	for _, l := range fails {
		if d := l.at.Sub(killed); d > 10*time.Second {
			t.Errorf("failure surfaced %v after the kill: %s", d, l.text)
		}
		if !strings.Contains(l.text, "server 1") || !strings.Contains(l.text, fmt.Sprintf("pid %d", pid)) {
			t.Errorf("error does not name server 1 (pid %d): %s", pid, l.text)
		}
		t.Log(l.text)
	}
	code := j.wait(30 * time.Second)
	if code == 0 {
		t.Fatalf("bpsrun exited 0 after a server died:\n%s", j.output())
	}
	if !strings.Contains(j.output(), "bpsrun: job failed: server 1 exited") {
		t.Errorf("bpsrun's last word does not name server 1:\n%s", j.output())
	}
	for name, p := range pids(t, j) {
		if alive(p) {
			t.Errorf("%s (pid %d) still running after bpsrun exited", name, p)
		}
	}
}

// TestStoppedServerIsBlamed stops (SIGSTOP) a server mid-run: it does not
// exit, but its heartbeats stop, the coordinator reports it dead, and the
// workers fail naming it. bpsrun's last word must blame the stopped server,
// not the first worker to give up on it, and nothing may be left running.
func TestStoppedServerIsBlamed(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	j := start(t, ctx, []string{"GOBPS_HEARTBEAT_INTERVAL=200ms", "GOBPS_HEARTBEAT_TIMEOUT=1s"},
		"--local", "--grace", "2s", "-np", "2", "--local-size", "1", "--servers", "2", "--",
		filepath.Join(bin, "testjob"), "-mode", "hold", "-rounds", "1000000", "-timeout", "60s")
	j.waitFor(regexp.MustCompile(`first round started`), 2, 60*time.Second)
	pid := pids(t, j)["server 1"]
	if pid == 0 {
		t.Fatalf("no pid for server 1:\n%s", j.output())
	}
	if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { syscall.Kill(pid, syscall.SIGKILL) })
	for _, l := range j.waitFor(regexp.MustCompile(`^\[worker \d\] testjob: pushpull failed`), 2, 30*time.Second) {
		if !strings.Contains(l.text, "server 1") {
			t.Errorf("error does not name server 1: %s", l.text)
		}
	}
	if code := j.wait(30 * time.Second); code == 0 {
		t.Fatalf("bpsrun exited 0 after a server was stopped:\n%s", j.output())
	}
	last := j.waitFor(regexp.MustCompile(`^bpsrun: job failed: `), 1, time.Second)[0].text
	want := fmt.Sprintf("bpsrun: job failed: server 1 (pid %d) was stopped", pid)
	if !strings.HasPrefix(last, want) {
		t.Errorf("bpsrun's last word is %q, want it to start %q", last, want)
	}
	t.Log(last)
	for name, p := range pids(t, j) {
		if alive(p) {
			t.Errorf("%s (pid %d) still running after bpsrun exited", name, p)
		}
	}
}

// TestMissingVariable: environment mode with a required variable missing
// exits non-zero naming it, for every role, before anything starts.
func TestMissingVariable(t *testing.T) {
	base := []string{"DMLC_NUM_SERVER=1", "DMLC_PS_ROOT_URI=127.0.0.1", "DMLC_PS_ROOT_PORT=1"}
	for _, role := range []string{"scheduler", "server", "worker"} {
		t.Run(role, func(t *testing.T) {
			cmd := exec.Command(filepath.Join(bin, "bpsrun"), "true")
			cmd.Env = append(withoutDMLC(os.Environ()), append(base, "DMLC_ROLE="+role)...)
			out, err := cmd.CombinedOutput()
			ee, ok := err.(*exec.ExitError)
			if !ok || ee.ExitCode() == 0 {
				t.Fatalf("bpsrun exited %v:\n%s", err, out)
			}
			if !strings.Contains(string(out), "DMLC_NUM_WORKER is required") {
				t.Fatalf("message does not name DMLC_NUM_WORKER:\n%s", out)
			}
			t.Logf("%s", out)
		})
	}
}

func withoutDMLC(env []string) []string {
	var out []string
	for _, kv := range env {
		if !strings.HasPrefix(kv, "DMLC_") && !strings.HasPrefix(kv, "BYTEPS_") {
			out = append(out, kv)
		}
	}
	return out
}

// TestFirstFailureStopsTheRest: a worker that exits 3 makes bpsrun exit 3
// and stop the others, which would otherwise run for minutes.
func TestFirstFailureStopsTheRest(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	j := start(t, ctx, nil, "--local", "-np", "2", "--grace", "500ms", "--", "sh", "-c",
		`echo "hello from $BYTEPS_LOCAL_RANK"; if [ "$BYTEPS_LOCAL_RANK" = 1 ]; then sleep 0.5; exit 3; fi; exec sleep 120`)
	t0 := time.Now()
	code := j.wait(30 * time.Second)
	if code != 3 {
		t.Fatalf("exit %d, want 3:\n%s", code, j.output())
	}
	if el := time.Since(t0); el > 15*time.Second {
		t.Errorf("took %v to stop", el)
	}
	out := j.output()
	for _, want := range []string{"[worker 0] hello from 0", "[worker 1] hello from 1", "job failed: worker 1 exited: exit status 3"} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	for name, p := range pids(t, j) {
		if alive(p) {
			t.Errorf("%s (pid %d) still running", name, p)
		}
	}
}

// TestInterruptStopsEverything: SIGINT to bpsrun stops every process.
func TestInterruptStopsEverything(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	j := start(t, ctx, nil, "--local", "-np", "2", "--", "sh", "-c", `echo up; exec sleep 120`)
	j.waitFor(regexp.MustCompile(`^\[worker \d\] up$`), 2, 30*time.Second)
	j.cmd.Process.Signal(os.Interrupt)
	if code := j.wait(20 * time.Second); code != 130 {
		t.Fatalf("exit %d, want 130:\n%s", code, j.output())
	}
	for name, p := range pids(t, j) {
		if alive(p) {
			t.Errorf("%s (pid %d) still running", name, p)
		}
	}
}

// TestHelp documents every flag.
func TestHelp(t *testing.T) {
	out, err := exec.Command(filepath.Join(bin, "bpsrun"), "--help").CombinedOutput()
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	for _, f := range []string{"-local", "-np", "-servers", "-port", "-grace", "DMLC_ROLE", "docs/env.md"} {
		if !strings.Contains(string(out), f) {
			t.Errorf("--help does not mention %s", f)
		}
	}
}
