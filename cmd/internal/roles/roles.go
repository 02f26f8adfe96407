// Package roles runs the coordinator and the summation server as the
// processes bpsrun starts, wiring config, cluster, transport and
// summation together. It is shared by bpsrun and bpsbench.
package roles

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/gobps/gobps/cluster"
	"github.com/gobps/gobps/config"
	"github.com/gobps/gobps/internal/auth"
	"github.com/gobps/gobps/metrics"
	"github.com/gobps/gobps/proto"
	"github.com/gobps/gobps/rdma"
	// rdma.Open chooses among the transports registered by these two.
	_ "github.com/gobps/gobps/rdma/tcp"
	_ "github.com/gobps/gobps/rdma/verbs"
	"github.com/gobps/gobps/summation"
	"github.com/gobps/gobps/summation/kernel"
)

// Logf is how roles report; bpsrun passes a logger.
type Logf func(format string, args ...any)

type loggerKey struct{}

// Structured is what a role's structured logger (internal/logging) offers
// beyond its Logf.
type Structured interface {
	SetRank(rank int)                               // the rank the job gave, once joined
	KeyLogf(key string, format string, args ...any) // a line about one key, the key as a field
}

// WithLogger returns ctx carrying l: RunServer names its rank on l once it
// has joined, and logs the lines about one key through l.KeyLogf.
func WithLogger(ctx context.Context, l Structured) context.Context {
	return context.WithValue(ctx, loggerKey{}, l)
}

func structured(ctx context.Context) Structured {
	l, _ := ctx.Value(loggerKey{}).(Structured)
	return l
}

type listenerKey struct{}

// WithListener returns ctx carrying ln, on which RunScheduler's coordinator
// accepts instead of listening itself (bpsrun --local binds the port and
// hands the socket down, so that nothing can take the port meanwhile).
func WithListener(ctx context.Context, ln net.Listener) context.Context {
	return context.WithValue(ctx, listenerKey{}, ln)
}

func rankHook(ctx context.Context, rank int) {
	if l := structured(ctx); l != nil {
		l.SetRank(rank)
	}
}

// RunScheduler runs the coordinator until every node has left (nil), a node
// died (an error naming it), or ctx ends.
func RunScheduler(ctx context.Context, cfg *config.Config, logf Logf) error {
	au, err := jobAuth(cfg, logf)
	if err != nil {
		return err
	}
	addr, err := listenAddr(cfg.RootURI, cfg.RootPort)
	if err != nil {
		return err
	}
	ep, err := metrics.Listen(cfg.MetricsAddr)
	if err != nil {
		return err
	}
	defer ep.Close()
	ln, _ := ctx.Value(listenerKey{}).(net.Listener)
	c, err := cluster.NewCoordinator(cluster.CoordinatorConfig{
		Addr:             addr,
		Listener:         ln,
		Auth:             au,
		NumWorkers:       cfg.NumWorkerProcs(),
		NumServers:       cfg.NumServer,
		HeartbeatTimeout: cfg.HeartbeatTimeout,
		Progress:         cfg.Progress,
		Logf:             logf,
	})
	if err != nil {
		return err
	}
	defer c.Close()
	if err := serveMetrics(ep, config.Scheduler, 0, logf, metrics.NewCoordinatorCollector(c)); err != nil {
		return err
	}
	logf("coordinator listening on %s for %d workers and %d servers", c.Addr(), cfg.NumWorkerProcs(), cfg.NumServer)
	return c.Run(ctx)
}

// listenAddr is where the coordinator listens: the address DMLC_PS_ROOT_URI
// names or resolves to, never every interface (a name that resolves to no
// address of this machine cannot be listened on, and says so).
func listenAddr(host string, port int) (string, error) {
	if ip := net.ParseIP(host); ip != nil {
		return net.JoinHostPort(host, strconv.Itoa(port)), nil
	}
	ips, err := net.LookupIP(host)
	if err != nil {
		return "", fmt.Errorf("resolve DMLC_PS_ROOT_URI %q: %w", host, err)
	}
	local := map[string]bool{}
	if addrs, err := net.InterfaceAddrs(); err == nil {
		for _, a := range addrs {
			if n, ok := a.(*net.IPNet); ok {
				local[n.IP.String()] = true
			}
		}
	}
	for _, ip := range ips {
		if local[ip.String()] {
			return net.JoinHostPort(ip.String(), strconv.Itoa(port)), nil
		}
	}
	return "", fmt.Errorf("DMLC_PS_ROOT_URI %q resolves to %v, none of them an address of this machine: "+
		"start the scheduler where it points, or set it to this machine's address", host, ips)
}

// jobAuth is the job's authentication from cfg; without one, it says once
// that the job is unauthenticated.
func jobAuth(cfg *config.Config, logf Logf) (*auth.Config, error) {
	au, err := cfg.Auth()
	if err != nil {
		return nil, err
	}
	if au == nil {
		logf("WARNING: %s", auth.Unauthenticated)
	}
	return au, nil
}

