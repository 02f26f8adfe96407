package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"

	"github.com/gobps/gobps/core"
)

// Multi-host mode (bpsrun -H host1:4,host2:4 -- CMD): bpsrun starts every
// process of the job over ssh. On each host, ssh runs "bpsrun
// --remote-agent", which reads what to run (argv, environment, directory:
// an agentSpec) as one JSON line from its standard input, so that nothing
// secret is ever on a command line; it then runs that process in a process
// group of its own and stays its parent:
//   - a line "signal N" on its standard input sends signal N to the group
//     (how bpsrun stops a job gracefully);
//   - the end of its standard input (bpsrun closed it, died, or the ssh
//     connection broke) kills the group: no process is left behind;
//   - it exits with the process's status, or 128+N when a signal killed it.
//
// ssh itself exits 255 when it cannot reach the host or loses the
// connection; bpsrun reports that as such.

// hostSlots is one host of -H or --hostfile and its worker slots.
type hostSlots struct {
	host  string // as given: "host", "user@host", "10.0.0.2"
	slots int
}

// addr is the host's address for the job (DMLC_NODE_HOST,
// DMLC_PS_ROOT_URI): the host without "user@".
func addr(host string) string {
	if i := strings.LastIndexByte(host, '@'); i >= 0 {
		return host[i+1:]
	}
	return host
}

// parseHostSlots reads -H's list: "host1:4,host2:4" (a host without a
// count has 1 slot).
func parseHostSlots(s string) ([]hostSlots, error) {
	var hs []hostSlots
	for _, item := range strings.Split(s, ",") {
		item = strings.TrimSpace(item)
		if item == "" {
			return nil, fmt.Errorf("-H %q: empty host", s)
		}
		h := hostSlots{host: item, slots: 1}
		if i := strings.LastIndexByte(item, ':'); i >= 0 && !strings.HasSuffix(item, "]") {
			n, err := strconv.Atoi(item[i+1:])
			if err != nil || n < 1 {
				return nil, fmt.Errorf("-H %q: %q: the slots after ':' must be a number of at least 1", s, item)
			}
			h = hostSlots{host: item[:i], slots: n}
		}
		if err := checkHostName(h.host); err != nil {
			return nil, fmt.Errorf("-H %q: %v", s, err)
		}
		hs = append(hs, h)
	}
	return hs, nil
}

// parseHostfile reads a hostfile as Horovod and Open MPI do: one host a
// line, "host slots=N" (slots 1 when left out), '#' starts a comment.
func parseHostfile(r io.Reader, name string) ([]hostSlots, error) {
	var hs []hostSlots
	sc := bufio.NewScanner(r)
	for n := 1; sc.Scan(); n++ {
		line, _, _ := strings.Cut(sc.Text(), "#")
		fields := strings.Fields(line)
		if len(fields) == 0 {
			continue
		}
		h := hostSlots{host: fields[0], slots: 1}
		for _, f := range fields[1:] {
			v, ok := strings.CutPrefix(f, "slots=")
			if !ok {
				return nil, fmt.Errorf("%s:%d: %q: want \"host slots=N\"", name, n, f)
			}
			s, err := strconv.Atoi(v)
			if err != nil || s < 1 {
				return nil, fmt.Errorf("%s:%d: slots=%q must be a number of at least 1", name, n, v)
			}
			h.slots = s
		}
		if err := checkHostName(h.host); err != nil {
			return nil, fmt.Errorf("%s:%d: %v", name, n, err)
		}
		hs = append(hs, h)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("%s: %v", name, err)
	}
	if len(hs) == 0 {
		return nil, fmt.Errorf("%s: no hosts", name)
	}
	return hs, nil
}

// checkHostName refuses what ssh would read as an option or what a shell
// would split: a host is a name or address, optionally after "user@".
func checkHostName(h string) error {
	if h == "" || strings.HasPrefix(h, "-") || strings.ContainsAny(h, " \t'\"`$;&|<>()\\*?") {
		return fmt.Errorf("%q is not a host name", h)
	}
	return nil
}

// hostPlan is the layout of a -H job.
type hostPlan struct {
	workers        []hostSlots // every worker host has the same slots
	servers        []string    // hosts of the servers (serversPerHost each)
	serversPerHost int
}

