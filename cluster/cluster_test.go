package cluster

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"reflect"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gobps/gobps/proto"
	"github.com/gobps/gobps/rdma/memnet"
)

// fast is the member pacing used by the tests that need quick detection.
var fast = Options{HeartbeatInterval: 50 * time.Millisecond}

type testCoord struct {
	*Coordinator
	runErr chan error
}

// startCoordinator runs a coordinator on loopback until the test ends.
// registered, if not nil, is called for every registration.
func startCoordinator(t *testing.T, cfg CoordinatorConfig, registered func(Node)) *testCoord {
	t.Helper()
	return startCoordinatorWith(t, cfg, hooks{registered: registered})
}

// hooks are the coordinator's test hooks (see Coordinator): what its loop
// has done, in the order it did it.
type hooks struct {
	registered func(Node)
	handling   func(Node, proto.Op)
	sent       func(Node, proto.Op)
	ticked     func()
}

func startCoordinatorWith(t *testing.T, cfg CoordinatorConfig, h hooks) *testCoord {
	t.Helper()
	if cfg.Addr == "" {
		cfg.Addr = "127.0.0.1:0"
	}
	if cfg.HeartbeatTimeout == 0 {
		cfg.HeartbeatTimeout = 2 * time.Second
	}
	if cfg.Logf == nil {
		cfg.Logf = t.Logf // Close, in Cleanup, waits for Run: no logging after the test
	}
	c, err := NewCoordinator(cfg)
	if err != nil {
		t.Fatal(err)
	}
	c.registered, c.handling, c.sent, c.ticked = h.registered, h.handling, h.sent, h.ticked
	tc := &testCoord{Coordinator: c, runErr: make(chan error, 1)}
	go func() { tc.runErr <- c.Run(context.Background()) }()
	t.Cleanup(func() { c.Close() })
	return tc
}

// result waits for Run to return.
func (tc *testCoord) result(t *testing.T, ctx context.Context) error {
	t.Helper()
	select {
	case err := <-tc.runErr:
		return err
	case <-ctx.Done():
		t.Fatal("coordinator's Run did not return")
		return nil
	}
}

func timeout(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

func worker(id int) Registration {
	return Registration{Role: RoleWorker, WorkerID: id, LocalSize: 1, PID: 1000 + id}
}

func server(addr string, pid int) Registration {
	return Registration{Role: RoleServer, Addr: addr, WorkerID: -1, PID: pid}
}

// joinAll joins every registration concurrently; members leave at cleanup.
func joinAll(t *testing.T, ctx context.Context, addr string, opt Options, regs ...Registration) []*Member {
	t.Helper()
	ms := make([]*Member, len(regs))
	errs := make([]error, len(regs))
	var wg sync.WaitGroup
	for i, r := range regs {
		wg.Go(func() { ms[i], errs[i] = Join(ctx, addr, r, opt) })
	}
	wg.Wait()
	for _, m := range ms {
		if m != nil {
			t.Cleanup(func() { m.Leave() })
		}
	}
	for i, err := range errs {
		if err != nil {
			t.Fatalf("join %+v: %v", regs[i], err)
		}
	}
	return ms
}

// joinAsync joins in the background.
func joinAsync(ctx context.Context, addr string, reg Registration, opt Options) <-chan joined {
	ch := make(chan joined, 1)
	go func() {
		m, err := Join(ctx, addr, reg, opt)
		ch <- joined{m, err}
	}()
	return ch
}

type joined struct {
	m   *Member
	err error
}

func (j joined) must(t *testing.T) *Member {
	t.Helper()
	if j.err != nil {
		t.Fatal(j.err)
	}
	t.Cleanup(func() { j.m.Leave() })
	return j.m
}

func recv[T any](t *testing.T, ctx context.Context, ch <-chan T, what string) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-ctx.Done():
		t.Fatalf("timed out waiting for %s", what)
		panic("unreachable")
	}
}

// abort closes m's control connection abruptly, without Leave: a crash.
func abort(m *Member) { m.conn.Close() }

// countFailures returns member options that dial over TCP and count the
// attempts that found nobody listening.
func countFailures(opt Options, failed *atomic.Int64) Options {
	opt.Dial = func(ctx context.Context, addr string) (net.Conn, error) {
		var d net.Dialer
		c, err := d.DialContext(ctx, "tcp", addr)
		if err != nil {
			failed.Add(1)
		}
		return c, err
	}
	return opt
}

// eventually waits, polling, until cond holds; it fails the test if ctx
// ends first.
func eventually(t *testing.T, ctx context.Context, what string, cond func() bool) {
	t.Helper()
	for !cond() {
		select {
		case <-ctx.Done():
			t.Fatalf("timed out waiting for %s", what)
		case <-time.After(time.Millisecond):
		}
	}
}

func wantErr(t *testing.T, err error, substr ...string) {
	t.Helper()
	if err == nil {
		t.Fatalf("got no error, want one containing %q", substr)
	}
	for _, s := range substr {
		if !strings.Contains(err.Error(), s) {
			t.Fatalf("error %q does not contain %q", err, s)
		}
	}
}

