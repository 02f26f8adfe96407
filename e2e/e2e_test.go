package e2e

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
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

	"github.com/gobps/gobps/internal/auth"
	"github.com/gobps/gobps/proto"
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
	if err := setupAuth(dir); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.RemoveAll(dir)
		os.Exit(1)
	}
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

// e2eSecret is the secret every job of these tests has (GOBPS_E2E_AUTH
// unset or "secret"; "tls" adds mutual TLS; "none" gives the jobs none, as
// a BytePS launch script would).
const e2eSecret = "the e2e tests' job secret"

// probeAuth is how the tests' own raw connections authenticate, as the
// jobs' processes do.
var probeAuth *auth.Config

// setupAuth puts the secret (and TLS files, in dir) in this process's
// environment, which every job inherits.
func setupAuth(dir string) error {
	mode := os.Getenv("GOBPS_E2E_AUTH")
	for _, v := range []string{"GOBPS_SECRET", "GOBPS_SECRET_FILE", "GOBPS_TLS_CERT", "GOBPS_TLS_KEY", "GOBPS_TLS_CA"} {
		os.Unsetenv(v)
	}
	switch mode {
	case "none":
		return nil
	case "", "secret", "tls":
	default:
		return fmt.Errorf("GOBPS_E2E_AUTH=%s: want secret (the default), tls or none", mode)
	}
	os.Setenv("GOBPS_SECRET", e2eSecret)
	probeAuth = &auth.Config{Secret: []byte(e2eSecret)}
	if mode == "tls" {
		cert, key, ca, err := auth.WritePKI(dir, time.Hour)
		if err != nil {
			return err
		}
		os.Setenv("GOBPS_TLS_CERT", cert)
		os.Setenv("GOBPS_TLS_KEY", key)
		os.Setenv("GOBPS_TLS_CA", ca)
		if probeAuth.TLS, err = auth.LoadTLS(cert, key, ca); err != nil {
			return err
		}
	}
	return nil
}

// dialJob connects to a job's address as node self, through the job's
// handshake when it has one.
func dialJob(t *testing.T, addr string, timeout time.Duration, self uint32) net.Conn {
	t.Helper()
	nc, err := net.DialTimeout("tcp", addr, timeout)
	if err != nil {
		t.Fatal(err)
	}
	ac, _, err := probeAuth.Dial(nc, self)
	if err != nil {
		nc.Close()
		t.Fatalf("handshake with %s: %v", addr, err)
	}
	return ac
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
	return startProg(t, ctx, env, filepath.Join(bin, "bpsrun"), args...)
}

