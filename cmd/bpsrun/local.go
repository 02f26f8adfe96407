package main

import (
	"bufio"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	mathrand "math/rand/v2"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/gobps/gobps/config"
	"github.com/gobps/gobps/core"
	"github.com/gobps/gobps/internal/logging"
)

// execWorker replaces bpsrun with the worker command (environment mode).
func execWorker(argv, env []string) error {
	path, err := exec.LookPath(argv[0])
	if err != nil {
		return err
	}
	return syscall.Exec(path, argv, env)
}

// bytepsShimMarker is a line of python/compat/byteps/__init__.py that tells
// gobps's byteps shim from a real BytePS installation.
const bytepsShimMarker = "# gobps-byteps-shim"

// bytepsCompatDir finds the directory holding gobps's byteps shim
// (compat/byteps/__init__.py): compat/ in each entry of pythonPath, then
// ../python/compat from the directory of exe. The error lists where it
// looked.
func bytepsCompatDir(pythonPath, exe string) (string, error) {
	var dirs []string
	for _, e := range filepath.SplitList(pythonPath) {
		if e != "" {
			dirs = append(dirs, filepath.Join(e, "compat"))
		}
	}
	if exe != "" {
		dirs = append(dirs, filepath.Join(filepath.Dir(exe), "..", "python", "compat"))
	}
	for _, d := range dirs {
		b, err := os.ReadFile(filepath.Join(d, "byteps", "__init__.py"))
		if err != nil || !strings.Contains(string(b), bytepsShimMarker) {
			continue
		}
		if abs, err := filepath.Abs(d); err == nil {
			d = abs
		}
		return filepath.Clean(d), nil
	}
	return "", fmt.Errorf("--byteps-compat: gobps's byteps shim (compat/byteps/__init__.py) is not in %s; "+
		"put gobps's python/ directory on PYTHONPATH (PYTHONPATH=/path/to/gobps/python), or leave out "+
		"--byteps-compat and set PYTHONPATH=/path/to/gobps/python/compat:/path/to/gobps/python yourself",
		strings.Join(dirs, ", "))
}

// withBytepsCompat returns env with the byteps shim's directory first on
// PYTHONPATH.
func withBytepsCompat(env []string) ([]string, error) {
	pythonPath := ""
	for _, kv := range env {
		if k, v, ok := strings.Cut(kv, "="); ok && k == "PYTHONPATH" {
			pythonPath = v
		}
	}
	exe, _ := os.Executable()
	dir, err := bytepsCompatDir(pythonPath, exe)
	if err != nil {
		return nil, err
	}
	if pythonPath != "" {
		dir += string(filepath.ListSeparator) + pythonPath
	}
	return jobEnv(env, map[string]string{"PYTHONPATH": dir}), nil
}

// proc is one process of a job bpsrun supervises: started here (--local),
// or on another host over ssh (-H), when remote is set.
type proc struct {
	name   string // "scheduler", "server 1", "worker 0"
	host   string // -H: the host it runs on; "" here
	cmd    *exec.Cmd
	wg     sync.WaitGroup // output copiers
	remote *remote        // -H: the ssh session's side of the remote agent
}

// String names p in bpsrun's messages: "worker 2", or "worker 2 on host1".
func (p *proc) String() string {
	if p.host == "" {
		return p.name
	}
	return p.name + " on " + p.host
}

// prefix is what starts each line of p's output: "[worker 2] ", or
// "[host1 worker 2] ".
func (p *proc) prefix() string {
	if p.host == "" {
		return "[" + p.name + "] "
	}
	return "[" + p.host + " " + p.name + "] "
}

// signal sends sig to p's process group; for a remote process, to the
// remote agent, which signals the group it started there.
func (p *proc) signal(sig syscall.Signal) {
	if p.remote != nil {
		p.remote.signal(p.cmd, sig)
		return
	}
	_ = syscall.Kill(-p.cmd.Process.Pid, sig)
}