func TestNode(t *testing.T) {
	for _, tc := range []struct {
		desc string
		n    Node
		want string
	}{
		{"server with address", Node{Role: RoleServer, Rank: 1, Addr: "127.0.0.1:4321", PID: 99}, "server 1 (127.0.0.1:4321, pid 99)"},
		{"worker", Node{Role: RoleWorker, Rank: 0, PID: 12, Host: "10.0.0.1"}, "worker 0 (pid 12)"},
		{"bare", Node{Role: RoleWorker, Rank: 3}, "worker 3"},
	} {
		if got := tc.n.String(); got != tc.want {
			t.Errorf("%s: got %q, want %q", tc.desc, got, tc.want)
		}
	}
	for _, tc := range []struct {
		r    Role
		rank int
		id   uint32
	}{
		{RoleScheduler, 0, 0x01000000},
		{RoleServer, 1, 0x02000001},
		{RoleWorker, 0xabcd, 0x0300abcd},
	} {
		if got := NodeID(tc.r, tc.rank); got != tc.id {
			t.Errorf("NodeID(%s, %d) = %#x, want %#x", tc.r, tc.rank, got, tc.id)
		}
		if r, rank, ok := SplitNodeID(tc.id); !ok || r != tc.r || rank != tc.rank {
			t.Errorf("SplitNodeID(%#x) = %s %d %v", tc.id, r, rank, ok)
		}
	}
	if _, _, ok := SplitNodeID(0x07000000); ok {
		t.Error("SplitNodeID accepted role code 7")
	}
	if SchedulerID != 1<<24 {
		t.Errorf("SchedulerID = %#x", SchedulerID)
	}
}

func TestRegistrationCheck(t *testing.T) {
	for _, tc := range []struct {
		desc string
		reg  Registration
		want string // "" for valid
	}{
		{"worker", worker(0), ""},
		{"auto worker", Registration{Role: RoleWorker, WorkerID: -1, LocalSize: 1}, ""},
		{"server", server("127.0.0.1:1", 1), ""},
		{"server on all interfaces", server(":80", 1), ""},
		{"no role", Registration{LocalSize: 1}, "role"},
		{"scheduler", Registration{Role: RoleScheduler, LocalSize: 1}, "role"},
		{"local size 0", Registration{Role: RoleWorker}, "local size"},
		{"local rank too big", Registration{Role: RoleWorker, LocalRank: 2, LocalSize: 2}, "local rank"},
		{"negative local rank", Registration{Role: RoleWorker, LocalRank: -1, LocalSize: 2}, "local rank"},
		{"worker id -2", Registration{Role: RoleWorker, WorkerID: -2, LocalSize: 1}, "worker id"},
		{"server without address", Registration{Role: RoleServer}, "data address"},
		{"server without port", server("127.0.0.1", 1), "data address"},
		{"server port 0", server("127.0.0.1:0", 1), "port"},
		{"negative pid", Registration{Role: RoleWorker, LocalSize: 1, PID: -1}, "pid"},
	} {
		err := tc.reg.check()
		if (err == nil) != (tc.want == "") || err != nil && !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: got %v, want %q", tc.desc, err, tc.want)
		}
	}
}

func TestCoordinatorConfig(t *testing.T) {
	for _, tc := range []struct {
		desc string
		cfg  CoordinatorConfig
		want string
	}{
		{"no address", CoordinatorConfig{NumWorkers: 1}, "address"},
		{"no workers", CoordinatorConfig{Addr: "127.0.0.1:0"}, "workers"},
		{"negative servers", CoordinatorConfig{Addr: "127.0.0.1:0", NumWorkers: 1, NumServers: -1}, "servers"},
		{"negative timeout", CoordinatorConfig{Addr: "127.0.0.1:0", NumWorkers: 1, HeartbeatTimeout: -1}, "heartbeat"},
		{"bad address", CoordinatorConfig{Addr: "no-such-host.invalid:x", NumWorkers: 1}, "cluster: coordinator"},
	} {
		c, err := NewCoordinator(tc.cfg)
		if err == nil {
			c.Close()
			t.Errorf("%s: no error", tc.desc)
		} else if !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v does not mention %q", tc.desc, err, tc.want)
		}
	}
	c, err := NewCoordinator(CoordinatorConfig{Addr: "127.0.0.1:0", NumWorkers: 1})
	if err != nil {
		t.Fatal(err)
	}
	if c.cfg.HeartbeatTimeout != DefaultHeartbeatTimeout {
		t.Errorf("default heartbeat timeout %v", c.cfg.HeartbeatTimeout)
	}
	c.Close()
	if err := c.Run(context.Background()); !errors.Is(err, ErrClosed) {
		t.Errorf("Run after Close: %v", err)
	}
}

