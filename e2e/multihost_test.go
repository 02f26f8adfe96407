package e2e

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"
)

// sshHosts is an emulated cluster whose hosts (network namespaces) each run
// an ssh server (scripts/sshcluster.sh).
type sshHosts struct {
	t      *testing.T
	env    []string // GOBPS_NET_PREFIX, GOBPS_NET_SUBNET of this cluster
	ns     []string // the hosts' namespaces
	ips    []string
	sshArg []string // bpsrun's flags that reach the hosts
}

// newSSHHosts builds n hosts, or skips the test naming what this machine
// lacks. They are removed when the test ends.
func newSSHHosts(t *testing.T, n int) *sshHosts {
	t.Helper()
	if testing.Short() {
		t.Skip("builds network namespaces with ssh servers")
	}
	if os.Geteuid() != 0 {
		t.Skip("needs root: the hosts are network namespaces")
	}
	for _, tool := range []string{"ip", "tc", "ssh", "ssh-keygen", "/usr/sbin/sshd"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("needs %s (iproute2; openssh-client and openssh-server, which make test installs as root): %v", tool, err)
		}
	}
	probe := fmt.Sprintf("gobpsmhprobe%d", os.Getpid())
	if out, err := exec.Command("ip", "netns", "add", probe).CombinedOutput(); err != nil {
		t.Skipf("cannot make network namespaces here: %v: %s", err, out)
	}
	exec.Command("ip", "netns", "del", probe).Run()

	h := &sshHosts{t: t, env: []string{
		fmt.Sprintf("GOBPS_NET_PREFIX=gmh%d-", os.Getpid()%100000),
		fmt.Sprintf("GOBPS_NET_SUBNET=10.79.%d", 100+os.Getpid()%100),
	}}
	dir := t.TempDir()
	script := func(args ...string) (string, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		cmd := exec.CommandContext(ctx, "../scripts/sshcluster.sh", args...)
		cmd.Env = append(os.Environ(), h.env...)
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	t.Cleanup(func() {
		if out, err := script("down", dir); err != nil {
			t.Errorf("sshcluster.sh down: %v\n%s", err, out)
		}
	})
	if out, err := script("up", fmt.Sprint(n), dir); err != nil {
		t.Fatalf("sshcluster.sh up %d: %v\n%s", n, err, out)
	}
	out, err := script("flags", dir)
	if err != nil {
		t.Fatalf("sshcluster.sh flags: %v\n%s", err, out)
	}
	h.sshArg = strings.Fields(out)
	prefix := strings.TrimPrefix(h.env[0], "GOBPS_NET_PREFIX=")
	subnet := strings.TrimPrefix(h.env[1], "GOBPS_NET_SUBNET=")
	for i := 0; i < n; i++ {
		h.ns = append(h.ns, fmt.Sprintf("%sh%d", prefix, i))
		h.ips = append(h.ips, fmt.Sprintf("%s.%d", subnet, 11+i))
	}
	return h
}

// bpsrun starts bpsrun with args on host 0.
func (h *sshHosts) bpsrun(ctx context.Context, args ...string) *job {
	h.t.Helper()
	full := append([]string{"netns", "exec", h.ns[0], filepath.Join(bin, "bpsrun")}, args...)
	return startProg(h.t, ctx, nil, "ip", full...)
}

// procs lists the processes in host i other than its ssh server, as
// "pid cmdline".
func (h *sshHosts) procs(i int) []string {
	out, err := exec.Command("ip", "netns", "pids", h.ns[i]).Output()
	if err != nil {
		h.t.Fatalf("ip netns pids %s: %v", h.ns[i], err)
	}
	var left []string
	for _, pid := range strings.Fields(string(out)) {
		b, err := os.ReadFile("/proc/" + pid + "/cmdline")
		if err != nil {
			continue // gone meanwhile
		}
		cmdline := strings.TrimSpace(strings.ReplaceAll(string(b), "\x00", " "))
		if strings.HasPrefix(cmdline, "sshd: /usr/sbin/sshd") || strings.HasPrefix(cmdline, "/usr/sbin/sshd") {
			continue // the host's ssh server (its listener)
		}
		left = append(left, pid+" "+cmdline)
	}
	return left
}

// noneLeft fails the test if, within 5 s, some host still runs a process
// of the job.
func (h *sshHosts) noneLeft() {
	h.t.Helper()
	var left []string
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		left = left[:0]
		for i := range h.ns {
			for _, p := range h.procs(i) {
				left = append(left, h.ips[i]+": "+p)
			}
		}
		if len(left) == 0 || time.Now().After(deadline) {
			break
		}
	}
	if len(left) > 0 {
		h.t.Errorf("processes left after the job:\n%s", strings.Join(left, "\n"))
	}
}

