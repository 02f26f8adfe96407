package core

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gobps/gobps/cluster"
	"github.com/gobps/gobps/config"
	"github.com/gobps/gobps/gpu"
	"github.com/gobps/gobps/gpu/fake"
	"github.com/gobps/gobps/proto"
	"github.com/gobps/gobps/rdma"
	"github.com/gobps/gobps/rdma/tcp"
	"github.com/gobps/gobps/summation"
)

// testCluster is a whole job in one process over loopback TCP: a real
// coordinator, real summation servers and real engines, so the race
// detector sees every goroutine of the worker side.
type testCluster struct {
	engines []*Engine
	servers []*summation.Server
	members []*cluster.Member // by server rank
	cancel  context.CancelFunc
}

// fakeGPU, given to startCluster with a duration, gives every engine the
// fake device with that copy delay (and as much jitter).
const fakeGPU = "fake-gpu"

// startCluster runs a job of workers engines and servers servers; extra
// are environment variables (NAME, value, ...) for the workers, or
// fakeGPU.
func startCluster(t *testing.T, workers, servers int, extra ...string) *testCluster {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	tc := &testCluster{cancel: cancel}
	coord, err := cluster.NewCoordinator(cluster.CoordinatorConfig{
		Addr: "127.0.0.1:0", NumWorkers: workers, NumServers: servers, HeartbeatTimeout: 2 * time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}
	go coord.Run(ctx)
	_, port, _ := strings.Cut(coord.Addr(), ":")
	env := map[string]string{
		"DMLC_ROLE": "worker", "DMLC_NUM_WORKER": "1", "BYTEPS_LOCAL_SIZE": strconv.Itoa(workers),
		"DMLC_NUM_SERVER": strconv.Itoa(servers), "DMLC_PS_ROOT_URI": "127.0.0.1", "DMLC_PS_ROOT_PORT": port,
		"DMLC_WORKER_ID": "0", "GOBPS_HEARTBEAT_INTERVAL": "100ms", "BYTEPS_PARTITION_BYTES": "8192",
		// Every worker pushes, unless a test turns local aggregation on.
		"GOBPS_LOCAL_AGGREGATION": "0",
	}
	for i := 0; i+1 < len(extra); i += 2 {
		env[extra[i]] = extra[i+1]
	}
	// fakeGPU is no environment variable: it gives each engine the fake
	// device (gpu/fake) with that copy delay, through Options.OpenDevice.
	var fakeDelay time.Duration
	if v, ok := env[fakeGPU]; ok {
		d, err := time.ParseDuration(v)
		if err != nil {
			t.Fatal(err)
		}
		fakeDelay = d
		delete(env, fakeGPU)
	}
	pushers := workers
	if env["GOBPS_LOCAL_AGGREGATION"] == "1" {
		pushers = 1 // all the workers are on one machine
	}
	var wg sync.WaitGroup
	errs := make([]error, workers+servers)
	tc.members = make([]*cluster.Member, servers)
	for i := 0; i < servers; i++ {
		s, err := summation.New(summation.Config{Workers: workers, Pushers: pushers, Engines: 2, Transport: tcp.New(rdma.Options{}), Addr: "127.0.0.1:0"})
		if err != nil {
			t.Fatal(err)
		}
		tc.servers = append(tc.servers, s)
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			m, err := cluster.Join(ctx, coord.Addr(), cluster.Registration{Role: cluster.RoleServer, WorkerID: i, Addr: s.Addr(), PID: 1}, cluster.Options{HeartbeatInterval: 100 * time.Millisecond})
			errs[i] = err
			if err == nil {
				s.SetID(m.Self().ID)
				tc.members[i] = m
			}
		}(i)
	}
	tc.engines = make([]*Engine, workers)
	for i := 0; i < workers; i++ {
		e := map[string]string{"BYTEPS_LOCAL_RANK": strconv.Itoa(i)}
		for k, v := range env {
			if _, ok := e[k]; !ok {
				e[k] = v
			}
		}
		cfg, err := config.Parse(func(k string) (string, bool) { v, ok := e[k]; return v, ok })
		if err != nil {
			t.Fatal(err)
		}
		opt := Options{Config: cfg}
		if fakeDelay > 0 || slices.Contains(extra, fakeGPU) {
			opt.OpenDevice = func(index int) (gpu.Device, error) {
				return fake.New(fake.Options{Index: index, CopyDelay: fakeDelay, MaxJitter: fakeDelay, Seed: uint64(i)<<8 | uint64(index)}), nil
			}
		}
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			tc.engines[i], errs[servers+i] = Init(ctx, opt)
		}(i)
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
	// The servers hear of workers that leave or die, as bpsrun's do.
	stop := make(chan struct{})
	for i, m := range tc.members {
		go func() {
			for {
				select {
				case ev := <-m.Events():
					if ev.Node.Role == cluster.RoleWorker {
						tc.servers[i].Depart(ev.Node.Rank, ev.String())
					}
				case <-m.Done():
					return
				case <-stop:
					return
				}
			}
		}()
	}
	t.Cleanup(func() {
		close(stop)
		for _, e := range tc.engines {
			e.Shutdown()
		}
		for _, s := range tc.servers {
			s.Close()
		}
		coord.Close()
		cancel()
	})
	return tc
}