// startProg runs prog (a shell, say, that execs bpsrun) as start runs
// bpsrun. The process is killed by its PID at the end of the test.
func startProg(t *testing.T, ctx context.Context, env []string, prog string, args ...string) *job {
	t.Helper()
	cmd := exec.CommandContext(ctx, prog, args...)
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
// GOBPS_LOCAL_AGGREGATION=0 every worker pushes. When the 4 workers are
// one machine, the job's sums end in shared memory: no push reaches a
// server, unless BYTEPS_FORCE_DISTRIBUTED=1.
func TestLocalAggregation(t *testing.T) {
	const rounds = 3
	for _, tc := range []struct {
		name      string
		env       []string
		localSize string
		perMember int // pushes per key per round
	}{
		{"on", nil, "2", 2},
		{"off", []string{"GOBPS_LOCAL_AGGREGATION=0"}, "2", 4},
		{"one machine", nil, "4", 0},
		{"one machine forced through the servers", []string{"BYTEPS_FORCE_DISTRIBUTED=1"}, "4", 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
			defer cancel()
			j := start(t, ctx, tc.env, "--local", "-v", "-np", "4", "--local-size", tc.localSize, "--servers", "2", "--",
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

// The probes that found the summation server's edges, as regression
// tests against a real server process: started in environment mode
// (DMLC_ROLE=server bpsrun) with a coordinator of its own, spoken to in
// raw frames on its data port as the probes did, measured from /proc.

// probed is a server process and what it takes to reach it.
type probed struct {
	t    *testing.T
	srv  *job
	pid  int
	addr string   // the data address
	env  []string // the job's environment, for workers
}

// freePort asks the kernel for a free loopback port.
func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// startProbed starts a coordinator for workers worker processes and one
// server with extra in its environment, and waits until the server
// listens. wrap, if not empty, is a shell command line that execs the
// server ("$0" "$@" is bpsrun -v), to set its limits, say.
func startProbed(t *testing.T, ctx context.Context, workers int, wrap string, extra ...string) *probed {
	t.Helper()
	dataPort := freePort(t)
	env := []string{
		"DMLC_NUM_WORKER=" + strconv.Itoa(workers), "DMLC_NUM_SERVER=1", "BYTEPS_LOCAL_SIZE=1",
		"DMLC_PS_ROOT_URI=127.0.0.1", "DMLC_PS_ROOT_PORT=" + strconv.Itoa(freePort(t)), "DMLC_NODE_HOST=127.0.0.1",
	}
	with := func(kv ...string) []string { return append(append([]string(nil), env...), kv...) }
	start(t, ctx, with("DMLC_ROLE=scheduler"), "-v")
	srvEnv := with(append([]string{"DMLC_ROLE=server", "GOBPS_SERVER_ID=0", "GOBPS_SERVER_PORT=" + strconv.Itoa(dataPort)}, extra...)...)
	var srv *job
	if wrap != "" {
		srv = startProg(t, ctx, srvEnv, "sh", "-c", wrap, filepath.Join(bin, "bpsrun"), "-v")
	} else {
		srv = start(t, ctx, srvEnv, "-v")
	}
	p := &probed{t: t, srv: srv, pid: srv.cmd.Process.Pid, addr: net.JoinHostPort("127.0.0.1", strconv.Itoa(dataPort)), env: env}
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		nc, err := net.DialTimeout("tcp", p.addr, time.Second)
		if err == nil {
			nc.Close()
			break
		}
		select {
		case <-srv.done:
			t.Fatalf("the server exited:\n%s", srv.output())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("the server does not listen on %s after 30s: %v\n%s", p.addr, err, srv.output())
		}
	}
	return p
}

// worker runs the test job as worker rank of p's job.
func (p *probed) worker(ctx context.Context, rank int, args ...string) *job {
	p.t.Helper()
	env := append(append([]string(nil), p.env...), "DMLC_ROLE=worker", "DMLC_WORKER_ID="+strconv.Itoa(rank), "BYTEPS_LOCAL_RANK=0")
	return start(p.t, ctx, env, append([]string{filepath.Join(bin, "testjob")}, args...)...)
}

// status returns a field of /proc/PID/status in bytes (VmRSS, VmHWM,
// VmPeak: given in kB there).
func (p *probed) status(field string) int64 {
	p.t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", p.pid))
	if err != nil {
		p.t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(l, field+":"); ok {
			f := strings.Fields(rest)
			kb, err := strconv.ParseInt(f[0], 10, 64)
			if err != nil || len(f) != 2 || f[1] != "kB" {
				p.t.Fatalf("/proc/%d/status: %q", p.pid, l)
			}
			return kb << 10
		}
	}
	p.t.Fatalf("no %s in /proc/%d/status", field, p.pid)
	return 0
}

// dataConns counts the server's connections on its data port: the
// sockets among its descriptors that /proc/PID/net/tcp lists with that
// local port in a state other than LISTEN.
func (p *probed) dataConns() int {
	p.t.Helper()
	ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", p.pid))
	if err != nil {
		p.t.Fatal(err)
	}
	inodes := map[string]bool{}
	for _, e := range ents {
		l, _ := os.Readlink(fmt.Sprintf("/proc/%d/fd/%s", p.pid, e.Name()))
		if ino, ok := strings.CutPrefix(l, "socket:["); ok {
			inodes[strings.TrimSuffix(ino, "]")] = true
		}
	}
	_, port, _ := net.SplitHostPort(p.addr)
	want, _ := strconv.Atoi(port)
	n := 0
	for _, table := range []string{"tcp", "tcp6"} {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/net/%s", p.pid, table))
		if err != nil {
			continue
		}
		for _, l := range strings.Split(string(b), "\n")[1:] {
			// sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode
			f := strings.Fields(l)
			if len(f) < 10 || f[3] == "0A" || !inodes[f[9]] {
				continue
			}
			_, hexPort, _ := strings.Cut(f[1], ":")
			if port, err := strconv.ParseUint(hexPort, 16, 16); err == nil && int(port) == want {
				n++
			}
		}
	}
	return n
}

// raw is a data connection that speaks frames itself.
type raw struct {
	t  *testing.T
	nc net.Conn
}

func (p *probed) dialRaw() *raw {
	p.t.Helper()
	nc := dialJob(p.t, p.addr, 5*time.Second, proto.NodeID(proto.RoleWorker, 0))
	p.t.Cleanup(func() { nc.Close() })
	return &raw{t: p.t, nc: nc}
}

func (r *raw) send(h proto.Header, payload []byte) {
	r.t.Helper()
	r.nc.SetWriteDeadline(time.Now().Add(10 * time.Second))
	if err := proto.WriteFrame(r.nc, h, payload); err != nil {
		r.t.Fatal(err)
	}
}

// next reads the next frame, within 10 s.
func (r *raw) next() (proto.Header, []byte) {
	r.t.Helper()
	r.nc.SetReadDeadline(time.Now().Add(10 * time.Second))
	h, p, err := proto.ReadFrame(r.nc, proto.MaxPayload)
	if err != nil {
		r.t.Fatalf("no answer: %v", err)
	}
	return h, p
}

func (r *raw) expect(op proto.Op, reqID uint64, words ...string) []byte {
	r.t.Helper()
	h, p := r.next()
	if h.Op != op || h.ReqID != reqID {
		r.t.Fatalf("got %v %q, want %s for request %d", &h, p, op, reqID)
	}
	for _, w := range words {
		if !strings.Contains(string(p), w) {
			r.t.Fatalf("%s %q does not say %q", op, p, w)
		}
	}
	return p
}

// hello says hello as worker rank 0.
func (r *raw) hello() {
	r.t.Helper()
	r.send(proto.Header{Op: proto.OpHello, Sender: proto.NodeID(proto.RoleWorker, 0)}, nil)
}

func int32s(vs ...int32) []byte {
	b := make([]byte, 4*len(vs))
	for i, v := range vs {
		binary.LittleEndian.PutUint32(b[4*i:], uint32(v))
	}
	return b
}

// TestOversizedDeclareBeforeHello: three connections each announce a
// 1 GiB declaration before any hello and send 32 MiB of it. The server
// closes each at its header (no declaration is taken before a hello, nor
// over proto.MaxControlPayload) and its peak RSS stays under 64 MB; it
// still serves a worker afterwards.
func TestOversizedDeclareBeforeHello(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	p := startProbed(t, ctx, 1, "", "GOBPS_HELLO_TIMEOUT=60s")
	var hdr [proto.HeaderSize]byte
	(&proto.Header{Op: proto.OpDeclare, Length: 1 << 30}).Encode(hdr[:])
	const sent = 32 << 20 // of the announced payload, on each connection
	var wg sync.WaitGroup
	var conns []net.Conn
	for range 3 {
		nc := p.dialRaw().nc
		conns = append(conns, nc)
		wg.Add(1)
		go func() {
			defer wg.Done()
			nc.SetWriteDeadline(time.Now().Add(30 * time.Second))
			if _, err := nc.Write(hdr[:]); err != nil {
				return
			}
			chunk := make([]byte, 1<<20)
			for n := 0; n < sent; n += len(chunk) {
				if _, err := nc.Write(chunk); err != nil {
					return // closed by the server
				}
			}
		}()
	}
	for i, nc := range conns {
		nc.SetReadDeadline(time.Now().Add(30 * time.Second))
		if _, err := io.Copy(io.Discard, nc); errors.Is(err, os.ErrDeadlineExceeded) {
			t.Errorf("connection %d: still open 30s after it announced a 1 GiB declaration before its hello", i)
		}
	}
	wg.Wait()
	if hwm := p.status("VmHWM"); hwm > 64<<20 {
		t.Errorf("the server's peak RSS is %d MB, want under 64 MB", hwm>>20)
	} else {
		t.Logf("the server's peak RSS: %.1f MB", float64(hwm)/(1<<20))
	}
	r := p.dialRaw()
	r.hello()
	r.send(proto.Header{Op: proto.OpDeclare, ReqID: 1}, proto.EncodeDecls([]proto.Decl{{Key: proto.MakeKey(1, 0), DType: proto.Int32, Root: proto.NoRoot, Bytes: 8}}))
	r.expect(proto.OpDeclareAck, 1)
}

// TestDeclarationsBeyondBudget: with GOBPS_SERVER_MEMORY_BYTES=1 MiB, 200
// declarations of 1 GiB in one 4.8 KB frame are refused with an error
// naming the budget and the variable, and take no memory (they took the
// server's virtual size to 412 GB); a later declaration within the budget
// works, and so does a round on it.
func TestDeclarationsBeyondBudget(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	p := startProbed(t, ctx, 1, "", "GOBPS_SERVER_MEMORY_BYTES=1048576")
	p.srv.waitFor(regexp.MustCompile(`memory budget: 1048576 bytes of declared keys \(GOBPS_SERVER_MEMORY_BYTES\)`), 1, 10*time.Second)
	r := p.dialRaw()
	r.hello()
	huge := make([]proto.Decl, 200)
	for i := range huge {
		huge[i] = proto.Decl{Key: proto.MakeKey(uint32(i), 0), DType: proto.Float32, Root: proto.NoRoot, Bytes: 1 << 30}
	}
	r.send(proto.Header{Op: proto.OpDeclare, ReqID: 1}, proto.EncodeDecls(huge))
	msg := r.expect(proto.OpError, 1, "memory budget of 1048576 bytes", "GOBPS_SERVER_MEMORY_BYTES")
	t.Logf("refused: %s", msg)
	if peak := p.status("VmPeak"); peak > 16<<30 {
		t.Errorf("the server's virtual size peaked at %d GB", peak>>30)
	}
	k := proto.Decl{Key: proto.MakeKey(1, 0), DType: proto.Int32, Root: proto.NoRoot, Bytes: 1 << 20}
	r.send(proto.Header{Op: proto.OpDeclare, ReqID: 2}, proto.EncodeDecls([]proto.Decl{k}))
	r.expect(proto.OpDeclareAck, 2)
	vals := make([]int32, k.Bytes/4)
	for i := range vals {
		vals[i] = int32(i) - 7
	}
	r.send(proto.Header{Op: proto.OpPush, Flags: proto.FlagPull, DType: proto.Int32, Key: k.Key, ReqID: 3}, int32s(vals...))
	got := make([]byte, k.Bytes)
	for n := 0; n < int(k.Bytes); {
		h, b := r.next()
		if h.Op != proto.OpPullResp || h.ReqID != 3 {
			t.Fatalf("got %v %q, want the sum", &h, b)
		}
		off := 0
		if h.Flags&proto.FlagPiece != 0 {
			off = int(h.Piece) * proto.PieceBytes
		}
		n += copy(got[off:], b)
	}
	if string(got) != string(int32s(vals...)) {
		t.Fatal("the sum of one worker's push is not its push")
	}
}

// TestWorkerSeesMemoryBudget: a worker whose declarations go beyond the
// server's budget fails with the server's error, naming the variable.
func TestWorkerSeesMemoryBudget(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	j := start(t, ctx, []string{"GOBPS_SERVER_MEMORY_BYTES=65536"}, "--local", "-np", "1", "--servers", "1", "--",
		filepath.Join(bin, "testjob"), "-tensors", "4", "-rounds", "1", "-max", "1048576", "-timeout", "60s")
	if code := j.wait(90 * time.Second); code == 0 {
		t.Fatalf("a job beyond the server's memory budget exited 0:\n%s", j.output())
	}
	l := j.waitFor(regexp.MustCompile(`^\[worker 0\] testjob: .*memory budget of 65536 bytes \(GOBPS_SERVER_MEMORY_BYTES`), 1, time.Second)
	t.Log(l[0].text)
}

// TestZeroLengthPushAnswered: a push without a payload on a declared key
// is answered with OpError for its request id (it was dropped unanswered),
// and the connection carries on.
func TestZeroLengthPushAnswered(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	p := startProbed(t, ctx, 1, "")
	r := p.dialRaw()
	r.hello()
	k := proto.Decl{Key: proto.MakeKey(1, 0), DType: proto.Int32, Root: proto.NoRoot, Bytes: 8}
	r.send(proto.Header{Op: proto.OpDeclare, ReqID: 1}, proto.EncodeDecls([]proto.Decl{k}))
	r.expect(proto.OpDeclareAck, 1)
	r.send(proto.Header{Op: proto.OpPush, Flags: proto.FlagPull, DType: proto.Int32, Key: k.Key, ReqID: 9}, nil)
	r.expect(proto.OpError, 9, "push without a payload")
	r.send(proto.Header{Op: proto.OpPush, Flags: proto.FlagPull, DType: proto.Int32, Key: k.Key, ReqID: 10}, int32s(5, -6))
	if b := r.expect(proto.OpPullResp, 10); string(b) != string(int32s(5, -6)) {
		t.Fatalf("sum %v", b)
	}
}

// TestIdleConnectionsClosedAtHelloTimeout: 1000 connections that never
// say hello are all closed within GOBPS_HELLO_TIMEOUT (2 s) plus 5 s, none
// before it; the server logs each once, with its address, and holds none
// of them afterwards (its sockets on the data port, from /proc).
func TestIdleConnectionsClosedAtHelloTimeout(t *testing.T) {
	const n, timeout, bound = 1000, 2 * time.Second, 5 * time.Second
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	p := startProbed(t, ctx, 1, "", "GOBPS_HELLO_TIMEOUT="+timeout.String())
	conns := make([]net.Conn, n)
	dialed := make([]time.Time, n)
	for i := range conns {
		nc, err := net.DialTimeout("tcp", p.addr, 5*time.Second)
		if err != nil {
			t.Fatalf("dial %d: %v", i, err)
		}
		defer nc.Close()
		conns[i], dialed[i] = nc, time.Now()
	}
	deadline := dialed[n-1].Add(timeout + bound)
	t.Logf("%d connections in %v", n, dialed[n-1].Sub(dialed[0]).Round(time.Millisecond))
	for i, nc := range conns {
		nc.SetReadDeadline(deadline)
		_, err := nc.Read(make([]byte, 1))
		switch {
		case errors.Is(err, os.ErrDeadlineExceeded):
			t.Fatalf("connection %d still open %v after the last dial", i, timeout+bound)
		case time.Since(dialed[i]) < timeout-100*time.Millisecond:
			t.Fatalf("connection %d closed %v after its dial, before the hello timeout (%v)", i, time.Since(dialed[i]), err)
		}
	}
	for end := time.Now().Add(10 * time.Second); p.dataConns() > 0; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(end) {
			t.Fatalf("the server holds %d connections on its data port 10s after it closed the idle ones", p.dataConns())
		}
	}
	lines := p.srv.waitFor(regexp.MustCompile(`no hello from`), n, 10*time.Second)
	if len(lines) != n {
		t.Errorf("%d lines about connections without a hello, want %d", len(lines), n)
	}
	for i, nc := range conns {
		addr := nc.LocalAddr().String()
		count := 0
		for _, l := range lines {
			if strings.Contains(l.text, "closed "+addr+":") {
				count++
			}
		}
		if count != 1 {
			t.Fatalf("connection %d (%s) is in %d log lines, want 1", i, addr, count)
		}
	}
}

// TestAcceptSurvivesDescriptorBurst: a server limited to 64 descriptors
// gets a burst of connections until its accept fails with EMFILE; once
// they are closed, a real job of two workers completes against that same
// server with exact sums.
func TestAcceptSurvivesDescriptorBurst(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	p := startProbed(t, ctx, 2, `ulimit -n 64 && exec "$0" "$@"`)
	var burst []net.Conn
	for i := 0; i < 200; i++ {
		nc, err := net.DialTimeout("tcp", p.addr, 2*time.Second)
		if err != nil {
			break // the listen queue is full too
		}
		burst = append(burst, nc)
	}
	l := p.srv.waitFor(regexp.MustCompile(`accept: .*too many open files`), 1, 30*time.Second)
	t.Logf("%d connections; the server says: %s", len(burst), l[0].text)
	for _, nc := range burst {
		nc.Close()
	}
	var ws []*job
	for rank := range 2 {
		ws = append(ws, p.worker(ctx, rank, "-tensors", "10", "-rounds", "3", "-max", "65536", "-timeout", "60s"))
	}
	for rank, w := range ws {
		if code := w.wait(90 * time.Second); code != 0 {
			t.Fatalf("worker %d exited %d:\n%s\nserver:\n%s", rank, code, w.output(), p.srv.output())
		}
		w.waitFor(regexp.MustCompile(`all 3 rounds exact`), 1, time.Second)
	}
	p.srv.waitFor(regexp.MustCompile(`accept: accepting again after \d+ failed tries`), 1, time.Second)
}

// shmFiles lists the files in /dev/shm whose names hold the job's
// coordinator address (host:port, or a host alone for any port) as local
// aggregation writes it (dots and colon as underscores).
func shmFiles(t *testing.T, root string) []string {
	t.Helper()
	entries, err := os.ReadDir("/dev/shm")
	if err != nil {
		t.Skipf("no /dev/shm: %v", err)
	}
	tag := "gobps." + strings.NewReplacer(".", "_", ":", "_").Replace(root)
	if strings.Contains(root, ":") {
		tag += "-m"
	} else {
		tag += "_"
	}
	var out []string
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), tag) {
			out = append(out, e.Name())
		}
	}
	return out
}