// TestJoinBook: every member gets the same book; workers sit at their
// WorkerID, servers in arrival order, and an unspecified server host is
// replaced by the host it registered from.
func TestJoinBook(t *testing.T) {
	t.Parallel()
	ctx := timeout(t, 5*time.Second)
	regs := make(chan Node, 16)
	tc := startCoordinator(t, CoordinatorConfig{NumWorkers: 3, NumServers: 2}, func(n Node) { regs <- n })

	s0 := joinAsync(ctx, tc.Addr(), server("127.0.0.1:7001", 11), Options{})
	if n := recv(t, ctx, regs, "first server"); n.Rank != 0 {
		t.Fatalf("first server got rank %d", n.Rank)
	}
	s1 := joinAsync(ctx, tc.Addr(), server("0.0.0.0:7002", 12), Options{})
	recv(t, ctx, regs, "second server")
	ws := joinAll(t, ctx, tc.Addr(), Options{}, worker(2), worker(0), worker(1))
	ms := append([]*Member{recv(t, ctx, s0, "server 0 join").must(t), recv(t, ctx, s1, "server 1 join").must(t)}, ws...)

	want := Book{
		Workers: []Node{
			{Role: RoleWorker, Rank: 0, ID: 0x03000000, Host: "127.0.0.1", PID: 1000},
			{Role: RoleWorker, Rank: 1, ID: 0x03000001, Host: "127.0.0.1", PID: 1001},
			{Role: RoleWorker, Rank: 2, ID: 0x03000002, Host: "127.0.0.1", PID: 1002},
		},
		Servers: []Node{
			{Role: RoleServer, Rank: 0, ID: 0x02000000, Addr: "127.0.0.1:7001", Host: "127.0.0.1", PID: 11},
			{Role: RoleServer, Rank: 1, ID: 0x02000001, Addr: "127.0.0.1:7002", Host: "127.0.0.1", PID: 12},
		},
	}
	for _, m := range ms {
		if got := m.Book(); !reflect.DeepEqual(got, want) {
			t.Errorf("%s got book\n%+v\nwant\n%+v", m.Self(), got, want)
		}
	}
	for i, id := range []int{2, 0, 1} {
		if self := ws[i].Self(); self != want.Workers[id] {
			t.Errorf("worker with id %d: self %+v", id, self)
		}
	}
	if ms[0].Self() != want.Servers[0] || ms[1].Self() != want.Servers[1] {
		t.Errorf("servers: self %+v, %+v", ms[0].Self(), ms[1].Self())
	}
	// Book returns a copy.
	b := ms[0].Book()
	b.Workers[0].Addr = "mutated"
	if ms[0].Book().Workers[0].Addr != "" {
		t.Error("Book shares its slices with the caller")
	}
}

// TestAutoRanks: explicit ranks are WorkerID*LocalSize+LocalRank, the
// others fill the lowest free ranks.
func TestAutoRanks(t *testing.T) {
	t.Parallel()
	ctx := timeout(t, 5*time.Second)
	regs := make(chan Node, 16)
	tc := startCoordinator(t, CoordinatorConfig{NumWorkers: 4, NumServers: 1}, func(n Node) { regs <- n })

	var explicit []<-chan joined
	for _, r := range []Registration{
		{Role: RoleWorker, WorkerID: 1, LocalRank: 1, LocalSize: 2, PID: 3},
		{Role: RoleWorker, WorkerID: 0, LocalRank: 0, LocalSize: 2, PID: 0},
	} {
		explicit = append(explicit, joinAsync(ctx, tc.Addr(), r, Options{}))
		recv(t, ctx, regs, "explicit worker")
	}
	autos := joinAll(t, ctx, tc.Addr(), Options{},
		Registration{Role: RoleWorker, WorkerID: -1, LocalSize: 1, PID: 101},
		Registration{Role: RoleWorker, WorkerID: -1, LocalSize: 1, PID: 102},
		server("127.0.0.1:7000", 9))
	for _, ch := range explicit {
		recv(t, ctx, ch, "explicit join").must(t)
	}
	var ranks []int
	for _, m := range autos[:2] {
		ranks = append(ranks, m.Self().Rank)
	}
	slices.Sort(ranks)
	if !slices.Equal(ranks, []int{1, 2}) {
		t.Errorf("auto-assigned ranks %v, want [1 2]", ranks)
	}
	book := autos[0].Book()
	for rank, pid := range map[int]int{0: 0, 3: 3} {
		if book.Workers[rank].PID != pid {
			t.Errorf("rank %d is %s, want pid %d", rank, book.Workers[rank], pid)
		}
	}
}

// frame encodes one control frame.
func frame(op proto.Op, payload []byte) []byte {
	var b bytes.Buffer
	proto.WriteFrame(&b, proto.Header{Op: op}, payload)
	return b.Bytes()
}

// rawExchange writes b on a fresh connection and returns the OpError message
// the coordinator answers with; it checks that the connection is closed
// afterwards.
func rawExchange(t *testing.T, addr string, b []byte) string {
	t.Helper()
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(3 * time.Second))
	if _, err := conn.Write(b); err != nil {
		t.Fatal(err)
	}
	h, payload, err := proto.ReadFrame(conn, proto.MaxControlPayload)
	if err != nil {
		t.Fatalf("reading the coordinator's answer: %v", err)
	}
	if h.Op != proto.OpError || h.Sender != SchedulerID {
		t.Fatalf("answer is %s from %#x, want error from the scheduler", h.Op, h.Sender)
	}
	if _, err := io.Copy(io.Discard, conn); err != nil {
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			t.Fatal("connection left open after the error")
		}
	}
	return string(payload)
}