func f32bytes(vs []float32) []byte {
	b := make([]byte, 4*len(vs))
	for i, v := range vs {
		binary.LittleEndian.PutUint32(b[4*i:], math.Float32bits(v))
	}
	return b
}

// each runs f on every engine concurrently and fails on the first error.
func (tc *testCluster) each(t *testing.T, f func(rank int, e *Engine) error) {
	t.Helper()
	errs := make([]error, len(tc.engines))
	var wg sync.WaitGroup
	for i, e := range tc.engines {
		wg.Add(1)
		go func() { defer wg.Done(); errs[i] = f(e.Rank(), e) }()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
}

func TestPushPullSumAverageBroadcast(t *testing.T) {
	for _, tc := range []struct {
		name     string
		localAgg string
		force    string
		pushers  int
	}{
		{"every worker pushes", "0", "0", 3},
		{"local aggregation", "1", "1", 1},
		// The 3 workers are the whole job: sums end in shared memory.
		{"one machine, no server round trip", "1", "0", 0},
	} {
		t.Run(tc.name, func(t *testing.T) { testPushPullSumAverageBroadcast(t, tc.localAgg, tc.force, tc.pushers) })
	}
}

// testPushPullSumAverageBroadcast runs 3 workers and 2 servers; with local
// aggregation the 3 workers are one machine and push once per key through
// the servers (BYTEPS_FORCE_DISTRIBUTED=1), or not at all.
func testPushPullSumAverageBroadcast(t *testing.T, localAgg, force string, pushers int) {
	tc := startCluster(t, 3, 2, "GOBPS_LOCAL_AGGREGATION", localAgg, "BYTEPS_FORCE_DISTRIBUTED", force)
	const n = 10000 // 40000 bytes: 5 partitions of 8 KiB over 2 servers
	tc.each(t, func(rank int, e *Engine) error {
		if e.Size() != 3 || e.NumServers() != 2 {
			return fmt.Errorf("size %d servers %d", e.Size(), e.NumServers())
		}
		a, err := e.Declare("a", proto.Float32, n)
		if err != nil {
			return err
		}
		b, err := e.Declare("b", proto.Int64, 3)
		if err != nil {
			return err
		}
		c, err := e.DeclareBroadcast("c", proto.Float32, n, 2)
		if err != nil {
			return err
		}
		if a.Partitions() != 5 {
			return fmt.Errorf("%d partitions", a.Partitions())
		}
		for round := 0; round < 5; round++ {
			av := make([]float32, n)
			want := make([]float32, n)
			for i := range av {
				av[i] = float32(rank*i + round)
				want[i] = float32((0+1+2)*i+3*round) / 3
			}
			abuf := f32bytes(av)
			bbuf := make([]byte, 24)
			binary.LittleEndian.PutUint64(bbuf[8:], uint64(rank+round))
			cv := make([]float32, n)
			for i := range cv {
				cv[i] = float32(rank*1000 + i + round)
			}
			cbuf := f32bytes(cv)
			ha, err := e.PushPull(a, abuf, Average)
			if err != nil {
				return err
			}
			hb, err := e.PushPull(b, bbuf, Sum)
			if err != nil {
				return err
			}
			hc, err := e.Broadcast(c, cbuf)
			if err != nil {
				return err
			}
			for _, h := range []*Handle{ha, hb, hc} {
				if err := h.WaitTimeout(20 * time.Second); err != nil {
					return err
				}
			}
			if string(abuf) != string(f32bytes(want)) {
				return fmt.Errorf("rank %d round %d: average differs", rank, round)
			}
			if got := int64(binary.LittleEndian.Uint64(bbuf[8:])); got != int64(3+3*round) {
				return fmt.Errorf("rank %d round %d: int64 sum %d", rank, round, got)
			}
			for i := range cv {
				cv[i] = float32(2*1000 + i + round)
			}
			if string(cbuf) != string(f32bytes(cv)) {
				return fmt.Errorf("rank %d round %d: broadcast differs from root 2", rank, round)
			}
		}
		// Every operation's tensor bytes, whichever way its sum came.
		if got, want := e.Metrics().BytesCompleted, uint64(5*(4*n+24+4*n)); got != want {
			return fmt.Errorf("rank %d: %d bytes of operations completed, want %d", rank, got, want)
		}
		return nil
	})
	var pushes int64
	for _, s := range tc.servers {
		st := s.Stats()
		pushes += st.Pushes
		// Three tensors, 11 keys, declared before the first PushPull: one
		// declaration frame per worker per server.
		if st.Declares != 3 {
			t.Errorf("server got %d declaration frames, want 3 (one per worker)", st.Declares)
		}
	}
	// a: 5 keys x pushers, b: 1 key x pushers, c: 5 keys x root only; 5 rounds
	if want := int64(5 * (5*pushers + pushers + 5)); pushes != want {
		t.Errorf("servers accepted %d pushes, want %d", pushes, want)
	}
}

func TestBadCalls(t *testing.T) {
	tc := startCluster(t, 1, 1)
	e := tc.engines[0]
	var nilEngine *Engine
	if _, err := nilEngine.Declare("x", proto.Float32, 1); !errors.Is(err, ErrNotInitialized) {
		t.Errorf("nil engine: %v", err)
	}
	cases := []struct {
		desc string
		run  func() error
		want string
	}{
		{"zero elements", func() error { _, err := e.Declare("z", proto.Float32, 0); return err }, "at least one"},
		{"bad dtype", func() error { _, err := e.Declare("d", proto.DType(99), 1); return err }, "unknown dtype"},
		{"redeclared differently", func() error {
			e.Declare("r", proto.Float32, 4)
			_, err := e.Declare("r", proto.Float32, 5)
			return err
		}, "declared again"},
		{"wrong buffer size", func() error {
			x, _ := e.Declare("x", proto.Float32, 4)
			_, err := e.PushPull(x, make([]byte, 12), Sum)
			return err
		}, "buffer of 12 bytes, declared 16"},
		{"average of ints", func() error {
			x, _ := e.Declare("i", proto.Int32, 4)
			_, err := e.PushPull(x, make([]byte, 16), Average)
			return err
		}, "cannot average int32"},
		{"broadcast of a sum tensor", func() error {
			x, _ := e.Declare("s", proto.Float32, 4)
			_, err := e.Broadcast(x, make([]byte, 16))
			return err
		}, "not declared for broadcast"},
		{"broadcast root out of range", func() error { _, err := e.DeclareBroadcast("br", proto.Float32, 4, 1); return err }, "root 1 outside"},
	}
	for _, c := range cases {
		if err := c.run(); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: err = %v, want %q", c.desc, err, c.want)
		}
	}
	e.Shutdown()
	if _, err := e.Declare("after", proto.Float32, 1); !errors.Is(err, ErrNotInitialized) {
		t.Errorf("after shutdown: %v", err)
	}
}