// pid names p's process here: "pid N", or "ssh pid N" for a remote one
// (its own pid is on its host).
func (p *proc) pid() string {
	if p.remote != nil {
		return fmt.Sprintf("ssh pid %d", p.cmd.Process.Pid)
	}
	return fmt.Sprintf("pid %d", p.cmd.Process.Pid)
}

// describe says how p ended, from its Wait error.
func (p *proc) describe(err error) string {
	if p.remote != nil {
		return p.remote.describe(err)
	}
	return err.Error()
}

// signaled reports whether p was killed by a signal (remote: as its agent
// reports it), or, remote, lost its ssh connection.
func (p *proc) signaled(err error) bool {
	if p.remote != nil {
		return p.remote.signaled(err)
	}
	return signaled(err)
}

type exit struct {
	p   *proc
	err error
}

// jobEnv builds a child's environment: bpsrun's own, minus the variables
// bpsrun sets, plus those.
// jobSecret is the secret bpsrun --local gives its job: a fresh random one,
// unless the environment names the job's own (GOBPS_SECRET or
// GOBPS_SECRET_FILE, passed on as they are) or --insecure asks for none.
func jobSecret(f *flags, env []string) (string, error) {
	for _, kv := range env {
		k, v, _ := strings.Cut(kv, "=")
		if (k == "GOBPS_SECRET" || k == "GOBPS_SECRET_FILE") && v != "" {
			return "", nil
		}
	}
	if f.insecure {
		return "", nil
	}
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		return "", fmt.Errorf("make the job's secret: %w", err)
	}
	return hex.EncodeToString(b), nil
}

// jobPlan is what a job bpsrun launches (--local, -H) needs first: the
// coordinator's port, the workers' base environment, and the variables
// that every process gets.
type jobPlan struct {
	port      int
	ln        *os.File // --local: the coordinator's listening socket, bound here
	workerEnv []string // env, with the byteps shim for --byteps-compat
	secret    string   // "": the environment names the job's own, or none
	progress  bool     // set GOBPS_PROGRESS (--progress, not set already)
}

// prepareJob makes the plan, or says why not on stderr and returns the
// exit status. With listen (--local), bpsrun binds the coordinator's port
// itself, on loopback, and hands the socket to the scheduler (listenFD):
// a port found free and released could be taken, before the scheduler
// binds it, by any process that asks for a free port, such as the job's
// own servers.
func prepareJob(f *flags, env []string, stderr io.Writer, listen bool) (*jobPlan, int) {
	j := &jobPlan{port: f.port, workerEnv: env}
	var err error
	if listen {
		ln, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(f.port)))
		if err != nil {
			fmt.Fprintf(stderr, "bpsrun: the coordinator's port: %v\n", err)
			return nil, 1
		}
		j.port = ln.Addr().(*net.TCPAddr).Port
		j.ln, err = ln.(*net.TCPListener).File()
		ln.Close() // j.ln is a duplicate, which the scheduler inherits
		if err != nil {
			fmt.Fprintf(stderr, "bpsrun: the coordinator's port: %v\n", err)
			return nil, 1
		}
	} else if j.port == 0 {
		// -H: free here; bpsrun usually runs on the first host, where the
		// coordinator will listen. If it is taken there, the coordinator
		// fails with a clear error, and --port chooses another.
		if j.port, err = remotePort(); err != nil {
			fmt.Fprintf(stderr, "bpsrun: find a free port: %v\n", err)
			return nil, 1
		}
	}
	if f.compat {
		if j.workerEnv, err = withBytepsCompat(env); err != nil {
			fmt.Fprintf(stderr, "bpsrun: %v\n", err)
			return nil, 2
		}
	}
	if j.secret, err = jobSecret(f, env); err != nil {
		fmt.Fprintf(stderr, "bpsrun: %v\n", err)
		return nil, 1
	}
	j.progress = f.progress && envValue(env, "GOBPS_PROGRESS") == ""
	return j, 0
}