// TestRefused: bad registrations get a clear error and a closed connection,
// and the coordinator keeps serving the others.
func TestRefused(t *testing.T) {
	t.Parallel()
	ctx := timeout(t, 8*time.Second)
	regs := make(chan Node, 16)
	tc := startCoordinator(t, CoordinatorConfig{NumWorkers: 2, NumServers: 1}, func(n Node) { regs <- n })

	w0 := joinAsync(ctx, tc.Addr(), worker(0), Options{})
	recv(t, ctx, regs, "worker 0")
	_, err := Join(ctx, tc.Addr(), worker(0), Options{})
	wantErr(t, err, "refused", "worker rank 0", "already taken by worker 0 (pid 1000)")
	_, err = Join(ctx, tc.Addr(), worker(2), Options{})
	wantErr(t, err, "refused", "outside")

	mustJSON := func(v any) []byte {
		b, err := json.Marshal(v)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	oversized := make([]byte, proto.HeaderSize)
	(&proto.Header{Op: proto.OpRegister, Length: proto.MaxControlPayload + 1}).Encode(oversized)
	garbage := bytes.Repeat([]byte("GET / HTTP/1.1\r\n"), 8)
	for _, c := range []struct {
		desc  string
		bytes []byte
		want  string
	}{
		{"bad json", frame(proto.OpRegister, []byte(`{"role": `)), "malformed registration"},
		{"not json", frame(proto.OpRegister, []byte("hello")), "malformed registration"},
		{"heartbeat first", frame(proto.OpHeartbeat, nil), "first frame must be register, got heartbeat"},
		{"barrier first", frame(proto.OpBarrier, nil), "first frame must be register"},
		{"report first", frame(proto.OpReport, []byte("stall: forged")), "first frame must be register"},
		{"garbage", garbage, "bad frame: magic"},
		{"oversized", oversized, "exceeds"},
		{"scheduler role", frame(proto.OpRegister, mustJSON(Registration{Role: RoleScheduler})), "role"},
		{"bad local rank", frame(proto.OpRegister, mustJSON(Registration{Role: RoleWorker, LocalRank: 3, LocalSize: 2})), "local rank"},
		{"server without address", frame(proto.OpRegister, mustJSON(Registration{Role: RoleServer})), "data address"},
		{"worker id out of range", frame(proto.OpRegister, mustJSON(Registration{Role: RoleWorker, WorkerID: 1 << 40, LocalSize: 1 << 40})), "outside"},
		{"local size too big", frame(proto.OpRegister, mustJSON(Registration{Role: RoleWorker, WorkerID: 1, LocalSize: 3})), "outside"},
	} {
		if msg := rawExchange(t, tc.Addr(), c.bytes); !strings.Contains(msg, c.want) {
			t.Errorf("%s: coordinator said %q, want %q", c.desc, msg, c.want)
		}
	}
	// A second server does not fit.
	s0 := joinAsync(ctx, tc.Addr(), server("127.0.0.1:7000", 1), Options{})
	recv(t, ctx, regs, "server")
	_, err = Join(ctx, tc.Addr(), server("127.0.0.1:7001", 2), Options{})
	wantErr(t, err, "refused", "all 1 server ranks are taken")

	ms := joinAll(t, ctx, tc.Addr(), Options{}, worker(1))
	recv(t, ctx, w0, "worker 0").must(t)
	recv(t, ctx, s0, "server 0").must(t)
	if got := len(ms[0].Book().Workers); got != 2 {
		t.Fatalf("book has %d workers", got)
	}
	_, err = Join(ctx, tc.Addr(), Registration{Role: RoleWorker, WorkerID: -1, LocalSize: 1}, Options{})
	wantErr(t, err, "refused", "already complete")
}

// TestJoinCancelled: a node that gives up before the book frees its rank.
func TestJoinCancelled(t *testing.T) {
	t.Parallel()
	ctx := timeout(t, 5*time.Second)
	regs := make(chan Node, 16)
	tc := startCoordinator(t, CoordinatorConfig{NumWorkers: 2}, func(n Node) { regs <- n })

	short, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
	defer cancel()
	_, err := Join(short, tc.Addr(), worker(0), Options{})
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("got %v, want a deadline error", err)
	}
	wantErr(t, err, "waiting for the address book")
	ms := joinAll(t, ctx, tc.Addr(), fast, worker(0), worker(1))
	if ms[0].Self().Rank != 0 {
		t.Fatalf("rank %d", ms[0].Self().Rank)
	}
	for _, m := range ms {
		if err := m.Leave(); err != nil {
			t.Fatal(err)
		}
	}
	if err := tc.result(t, ctx); err != nil {
		t.Fatalf("Run: %v", err)
	}
}

