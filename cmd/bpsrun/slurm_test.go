package main

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/gobps/gobps/cmd/internal/roles"
	"github.com/gobps/gobps/config"
)

func TestParseHostList(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want []string
	}{
		{"node[01-03,07],gpu5", []string{"node01", "node02", "node03", "node07", "gpu5"}},
		{"vm", []string{"vm"}},
		{"n[8-10]", []string{"n8", "n9", "n10"}},
		{"n[08-10]", []string{"n08", "n09", "n10"}},
		{"n[7]", []string{"n7"}},
		{"rack1-n[1-2].ib", []string{"rack1-n1.ib", "rack1-n2.ib"}},
		{"a[1-2]b[3-4]", []string{"a1b3", "a1b4", "a2b3", "a2b4"}},
		{"localhost,localhost", []string{"localhost", "localhost"}},
		{"x[1,3],y[0-1],z", []string{"x1", "x3", "y0", "y1", "z"}},
	} {
		got, err := parseHostList(tc.in)
		if err != nil || !reflect.DeepEqual(got, tc.want) {
			t.Errorf("parseHostList(%q) = %q, %v; want %q", tc.in, got, err, tc.want)
		}
	}
	for _, tc := range []struct{ in, want string }{
		{"", "empty host list"},
		{"node[1-3", "not closed"},
		{"node1-3]", "']' without '['"},
		{"node[[1]]", "nested"},
		{"node[3-1]", "goes down"},
		{"node[a-b]", "not a number"},
		{"node[1-]", "not a number"},
		{"node[]", "not a number"},
		{"a,,b", "empty"},
		{"a, b", "blank"},
		{"n[0-2000000]", "more than"},
		{"a[0-1023]b[0-1023]c[0-1]", "more than"},
	} {
		if got, err := parseHostList(tc.in); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("parseHostList(%q) = %q, %v; want an error saying %q", tc.in, got, err, tc.want)
		}
	}
}

