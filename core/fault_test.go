package core

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"runtime"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gobps/gobps/cluster"
	"github.com/gobps/gobps/config"
	"github.com/gobps/gobps/internal/leakcheck"
	"github.com/gobps/gobps/proto"
	"github.com/gobps/gobps/rdma"
	"github.com/gobps/gobps/rdma/memnet"
	"github.com/gobps/gobps/rdma/tcp"
	"github.com/gobps/gobps/summation"
)

// TestFaultSchedules runs whole jobs — real engines and summation servers,
// over TCP framing on an in-memory network — under seeded random faults:
// connections break, writes fail half-way, deliveries are delayed (which
// reorders traffic across a pair's lanes). The engines get their
// membership from the test, which plays the coordinator: a worker whose
// PushPull fails "exits", and the others hear of its death. After each
// schedule every engine is shut down and checked:
//
//   - every handle has completed, and no handle completed twice (a second
//     completion closes a closed channel: a panic);
//   - nothing wrote into a caller's buffer after its handle completed (each
//     buffer is compared with what it held at completion, after shutdown);
//   - a handle that succeeded holds the exact sum of every worker's push;
//   - no goroutine of the engine, the server or the transport is left.
//
// A failure names its seed; rerun it alone with FAULT_SEED=N go test -run
// TestFaultSeed (FAULT_DUMP=1 also prints the engines' tasks and the
// servers' counters if a handle hangs).
func TestFaultSchedules(t *testing.T) {
	n := 10000
	if testing.Short() {
		n = 300
	}
	if raceEnabled {
		n = min(n, 300)
	}
	start := time.Now()
	var failed atomic.Bool
	seeds := make(chan uint64)
	var wg sync.WaitGroup
	par := runtime.GOMAXPROCS(0)
	for range par {
		wg.Go(func() {
			for seed := range seeds {
				if err := faultSchedule(seed); err != nil {
					if failed.CompareAndSwap(false, true) {
						t.Errorf("seed %d: %v", seed, err)
					}
				}
			}
		})
	}
	for seed := uint64(0); seed < uint64(n) && !failed.Load(); seed++ {
		seeds <- seed
	}
	close(seeds)
	wg.Wait()
	t.Logf("%d schedules in %v: %d handles, %d of them failed; %d schedules saw a failure",
		n, time.Since(start), stats.handles.Load(), stats.failed.Load(), stats.schedulesFailed.Load())
	if stats.failed.Load() == 0 || stats.failed.Load() == stats.handles.Load() {
		t.Errorf("the faults failed %d of %d handles: the schedules test nothing", stats.failed.Load(), stats.handles.Load())
	}
	for _, marker := range []string{"gobps/gobps/core.", "gobps/gobps/summation.", "gobps/gobps/rdma/tcp."} {
		for _, g := range leakcheck.Wait(marker, 2*time.Second) {
			t.Errorf("goroutine leaked:\n%s", g)
		}
	}
}

// stats counts what the schedules did, to show that they test something.
var stats struct {
	handles, failed, schedulesFailed atomic.Int64
}

// fakeMember is the membership the test gives an engine: it plays the
// coordinator's death notices.
type fakeMember struct {
	events chan cluster.NodeEvent
	done   chan struct{}
}

func newFakeMember() *fakeMember {
	return &fakeMember{events: make(chan cluster.NodeEvent, 16), done: make(chan struct{})}
}

func (m *fakeMember) Events() <-chan cluster.NodeEvent { return m.events }
func (m *fakeMember) Done() <-chan struct{}            { return m.done }
func (m *fakeMember) Err() error                       { return nil }
func (m *fakeMember) Leave() error                     { return nil }
func (m *fakeMember) Barrier(context.Context, cluster.Group) error {
	return errors.New("the fake membership has no barriers")
}

// faultCase is one handle of a schedule, and what the test knows of it.
type faultCase struct {
	h      *Handle
	buf    []byte
	at     []byte // buf when h completed
	want   []byte // the exact sum
	worker int
}

