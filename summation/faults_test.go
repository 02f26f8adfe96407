package summation

import (
	"context"
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gobps/gobps/proto"
	"github.com/gobps/gobps/rdma"
	"github.com/gobps/gobps/rdma/memnet"
	"github.com/gobps/gobps/rdma/tcp"
)

// TestFaultSchedules runs the server against raw workers over memnet with
// a seeded random schedule of faults (broken links, stalled directions,
// writes failed part way, delays that reorder the lanes of a worker), one
// schedule per seed. After each it checks that every answer a worker got
// was to a request of its own on that connection and carries the exact
// sum of that round's pushes; that a worker gave up only where the
// schedule broke or failed a write; that no OpError came (no fault
// warrants one); and that no goroutine of the server is left the moment
// Close returns. A failure names the seed; GOBPS_FAULT_SEED=n runs that
// one alone. A panic in the server ends the test binary: the seed it ran
// is the last one written to stderr before the trace.
func TestFaultSchedules(t *testing.T) {
	seeds := uint64(2000)
	if raceEnabled {
		seeds = 200
	}
	if testing.Short() {
		seeds /= 10
	}
	first := uint64(0)
	if s := os.Getenv("GOBPS_FAULT_SEED"); s != "" {
		if _, err := fmt.Sscan(s, &first); err != nil {
			t.Fatalf("GOBPS_FAULT_SEED=%q: %v", s, err)
		}
		seeds = 1
	}
	start := time.Now()
	var broken, completed int
	for seed := first; seed < first+seeds; seed++ {
		fmt.Fprintf(os.Stderr, "TestFaultSchedules: seed %d\n", seed)
		r := runSchedule(t, seed)
		if t.Failed() {
			t.Logf("seed %d: %s", seed, r.summary)
			t.Fatalf("seed %d failed: rerun it alone with GOBPS_FAULT_SEED=%d", seed, seed)
		}
		if r.faulted {
			broken++
		}
		if r.complete {
			completed++
		}
	}
	t.Logf("%d schedules in %v: %d with a broken link or a failed write, %d with every round answered", seeds, time.Since(start).Round(time.Millisecond), broken, completed)
	if seeds >= 100 && (broken == 0 || completed == 0) {
		t.Fatalf("the schedules are not mixed: %d broke something, %d completed", broken, completed)
	}
}

// schedule is what one seed draws: the job's shape and its faults.
type schedule struct {
	seed    uint64
	workers int
	lanes   int // connections per worker
	engines int
	rounds  int
	keys    []proto.Decl // int32 keys
	faults  memnet.Faults
}

func drawSchedule(seed uint64) schedule {
	rng := rand.New(rand.NewPCG(seed, 0x5eed))
	s := schedule{
		seed:    seed,
		workers: 2 + rng.IntN(3),
		lanes:   1 + rng.IntN(2),
		engines: 1 + rng.IntN(2),
		rounds:  2 + rng.IntN(3),
	}
	for k := range 1 + rng.IntN(3) {
		n := 1 + rng.IntN(64)
		if rng.IntN(8) == 0 {
			n = proto.PieceBytes/4 + 1 + rng.IntN(proto.PieceBytes/16) // pushed in chunks, answered in pieces
		}
		s.keys = append(s.keys, proto.Decl{Key: proto.MakeKey(uint32(k), 0), DType: proto.Int32, Root: proto.NoRoot, Bytes: uint64(4 * n)})
	}
	s.faults = memnet.Faults{
		Stall: 0.05, MaxStall: 500 * time.Microsecond,
		Delay: 0.2, MaxDelay: 200 * time.Microsecond,
		LinkDelay: time.Duration(rng.IntN(2)) * 300 * time.Microsecond,
	}
	if rng.IntN(3) > 0 { // a third of the schedules only delay and stall
		s.faults.Break = 0.02 * rng.Float64()
		s.faults.Fail = 0.02 * rng.Float64()
	}
	return s
}

func (s schedule) String() string {
	sizes := make([]string, len(s.keys))
	for i, k := range s.keys {
		sizes[i] = fmt.Sprint(k.Bytes)
	}
	return fmt.Sprintf("%d workers × %d lanes, %d engines, %d rounds, keys of %s bytes, faults %+v",
		s.workers, s.lanes, s.engines, s.rounds, strings.Join(sizes, ", "), s.faults)
}

// value is worker w's element i of key k in round r.
func (s schedule) value(w, k, r, i int) int32 {
	return int32((i*7+k*13+r*5+int(s.seed))%19-9) * int32(w+1)
}

// sum is the expected sum of key k in round r.
func (s schedule) sum(k, r int) []byte {
	n := int(s.keys[k].Bytes / 4)
	b := make([]byte, 4*n)
	for i := range n {
		var v int32
		for w := range s.workers {
			v += s.value(w, k, r, i)
		}
		binary.LittleEndian.PutUint32(b[4*i:], uint32(v))
	}
	return b
}