// planHosts checks -H/--hostfile with --server-hosts and
// --servers-per-host: every worker host must have the same number of slots
// (BYTEPS_LOCAL_SIZE, as every machine of a BytePS job has), and without
// --server-hosts the servers run on the worker hosts.
func planHosts(f *flags) (*hostPlan, error) {
	var hs []hostSlots
	var err error
	switch {
	case f.hosts != "" && f.hostfile != "":
		return nil, errors.New("give -H or --hostfile, not both")
	case f.hosts != "":
		hs, err = parseHostSlots(f.hosts)
	default:
		var fh *os.File
		if fh, err = os.Open(f.hostfile); err != nil {
			return nil, fmt.Errorf("--hostfile: %v", err)
		}
		hs, err = parseHostfile(fh, f.hostfile)
		fh.Close()
	}
	if err != nil {
		return nil, err
	}
	seen := map[string]bool{}
	total := 0
	for _, h := range hs {
		if seen[addr(h.host)] {
			return nil, fmt.Errorf("host %s is listed twice: give it once, with all its slots", addr(h.host))
		}
		seen[addr(h.host)] = true
		if h.slots != hs[0].slots {
			return nil, fmt.Errorf("%s has %d slots and %s %d: every worker host must have the same number (it is BYTEPS_LOCAL_SIZE)",
				hs[0].host, hs[0].slots, h.host, h.slots)
		}
		total += h.slots
	}
	if f.npSet && f.np != total {
		return nil, fmt.Errorf("-np %d, but the hosts have %d slots in all: leave out -np, or make them agree", f.np, total)
	}
	p := &hostPlan{workers: hs, serversPerHost: f.serversPerHost}
	if p.serversPerHost < 1 {
		return nil, fmt.Errorf("--servers-per-host %d: must be at least 1", f.serversPerHost)
	}
	if f.serverHosts != "" {
		for _, s := range strings.Split(f.serverHosts, ",") {
			s = strings.TrimSpace(s)
			if err := checkHostName(s); err != nil {
				return nil, fmt.Errorf("--server-hosts %q: %v", f.serverHosts, err)
			}
			p.servers = append(p.servers, s)
		}
	} else {
		for _, h := range hs {
			p.servers = append(p.servers, h.host)
		}
	}
	return p, nil
}

// agentSpec is what bpsrun tells a remote agent to run.
type agentSpec struct {
	Name string   `json:"name"` // "worker 2", for the agent's messages
	Argv []string `json:"argv"`
	Env  []string `json:"env"` // NAME=VALUE, over the remote login's environment
	Dir  string   `json:"dir"` // working directory, if it exists there
	// Cleanup, for a worker: the job's coordinator (host:port) and the
	// worker's machine (DMLC_WORKER_ID), whose shared-memory files left
	// by dead processes the agent removes once the worker has ended.
	Cleanup *agentCleanup `json:"cleanup,omitempty"`
}

type agentCleanup struct {
	Root    string `json:"root"`
	Machine int    `json:"machine"`
}

// forwarded reports whether bpsrun -H passes name from its environment to
// every process: the job's own variables and the usual runtime knobs (-x
// adds more).
func forwarded(name string) bool {
	for _, p := range []string{"DMLC_", "BYTEPS_", "GOBPS_", "NCCL_", "OMP_", "MKL_", "CUDA_", "PYTHON"} {
		if strings.HasPrefix(name, p) {
			return true
		}
	}
	return false
}

// remoteEnv is the part of env that goes to every remote process: the
// forwarded variables, the -x ones (NAME takes bpsrun's value, NAME=VALUE
// sets it), then set.
func remoteEnv(env []string, extra []string, set map[string]string) ([]string, error) {
	m := map[string]string{}
	for _, kv := range env {
		if k, v, ok := strings.Cut(kv, "="); ok && forwarded(k) {
			m[k] = v
		}
	}
	for _, x := range extra {
		k, v, ok := strings.Cut(x, "=")
		if !ok {
			v = envValue(env, k)
		}
		if k == "" || strings.ContainsAny(k, " =") {
			return nil, fmt.Errorf("-x %q: want NAME or NAME=VALUE", x)
		}
		m[k] = v
	}
	for k, v := range set {
		m[k] = v
	}
	out := make([]string, 0, len(m))
	for k, v := range m {
		out = append(out, k+"="+v)
	}
	return out, nil
}

