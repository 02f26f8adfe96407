package scripts

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// bin holds bpsrun and bpsbench, built once by needCluster.
var (
	buildOnce sync.Once
	bin       string
	buildErr  error
	noU32     bool // set by needCluster: the clusters must use FIFO queues
)

// needCluster skips the test unless this machine can run the emulated
// cluster, and builds the binaries the scripts run.
func needCluster(t *testing.T) string {
	t.Helper()
	if testing.Short() {
		t.Skip("starts an emulated cluster (network namespaces) and a benchmark")
	}
	if os.Geteuid() != 0 {
		t.Skip("needs root: scripts/netcluster.sh creates network namespaces")
	}
	for _, tool := range []string{"ip", "tc", "timeout"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("needs %s (iproute2, coreutils): %v", tool, err)
		}
	}
	// can we make a namespace, a veth pair and an HTB qdisc?
	probe := fmt.Sprintf("gobpsprobe%d", os.Getpid())
	defer exec.Command("ip", "netns", "del", probe).Run()
	for _, args := range [][]string{
		{"netns", "add", probe},
		{"link", "add", "probe0", "netns", probe, "type", "veth", "peer", "name", "probe1", "netns", probe},
		{"-n", probe, "link", "set", "probe0", "up"},
	} {
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			t.Skipf("cannot build an emulated cluster here: ip %s: %v: %s", strings.Join(args, " "), err, out)
		}
	}
	if out, err := exec.Command("tc", "-n", probe, "qdisc", "add", "dev", "probe0", "root", "handle", "1:", "htb").CombinedOutput(); err != nil {
		t.Skipf("cannot rate-limit links here (tc htb): %v: %s", err, out)
	}
	// fair host queues need the u32 classifier; without it, FIFO links
	if out, err := exec.Command("tc", "-n", probe, "filter", "add", "dev", "probe0", "parent", "1:", "protocol", "ip",
		"prio", "1", "u32", "match", "ip", "dst", "10.0.0.1/32", "classid", "1:10").CombinedOutput(); err != nil {
		t.Logf("no tc u32 filter here (%v: %s): the clusters get FIFO host queues (GOBPS_NET_QUEUE=fifo)", err, out)
		noU32 = true
	}
	buildOnce.Do(func() {
		bin, buildErr = os.MkdirTemp("", "gobps-scripts-test")
		if buildErr != nil {
			return
		}
		cmd := exec.Command("go", "build", "-o", bin+"/", "../cmd/bpsrun", "../cmd/bpsbench")
		if out, err := cmd.CombinedOutput(); err != nil {
			buildErr = fmt.Errorf("go build: %v: %s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return bin
}

func TestMain(m *testing.M) {
	code := m.Run()
	if bin != "" {
		os.RemoveAll(bin)
	}
	os.Exit(code)
}

// prefix names this test's namespaces, so that it never touches another
// cluster (a benchmark someone is running, another test).
func prefix(t *testing.T) string {
	p := fmt.Sprintf("gobpsci%d%s-", os.Getpid(), map[bool]string{true: "i", false: "q"}[strings.Contains(t.Name(), "Interrupt")])
	t.Cleanup(func() {
		cmd := exec.Command("./netcluster.sh", "down")
		cmd.Env = append(os.Environ(), "GOBPS_NET_PREFIX="+p)
		cmd.Run()
	})
	return p
}

// leftovers lists the namespaces with prefix p that still exist.
func leftovers(t *testing.T, p string) []string {
	out, err := exec.Command("ip", "netns", "list").Output()
	if err != nil {
		t.Fatal(err)
	}
	var left []string
	for _, line := range strings.Split(string(out), "\n") {
		if f := strings.Fields(line); len(f) > 0 && strings.HasPrefix(f[0], p) {
			left = append(left, f[0])
		}
	}
	return left
}

// script runs a script of this directory with the test's namespace prefix;
// ctx ending sends it SIGTERM, so that its trap cleans up.
func script(ctx context.Context, p string, out io.Writer, name string, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, "./"+name, args...)
	cmd.Env = append(os.Environ(), "GOBPS_NET_PREFIX="+p)
	if noU32 {
		cmd.Env = append(cmd.Env, "GOBPS_NET_QUEUE=fifo")
	}
	cmd.Stdout, cmd.Stderr = out, out
	cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGTERM) }
	cmd.WaitDelay = 20 * time.Second
	return cmd
}

// up builds a cluster of n hosts at rate with prefix p, or fails the test.
func up(ctx context.Context, t *testing.T, p, n, rate string) {
	t.Helper()
	var out bytes.Buffer
	if err := script(ctx, p, &out, "netcluster.sh", "up", n, rate).Run(); err != nil {
		t.Fatalf("netcluster.sh up %s %s: %v\n%s", n, rate, err, out.String())
	}
}