// common is the variables every process of the job gets: machines of
// local workers each, servers, the coordinator at root.
func (j *jobPlan) common(machines, local, servers int, root string) map[string]string {
	m := map[string]string{
		"DMLC_NUM_WORKER":   strconv.Itoa(machines),
		"BYTEPS_LOCAL_SIZE": strconv.Itoa(local),
		"DMLC_NUM_SERVER":   strconv.Itoa(servers),
		"DMLC_PS_ROOT_URI":  root,
		"DMLC_PS_ROOT_PORT": strconv.Itoa(j.port),
	}
	if j.secret != "" {
		m["GOBPS_SECRET"] = j.secret
	}
	if j.progress {
		m["GOBPS_PROGRESS"] = "5s"
	}
	return m
}

// metricsPorts gives each process of a --local job its own metrics
// endpoint when GOBPS_METRICS_ADDR names a port: the scheduler gets that
// port, the servers and workers the ports after it, in the order procs
// lists them (port 0 is left as it is: each process picks a free one). It
// returns the plan, for the log, or "" when metrics are off.
func metricsPorts(env []string, procs []*proc) (string, error) {
	var addr string
	for _, kv := range env {
		if k, v, _ := strings.Cut(kv, "="); k == "GOBPS_METRICS_ADDR" {
			addr = v
		}
	}
	if addr == "" {
		return "", nil
	}
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return "", fmt.Errorf("GOBPS_METRICS_ADDR=%q: %v", addr, err)
	}
	p, err := strconv.Atoi(port)
	if err != nil || p < 0 || p+len(procs)-1 > 65535 {
		return "", fmt.Errorf("GOBPS_METRICS_ADDR=%q: the port must leave room for %d processes (port .. port+%d)", addr, len(procs), len(procs)-1)
	}
	if p == 0 {
		return "each process on a free port (GOBPS_METRICS_ADDR port 0; each logs its address)", nil
	}
	for i, pr := range procs {
		pr.cmd.Env = append(pr.cmd.Env, "GOBPS_METRICS_ADDR="+net.JoinHostPort(host, strconv.Itoa(p+i)))
	}
	return fmt.Sprintf("%s on port %d, the servers and workers on ports %d to %d in that order", procs[0].name, p, p+1, p+len(procs)-1), nil
}

func jobEnv(base []string, set map[string]string) []string {
	out := make([]string, 0, len(base)+len(set))
	for _, kv := range base {
		k, _, _ := strings.Cut(kv, "=")
		if _, ok := set[k]; !ok {
			out = append(out, kv)
		}
	}
	for k, v := range set {
		out = append(out, k+"="+v)
	}
	return out
}

// lockedWriter writes under mu, as lineWriter does.
type lockedWriter struct {
	mu  *sync.Mutex
	out io.Writer
}

func (w lockedWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.out.Write(p)
}

// envValue is the value of name in env (the last one wins), or "".
func envValue(env []string, name string) string {
	for i := len(env) - 1; i >= 0; i-- {
		if k, v, ok := strings.Cut(env[i], "="); ok && k == name {
			return v
		}
	}
	return ""
}

// lineWriter prefixes every line written by one stream of one process.
type lineWriter struct {
	mu  *sync.Mutex
	out io.Writer
}

// copyLines copies r's lines to w, each after prefix, until r ends.
// With GOBPS_LOG_FORMAT=json (jsonLogs) a line that starts with '{' is a
// JSON log line of a role or of the C library in a worker: it is copied
// unprefixed, so that it stays JSON (its role and rank fields say whose it
// is). Every other line (a worker program's own output) keeps the prefix.
func copyLines(wg *sync.WaitGroup, r io.Reader, prefix string, w lineWriter, jsonLogs bool) {
	defer wg.Done()
	br := bufio.NewReaderSize(r, 64<<10)
	for {
		line, err := br.ReadString('\n')
		if len(line) > 0 {
			if !strings.HasSuffix(line, "\n") {
				line += "\n"
			}
			p := prefix
			if jsonLogs && strings.HasPrefix(line, "{") {
				p = ""
			}
			w.mu.Lock()
			io.WriteString(w.out, p+line)
			w.mu.Unlock()
		}
		if err != nil {
			return
		}
	}
}