// TestKilledWorkerLeavesNoSharedMemory: a worker killed with SIGKILL in
// its first round cannot remove its local-aggregation files; bpsrun
// removes them once the job has ended, so /dev/shm holds nothing of the
// job.
func TestKilledWorkerLeavesNoSharedMemory(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	j := start(t, ctx, nil, "--local", "-v", "-np", "2", "--servers", "1", "--",
		filepath.Join(bin, "testjob"), "-mode", "hold", "-rounds", "1000000", "-timeout", "50s")
	m := regexp.MustCompile(`coordinator listening on (127\.0\.0\.1:\d+)`)
	root := m.FindStringSubmatch(j.waitFor(m, 1, 30*time.Second)[0].text)[1]
	j.waitFor(regexp.MustCompile(`\[worker 0\] first round started`), 1, 30*time.Second)
	if err := syscall.Kill(pids(t, j)["worker 0"], syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	if code := j.wait(30 * time.Second); code == 0 {
		t.Fatalf("exit 0 after a worker was killed:\n%s", j.output())
	}
	if left := shmFiles(t, root); len(left) > 0 {
		t.Errorf("the job left %d files in /dev/shm: %v\n%s", len(left), left, j.output())
	}
	for _, l := range j.lines {
		if strings.Contains(l.text, "shared-memory files") {
			t.Log(l.text)
		}
	}
}