// TestServerLossFailsPending closes a server under the workers: pending
// and later PushPulls fail naming it, and nothing hangs.
func TestServerLossFailsPending(t *testing.T) {
	tc := startCluster(t, 2, 2)
	ts := make([]*Tensor, 2)
	tc.each(t, func(rank int, e *Engine) error {
		x, err := e.Declare("x", proto.Float32, 8192) // 4 partitions over both servers
		ts[rank] = x
		return err
	})
	// Worker 0 pushes alone: its round cannot complete, so its pulls wait.
	h, err := tc.engines[0].PushPull(ts[0], make([]byte, ts[0].Bytes()), Sum)
	if err != nil {
		t.Fatal(err)
	}
	waitPushes(t, tc, 4)
	if h.Poll() {
		t.Fatal("round completed with one of two workers")
	}
	tc.servers[1].Close()
	err = h.WaitTimeout(10 * time.Second)
	if err == nil || !strings.Contains(err.Error(), "server 1") {
		t.Fatalf("pending PushPull: %v", err)
	}
	t.Log(err)
	// A later PushPull of a tensor with keys on the dead server fails too,
	// naming it: at once, or through its handle.
	h, err = tc.engines[0].PushPull(ts[0], make([]byte, ts[0].Bytes()), Sum)
	if err == nil {
		err = h.WaitTimeout(10 * time.Second)
	}
	if err == nil || !strings.Contains(err.Error(), "server 1") {
		t.Fatalf("PushPull after the server died: %v, want an error naming server 1", err)
	}
	t.Log(err)
}