// TestJoinBeforeCoordinator: Join keeps dialling until the coordinator is up,
// and gives up when its context ends.
func TestJoinBeforeCoordinator(t *testing.T) {
	t.Parallel()
	ctx := timeout(t, 5*time.Second)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()

	short, cancel := context.WithTimeout(ctx, 150*time.Millisecond)
	defer cancel()
	_, err = Join(short, addr, worker(0), Options{})
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("got %v, want a deadline error", err)
	}
	wantErr(t, err, "not reachable")

	// Join before the coordinator exists: it must keep trying. Start the
	// coordinator once Join has failed to connect twice.
	var failed atomic.Int64
	j := joinAsync(ctx, addr, worker(0), countFailures(fast, &failed))
	eventually(t, ctx, "two failed attempts to connect", func() bool { return failed.Load() >= 2 })
	tc := startCoordinator(t, CoordinatorConfig{Addr: addr, NumWorkers: 1}, nil)
	m := recv(t, ctx, j, "join").must(t)
	if err := m.Leave(); err != nil {
		t.Fatal(err)
	}
	if err := tc.result(t, ctx); err != nil {
		t.Fatalf("Run: %v", err)
	}
}

// TestBarrier: barriers on All and Workers, three rounds each; nobody is
// released before the last member enters.
func TestBarrier(t *testing.T) {
	t.Parallel()
	ctx := timeout(t, 5*time.Second)
	// The coordinator's log of barrier frames handled and releases sent, in
	// the order its loop did them.
	var logMu sync.Mutex
	var log []string
	entered := make(chan Node, 64)
	tc := startCoordinatorWith(t, CoordinatorConfig{NumWorkers: 2, NumServers: 1}, hooks{
		handling: func(n Node, op proto.Op) {
			if op == proto.OpBarrier {
				logMu.Lock()
				log = append(log, "entered "+n.String())
				logMu.Unlock()
				entered <- n
			}
		},
		sent: func(n Node, op proto.Op) {
			if op == proto.OpBarrierOK {
				logMu.Lock()
				log = append(log, "released "+n.String())
				logMu.Unlock()
			}
		},
	})
	ms := joinAll(t, ctx, tc.Addr(), fast, worker(0), worker(1), server("127.0.0.1:7000", 1))

	for round := range 3 {
		for _, g := range []Group{All, Workers} {
			var group []*Member
			for _, m := range ms {
				if g.has(m.Self().Role) {
					group = append(group, m)
				}
			}
			last := round % len(group)
			var lastIn time.Time
			out := make([]time.Time, len(group))
			errs := make([]error, len(group))
			logMu.Lock()
			log = log[:0]
			logMu.Unlock()
			var wg sync.WaitGroup
			enter := func(i int, m *Member) {
				wg.Go(func() {
					errs[i] = m.Barrier(ctx, g)
					out[i] = time.Now()
				})
			}
			// Everyone but the last enters, and the coordinator has
			// handled each of them, before the last one enters.
			for i, m := range group {
				if i != last {
					enter(i, m)
				}
			}
			for range len(group) - 1 {
				recv(t, ctx, entered, "a barrier entry")
			}
			lastIn = time.Now()
			enter(last, group[last])
			wg.Wait()
			recv(t, ctx, entered, "the last barrier entry")
			logMu.Lock()
			if want := "entered " + group[last].Self().String(); log[len(group)-1] != want {
				t.Fatalf("barrier %s round %d: the coordinator's log is %q; want everyone released after %q", g, round+1, log, want)
			}
			logMu.Unlock()
			for i := range group {
				if errs[i] != nil {
					t.Fatalf("barrier %s round %d: %v", g, round+1, errs[i])
				}
				if out[i].Before(lastIn) {
					t.Fatalf("barrier %s round %d: %s released before %s entered", g, round+1, group[i].Self(), group[last].Self())
				}
			}
		}
	}
	wantErr(t, ms[2].Barrier(ctx, Workers), "server 0", "not in the group")
	wantErr(t, ms[0].Barrier(ctx, Group(0)), "unknown group")

	// A barrier abandoned by its context does not break the others' next one.
	short, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	defer cancel()
	if err := ms[0].Barrier(short, Workers); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("lonely barrier: %v", err)
	}
	if err := ms[1].Barrier(ctx, Workers); err != nil {
		t.Fatalf("barrier completing the abandoned round: %v", err)
	}
}

// TestAbruptClose: a crashed node is reported to every other node within a
// second; later barriers name it; the job still ends, and Run names it.
func TestAbruptClose(t *testing.T) {
	t.Parallel()
	ctx := timeout(t, 5*time.Second)
	tc := startCoordinator(t, CoordinatorConfig{NumWorkers: 3, NumServers: 1}, nil)
	ms := joinAll(t, ctx, tc.Addr(), Options{}, worker(0), worker(1), worker(2), server("127.0.0.1:7000", 7))
	crashed, others := ms[2], []*Member{ms[0], ms[1], ms[3]}

	start := time.Now()
	abort(crashed)
	within := timeout(t, time.Second)
	for _, m := range others {
		ev := recv(t, within, m.Events(), fmt.Sprintf("%s to hear of the crash", m.Self()))
		if ev.Node != crashed.Self() || !strings.HasPrefix(ev.Reason, "connection lost") {
			t.Errorf("%s heard %+v", m.Self(), ev)
		}
	}
	t.Logf("crash reported to all after %v", time.Since(start))
	recv(t, ctx, crashed.Done(), "crashed member's Done")
	if crashed.Err() == nil {
		t.Error("crashed member ended without an error")
	}
	wantErr(t, others[0].Barrier(ctx, All), "worker 2 (pid 1002) died: connection lost")
	if err := others[2].Barrier(ctx, Servers); err != nil {
		t.Fatalf("barrier of the servers, all alive: %v", err)
	}

	// The job still ends: the live workers leave, the server is told to shut
	// down and leaves, and Run reports the crash.
	for _, m := range others[:2] {
		if err := m.Leave(); err != nil {
			t.Fatal(err)
		}
	}
	recv(t, ctx, others[2].ShutdownRequested(), "shutdown")
	if err := others[2].Leave(); err != nil {
		t.Fatal(err)
	}
	wantErr(t, tc.result(t, ctx), "cluster: worker 2 (pid 1002) died: connection lost")
}

