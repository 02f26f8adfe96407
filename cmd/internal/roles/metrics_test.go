package roles

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gobps/gobps/config"
	"github.com/gobps/gobps/core"
	"github.com/gobps/gobps/internal/leakcheck"
	"github.com/gobps/gobps/metrics"
	"github.com/gobps/gobps/metrics/metricstest"
	"github.com/gobps/gobps/proto"
)

// The job of the metrics tests: two workers, two servers, and two tensors
// that split into partitions of both servers, pushed for rounds rounds.
const (
	mWorkers   = 2
	mServers   = 2
	mRounds    = 3
	mPartBytes = 64 << 10
)

var mTensors = []struct {
	name  string
	dtype proto.DType
	count int
}{
	{"weights", proto.Float32, 300_000}, // 1,200,000 bytes: 19 partitions, the last one short
	{"bias", proto.Float64, 1000},       // 8,000 bytes: 1 partition
}

// metricsJob is a running job of the roles in this process.
type metricsJob struct {
	engines []*core.Engine
	// urls of the endpoints, by role and rank ("" with metrics off).
	coordinator string
	servers     []string
	workers     []string
	workerEPs   []*metrics.Endpoint
	roles       chan error // the coordinator's and servers' results
	cancel      context.CancelFunc
	stopped     bool
}