// waitPushes waits until the servers have accepted n pushes in all.
func waitPushes(t *testing.T, tc *testCluster, n int64) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		var got int64
		for _, s := range tc.servers {
			got += s.Stats().Pushes
		}
		if got >= n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("servers accepted %d pushes after 10 s, want %d", got, n)
		}
		time.Sleep(time.Millisecond)
	}
}

// dispatched is the number of partitions the engine has ever dispatched.
func (e *Engine) dispatched() int {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.mu.m.Dispatched()
}

// quiet reports whether the engine has nothing left to send: nothing
// queued or in flight in the scheduler, no partition waiting in or
// being sent by a lane.
func (e *Engine) quiet() bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.mu.m.Queued() > 0 || e.mu.m.InFlight() > 0 {
		return false
	}
	for _, s := range e.servers {
		for _, l := range s.lanes {
			l.q.Lock()
			n := len(l.q.tasks)
			l.q.Unlock()
			if n > 0 {
				return false
			}
		}
	}
	return true
}

// TestPushesOverlapPulls: a worker pushes all 4 partitions of a tensor
// while the pulls of the first ones are still waiting (the other worker has
// not pushed yet), whatever the credit: the credit bounds pushes on the
// wire and is returned when a push has been sent, not when its sum comes
// back (see TestCreditNoCrossWorkerDeadlock for why). This is what lets the
// push of partition i overlap the pull of partition i-1.
func TestPushesOverlapPulls(t *testing.T) {
	for _, c := range []struct {
		credit     string
		wantPushes int64
	}{{"32768", 4}, {"8192", 4}} {
		t.Run("credit="+c.credit, func(t *testing.T) {
			tc := startCluster(t, 2, 1, "BYTEPS_SCHEDULING_CREDIT", c.credit)
			ts := make([]*Tensor, 2)
			tc.each(t, func(rank int, e *Engine) error {
				x, err := e.Declare("x", proto.Float32, 8192) // 4 partitions of 8 KiB
				ts[rank] = x
				return err
			})
			h0, err := tc.engines[0].PushPull(ts[0], make([]byte, ts[0].Bytes()), Sum)
			if err != nil {
				t.Fatal(err)
			}
			// Wait until the servers have the pushes and the engine has
			// nothing more to send (its queue, credit and lanes are
			// empty): any push beyond those would have been sent by then.
			waitPushes(t, tc, c.wantPushes)
			for deadline := time.Now().Add(5 * time.Second); !tc.engines[0].quiet(); {
				if time.Now().After(deadline) {
					t.Fatal("engine 0 still has pushes to send after 5 s")
				}
				time.Sleep(time.Millisecond)
			}
			if got := tc.servers[0].Stats().Pushes; got != c.wantPushes {
				t.Fatalf("worker 0 alone pushed %d partitions, want %d", got, c.wantPushes)
			}
			h1, err := tc.engines[1].PushPull(ts[1], make([]byte, ts[1].Bytes()), Sum)
			if err != nil {
				t.Fatal(err)
			}
			for _, h := range []*Handle{h0, h1} {
				if err := h.WaitTimeout(10 * time.Second); err != nil {
					t.Fatal(err)
				}
			}
		})
	}
}

// fakeServerJob starts a coordinator, a fake server that answers every
// push (or pull) with answer on the raw connection (declarations are
// acknowledged), and one engine with one lane and 8 KiB partitions.
func fakeServerJob(t *testing.T, ctx context.Context, answer func(c net.Conn, h proto.Header, payload []byte) bool) *Engine {
	t.Helper()
	coord, err := cluster.NewCoordinator(cluster.CoordinatorConfig{Addr: "127.0.0.1:0", NumWorkers: 1, NumServers: 1})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { coord.Close() })
	go coord.Run(ctx)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func(c net.Conn) {
				defer c.Close()
				for {
					h, p, err := proto.ReadFrame(c, proto.MaxPayload)
					if err != nil {
						return
					}
					switch h.Op {
					case proto.OpDeclare:
						proto.WriteFrame(c, proto.Header{Op: proto.OpDeclareAck, ReqID: h.ReqID}, nil)
					case proto.OpPull, proto.OpPush: // a push asks for the sum too (FlagPull)
						if !answer(c, h, p) {
							return
						}
					}
				}
			}(c)
		}
	}()
	go func() {
		m, err := cluster.Join(ctx, coord.Addr(), cluster.Registration{Role: cluster.RoleServer, WorkerID: -1, Addr: ln.Addr().String(), PID: 1}, cluster.Options{})
		if err == nil {
			<-ctx.Done()
			m.Leave()
		}
	}()
	_, port, _ := strings.Cut(coord.Addr(), ":")
	env := map[string]string{"DMLC_ROLE": "worker", "DMLC_NUM_WORKER": "1", "DMLC_NUM_SERVER": "1",
		"DMLC_PS_ROOT_URI": "127.0.0.1", "DMLC_PS_ROOT_PORT": port, "BYTEPS_PARTITION_BYTES": "8192", "GOBPS_TCP_LANES": "1"}
	cfg, err := config.Parse(func(k string) (string, bool) { v, ok := env[k]; return v, ok })
	if err != nil {
		t.Fatal(err)
	}
	e, err := Init(ctx, Options{Config: cfg, Logf: t.Logf})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.Shutdown() })
	return e
}