// TestHeartbeatTimeout: a hung node is reported within HeartbeatTimeout plus
// a tick, and a barrier waiting on it fails naming it.
func TestHeartbeatTimeout(t *testing.T) {
	t.Parallel()
	ctx := timeout(t, 5*time.Second)
	const hb = 300 * time.Millisecond
	// Over the in-memory network, which counts what each member writes
	// (link i is member i's: they dial one at a time) and stalls the hung
	// one's writes.
	var wmu sync.Mutex
	writes := map[uint64]int64{}
	network := memnet.New(memnet.Options{Policy: func(w memnet.Write) memnet.Action {
		if w.Dir == memnet.FromDialer {
			wmu.Lock()
			writes[w.Link]++
			wmu.Unlock()
		}
		return memnet.Action{}
	}})
	t.Cleanup(func() { network.Close() })
	ln, err := network.Listen("coordinator:1")
	if err != nil {
		t.Fatal(err)
	}
	var ticks atomic.Int64
	tc := startCoordinatorWith(t, CoordinatorConfig{Listener: ln, NumWorkers: 2, NumServers: 1, HeartbeatTimeout: hb}, hooks{
		ticked: func() { ticks.Add(1) },
	})
	opt := fast
	opt.Dial = network.Dial
	var joins []<-chan joined
	for i, reg := range []Registration{worker(0), worker(1), server("127.0.0.1:7000", 7)} {
		joins = append(joins, joinAsync(ctx, tc.Addr(), reg, opt))
		eventually(t, ctx, "a member's connection", func() bool { return len(network.Links()) > i })
	}
	links := network.Links()
	var ms []*Member
	for _, j := range joins {
		ms = append(ms, recv(t, ctx, j, "join").must(t))
	}
	hung, others := ms[1], []*Member{ms[0], ms[2]}

	barrierErrs := make(chan error, len(others))
	for _, m := range others {
		go func() { barrierErrs <- m.Barrier(ctx, All) }()
	}
	// The healthy nodes wait well past the timeout before the hang: their
	// waiting must not count as silence. Wait until each has written
	// heartbeats for more than twice the timeout and the coordinator has
	// checked for silence since.
	beats := func() int64 {
		wmu.Lock()
		defer wmu.Unlock()
		return min(writes[links[0].ID()], writes[links[2].ID()])
	}
	from := beats()
	enough := int64(2*hb/fast.HeartbeatInterval) + 1
	eventually(t, ctx, "heartbeats over twice the timeout", func() bool { return beats()-from >= enough })
	tick := ticks.Load()
	eventually(t, ctx, "two checks of silence", func() bool { return ticks.Load() >= tick+2 })
	select {
	case err := <-barrierErrs:
		t.Fatalf("barrier returned before the last node entered: %v", err)
	default:
	}
	links[1].Stall(memnet.FromDialer)
	start := time.Now()
	within := timeout(t, hb+time.Second)
	for _, m := range others {
		ev := recv(t, within, m.Events(), fmt.Sprintf("%s to hear of the hang", m.Self()))
		if ev.Node != hung.Self() || ev.Reason != "no heartbeat for 300ms" {
			t.Errorf("%s heard %+v", m.Self(), ev)
		}
	}
	t.Logf("hang reported to all after %v", time.Since(start))
	for range others {
		wantErr(t, recv(t, within, barrierErrs, "barrier error"), "barrier all (round 1)", "worker 1 (pid 1001) died: no heartbeat")
	}
	recv(t, ctx, hung.Done(), "hung member's Done")
	wantErr(t, hung.Err(), "dropped this node", "no heartbeat for 300ms")
	wantErr(t, hung.Leave(), "no heartbeat")
	// The survivors stay in the job.
	select {
	case <-others[0].Done():
		t.Fatalf("healthy member ended: %v", others[0].Err())
	default:
	}
}

