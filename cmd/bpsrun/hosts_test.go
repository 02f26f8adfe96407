package main

import (
	"bytes"
	"encoding/json"
	"io"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

func TestParseHostSlots(t *testing.T) {
	hs, err := parseHostSlots("a:4, root@b:4,10.0.0.3")
	if err != nil {
		t.Fatal(err)
	}
	want := []hostSlots{{"a", 4}, {"root@b", 4}, {"10.0.0.3", 1}}
	if !slices.Equal(hs, want) {
		t.Errorf("got %v, want %v", hs, want)
	}
	for _, bad := range []string{"", "a,,b", "a:0", "a:x", "-oProxyCommand=x:1", "a;rm:2", "a b:1"} {
		if _, err := parseHostSlots(bad); err == nil {
			t.Errorf("-H %q: no error", bad)
		}
	}
}

func TestParseHostfile(t *testing.T) {
	in := "# the cluster\nnode1 slots=2\n\nnode2   slots=2 # GPUs\nnode3\n"
	hs, err := parseHostfile(strings.NewReader(in), "hf")
	if err != nil {
		t.Fatal(err)
	}
	if want := []hostSlots{{"node1", 2}, {"node2", 2}, {"node3", 1}}; !slices.Equal(hs, want) {
		t.Errorf("got %v, want %v", hs, want)
	}
	for in, want := range map[string]string{
		"node1 slots=0\n":   "hf:1",
		"a\nnode1 gpus=2\n": "hf:2",
		"# nothing\n":       "no hosts",
	} {
		if _, err := parseHostfile(strings.NewReader(in), "hf"); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: error %v, want one naming %q", in, err, want)
		}
	}
}

func TestPlanHosts(t *testing.T) {
	p, err := planHosts(&flags{hosts: "a:2,b:2", serverHosts: "c,d", serversPerHost: 2})
	if err != nil {
		t.Fatal(err)
	}
	if len(p.workers) != 2 || !slices.Equal(p.servers, []string{"c", "d"}) || p.serversPerHost != 2 {
		t.Errorf("%+v", p)
	}
	p, err = planHosts(&flags{hosts: "a:2,b:2", serversPerHost: 1})
	if err != nil || !slices.Equal(p.servers, []string{"a", "b"}) {
		t.Errorf("co-located servers: %+v, %v", p, err)
	}
	hf := filepath.Join(t.TempDir(), "hosts")
	os.WriteFile(hf, []byte("a slots=3\nb slots=3\n"), 0o644)
	if p, err = planHosts(&flags{hostfile: hf, serversPerHost: 1}); err != nil || p.workers[1].slots != 3 {
		t.Errorf("--hostfile: %+v, %v", p, err)
	}
	for _, c := range []struct {
		f    flags
		want string
	}{
		{flags{hosts: "a:2,b:4", serversPerHost: 1}, "same number"},
		{flags{hosts: "a:2,root@a:2", serversPerHost: 1}, "twice"},
		{flags{hosts: "a:2,b:2", np: 3, npSet: true, serversPerHost: 1}, "-np 3"},
		{flags{hosts: "a", hostfile: hf, serversPerHost: 1}, "not both"},
		{flags{hosts: "a", serversPerHost: 0}, "--servers-per-host"},
		{flags{hostfile: filepath.Join(t.TempDir(), "none"), serversPerHost: 1}, "--hostfile"},
		{flags{hosts: "a", serverHosts: "b,-x", serversPerHost: 1}, "--server-hosts"},
	} {
		if _, err := planHosts(&c.f); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%+v: error %v, want one with %q", c.f, err, c.want)
		}
	}
}

// TestRemoteEnv: the job's variables go, others do not unless -x names
// them; and nothing of the environment is on ssh's command line.
func TestRemoteEnv(t *testing.T) {
	env := []string{"GOBPS_SECRET=s3cr3t", "BYTEPS_PARTITION_BYTES=1024", "HOME=/root", "PATH=/bin", "MY_VAR=1", "PYTHONPATH=/p"}
	got, err := remoteEnv(env, []string{"MY_VAR", "OTHER=2"}, map[string]string{"DMLC_ROLE": "server"})
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(got)
	want := []string{"BYTEPS_PARTITION_BYTES=1024", "DMLC_ROLE=server", "GOBPS_SECRET=s3cr3t", "MY_VAR=1", "OTHER=2", "PYTHONPATH=/p"}
	if !slices.Equal(got, want) {
		t.Errorf("got %v, want %v", got, want)
	}
	if _, err := remoteEnv(env, []string{"A B"}, nil); err == nil {
		t.Error("-x 'A B': no error")
	}
	args := sshArgs(&flags{sshPort: 2222, sshIdentity: "/k", sshOptions: listFlag{"UserKnownHostsFile=/kh"}}, "root@h", "/opt/it's/bpsrun")
	line := strings.Join(args, " ")
	for _, w := range []string{"-p 2222", "-i /k", "-o UserKnownHostsFile=/kh", "BatchMode=yes", "-- root@h", `exec '/opt/it'\''s/bpsrun' --remote-agent`} {
		if !strings.Contains(line, w) {
			t.Errorf("ssh %s: lacks %q", line, w)
		}
	}
}

