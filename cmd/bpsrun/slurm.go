package main

// Slurm mode: `srun bpsrun [--servers-per-node K] -- CMD [ARGS...]`.
//
// Every task of the srun step runs bpsrun with the same arguments. Each
// works out, from the variables srun gives it, which part of the job it is,
// sets the DMLC_*, BYTEPS_* and GOBPS_* variables of that part, and then
// runs it as environment mode would. The rule (docs/launch.md):
//
//   - Let N be the number of nodes of the step, T the tasks on each node
//     (the same on every node) and K the servers per node (--servers-per-node;
//     default 1 on several nodes, 0 on one).
//   - The task with local id l (SLURM_LOCALID) on the node with index n
//     (SLURM_NODEID, its place in SLURM_NODELIST) is server n·K + l when
//     l < K (GOBPS_SERVER_ID), otherwise a worker: DMLC_WORKER_ID n,
//     BYTEPS_LOCAL_RANK l − K, BYTEPS_LOCAL_SIZE T − K. DMLC_NUM_WORKER is
//     N and DMLC_NUM_SERVER is N·K (1 when K is 0).
//   - The task with local id 0 on node 0 also runs the coordinator, in the
//     same process (a goroutine, as is its server), listening at the first host of SLURM_NODELIST (or
//     DMLC_PS_ROOT_URI when set) on the port of --port, else
//     DMLC_PS_ROOT_PORT, else 20000 + SLURM_JOB_ID mod 10000. With K = 0
//     it runs the job's one server too (GOBPS_SERVER_ID 0) and its worker
//     as a child process.
//
// Roles come from node index and local id, not from SLURM_PROCID, so they
// hold for any task distribution srun uses.

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/gobps/gobps/cmd/internal/roles"
	"github.com/gobps/gobps/config"
	"github.com/gobps/gobps/internal/logging"
)

// slurmBasePort and slurmPortSpan make the coordinator's default port:
// slurmBasePort + SLURM_JOB_ID mod slurmPortSpan, so that two jobs whose
// first node is the same machine do not collide.
const (
	slurmBasePort = 20000
	slurmPortSpan = 10000
)

// maxSlurmHosts bounds the expansion of a host list.
const maxSlurmHosts = 1 << 20

// inSlurmTask reports whether bpsrun runs as a task of a Slurm job (or its
// batch script): SLURM_PROCID is set.
func inSlurmTask(lookup func(string) (string, bool)) bool {
	v, ok := lookup("SLURM_PROCID")
	return ok && strings.TrimSpace(v) != ""
}

// envLookup looks names up in env (the last occurrence wins, as for a
// process's environment).
func envLookup(env []string) func(string) (string, bool) {
	return func(name string) (string, bool) {
		for i := len(env) - 1; i >= 0; i-- {
			if k, v, ok := strings.Cut(env[i], "="); ok && k == name {
				return v, true
			}
		}
		return "", false
	}
}

// parseHostList expands a Slurm host list ("node[01-03,07],gpu5",
// "rack[1-2]-n[1-2]") into host names, in order. A bracket holds numbers
// and ranges lo-hi separated by commas; a range keeps the width of lo
// (node[08-10] is node08 node09 node10). Several brackets in one name give
// every combination, the first bracket varying slowest.
func parseHostList(s string) ([]string, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return nil, errors.New("empty host list")
	}
	var items []string
	depth, start := 0, 0
	for i := 0; i < len(s); i++ {
		switch s[i] {
		case '[':
			if depth > 0 {
				return nil, fmt.Errorf("nested '[' at offset %d", i)
			}
			depth++
		case ']':
			if depth == 0 {
				return nil, fmt.Errorf("']' without '[' at offset %d", i)
			}
			depth--
		case ',':
			if depth == 0 {
				items = append(items, s[start:i])
				start = i + 1
			}
		}
	}
	if depth != 0 {
		return nil, errors.New("'[' is not closed")
	}
	items = append(items, s[start:])
	var hosts []string
	for _, item := range items {
		if strings.TrimSpace(item) != item || item == "" {
			return nil, fmt.Errorf("empty or blank-padded host name %q", item)
		}
		expanded, err := expandHost(item, maxSlurmHosts-len(hosts))
		if err != nil {
			return nil, fmt.Errorf("%q: %w", item, err)
		}
		hosts = append(hosts, expanded...)
	}
	return hosts, nil
}