// TestShutdown: workers leave, servers are told to shut down, servers leave,
// Run returns nil, and every membership ended cleanly.
func TestShutdown(t *testing.T) {
	t.Parallel()
	ctx := timeout(t, 5*time.Second)
	tc := startCoordinator(t, CoordinatorConfig{NumWorkers: 2, NumServers: 2}, nil)
	ms := joinAll(t, ctx, tc.Addr(), fast, worker(0), worker(1), server("127.0.0.1:7000", 7), server("127.0.0.1:7001", 8))
	workers, servers := ms[:2], ms[2:]

	if err := workers[0].Leave(); err != nil {
		t.Fatal(err)
	}
	if err := workers[0].Leave(); err != nil {
		t.Fatalf("second Leave: %v", err)
	}
	wantErr(t, workers[0].Barrier(ctx, Workers), "membership ended")
	// The coordinator has handled the departure (Leave returns once it has
	// closed the connection). A shutdown it sent the servers then would
	// reach them before the answer to a barrier they enter now.
	var wg sync.WaitGroup
	for _, s := range servers {
		wg.Go(func() {
			if err := s.Barrier(ctx, Servers); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	for _, s := range servers {
		select {
		case <-s.ShutdownRequested():
			t.Fatal("shutdown requested while a worker is still in the job")
		default:
		}
	}
	if err := workers[1].Leave(); err != nil {
		t.Fatal(err)
	}
	for _, s := range servers {
		recv(t, ctx, s.ShutdownRequested(), "shutdown")
		if err := s.Leave(); err != nil {
			t.Fatal(err)
		}
	}
	if err := tc.result(t, ctx); err != nil {
		t.Fatalf("Run: %v", err)
	}
	for i, m := range ms {
		recv(t, ctx, m.Done(), "Done")
		if m.Err() != nil {
			t.Errorf("%s: %v", m.Self(), m.Err())
		}
		// Worker 0 left while worker 1 still ran: the others heard of
		// it, naming it, and of nothing else. Worker 1 left last: no
		// one hears of that.
		if i != 0 {
			ev := recv(t, ctx, m.Events(), "worker 0's departure")
			if !ev.Left || ev.Node.Role != RoleWorker || ev.Node.Rank != 0 || !strings.Contains(ev.String(), "worker 0 (pid 1000) left the job") {
				t.Errorf("%s heard %+v (%s)", m.Self(), ev, ev)
			}
		}
		select {
		case ev := <-m.Events():
			t.Errorf("%s heard %+v", m.Self(), ev)
		default:
		}
	}
}

// TestCoordinatorClose: members notice the coordinator going away.
func TestCoordinatorClose(t *testing.T) {
	t.Parallel()
	ctx := timeout(t, 5*time.Second)
	tc := startCoordinator(t, CoordinatorConfig{NumWorkers: 1, NumServers: 1}, nil)
	ms := joinAll(t, ctx, tc.Addr(), fast, worker(0), server("127.0.0.1:7000", 7))
	wait := make(chan error, 1)
	go func() { wait <- ms[0].Barrier(ctx, All) }()
	if err := tc.Close(); err != nil {
		t.Fatal(err)
	}
	if err := tc.result(t, ctx); !errors.Is(err, ErrClosed) {
		t.Fatalf("Run: %v", err)
	}
	within := timeout(t, time.Second)
	for _, m := range ms {
		recv(t, within, m.Done(), "Done")
		wantErr(t, m.Err(), "cluster: lost coordinator at "+tc.Addr())
		wantErr(t, m.Leave(), "lost coordinator")
	}
	wantErr(t, recv(t, within, wait, "barrier"), "barrier all", "lost coordinator")
	if err := tc.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
}

// TestSilentCoordinator: a coordinator that stops talking (a hung process, a
// vanished machine) is noticed after its own heartbeat timeout.
func TestSilentCoordinator(t *testing.T) {
	t.Parallel()
	ctx := timeout(t, 5*time.Second)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	served := make(chan struct{})
	go func() {
		defer close(served)
		conn, err := ln.Accept()
		if err != nil {
			return
		}
		defer conn.Close()
		if _, _, err := proto.ReadFrame(conn, proto.MaxControlPayload); err != nil {
			return
		}
		self := Node{Role: RoleWorker, ID: NodeID(RoleWorker, 0)}
		b, _ := json.Marshal(bookMsg{Self: self, Book: Book{Workers: []Node{self}}, HeartbeatTimeout: 200 * time.Millisecond})
		proto.WriteFrame(conn, proto.Header{Op: proto.OpBook, Sender: SchedulerID}, b)
		io.Copy(io.Discard, conn) // read heartbeats, say nothing
	}()
	m, err := Join(ctx, ln.Addr().String(), worker(0), Options{HeartbeatInterval: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	recv(t, ctx, m.Done(), "Done")
	wantErr(t, m.Err(), "lost coordinator", "nothing heard for 200ms")
	if d := time.Since(start); d > time.Second {
		t.Errorf("noticed after %v", d)
	}
	recv(t, ctx, served, "fake coordinator")
}

// TestProtocolErrorAfterBook: a registered node that sends garbage is dropped
// with the reason, and the others hear of its death.
func TestProtocolErrorAfterBook(t *testing.T) {
	t.Parallel()
	ctx := timeout(t, 5*time.Second)
	tc := startCoordinator(t, CoordinatorConfig{NumWorkers: 2}, nil)
	w0 := joinAsync(ctx, tc.Addr(), worker(0), fast)

	conn, err := net.Dial("tcp", tc.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(3 * time.Second))
	reg, _ := json.Marshal(worker(1))
	conn.Write(frame(proto.OpRegister, reg))
	for {
		h, _, err := proto.ReadFrame(conn, proto.MaxControlPayload)
		if err != nil {
			t.Fatal(err)
		}
		if h.Op == proto.OpBook {
			break
		}
	}
	m := recv(t, ctx, w0, "worker 0").must(t)
	conn.Write(frame(proto.OpBook, []byte("{}"))) // nodes do not send books
	for {
		h, payload, err := proto.ReadFrame(conn, proto.MaxControlPayload)
		if err != nil {
			t.Fatal(err)
		}
		if h.Op == proto.OpError {
			if !strings.Contains(string(payload), "unexpected book") {
				t.Errorf("coordinator said %q", payload)
			}
			break
		}
	}
	ev := recv(t, ctx, m.Events(), "death event")
	if ev.Node.Rank != 1 || !strings.Contains(ev.Reason, "protocol error: unexpected book") {
		t.Errorf("heard %+v", ev)
	}
}

// TestRunCancelled: Run returns ctx.Err() and members lose the coordinator.
func TestRunCancelled(t *testing.T) {
	t.Parallel()
	ctx := timeout(t, 5*time.Second)
	c, err := NewCoordinator(CoordinatorConfig{Addr: "127.0.0.1:0", NumWorkers: 1, HeartbeatTimeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	runCtx, cancel := context.WithCancel(ctx)
	runErr := make(chan error, 1)
	go func() { runErr <- c.Run(runCtx) }()
	ms := joinAll(t, ctx, c.Addr(), fast, worker(0))
	cancel()
	if err := recv(t, ctx, runErr, "Run"); !errors.Is(err, context.Canceled) {
		t.Fatalf("Run: %v", err)
	}
	recv(t, ctx, ms[0].Done(), "Done")
	wantErr(t, ms[0].Err(), "lost coordinator")
	if err := c.Run(ctx); err == nil {
		t.Fatal("second Run succeeded")
	}
}

// TestServerRanks: a server may ask for its rank (GOBPS_SERVER_ID), so a
// launcher's labels match the ranks in error messages; a taken rank is
// refused.
func TestServerRanks(t *testing.T) {
	t.Parallel()
	ctx := timeout(t, 5*time.Second)
	regs := make(chan Node, 16)
	tc := startCoordinator(t, CoordinatorConfig{NumWorkers: 1, NumServers: 2}, func(n Node) { regs <- n })
	first := joinAsync(ctx, tc.Addr(), Registration{Role: RoleServer, Addr: "127.0.0.1:7001", WorkerID: 1, PID: 11}, Options{})
	recv(t, ctx, regs, "server asking for rank 1")
	dup := recv(t, ctx, joinAsync(ctx, tc.Addr(), Registration{Role: RoleServer, Addr: "127.0.0.1:7003", WorkerID: 1, PID: 13}, Options{}), "duplicate")
	if dup.err == nil || !strings.Contains(dup.err.Error(), "server rank 1 is already taken") {
		t.Fatalf("duplicate server rank: %v", dup.err)
	}
	ms := joinAll(t, ctx, tc.Addr(), Options{}, server("127.0.0.1:7002", 12), worker(0))
	recv(t, ctx, first, "server 1").must(t)
	book := ms[1].Book()
	if book.Servers[0].PID != 12 || book.Servers[1].PID != 11 {
		t.Fatalf("servers %v, want pid 12 at rank 0 and pid 11 at rank 1", book.Servers)
	}
}

// TestReport: a node's report (a stall report, say) is logged by the
// coordinator at WARN, naming the node, on one line of valid UTF-8, cut at
// MaxReport bytes.
func TestReport(t *testing.T) {
	t.Parallel()
	ctx := timeout(t, 8*time.Second)
	lines := make(chan string, 64)
	tc := startCoordinator(t, CoordinatorConfig{NumWorkers: 1, NumServers: 1, Logf: func(format string, a ...any) {
		lines <- fmt.Sprintf(format, a...)
	}}, nil)
	ms := joinAll(t, ctx, tc.Addr(), Options{}, worker(0), server("127.0.0.1:7000", 7))
	long := "stall: worker(s) [0] have not pushed \"w\"\nsecond line \xff" + strings.Repeat("x", 2*MaxReport)
	if err := ms[1].Report(long); err != nil {
		t.Fatal(err)
	}
	for {
		l := recv(t, ctx, lines, "the report in the coordinator's log")
		if !strings.Contains(l, "reports:") {
			continue
		}
		want := `WARNING: server 0 (127.0.0.1:7000, pid 7) reports: stall: worker(s) [0] have not pushed "w" second line ` + "\uFFFDxxx"
		if !strings.HasPrefix(l, want) {
			t.Errorf("logged %.200q, want it to start %q", l, want)
		}
		if n := len(l) - len("WARNING: server 0 (127.0.0.1:7000, pid 7) reports: "); n > MaxReport+2 {
			t.Errorf("report of %d bytes logged whole (%d)", len(long), n)
		}
		break
	}
	ms[1].Leave()
	if err := ms[1].Report("late"); err == nil {
		t.Error("Report after Leave: no error")
	}
}