func faultSchedule(seed uint64) (err error) {
	r := rand.New(rand.NewPCG(seed, 42))
	nworkers, nservers := 1+r.IntN(2), 1+r.IntN(2)
	lanes := 1 + r.IntN(2)
	faultEvery := 20 + r.IntN(200) // on average one fault per this many writes
	var prmu sync.Mutex
	pr := rand.New(rand.NewPCG(seed, 7))
	policy := func(w memnet.Write) memnet.Action {
		prmu.Lock()
		defer prmu.Unlock()
		switch pr.IntN(faultEvery) {
		case 0:
			return memnet.Action{Break: true}
		case 1:
			return memnet.Action{Fail: true, Keep: pr.IntN(w.Bytes + 1)}
		case 2, 3, 4:
			return memnet.Action{Delay: time.Duration(pr.IntN(300)) * time.Microsecond}
		}
		return memnet.Action{}
	}
	network := memnet.New(memnet.Options{Policy: policy})
	defer network.Close()

	opt := rdma.Options{HelloTimeout: 10 * time.Second}
	var servers []*summation.Server
	defer func() {
		for _, s := range servers {
			s.Close()
		}
	}()
	book := cluster.Book{}
	for i := range nservers {
		s, err := summation.New(summation.Config{Workers: nworkers, Engines: 1 + r.IntN(2), Transport: tcp.NewOn(network, opt), Addr: fmt.Sprintf("srv%d:0", i)})
		if err != nil {
			return err
		}
		servers = append(servers, s)
		id := proto.NodeID(proto.RoleServer, i)
		s.SetID(id)
		book.Servers = append(book.Servers, cluster.Node{Role: cluster.RoleServer, Rank: i, ID: id, Addr: s.Addr()})
	}
	for i := range nworkers {
		book.Workers = append(book.Workers, cluster.Node{Role: cluster.RoleWorker, Rank: i, ID: proto.NodeID(proto.RoleWorker, i)})
	}
	env := map[string]string{
		"DMLC_ROLE": "worker", "DMLC_NUM_WORKER": strconv.Itoa(nworkers), "DMLC_NUM_SERVER": strconv.Itoa(nservers),
		"DMLC_PS_ROOT_URI": "127.0.0.1", "DMLC_PS_ROOT_PORT": "1", "GOBPS_LOCAL_AGGREGATION": "0",
		"BYTEPS_PARTITION_BYTES": "4096", "BYTEPS_SCHEDULING_CREDIT": strconv.Itoa(1 + r.IntN(4)),
		"GOBPS_TCP_LANES": strconv.Itoa(lanes),
	}
	cfg, err := config.Parse(func(k string) (string, bool) { v, ok := env[k]; return v, ok })
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	members := make([]*fakeMember, nworkers)
	engines := make([]*Engine, nworkers)
	defer func() {
		for _, e := range engines {
			if e != nil {
				e.Shutdown()
			}
		}
	}()
	for i := range nworkers {
		members[i] = newFakeMember()
		e, err := start(ctx, cfg, Options{Config: cfg}, members[i], book.Workers[i], book, tcp.NewOn(network, opt), true)
		if err != nil {
			return nil // a fault during the connection setup: nothing to check
		}
		engines[i] = e
		e.MeasureLatency()
	}

	// The same tensors on every worker; sizes up to a few partitions, and
	// now and then one whose answers come in pieces.
	ntensors := 1 + r.IntN(3)
	counts := make([]int, ntensors)
	for i := range counts {
		counts[i] = 1 + r.IntN(3*1024)
		if r.IntN(8) == 0 {
			counts[i] = proto.PieceBytes/4 + r.IntN(proto.PieceBytes/4)
		}
	}
	rounds := 1 + r.IntN(3)
	var mu sync.Mutex
	var cases []*faultCase
	var died sync.Once
	die := func(w int) {
		// The worker "exits" on its failure, failing what it still has
		// pending, and the coordinator tells the others, as it would.
		died.Do(func() {
			engines[w].failAll(errors.New("the worker exits"))
			for j, m := range members {
				if j != w {
					m.events <- cluster.NodeEvent{Node: book.Workers[w], Reason: "exited"}
				}
			}
		})
	}
	var wg sync.WaitGroup
	for w, e := range engines {
		wg.Go(func() {
			ts := make([]*Tensor, ntensors)
			for i, n := range counts {
				var err error
				if ts[i], err = e.Declare(fmt.Sprintf("t%d", i), proto.Int32, n); err != nil {
					die(w)
					return
				}
			}
			for round := range rounds {
				var mine []*faultCase
				stop := false
				for i, t := range ts {
					c := &faultCase{buf: make([]byte, 4*counts[i]), want: make([]byte, 4*counts[i]), worker: w}
					for j := range counts[i] {
						binary.LittleEndian.PutUint32(c.buf[4*j:], uint32(j*(w+1)+round))
						sum := 0
						for k := range nworkers {
							sum += j*(k+1) + round
						}
						binary.LittleEndian.PutUint32(c.want[4*j:], uint32(sum))
					}
					h, err := e.PushPull(t, c.buf, Sum)
					if err != nil {
						die(w)
						stop = true
						break
					}
					c.h = h
					mine = append(mine, c)
					mu.Lock()
					cases = append(cases, c)
					mu.Unlock()
				}
				for _, c := range mine {
					<-c.h.Done()
					c.at = append([]byte(nil), c.buf...)
					if c.h.Wait() != nil {
						die(w)
					}
				}
				if stop {
					return
				}
			}
		})
	}
	hung := make(chan struct{})
	go func() { wg.Wait(); close(hung) }()
	select {
	case <-hung:
	case <-time.After(10 * time.Second):
		if os.Getenv("FAULT_DUMP") != "" {
			for i, e := range engines {
				e.mu.Lock()
				fmt.Fprintf(os.Stderr, "engine %d: live %d, inflight %d, failed %v\n", i, e.mu.m.Live(), e.mu.m.InFlight(), e.mu.failed)
				for _, s := range e.servers {
					fmt.Fprintf(os.Stderr, "  server %d failed: %v\n", s.rank, s.failed)
				}
				for _, st := range e.mu.m.States() {
					fmt.Fprintf(os.Stderr, "  %s\n", st)
				}
				e.mu.Unlock()
			}
			for i, s := range servers {
				fmt.Fprintf(os.Stderr, "server %d: %+v\n", i, s.Stats())
			}
		}
		// Shut down so the goroutines end, then report the hang.
		for _, e := range engines {
			e.Shutdown()
		}
		<-hung
		return errors.New("a handle did not complete within 10 s")
	}
	for _, e := range engines {
		if err := e.Shutdown(); err != nil {
			return fmt.Errorf("shutdown: %v", err)
		}
	}
	for _, s := range servers {
		s.Close()
	}
	network.Close()
	sawFailure := false
	for _, c := range cases {
		stats.handles.Add(1)
		if c.h.Poll() && c.h.Wait() != nil {
			stats.failed.Add(1)
			sawFailure = true
		}
	}
	if sawFailure {
		stats.schedulesFailed.Add(1)
	}
	for _, c := range cases {
		if !c.h.Poll() {
			return fmt.Errorf("worker %d: a handle is not complete after shutdown", c.worker)
		}
		if string(c.buf) != string(c.at) {
			return fmt.Errorf("worker %d: %q was written after its handle completed", c.worker, c.h.name)
		}
		if c.h.Wait() == nil && string(c.buf) != string(c.want) {
			return fmt.Errorf("worker %d: %q succeeded with a wrong sum", c.worker, c.h.name)
		}
	}
	return checkMetrics(engines, cases)
}