// shellQuote quotes s for the remote login shell.
func shellQuote(s string) string {
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// sshArgs is the ssh command line that starts the agent on host: no
// terminal, no password prompt, keepalives so that a dead host ends the
// session within seconds.
func sshArgs(f *flags, host, agent string) []string {
	a := []string{"-T", "-o", "BatchMode=yes", "-o", "ConnectTimeout=10",
		"-o", "ServerAliveInterval=5", "-o", "ServerAliveCountMax=3"}
	if f.sshPort != 0 {
		a = append(a, "-p", strconv.Itoa(f.sshPort))
	}
	if f.sshIdentity != "" {
		a = append(a, "-i", f.sshIdentity)
	}
	for _, o := range f.sshOptions {
		a = append(a, "-o", o)
	}
	return append(a, "--", host, "exec "+shellQuote(agent)+" --remote-agent")
}

// remote is bpsrun's end of one remote agent.
type remote struct {
	host  string
	spec  agentSpec
	mu    sync.Mutex
	stdin io.WriteCloser // nil once closed
}

func (r *remote) pipe(cmd *exec.Cmd) error {
	w, err := cmd.StdinPipe()
	r.stdin = w
	return err
}

// send gives the agent its spec.
func (r *remote) send() error {
	b, err := json.Marshal(r.spec)
	if err != nil {
		return err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	_, err = r.stdin.Write(append(b, '\n'))
	return err
}

// signal asks the agent to signal its process group; SIGKILL closes the
// session instead (the agent then kills the group) and kills ssh.
func (r *remote) signal(cmd *exec.Cmd, sig syscall.Signal) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if sig == syscall.SIGKILL {
		if r.stdin != nil {
			r.stdin.Close()
			r.stdin = nil
		}
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		return
	}
	if r.stdin != nil {
		fmt.Fprintf(r.stdin, "signal %d\n", int(sig))
	}
}

// sshLost is ssh's exit status when it cannot connect or the connection
// breaks.
const sshLost = 255

func remoteStatus(err error) (int, bool) {
	var ee *exec.ExitError
	if !errors.As(err, &ee) {
		return 0, false
	}
	if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
		return 0, false // ssh itself was killed
	}
	return ee.ExitCode(), true
}

func (r *remote) describe(err error) string {
	c, ok := remoteStatus(err)
	switch {
	case !ok:
		return err.Error()
	case c == sshLost:
		return fmt.Sprintf("ssh to %s exited 255: the host could not be reached, or the connection broke", r.host)
	case c > 128 && c < 128+65:
		return fmt.Sprintf("killed by signal %d (%v)", c-128, syscall.Signal(c-128))
	}
	return err.Error()
}

func (r *remote) signaled(err error) bool {
	c, ok := remoteStatus(err)
	return ok && (c == sshLost || (c > 128 && c < 128+65))
}

// runHosts is multi-host mode: the coordinator on the first worker host,
// the servers on --server-hosts (or the worker hosts), the workers on the
// worker hosts, each started over ssh through a remote agent.
func runHosts(f *flags, env []string, stdout, stderr io.Writer) int {
	if len(f.commands) == 0 {
		fmt.Fprintln(stderr, "bpsrun: -H/--hostfile needs a command after --")
		return 2
	}
	plan, err := planHosts(f)
	if err != nil {
		fmt.Fprintf(stderr, "bpsrun: %v\n", err)
		return 2
	}
	if _, err := exec.LookPath("ssh"); err != nil {
		fmt.Fprintln(stderr, "bpsrun: -H starts processes over ssh, and there is no ssh command on PATH (Debian: apt-get install openssh-client)")
		return 1
	}
	agent := f.remoteBpsrun
	if agent == "" {
		if agent, err = os.Executable(); err != nil {
			fmt.Fprintf(stderr, "bpsrun: %v\n", err)
			return 1
		}
	}
	job, code := prepareJob(f, env, stderr, false)
	if code != 0 {
		return code
	}
	local := plan.workers[0].slots
	common := job.common(len(plan.workers), local, len(plan.servers)*plan.serversPerHost, addr(plan.workers[0].host))
	workerEnv := job.workerEnv
	dir, _ := os.Getwd()
	var roleArgv []string
	roleArgv = append(roleArgv, agent)
	if f.verbose {
		roleArgv = append(roleArgv, "-v")
	}
	var procs []*proc
	var cleanup *agentCleanup // set for each worker's add
	add := func(name, host string, base []string, argv []string, kv ...string) error {
		set := map[string]string{"DMLC_NODE_HOST": addr(host)}
		for k, v := range common {
			set[k] = v
		}
		for i := 0; i < len(kv); i += 2 {
			set[kv[i]] = kv[i+1]
		}
		renv, err := remoteEnv(base, f.exports, set)
		if err != nil {
			return err
		}
		r := &remote{host: host, spec: agentSpec{Name: name, Argv: argv, Env: renv, Dir: dir, Cleanup: cleanup}}
		procs = append(procs, &proc{name: name, host: addr(host), remote: r,
			cmd: exec.Command("ssh", sshArgs(f, host, agent)...)})
		return nil
	}
	err = add("scheduler", plan.workers[0].host, env, roleArgv, "DMLC_ROLE", "scheduler")
	for i, h := range plan.servers {
		for k := 0; k < plan.serversPerHost && err == nil; k++ {
			id := i*plan.serversPerHost + k
			err = add(fmt.Sprintf("server %d", id), h, env, roleArgv, "DMLC_ROLE", "server", "GOBPS_SERVER_ID", strconv.Itoa(id))
		}
	}
	for i, h := range plan.workers {
		cleanup = &agentCleanup{Root: net.JoinHostPort(common["DMLC_PS_ROOT_URI"], common["DMLC_PS_ROOT_PORT"]), Machine: i}
		for l := 0; l < local && err == nil; l++ {
			err = add(fmt.Sprintf("worker %d", i*local+l), h.host, workerEnv, f.commands,
				"DMLC_ROLE", "worker", "DMLC_WORKER_ID", strconv.Itoa(i), "BYTEPS_LOCAL_RANK", strconv.Itoa(l))
		}
	}
	if err != nil {
		fmt.Fprintf(stderr, "bpsrun: %v\n", err)
		return 2
	}
	for _, p := range procs {
		// ssh's own environment is bpsrun's: what the job needs travels
		// in the spec.
		p.cmd.Env = env
	}
	return supervise(f, env, procs, stdout, stderr)
}