// expandHost expands one name of a host list, bracket by bracket; it
// fails rather than produce more than limit names.
func expandHost(item string, limit int) ([]string, error) {
	open := strings.IndexByte(item, '[')
	if open < 0 {
		if limit < 1 {
			return nil, fmt.Errorf("more than %d hosts", maxSlurmHosts)
		}
		return []string{item}, nil
	}
	end := strings.IndexByte(item[open:], ']') + open
	prefix, body, rest := item[:open], item[open+1:end], item[end+1:]
	var nums []string
	for _, r := range strings.Split(body, ",") {
		lo, hi, isRange := strings.Cut(r, "-")
		if !isRange {
			hi = lo
		}
		a, err1 := strconv.ParseUint(lo, 10, 31)
		b, err2 := strconv.ParseUint(hi, 10, 31)
		if err1 != nil || err2 != nil {
			return nil, fmt.Errorf("[%s]: %q is not a number or a range lo-hi", body, r)
		}
		if b < a {
			return nil, fmt.Errorf("[%s]: range %s goes down", body, r)
		}
		if b-a >= uint64(limit) {
			return nil, fmt.Errorf("more than %d hosts", maxSlurmHosts)
		}
		for n := a; n <= b; n++ {
			nums = append(nums, fmt.Sprintf("%0*d", len(lo), n))
		}
	}
	tails, err := expandHost(rest, limit/len(nums))
	if err != nil {
		return nil, err
	}
	if len(nums)*len(tails) > limit {
		return nil, fmt.Errorf("more than %d hosts", maxSlurmHosts)
	}
	out := make([]string, 0, len(nums)*len(tails))
	for _, n := range nums {
		for _, t := range tails {
			out = append(out, prefix+n+t)
		}
	}
	return out, nil
}

// parseTasksPerNode expands Slurm's tasks-per-node list ("2(x3),1" is
// 2 2 2 1).
func parseTasksPerNode(s string) ([]int, error) {
	var out []int
	for _, item := range strings.Split(strings.TrimSpace(s), ",") {
		count, times := item, "1"
		if i := strings.IndexByte(item, '('); i >= 0 {
			if !strings.HasPrefix(item[i:], "(x") || !strings.HasSuffix(item, ")") {
				return nil, fmt.Errorf("%q is not N or N(xM)", item)
			}
			count, times = item[:i], item[i+2:len(item)-1]
		}
		n, err1 := strconv.Atoi(count)
		m, err2 := strconv.Atoi(times)
		if err1 != nil || err2 != nil || n < 1 || m < 1 || m > maxSlurmHosts-len(out) {
			return nil, fmt.Errorf("%q is not N or N(xM) with N and M at least 1", item)
		}
		for range m {
			out = append(out, n)
		}
	}
	return out, nil
}

// slurmAlloc is what a task of an srun step knows of the step.
type slurmAlloc struct {
	JobID        string   // SLURM_JOB_ID; "" if unset
	Tasks        int      // tasks of the step
	Nodes        int      // nodes of the step
	Hosts        []string // the step's nodes, in node-index order
	TasksPerNode int      // the same on every node
	ProcID       int      // this task's rank in the step
	NodeID       int      // this task's node index
	LocalID      int      // this task's index on its node
	tpnVar       string   // the variable TasksPerNode came from, for errors
}

