package lifecycle

import (
	"cmp"
	"errors"
	"fmt"
	"maps"
	"slices"

	"github.com/gobps/gobps/proto"
	"github.com/gobps/gobps/scheduler"
)

// ErrAbandoned finishes the siblings of a failed task: the handle fails with
// the first task's error, and the others do not wait for answers that may
// never come.
var ErrAbandoned = errors.New("abandoned after another partition failed")

// Config configures a Machine.
type Config struct {
	// Credit is the scheduler's credit in bytes (BYTEPS_SCHEDULING_CREDIT).
	Credit int
	// Servers is the number of servers; Part.Server is below it.
	Servers int
}

// Part is one partition of an op's buffer.
type Part struct {
	Key      proto.Key
	Off, Len int // the partition's bytes in OpSpec.Buf
	Server   int // the server that owns Key
	Lane     int // the connection to that server that carries Key
}

// OpSpec describes one PushPull or Broadcast.
type OpSpec struct {
	Name     string
	DType    proto.DType
	Priority int // scheduler priority: larger goes first
	Round    uint64
	Parts    []Part
	// Buf holds every partition: the caller's buffer, or the engine's
	// staging buffer. With StageIn it may be nil until StagedIn gives it
	// (a staging buffer is leased when the device-to-host copy starts).
	Buf []byte
	// Push is false for a broadcast receiver, which only pulls.
	Push bool
	// Average divides the sum by the number of workers.
	Average bool
	// Local, when not nil, sends the op through local aggregation: Local[i]
	// says whether this rank owns part i (pushes the machine's sum).
	Local []bool
	// LocalOnly, with Local, says the machine's sum is the job's (every
	// worker is on this machine): an owner publishes it straight after
	// LocalReduce, with no server round trip.
	LocalOnly bool
	// StageIn makes every task wait for StagedIn (the engine fills Buf:
	// a device-to-host copy); StageOut asks for StageOut once every task has
	// finished, before the op completes (copy the result back, or abort the
	// staging after a failure).
	StageIn, StageOut bool
	// Ref is the engine's: the machine never reads it (the handle).
	Ref any
}

// Op is one started PushPull or Broadcast.
type Op struct {
	Spec  OpSpec
	Tasks []*Task

	left      int   // tasks not finished
	err       error // the first task's error
	stagingIn bool  // StageIn issued, StagedIn not yet come
	cancelled bool  // CancelStage issued
	abandoned bool
	done      bool // Complete issued
}

// slice points every task at its part of Spec.Buf.
func (op *Op) slice() {
	if op.Spec.Buf == nil {
		return
	}
	for _, t := range op.Tasks {
		p := t.Part
		b := op.Spec.Buf[p.Off : p.Off+p.Len : p.Off+p.Len]
		t.Buf, t.In, t.Out = b, b, b
		if !op.Spec.Push {
			t.In = nil
		}
	}
}

// Err is the error the op completed with (after Complete).
func (op *Op) Err() error { return op.err }

// Task is one partition of one op. The engine reads its exported fields;
// only the machine writes them.
type Task struct {
	Op    *Op
	Index int // in Op.Tasks and Op.Spec.Parts
	Part  Part
	Round uint64
	// ReqID names the task's request on the wire, from dispatch on.
	ReqID uint64
	// Buf is the caller's partition (a slice of Op.Spec.Buf). In is what
	// the push sends and Out where the answer lands: Buf itself, or for
	// the owner of a local round the machine's sum in shared memory.
	Buf, In, Out []byte
	// Result is where a local round's result is (after LocalReduce's sum
	// was answered, or LocalResult).
	Result []byte
	// Note is the engine's: the machine never reads or writes it.
	Note any
	// Stamp is the engine's too: when its lane began to send it (in the
	// engine's clock), for the push-pull latency; 0 when not measured.
	Stamp int64

	stage       stage
	busy        bool // a stage effect (LocalIn, LocalReduce, LocalResult, Divide, LocalPublish, LocalOut) is running
	cancellable bool // the busy effect is a wait that Cancel ends
	cancelled   bool
	sending     bool     // between Sending and Sent
	receiving   bool     // between AnswerDest and AnswerIn
	sent        bool     // the Send returned without error
	published   bool     // the owner's LocalPublish returned without error
	got         int      // bytes of the answer in Out
	pieces      []uint64 // which pieces of the answer came (a bitmap), when it comes in pieces
	credited    bool     // holds its credit
	pending     error
	finished    bool
	next        *Task  // local: the next round of the same key, waiting for this one
	prev        *Task  // local: the previous round of the same key
	seq         uint64 // start order, so that failures visit tasks in a fixed order
}