// TestServerDiesMidAnswer: a server that starts sending a pull answer and
// dies half-way must fail the PushPull (the answer being received was the
// part of it most easily forgotten), not leave it waiting.
func TestServerDiesMidAnswer(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	// The fake server answers the first pull (a push with FlagPull) with a
	// header promising the whole partition, half of it, and a closed
	// connection.
	e := fakeServerJob(t, ctx, func(c net.Conn, h proto.Header, _ []byte) bool {
		var b [proto.HeaderSize]byte
		(&proto.Header{Op: proto.OpPullResp, DType: proto.Float32, Key: h.Key, Round: h.Round, ReqID: h.ReqID, Length: 8192}).Encode(b[:])
		c.Write(b[:])
		c.Write(make([]byte, 4096))
		return false
	})
	x, err := e.Declare("x", proto.Float32, 2048)
	if err != nil {
		t.Fatal(err)
	}
	h, err := e.PushPull(x, make([]byte, x.Bytes()), Sum)
	if err != nil {
		t.Fatal(err)
	}
	err = h.WaitTimeout(10 * time.Second)
	if err == nil || !strings.Contains(err.Error(), "server 0") {
		t.Fatalf("PushPull whose answer was cut off: %v", err)
	}
	t.Log(err)
}

// TestZeroLengthAnswer: a server (or anyone who reached the worker's
// port) answers with an OpPullResp of no payload. For a request id the
// worker never used, that changed nothing but a log line (it used to panic
// the worker: the reader skipped Dest and the engine dereferenced a nil
// request); for a pending request, that request fails with a clear error
// (it used to hang), and nothing is written into its buffer.
func TestZeroLengthAnswer(t *testing.T) {
	for _, known := range []bool{false, true} {
		t.Run(fmt.Sprintf("known request %v", known), func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			e := fakeServerJob(t, ctx, func(c net.Conn, h proto.Header, payload []byte) bool {
				id := h.ReqID
				if !known {
					id += 1000
				}
				proto.WriteFrame(c, proto.Header{Op: proto.OpPullResp, DType: proto.Float32, Key: h.Key, Round: h.Round, ReqID: id}, nil)
				// Then the real answer: the sum of one worker's push is the push.
				proto.WriteFrame(c, proto.Header{Op: proto.OpPullResp, DType: proto.Float32, Key: h.Key, Round: h.Round, ReqID: h.ReqID}, payload)
				return true
			})
			x, err := e.Declare("x", proto.Float32, 2048)
			if err != nil {
				t.Fatal(err)
			}
			buf := f32bytes(make([]float32, 2048))
			for i := range buf {
				buf[i] = byte(i)
			}
			want := append([]byte(nil), buf...)
			h, err := e.PushPull(x, buf, Sum)
			if err != nil {
				t.Fatal(err)
			}
			err = h.WaitTimeout(10 * time.Second)
			switch {
			case !known && err != nil:
				t.Fatalf("a zero-length answer to an unknown request failed the pending one: %v", err)
			case known && (err == nil || !strings.Contains(err.Error(), "pull-resp without a payload")):
				t.Fatalf("a zero-length answer to a pending request: %v, want a failure saying so", err)
			}
			if string(buf) != string(want) {
				t.Error("the buffer changed")
			}
			t.Logf("handle: %v", err)
		})
	}
}