func (s schedule) push(w, k, r int) []byte {
	n := int(s.keys[k].Bytes / 4)
	b := make([]byte, 4*n)
	for i := range n {
		binary.LittleEndian.PutUint32(b[4*i:], uint32(s.value(w, k, r, i)))
	}
	return b
}

// outcome is what a schedule came to.
type outcome struct {
	faulted  bool // the schedule broke a link or failed a write
	complete bool // every worker got every round
	summary  string
}

// request is one pull (or push with FlagPull) a lane made.
type request struct {
	key, round int
	want       []byte
	got        int  // bytes of the answer received
	whole      bool // a whole answer came (no pieces may follow)
	seen       []bool
}

// lane is one connection of a fault worker: its handler records answers
// and checks them as they come.
type lane struct {
	w    *faultWorker
	conn rdma.Conn

	mu     sync.Mutex
	reqs   map[uint64]*request
	acked  map[uint64]bool // declaration acks by request id
	closed bool
}

func (l *lane) Dest(_ rdma.Conn, h *proto.Header) ([]byte, error) { return make([]byte, h.Length), nil }

func (l *lane) Handle(_ rdma.Conn, h *proto.Header, p []byte, err error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	defer l.w.notify()
	if err != nil {
		l.w.violation("frame %v refused by the transport: %v", h, err)
		return
	}
	switch h.Op {
	case proto.OpDeclareAck:
		l.acked[h.ReqID] = true
	case proto.OpPullResp:
		rq := l.reqs[h.ReqID]
		if rq == nil {
			l.w.violation("an answer %v for request %d, which this connection did not make", h, h.ReqID)
			return
		}
		if h.Key != l.w.s.keys[rq.key].Key || h.Round != uint64(rq.round) {
			l.w.violation("request %d asked for key %s round %d, answered with %v", h.ReqID, l.w.s.keys[rq.key].Key, rq.round, h)
			return
		}
		off := 0
		if h.Flags&proto.FlagPiece != 0 {
			off = int(h.Piece) * proto.PieceBytes
			if rq.whole || off+len(p) > len(rq.want) || rq.seen[h.Piece] {
				l.w.violation("request %d: piece %d of %d bytes does not fit (whole %v, %d of %d bytes in)", h.ReqID, h.Piece, len(p), rq.whole, rq.got, len(rq.want))
				return
			}
			rq.seen[h.Piece] = true
		} else {
			if rq.got != 0 || len(p) != len(rq.want) {
				l.w.violation("request %d: a whole answer of %d bytes after %d bytes, want %d", h.ReqID, len(p), rq.got, len(rq.want))
				return
			}
			rq.whole = true
		}
		if string(p) != string(rq.want[off:off+len(p)]) {
			l.w.violation("request %d (key %s round %d): wrong sum at bytes %d..%d", h.ReqID, h.Key, rq.round, off, off+len(p))
			return
		}
		rq.got += len(p)
	case proto.OpError:
		l.w.violation("OpError for request %d (%v): %s", h.ReqID, h, p)
	default:
		l.w.violation("unexpected %v", h)
	}
}

func (l *lane) Closed(rdma.Conn, error) {
	l.mu.Lock()
	l.closed = true
	l.mu.Unlock()
	l.w.notify()
}

// answered reports whether request id has its whole answer, and whether
// the lane has closed.
func (l *lane) answered(id uint64) (done, closed bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	rq := l.reqs[id]
	return rq != nil && rq.got == len(rq.want), l.closed
}

// faultWorker pushes and pulls every key of every round on its lanes
// until it is done, a lane fails, or the schedule stops.
type faultWorker struct {
	s     schedule
	rank  int
	lanes []*lane
	wake  chan struct{}
	rec   *recorder
}

func (w *faultWorker) notify() {
	select {
	case w.wake <- struct{}{}:
	default:
	}
}

func (w *faultWorker) violation(format string, args ...any) {
	w.rec.add(fmt.Sprintf("worker %d: ", w.rank) + fmt.Sprintf(format, args...))
}

// recorder collects what went wrong in a schedule, from any goroutine.
type recorder struct {
	mu   sync.Mutex
	errs []string
}

func (r *recorder) add(s string) {
	r.mu.Lock()
	r.errs = append(r.errs, s)
	r.mu.Unlock()
}

func (r *recorder) all() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.errs...)
}