// Finished reports whether the task has finished.
func (t *Task) Finished() bool { return t.finished }

// Err is the error the task finished with.
func (t *Task) Err() error { return t.pending }

func (t *Task) String() string {
	return fmt.Sprintf("%q[%d] key %s round %d", t.Op.Spec.Name, t.Index, t.Part.Key, t.Round)
}

type stage uint8

const (
	stStaging      stage = iota // waits for the op's StagedIn
	stLocalOrder                // waits for the previous local round of its key to finish
	stLocalIn                   // LocalIn
	stLocalReduce               // the owner's LocalReduce
	stLocalResult               // the others' LocalResult
	stQueued                    // in the scheduler's queue
	stWire                      // dispatched: sent and answered
	stDivide                    // Divide
	stLocalPublish              // the owner's LocalPublish
	stLocalOut                  // LocalOut
	stDone
)

var stageNames = [...]string{"staging", "local-order", "local-in", "local-reduce", "local-result", "queued", "wire", "divide", "local-publish", "local-out", "done"}

func (s stage) String() string { return stageNames[s] }

// Kind is what an Effect asks for.
type Kind uint8

// Effects, each with the Task or Op it concerns.
const (
	// Send: hand Task to its lane's sender, which calls Sending, sends
	// (a push of In with FlagPull, or a pull), and calls Sent.
	Send Kind = iota + 1
	// Cancel: end the wait Task is busy with (LocalReduce, LocalResult);
	// the wait then returns, with an error, as usual.
	Cancel
	// StageIn: fill Op's buffer (a device-to-host copy), then StagedIn.
	StageIn
	// CancelStage: end Op's StageIn wait; StagedIn then comes as usual.
	CancelStage
	// LocalIn: copy Task.Buf into this rank's shared-memory input for
	// Task.Round and contribute it, then LocalInDone.
	LocalIn
	// LocalReduce: the owner waits for every local rank's contribution and
	// sums them, then Reduced with the sum.
	LocalReduce
	// LocalResult: a non-owner waits for the owner's published result,
	// then ResultReady.
	LocalResult
	// Divide: divide Task.Out by the number of workers, then Divided.
	Divide
	// LocalPublish: the owner publishes Task.Result, then Published.
	LocalPublish
	// LocalOut: copy Task.Result into Task.Buf, end the local round,
	// divide for Average, then LocalOutDone.
	LocalOut
	// LocalAbort: the owner of a local round could not push and pull it
	// (Err): fail the local group, so that the other ranks stop waiting.
	LocalAbort
	// Finished: Task has finished with Err (for the timeline).
	Finished
	// StageOut: copy Op's result back (Err nil) or abort its staging, then
	// StagedOut.
	StageOut
	// Complete: Op's handle completes with Err.
	Complete
)

var kindNames = [...]string{"", "send", "cancel", "stage-in", "cancel-stage", "local-in", "local-reduce", "local-result",
	"divide", "local-publish", "local-out", "local-abort", "finished", "stage-out", "complete"}

func (k Kind) String() string {
	if int(k) < len(kindNames) && k > 0 {
		return kindNames[k]
	}
	return fmt.Sprintf("kind(%d)", uint8(k))
}