func TestParseTasksPerNode(t *testing.T) {
	for in, want := range map[string][]int{
		"8":         {8},
		"2(x3),1":   {2, 2, 2, 1},
		"4(x2)":     {4, 4},
		"1,2(x2),3": {1, 2, 2, 3},
	} {
		if got, err := parseTasksPerNode(in); err != nil || !reflect.DeepEqual(got, want) {
			t.Errorf("parseTasksPerNode(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	for _, in := range []string{"", "0", "x", "2(x0)", "2(3)", "2(x3", "-1", "2(x3),"} {
		if got, err := parseTasksPerNode(in); err == nil {
			t.Errorf("parseTasksPerNode(%q) = %v, want an error", in, got)
		}
	}
}

// slurmTaskEnv is the SLURM_* environment srun gives task procID of a
// step of nodes × perNode tasks laid out in blocks (srun's default).
func slurmTaskEnv(nodelist string, nodes, perNode, procID int) map[string]string {
	tpn := strconv.Itoa(perNode)
	if nodes > 1 {
		tpn += "(x" + strconv.Itoa(nodes) + ")"
	}
	return map[string]string{
		"SLURM_JOB_ID":              "123456",
		"SLURM_STEP_ID":             "0",
		"SLURM_PROCID":              strconv.Itoa(procID),
		"SLURM_NTASKS":              strconv.Itoa(nodes * perNode),
		"SLURM_STEP_NUM_TASKS":      strconv.Itoa(nodes * perNode),
		"SLURM_NNODES":              strconv.Itoa(nodes),
		"SLURM_STEP_NUM_NODES":      strconv.Itoa(nodes),
		"SLURM_NODELIST":            nodelist,
		"SLURM_STEP_NODELIST":       nodelist,
		"SLURM_JOB_NODELIST":        nodelist,
		"SLURM_NODEID":              strconv.Itoa(procID / perNode),
		"SLURM_LOCALID":             strconv.Itoa(procID % perNode),
		"SLURM_TASKS_PER_NODE":      tpn,
		"SLURM_STEP_TASKS_PER_NODE": tpn,
	}
}

func mapLookup(m map[string]string) func(string) (string, bool) {
	return func(k string) (string, bool) { v, ok := m[k]; return v, ok }
}

func envList(m map[string]string) []string {
	var out []string
	for k, v := range m {
		out = append(out, k+"="+v)
	}
	return out
}

// planAll plans every task of a step as runSlurm would, and checks that
// each role's variables make a valid environment-mode configuration.
func planAll(t *testing.T, nodelist string, nodes, perNode, k int) []*slurmPlan {
	t.Helper()
	var plans []*slurmPlan
	for id := range nodes * perNode {
		env := slurmTaskEnv(nodelist, nodes, perNode, id)
		a, err := readSlurm(mapLookup(env))
		if err != nil {
			t.Fatalf("task %d: %v", id, err)
		}
		port, err := slurmPort(0, mapLookup(env), a.JobID)
		if err != nil {
			t.Fatal(err)
		}
		p, err := planSlurm(a, k, "", port)
		if err != nil {
			t.Fatalf("task %d: %v", id, err)
		}
		roleEnvs := []map[string]string{p.Env}
		if p.Coordinator {
			roleEnvs = append(roleEnvs, p.schedulerEnv(), p.serverEnv())
		}
		for _, m := range roleEnvs {
			cfg, err := config.Parse(envLookup(jobEnv(envList(env), m)))
			if err != nil {
				t.Fatalf("task %d, %s: %v", id, m["DMLC_ROLE"], err)
			}
			if cfg.NumWorkerProcs() != nodes*(perNode-p.K) {
				t.Errorf("task %d, %s: %d worker processes, want %d", id, m["DMLC_ROLE"], cfg.NumWorkerProcs(), nodes*(perNode-p.K))
			}
		}
		plans = append(plans, p)
	}
	return plans
}

type taskWant struct {
	role        config.Role
	coordinator bool
	ownServer   bool
	vars        string // DMLC_WORKER_ID/BYTEPS_LOCAL_RANK of a worker, GOBPS_SERVER_ID of a server
}

func checkPlans(t *testing.T, plans []*slurmPlan, common map[string]string, want []taskWant) {
	t.Helper()
	if len(plans) != len(want) {
		t.Fatalf("%d tasks planned, want %d", len(plans), len(want))
	}
	for i, p := range plans {
		got := taskWant{role: p.Role, coordinator: p.Coordinator, ownServer: p.OwnServer}
		if p.Role == config.Server {
			got.vars = p.Env["GOBPS_SERVER_ID"]
		} else {
			got.vars = p.Env["DMLC_WORKER_ID"] + "/" + p.Env["BYTEPS_LOCAL_RANK"]
		}
		if got != want[i] {
			t.Errorf("task %d: got %+v, want %+v", i, got, want[i])
		}
		if p.Env["DMLC_ROLE"] != string(want[i].role) {
			t.Errorf("task %d: DMLC_ROLE=%q, want %q", i, p.Env["DMLC_ROLE"], want[i].role)
		}
		for k, v := range common {
			if p.Env[k] != v {
				t.Errorf("task %d: %s=%q, want %q", i, k, p.Env[k], v)
			}
		}
		// the variables of the other role are unset, overriding inherited ones
		if p.Role == config.Server && (p.Env["DMLC_WORKER_ID"] != "" || p.Env["BYTEPS_LOCAL_RANK"] != "") {
			t.Errorf("task %d (server) sets worker variables: %v", i, p.Env)
		}
		if p.Role == config.Worker && p.Env["GOBPS_SERVER_ID"] != "" {
			t.Errorf("task %d (worker) sets GOBPS_SERVER_ID: %v", i, p.Env)
		}
	}
}

// TestSlurmTwoNodes: the SLURM_* environment of a 2-node allocation of 4
// tasks per node; by default the first task of each node is a server, the
// other 3 its node's workers, and task 0 runs the coordinator at the first
// node on 20000 + SLURM_JOB_ID mod 10000.
func TestSlurmTwoNodes(t *testing.T) {
	plans := planAll(t, "gpu[07-08]", 2, 4, -1)
	common := map[string]string{"DMLC_NUM_WORKER": "2", "DMLC_NUM_SERVER": "2", "BYTEPS_LOCAL_SIZE": "3",
		"DMLC_PS_ROOT_URI": "gpu07", "DMLC_PS_ROOT_PORT": "23456"}
	checkPlans(t, plans, common, []taskWant{
		{config.Server, true, false, "0"},
		{config.Worker, false, false, "0/0"},
		{config.Worker, false, false, "0/1"},
		{config.Worker, false, false, "0/2"},
		{config.Server, false, false, "1"},
		{config.Worker, false, false, "1/0"},
		{config.Worker, false, false, "1/1"},
		{config.Worker, false, false, "1/2"},
	})
	if h := plans[5].Host; h != "gpu08" {
		t.Errorf("task 5 is on %q, want gpu08", h)
	}
	if s := plans[0].schedulerEnv(); s["DMLC_ROLE"] != "scheduler" || s["GOBPS_SERVER_ID"] != "" || s["DMLC_WORKER_ID"] != "" {
		t.Errorf("coordinator's variables: %v", s)
	}
	if got, want := plans[0].summary(), "2 nodes × 4 tasks: coordinator at gpu07:23456 (task 0 on gpu07, which also runs server 0); "+
		"2 servers (local id 0 on each node), 6 workers (local ids 1-3 on each node: DMLC_NUM_WORKER=2, BYTEPS_LOCAL_SIZE=3)"; got != want {
		t.Errorf("summary\n%q, want\n%q", got, want)
	}

	// two servers per node
	plans = planAll(t, "gpu[07-08]", 2, 4, 2)
	common = map[string]string{"DMLC_NUM_WORKER": "2", "DMLC_NUM_SERVER": "4", "BYTEPS_LOCAL_SIZE": "2"}
	checkPlans(t, plans, common, []taskWant{
		{config.Server, true, false, "0"},
		{config.Server, false, false, "1"},
		{config.Worker, false, false, "0/0"},
		{config.Worker, false, false, "0/1"},
		{config.Server, false, false, "2"},
		{config.Server, false, false, "3"},
		{config.Worker, false, false, "1/0"},
		{config.Worker, false, false, "1/1"},
	})

	// no server per node: the coordinator's task runs the only one
	plans = planAll(t, "gpu[07-08]", 2, 2, 0)
	common = map[string]string{"DMLC_NUM_WORKER": "2", "DMLC_NUM_SERVER": "1", "BYTEPS_LOCAL_SIZE": "2"}
	checkPlans(t, plans, common, []taskWant{
		{config.Worker, true, true, "0/0"},
		{config.Worker, false, false, "0/1"},
		{config.Worker, false, false, "1/0"},
		{config.Worker, false, false, "1/1"},
	})
}

// TestSlurmOneNode: on one node the default is no server task; the first
// task runs the coordinator, the only server and worker 0/0.
func TestSlurmOneNode(t *testing.T) {
	plans := planAll(t, "vm", 1, 3, -1)
	common := map[string]string{"DMLC_NUM_WORKER": "1", "DMLC_NUM_SERVER": "1", "BYTEPS_LOCAL_SIZE": "3", "DMLC_PS_ROOT_URI": "vm"}
	checkPlans(t, plans, common, []taskWant{
		{config.Worker, true, true, "0/0"},
		{config.Worker, false, false, "0/1"},
		{config.Worker, false, false, "0/2"},
	})
	if got, want := plans[0].summary(), "1 node × 3 tasks: coordinator at vm:23456 (task 0 on vm, which also runs the job's only server, "+
		"and worker DMLC_WORKER_ID=0 BYTEPS_LOCAL_RANK=0 as its child); 3 workers (local ids 0-2 on each node: DMLC_NUM_WORKER=1, BYTEPS_LOCAL_SIZE=3)"; got != want {
		t.Errorf("summary\n%q, want\n%q", got, want)
	}
	srv := plans[0].serverEnv()
	if srv["DMLC_ROLE"] != "server" || srv["GOBPS_SERVER_ID"] != "0" || srv["DMLC_WORKER_ID"] != "" {
		t.Errorf("the coordinator task's server: %v", srv)
	}
	// --servers-per-node 1 on one node: a server task and 2 workers
	plans = planAll(t, "vm", 1, 3, 1)
	checkPlans(t, plans, map[string]string{"DMLC_NUM_SERVER": "1", "BYTEPS_LOCAL_SIZE": "2"}, []taskWant{
		{config.Server, true, false, "0"},
		{config.Worker, false, false, "0/0"},
		{config.Worker, false, false, "0/1"},
	})
}

// TestSlurmDistribution: roles follow node index and local id, not
// SLURM_PROCID, so a cyclic distribution gets the same roles per node.
func TestSlurmDistribution(t *testing.T) {
	env := slurmTaskEnv("n[1-2]", 2, 3, 0)
	// cyclic: task 1 is on node 1 with local id 0
	env["SLURM_PROCID"], env["SLURM_NODEID"], env["SLURM_LOCALID"] = "1", "1", "0"
	a, err := readSlurm(mapLookup(env))
	if err != nil {
		t.Fatal(err)
	}
	p, err := planSlurm(a, -1, "", 1234)
	if err != nil {
		t.Fatal(err)
	}
	if p.Role != config.Server || p.Env["GOBPS_SERVER_ID"] != "1" || p.Coordinator || p.Host != "n2" {
		t.Errorf("got %s %v on %s, coordinator %v", p.Role, p.Env, p.Host, p.Coordinator)
	}
	// without the step's variables, the job's are read
	for _, k := range []string{"SLURM_STEP_NUM_TASKS", "SLURM_STEP_NUM_NODES", "SLURM_STEP_NODELIST", "SLURM_STEP_TASKS_PER_NODE", "SLURM_TASKS_PER_NODE"} {
		delete(env, k)
	}
	env["SLURM_NTASKS_PER_NODE"] = "3"
	if a, err := readSlurm(mapLookup(env)); err != nil || a.TasksPerNode != 3 || a.Nodes != 2 || len(a.Hosts) != 2 {
		t.Errorf("from the job's variables: %+v, %v", a, err)
	}
}

func TestSlurmErrors(t *testing.T) {
	for _, tc := range []struct {
		name string
		edit map[string]string // "" deletes
		want []string
	}{
		{"batch script", map[string]string{"SLURM_STEP_ID": ""}, []string{"SLURM_STEP_ID is not set", "srun bpsrun"}},
		{"uneven", map[string]string{"SLURM_STEP_TASKS_PER_NODE": "3,2", "SLURM_STEP_NUM_TASKS": "5"},
			[]string{`SLURM_STEP_TASKS_PER_NODE="3,2"`, "different numbers of tasks", "--ntasks-per-node"}},
		{"sum", map[string]string{"SLURM_STEP_TASKS_PER_NODE": "4(x2)"}, []string{"adds up to 8 tasks, but SLURM_STEP_NUM_TASKS=6"}},
		{"hosts", map[string]string{"SLURM_STEP_NODELIST": "n[1-3]"}, []string{`SLURM_STEP_NODELIST="n[1-3]" names 3 hosts, but SLURM_STEP_NUM_NODES=2`}},
		{"bad list", map[string]string{"SLURM_STEP_NODELIST": "n[1-2"}, []string{`SLURM_STEP_NODELIST="n[1-2": '[' is not closed`}},
		{"procid", map[string]string{"SLURM_PROCID": "6"}, []string{"SLURM_PROCID=6 is not below SLURM_STEP_NUM_TASKS=6"}},
		{"nodeid", map[string]string{"SLURM_NODEID": "2"}, []string{"SLURM_NODEID=2 is not below SLURM_STEP_NUM_NODES=2"}},
		{"localid", map[string]string{"SLURM_LOCALID": "x"}, []string{`SLURM_LOCALID="x": not a non-negative integer`}},
		{"no tpn", map[string]string{"SLURM_STEP_TASKS_PER_NODE": "", "SLURM_TASKS_PER_NODE": ""}, []string{"SLURM_NTASKS_PER_NODE must be set"}},
		{"no nodes", map[string]string{"SLURM_STEP_NUM_NODES": "", "SLURM_NNODES": ""}, []string{"SLURM_STEP_NUM_NODES or SLURM_NNODES is not set"}},
		// several problems are reported at once
		{"two", map[string]string{"SLURM_PROCID": "-1", "SLURM_NODEID": "9"}, []string{"SLURM_PROCID", "SLURM_NODEID=9"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			env := slurmTaskEnv("n[1-2]", 2, 3, 4)
			for k, v := range tc.edit {
				if v == "" {
					delete(env, k)
				} else {
					env[k] = v
				}
			}
			_, err := readSlurm(mapLookup(env))
			if err == nil {
				t.Fatal("no error")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not say %q", err, w)
				}
			}
		})
	}

	a, err := readSlurm(mapLookup(slurmTaskEnv("n[1-2]", 2, 3, 4)))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := planSlurm(a, 3, "", 1234); err == nil || !strings.Contains(err.Error(), "--servers-per-node 3 leaves no worker on a node of 3 tasks") {
		t.Errorf("--servers-per-node 3 of 3: %v", err)
	}

	for _, tc := range []struct {
		flag int
		env  string
		want string
	}{
		{0, "abc", `DMLC_PS_ROOT_PORT="abc": not a port`},
		{0, "70000", `DMLC_PS_ROOT_PORT="70000": not a port`},
		{70000, "", "--port 70000: not a port"},
		{1234, "4321", "--port 1234 and DMLC_PS_ROOT_PORT=4321 disagree"},
	} {
		_, err := slurmPort(tc.flag, mapLookup(map[string]string{"DMLC_PS_ROOT_PORT": tc.env}), "1")
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("slurmPort(%d, %q): %v, want %q", tc.flag, tc.env, err, tc.want)
		}
	}
	for _, tc := range []struct {
		flag     int
		env, job string
		want     int
	}{{0, "", "123456", 23456}, {0, "", "", 20000}, {0, "4321", "1", 4321}, {1234, "", "1", 1234}, {1234, "1234", "1", 1234}} {
		if got, err := slurmPort(tc.flag, mapLookup(map[string]string{"DMLC_PS_ROOT_PORT": tc.env}), tc.job); err != nil || got != tc.want {
			t.Errorf("slurmPort(%d, %q, job %q) = %d, %v; want %d", tc.flag, tc.env, tc.job, got, err, tc.want)
		}
	}
}

// TestSlurmRun: bpsrun's own checks in Slurm mode, each an exit code 2
// and a message naming the variable or flag, before anything starts.
func TestSlurmRun(t *testing.T) {
	base := slurmTaskEnv("n[1-2]", 2, 3, 4)
	for _, tc := range []struct {
		name string
		args []string
		env  map[string]string
		want string
	}{
		{"no command", nil, nil, "give the training command"},
		{"derived", []string{"--", "true"}, map[string]string{"DMLC_NUM_WORKER": "4"},
			`DMLC_NUM_WORKER="4" is set, but in Slurm mode bpsrun sets it for each task (this worker task's is 2): unset it`},
		{"derived unset", []string{"--", "true"}, map[string]string{"GOBPS_SERVER_ID": "1"}, `GOBPS_SERVER_ID="1" is set, but in Slurm mode bpsrun sets it for each task (this worker task's is unset)`},
		{"too many servers", []string{"--servers-per-node", "3", "--", "true"}, nil, "--servers-per-node 3 leaves no worker"},
		{"batch", []string{"--", "true"}, map[string]string{"SLURM_STEP_ID": ""}, "SLURM_STEP_ID is not set"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			env := map[string]string{}
			for k, v := range base {
				env[k] = v
			}
			for k, v := range tc.env {
				if v == "" {
					delete(env, k)
				} else {
					env[k] = v
				}
			}
			var stdout, stderr bytes.Buffer
			if code := run(tc.args, envList(env), &stdout, &stderr); code != 2 || !strings.Contains(stderr.String(), tc.want) {
				t.Errorf("exit %d, stderr %q; want 2 and %q", code, stderr.String(), tc.want)
			}
		})
	}
	// --servers-per-node outside Slurm mode
	var stderr bytes.Buffer
	if code := run([]string{"--local", "--servers-per-node", "1", "--", "true"}, nil, &bytes.Buffer{}, &stderr); code != 2 || !strings.Contains(stderr.String(), "--servers-per-node is for Slurm mode") {
		t.Errorf("--local --servers-per-node: exit %d, %q", code, stderr.String())
	}
	// DMLC_ROLE set: environment mode, even inside an allocation
	env := envList(base)
	stderr.Reset()
	if code := run([]string{"--servers-per-node", "1", "true"}, append(env, "DMLC_ROLE=worker"), &bytes.Buffer{}, &stderr); code != 2 || !strings.Contains(stderr.String(), "--servers-per-node is for Slurm mode") {
		t.Errorf("DMLC_ROLE with --servers-per-node: exit %d, %q", code, stderr.String())
	}
}