// runAgent is the remote end of bpsrun -H (see the top of this file): it
// runs the process that the first line of stdin describes and stays its
// parent until it ends.
func runAgent(stdin io.Reader, stderr io.Writer) int {
	fail := func(format string, a ...any) int {
		host, _ := os.Hostname()
		fmt.Fprintf(stderr, "bpsrun --remote-agent on %s: "+format+"\n", append([]any{host}, a...)...)
		return 127
	}
	br := bufio.NewReaderSize(stdin, 64<<10)
	line, err := readLine(br, 16<<20)
	if err != nil {
		return fail("read what to run from standard input: %v (this mode is how bpsrun -H starts processes; it is not for use by hand)", err)
	}
	var spec agentSpec
	if err := json.Unmarshal(line, &spec); err != nil || len(spec.Argv) == 0 {
		return fail("malformed spec from bpsrun -H: %v", err)
	}
	dir := ""
	if spec.Dir != "" {
		if st, err := os.Stat(spec.Dir); err != nil || !st.IsDir() {
			fmt.Fprintf(stderr, "bpsrun: %s: working directory %s does not exist here; running in %s\n", spec.Name, spec.Dir, homeDir())
		} else {
			dir = spec.Dir
		}
	}
	set := map[string]string{}
	for _, kv := range spec.Env {
		if k, v, ok := strings.Cut(kv, "="); ok {
			set[k] = v
		}
	}
	path, err := exec.LookPath(spec.Argv[0])
	if err != nil {
		return fail("%s: %v", spec.Name, err)
	}
	cmd := exec.Command(path, spec.Argv[1:]...)
	cmd.Args[0] = spec.Argv[0]
	cmd.Env = jobEnv(os.Environ(), set)
	cmd.Dir = dir
	cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	// The agent's own signals (sshd's SIGHUP, a kill) go to the group.
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGHUP, syscall.SIGINT, syscall.SIGTERM)
	defer signal.Stop(sigs)
	if err := cmd.Start(); err != nil {
		return fail("%s: %v", spec.Name, err)
	}
	pgid := cmd.Process.Pid
	go func() {
		for s := range sigs {
			_ = syscall.Kill(-pgid, s.(syscall.Signal))
		}
	}()
	go func() {
		for {
			l, err := readLine(br, 64)
			if err != nil {
				// bpsrun is gone or gave up on this process.
				_ = syscall.Kill(-pgid, syscall.SIGKILL)
				return
			}
			if n, ok := strings.CutPrefix(string(l), "signal "); ok {
				if s, err := strconv.Atoi(n); err == nil && s > 0 && s < 65 {
					_ = syscall.Kill(-pgid, syscall.Signal(s))
				}
			}
		}
	}()
	err = cmd.Wait()
	// Whatever the process left in its group goes with it, and so do the
	// shared-memory files of a worker that could not remove them.
	_ = syscall.Kill(-pgid, syscall.SIGKILL)
	if spec.Cleanup != nil {
		if n := len(core.RemoveLocalFiles(spec.Cleanup.Root, spec.Cleanup.Machine)); n > 0 {
			fmt.Fprintf(stderr, "bpsrun: removed %d shared-memory files that killed workers left\n", n)
		}
	}
	if err == nil {
		return 0
	}
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			return 128 + int(ws.Signal())
		}
		return ee.ExitCode()
	}
	return fail("%s: %v", spec.Name, err)
}

// readLine reads one line of at most max bytes, without its newline.
func readLine(br *bufio.Reader, max int) ([]byte, error) {
	var line []byte
	for {
		frag, isPrefix, err := br.ReadLine()
		if err != nil {
			return nil, err
		}
		line = append(line, frag...)
		if len(line) > max {
			return nil, fmt.Errorf("line longer than %d bytes", max)
		}
		if !isPrefix {
			return line, nil
		}
	}
}

func homeDir() string {
	if h, err := os.UserHomeDir(); err == nil {
		return filepath.Clean(h)
	}
	return "the current directory"
}