// Effect is one thing for the engine to do.
type Effect struct {
	Kind Kind
	Task *Task
	Op   *Op
	Err  error
}

// Machine is the partition lifecycle of one worker.
type Machine struct {
	cfg     Config
	queue   *scheduler.Queue[*Task]
	reqs    map[uint64]*Task
	nextReq uint64
	// live holds every unfinished task, by server, so that a server's
	// failure reaches them all: queued, on the wire, and in local rounds.
	live      []map[*Task]struct{}
	srvErr    []error
	stopped   error
	localTail map[proto.Key]*Task
	seq       uint64
	effs      []Effect
	counts    Counts
}

// New returns a machine with nothing started. It panics on a bad config
// (a programmer error).
func New(cfg Config) *Machine {
	if cfg.Credit <= 0 || cfg.Servers < 0 {
		panic(fmt.Sprintf("lifecycle: New: credit %d, %d servers", cfg.Credit, cfg.Servers))
	}
	m := &Machine{
		cfg: cfg, queue: scheduler.New[*Task](cfg.Credit), reqs: map[uint64]*Task{},
		live: make([]map[*Task]struct{}, cfg.Servers), srvErr: make([]error, cfg.Servers),
		localTail: map[proto.Key]*Task{}, counts: Counts{Servers: make([]ServerCounts, cfg.Servers)},
	}
	for i := range m.live {
		m.live[i] = map[*Task]struct{}{}
	}
	return m
}

func (m *Machine) emit(k Kind, t *Task, op *Op, err error) {
	m.effs = append(m.effs, Effect{Kind: k, Task: t, Op: op, Err: err})
}

// AppendEffects appends the effects produced since the last call to dst,
// in the order they must be carried out, and forgets them.
func (m *Machine) AppendEffects(dst []Effect) []Effect {
	dst = append(dst, m.effs...)
	clear(m.effs)
	m.effs = m.effs[:0]
	return dst
}

// ServerErr is the failure of server s, or nil.
func (m *Machine) ServerErr(s int) error { return m.srvErr[s] }

// Stopped is the error Stop was given, or nil.
func (m *Machine) Stopped() error { return m.stopped }

// Start starts an op. It panics on a spec that does not fit the machine
// (a programmer error): parts outside Buf or naming unknown servers.
func (m *Machine) Start(spec OpSpec) *Op {
	op := &Op{Spec: spec, left: len(spec.Parts), Tasks: make([]*Task, len(spec.Parts))}
	if spec.Local != nil && len(spec.Local) != len(spec.Parts) {
		panic(fmt.Sprintf("lifecycle: %q: %d local owners for %d parts", spec.Name, len(spec.Local), len(spec.Parts)))
	}
	if spec.Buf == nil && !spec.StageIn {
		panic(fmt.Sprintf("lifecycle: %q: no buffer", spec.Name))
	}
	for i, p := range spec.Parts {
		if p.Server < 0 || p.Server >= len(m.live) || p.Off < 0 || p.Len <= 0 || (spec.Buf != nil && p.Off+p.Len > len(spec.Buf)) {
			panic(fmt.Sprintf("lifecycle: %q part %d: %+v does not fit %d servers and %d bytes", spec.Name, i, p, len(m.live), len(spec.Buf)))
		}
		m.seq++
		t := &Task{Op: op, Index: i, Part: p, Round: spec.Round, seq: m.seq}
		op.Tasks[i] = t
		m.live[p.Server][t] = struct{}{}
	}
	op.slice()
	if len(spec.Parts) == 0 {
		m.opDone(op)
		return op
	}
	if spec.StageIn && m.stopped == nil {
		op.stagingIn = true
		m.emit(StageIn, nil, op, nil)
	}
	for _, t := range op.Tasks {
		t.stage = stStaging
		if spec.Local != nil {
			k := t.Part.Key
			if prev := m.localTail[k]; prev != nil && !prev.finished {
				t.prev, prev.next = prev, t
			}
			m.localTail[k] = t
		}
	}
	for _, t := range op.Tasks {
		// A task whose server has failed, or of a stopped machine, fails
		// at once: it never began, so nothing is busy with it unless the
		// op stages in.
		switch {
		case m.stopped != nil:
			m.mark(t, m.stopped)
		case m.srvErr[t.Part.Server] != nil:
			m.mark(t, m.srvErr[t.Part.Server])
		}
	}
	for _, t := range op.Tasks {
		m.advance(t)
	}
	m.dispatch()
	return op
}