// TestHostQueues checks the links netcluster.sh builds: every host's own
// queue has one class per peer, each matched on that peer's address and
// allowed the whole rate, and the switch port toward the host is one FIFO.
func TestHostQueues(t *testing.T) {
	needCluster(t)
	if noU32 {
		t.Skip("no tc u32 filter here: per-peer queues cannot be built")
	}
	p := prefix(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	up(ctx, t, p, "3", "12mbit")
	tc := func(ns string, args ...string) string {
		t.Helper()
		b, err := exec.Command("tc", append([]string{"-n", p + ns}, args...)...).CombinedOutput()
		if err != nil {
			t.Fatalf("tc %v: %v: %s", args, err, b)
		}
		return string(b)
	}
	classes := tc("h0", "class", "show", "dev", "eth0")
	filters := tc("h0", "filter", "show", "dev", "eth0")
	// host 0 is 10.77.0.11; its peers 10.77.0.12 and .13 (0a4d000c, 0a4d000d)
	for i, peer := range []string{"0a4d000c", "0a4d000d"} {
		class := fmt.Sprintf("1:%d", 101+i)
		if !strings.Contains(classes, "class htb "+class+" parent 1:1") || !strings.Contains(classes, "rate 4Mbit ceil 12Mbit") {
			t.Errorf("host 0: no class %s sharing 12 Mbit/s for peer %s:\n%s", class, peer, classes)
		}
		if !strings.Contains(filters, "flowid "+class) || !strings.Contains(filters, "match "+peer+"/ffffffff at 16") {
			t.Errorf("host 0: no filter sending %s to %s:\n%s", peer, class, filters)
		}
	}
	if port := tc("br", "class", "show", "dev", "v0"); strings.Count(port, "leaf") != 1 || !strings.Contains(port, "rate 12Mbit ceil 12Mbit") {
		t.Errorf("switch port toward host 0: want one 12 Mbit/s FIFO class:\n%s", port)
	}
	var out bytes.Buffer
	cmd := script(ctx, p, &out, "netcluster.sh", "up", "2", "12mbit")
	cmd.Env = append(cmd.Env, "GOBPS_NET_QUEUE=fq")
	if err := cmd.Run(); err == nil || !strings.Contains(out.String(), "GOBPS_NET_QUEUE must be fair or fifo") {
		t.Errorf("GOBPS_NET_QUEUE=fq: got %v, %q; want a clear error", err, out.String())
	}
}

// TestMesh runs netcluster.sh mesh on 4 hosts at 10 Mbit/s: hosts 0 and 1
// each exchange a stream with hosts 2 and 3, 8 flows, each host sending 2
// that split its link. It checks the command: every flow measured, and
// figures that add up (about half the link each, no flow below half
// another's). It does not tell queues apart: at 10 Mbit/s FIFO queues split
// this evenly too. TestHostQueues checks the queues.
func TestMesh(t *testing.T) {
	bin := needCluster(t)
	p := prefix(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	up(ctx, t, p, "4", "10mbit")
	var out bytes.Buffer
	cmd := script(ctx, p, &out, "netcluster.sh", "mesh", "2", "4s")
	cmd.Env = append(cmd.Env, "BPSBENCH="+filepath.Join(bin, "bpsbench"))
	err := cmd.Run()
	t.Logf("netcluster.sh mesh 2 4s:\n%s", out.String())
	if err != nil {
		t.Fatal(err)
	}
	var flows int
	var lo, mid, hi float64
	for _, line := range strings.Split(out.String(), "\n") {
		if strings.HasPrefix(line, "mesh:") {
			if _, err := fmt.Sscanf(line, "mesh: %d flows (hosts 0-1 each way with the rest): per flow min %f median %f max %f Mbit/s", &flows, &lo, &mid, &hi); err != nil {
				t.Fatalf("cannot read %q: %v", line, err)
			}
		}
	}
	if flows != 8 {
		t.Fatalf("%d flows measured, want 8", flows)
	}
	if lo < hi/2 || mid < 3 || mid > 6 {
		t.Errorf("flows got %.1f–%.1f Mbit/s (median %.1f), want about 4.7 each", lo, hi, mid)
	}
}

// TestQuickBench is CI's sanity check of the allreduce-vs-PS benchmark: 2
// workers and 2 dedicated servers on 10 Mbit/s links, a 1 MiB float32
// model. The push_pull sums must be exact (psworker checks every element
// and fails otherwise) and the median iteration within 25% of the bound
// M/B at the goodput the script measured on the links. The ring all-reduce
// baseline must be exact and within 25% of its own bound.
func TestQuickBench(t *testing.T) {
	bin := needCluster(t)
	p := prefix(t)
	dir := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Second)
	defer cancel()
	var out bytes.Buffer
	start := time.Now()
	cmd := script(ctx, p, &out, "bench_allreduce_vs_ps.sh", "--quick", "--no-build", "--bin", bin, "--out", dir)
	err := cmd.Run()
	t.Logf("bench_allreduce_vs_ps.sh --quick took %v:\n%s", time.Since(start).Round(time.Second), out.String())
	if err != nil {
		t.Fatalf("bench_allreduce_vs_ps.sh --quick: %v", err)
	}
	if left := leftovers(t, p); len(left) > 0 {
		t.Errorf("namespaces left behind: %v", left)
	}
	rows := readResults(t, filepath.Join(dir, "results.tsv"))
	check := func(method string, bound func(r map[string]string) float64) {
		t.Helper()
		r, ok := rows[method]
		if !ok {
			t.Errorf("no %s result (the run failed, or a sum was inexact): see the log above", method)
			return
		}
		med := num(t, r, "median_ms")
		b := bound(r)
		t.Logf("%s: median %.1f ms, bound %.1f ms at %.2f Mbit/s: %.2f× the bound", method, med, b, num(t, r, "goodput_bps")/1e6, med/b)
		if med > 1.25*b || med < 0.75*b {
			t.Errorf("%s: median iteration %.1f ms is not within 25%% of the bound %.1f ms", method, med, b)
		}
	}
	// bounds at goodput g for M bytes: PS with k ≥ n dedicated servers
	// M/B; ring 2(n−1)/n · M/B
	check("ps", func(r map[string]string) float64 {
		n, k := num(t, r, "n"), num(t, r, "k")
		return max(1, n/k) * num(t, r, "bytes") * 8 / num(t, r, "goodput_bps") * 1e3
	})
	check("ring", func(r map[string]string) float64 {
		n := num(t, r, "n")
		return 2 * (n - 1) / n * num(t, r, "bytes") * 8 / num(t, r, "goodput_bps") * 1e3
	})
	for _, f := range []string{"table.md", "allreduce_vs_ps.png"} {
		if st, err := os.Stat(filepath.Join(dir, f)); err != nil || st.Size() == 0 {
			t.Errorf("the script did not write %s: %v", f, err)
		}
	}
}

// TestInterruptCleansUp interrupts the benchmark while its first run is
// under way and checks that the cluster and its processes are gone.
func TestInterruptCleansUp(t *testing.T) {
	bin := needCluster(t)
	p := prefix(t)
	dir := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	pr, pw := io.Pipe()
	cmd := script(ctx, p, pw, "bench_allreduce_vs_ps.sh", "--quick", "--no-build", "--bin", bin, "--out", dir,
		"--verify-time", "2s", "--iters", "50")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var log strings.Builder
	started := make(chan bool, 1)
	go func() {
		sc := bufio.NewScanner(pr)
		said := false
		for sc.Scan() {
			log.WriteString(sc.Text() + "\n")
			if !said && strings.HasPrefix(sc.Text(), "bench: ps:") {
				said = true
				started <- true
			}
		}
		close(started)
	}()
	select {
	case ok := <-started:
		if !ok {
			cmd.Wait()
			t.Fatalf("the benchmark ended before its first run:\n%s", log.String())
		}
	case <-ctx.Done():
		t.Fatalf("the benchmark's first run never started:\n%s", log.String())
	}
	time.Sleep(3 * time.Second) // the job's processes are up and pushing
	if err := cmd.Process.Signal(os.Interrupt); err != nil {
		t.Fatal(err)
	}
	err := cmd.Wait()
	pw.Close()
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 130 {
		t.Errorf("interrupted benchmark exited with %v, want exit status 130", err)
	}
	if ctx.Err() != nil {
		t.Errorf("the benchmark did not stop on SIGINT before the test's deadline")
	}
	if left := leftovers(t, p); len(left) > 0 {
		t.Errorf("namespaces left behind after SIGINT: %v\n%s", left, log.String())
	}
}

func readResults(t *testing.T, path string) map[string]map[string]string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	head := strings.Split(lines[0], "\t")
	rows := map[string]map[string]string{}
	for _, l := range lines[1:] {
		f := strings.Split(l, "\t")
		r := map[string]string{}
		for i, h := range head {
			if i < len(f) {
				r[h] = f[i]
			}
		}
		rows[r["method"]] = r
	}
	return rows
}

func num(t *testing.T, r map[string]string, col string) float64 {
	t.Helper()
	v, err := strconv.ParseFloat(r[col], 64)
	if err != nil {
		t.Fatalf("results column %s: %v", col, err)
	}
	return v
}