// TestDeclarationsInSeveralFrames: more keys than one declaration frame
// holds (proto.MaxDecls) are declared to one server in one flush; the
// engine splits them over several frames, and the job works.
func TestDeclarationsInSeveralFrames(t *testing.T) {
	tc := startCluster(t, 1, 1)
	e := tc.engines[0]
	n := proto.MaxDecls + 10
	var last *Tensor
	for i := 0; i < n; i++ {
		var err error
		if last, err = e.Declare(fmt.Sprintf("t%d", i), proto.Int32, 1); err != nil {
			t.Fatal(err)
		}
	}
	buf := make([]byte, 4)
	buf[0] = 7
	h, err := e.PushPull(last, buf, Sum)
	if err != nil {
		t.Fatal(err)
	}
	if err := h.WaitTimeout(20 * time.Second); err != nil {
		t.Fatal(err)
	}
	if buf[0] != 7 {
		t.Fatalf("sum of one worker's 7 is %d", buf[0])
	}
	st := tc.servers[0].Stats()
	if st.Keys != n || st.Declares != 2 {
		t.Fatalf("server has %d keys from %d declaration frames, want %d keys from 2", st.Keys, st.Declares, n)
	}
}

// TestCreditNoCrossWorkerDeadlock: two workers dispatch the same tensors
// in different orders. Worker 0 starts x (16 partitions) and at once y
// (4 partitions, declared first, so higher priority); worker 1 starts x and
// only later y. With credit held until the sum comes back, worker 0 ends up
// with y's partitions in flight, waiting for worker 1's y, while worker 1
// holds x's partitions, waiting for worker 0's x queued behind y: neither
// handle ever completes.
func TestCreditNoCrossWorkerDeadlock(t *testing.T) {
	tc := startCluster(t, 2, 1) // 8 KiB partitions, credit 4 partitions
	xs, ys := make([]*Tensor, 2), make([]*Tensor, 2)
	tc.each(t, func(rank int, e *Engine) error {
		var err error
		if ys[rank], err = e.Declare("y", proto.Float32, 4*2048); err != nil {
			return err
		}
		xs[rank], err = e.Declare("x", proto.Float32, 16*2048)
		return err
	})
	var hs []*Handle
	start := func(rank int, ts []*Tensor) {
		h, err := tc.engines[rank].PushPull(ts[rank], make([]byte, ts[rank].Bytes()), Sum)
		if err != nil {
			t.Fatal(err)
		}
		hs = append(hs, h)
	}
	start(0, xs)
	start(0, ys)
	start(1, xs)
	// Worker 1 starts y only once it has dispatched two credits' worth of
	// x: with credit held until the sum came back, the second four would
	// now hold its credit, waiting for worker 0's, which are queued behind
	// worker 0's y.
	for deadline := time.Now().Add(5 * time.Second); tc.engines[1].dispatched() < 8; {
		if time.Now().After(deadline) {
			t.Fatalf("worker 1 dispatched %d x partitions after 5 s, want 8", tc.engines[1].dispatched())
		}
		time.Sleep(time.Millisecond)
	}
	start(1, ys)
	for _, h := range hs {
		if err := h.WaitTimeout(5 * time.Second); err != nil {
			t.Fatal(err)
		}
	}
}

// TestConcurrentFirstPushes: many goroutines start their first PushPull at
// once, right after declaring. One of them flushes the declarations; the
// others must wait for the servers' answers too, or a push can reach its
// server over another lane before its key's declaration does ("never
// declared"). Found by the GPU path, whose pushes start from goroutines.
func TestConcurrentFirstPushes(t *testing.T) {
	for iter := 0; iter < 3; iter++ {
		tc := startCluster(t, 2, 2)
		tc.each(t, func(rank int, e *Engine) error {
			const n = 16
			ts := make([]*Tensor, n)
			for i := range ts {
				var err error
				if ts[i], err = e.Declare(fmt.Sprintf("c%d", i), proto.Int32, 3000+i); err != nil {
					return err
				}
			}
			errs := make(chan error, n)
			for i := range ts {
				go func() {
					buf := make([]byte, ts[i].Bytes())
					h, err := e.PushPull(ts[i], buf, Sum)
					if err == nil {
						err = h.WaitTimeout(20 * time.Second)
					}
					errs <- err
				}()
			}
			for range ts {
				if err := <-errs; err != nil {
					return err
				}
			}
			return nil
		})
	}
}