// StagedIn reports that op's StageIn has returned: buf (or the op's Buf,
// when buf is nil) holds the data, or err says why not (every task then
// fails with it).
func (m *Machine) StagedIn(op *Op, buf []byte, err error) {
	if !op.stagingIn {
		panic(fmt.Sprintf("lifecycle: StagedIn for %q, which is not staging in", op.Spec.Name))
	}
	op.stagingIn = false
	if err == nil && buf != nil {
		for _, p := range op.Spec.Parts {
			if p.Off+p.Len > len(buf) {
				panic(fmt.Sprintf("lifecycle: StagedIn for %q with %d bytes: part %+v does not fit", op.Spec.Name, len(buf), p))
			}
		}
		op.Spec.Buf = buf
		op.slice()
	}
	if err == nil && op.Spec.Buf == nil {
		panic(fmt.Sprintf("lifecycle: StagedIn for %q without a buffer", op.Spec.Name))
	}
	if err != nil && op.cancelled {
		// The copy was cancelled because a task failed: that failure, not
		// the cancellation's echo, is what the handle reports.
		for _, t := range op.Tasks {
			if t.pending != nil {
				err = t.pending
				break
			}
		}
	}
	if err != nil {
		for _, t := range op.Tasks {
			m.mark(t, err)
		}
	}
	for _, t := range op.Tasks {
		m.advance(t)
	}
	m.dispatch()
}

// busyNow reports whether an effect that touches t's buffer is running.
func (t *Task) busyNow() bool {
	return t.busy || t.sending || t.receiving || (t.stage == stStaging && t.Op.stagingIn)
}

// advance moves t on as far as it can go without an event: it issues the
// effect of t's next stage, or finishes t, once nothing is busy.
func (m *Machine) advance(t *Task) {
	for !t.finished && !t.busyNow() {
		if t.pending != nil {
			m.finish(t, t.pending)
			return
		}
		switch t.stage {
		case stStaging:
			if t.Op.Spec.Local != nil {
				t.stage = stLocalOrder
			} else {
				t.stage = stQueued
				m.enqueue(t)
				return
			}
		case stLocalOrder:
			if t.prev != nil && !t.prev.finished {
				return // the previous round's finish moves it on
			}
			t.prev = nil
			t.stage = stLocalIn
			m.issue(t, LocalIn, false)
			return
		case stLocalIn:
			if t.Op.Spec.Local[t.Index] {
				t.stage = stLocalReduce
				m.issue(t, LocalReduce, true)
			} else {
				t.stage = stLocalResult
				m.issue(t, LocalResult, true)
			}
			return
		case stLocalReduce:
			if t.Op.Spec.LocalOnly {
				t.stage = stLocalPublish
				m.issue(t, LocalPublish, false)
				return
			}
			t.stage = stQueued
			m.enqueue(t)
			return
		case stLocalResult:
			t.stage = stLocalOut
			m.issue(t, LocalOut, false)
			return
		case stQueued:
			return // dispatch moves it on
		case stWire:
			if t.got < len(t.Out) || !t.sent {
				return // answer or send still to come
			}
			switch {
			case t.Op.Spec.Local != nil:
				t.stage = stLocalPublish
				m.issue(t, LocalPublish, false)
				return
			case t.Op.Spec.Average:
				t.stage = stDivide
				m.issue(t, Divide, false)
				return
			}
			t.stage = stDone
		case stDivide:
			t.stage = stDone
		case stLocalPublish:
			t.stage = stLocalOut
			m.issue(t, LocalOut, false)
			return
		case stLocalOut:
			t.stage = stDone
		case stDone:
			m.finish(t, nil)
			return
		}
	}
}