// slurmBin builds bpsrun and e2e/testjob (the worker that checks every sum
// exactly) into a directory of the test.
func slurmBin(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	cmd := exec.Command("go", "build", "-o", dir+"/", ".", "../../e2e/testjob")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	return dir
}

// cleanEnv is this process's environment without anything of Slurm's,
// gobps's or BytePS's.
func cleanEnv() []string {
	var out []string
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		if strings.HasPrefix(k, "SLURM") || strings.HasPrefix(k, "DMLC_") || strings.HasPrefix(k, "BYTEPS_") || strings.HasPrefix(k, "GOBPS_") {
			continue
		}
		out = append(out, kv)
	}
	return out
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// runFakeSlurm starts nodes × perNode copies of bpsrun as the tasks of an
// srun step on this machine (every node named localhost), each with the
// SLURM_* environment srun would give it, waits for all of them, and
// fails the test unless every one exits 0.
func runFakeSlurm(t *testing.T, bin string, nodes, perNode int, extraEnv []string, args ...string) []string {
	t.Helper()
	outs, errs := fakeSlurm(t, bin, nodes, perNode, extraEnv, args...)
	failed := false
	for id, err := range errs {
		if err != nil {
			failed = true
			t.Errorf("task %d: %v", id, err)
		}
	}
	if failed {
		for id, o := range outs {
			t.Logf("task %d:\n%s", id, o)
		}
		t.FailNow()
	}
	return outs
}