// TestDeclarationsCheckedAcrossWorkers: the workers push tensors that
// do not match up (other names, another shape of the same size). Both
// PushPulls fail, within a bound, with an error naming both tensors,
// where they used to be summed together; with and without local
// aggregation (which sums in shared memory before any server sees a push).
func TestDeclarationsCheckedAcrossWorkers(t *testing.T) {
	for _, agg := range []string{"0", "1"} {
		for _, tc := range []struct {
			desc   string
			names  [2]string
			shapes [2][]int64
			want   []string
		}{
			{"other names", [2]string{"a", "b"}, [2][]int64{{4}, {4}}, []string{`tensor "a" float32[4]`, `tensor "b" float32[4]`}},
			{"another shape", [2]string{"w", "w"}, [2][]int64{{2, 2}, {4}}, []string{`tensor "w" float32[2 2]`, `tensor "w" float32[4]`}},
		} {
			t.Run(tc.desc+" local aggregation "+agg, func(t *testing.T) {
				c := startCluster(t, 2, 1, "GOBPS_LOCAL_AGGREGATION", agg)
				errs := make([]error, 2)
				var wg sync.WaitGroup
				for _, e := range c.engines {
					wg.Add(1)
					go func() {
						defer wg.Done()
						r := e.Rank()
						tn, err := e.DeclareShape(tc.names[r], proto.Float32, tc.shapes[r])
						if err != nil {
							errs[r] = err
							return
						}
						h, err := e.PushPull(tn, f32bytes([]float32{1, 2, 3, 4}), Sum)
						if err != nil {
							errs[r] = err
							return
						}
						errs[r] = h.WaitTimeout(10 * time.Second)
					}()
				}
				wg.Wait()
				for r, err := range errs {
					if err == nil {
						t.Fatalf("worker %d summed tensors that do not match", r)
					}
					for _, w := range tc.want {
						if !strings.Contains(err.Error(), w) {
							t.Fatalf("worker %d: error %q does not say %q", r, err, w)
						}
					}
					t.Logf("worker %d: %v", r, err)
				}
			})
		}
	}
}

