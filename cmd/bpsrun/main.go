// Command bpsrun launches a gobps job.
//
// Local mode starts the coordinator, the servers and N copies of a training
// command on this machine, on loopback:
//
//	bpsrun --local -np 4 --servers 2 -- python3 train.py
//
// Environment mode is BytePS's bpslaunch: with DMLC_ROLE set, bpsrun runs
// that role (scheduler or server) itself, or, for a worker, checks the
// environment and then runs the command in its place, so that a cluster
// manager or an existing launch script can start each process.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/gobps/gobps/cmd/internal/roles"
	"github.com/gobps/gobps/config"
	"github.com/gobps/gobps/internal/logging"
)

const usage = `bpsrun: launch a gobps job.

Usage:
  bpsrun --local [-np N] [--servers K] [--local-size L] [flags] -- CMD [ARGS...]
      Start a coordinator, K summation servers and N copies of CMD on this
      machine. By default the N workers form one machine (BYTEPS_LOCAL_SIZE
      N); --local-size L splits them into N/L emulated machines of L
      workers each (DMLC_NUM_WORKER N/L), as a multi-machine job would be. Each output line is prefixed with its role and rank. When a
      process fails, the rest get --grace to exit on their own and are then
      stopped; bpsrun exits with the status of the failure that ended the
      job (the first process killed by a signal bpsrun did not send, such
      as a crash or an outside kill, else the first non-zero exit) and
      names it. Ctrl-C stops everything. The job gets a fresh random secret
      (GOBPS_SECRET, given to its processes only) unless GOBPS_SECRET or
      GOBPS_SECRET_FILE is set, or --insecure.

  bpsrun -H host1:4,host2:4 [--server-hosts host3,host4] [--servers-per-host K] [flags] -- CMD [ARGS...]
  bpsrun --hostfile FILE [...] -- CMD [ARGS...]
      Multi-host mode: start the job on those hosts over ssh (the system's
      ssh, with --ssh-port, --ssh-identity, --ssh-option), as horovodrun
      does: N workers (copies of CMD) on each host with N slots (every host
      the same N), K servers on each server host (default: on the worker
      hosts), the coordinator on the first worker host. FILE has one "host
      slots=N" a line. Every host needs bpsrun at the same path
      (--remote-bpsrun) and CMD; each process runs in this directory when
      it exists there. The job's variables (DMLC_*, BYTEPS_*, GOBPS_*,
      NCCL_*, OMP_*, MKL_*, CUDA_*, PYTHON*, and -x NAME) and its secret go
      to each process on ssh's standard input, never on a command line.
      Output lines are prefixed with host, role and rank; the first failure
      or Ctrl-C stops everything everywhere, as in --local mode.

  DMLC_ROLE=scheduler|server bpsrun
  DMLC_ROLE=worker bpsrun [--byteps-compat] CMD [ARGS...]
      Environment mode, as BytePS's bpslaunch: run the role the environment
      names. The environment is checked first; a missing or malformed
      variable is an error naming it (see docs/env.md).

  srun [SRUN FLAGS] bpsrun [--servers-per-node K] [flags] -- CMD [ARGS...]
      Slurm mode (DMLC_ROLE unset, SLURM_PROCID set): one srun line starts
      the whole job. Every node needs the same number of tasks T. On each
      node the tasks with local id (SLURM_LOCALID) below K are servers and
      the other T-K are workers (DMLC_WORKER_ID = node index, BYTEPS_LOCAL_RANK
      = local id - K). K defaults to 1 on several nodes and 0 on one; with 0,
      the job's only server runs inside the first task. The first node's task
      with local id 0 also runs the coordinator at the first host of
      SLURM_NODELIST (DMLC_PS_ROOT_URI overrides), port --port, else
      DMLC_PS_ROOT_PORT, else 20000 + SLURM_JOB_ID mod 10000. Each task then
      runs its role as environment mode does. GOBPS_SECRET_FILE (a file on a
      shared filesystem) passes through srun; without it the job is
      unauthenticated and says so. See docs/launch.md.

  --byteps-compat runs an unedited BytePS script: it puts the directory of
  gobps's byteps shim (python/compat, in which "import byteps.torch" gives
  gobps.torch) first on the workers' PYTHONPATH. The shim is looked for as
  compat/ next to each PYTHONPATH entry that holds it (PYTHONPATH=python
  finds python/compat), then as ../python/compat from the bpsrun binary.

Flags:
`

func main() {
	os.Exit(run(os.Args[1:], os.Environ(), os.Stdout, os.Stderr))
}

type flags struct {
	local    bool
	np       int
	servers  int
	localSz  int
	port     int
	grace    time.Duration
	verbose  bool
	compat   bool
	insecure bool
	progress bool
	help     bool
	// serversPerNode is --servers-per-node (Slurm mode); -1 when not given.
	serversPerNode int
	commands       []string
	npSet          bool // -np was given

	// Multi-host mode (-H or --hostfile; see hosts.go).
	hosts, hostfile, serverHosts string
	serversPerHost               int
	sshPort                      int
	sshIdentity                  string
	sshOptions, exports          listFlag
	remoteBpsrun                 string
	agent                        bool // --remote-agent: the remote end
}