// startMetricsJob starts the coordinator and servers (RunScheduler,
// RunServer) and the workers (core.Init, metrics.ServeWorker, as the C
// library wires them), each with an endpoint of its own when on.
func startMetricsJob(t testing.TB, on bool) *metricsJob {
	t.Helper()
	port, err := FreePort()
	if err != nil {
		t.Fatal(err)
	}
	base := map[string]string{
		"DMLC_NUM_WORKER": strconv.Itoa(mWorkers), "DMLC_NUM_SERVER": strconv.Itoa(mServers),
		"DMLC_PS_ROOT_URI": "127.0.0.1", "DMLC_PS_ROOT_PORT": strconv.Itoa(port), "DMLC_NODE_HOST": "127.0.0.1",
		"BYTEPS_PARTITION_BYTES": strconv.Itoa(mPartBytes), "BYTEPS_ENABLE_RDMA": "0",
		"GOBPS_SERVER_MEMORY_BYTES": strconv.Itoa(64 << 20), "GOBPS_HEARTBEAT_INTERVAL": "100ms",
	}
	j := &metricsJob{roles: make(chan error, 1+mServers)}
	// addr gives a process an endpoint on a free port, when on.
	addr := func(url *string) string {
		if !on {
			return ""
		}
		p, err := FreePort()
		if err != nil {
			t.Fatal(err)
		}
		a := "127.0.0.1:" + strconv.Itoa(p)
		*url = "http://" + a + metrics.Path
		return a
	}
	cfgFor := func(kv ...string) *config.Config {
		m := map[string]string{}
		for k, v := range base {
			m[k] = v
		}
		for i := 0; i+1 < len(kv); i += 2 {
			m[kv[i]] = kv[i+1]
		}
		c, err := config.Parse(func(s string) (string, bool) { v, ok := m[s]; return v, ok })
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	j.cancel = cancel
	quiet := func(string, ...any) {}
	sc := cfgFor("DMLC_ROLE", "scheduler", "GOBPS_METRICS_ADDR", addr(&j.coordinator))
	go func() { j.roles <- RunScheduler(ctx, sc, quiet) }()
	j.servers = make([]string, mServers)
	for i := range mServers {
		c := cfgFor("DMLC_ROLE", "server", "GOBPS_SERVER_ID", strconv.Itoa(i), "GOBPS_METRICS_ADDR", addr(&j.servers[i]))
		go func() { j.roles <- RunServer(ctx, c, quiet) }()
	}
	j.engines = make([]*core.Engine, mWorkers)
	j.workers = make([]string, mWorkers)
	j.workerEPs = make([]*metrics.Endpoint, mWorkers)
	errs := make([]error, mWorkers)
	var wg sync.WaitGroup
	for i := range mWorkers {
		c := cfgFor("DMLC_ROLE", "worker", "DMLC_WORKER_ID", strconv.Itoa(i), "GOBPS_METRICS_ADDR", addr(&j.workers[i]))
		wg.Add(1)
		go func() {
			defer wg.Done()
			ep, err := metrics.Listen(c.MetricsAddr)
			if err != nil {
				errs[i] = err
				return
			}
			e, err := core.Init(ctx, core.Options{Config: c})
			if err != nil {
				ep.Close()
				errs[i] = err
				return
			}
			j.engines[i], j.workerEPs[i] = e, ep
			errs[i] = metrics.ServeWorker(ep, e)
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		j.stop(t)
		t.Fatal(err)
	}
	return j
}

// pushPull runs mRounds rounds of every tensor on every worker: worker w
// gives w+1 everywhere, so every sum is mWorkers(mWorkers+1)/2.
func (j *metricsJob) pushPull(t testing.TB) {
	t.Helper()
	errs := make([]error, len(j.engines))
	var wg sync.WaitGroup
	for w, e := range j.engines {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[w] = func() error {
				for range mRounds {
					for _, tn := range mTensors {
						ten, err := e.Declare(tn.name, tn.dtype, tn.count)
						if err != nil {
							return err
						}
						buf := make([]byte, ten.Bytes())
						fill(buf, tn.dtype, float64(w+1))
						h, err := e.PushPull(ten, buf, core.Sum)
						if err != nil {
							return err
						}
						if err := h.Wait(); err != nil {
							return err
						}
						if err := check(buf, tn.dtype, mWorkers*(mWorkers+1)/2); err != nil {
							return fmt.Errorf("%s: %w", tn.name, err)
						}
					}
				}
				return nil
			}()
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
}

func fill(b []byte, dt proto.DType, v float64) {
	switch dt {
	case proto.Float32:
		for i := 0; i < len(b); i += 4 {
			binary.LittleEndian.PutUint32(b[i:], math.Float32bits(float32(v)))
		}
	case proto.Float64:
		for i := 0; i < len(b); i += 8 {
			binary.LittleEndian.PutUint64(b[i:], math.Float64bits(v))
		}
	}
}

func check(b []byte, dt proto.DType, want float64) error {
	for i := 0; i < len(b); i += dt.Size() {
		var got float64
		if dt == proto.Float32 {
			got = float64(math.Float32frombits(binary.LittleEndian.Uint32(b[i:])))
		} else {
			got = math.Float64frombits(binary.LittleEndian.Uint64(b[i:]))
		}
		if got != want {
			return fmt.Errorf("byte %d: %v, want %v", i, got, want)
		}
	}
	return nil
}

// shutdown shuts worker w down.
func (j *metricsJob) shutdown(t testing.TB, w int) {
	t.Helper()
	if j.engines[w] == nil {
		return
	}
	if err := j.engines[w].Shutdown(); err != nil {
		t.Errorf("worker %d: Shutdown: %v", w, err)
	}
	j.engines[w] = nil
	j.workerEPs[w].Close()
}

// stop shuts every worker down and waits for the roles to end, once.
func (j *metricsJob) stop(t testing.TB) {
	t.Helper()
	if j.stopped {
		return
	}
	j.stopped = true
	for w := range j.engines {
		j.shutdown(t, w)
	}
	for range 1 + mServers {
		select {
		case err := <-j.roles:
			if err != nil {
				t.Errorf("role: %v", err)
			}
		case <-time.After(30 * time.Second):
			t.Error("the roles did not end after every worker left")
			j.cancel()
			return
		}
	}
	j.cancel()
}

// scrape scrapes url and checks that every series carries role and rank
// and that Prometheus's linter is content.
func scrape(t *testing.T, url, role string, rank int) metricstest.Families {
	t.Helper()
	f, err := metricstest.Scrape(url)
	if err != nil {
		t.Fatalf("%s %d: %v", role, rank, err)
	}
	if err := f.CheckLabels("role", role, "rank", strconv.Itoa(rank)); err != nil {
		t.Errorf("%s %d: %v", role, rank, err)
	}
	problems, err := f.Lint()
	if err != nil {
		t.Errorf("%s %d: lint: %v", role, rank, err)
	}
	for _, p := range problems {
		t.Errorf("%s %d: lint: %s", role, rank, p)
	}
	return f
}

// want checks that name, summed over the series with labels, is v.
func want(t *testing.T, f metricstest.Families, who string, v float64, name string, labels ...string) {
	t.Helper()
	got, n := f.Sum(name, labels...)
	if n == 0 {
		t.Errorf("%s: no series %s%v", who, name, labels)
		return
	}
	if got != v {
		t.Errorf("%s: %s%v = %v, want %v", who, name, labels, got, v)
	}
}

// TestMetricsJob runs a job whose every process serves its metrics,
// scrapes them and checks that the counters match the bytes the job
// moved: what each worker pushed and pulled, per server and in all, what
// each server summed, the operations, the latency histograms, and the
// coordinator's view of the nodes, which follows a worker's departure.
// When the job ends, nothing listens any more.
func TestMetricsJob(t *testing.T) {
	leakcheck.Check(t, "gobps/gobps/metrics")
	before, err := metricstest.Listeners()
	if err != nil {
		t.Fatal(err)
	}
	j := startMetricsJob(t, true)
	defer j.stop(t)
	j.pushPull(t)

	var bytesPerRound, partsPerRound int
	for _, tn := range mTensors {
		b := tn.count * tn.dtype.Size()
		bytesPerRound += b
		partsPerRound += (b + mPartBytes - 1) / mPartBytes
	}
	total, parts := float64(mRounds*bytesPerRound), float64(mRounds*partsPerRound)

	// Each worker: every byte pushed once and pulled back once.
	var perServer [mServers]struct{ pushes, bytes, pulls float64 }
	for w, url := range j.workers {
		who := fmt.Sprintf("worker %d", w)
		f := scrape(t, url, "worker", w)
		want(t, f, who, total, "gobps_worker_push_bytes_total")
		want(t, f, who, total, "gobps_worker_pull_bytes_total")
		want(t, f, who, parts, "gobps_worker_pushes_total")
		want(t, f, who, parts, "gobps_worker_pulls_total")
		want(t, f, who, 0, "gobps_worker_pull_requests_total")
		want(t, f, who, 0, "gobps_worker_partitions_failed_total")
		want(t, f, who, float64(mRounds*len(mTensors)), "gobps_worker_operations_completed_total")
		want(t, f, who, 0, "gobps_worker_operations_failed_total")
		want(t, f, who, 0, "gobps_worker_operations_in_flight")
		want(t, f, who, 0, "gobps_worker_queue_depth")
		want(t, f, who, 0, "gobps_worker_credit_in_use_bytes")
		want(t, f, who, 4*mPartBytes, "gobps_worker_credit_bytes")
		want(t, f, who, parts, "gobps_worker_push_pull_seconds") // the histograms' counts
		for s := range mServers {
			srv := strconv.Itoa(s)
			pushes, _ := f.Sum("gobps_worker_pushes_total", "server", srv)
			b, _ := f.Sum("gobps_worker_push_bytes_total", "server", srv)
			pulls, _ := f.Sum("gobps_worker_pulls_total", "server", srv)
			if pushes == 0 {
				t.Errorf("%s pushed nothing to server %d: the test wants partitions on every server", who, s)
			}
			want(t, f, who, pushes, "gobps_worker_push_pull_seconds", "server", srv)
			want(t, f, who, b, "gobps_worker_pull_bytes_total", "server", srv)
			perServer[s].pushes += pushes
			perServer[s].bytes += b
			perServer[s].pulls += pulls
			h := f.Histogram("gobps_worker_push_pull_seconds", "server", srv)
			if h == nil || h.GetSampleSum() <= 0 || len(h.GetBucket()) < len(core.LatencyBounds) {
				t.Errorf("%s: histogram for server %d: %v", who, s, h)
				continue
			}
			prev := uint64(0)
			for _, b := range h.GetBucket() {
				if b.GetCumulativeCount() < prev || b.GetCumulativeCount() > h.GetSampleCount() {
					t.Errorf("%s: histogram for server %d is not cumulative: %v", who, s, h)
				}
				prev = b.GetCumulativeCount()
			}
		}
	}

	// Each server: what the workers pushed to it, exactly.
	var keys, declared float64
	for s, url := range j.servers {
		who := fmt.Sprintf("server %d", s)
		f := scrape(t, url, "server", s)
		want(t, f, who, perServer[s].pushes, "gobps_server_pushes_total")
		want(t, f, who, perServer[s].bytes, "gobps_server_push_bytes_total")
		want(t, f, who, perServer[s].pulls, "gobps_server_pulls_total")
		want(t, f, who, 0, "gobps_server_refused_total")
		want(t, f, who, 0, "gobps_server_bad_connections_total")
		k, _ := f.Sum("gobps_server_keys")
		d, _ := f.Sum("gobps_server_declared_bytes")
		want(t, f, who, d, "gobps_server_engine_declared_bytes")
		if n, _ := f.Sum("gobps_server_declarations_total"); n < mWorkers {
			t.Errorf("%s: %v declarations, want at least one per worker", who, n)
		}
		keys += k
		declared += d
	}
	if keys != float64(partsPerRound) || declared != float64(bytesPerRound) {
		t.Errorf("the servers hold %v keys of %v bytes, want %d of %d", keys, declared, partsPerRound, bytesPerRound)
	}

	// The coordinator: everyone there; then worker 1 leaves.
	f := scrape(t, j.coordinator, "scheduler", 0)
	for _, r := range []string{"worker", "server"} {
		want(t, f, "coordinator", 2, "gobps_coordinator_nodes", "node_role", r)
		want(t, f, "coordinator", 2, "gobps_coordinator_expected_nodes", "node_role", r)
		want(t, f, "coordinator", 0, "gobps_coordinator_deaths_total", "node_role", r)
		want(t, f, "coordinator", 0, "gobps_coordinator_departures_total", "node_role", r)
	}
	if l, err := metricstest.Listeners(); err != nil || l-before != 1+mServers+1+mServers+mWorkers {
		// The coordinator's and each server's own listener, and an
		// endpoint per process.
		t.Errorf("%d listeners more than before the job (%v), want %d", l-before, err, 1+mServers+1+mServers+mWorkers)
	}
	j.shutdown(t, 1)
	deadline := time.Now().Add(10 * time.Second)
	for {
		f = scrape(t, j.coordinator, "scheduler", 0)
		left, _ := f.Sum("gobps_coordinator_departures_total", "node_role", "worker")
		live, _ := f.Sum("gobps_coordinator_nodes", "node_role", "worker")
		if left == 1 && live == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after worker 1 left, the coordinator says %v departures and %v live workers, want 1 and 1", left, live)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if _, err := metricstest.Scrape(j.workers[1]); err == nil {
		t.Error("worker 1's endpoint still answers after its Shutdown")
	}

	j.stop(t)
	for _, url := range append(append([]string{j.coordinator}, j.servers...), j.workers...) {
		if _, err := metricstest.Scrape(url); err == nil {
			t.Errorf("%s still answers after the job ended", url)
		}
	}
	if l, err := metricstest.Listeners(); err != nil || l != before {
		t.Errorf("%d listeners after the job, %d before (%v)", l, before, err)
	}
}

// TestMetricsOff runs the same job without GOBPS_METRICS_ADDR: no process
// listens for metrics (the job adds only the coordinator's and the
// servers' own listeners) and no goroutine of the metrics package or of
// an HTTP server runs.
func TestMetricsOff(t *testing.T) {
	before, err := metricstest.Listeners()
	if err != nil {
		t.Fatal(err)
	}
	j := startMetricsJob(t, false)
	defer j.stop(t)
	j.pushPull(t)
	if l, err := metricstest.Listeners(); err != nil || l-before != 1+mServers {
		t.Errorf("metrics off: %d listeners more than before the job (%v), want %d (the coordinator and the servers)", l-before, err, 1+mServers)
	}
	for _, marker := range []string{"gobps/gobps/metrics", "net/http.(*Server)", "net/http.(*conn)", "promhttp"} {
		if gs := leakcheck.Goroutines(marker); len(gs) > 0 {
			t.Errorf("metrics off, yet %d goroutines run %s:\n%s", len(gs), marker, strings.Join(gs, "\n\n"))
		}
	}
	for _, e := range j.engines {
		for _, s := range e.Metrics().Servers {
			if s.Latency.Count != 0 {
				t.Errorf("metrics off, yet the engine timed %d partitions", s.Latency.Count)
			}
		}
	}
}

// BenchmarkScrape is the cost of one scrape of each role's endpoint of a
// running job (after it moved data), over loopback HTTP: the scraping
// side's time, which includes the process's collecting and encoding.
func BenchmarkScrape(b *testing.B) {
	j := startMetricsJob(b, true)
	defer j.stop(b)
	j.pushPull(b)
	for _, c := range []struct{ name, url string }{{"coordinator", j.coordinator}, {"server", j.servers[0]}, {"worker", j.workers[0]}} {
		b.Run(c.name, func(b *testing.B) {
			for b.Loop() {
				if _, err := metricstest.Scrape(c.url); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