func runLocal(f *flags, env []string, stdout, stderr io.Writer) int {
	if len(f.commands) == 0 {
		fmt.Fprintln(stderr, "bpsrun: --local needs a command after --")
		return 2
	}
	if f.np < 1 || f.servers < 1 {
		fmt.Fprintf(stderr, "bpsrun: -np %d --servers %d: both must be at least 1\n", f.np, f.servers)
		return 2
	}
	local := f.localSz
	if local == 0 {
		local = f.np
	}
	if local < 1 || f.np%local != 0 {
		fmt.Fprintf(stderr, "bpsrun: --local-size %d must be at least 1 and divide -np %d\n", f.localSz, f.np)
		return 2
	}
	self, err := os.Executable()
	if err != nil {
		fmt.Fprintf(stderr, "bpsrun: %v\n", err)
		return 1
	}
	job, code := prepareJob(f, env, stderr, true)
	if code != 0 {
		return code
	}
	defer job.ln.Close()
	workerEnv := job.workerEnv
	common := job.common(f.np/local, local, f.servers, "127.0.0.1")
	common["DMLC_NODE_HOST"] = "127.0.0.1"
	with := func(kv ...string) map[string]string {
		m := make(map[string]string, len(common)+len(kv)/2)
		for k, v := range common {
			m[k] = v
		}
		for i := 0; i < len(kv); i += 2 {
			m[kv[i]] = kv[i+1]
		}
		return m
	}
	var procs []*proc
	roleArgs := []string{}
	if f.verbose {
		roleArgs = append(roleArgs, "-v")
	}
	procs = append(procs, &proc{name: "scheduler", cmd: exec.Command(self, roleArgs...)})
	procs[0].cmd.Env = jobEnv(env, with("DMLC_ROLE", "scheduler", listenFDVar, "3"))
	procs[0].cmd.ExtraFiles = []*os.File{job.ln} // fd 3
	for i := 0; i < f.servers; i++ {
		p := &proc{name: fmt.Sprintf("server %d", i), cmd: exec.Command(self, roleArgs...)}
		p.cmd.Env = jobEnv(env, with("DMLC_ROLE", "server", "GOBPS_SERVER_ID", strconv.Itoa(i)))
		procs = append(procs, p)
	}
	for i := 0; i < f.np; i++ {
		p := &proc{name: fmt.Sprintf("worker %d", i), cmd: exec.Command(f.commands[0], f.commands[1:]...)}
		p.cmd.Env = jobEnv(workerEnv, with("DMLC_ROLE", "worker", "DMLC_WORKER_ID", strconv.Itoa(i/local), "BYTEPS_LOCAL_RANK", strconv.Itoa(i%local)))
		procs = append(procs, p)
	}
	code = supervise(f, env, procs, stdout, stderr)
	// Workers killed with SIGKILL leave their shared-memory files.
	root := net.JoinHostPort("127.0.0.1", strconv.Itoa(job.port))
	n := 0
	for m := 0; m < f.np/local; m++ {
		n += len(core.RemoveLocalFiles(root, m))
	}
	if n > 0 {
		fmt.Fprintf(stderr, "bpsrun: removed %d shared-memory files that killed workers left\n", n)
	}
	return code
}

