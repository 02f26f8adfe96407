package lifecycle

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"testing"

	"github.com/gobps/gobps/proto"
)

// TestRandomSchedules drives the machine as an engine would, with a
// simulated transport, local group and staging that carry out its effects
// in a random order, while failures come at random moments: servers fail,
// lanes close, requests are refused, the engine stops. After every step the
// checker's invariants must hold; at the end, once the engine has stopped
// and every effect has returned, every op must have completed exactly once
// and nothing may be left (tasks, requests, credit).
func TestRandomSchedules(t *testing.T) {
	n := 20000
	if testing.Short() {
		n = 2000
	}
	for seed := uint64(0); seed < uint64(n); seed++ {
		if err := randomSchedule(seed); err != nil {
			t.Fatalf("seed %d: %v", seed, err)
		}
	}
	for k := Send; k <= Complete; k++ {
		if kinds[k] == 0 {
			t.Errorf("no schedule produced a %s effect", k)
		}
		t.Logf("%-13s %d", k, kinds[k])
	}
}

// scratch backs every buffer of the simulation: the machine never reads
// or writes buffers, it only hands out slices of them.
var scratch = make([]byte, 16*proto.PieceBytes)

// kinds counts the effects the schedules produced, to show what they
// covered (go test -v).
var kinds = map[Kind]int{}

// sim is the simulated engine of one schedule.
type sim struct {
	r     *rand.Rand
	m     *Machine
	chk   *checker
	ops   []*Op
	lanes int
	// what is waiting to be carried out
	sends   []*Task          // handed to a lane, Sending not yet called
	inSend  []*Task          // Sending returned true, Sent not yet called
	busy    []Effect         // stage effects running
	stages  []Effect         // StageIn / StageOut running
	recv    map[[2]int]*Task // the task whose piece a lane is reading
	pieces  map[*Task][]int  // pieces of the answer still to come
	steps   int
	stopped bool
}

func randomSchedule(seed uint64) error {
	r := rand.New(rand.NewPCG(seed, 0x9e3779b97f4a7c15))
	servers := 1 + r.IntN(3)
	credit := (1 + r.IntN(4)) * proto.PieceBytes
	s := &sim{r: r, m: New(Config{Credit: credit, Servers: servers}), lanes: 1 + r.IntN(2),
		recv: map[[2]int]*Task{}, pieces: map[*Task][]int{}}
	s.chk = newChecker(s.m)
	nops := 1 + r.IntN(6)
	round := map[proto.Key]uint64{}
	for s.steps = 0; s.steps < 2000; s.steps++ {
		if err := s.chk.err(); err != nil {
			return fmt.Errorf("step %d: %w", s.steps, err)
		}
		// Start ops now and then, while there are some to start.
		if len(s.ops) < nops && r.IntN(4) == 0 {
			s.start(round, servers)
			continue
		}
		if !s.act() {
			if len(s.ops) < nops {
				s.start(round, servers)
				continue
			}
			if !s.stopped {
				s.stopped = true
				s.m.Stop(errors.New("stop"))
				s.drain()
				continue
			}
			break
		}
	}
	if err := s.chk.err(); err != nil {
		return err
	}
	if !s.stopped || len(s.sends)+len(s.inSend)+len(s.busy)+len(s.stages) > 0 {
		return fmt.Errorf("schedule did not end after %d steps", s.steps)
	}
	for _, op := range s.ops {
		if !s.chk.completed[op] {
			return fmt.Errorf("op %q never completed: %v", op.Spec.Name, states(op))
		}
	}
	if s.m.Live() != 0 || s.m.InFlight() != 0 || len(s.m.reqs) != 0 || len(s.m.localTail) != 0 {
		return fmt.Errorf("left over: %d tasks, %d bytes of credit, %d requests, %d local tails", s.m.Live(), s.m.InFlight(), len(s.m.reqs), len(s.m.localTail))
	}
	return nil
}

func states(op *Op) []string {
	var out []string
	for _, t := range op.Tasks {
		out = append(out, t.State())
	}
	return out
}