func (m *Machine) issue(t *Task, k Kind, cancellable bool) {
	t.busy, t.cancellable, t.cancelled = true, cancellable, false
	m.emit(k, t, nil, nil)
}

func (m *Machine) enqueue(t *Task) {
	m.queue.Push(scheduler.Item[*Task]{Key: t.Part.Key, Priority: t.Op.Spec.Priority, Bytes: t.Part.Len, Value: t})
}

// dispatch hands out queued tasks as the credit allows.
func (m *Machine) dispatch() {
	for {
		it, ok := m.queue.Next()
		if !ok {
			return
		}
		t := it.Value
		if t.finished { // failed while queued
			m.queue.Done(it.Bytes)
			continue
		}
		t.credited = true
		m.nextReq++
		t.ReqID = m.nextReq
		m.reqs[t.ReqID] = t
		t.stage = stWire
		m.emit(Send, t, nil, nil)
	}
}

func (m *Machine) returnCredit(t *Task) {
	if t.credited {
		t.credited = false
		m.queue.Done(t.Part.Len)
	}
}

// end clears t's busy stage effect: it returned, with err.
func (m *Machine) end(t *Task, k Kind, err error) {
	if !t.busy {
		panic(fmt.Sprintf("lifecycle: %s for %s, which is not busy with one", k, t))
	}
	t.busy, t.cancellable = false, false
	if err != nil {
		m.setErr(t, err)
	}
}

// LocalInDone reports that LocalIn has returned.
func (m *Machine) LocalInDone(t *Task, err error) {
	m.end(t, LocalIn, err)
	m.advance(t)
	m.dispatch()
}

// Reduced reports that the owner's LocalReduce has returned the machine's
// sum (in shared memory), which it now pushes and pulls (or, LocalOnly,
// publishes).
func (m *Machine) Reduced(t *Task, sum []byte, err error) {
	m.end(t, LocalReduce, err)
	if err == nil {
		if len(sum) != len(t.Buf) {
			panic(fmt.Sprintf("lifecycle: Reduced %s with %d bytes, want %d", t, len(sum), len(t.Buf)))
		}
		t.In, t.Out, t.Result = sum, sum, sum
	}
	m.advance(t)
	m.dispatch()
}

// ResultReady reports that a non-owner's LocalResult has returned the
// local round's result.
func (m *Machine) ResultReady(t *Task, res []byte, err error) {
	m.end(t, LocalResult, err)
	if err == nil {
		t.Result = res
	}
	m.advance(t)
	m.dispatch()
}

// Divided reports that Divide has returned.
func (m *Machine) Divided(t *Task, err error) {
	m.end(t, Divide, err)
	m.advance(t)
	m.dispatch()
}

// Published reports that LocalPublish has returned.
func (m *Machine) Published(t *Task, err error) {
	m.end(t, LocalPublish, err)
	t.published = err == nil
	m.advance(t)
	m.dispatch()
}

// LocalOutDone reports that LocalOut has returned.
func (m *Machine) LocalOutDone(t *Task, err error) {
	m.end(t, LocalOut, err)
	m.advance(t)
	m.dispatch()
}

// Sending is called by t's lane sender before it reads t.In: false says the
// task has finished meanwhile (failed, abandoned), and then its buffer
// must not be touched: skip it.
func (m *Machine) Sending(t *Task) bool {
	if t.finished || t.stage != stWire || t.sending || t.sent {
		return false
	}
	t.sending = true
	return true
}

