package summation

import (
	"fmt"

	"github.com/gobps/gobps/core/proto"
	"github.com/gobps/gobps/summation/kernel"
)

// Pull is a worker's request for the sum of one round of one key. Reply is
// opaque to the round state: the server uses it to answer.
type Pull struct {
	Worker int
	ReqID  uint64
	Reply  any
}

// Answer says: send Buf, the sum of Round, to Pull. Buf belongs to the key
// until Served(Round) is called for this answer; it must not be written.
type Answer struct {
	Pull  Pull
	Round uint64
	Buf   []byte
}

// slot is the state of one round in the window.
type slot struct {
	round    uint64
	pushed   []bool // by worker
	pulled   []bool // by worker
	pushes   int
	complete bool
	waiting  []Pull
	served   int
}

func (s *slot) reset(round uint64) {
	s.round = round
	clear(s.pushed)
	clear(s.pulled)
	s.pushes = 0
	s.complete = false
	s.waiting = s.waiting[:0]
	s.served = 0
}

// op is a push or pull that arrived one round early and waits for the
// window to move.
type op struct {
	push   bool
	worker int
	round  uint64
	data   []byte
	pull   Pull
}

// Rounds is the round state machine of one key: no I/O and no locks. Its
// owner (one engine goroutine) feeds it pushes, pulls and served
// notifications, and carries out the answers it returns.
//
// A window of two rounds is open: base and base+1, in slots base%2 and
// (base+1)%2, each with its own sum buffer (double buffering). Round base
// retires, and base+2 opens, once it is complete and every worker's pull of
// it has been served, so a fast worker's push for base+1 never waits for a
// slow puller of base. An op for base+2 can arrive before base retires (the
// served notice of the last pull races the next push); it is held and
// replayed when the window moves. Anything further ahead, behind, or
// duplicated is an error to its sender and changes nothing.
//
// The first push of a round becomes the sum buffer without a copy: the
// pushed buffer is swapped in and the old sum buffer is handed back to the
// caller for reuse. Later pushes are added in with kernel.Add.
type Rounds struct {
	decl    proto.Decl
	workers int // pulls per round, and pushes per round for a sum key
	base    uint64
	slots   [2]slot
	bufs    [2][]byte
	held    []op
}

// NewRounds returns the state of a freshly declared key.
func NewRounds(decl proto.Decl, workers int) *Rounds {
	r := &Rounds{decl: decl, workers: workers}
	for i := range r.slots {
		r.slots[i].pushed = make([]bool, workers)
		r.slots[i].pulled = make([]bool, workers)
		r.slots[i].reset(uint64(i))
		r.bufs[i] = make([]byte, decl.Bytes)
	}
	return r
}

// Base is the oldest round not yet retired.
func (r *Rounds) Base() uint64 { return r.base }

func (r *Rounds) pushers() int {
	if r.decl.Root >= 0 {
		return 1
	}
	return r.workers
}

// Result is what one step produced.
type Result struct {
	Answers []Answer
	// Free lists buffers handed back to the caller's pool (pushed data
	// after it was added, or sum buffers replaced by a swap).
	Free [][]byte
	// Failed lists held pulls that turned out invalid when replayed.
	Failed []Failure
}

// Failure is a pull that cannot be answered.
type Failure struct {
	Pull Pull
	Err  error
}

// Push accepts worker w's data for round. On success data belongs to the
// key (it comes back through Result.Free). On error nothing changed and
// data is still the caller's.
func (r *Rounds) Push(w int, round uint64, data []byte) (Result, error) {
	var res Result
	if err := r.checkWorker(w); err != nil {
		return res, err
	}
	if len(data) != int(r.decl.Bytes) {
		return res, fmt.Errorf("key %s: push of %d bytes, declared %d", r.decl.Key, len(data), r.decl.Bytes)
	}
	if r.decl.Root >= 0 && w != int(r.decl.Root) {
		return res, fmt.Errorf("key %s: worker %d pushed to a broadcast key whose root is worker %d", r.decl.Key, w, r.decl.Root)
	}
	switch {
	case round < r.base:
		return res, fmt.Errorf("key %s: push for round %d, which is already over (current round %d)", r.decl.Key, round, r.base)
	case round == r.base+2:
		for _, h := range r.held {
			if h.push && h.worker == w && h.round == round {
				return res, fmt.Errorf("key %s: worker %d pushed round %d twice", r.decl.Key, w, round)
			}
		}
		r.held = append(r.held, op{push: true, worker: w, round: round, data: data})
		return res, nil
	case round > r.base+2:
		return res, fmt.Errorf("key %s: push for round %d, more than one round ahead of round %d", r.decl.Key, round, r.base)
	case r.slots[round%2].pushed[w]:
		return res, fmt.Errorf("key %s: worker %d pushed round %d twice", r.decl.Key, w, round)
	}
	r.push(w, round, data, &res)
	return res, nil
}