// supervise starts procs (their commands made, not started) and watches
// them to the job's end: it prefixes every output line, stops the rest
// after the first failure (--grace) or on Ctrl-C, and returns the job's
// exit status, naming what ended it.
func supervise(f *flags, env []string, procs []*proc, stdout, stderr io.Writer) int {
	plan, err := metricsPorts(env, procs)
	if err != nil {
		fmt.Fprintf(stderr, "bpsrun: %v\n", err)
		return 2
	}

	var outMu sync.Mutex
	out, errw := lineWriter{&outMu, stdout}, lineWriter{&outMu, stderr}
	// bpsrun's own lines: "bpsrun: ..." or, with GOBPS_LOG_FORMAT=json,
	// JSON lines of role bpsrun (always shown, as the plain ones are).
	jsonLogs := strings.EqualFold(envValue(env, "GOBPS_LOG_FORMAT"), config.LogJSON)
	var own *logging.Logger
	if jsonLogs {
		own = logging.New(lockedWriter{&outMu, stderr}, logging.Options{Format: config.LogJSON, Level: "INFO", Role: "bpsrun", Rank: -1})
	}
	say := func(format string, a ...any) {
		if own != nil {
			own.Infof(format, a...)
			return
		}
		outMu.Lock()
		fmt.Fprintf(stderr, "bpsrun: "+format+"\n", a...)
		outMu.Unlock()
	}
	if plan != "" {
		say("metrics: %s", plan)
	}

	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
	defer signal.Stop(sigs)

	exits := make(chan exit, len(procs))
	running := map[*proc]bool{}
	stopAll := func(sig syscall.Signal) {
		for p := range running {
			// each child leads its own process group: signal the group
			p.signal(sig)
		}
	}
	for _, p := range procs {
		p.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
		so, err1 := p.cmd.StdoutPipe()
		se, err2 := p.cmd.StderrPipe()
		var err3 error
		if p.remote != nil {
			err3 = p.remote.pipe(p.cmd)
		}
		err := firstErr(err1, err2, err3, p.cmd.Start())
		if err == nil && p.remote != nil {
			err = p.remote.send()
		}
		if err != nil {
			say("start %s: %v", p, err)
			if p.cmd.Process != nil {
				running[p] = true
				go func(p *proc) { exits <- exit{p, p.cmd.Wait()} }(p)
			}
			stopAll(syscall.SIGKILL)
			for range running {
				<-exits
			}
			return 1
		}
		prefix := p.prefix()
		p.wg.Add(2)
		go copyLines(&p.wg, so, prefix, out, jsonLogs)
		go copyLines(&p.wg, se, prefix, errw, jsonLogs)
		running[p] = true
		say("started %s (%s)", p, p.pid())
		go func(p *proc) {
			p.wg.Wait() // read all output before Wait closes the pipes
			exits <- exit{p, p.cmd.Wait()}
		}(p)
	}

	// The job's verdict. Until bpsrun itself starts stopping processes,
	// every failure is recorded; the root cause is the first process
	// killed by a signal bpsrun did not send (a crash or a kill from
	// outside), else the first non-zero exit. Processes that fail because
	// a peer died usually exit a moment before their dead peer is reaped,
	// so "first reaped" alone would blame them.
	var failures []exit
	// stalled is a process found stopped (SIGSTOP, a debugger) when the
	// first failure came: it cannot exit, but it is why the others failed
	// (they give up on it once its heartbeats stop).
	var stalled *proc
	code := 0
	var verdict string
	stopping := false
	workersLeft := 0
	for _, p := range procs {
		if strings.HasPrefix(p.name, "worker") {
			workersLeft++
		}
	}
	var deadline <-chan time.Time // set once the job is ending
	killAt := time.Duration(0)
	for len(running) > 0 {
		select {
		case ex := <-exits:
			delete(running, ex.p)
			if strings.HasPrefix(ex.p.name, "worker") {
				workersLeft--
			}
			if ex.err != nil {
				say("%s (%s) exited: %s", ex.p, ex.p.pid(), ex.p.describe(ex.err))
				if !stopping {
					failures = append(failures, ex)
					if deadline == nil || len(failures) == 1 {
						deadline = time.After(f.grace)
					}
					if len(failures) == 1 {
						stalled = findStopped(running)
					}
				}
			}
			if len(failures) == 0 && !stopping && workersLeft == 0 && deadline == nil {
				// Every worker succeeded: the coordinator tells the
				// servers to stop; give them time to do so.
				deadline = time.After(10 * time.Second)
			}
		case <-deadline:
			if killAt == 0 {
				say("stopping %d remaining processes", len(running))
				if len(failures) == 0 && verdict == "" {
					code, verdict = 1, "servers did not exit after the workers finished"
				}
				stopping = true
				stopAll(syscall.SIGTERM)
				killAt = 5 * time.Second
				deadline = time.After(killAt)
			} else {
				stopAll(syscall.SIGKILL)
				deadline = nil
			}
		case s := <-sigs:
			say("%v: stopping everything", s)
			if len(failures) == 0 && verdict == "" {
				code, verdict = 130, "interrupted"
			}
			stopping = true
			stopAll(syscall.SIGTERM)
			killAt = 5 * time.Second
			deadline = time.After(killAt)
		}
	}
	if len(failures) > 0 {
		root := rootCause(failures)
		code = exitCode(root.err)
		verdict = fmt.Sprintf("%s exited: %s", root.p, root.p.describe(root.err))
		var others []string
		for _, ex := range failures {
			if ex.p != root.p {
				others = append(others, fmt.Sprintf("%s exited: %s", ex.p, ex.p.describe(ex.err)))
			}
		}
		if stalled != nil && !root.p.signaled(root.err) {
			// Nothing crashed: the processes that exited gave up on the
			// one that was stopped.
			others = append([]string{verdict}, others...)
			verdict = fmt.Sprintf("%s (pid %d) was stopped and stopped answering", stalled, stalled.cmd.Process.Pid)
		}
		if len(others) > 0 {
			verdict += " (then " + strings.Join(others, "; ") + ")"
		}
	}
	if code != 0 {
		say("job failed: %s", verdict)
	}
	return code
}