// Sent reports that t's Send returned, with err if it failed (the engine
// reports the server's failure first, so that err is the second word).
// The credit comes back now, not when the answer does: the answer waits
// for every worker's push, and credit held until then lets two workers
// that dispatched in different orders each hold the credit the other's
// missing push needs, forever.
func (m *Machine) Sent(t *Task, err error) {
	if !t.sending {
		panic(fmt.Sprintf("lifecycle: Sent for %s, which is not sending", t))
	}
	t.sending = false
	if err != nil {
		m.setErr(t, err)
	} else {
		t.sent = true
		c := &m.counts.Servers[t.Part.Server]
		if t.Op.Spec.Push {
			c.Pushes++
			c.PushBytes += uint64(len(t.In))
		} else {
			c.Pulls++
		}
	}
	m.returnCredit(t)
	m.advance(t)
	m.dispatch()
}

// AnswerDest places an answer (OpPullResp) whose header is h: it returns
// where its payload goes in the task's Out, and first true for the
// answer's first bytes. An error refuses the frame (a request that has
// finished or never was, or an answer that does not match it): the
// transport then discards the payload.
func (m *Machine) AnswerDest(h *proto.Header) (dst []byte, first bool, err error) {
	t := m.reqs[h.ReqID]
	off, whole := 0, h.Flags&proto.FlagPiece == 0
	if !whole {
		off = int(h.Piece) * proto.PieceBytes
	}
	switch {
	case t == nil || t.finished:
		return nil, false, fmt.Errorf("answer to unknown request %d", h.ReqID)
	case t.Part.Key != h.Key || t.Round != h.Round || t.Op.Spec.DType != h.DType:
		return nil, false, fmt.Errorf("answer %s does not match request (key %s round %d, %d bytes of %s)", h, t.Part.Key, t.Round, len(t.Out), t.Op.Spec.DType)
	case t.receiving:
		return nil, false, fmt.Errorf("answer %s while another piece of it is still being received", h)
	case whole && (len(t.Out) != int(h.Length) || t.got != 0),
		!whole && (off >= len(t.Out) || int(h.Length) != min(proto.PieceBytes, len(t.Out)-off)):
		return nil, false, fmt.Errorf("answer %s does not fit request (%d of %d bytes in)", h, t.got, len(t.Out))
	case !whole && t.hasPiece(int(h.Piece)):
		return nil, false, fmt.Errorf("answer %s: piece %d came twice", h, h.Piece)
	}
	if !whole {
		t.setPiece(int(h.Piece))
	}
	t.receiving = true
	return t.Out[off : off+int(h.Length)], t.got == 0, nil
}

func (t *Task) hasPiece(i int) bool {
	return i/64 < len(t.pieces) && t.pieces[i/64]&(1<<(i%64)) != 0
}

func (t *Task) setPiece(i int) {
	if t.pieces == nil {
		t.pieces = make([]uint64, (len(t.Out)+proto.PieceBytes*64-1)/(proto.PieceBytes*64))
	}
	t.pieces[i/64] |= 1 << (i % 64)
}

// AnswerIn reports that the n bytes AnswerDest placed for request id are
// in.
func (m *Machine) AnswerIn(id uint64, n int) {
	t := m.reqs[id]
	if t == nil || !t.receiving {
		panic(fmt.Sprintf("lifecycle: AnswerIn for request %d, which is not receiving", id))
	}
	t.receiving = false
	t.got += n
	c := &m.counts.Servers[t.Part.Server]
	c.AnswerBytes += uint64(n)
	if t.got == len(t.Out) {
		c.Answers++
	}
	m.advance(t)
	m.dispatch()
}