// listFlag is a flag that may be given several times.
type listFlag []string

func (l *listFlag) String() string     { return strings.Join(*l, ",") }
func (l *listFlag) Set(v string) error { *l = append(*l, v); return nil }

func parseFlags(args []string, stderr io.Writer) (*flags, error) {
	f := &flags{}
	fs := flag.NewFlagSet("bpsrun", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.BoolVar(&f.local, "local", false, "start the whole job on this machine, on loopback")
	fs.IntVar(&f.np, "np", 1, "number of worker processes (copies of CMD) in --local mode")
	fs.IntVar(&f.servers, "servers", 1, "number of summation servers in --local mode")
	fs.IntVar(&f.localSz, "local-size", 0, "workers per emulated machine in --local mode; must divide -np (0: all -np workers on one machine)")
	fs.IntVar(&f.port, "port", 0, "coordinator port (--local: 0 picks a free one; Slurm mode: 0 takes DMLC_PS_ROOT_PORT, else 20000 + SLURM_JOB_ID mod 10000)")
	fs.IntVar(&f.serversPerNode, "servers-per-node", -1, "Slurm mode: tasks of each node that are servers, those with the lowest local ids (-1: 1 on several nodes, 0 on one)")
	fs.DurationVar(&f.grace, "grace", 3*time.Second, "after the first failure, how long the other processes get to exit on their own before they are stopped")
	fs.BoolVar(&f.verbose, "v", false, "log what bpsrun and the roles it runs do")
	fs.BoolVar(&f.compat, "byteps-compat", false, "put gobps's byteps shim (python/compat) first on the workers' PYTHONPATH, so that \"import byteps.torch\" gives gobps.torch")
	fs.BoolVar(&f.insecure, "insecure", false, "--local: no secret; any process that can reach the job's ports can take part (see docs/security.md)")
	fs.StringVar(&f.hosts, "H", "", "multi-host mode: worker hosts and their slots (workers), host1:4,host2:4; processes start over ssh")
	fs.StringVar(&f.hostfile, "hostfile", "", "multi-host mode: a file of worker hosts, one \"host slots=N\" a line (as Horovod and Open MPI read it)")
	fs.StringVar(&f.serverHosts, "server-hosts", "", "-H: hosts of the summation servers, host3,host4 (default: the worker hosts)")
	fs.IntVar(&f.serversPerHost, "servers-per-host", 1, "-H: summation servers on each server host")
	fs.IntVar(&f.sshPort, "ssh-port", 0, "-H: ssh port of every host (0: ssh's default)")
	fs.StringVar(&f.sshIdentity, "ssh-identity", "", "-H: ssh private key file (ssh -i)")
	fs.Var(&f.sshOptions, "ssh-option", "-H: an ssh option, as ssh -o takes it (may be repeated)")
	fs.Var(&f.exports, "x", "-H: pass NAME (its value here) or NAME=VALUE to every process, beyond the DMLC_, BYTEPS_, GOBPS_, NCCL_, OMP_, MKL_, CUDA_ and PYTHON* variables passed anyway (may be repeated)")
	fs.StringVar(&f.remoteBpsrun, "remote-bpsrun", "", "-H: path of bpsrun on the hosts (default: this bpsrun's path)")
	fs.BoolVar(&f.agent, "remote-agent", false, "internal: the remote end of bpsrun -H, which tells it on standard input what to run")
	fs.BoolVar(&f.progress, "progress", false, "--local, -H: the coordinator prints a progress line every 5 s (push_pulls per second, GB/s per worker, the slowest worker); GOBPS_PROGRESS sets another interval")
	fs.BoolVar(&f.help, "help", false, "print this help")
	fs.Usage = func() {
		fmt.Fprint(stderr, usage)
		fs.PrintDefaults()
		fmt.Fprint(stderr, "\nEnvironment variables: see docs/env.md; every one is passed through to the processes.\n")
	}
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	f.commands = fs.Args()
	fs.Visit(func(fl *flag.Flag) {
		if fl.Name == "np" {
			f.npSet = true
		}
	})
	if f.help {
		fs.Usage()
	}
	return f, nil
}

func run(args, env []string, stdout, stderr io.Writer) int {
	f, err := parseFlags(args, stderr)
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if f.help {
		return 0
	}
	lookup := func(name string) (string, bool) {
		for i := len(env) - 1; i >= 0; i-- {
			if k, v, ok := strings.Cut(env[i], "="); ok && k == name {
				return v, true
			}
		}
		return "", false
	}
	if f.agent {
		return runAgent(os.Stdin, stderr)
	}
	_, hasRole := lookup("DMLC_ROLE")
	if multi := f.hosts != "" || f.hostfile != ""; multi || f.serverHosts != "" {
		switch {
		case !multi:
			fmt.Fprintln(stderr, "bpsrun: --server-hosts is for multi-host mode: give -H or --hostfile too")
			return 2
		case f.local:
			fmt.Fprintln(stderr, "bpsrun: -H/--hostfile and --local are two ways to launch: give one")
			return 2
		case hasRole:
			fmt.Fprintln(stderr, "bpsrun: -H starts every role itself; unset DMLC_ROLE")
			return 2
		}
		return runHosts(f, env, stdout, stderr)
	}
	slurm := !f.local && !hasRole && inSlurmTask(lookup)
	if f.serversPerNode != -1 && !slurm {
		fmt.Fprintln(stderr, "bpsrun: --servers-per-node is for Slurm mode (srun bpsrun --servers-per-node K -- CMD, without DMLC_ROLE)")
		return 2
	}
	if slurm {
		return runSlurm(f, env, stdout, stderr)
	}
	if f.local {
		if _, ok := lookup("DMLC_ROLE"); ok {
			fmt.Fprintln(stderr, "bpsrun: --local starts every role itself; unset DMLC_ROLE")
			return 2
		}
		return runLocal(f, env, stdout, stderr)
	}
	if _, ok := lookup("DMLC_ROLE"); !ok {
		fmt.Fprintln(stderr, "bpsrun: give --local, or set DMLC_ROLE (and the rest of the environment) for environment mode, or start it with srun inside a Slurm allocation; see bpsrun --help")
		return 2
	}
	cfg, err := config.Parse(lookup)
	if err != nil {
		fmt.Fprintf(stderr, "bpsrun: %v\n", err)
		return 1
	}
	return runRole(cfg, f, env, stderr)
}

// newLogger is the log of a role bpsrun runs in this process: zerolog,
// console lines or JSON (GOBPS_LOG_FORMAT), at BYTEPS_LOG_LEVEL's level or
// DEBUG with -v, naming role and rank (the configured one, until the job
// gives it: see roles.WithLogger).
func newLogger(w io.Writer, cfg *config.Config, verbose bool) *logging.Logger {
	return logging.New(w, logOptions(cfg, verbose, string(cfg.Role)))
}

// logOptions are the log options of a process configured by cfg, named
// role, with the rank it was configured with (0 for the scheduler, of
// which there is one; -1 when the coordinator assigns it).
func logOptions(cfg *config.Config, verbose bool, role string) logging.Options {
	rank := -1
	switch cfg.Role {
	case config.Server:
		rank = cfg.ServerID
	case config.Worker:
		rank = cfg.WorkerID
	case config.Scheduler:
		rank = 0
	}
	return logging.Options{Format: cfg.LogFormat, Level: cfg.LogLevel, Verbose: verbose, Role: role, Rank: rank}
}

// runRole is environment mode.
func runRole(cfg *config.Config, f *flags, env []string, stderr io.Writer) int {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	lg := newLogger(stderr, cfg, f.verbose)
	logf := roles.Logf(lg.Logf)
	ctx = roles.WithLogger(ctx, lg)
	if fd := envValue(env, listenFDVar); fd != "" && cfg.Role == config.Scheduler {
		ln, err := inheritedListener(fd)
		if err != nil {
			fmt.Fprintf(stderr, "bpsrun: scheduler: %v\n", err)
			return 1
		}
		ctx = roles.WithListener(ctx, ln)
	}
	var err error
	switch cfg.Role {
	case config.Scheduler:
		err = roles.RunScheduler(ctx, cfg, logf)
	case config.Server:
		err = roles.RunServer(ctx, cfg, logf)
	case config.Worker:
		if len(f.commands) == 0 {
			fmt.Fprintln(stderr, "bpsrun: DMLC_ROLE=worker needs the command to run: bpsrun CMD [ARGS...]")
			return 2
		}
		if f.compat {
			if env, err = withBytepsCompat(env); err != nil {
				fmt.Fprintf(stderr, "bpsrun: %v\n", err)
				return 2
			}
		}
		err = execWorker(f.commands, env)
	}
	if err != nil {
		fmt.Fprintf(stderr, "bpsrun: %s: %v\n", cfg.Role, err)
		return 1
	}
	return 0
}

// listenFDVar names the descriptor of the coordinator's listening socket
// that bpsrun --local binds and hands to its scheduler (see prepareJob):
// bpsrun's own, between it and its child, not part of the job's
// environment contract.
const listenFDVar = "BPSRUN_LISTEN_FD"

// inheritedListener is the listening socket at descriptor fd.
func inheritedListener(fd string) (net.Listener, error) {
	n, err := strconv.Atoi(fd)
	if err != nil || n < 3 {
		return nil, fmt.Errorf("%s=%q: want a descriptor number of at least 3", listenFDVar, fd)
	}
	f := os.NewFile(uintptr(n), "coordinator listener")
	defer f.Close() // FileListener dups it
	ln, err := net.FileListener(f)
	if err != nil {
		return nil, fmt.Errorf("%s=%s: not a listening socket: %v", listenFDVar, fd, err)
	}
	return ln, nil
}