// fakeSlurm runs the tasks as runFakeSlurm does and returns each one's
// output and exit. Tasks still running after 2 minutes are killed.
func fakeSlurm(t *testing.T, bin string, nodes, perNode int, extraEnv []string, args ...string) ([]string, []error) {
	t.Helper()
	port, err := roles.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	nodelist := strings.TrimSuffix(strings.Repeat("localhost,", nodes), ",")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	outs := make([]*syncBuffer, nodes*perNode)
	errs := make([]error, nodes*perNode)
	var wg sync.WaitGroup
	for id := range outs {
		env := cleanEnv()
		for k, v := range slurmTaskEnv(nodelist, nodes, perNode, id) {
			env = append(env, k+"="+v)
		}
		env = append(env, extraEnv...)
		cmd := exec.CommandContext(ctx, filepath.Join(bin, "bpsrun"), append([]string{"--port", strconv.Itoa(port)}, args...)...)
		cmd.Env = env
		cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGKILL) }
		outs[id] = &syncBuffer{}
		cmd.Stdout, cmd.Stderr = outs[id], outs[id]
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		wg.Add(1)
		go func() { defer wg.Done(); errs[id] = cmd.Wait() }()
	}
	wg.Wait()
	if ctx.Err() != nil {
		t.Errorf("the job did not end within 2 minutes; its tasks were killed")
	}
	var texts []string
	for _, o := range outs {
		texts = append(texts, o.String())
	}
	return texts, errs
}