// AnswerFailed fails request id: the server refused it (OpError), or sent
// an answer that could not be placed. It returns false when no unfinished
// request has that id (the engine logs it; nothing else changes).
func (m *Machine) AnswerFailed(id uint64, err error) bool {
	t := m.reqs[id]
	if t == nil || t.finished {
		return false
	}
	m.setErr(t, err)
	m.dispatch()
	return true
}

// LaneClosed reports that lane of server s ended: s has failed (with err
// unless it failed before) and the answers being received on it will not
// be completed.
func (m *Machine) LaneClosed(s, lane int, err error) {
	m.ServerFailed(s, err)
	for _, t := range sorted(m.live[s]) {
		if t.receiving && t.Part.Lane == lane {
			t.receiving = false
			m.advance(t)
		}
	}
	m.dispatch()
}

// ServerFailed fails every task of server s, now or, for busy ones, when
// their effect returns; later ops fail their parts on s at once. Only the
// first failure of a server counts.
func (m *Machine) ServerFailed(s int, err error) {
	if m.srvErr[s] != nil {
		return
	}
	m.srvErr[s] = err
	m.failAll(m.live[s], err)
	m.dispatch()
}

// Stop fails everything: every task now or when its effect returns, and
// every later op at once.
func (m *Machine) Stop(err error) {
	if m.stopped != nil {
		return
	}
	m.stopped = err
	all := map[*Task]struct{}{}
	for _, ts := range m.live {
		maps.Copy(all, ts)
	}
	m.failAll(all, err)
	m.queue.Drain() // every queued task has just finished
	m.dispatch()
}

// failAll fails every task of ts with err. Every one is marked before any
// moves on, so that finishing one (which may start the next local round of
// its key) never starts work that is failing too.
func (m *Machine) failAll(ts map[*Task]struct{}, err error) {
	all := sorted(ts)
	for _, t := range all {
		m.mark(t, err)
	}
	for _, t := range all {
		m.advance(t)
	}
}

// sorted returns the tasks of ts in the order they were started, so that
// what a failure does does not depend on the order of a map.
func sorted(ts map[*Task]struct{}) []*Task {
	all := make([]*Task, 0, len(ts))
	for t := range ts {
		all = append(all, t)
	}
	slices.SortFunc(all, func(a, b *Task) int { return cmp.Compare(a.seq, b.seq) })
	return all
}

// setErr fails t with err: at once when nothing is busy with its buffer,
// else when that returns.
func (m *Machine) setErr(t *Task, err error) {
	m.mark(t, err)
	m.advance(t)
}

// mark records err as t's failure (the first one counts) and cancels the
// wait t is busy with, if that wait might never return by itself; advance
// then finishes t once nothing is busy.
func (m *Machine) mark(t *Task, err error) {
	if t.finished {
		return
	}
	if t.pending == nil {
		t.pending = err
	}
	switch {
	case t.busy && t.cancellable && !t.cancelled:
		t.cancelled = true
		m.emit(Cancel, t, nil, nil)
	case t.stage == stStaging && t.Op.stagingIn && !t.Op.cancelled:
		t.Op.cancelled = true
		m.emit(CancelStage, nil, t.Op, nil)
	}
}
func (m *Machine) finish(t *Task, err error) {
	t.finished = true
	t.pending = err
	t.cancellable = false
	if err != nil {
		m.counts.Servers[t.Part.Server].Failed++
	}
	m.returnCredit(t)
	if t.ReqID != 0 {
		delete(m.reqs, t.ReqID)
	}
	delete(m.live[t.Part.Server], t)
	op := t.Op
	if err != nil && op.Spec.Local != nil && op.Spec.Local[t.Index] && !t.published &&
		(t.stage == stQueued || t.stage == stWire || t.stage == stLocalPublish) {
		// The owner failed between its Reduce and its Publish: the other
		// ranks would wait for a Publish that will not come.
		m.emit(LocalAbort, t, nil, err)
	}
	m.emit(Finished, t, nil, err)
	if op.Spec.Local != nil {
		m.unlinkLocal(t)
	}
	if err != nil && op.err == nil {
		op.err = err
	}
	op.left--
	if op.left == 0 {
		m.opDone(op)
		return
	}
	if err != nil && op.Spec.Local == nil && !op.abandoned {
		// Siblings do not wait for answers that may never come. A local
		// op's siblings run their rounds to the end: the other local
		// ranks wait for every one of them.
		op.abandoned = true
		for _, sib := range op.Tasks {
			if sib != t {
				m.setErr(sib, ErrAbandoned)
			}
		}
	}
}