func (r *Rounds) checkWorker(w int) error {
	if w < 0 || w >= r.workers {
		return fmt.Errorf("key %s: worker %d is outside 0..%d", r.decl.Key, w, r.workers-1)
	}
	return nil
}

// push adds data to round, which is inside the window. If w already
// pushed this round, the error is reported as an answer-less failure.
func (r *Rounds) push(w int, round uint64, data []byte, res *Result) {
	i := round % 2
	s := &r.slots[i]
	if s.pushed[w] {
		// Only reachable from a held op that duplicates an accepted one;
		// Push rejects direct duplicates before calling us. Drop the data.
		res.Free = append(res.Free, data)
		return
	}
	s.pushed[w] = true
	if s.pushes == 0 {
		res.Free = append(res.Free, r.bufs[i])
		r.bufs[i] = data
	} else {
		kernel.Add(r.decl.DType, r.bufs[i], data)
		res.Free = append(res.Free, data)
	}
	s.pushes++
	if s.pushes == r.pushers() {
		s.complete = true
		for _, p := range s.waiting {
			res.Answers = append(res.Answers, Answer{Pull: p, Round: round, Buf: r.bufs[i]})
		}
		s.waiting = s.waiting[:0]
	}
}

// Pull asks for the sum of round. It is answered at once if the round is
// complete, else when it completes.
func (r *Rounds) Pull(p Pull, round uint64) (Result, error) {
	var res Result
	if err := r.checkWorker(p.Worker); err != nil {
		return res, err
	}
	switch {
	case round < r.base:
		return res, fmt.Errorf("key %s: pull for round %d, which is already over (current round %d)", r.decl.Key, round, r.base)
	case round == r.base+2:
		r.held = append(r.held, op{worker: p.Worker, round: round, pull: p})
		return res, nil
	case round > r.base+2:
		return res, fmt.Errorf("key %s: pull for round %d, more than one round ahead of round %d", r.decl.Key, round, r.base)
	}
	return res, r.pull(p, round, &res)
}

func (r *Rounds) pull(p Pull, round uint64, res *Result) error {
	i := round % 2
	s := &r.slots[i]
	if r.decl.Root < 0 && !s.pushed[p.Worker] {
		return fmt.Errorf("key %s: worker %d pulled round %d without an accepted push", r.decl.Key, p.Worker, round)
	}
	if s.pulled[p.Worker] {
		return fmt.Errorf("key %s: worker %d pulled round %d twice", r.decl.Key, p.Worker, round)
	}
	s.pulled[p.Worker] = true
	if s.complete {
		res.Answers = append(res.Answers, Answer{Pull: p, Round: round, Buf: r.bufs[i]})
	} else {
		s.waiting = append(s.waiting, p)
	}
	return nil
}

// Served records that one answer for round has been sent, so its buffer is
// free of that reader. When every worker's pull of the base round is
// served, the window moves and held ops are replayed.
func (r *Rounds) Served(round uint64) Result {
	var res Result
	if round < r.base || round > r.base+1 {
		panic(fmt.Sprintf("summation: served round %d outside window %d..%d", round, r.base, r.base+1))
	}
	r.slots[round%2].served++
	for {
		s := &r.slots[r.base%2]
		if !s.complete || s.served < r.workers {
			break
		}
		s.reset(r.base + 2)
		r.base++
		r.replay(&res)
	}
	return res
}

// replay runs the held ops that the window now admits, in arrival order.
func (r *Rounds) replay(res *Result) {
	keep := r.held[:0]
	var ready []op
	for _, h := range r.held {
		if h.round <= r.base+1 {
			ready = append(ready, h)
		} else {
			keep = append(keep, h)
		}
	}
	r.held = keep
	for _, h := range ready {
		if h.push {
			r.push(h.worker, h.round, h.data, res)
		} else if err := r.pull(h.pull, h.round, res); err != nil {
			// The pull's own push was refused earlier.
			res.Failed = append(res.Failed, Failure{Pull: h.pull, Err: err})
		}
	}
}