// AdvertiseHost picks the address this node gives to its peers:
// DMLC_NODE_HOST if set, else the local address of the route to the
// coordinator (a UDP "connect" sends nothing).
func AdvertiseHost(cfg *config.Config) (string, error) {
	if cfg.NodeHost != "" {
		return cfg.NodeHost, nil
	}
	c, err := net.Dial("udp", cfg.RootAddr())
	if err != nil {
		return "", fmt.Errorf("find a route to the coordinator %s (set DMLC_NODE_HOST): %w", cfg.RootAddr(), err)
	}
	defer c.Close()
	return c.LocalAddr().(*net.UDPAddr).IP.String(), nil
}

// RunServer runs a summation server until the coordinator says the job is
// over (nil), the coordinator is lost (an error), or ctx ends.
func RunServer(ctx context.Context, cfg *config.Config, logf Logf) error {
	budget, why, err := MemoryBudget(cfg.ServerMemory, "/")
	if err != nil {
		return err
	}
	logf("memory budget: %d bytes of declared keys (%s)", budget, why)
	au, err := jobAuth(cfg, logf)
	if err != nil {
		return err
	}
	ep, err := metrics.Listen(cfg.MetricsAddr)
	if err != nil {
		return err
	}
	defer ep.Close()
	tr, why, err := rdma.Open(rdma.Options{Checksum: cfg.Checksum, Mode: rdma.Mode(cfg.RDMAMode()), Device: cfg.RDMADevice, GIDIndex: cfg.RDMAGIDIndex, SendDepth: cfg.RDMASendDepth, RecvDepth: cfg.RDMARecvDepth, MRCacheBytes: cfg.RDMAMRCacheBytes,
		HelloTimeout: cfg.HelloTimeout, Auth: au, Logf: logf})
	if err != nil {
		return err
	}
	defer tr.Close()
	logf("transport %s: %s", tr.Caps().Name, why)
	var pushed *metrics.PushBytes
	if ep != nil {
		tr, pushed = metrics.CountPushes(tr)
	}
	host, err := AdvertiseHost(cfg)
	if err != nil {
		return err
	}
	// The membership, once joined: the stall watch reports through it.
	var member atomic.Pointer[cluster.Member]
	srv, err := summation.New(summation.Config{
		Workers:        cfg.NumWorkerProcs(),
		Pushers:        cfg.PushesPerRound(),
		Engines:        cfg.EngineThreads,
		Transport:      tr,
		Addr:           net.JoinHostPort(host, strconv.Itoa(cfg.ServerPort)),
		MemoryBudget:   budget,
		DeclareWarn:    cfg.DeclareWarn,
		DeclareTimeout: cfg.DeclareTimeout,
		StallWarning:   cfg.StallWarning,
		StallShutdown:  cfg.StallShutdown,
		OnStall: func(report string) {
			if m := member.Load(); m != nil {
				if err := m.Report(report); err != nil {
					logf("tell the coordinator of the stall: %v", err)
				}
			}
		},
		KeyLogf: keyLogf(ctx, logf),
		Logf:    logf,
	})
	if err != nil {
		return err
	}
	defer srv.Close()
	m, err := cluster.Join(ctx, cfg.RootAddr(), cluster.Registration{
		Role: cluster.RoleServer, WorkerID: cfg.ServerID, LocalSize: 1, Addr: srv.Addr(), PID: os.Getpid(),
	}, cluster.Options{HeartbeatInterval: cfg.HeartbeatInterval, Auth: au, Logf: logf})
	if err != nil {
		return fmt.Errorf("join %s: %w", cfg.RootAddr(), err)
	}
	defer m.Leave()
	member.Store(m)
	rankHook(ctx, m.Self().Rank)
	srv.SetID(m.Self().ID)
	if err := serveMetrics(ep, config.Server, m.Self().Rank, logf, metrics.NewServerCollector(srv, pushed)); err != nil {
		return err
	}
	stop := make(chan struct{})
	defer close(stop)
	go departures(m, srv, stop)
	logf("%s serving %s with %d engines, %s kernels", m.Self(), srv.Addr(), cfg.EngineThreads, kernel.Impl())
	select {
	case <-m.ShutdownRequested():
		st := srv.Stats()
		logf("job over: %d keys, %d pushes, %d pulls, %d refused", st.Keys, st.Pushes, st.Pulls, st.Refused)
		return m.Leave()
	case <-m.Done():
		if err := m.Err(); err != nil {
			return err
		}
		return errors.New("coordinator connection ended")
	case <-ctx.Done():
		return ctx.Err()
	}
}