// agentRun starts runAgent on spec and returns its stdin, its stderr and
// a channel with its exit code.
func agentRun(t *testing.T, spec agentSpec) (io.WriteCloser, *syncBuffer, <-chan int) {
	t.Helper()
	pr, pw := io.Pipe()
	var errb syncBuffer
	code := make(chan int, 1)
	go func() { code <- runAgent(pr, &errb) }()
	b, _ := json.Marshal(spec)
	if _, err := pw.Write(append(b, '\n')); err != nil {
		t.Fatal(err)
	}
	return pw, &errb, code
}

func waitCode(t *testing.T, code <-chan int, d time.Duration) int {
	t.Helper()
	select {
	case c := <-code:
		return c
	case <-time.After(d):
		t.Fatalf("the agent did not exit within %v", d)
		return -1
	}
}

// TestAgent runs the remote end of bpsrun -H here: the environment it is
// given reaches the process, its exit status comes back, "signal N"
// signals the process, and the end of its input kills the process group
// (no process left behind, even one the process started).
func TestAgent(t *testing.T) {
	dir := t.TempDir()
	out := filepath.Join(dir, "out")
	t.Run("env and status", func(t *testing.T) {
		_, _, code := agentRun(t, agentSpec{Name: "worker 0", Argv: []string{"sh", "-c", `echo "$GOBPS_X $(pwd)" > ` + out + `; exit 3`},
			Env: []string{"GOBPS_X=hello"}, Dir: dir})
		if c := waitCode(t, code, 10*time.Second); c != 3 {
			t.Errorf("exit %d, want 3", c)
		}
		if b, _ := os.ReadFile(out); strings.TrimSpace(string(b)) != "hello "+dir {
			t.Errorf("the process saw %q", b)
		}
	})
	t.Run("signal", func(t *testing.T) {
		in, _, code := agentRun(t, agentSpec{Name: "worker 0", Argv: []string{"sleep", "30"}})
		time.Sleep(100 * time.Millisecond)
		io.WriteString(in, "signal 15\n")
		if c := waitCode(t, code, 10*time.Second); c != 128+int(syscall.SIGTERM) {
			t.Errorf("exit %d, want %d", c, 128+int(syscall.SIGTERM))
		}
	})
	t.Run("eof kills the group", func(t *testing.T) {
		pidFile := filepath.Join(dir, "pid")
		// The process starts a grandchild in its group and waits.
		in, _, code := agentRun(t, agentSpec{Name: "worker 0", Argv: []string{"sh", "-c", "sleep 30 & echo $! > " + pidFile + "; wait"}})
		var pid int
		for deadline := time.Now().Add(5 * time.Second); pid == 0 && time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
			b, _ := os.ReadFile(pidFile)
			pid, _ = strconv.Atoi(strings.TrimSpace(string(b)))
		}
		if pid == 0 {
			t.Fatal("the process did not start its child")
		}
		in.Close()
		if c := waitCode(t, code, 10*time.Second); c != 128+int(syscall.SIGKILL) {
			t.Errorf("exit %d, want %d", c, 128+int(syscall.SIGKILL))
		}
		for deadline := time.Now().Add(5 * time.Second); syscall.Kill(pid, 0) == nil; time.Sleep(20 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("grandchild %d still runs", pid)
			}
		}
	})
	t.Run("bad spec", func(t *testing.T) {
		var errb bytes.Buffer
		if c := runAgent(strings.NewReader("not json\n"), &errb); c != 127 || !strings.Contains(errb.String(), "malformed") {
			t.Errorf("exit %d, %q", c, errb.String())
		}
		errb.Reset()
		if c := runAgent(strings.NewReader(""), &errb); c != 127 || !strings.Contains(errb.String(), "not for use by hand") {
			t.Errorf("exit %d, %q", c, errb.String())
		}
	})
}

// TestLocalPortTaken: bpsrun --local binds the coordinator's port itself
// before starting anything (and hands the socket to the scheduler), so a
// port in use is a clear error at once, with no process started.
func TestLocalPortTaken(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	port := strconv.Itoa(ln.Addr().(*net.TCPAddr).Port)
	var out, errb bytes.Buffer
	code := run([]string{"--local", "--port", port, "--", "true"}, os.Environ(), &out, &errb)
	if code != 1 || !strings.Contains(errb.String(), "the coordinator's port") || !strings.Contains(errb.String(), "address already in use") ||
		strings.Contains(errb.String(), "started") {
		t.Errorf("exit %d, stderr %q", code, errb.String())
	}
}

func TestRemotePort(t *testing.T) {
	for range 20 {
		p, err := remotePort()
		if err != nil {
			t.Fatal(err)
		}
		if p < 20000 || p >= 32000 {
			t.Fatalf("port %d: outside 20000-31999", p)
		}
	}
}