func (s *sim) start(round map[proto.Key]uint64, servers int) {
	r := s.r
	nparts := 1 + r.IntN(4)
	spec := OpSpec{Name: fmt.Sprintf("op%d", len(s.ops)), DType: proto.Uint8, Priority: r.IntN(3), Push: r.IntN(5) != 0, Average: r.IntN(2) == 0}
	local := r.IntN(3) == 0
	// Keys are shared between ops, so that local rounds of one key queue
	// up behind each other.
	base := proto.Key(r.IntN(3) * 8)
	off := 0
	for i := 0; i < nparts; i++ {
		n := 1 + r.IntN(3*proto.PieceBytes)
		if r.IntN(2) == 0 {
			n = 1 + r.IntN(64)
		}
		spec.Parts = append(spec.Parts, Part{Key: base + proto.Key(i), Off: off, Len: n, Server: r.IntN(servers), Lane: r.IntN(s.lanes)})
		off += n
		if local {
			spec.Local = append(spec.Local, r.IntN(2) == 0)
		}
	}
	if local {
		spec.Push = true
		spec.LocalOnly = r.IntN(2) == 0
		round[base]++
		spec.Round = round[base]
	}
	spec.Buf = scratch[:off]
	switch r.IntN(4) {
	case 0:
		spec.StageIn, spec.StageOut = true, true
		if r.IntN(2) == 0 {
			spec.Buf = nil // leased when the copy in starts, as for GPU tensors
		}
	case 1:
		spec.StageOut = true
	}
	op := s.m.Start(spec)
	s.ops = append(s.ops, op)
	s.drain()
}

// drain takes the machine's effects and sets them going.
func (s *sim) drain() {
	for _, e := range s.m.AppendEffects(nil) {
		s.chk.effect(e)
		kinds[e.Kind]++
		switch e.Kind {
		case Send:
			s.sends = append(s.sends, e.Task)
		case LocalIn, LocalReduce, LocalResult, Divide, LocalPublish, LocalOut:
			s.busy = append(s.busy, e)
		case StageIn, StageOut:
			s.stages = append(s.stages, e)
		case Cancel, CancelStage:
			// The wait will return with an error; nothing else to do here.
		}
	}
}

func pick[T any](r *rand.Rand, xs *[]T) T {
	i := r.IntN(len(*xs))
	x := (*xs)[i]
	(*xs)[i] = (*xs)[len(*xs)-1]
	*xs = (*xs)[:len(*xs)-1]
	return x
}