// run plays the worker's part; it returns whether every round was
// answered. stop ends the wait for an answer (another worker gave up).
func (w *faultWorker) run(stop <-chan struct{}, deadline time.Time) bool {
	defer func() {
		for _, l := range w.lanes {
			l.conn.Close()
		}
	}()
	wait := func(l *lane, id uint64, ok func() bool) bool {
		timer := time.NewTimer(time.Until(deadline))
		defer timer.Stop()
		for !ok() {
			if _, closed := l.answered(id); closed {
				return false
			}
			select {
			case <-w.wake:
			case <-stop:
				return false
			case <-timer.C:
				return false
			}
		}
		return true
	}
	// Declare every key on the first lane, as the engine does.
	l0 := w.lanes[0]
	if err := l0.conn.Send(proto.Header{Op: proto.OpDeclare, ReqID: 1}, proto.EncodeDecls(w.s.keys)); err != nil {
		return false
	}
	if !wait(l0, 1, func() bool { l0.mu.Lock(); defer l0.mu.Unlock(); return l0.acked[1] }) {
		return false
	}
	pullSep := w.rank%2 == 1 // odd workers pull with a frame of their own
	id := uint64(100)
	type sent struct {
		l  *lane
		id uint64
	}
	byRound := make([][]sent, w.s.rounds)
	for r := range w.s.rounds {
		// A worker pushes a round once it has the answers of the one
		// before (the engine's protocol: the server's window is two
		// rounds, and a third is held only for the served notices that
		// race it).
		if r > 0 {
			for _, x := range byRound[r-1] {
				if !wait(x.l, x.id, func() bool { done, _ := x.l.answered(x.id); return done }) {
					return false
				}
			}
		}
		for k, d := range w.s.keys {
			l := w.lanes[k%len(w.lanes)]
			id++
			l.mu.Lock()
			l.reqs[id] = &request{key: k, round: r, want: w.s.sum(k, r), seen: make([]bool, (d.Bytes+proto.PieceBytes-1)/proto.PieceBytes)}
			l.mu.Unlock()
			h := proto.Header{Op: proto.OpPush, DType: proto.Int32, Key: d.Key, Round: uint64(r), ReqID: id}
			if !pullSep {
				h.Flags = proto.FlagPull
			}
			if err := l.conn.Send(h, w.s.push(w.rank, k, r)); err != nil {
				return false
			}
			if pullSep {
				if err := l.conn.Send(proto.Header{Op: proto.OpPull, Key: d.Key, Round: uint64(r), ReqID: id}, nil); err != nil {
					return false
				}
			}
			byRound[r] = append(byRound[r], sent{l, id})
		}
	}
	for _, x := range byRound[w.s.rounds-1] {
		if !wait(x.l, x.id, func() bool { done, _ := x.l.answered(x.id); return done }) {
			return false
		}
	}
	return true
}

// runSchedule plays one seed's schedule and checks it; it fails t, naming
// the seed, on a violation.
func runSchedule(t *testing.T, seed uint64) outcome {
	s := drawSchedule(seed)
	var faulted atomic.Bool
	random := memnet.Random(seed, s.faults)
	n := memnet.New(memnet.Options{Policy: func(w memnet.Write) memnet.Action {
		a := random(w)
		if a.Break || a.Fail {
			faulted.Store(true)
		}
		return a
	}})
	defer n.Close()
	str, ctr := tcp.NewOn(n, rdma.Options{HelloTimeout: 5 * time.Second}), tcp.NewOn(n, rdma.Options{})
	defer str.Close()
	defer ctr.Close()
	var logMu sync.Mutex
	var logs []string
	srv, err := New(Config{Workers: s.workers, Engines: s.engines, Transport: str, Addr: "srv:0", Logf: func(format string, args ...any) {
		logMu.Lock()
		logs = append(logs, fmt.Sprintf(format, args...))
		logMu.Unlock()
	}})
	if err != nil {
		t.Fatalf("seed %d: %v", seed, err)
	}
	rec := &recorder{}
	var ws []*faultWorker
	dialFailed := false
	for rank := range s.workers {
		w := &faultWorker{s: s, rank: rank, wake: make(chan struct{}, 1), rec: rec}
		for range s.lanes {
			l := &lane{w: w, reqs: map[uint64]*request{}, acked: map[uint64]bool{}}
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			c, err := ctr.Dial(ctx, srv.Addr(), proto.NodeID(proto.RoleWorker, rank), l)
			cancel()
			if err != nil {
				dialFailed = true // the hello's write broke or failed
				continue
			}
			l.conn = c
			w.lanes = append(w.lanes, l)
		}
		ws = append(ws, w)
	}
	stop := make(chan struct{})
	var stopOnce sync.Once
	deadline := time.Now().Add(20 * time.Second)
	results := make([]bool, len(ws))
	var wg sync.WaitGroup
	for i, w := range ws {
		if len(w.lanes) < s.lanes {
			for _, l := range w.lanes {
				l.conn.Close()
			}
			stopOnce.Do(func() { close(stop) })
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			results[i] = w.run(stop, deadline)
			if !results[i] {
				stopOnce.Do(func() { close(stop) })
			}
		}()
	}
	wg.Wait()
	complete := !dialFailed
	for _, ok := range results {
		complete = complete && ok
	}
	if !complete && !faulted.Load() {
		rec.add("a worker gave up, but the schedule broke no link and failed no write")
	}
	srv.Close()
	noServerGoroutines(t)
	for _, e := range rec.all() {
		t.Errorf("seed %d: %s", seed, e)
	}
	if t.Failed() {
		t.Logf("seed %d: %v", seed, s)
		logMu.Lock()
		for _, l := range logs {
			t.Logf("seed %d server: %s", seed, l)
		}
		logMu.Unlock()
	}
	return outcome{faulted: faulted.Load(), complete: complete, summary: s.String()}
}