// serveMetrics serves a role's metrics on ep (GOBPS_METRICS_ADDR; nil:
// off) and says where.
func serveMetrics(ep *metrics.Endpoint, role config.Role, rank int, logf Logf, c prometheus.Collector) error {
	if ep == nil {
		return nil
	}
	if err := ep.Serve(role, rank, c); err != nil {
		return err
	}
	logf("metrics at %s", ep.URL())
	return nil
}

// departures tells srv of every worker that leaves the job or dies, so
// that the rounds that need its pushes fail naming it instead of waiting
// for ever, until stop is closed or the membership ends.
func departures(m *cluster.Member, srv *summation.Server, stop <-chan struct{}) {
	for {
		select {
		case ev := <-m.Events():
			if ev.Node.Role == cluster.RoleWorker {
				srv.Depart(ev.Node.Rank, ev.String())
			}
		case <-m.Done():
			return
		case <-stop:
			return
		}
	}
}

// FreePort asks the kernel for a free loopback TCP port. Another process
// may take it before the caller binds it; callers that need certainty
// bind and report their own address instead.
func FreePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// MemoryBudget resolves GOBPS_SERVER_MEMORY_BYTES (configured; 0 means a
// share of the machine) into the summation server's budget of declared
// bytes, and says where it came from. 0 becomes a quarter of the memory
// the process may use (each declared byte costs the server about two, the
// sums of the two open rounds, plus what pushes in flight take): the cgroup's limit (v2 memory.max, else v1
// memory.limit_in_bytes) where one is set below the machine's memory,
// else MemTotal from /proc/meminfo. root is the file system root to read
// those files under ("/"; tests give a directory of their own).
func MemoryBudget(configured int, root string) (int64, string, error) {
	if configured > 0 {
		return int64(configured), "GOBPS_SERVER_MEMORY_BYTES", nil
	}
	limit, source, err := processMemory(root)
	if err != nil {
		return 0, "", fmt.Errorf("server memory budget: %w (set GOBPS_SERVER_MEMORY_BYTES)", err)
	}
	return limit / 4, fmt.Sprintf("a quarter of %s, %d bytes; GOBPS_SERVER_MEMORY_BYTES sets it", source, limit), nil
}

// processMemory returns the memory the process may use, and names its
// source.
func processMemory(root string) (int64, string, error) {
	total, err := memTotal(filepath.Join(root, "proc/meminfo"))
	if err != nil {
		return 0, "", err
	}
	limit, source := total, "MemTotal in /proc/meminfo"
	cg, err := os.ReadFile(filepath.Join(root, "proc/self/cgroup"))
	if err != nil {
		return limit, source, nil // no cgroups: the machine's memory
	}
	for _, line := range strings.Split(strings.TrimSpace(string(cg)), "\n") {
		// hierarchy-ID:controllers:path
		parts := strings.SplitN(line, ":", 3)
		if len(parts) != 3 {
			continue
		}
		var files []string
		switch {
		case parts[0] == "0" && parts[1] == "":
			for _, mount := range []string{"sys/fs/cgroup", "sys/fs/cgroup/unified"} {
				files = append(files, filepath.Join(root, mount, parts[2], "memory.max"), filepath.Join(root, mount, "memory.max"))
			}
		case slices.Contains(strings.Split(parts[1], ","), "memory"):
			mount := filepath.Join(root, "sys/fs/cgroup/memory")
			files = append(files, filepath.Join(mount, parts[2], "memory.limit_in_bytes"), filepath.Join(mount, "memory.limit_in_bytes"))
		}
		for _, f := range files {
			b, err := os.ReadFile(f)
			if err != nil {
				continue
			}
			v := strings.TrimSpace(string(b))
			n, err := strconv.ParseInt(v, 10, 64)
			if err != nil || n <= 0 { // "max": no limit
				continue
			}
			if n < limit {
				limit, source = n, "the cgroup limit in "+strings.TrimPrefix(f, filepath.Clean(root))
			}
			break // the first that exists is this cgroup's
		}
	}
	return limit, source, nil
}

// memTotal reads MemTotal from a meminfo file, in bytes.
func memTotal(path string) (int64, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		rest, ok := strings.CutPrefix(line, "MemTotal:")
		if !ok {
			continue
		}
		f := strings.Fields(rest)
		if len(f) != 2 || f[1] != "kB" {
			break
		}
		kb, err := strconv.ParseInt(f[0], 10, 64)
		if err != nil || kb <= 0 {
			break
		}
		return kb << 10, nil
	}
	return 0, fmt.Errorf("no MemTotal in %s", path)
}

// keyLogf is the server's KeyLogf: the structured logger's, or logf.
func keyLogf(ctx context.Context, logf Logf) func(proto.Key, string, ...any) {
	if l := structured(ctx); l != nil {
		return func(k proto.Key, format string, args ...any) { l.KeyLogf(k.String(), format, args...) }
	}
	return func(_ proto.Key, format string, args ...any) { logf(format, args...) }
}