// act carries out one random thing that can happen now; false when
// nothing can.
func (s *sim) act() bool {
	r, m := s.r, s.m
	defer s.drain()
	var choices []func()
	if len(s.sends) > 0 {
		choices = append(choices, func() {
			t := pick(r, &s.sends)
			ok := m.Sending(t)
			s.chk.sending(t, ok)
			if ok {
				s.inSend = append(s.inSend, t)
			}
		})
	}
	if len(s.inSend) > 0 {
		choices = append(choices, func() {
			t := pick(r, &s.inSend)
			var err error
			if r.IntN(10) == 0 {
				err = errors.New("broken pipe")
				m.ServerFailed(t.Part.Server, fmt.Errorf("server %d: %w", t.Part.Server, err))
			}
			m.Sent(t, err)
			s.chk.sent(t)
		})
	}
	// Answers: a piece for a task whose push has begun (the server answers
	// once it has every push), on a lane that is reading nothing else.
	var answerable []*Task
	for _, t := range m.reqs {
		if !t.finished && (t.sending || t.sent) && s.recv[[2]int{t.Part.Server, t.Part.Lane}] == nil && m.srvErr[t.Part.Server] == nil {
			answerable = append(answerable, t)
		}
	}
	if len(answerable) > 0 {
		choices = append(choices, func() {
			t := answerable[r.IntN(len(answerable))]
			h := proto.Header{Op: proto.OpPullResp, Key: t.Part.Key, Round: t.Round, ReqID: t.ReqID, DType: t.Op.Spec.DType, Length: uint32(len(t.Out))}
			if len(t.Out) > proto.PieceBytes || r.IntN(3) == 0 {
				left, ok := s.pieces[t]
				if !ok {
					for p := 0; p*proto.PieceBytes < len(t.Out); p++ {
						left = append(left, p)
					}
				}
				if len(left) == 0 {
					return
				}
				p := pick(r, &left)
				s.pieces[t] = left
				h.Flags, h.Piece = proto.FlagPiece, uint32(p)
				h.Length = uint32(min(proto.PieceBytes, len(t.Out)-p*proto.PieceBytes))
			}
			if r.IntN(20) == 0 {
				h.Round++ // a confused server
			}
			dst, _, err := m.AnswerDest(&h)
			if err != nil {
				if m.AnswerFailed(h.ReqID, err) {
					s.chk.refusedDest(t)
				}
				return
			}
			s.chk.dest(t, dst)
			s.recv[[2]int{t.Part.Server, t.Part.Lane}] = t
		})
	}
	if len(s.recv) > 0 {
		choices = append(choices, func() {
			for k, t := range s.recv {
				delete(s.recv, k)
				if r.IntN(15) == 0 {
					m.LaneClosed(k[0], k[1], errors.New("connection reset"))
					s.chk.laneClosed(k[0], k[1])
					return
				}
				m.AnswerIn(t.ReqID, len(t.Out[:0])+pieceLen(t, s))
				s.chk.in(t)
				return
			}
		})
	}
	if len(s.busy) > 0 {
		choices = append(choices, func() {
			e := pick(r, &s.busy)
			var err error
			if r.IntN(12) == 0 || (e.Task.cancelled && r.IntN(2) == 0) {
				err = errors.New("local failure")
			}
			t := e.Task
			switch e.Kind {
			case LocalIn:
				m.LocalInDone(t, err)
			case LocalReduce:
				var sum []byte
				if err == nil {
					sum = scratch[:len(t.Buf)]
				}
				m.Reduced(t, sum, err)
			case LocalResult:
				var res []byte
				if err == nil {
					res = scratch[:len(t.Buf)]
				}
				m.ResultReady(t, res, err)
			case Divide:
				m.Divided(t, err)
			case LocalPublish:
				m.Published(t, err)
			case LocalOut:
				m.LocalOutDone(t, err)
			}
			s.chk.ended(t)
		})
	}
	if len(s.stages) > 0 {
		choices = append(choices, func() {
			e := pick(r, &s.stages)
			var err error
			if r.IntN(10) == 0 || (e.Op.cancelled && r.IntN(2) == 0) {
				err = errors.New("stage failure")
			}
			if e.Kind == StageIn {
				var buf []byte
				if e.Op.Spec.Buf == nil && err == nil {
					n := 0
					for _, p := range e.Op.Spec.Parts {
						n = max(n, p.Off+p.Len)
					}
					buf = scratch[:n]
				}
				m.StagedIn(e.Op, buf, err)
				s.chk.stagedIn(e.Op)
			} else {
				m.StagedOut(e.Op, err)
				s.chk.stagedOut(e.Op)
			}
		})
	}
	if len(choices) == 0 {
		return false
	}
	// Failures, now and then, while something is going on.
	switch r.IntN(60) {
	case 0:
		m.ServerFailed(r.IntN(len(m.live)), errors.New("server died"))
		return true
	case 1:
		for id := range m.reqs {
			m.AnswerFailed(id, errors.New("refused"))
			break
		}
		return true
	case 2:
		if !s.stopped && r.IntN(3) == 0 {
			s.stopped = true
			m.Stop(errors.New("stop"))
			return true
		}
	}
	choices[r.IntN(len(choices))]()
	return true
}

// pieceLen is the length of the piece of t that is being read: what
// AnswerDest gave (the machine knows; the simulation recomputes it).
func pieceLen(t *Task, s *sim) int {
	if t.pieces == nil {
		return len(t.Out)
	}
	// The piece being read is the one set in the bitmap and not yet
	// counted: its length follows from how much is in.
	got := 0
	last := -1
	for p := 0; p*proto.PieceBytes < len(t.Out); p++ {
		if t.hasPiece(p) {
			got += min(proto.PieceBytes, len(t.Out)-p*proto.PieceBytes)
			last = p
		}
	}
	_ = last
	return got - t.got
}