// unlinkLocal takes a finished task out of its key's chain of local rounds.
// A round that finished without going through shared memory (it failed
// while waiting for the one before) hands its place to that one, so that
// the rounds that do run go through shared memory strictly in order.
func (m *Machine) unlinkLocal(t *Task) {
	prev, next := t.prev, t.next
	if prev != nil && prev.finished {
		prev = nil
	}
	t.prev, t.next = nil, nil
	if prev != nil {
		prev.next = next
	}
	if next != nil {
		next.prev = prev
		m.advance(next)
	}
	if m.localTail[t.Part.Key] == t {
		if prev != nil {
			m.localTail[t.Part.Key] = prev
		} else {
			delete(m.localTail, t.Part.Key)
		}
	}
}

// opDone stages out, or completes, an op whose tasks have all finished.
func (m *Machine) opDone(op *Op) {
	if op.Spec.StageOut {
		m.emit(StageOut, nil, op, op.err)
		return
	}
	op.done = true
	m.completed(op)
	m.emit(Complete, nil, op, op.err)
}

// StagedOut reports that StageOut has returned; err, if not nil, replaces
// the op's error (the engine joins the two when both failed).
func (m *Machine) StagedOut(op *Op, err error) {
	if op.left != 0 || op.done || !op.Spec.StageOut {
		panic(fmt.Sprintf("lifecycle: StagedOut for %q, which is not staging out", op.Spec.Name))
	}
	if err != nil {
		op.err = err
	}
	op.done = true
	m.completed(op)
	m.emit(Complete, nil, op, op.err)
}

// Request returns the unfinished task whose request id is id, or nil.
func (m *Machine) Request(id uint64) *Task {
	if t := m.reqs[id]; t != nil && !t.finished {
		return t
	}
	return nil
}

// Queued returns the number of tasks in the scheduler's queue (some may
// have finished there), for tests.
func (m *Machine) Queued() int { return m.queue.Len() }

// Dispatched returns the number of tasks ever dispatched, for tests.
func (m *Machine) Dispatched() int { return int(m.nextReq) }

// InFlight returns the credit in use, for tests.
func (m *Machine) InFlight() int { return m.queue.InFlight() }

// Live returns the number of unfinished tasks, for tests.
func (m *Machine) Live() int {
	n := 0
	for _, ts := range m.live {
		n += len(ts)
	}
	return n
}

// States describes every unfinished task, in start order, for tests and
// debugging.
func (m *Machine) States() []string {
	var out []string
	all := map[*Task]struct{}{}
	for _, ts := range m.live {
		maps.Copy(all, ts)
	}
	for _, t := range sorted(all) {
		out = append(out, t.String()+": "+t.State())
	}
	return out
}

// State describes t for tests and messages: its stage and what is busy.
func (t *Task) State() string {
	s := t.stage.String()
	if t.finished {
		s = "finished"
		if t.pending != nil {
			s += " (" + t.pending.Error() + ")"
		}
		return s
	}
	if t.busy {
		s += " busy"
	}
	if t.sending {
		s += " sending"
	}
	if t.receiving {
		s += " receiving"
	}
	if t.sent {
		s += " sent"
	}
	if t.got > 0 {
		s += fmt.Sprintf(" got=%d", t.got)
	}
	if t.pending != nil {
		s += " pending(" + t.pending.Error() + ")"
	}
	return s
}