// TestMultiHostSSH is bpsrun -H on 4 hosts: 4 workers on 2 hosts, 2
// servers on the other 2, started over ssh; every sum exact, every output
// line prefixed with host and role, and no process left on any host. Then
// a remote worker is killed: the job ends naming it, and again nothing is
// left; and so after Ctrl-C.
func TestMultiHostSSH(t *testing.T) {
	h := newSSHHosts(t, 4)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	layout := append([]string{"-H", h.ips[0] + ":2," + h.ips[1] + ":2", "--server-hosts", h.ips[2] + "," + h.ips[3]}, h.sshArg...)
	testjob := filepath.Join(bin, "testjob")

	t.Run("exact", func(t *testing.T) {
		h.t = t
		j := h.bpsrun(ctx, append(layout, "--", testjob, "-tensors", "40", "-rounds", "5", "-max", "1048576")...)
		if code := j.wait(2 * time.Minute); code != 0 {
			t.Fatalf("bpsrun -H exited %d:\n%s", code, j.output())
		}
		out := j.output()
		for r := 0; r < 4; r++ {
			host := h.ips[r/2]
			re := regexp.MustCompile(fmt.Sprintf(`(?m)^\[%s worker %d\] rank %d: all 5 rounds exact`, regexp.QuoteMeta(host), r, r))
			if !re.MatchString(out) {
				t.Errorf("no exact-sum line from worker %d on %s:\n%s", r, host, out)
			}
		}
		for s := 0; s < 2; s++ {
			if !strings.Contains(out, fmt.Sprintf("started server %d on %s", s, h.ips[2+s])) {
				t.Errorf("server %d was not started on %s:\n%s", s, h.ips[2+s], out)
			}
		}
		// The job's secret went to its processes on their standard input,
		// never on a command line (bpsrun's own lines name each ssh).
		if v := os.Getenv("GOBPS_SECRET"); v != "" && strings.Contains(out, v) {
			t.Errorf("the secret shows in the output")
		}
		h.noneLeft()
	})

	t.Run("kill", func(t *testing.T) {
		h.t = t
		j := h.bpsrun(ctx, append(layout, "--", testjob, "-mode", "hold", "-rounds", "1000000", "-timeout", "90s")...)
		j.waitFor(regexp.MustCompile(`first round started`), 4, time.Minute)
		// A worker on host 1: the testjob process in that namespace.
		var victim, cmdline string
		for _, p := range h.procs(1) {
			pid, rest, _ := strings.Cut(p, " ")
			if strings.Contains(rest, "testjob") {
				victim, cmdline = pid, rest
				break
			}
		}
		if victim == "" {
			t.Fatalf("no worker process on %s: %v", h.ips[1], h.procs(1))
		}
		var pid int
		fmt.Sscan(victim, &pid)
		killed := time.Now()
		if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
			t.Fatalf("kill %s (%s): %v", victim, cmdline, err)
		}
		code := j.wait(30 * time.Second)
		took := time.Since(killed)
		out := j.output()
		re := regexp.MustCompile(fmt.Sprintf(`job failed: worker [23] on %s exited: killed by signal 9`, regexp.QuoteMeta(h.ips[1])))
		if code == 0 || !re.MatchString(out) {
			t.Fatalf("exit %d, want a failure naming the killed worker on %s (%q):\n%s", code, h.ips[1], re, out)
		}
		t.Logf("killed worker %s on %s; bpsrun exited %d after %v", victim, h.ips[1], code, took.Round(time.Millisecond))
		h.noneLeft()
		// The killed worker's local-aggregation files are gone too: its
		// agent removed them (the hosts share this machine's /dev/shm).
		if left := shmFiles(t, h.ips[0]); len(left) > 0 {
			t.Errorf("the job left %d files in /dev/shm: %v", len(left), left)
		}
	})

	t.Run("interrupt", func(t *testing.T) {
		h.t = t
		j := h.bpsrun(ctx, append(layout, "--", testjob, "-mode", "hold", "-rounds", "1000000", "-timeout", "90s")...)
		j.waitFor(regexp.MustCompile(`first round started`), 4, time.Minute)
		// ip netns exec execs bpsrun: this is bpsrun's pid.
		if err := j.cmd.Process.Signal(syscall.SIGINT); err != nil {
			t.Fatal(err)
		}
		if code := j.wait(30 * time.Second); code != 130 || !strings.Contains(j.output(), "job failed: interrupted") {
			t.Fatalf("exit %d after Ctrl-C, want 130 and the verdict:\n%s", code, j.output())
		}
		h.noneLeft()
	})
}