// checkMetrics checks the engines' metrics against what their handles
// say: every operation counted once, as completed or failed, none open;
// a latency for partitions that finished whole only.
func checkMetrics(engines []*Engine, cases []*faultCase) error {
	for w, e := range engines {
		var ok, failed uint64
		for _, c := range cases {
			switch {
			case c.worker != w:
			case c.h.Wait() == nil:
				ok++
			default:
				failed++
			}
		}
		m := e.Metrics()
		if m.OpsCompleted != ok || m.OpsFailed != failed || m.OpsOpen != 0 || m.CreditInUse != 0 {
			return fmt.Errorf("worker %d: the metrics count %d operations completed, %d failed, %d open, %d bytes of credit in use; the handles say %d, %d, 0, 0",
				w, m.OpsCompleted, m.OpsFailed, m.OpsOpen, m.CreditInUse, ok, failed)
		}
		for _, s := range m.Servers {
			if s.Latency.Count > s.Answers {
				return fmt.Errorf("worker %d: %d latencies for server %d, but %d answers", w, s.Latency.Count, s.Rank, s.Answers)
			}
			if ok > 0 && s.Pushes == 0 && len(m.Servers) == 1 {
				return fmt.Errorf("worker %d: %d operations succeeded without a push", w, ok)
			}
		}
	}
	return nil
}

// TestFaultSeed runs the one schedule FAULT_SEED names (see
// TestFaultSchedules).
func TestFaultSeed(t *testing.T) {
	s, ok := os.LookupEnv("FAULT_SEED")
	if !ok {
		t.Skip("FAULT_SEED is not set: TestFaultSchedules runs every seed")
	}
	seed, _ := strconv.ParseUint(s, 10, 64)
	if err := faultSchedule(seed); err != nil {
		t.Fatal(err)
	}
}