// rootCause picks the failure that ended the job: the first process killed
// by a signal (or, remote, cut off), else the first to exit non-zero.
func rootCause(failures []exit) exit {
	for _, ex := range failures {
		if ex.p.signaled(ex.err) {
			return ex
		}
	}
	return failures[0]
}

// signaled reports whether err is the exit of a process killed by a signal.
func signaled(err error) bool {
	if ee, ok := err.(*exec.ExitError); ok {
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			return true
		}
	}
	return false
}

// findStopped returns a running process that is stopped (state T or t in
// /proc/PID/stat: SIGSTOP, or a tracer), or nil. Off Linux it finds none.
func findStopped(running map[*proc]bool) *proc {
	var found *proc
	for p := range running {
		if p.remote != nil {
			continue // its /proc is on another host
		}
		b, err := os.ReadFile("/proc/" + strconv.Itoa(p.cmd.Process.Pid) + "/stat")
		if err != nil {
			continue
		}
		// "pid (comm) state ...": comm may hold spaces and parentheses.
		i := strings.LastIndexByte(string(b), ')')
		if i < 0 || i+2 >= len(b) {
			continue
		}
		if st := b[i+2]; (st == 'T' || st == 't') && (found == nil || p.cmd.Process.Pid < found.cmd.Process.Pid) {
			found = p
		}
	}
	return found
}

func firstErr(errs ...error) error {
	for _, e := range errs {
		if e != nil {
			return e
		}
	}
	return nil
}

func exitCode(err error) int {
	if ee, ok := err.(*exec.ExitError); ok {
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			return 128 + int(ws.Signal())
		}
		if c := ee.ExitCode(); c > 0 {
			return c
		}
	}
	return 1
}

// remotePort picks -H's coordinator port: one free here, below Linux's
// ephemeral range (32768 and up by default), so that no process of the
// job asking the kernel for a free port (the servers do) can be given it
// before the coordinator binds it, as Slurm mode's ports are.
func remotePort() (int, error) {
	var last error
	for range 50 {
		p := 20000 + mathrand.IntN(12000)
		ln, err := net.Listen("tcp", net.JoinHostPort("", strconv.Itoa(p)))
		if err == nil {
			ln.Close()
			return p, nil
		}
		last = err
	}
	return 0, fmt.Errorf("no free port in 20000-31999: %v", last)
}