// TestSlurmJob runs real jobs as srun would start them, every task a
// bpsrun process with its own SLURM_* variables, and e2e/testjob as the
// workers, which check every sum exactly.
func TestSlurmJob(t *testing.T) {
	if testing.Short() {
		t.Skip("builds bpsrun and e2e/testjob and runs two jobs of processes")
	}
	bin := slurmBin(t)
	testjob := []string{"--", filepath.Join(bin, "testjob"), "-tensors", "20", "-rounds", "3", "-max", "262144", "-timeout", "90s"}
	exact := regexp.MustCompile(`rank (\d+): all 3 rounds exact`)

	t.Run("two nodes", func(t *testing.T) {
		// 2 nodes × 2 tasks: a server and a worker on each; a secret
		// file passes through to every task.
		secret := filepath.Join(t.TempDir(), "job.secret")
		if err := os.WriteFile(secret, []byte("slurm test secret 0123456789\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		outs := runFakeSlurm(t, bin, 2, 2, []string{"GOBPS_SECRET_FILE=" + secret}, append([]string{"-v"}, testjob...)...)
		ranks := map[string]bool{}
		for id, o := range outs {
			for _, m := range exact.FindAllStringSubmatch(o, -1) {
				ranks[m[1]] = true
				if id%2 != 1 {
					t.Errorf("task %d (a server) printed a worker's line: %s", id, m[0])
				}
			}
			if strings.Contains(o, "unauthenticated") || strings.Contains(o, "neither GOBPS_SECRET") {
				t.Errorf("task %d says the job is unauthenticated although GOBPS_SECRET_FILE is set:\n%s", id, o)
			}
		}
		if len(ranks) != 2 {
			t.Errorf("exact sums from ranks %v, want 0 and 1", ranks)
		}
		for id, want := range []string{
			"task 0, node 0 (localhost), local id 0: server 0, and the coordinator",
			"task 1, node 0 (localhost), local id 1: worker DMLC_WORKER_ID=0 BYTEPS_LOCAL_RANK=0",
			"task 2, node 1 (localhost), local id 0: server 1",
			"task 3, node 1 (localhost), local id 1: worker DMLC_WORKER_ID=1 BYTEPS_LOCAL_RANK=0",
		} {
			if !strings.Contains(outs[id], want) {
				t.Errorf("task %d does not say %q:\n%s", id, want, outs[id])
			}
		}
		if !strings.Contains(outs[0], "2 nodes × 2 tasks: coordinator at localhost:") {
			t.Errorf("task 0 does not describe the job:\n%s", outs[0])
		}
	})

	t.Run("one node", func(t *testing.T) {
		// 1 node × 3 tasks, no secret: the first task runs the
		// coordinator, the only server and worker 0/0 as its child; the
		// three workers sum locally first. Only the first task warns.
		outs := runFakeSlurm(t, bin, 1, 3, nil, testjob...)
		ranks := map[string]bool{}
		warned := 0
		for id, o := range outs {
			for _, m := range exact.FindAllStringSubmatch(o, -1) {
				ranks[m[1]] = true
			}
			if n := strings.Count(o, "bpsrun: slurm: WARNING: neither GOBPS_SECRET nor GOBPS_SECRET_FILE is set"); n > 0 {
				warned += n
				if id != 0 {
					t.Errorf("task %d warns; only the coordinator's task should", id)
				}
			}
		}
		if len(ranks) != 3 {
			t.Errorf("exact sums from ranks %v, want 0, 1 and 2", ranks)
		}
		if warned != 1 {
			t.Errorf("the job's lack of a secret is told %d times, want once:\n%s", warned, outs[0])
		}
		if !strings.Contains(outs[0], "GOBPS_SECRET_FILE=") {
			t.Errorf("the warning does not say how to set a secret file:\n%s", outs[0])
		}
	})
	t.Run("a worker fails", func(t *testing.T) {
		// 2 nodes × 2 tasks; worker 1 stops after 5 rounds (exit 1).
		// Without srun to kill the rest, the job still ends: worker 0's
		// push_pull fails, and the coordinator's task exits non-zero
		// naming the failure.
		start := time.Now()
		outs, errs := fakeSlurm(t, bin, 2, 2, nil, "--", "/bin/sh", "-c",
			`if [ "$DMLC_WORKER_ID" = 1 ]; then n=5; else n=1000000; fi; exec "$0" -mode hold -rounds $n -timeout 60s`,
			filepath.Join(bin, "testjob"))
		t.Logf("the job ended in %v", time.Since(start).Round(time.Millisecond))
		if errs[3] == nil || !strings.Contains(outs[3], "no failure within 5 rounds") {
			t.Errorf("task 3 (worker 1): %v\n%s", errs[3], outs[3])
		}
		if errs[1] == nil || !strings.Contains(outs[1], "pushpull failed") {
			t.Errorf("task 1 (worker 0) did not fail with its push_pull: %v\n%s", errs[1], outs[1])
		}
		if errs[0] == nil || !strings.Contains(outs[0], "bpsrun: slurm: job failed: ") {
			t.Errorf("task 0 (the coordinator) did not fail saying why: %v\n%s", errs[0], outs[0])
		}
		if t.Failed() {
			for id, o := range outs {
				t.Logf("task %d (%v):\n%s", id, errs[id], o)
			}
		}
	})
}

const sbatchExample = "../../scripts/slurm/job.sbatch"

// TestSbatchExample checks scripts/slurm/job.sbatch: valid bash, the
// documented shape (2 nodes × 8 tasks, one server per node), and a secret
// that goes by file, never on a command line.
func TestSbatchExample(t *testing.T) {
	const script = sbatchExample
	b, err := os.ReadFile(script)
	if err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("bash", "-n", script).CombinedOutput(); err != nil {
		t.Fatalf("bash -n %s: %v\n%s", script, err, out)
	}
	text := string(b)
	for _, want := range []string{"#SBATCH --nodes=2\n", "#SBATCH --ntasks-per-node=8\n", "--servers-per-node 1 -- \"$@\"",
		"export GOBPS_SECRET_FILE=", "umask 077", "--kill-on-bad-exit=1", "srun "} {
		if !strings.Contains(text, want) {
			t.Errorf("%s does not contain %q", script, want)
		}
	}
	if strings.Contains(text, "GOBPS_SECRET=") {
		t.Errorf("%s sets GOBPS_SECRET: the secret goes in a file", script)
	}
}

// TestSbatchExampleRealSlurm submits scripts/slurm/job.sbatch to a real
// Slurm cluster, on one node of 4 tasks (1 server, 3 workers), and checks
// the sums; only with GOBPS_TEST_SLURM=1 and a cluster up
// (scripts/slurm/onenode.sh brings up one on this machine), never in CI.
func TestSbatchExampleRealSlurm(t *testing.T) {
	const script = sbatchExample
	if os.Getenv("GOBPS_TEST_SLURM") != "1" {
		t.Skip("set GOBPS_TEST_SLURM=1 (after scripts/slurm/onenode.sh) to submit it to a real Slurm cluster")
	}
	if out, err := exec.Command("sinfo", "-h", "-o", "%T").CombinedOutput(); err != nil {
		t.Fatalf("GOBPS_TEST_SLURM=1 but sinfo fails: %v\n%s", err, out)
	}
	bin := slurmBin(t)
	dir := t.TempDir()
	outFile := filepath.Join(dir, "job.out")
	cmd := exec.Command("sbatch", "--wait", "-N1", "--ntasks-per-node=4", "--overcommit", "--cpus-per-task=1", "--time=2",
		"-o", outFile, script, filepath.Join(bin, "testjob"), "-tensors", "20", "-rounds", "3", "-max", "262144", "-timeout", "60s")
	cmd.Env = append(cleanEnv(), "BPSRUN="+filepath.Join(bin, "bpsrun"), "GOBPS_SECRET_DIR="+filepath.Join(dir, "secrets"))
	out, err := cmd.CombinedOutput()
	job, _ := os.ReadFile(outFile)
	if err != nil {
		t.Fatalf("sbatch: %v\n%s\n%s", err, out, job)
	}
	if n := len(regexp.MustCompile(`(?m)^[1-3]: rank \d: all 3 rounds exact`).FindAll(job, -1)); n != 3 {
		t.Errorf("%d workers (tasks 1-3) report exact sums, want 3:\n%s", n, job)
	}
	if strings.Contains(string(job), "unauthenticated") {
		t.Errorf("the job was unauthenticated:\n%s", job)
	}
	if left, _ := filepath.Glob(filepath.Join(dir, "secrets", "*")); len(left) > 0 {
		t.Errorf("the job's secret file was left behind: %v", left)
	}
}