// readSlurm reads the step's layout from the SLURM_* variables, the
// step's own (SLURM_STEP_*) where srun sets them, and checks it. The
// error lists every problem, each naming its variable.
func readSlurm(lookup func(string) (string, bool)) (*slurmAlloc, error) {
	var errs []error
	fail := func(format string, a ...any) { errs = append(errs, fmt.Errorf(format, a...)) }
	get := func(names ...string) (string, string) {
		for _, n := range names {
			if v, ok := lookup(n); ok && strings.TrimSpace(v) != "" {
				return n, strings.TrimSpace(v)
			}
		}
		return "", ""
	}
	count := func(names ...string) (int, string) {
		name, v := get(names...)
		if name == "" {
			fail("%s is not set (srun sets it)", strings.Join(names, " or "))
			return -1, names[0]
		}
		n, err := strconv.Atoi(v)
		if err != nil || n < 0 {
			fail("%s=%q: not a non-negative integer", name, v)
			return -1, name
		}
		return n, name
	}
	a := &slurmAlloc{}
	if name, _ := get("SLURM_STEP_ID", "SLURM_STEPID"); name == "" {
		fail("SLURM_STEP_ID is not set: bpsrun runs in Slurm's batch script, not as a task of srun; " +
			"start it with srun (srun bpsrun -- CMD), one task per worker and server")
	}
	_, a.JobID = get("SLURM_JOB_ID", "SLURM_JOBID")
	var tasksVar, nodesVar, procVar, nodeVar, localVar string
	a.Tasks, tasksVar = count("SLURM_STEP_NUM_TASKS", "SLURM_NTASKS", "SLURM_NPROCS")
	a.Nodes, nodesVar = count("SLURM_STEP_NUM_NODES", "SLURM_NNODES")
	a.ProcID, procVar = count("SLURM_PROCID")
	a.NodeID, nodeVar = count("SLURM_NODEID")
	a.LocalID, localVar = count("SLURM_LOCALID")
	if a.Tasks == 0 {
		fail("%s=0: a step has at least one task", tasksVar)
	}
	if a.Nodes == 0 {
		fail("%s=0: a step has at least one node", nodesVar)
	}

	if name, v := get("SLURM_STEP_NODELIST", "SLURM_NODELIST", "SLURM_JOB_NODELIST"); name == "" {
		fail("SLURM_STEP_NODELIST or SLURM_NODELIST is not set (srun sets it)")
	} else if hosts, err := parseHostList(v); err != nil {
		fail("%s=%q: %v", name, v, err)
	} else {
		a.Hosts = hosts
		if a.Nodes > 0 && len(hosts) != a.Nodes {
			fail("%s=%q names %d hosts, but %s=%d", name, v, len(hosts), nodesVar, a.Nodes)
		}
	}

	if name, v := get("SLURM_STEP_TASKS_PER_NODE", "SLURM_TASKS_PER_NODE"); name != "" {
		a.tpnVar = name
		if per, err := parseTasksPerNode(v); err != nil {
			fail("%s=%q: %v", name, v, err)
		} else {
			sum := 0
			for _, n := range per {
				sum += n
			}
			switch {
			case a.Nodes > 0 && len(per) != a.Nodes:
				fail("%s=%q gives tasks for %d nodes, but %s=%d", name, v, len(per), nodesVar, a.Nodes)
			case slices.Min(per) != slices.Max(per):
				fail("%s=%q: the nodes have different numbers of tasks (%d to %d); bpsrun needs the same on every node: "+
					"give srun --ntasks-per-node", name, v, slices.Min(per), slices.Max(per))
			case a.Tasks > 0 && sum != a.Tasks:
				fail("%s=%q adds up to %d tasks, but %s=%d", name, v, sum, tasksVar, a.Tasks)
			default:
				a.TasksPerNode = per[0]
			}
		}
	} else if name, v := get("SLURM_NTASKS_PER_NODE"); name != "" {
		a.tpnVar = name
		n, err := strconv.Atoi(v)
		switch {
		case err != nil || n < 1:
			fail("%s=%q: not a positive integer", name, v)
		case a.Nodes > 0 && a.Tasks > 0 && n*a.Nodes != a.Tasks:
			fail("%s=%s on %s=%d nodes is %d tasks, but %s=%d: bpsrun needs the same number of tasks on every node",
				name, v, nodesVar, a.Nodes, n*a.Nodes, tasksVar, a.Tasks)
		default:
			a.TasksPerNode = n
		}
	} else {
		fail("SLURM_STEP_TASKS_PER_NODE, SLURM_TASKS_PER_NODE or SLURM_NTASKS_PER_NODE must be set (srun sets them)")
	}

	if a.Tasks > 0 && a.ProcID >= a.Tasks {
		fail("%s=%d is not below %s=%d", procVar, a.ProcID, tasksVar, a.Tasks)
	}
	if a.Nodes > 0 && a.NodeID >= a.Nodes {
		fail("%s=%d is not below %s=%d", nodeVar, a.NodeID, nodesVar, a.Nodes)
	}
	if a.TasksPerNode > 0 && a.LocalID >= a.TasksPerNode {
		fail("%s=%d is not below the %d tasks per node of %s", localVar, a.LocalID, a.TasksPerNode, a.tpnVar)
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return a, nil
}

// defaultServersPerNode is --servers-per-node's value when it is not
// given: one server per node on several nodes; none on one (as BytePS,
// which runs no server on one machine; gobps still needs one, which the
// coordinator's task runs).
func defaultServersPerNode(nodes int) int {
	if nodes > 1 {
		return 1
	}
	return 0
}

// slurmPlan is one task's part in the job.
type slurmPlan struct {
	Role        config.Role // config.Server or config.Worker
	Coordinator bool        // the task also runs the coordinator
	OwnServer   bool        // the task also runs the job's only server (K = 0)
	Host        string      // this task's node
	RootAddr    string      // host:port of the coordinator
	K           int         // servers per node
	alloc       *slurmAlloc
	common      map[string]string // the variables every role of the job gets
	Env         map[string]string // the variables of this task's role; "" unsets one
}

// slurmDerived are the variables Slurm mode works out for each task. One
// already set to another value is an error: which of the two was meant
// cannot be told.
var slurmDerived = []string{"DMLC_NUM_WORKER", "DMLC_NUM_SERVER", "DMLC_WORKER_ID", "BYTEPS_LOCAL_RANK", "BYTEPS_LOCAL_SIZE", "GOBPS_SERVER_ID"}

// planSlurm applies the rule (see the top of this file) to one task.
// serversPerNode < 0 takes the default.
func planSlurm(a *slurmAlloc, serversPerNode int, rootURI string, port int) (*slurmPlan, error) {
	k := serversPerNode
	if k < 0 {
		k = defaultServersPerNode(a.Nodes)
	}
	if k >= a.TasksPerNode {
		return nil, fmt.Errorf("--servers-per-node %d leaves no worker on a node of %d tasks (%s): "+
			"it must be less than the tasks per node", k, a.TasksPerNode, a.tpnVar)
	}
	if rootURI == "" {
		rootURI = a.Hosts[0]
	}
	servers := a.Nodes * k
	if k == 0 {
		servers = 1
	}
	p := &slurmPlan{
		Coordinator: a.NodeID == 0 && a.LocalID == 0,
		Host:        a.Hosts[a.NodeID],
		RootAddr:    net.JoinHostPort(rootURI, strconv.Itoa(port)),
		K:           k,
		alloc:       a,
		common: map[string]string{
			"DMLC_NUM_WORKER":   strconv.Itoa(a.Nodes),
			"DMLC_NUM_SERVER":   strconv.Itoa(servers),
			"DMLC_PS_ROOT_URI":  rootURI,
			"DMLC_PS_ROOT_PORT": strconv.Itoa(port),
			"BYTEPS_LOCAL_SIZE": strconv.Itoa(a.TasksPerNode - k),
		},
	}
	if a.LocalID < k {
		p.Role = config.Server
		p.Env = p.roleEnv(config.Server, a.NodeID*k+a.LocalID, -1, -1)
	} else {
		p.Role = config.Worker
		p.Env = p.roleEnv(config.Worker, -1, a.NodeID, a.LocalID-k)
		p.OwnServer = p.Coordinator
	}
	return p, nil
}

// roleEnv is the variables of one role of the job; a negative id leaves
// its variable unset ("", which overrides an inherited value).
func (p *slurmPlan) roleEnv(role config.Role, serverID, workerID, localRank int) map[string]string {
	m := make(map[string]string, len(p.common)+4)
	for k, v := range p.common {
		m[k] = v
	}
	itoa := func(n int) string {
		if n < 0 {
			return ""
		}
		return strconv.Itoa(n)
	}
	m["DMLC_ROLE"] = string(role)
	m["GOBPS_SERVER_ID"] = itoa(serverID)
	m["DMLC_WORKER_ID"] = itoa(workerID)
	m["BYTEPS_LOCAL_RANK"] = itoa(localRank)
	return m
}

// schedulerEnv and serverEnv are the variables of the roles the
// coordinator's task runs besides its own.
func (p *slurmPlan) schedulerEnv() map[string]string {
	return p.roleEnv(config.Scheduler, -1, -1, -1)
}

func (p *slurmPlan) serverEnv() map[string]string {
	if p.Role == config.Server {
		return p.Env
	}
	return p.roleEnv(config.Server, 0, -1, -1)
}

// checkDerived returns an error for each variable of slurmDerived that
// the environment sets to a value other than the task's.
func (p *slurmPlan) checkDerived(lookup func(string) (string, bool)) error {
	var errs []error
	for _, name := range slurmDerived {
		v, _ := lookup(name)
		v = strings.TrimSpace(v)
		if v != "" && v != p.Env[name] {
			want := p.Env[name]
			if want == "" {
				want = "unset"
			}
			errs = append(errs, fmt.Errorf("%s=%q is set, but in Slurm mode bpsrun sets it for each task (this %s task's is %s): unset it",
				name, v, p.Role, want))
		}
	}
	return errors.Join(errs...)
}

// summary describes the whole job in one line, as the coordinator's task
// prints it.
func (p *slurmPlan) summary() string {
	a := p.alloc
	var b strings.Builder
	fmt.Fprintf(&b, "%s × %s: coordinator at %s (task %d on %s, which also runs ", plural(a.Nodes, "node"), plural(a.TasksPerNode, "task"), p.RootAddr, a.ProcID, p.Host)
	if p.K == 0 {
		b.WriteString("the job's only server, and worker DMLC_WORKER_ID=0 BYTEPS_LOCAL_RANK=0 as its child); ")
	} else {
		b.WriteString("server 0); ")
	}
	workers := a.TasksPerNode - p.K
	if p.K > 0 {
		fmt.Fprintf(&b, "%s (local %s on each node), ", plural(a.Nodes*p.K, "server"), idRange(0, p.K-1))
	}
	fmt.Fprintf(&b, "%s (local %s on each node: DMLC_NUM_WORKER=%d, BYTEPS_LOCAL_SIZE=%d)",
		plural(a.Nodes*workers, "worker"), idRange(p.K, a.TasksPerNode-1), a.Nodes, workers)
	return b.String()
}

func plural(n int, noun string) string {
	if n == 1 {
		return "1 " + noun
	}
	return strconv.Itoa(n) + " " + noun + "s"
}

// idRange is "id 3" or "ids 1-3".
func idRange(lo, hi int) string {
	if lo == hi {
		return "id " + strconv.Itoa(lo)
	}
	return fmt.Sprintf("ids %d-%d", lo, hi)
}

// describe is this task's part, for -v.
func (p *slurmPlan) describe() string {
	a := p.alloc
	s := fmt.Sprintf("task %d, node %d (%s), local id %d: ", a.ProcID, a.NodeID, p.Host, a.LocalID)
	if p.Role == config.Server {
		s += "server " + p.Env["GOBPS_SERVER_ID"]
	} else {
		s += fmt.Sprintf("worker DMLC_WORKER_ID=%s BYTEPS_LOCAL_RANK=%s", p.Env["DMLC_WORKER_ID"], p.Env["BYTEPS_LOCAL_RANK"])
	}
	if p.Coordinator {
		s += ", and the coordinator"
		if p.OwnServer {
			s += " and the only server"
		}
	}
	return s
}

// slurmPort is the coordinator's port: --port, else DMLC_PS_ROOT_PORT,
// else slurmBasePort + SLURM_JOB_ID mod slurmPortSpan.
func slurmPort(flagPort int, lookup func(string) (string, bool), jobID string) (int, error) {
	env, _ := lookup("DMLC_PS_ROOT_PORT")
	env = strings.TrimSpace(env)
	envPort := 0
	if env != "" {
		n, err := strconv.Atoi(env)
		if err != nil || n < 1 || n > 65535 {
			return 0, fmt.Errorf("DMLC_PS_ROOT_PORT=%q: not a port (1 to 65535)", env)
		}
		envPort = n
	}
	switch {
	case flagPort < 0 || flagPort > 65535:
		return 0, fmt.Errorf("--port %d: not a port (1 to 65535)", flagPort)
	case flagPort != 0 && envPort != 0 && flagPort != envPort:
		return 0, fmt.Errorf("--port %d and DMLC_PS_ROOT_PORT=%d disagree: give one", flagPort, envPort)
	case flagPort != 0:
		return flagPort, nil
	case envPort != 0:
		return envPort, nil
	}
	if id, err := strconv.ParseUint(jobID, 10, 64); err == nil {
		return slurmBasePort + int(id%slurmPortSpan), nil
	}
	return slurmBasePort, nil
}

// slurmNoSecret is what the coordinator's task says when the job has no
// secret. The secret goes in a file on a filesystem every node sees,
// never on a command line.
const slurmNoSecret = `WARNING: neither GOBPS_SECRET nor GOBPS_SECRET_FILE is set: this job is unauthenticated; any process that can reach its ports can take part in it and change its sums.
  Before srun, put a secret in a file on a filesystem every node shares, readable by you only, and export its path (srun passes it on to every task):
    mkdir -p $HOME/.gobps && (umask 077 && head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' > $HOME/.gobps/job.secret)
    export GOBPS_SECRET_FILE=$HOME/.gobps/job.secret
  See docs/security.md.`

// runSlurm is Slurm mode: work out this task's part and run it.
func runSlurm(f *flags, env []string, stdout, stderr io.Writer) int {
	lookup := envLookup(env)
	say := func(err error) {
		for _, line := range strings.Split(err.Error(), "\n") {
			fmt.Fprintf(stderr, "bpsrun: slurm: %s\n", line)
		}
	}
	if len(f.commands) == 0 {
		fmt.Fprintln(stderr, "bpsrun: slurm: give the training command: srun bpsrun [--servers-per-node K] -- CMD [ARGS...]")
		return 2
	}
	a, err := readSlurm(lookup)
	if err != nil {
		say(err)
		return 2
	}
	port, err := slurmPort(f.port, lookup, a.JobID)
	if err != nil {
		say(err)
		return 2
	}
	rootURI, _ := lookup("DMLC_PS_ROOT_URI")
	p, err := planSlurm(a, f.serversPerNode, strings.TrimSpace(rootURI), port)
	if err != nil {
		say(err)
		return 2
	}
	if err := p.checkDerived(lookup); err != nil {
		say(err)
		return 2
	}
	if f.verbose {
		fmt.Fprintf(stderr, "bpsrun: slurm: %s\n", p.describe())
	}
	taskEnv := jobEnv(env, p.Env)
	if !p.Coordinator {
		cfg, err := config.Parse(envLookup(taskEnv))
		if err != nil {
			say(err)
			return 1
		}
		return runRole(cfg, f, taskEnv, stderr)
	}
	fmt.Fprintf(stderr, "bpsrun: slurm: %s\n", p.summary())
	secret, _ := lookup("GOBPS_SECRET")
	secretFile, _ := lookup("GOBPS_SECRET_FILE")
	if strings.TrimSpace(secret) == "" && strings.TrimSpace(secretFile) == "" {
		for _, line := range strings.Split(slurmNoSecret, "\n") {
			fmt.Fprintf(stderr, "bpsrun: slurm: %s\n", line)
		}
	}
	return runCoordinatorTask(f, p, env, stdout, stderr)
}

// part is one thing the coordinator's task runs and how it ended.
type part struct {
	name string
	err  error
}

// runCoordinatorTask runs the coordinator and this task's role (server 0;
// with K = 0 the only server, and the task's worker as a child) until all
// of them end. After the first failure the others get --grace to end on
// their own before they are stopped; the task exits with the worker's
// status if the worker failed first, else 1.
func runCoordinatorTask(f *flags, p *slurmPlan, env []string, stdout, stderr io.Writer) int {
	schedCfg, err1 := config.Parse(envLookup(jobEnv(env, p.schedulerEnv())))
	srvCfg, err2 := config.Parse(envLookup(jobEnv(env, p.serverEnv())))
	if err := errors.Join(err1, err2); err != nil {
		for _, line := range strings.Split(err.Error(), "\n") {
			fmt.Fprintf(stderr, "bpsrun: slurm: %s\n", line)
		}
		return 1
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	jobCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	var worker *exec.Cmd
	workerName := ""
	if p.Role == config.Worker {
		workerEnv := jobEnv(env, p.Env)
		if f.compat {
			var err error
			if workerEnv, err = withBytepsCompat(workerEnv); err != nil {
				fmt.Fprintf(stderr, "bpsrun: %v\n", err)
				return 2
			}
		}
		workerName = "worker (DMLC_WORKER_ID=" + p.Env["DMLC_WORKER_ID"] + ", BYTEPS_LOCAL_RANK=" + p.Env["BYTEPS_LOCAL_RANK"] + ")"
		// The worker is stopped as bpsrun's other roles are, when jobCtx
		// ends: SIGTERM, then SIGKILL once WaitDelay is up.
		worker = exec.CommandContext(jobCtx, f.commands[0], f.commands[1:]...)
		worker.Env, worker.Stdin, worker.Stdout, worker.Stderr = workerEnv, os.Stdin, stdout, stderr
		worker.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
		worker.Cancel = func() error { return worker.Process.Signal(syscall.SIGTERM) }
		worker.WaitDelay = 5 * time.Second
	}

	done := make(chan part, 3)
	running := 0
	start := func(name string, run func() error) {
		running++
		go func() { done <- part{name, run()} }()
	}
	srvName := "server " + p.serverEnv()["GOBPS_SERVER_ID"]
	start("coordinator", func() error {
		ctx, logf := roleLogger(jobCtx, stderr, schedCfg, f.verbose, "coordinator")
		return roles.RunScheduler(ctx, schedCfg, logf)
	})
	start(srvName, func() error {
		ctx, logf := roleLogger(jobCtx, stderr, srvCfg, f.verbose, "server")
		return roles.RunServer(ctx, srvCfg, logf)
	})
	if worker != nil {
		if err := worker.Start(); err != nil {
			fmt.Fprintf(stderr, "bpsrun: slurm: start %s (%s): %v\n", workerName, f.commands[0], err)
			cancel()
			for ; running > 0; running-- {
				<-done
			}
			return 1
		}
		start(workerName, worker.Wait)
	}

	var first *part
	var grace <-chan time.Time
	for running > 0 {
		select {
		case r := <-done:
			running--
			if r.err != nil && first == nil && jobCtx.Err() == nil {
				first = &r
				grace = time.After(f.grace)
			}
		case <-grace:
			grace = nil
			cancel()
		}
	}
	switch {
	case first != nil:
		fmt.Fprintf(stderr, "bpsrun: slurm: job failed: %s: %v\n", first.name, first.err)
		if first.name == workerName {
			return exitCode(first.err)
		}
		return 1
	case ctx.Err() != nil:
		fmt.Fprintln(stderr, "bpsrun: slurm: interrupted")
		return 130
	}
	return 0
}

// roleLogger is newLogger with the role named on every line (coordinator
// or server, as the coordinator's task logs for two or three roles), its
// rank set once the job gives it.
func roleLogger(ctx context.Context, w io.Writer, cfg *config.Config, verbose bool, role string) (context.Context, roles.Logf) {
	lg := logging.New(w, logOptions(cfg, verbose, role))
	return roles.WithLogger(ctx, lg), lg.Logf
}