// TestWorkerLeavesEarly: with one worker per machine, a worker that shuts
// down cleanly while the other still pushes used to leave it waiting for
// ever. Now the rounds it pushed complete, and the next fails at once
// with an error that names it.
func TestWorkerLeavesEarly(t *testing.T) {
	c := startCluster(t, 2, 2)
	tensors := make([]*Tensor, 2)
	for i, e := range c.engines {
		var err error
		if tensors[i], err = e.Declare("g", proto.Float32, 3000); err != nil {
			t.Fatal(err)
		}
	}
	step := func(rank int) error {
		buf := f32bytes(slices.Repeat([]float32{float32(rank + 1)}, 3000))
		h, err := c.engines[rank].PushPull(tensors[rank], buf, Sum)
		if err != nil {
			return err
		}
		if err := h.WaitTimeout(10 * time.Second); err != nil {
			return err
		}
		if got := math.Float32frombits(binary.LittleEndian.Uint32(buf)); got != 3 {
			return fmt.Errorf("worker %d: sum %v, want 3", rank, got)
		}
		return nil
	}
	c.each(t, func(rank int, e *Engine) error { return step(rank) })
	if err := c.engines[0].Shutdown(); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	err := step(1)
	if err == nil || !strings.Contains(err.Error(), "worker 0") || !strings.Contains(err.Error(), "left the job") {
		t.Fatalf("push_pull after the other worker left: %v", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("heard after %v", d)
	}
	t.Logf("after %v: %v", time.Since(start).Round(time.Millisecond), err)
}

// TestJoinUnevenInputs: workers with different numbers of batches. Each
// one that runs out calls Join, which answers the others' rounds with
// zeros until all have joined: every PushPull of the workers still going
// gets the sum of those that still have data, nobody hangs, and after the
// join the job goes on with every worker. With and without local
// aggregation (where the zeros come through shared memory), and with a
// tensor of several partitions on both servers.
func TestJoinUnevenInputs(t *testing.T) {
	for _, agg := range []string{"0", "1"} {
		t.Run("local aggregation "+agg, func(t *testing.T) {
			const workers = 3
			c := startCluster(t, workers, 2, "GOBPS_LOCAL_AGGREGATION", agg)
			steps := [workers]int{2, 5, 3}
			sizes := []int{5, 9000} // 9000 float32: 5 partitions of 8 KiB
			value := func(rank, step int) float32 { return float32((rank + 1) * (step + 1)) }
			c.each(t, func(rank int, e *Engine) error {
				ts := make([]*Tensor, len(sizes))
				for i, n := range sizes {
					var err error
					if ts[i], err = e.Declare(fmt.Sprintf("t%d", i), proto.Float32, n); err != nil {
						return err
					}
				}
				run := func(step int, v float32, want float32) error {
					for i, tn := range ts {
						buf := f32bytes(slices.Repeat([]float32{v}, sizes[i]))
						h, err := e.PushPull(tn, buf, Sum)
						if err != nil {
							return err
						}
						if err := h.WaitTimeout(20 * time.Second); err != nil {
							return fmt.Errorf("worker %d step %d: %w", rank, step, err)
						}
						for j := 0; j < sizes[i]; j += 997 {
							if got := math.Float32frombits(binary.LittleEndian.Uint32(buf[4*j:])); got != want {
								return fmt.Errorf("worker %d step %d tensor %d [%d]: %v, want %v", rank, step, i, j, got, want)
							}
						}
					}
					return nil
				}
				for step := range steps[rank] {
					var want float32
					for r := range workers {
						if step < steps[r] {
							want += value(r, step)
						}
					}
					if err := run(step, value(rank, step), want); err != nil {
						return err
					}
				}
				ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
				defer cancel()
				if err := e.Join(ctx); err != nil {
					return fmt.Errorf("worker %d: %w", rank, err)
				}
				// The next epoch: everyone again.
				return run(99, float32(rank), 0+1+2)
			})
		})
	}
}

// TestSuspendResume: BytePS's suspend and resume, for a job of the same
// size: operations in flight complete, new ones are refused while
// suspended, and after resume the job goes on with correct sums.
func TestSuspendResume(t *testing.T) {
	c := startCluster(t, 2, 1)
	sumOf := func(e *Engine, tn *Tensor, v float32) (float32, error) {
		buf := f32bytes([]float32{v, v})
		h, err := e.PushPull(tn, buf, Sum)
		if err != nil {
			return 0, err
		}
		if err := h.WaitTimeout(10 * time.Second); err != nil {
			return 0, err
		}
		return math.Float32frombits(binary.LittleEndian.Uint32(buf)), nil
	}
	c.each(t, func(rank int, e *Engine) error {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		tn, err := e.Declare("w", proto.Float32, 2)
		if err != nil {
			return err
		}
		// One operation still in flight when suspend is called.
		buf := f32bytes([]float32{1, 1})
		h, err := e.PushPull(tn, buf, Sum)
		if err != nil {
			return err
		}
		if err := e.Suspend(ctx); err != nil {
			return err
		}
		if !h.Poll() {
			return errors.New("suspend returned before the operation in flight completed")
		}
		if _, err := e.PushPull(tn, buf, Sum); !errors.Is(err, ErrSuspended) {
			return fmt.Errorf("push_pull while suspended: %v", err)
		}
		if err := e.Resume(ctx, 3, 1); err == nil || !strings.Contains(err.Error(), "not implemented") {
			return fmt.Errorf("resume with another size: %v", err)
		}
		if err := e.Resume(ctx, 2, 1); err != nil {
			return err
		}
		if got, err := sumOf(e, tn, float32(rank+1)); err != nil || got != 3 {
			return fmt.Errorf("after resume: %v, %v", got, err)
		}
		return nil
	})
}

// TestReserve: names reserved in the same order (BytePS's declare(name))
// keep their places whatever order the workers first use them in: the
// sums match up, over two servers, where declaring on first use in
// different orders would pair different tensors.
func TestReserve(t *testing.T) {
	c := startCluster(t, 2, 2)
	names := []string{"a", "b", "c"}
	sizes := map[string]int{"a": 3000, "b": 7, "c": 5000}
	c.each(t, func(rank int, e *Engine) error {
		for _, n := range names {
			if err := e.Reserve(n); err != nil {
				return err
			}
		}
		if err := e.Reserve("a"); err != nil {
			return fmt.Errorf("reserving again: %v", err)
		}
		order := names
		if rank == 0 {
			order = []string{"c", "a", "b"}
		}
		type op struct {
			h   *Handle
			buf []byte
			n   string
		}
		var ops []op
		for _, n := range order {
			tn, err := e.Declare(n, proto.Float32, sizes[n])
			if err != nil {
				return err
			}
			buf := f32bytes(slices.Repeat([]float32{float32(len(n)*10 + rank)}, sizes[n]))
			h, err := e.PushPull(tn, buf, Sum)
			if err != nil {
				return err
			}
			ops = append(ops, op{h, buf, n})
		}
		for _, o := range ops {
			if err := o.h.WaitTimeout(10 * time.Second); err != nil {
				return fmt.Errorf("worker %d %q: %w", rank, o.n, err)
			}
			if got := math.Float32frombits(binary.LittleEndian.Uint32(o.buf[len(o.buf)-4:])); got != 21 {
				return fmt.Errorf("worker %d %q: sum %v, want 21", rank, o.n, got)
			}
		}
		return nil
	})
}
