package summation

import (
	"fmt"
	"slices"

	"github.com/gobps/gobps/proto"
	"github.com/gobps/gobps/summation/kernel"
)

// Pull is a worker's request for the sum of one round of one key. Reply is
// opaque to the round state: the server uses it to answer.
type Pull struct {
	Worker int
	ReqID  uint64
	Reply  any
}

// Answer says: send Buf, the sum of Round or a piece of it, to Pull. A
// whole answer has Piece < 0; a piece starts at Piece×proto.PieceBytes of
// the sum. Buf belongs to the key until Served(Round) is called for the pull,
// once, after its Last answer was sent; it must not be written.
type Answer struct {
	Pull  Pull
	Round uint64
	Buf   []byte
	Piece int
	Last  bool
}

// slot is the state of one round in the window.
type slot struct {
	round    uint64
	pushed   []bool  // by worker: push begun
	recv     []int   // by worker: bytes of the push received
	pulled   []bool  // by worker
	count    []int32 // by chunk: contributions summed into that chunk
	summed   int     // contributions summed, over all chunks
	pushes   int     // pushes complete
	complete bool
	ready    int // leading chunks whose sum is complete
	waiting  []waiter
	served   int
}

// waiter is a pull that came before its round was complete: it gets the
// chunks as their sums complete, in order, then the rest at completion.
type waiter struct {
	pull Pull
	sent int // leading chunks sent to it
}

func (s *slot) reset(round uint64) {
	s.round = round
	clear(s.pushed)
	clear(s.recv)
	clear(s.pulled)
	clear(s.count)
	s.summed = 0
	s.pushes = 0
	s.complete = false
	s.ready = 0
	s.waiting = s.waiting[:0]
	s.served = 0
}

// op is a push or pull that arrived one round early and waits for the
// window to move. A held push keeps its data in a buffer of its own; got
// says how much of it has arrived.
type op struct {
	push   bool
	worker int
	round  uint64
	data   []byte
	got    int
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
// A push arrives whole (Push) or in chunks (Begin, then Chunk for each
// proto.PieceBytes piece in order, as the TCP transport delivers them), so
// that a chunk is summed while it is still in cache and the rest of the push is
// still on the wire. Each chunk of the sum buffer counts its contributions:
// the first is copied in, later ones are added with kernel.Add. A whole
// push into a round nobody has touched yet is swapped in as the sum buffer
// without any copy, and the old buffer is handed back through Result.Free.
type Rounds struct {
	failed  error   // set by Fail: every later op gets it
	gone    []error // by worker: why it left the job (Depart); nil while it is in
	anyGone bool
	joined  []bool // by worker: out of data, answers with zeros (Join)
	nJoined int
	told    []uint64 // by worker: rounds below this were told (Behind)
	decl    proto.Decl
	workers int // worker ranks 0..workers-1; pulls per round of a broadcast key
	pushers int // pushes and pulls per round of a sum key
	chunks  int // chunks per buffer
	base    uint64
	slots   [2]slot
	bufs    [2][]byte
	held    []op
}

// NewRounds returns the state of a freshly declared key that every one of
// workers pushes to and pulls from each round.
func NewRounds(decl proto.Decl, workers int) *Rounds { return NewRoundsOf(decl, workers, workers) }

// NewRoundsOf returns the state of a freshly declared key when only pushers
// of the workers push to (and pull from) a sum key each round: one per
// machine under local aggregation, whichever local rank owns the key. All
// workers still pull a broadcast key.
func NewRoundsOf(decl proto.Decl, workers, pushers int) *Rounds {
	r := &Rounds{decl: decl, workers: workers, pushers: pushers, chunks: int((decl.Bytes + proto.PieceBytes - 1) / proto.PieceBytes),
		gone: make([]error, workers), joined: make([]bool, workers), told: make([]uint64, workers)}
	for i := range r.slots {
		s := &r.slots[i]
		s.pushed = make([]bool, workers)
		s.recv = make([]int, workers)
		s.pulled = make([]bool, workers)
		s.count = make([]int32, r.chunks)
		s.reset(uint64(i))
		r.bufs[i] = make([]byte, decl.Bytes)
	}
	return r
}

// Base is the oldest round not yet retired.
func (r *Rounds) Base() uint64 { return r.base }

func (r *Rounds) pushersPerRound() int {
	if r.decl.Root >= 0 {
		return 1
	}
	return r.pushers
}

func (r *Rounds) pullersPerRound() int {
	if r.decl.Root >= 0 {
		return r.workers
	}
	return r.pushers
}

// Result is what one step produced.
type Result struct {
	Answers []Answer
	// Free lists buffers handed back to the caller's pool (pushed data
	// after it was added, or sum buffers replaced by a swap).
	Free [][]byte
	// Failed lists held pulls that turned out invalid when replayed.
	Failed []Failure
	// Behind lists joined workers to tell that a round began without them
	// (see Join).
	Behind []Behind
}

// Behind says: tell joined Worker that Round began without it.
type Behind struct {
	Worker int
	Round  uint64
}

// Failure is a pull that cannot be answered.
type Failure struct {
	Pull Pull
	Err  error
}

// Fail ends the key: every pull waiting for a round that is not complete,
// and every held pull, is returned in Result.Failed with err, held pushes'
// buffers in Result.Free, and every later push or pull fails with err.
// (The servers fail a key whose workers disagree about what it is.)
func (r *Rounds) Fail(err error) Result {
	var res Result
	if r.failed != nil {
		return res
	}
	r.failed = err
	for i := range r.slots {
		s := &r.slots[i]
		if s.complete {
			continue
		}
		for _, w := range s.waiting {
			res.Failed = append(res.Failed, Failure{Pull: w.pull, Err: err})
		}
		s.waiting = s.waiting[:0]
	}
	for _, h := range r.held {
		if h.push {
			res.Free = append(res.Free, h.data)
		} else {
			res.Failed = append(res.Failed, Failure{Pull: h.pull, Err: err})
		}
	}
	r.held = nil
	return res
}

// check validates the start of worker w's push for round.
func (r *Rounds) check(w int, round uint64) error {
	if r.failed != nil {
		return r.failed
	}
	if err := r.checkWorker(w); err != nil {
		return err
	}
	if err := r.lost(round); err != nil {
		return err
	}
	if r.decl.Root >= 0 && w != int(r.decl.Root) {
		return fmt.Errorf("key %s: worker %d pushed to a broadcast key whose root is worker %d", r.decl.Key, w, r.decl.Root)
	}
	switch {
	case round < r.base:
		return fmt.Errorf("key %s: push for round %d, which is already over", r.decl.Key, round)
	case round == r.base+2:
		if r.heldPush(w, round) != nil {
			return fmt.Errorf("key %s: worker %d pushed round %d twice", r.decl.Key, w, round)
		}
	case round > r.base+2:
		return fmt.Errorf("key %s: push for round %d, more than one round ahead of the current one", r.decl.Key, round)
	case r.slots[round%2].pushed[w]:
		return fmt.Errorf("key %s: worker %d pushed round %d twice", r.decl.Key, w, round)
	}
	return nil
}

func (r *Rounds) heldPush(w int, round uint64) *op {
	for i := range r.held {
		if h := &r.held[i]; h.push && h.worker == w && h.round == round {
			return h
		}
	}
	return nil
}

// checkWhole validates worker w's whole push of data for round.
func (r *Rounds) checkWhole(w int, round uint64, data []byte) error {
	if err := r.check(w, round); err != nil {
		return err
	}
	if len(data) != int(r.decl.Bytes) {
		return fmt.Errorf("key %s: push of %d bytes, declared %d", r.decl.Key, len(data), r.decl.Bytes)
	}
	return nil
}

// Push accepts worker w's whole data for round. On success data belongs to
// the key (it comes back through Result.Free). On error nothing changed
// and data is still the caller's.
func (r *Rounds) Push(w int, round uint64, data []byte) (Result, error) {
	var res Result
	if err := r.checkWhole(w, round, data); err != nil {
		return res, err
	}
	if round == r.base+2 {
		r.held = append(r.held, op{push: true, worker: w, round: round, data: data, got: len(data)})
		r.began(round, &res)
		return res, nil
	}
	i := round % 2
	s := &r.slots[i]
	s.pushed[w] = true
	r.began(round, &res)
	if s.summed == 0 {
		res.Free = append(res.Free, r.bufs[i])
		r.bufs[i] = data
		for c := range s.count {
			s.count[c] = 1
		}
		s.summed = r.chunks
		s.recv[w] = len(data)
		r.pushDone(round, &res)
		return res, nil
	}
	r.add(w, round, 0, data, &res)
	res.Free = append(res.Free, data)
	return res, nil
}

// PushCopy accepts worker w's whole data for round as Push does, but never
// keeps data: the first contribution to a round is copied into its sum
// buffer, later ones are added, and a push held for a later round is
// copied. data is the caller's again when PushCopy returns (for a buffer
// the caller reuses, such as a transport's stable destination).
func (r *Rounds) PushCopy(w int, round uint64, data []byte) (Result, error) {
	var res Result
	if err := r.checkWhole(w, round, data); err != nil {
		return res, err
	}
	if round == r.base+2 {
		r.held = append(r.held, op{push: true, worker: w, round: round, data: append([]byte(nil), data...), got: len(data)})
		r.began(round, &res)
		return res, nil
	}
	r.slots[round%2].pushed[w] = true
	r.began(round, &res)
	r.add(w, round, 0, data, &res)
	return res, nil
}

// Begin starts worker w's chunked push for round. On error nothing changed
// and the chunks that follow must be dropped by the caller.
func (r *Rounds) Begin(w int, round uint64) (Result, error) {
	var res Result
	if err := r.check(w, round); err != nil {
		return res, err
	}
	if round == r.base+2 {
		r.held = append(r.held, op{push: true, worker: w, round: round, data: make([]byte, r.decl.Bytes)})
	} else {
		r.slots[round%2].pushed[w] = true
	}
	r.began(round, &res)
	return res, nil
}

// Chunk sums bytes [off, off+len(b)) of worker w's push for round, begun
// with Begin. Chunks come in order, each proto.PieceBytes long but the
// last. b stays the caller's. The last chunk completes the push.
func (r *Rounds) Chunk(w int, round uint64, off int, b []byte) Result {
	var res Result
	if off%proto.PieceBytes != 0 || off+len(b) > int(r.decl.Bytes) || (len(b) != proto.PieceBytes && off+len(b) != int(r.decl.Bytes)) {
		panic(fmt.Sprintf("summation: key %s: chunk of %d bytes at %d", r.decl.Key, len(b), off))
	}
	if r.failed != nil {
		return res // a push begun before the key failed: nothing to sum into
	}
	if h := r.heldPush(w, round); h != nil {
		copy(h.data[off:], b)
		h.got = off + len(b)
		return res
	}
	r.add(w, round, off, b, &res)
	return res
}

// add sums b into round's buffer at off, chunk by chunk, and completes w's
// push when all of it is in. REQUIRES: round in the window, w's push begun.
func (r *Rounds) add(w int, round uint64, off int, b []byte, res *Result) {
	i := round % 2
	s := &r.slots[i]
	buf := r.bufs[i]
	for len(b) > 0 {
		c := off / proto.PieceBytes
		n := min(len(b), proto.PieceBytes-off%proto.PieceBytes)
		if s.count[c] == 0 {
			copy(buf[off:off+n], b[:n])
		} else {
			kernel.Add(r.decl.DType, buf[off:off+n], b[:n])
		}
		if off%proto.PieceBytes+n == proto.PieceBytes || off+n == len(buf) {
			s.count[c]++
			s.summed++
		}
		s.recv[w] += n
		off += n
		b = b[n:]
	}
	if s.recv[w] == len(buf) {
		r.pushDone(round, res)
	}
	if !s.complete {
		r.stream(round, res)
	}
}

// pushDone counts one complete push and answers the waiting pulls when the
// round is complete.
func (r *Rounds) pushDone(round uint64, res *Result) {
	i := round % 2
	s := &r.slots[i]
	s.pushes++
	if s.pushes == r.pushersPerRound() {
		s.complete = true
		s.ready = r.chunks
		for _, w := range s.waiting {
			r.answerFrom(w.pull, round, w.sent, res)
		}
		s.waiting = s.waiting[:0]
	}
}

func (r *Rounds) checkWorker(w int) error {
	if w < 0 || w >= r.workers {
		return fmt.Errorf("key %s: worker %d is outside 0..%d", r.decl.Key, w, r.workers-1)
	}
	return nil
}

// Pull asks for the sum of round. It is answered at once if the round is
// complete, else when it completes.
func (r *Rounds) Pull(p Pull, round uint64) (Result, error) {
	var res Result
	if r.failed != nil {
		return res, r.failed
	}
	if err := r.checkWorker(p.Worker); err != nil {
		return res, err
	}
	if err := r.lost(round); err != nil {
		return res, err
	}
	switch {
	case round < r.base:
		return res, fmt.Errorf("key %s: pull for round %d, which is already over", r.decl.Key, round)
	case round == r.base+2:
		r.held = append(r.held, op{worker: p.Worker, round: round, pull: p})
		if r.decl.Root >= 0 {
			r.began(round, &res)
		}
		return res, nil
	case round > r.base+2:
		return res, fmt.Errorf("key %s: pull for round %d, more than one round ahead of the current one", r.decl.Key, round)
	}
	if r.decl.Root >= 0 {
		r.began(round, &res) // a joined root is needed too
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
		r.answerFrom(p, round, 0, res)
	} else {
		// The chunks already summed go now; the rest as they complete.
		r.answerPieces(p, round, 0, s.ready, res)
		s.waiting = append(s.waiting, waiter{pull: p, sent: s.ready})
	}
	return nil
}

// answerFrom answers p with round's sum from chunk `from` on: the whole sum
// in one answer when nothing was sent yet, else the remaining pieces.
func (r *Rounds) answerFrom(p Pull, round uint64, from int, res *Result) {
	if from == 0 {
		res.Answers = append(res.Answers, Answer{Pull: p, Round: round, Buf: r.bufs[round%2], Piece: -1, Last: true})
		return
	}
	r.answerPieces(p, round, from, r.chunks, res)
}

// answerPieces answers p with chunks from..to-1 of round's sum, one piece
// each; the piece that ends the sum is the pull's Last.
func (r *Rounds) answerPieces(p Pull, round uint64, from, to int, res *Result) {
	buf := r.bufs[round%2]
	for c := from; c < to; c++ {
		end := min((c+1)*proto.PieceBytes, len(buf))
		res.Answers = append(res.Answers, Answer{Pull: p, Round: round, Buf: buf[c*proto.PieceBytes : end], Piece: c, Last: end == len(buf)})
	}
}

// stream sends the waiting pulls of round the chunks whose sums completed
// since they were last served: an answer leaves chunk by chunk while the
// rest of the pushes are still arriving, instead of all at once at the end.
// Chunks complete in order: every pusher sends its chunks in order.
func (r *Rounds) stream(round uint64, res *Result) {
	s := &r.slots[round%2]
	need := int32(r.pushersPerRound())
	for s.ready < r.chunks && s.count[s.ready] >= need {
		s.ready++
	}
	for j := range s.waiting {
		w := &s.waiting[j]
		r.answerPieces(w.pull, round, w.sent, s.ready, res)
		w.sent = s.ready
	}
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
	r.advance(&res)
	return res
}

// advance retires the base round while it is complete and every pull of it
// has been served (or excused: its worker left), replaying the held ops the
// window then admits.
func (r *Rounds) advance(res *Result) {
	for {
		s := &r.slots[r.base%2]
		if !s.complete || s.served < r.pullersPerRound() {
			return
		}
		s.reset(r.base + 2)
		for w, gone := range r.gone {
			if gone != nil {
				r.excuse(s, w)
			}
		}
		r.base++
		r.replay(res)
	}
}

// Depart records that worker w has left the job, for the reason err (a
// clean departure before the others, or a death). A round that needs a
// push it will never get (w's, or under local aggregation its machine's
// once every worker of the machine has left) fails: its waiting pulls get
// err, and so does every later push or pull of it. w's own pulls that will
// never come are excused, so the rounds it did push still retire.
func (r *Rounds) Depart(w int, err error) Result {
	var res Result
	if w < 0 || w >= r.workers || r.gone[w] != nil {
		return res
	}
	r.gone[w] = err
	r.anyGone = true
	if r.failed != nil {
		return res
	}
	for i := range r.slots {
		s := &r.slots[i]
		r.excuse(s, w)
		if s.complete {
			continue
		}
		if lerr := r.lost(s.round); lerr != nil {
			for _, wt := range s.waiting {
				res.Failed = append(res.Failed, Failure{Pull: wt.pull, Err: lerr})
			}
			s.waiting = s.waiting[:0]
		}
	}
	keep := r.held[:0]
	for _, h := range r.held {
		if lerr := r.lost(h.round); lerr != nil {
			if h.push {
				res.Free = append(res.Free, h.data)
			} else {
				res.Failed = append(res.Failed, Failure{Pull: h.pull, Err: lerr})
			}
			continue
		}
		keep = append(keep, h)
	}
	r.held = keep
	r.advance(&res)
	return res
}

// Join says that worker w has run out of data (on) and answers the
// others' rounds with zeros until every worker has, or that it no longer
// does (off). A joined worker does not push or pull by itself: it is told
// (Result.Behind) of every round that begins without it, now and as
// rounds begin, and then pushes zeros to it (and pulls) like any worker.
// Under local aggregation a round needs a machine's push, so the joined
// workers of a machine that has pushed are not told.
func (r *Rounds) Join(w int, on bool) Result {
	var res Result
	if w < 0 || w >= r.workers || r.joined[w] == on {
		return res
	}
	r.joined[w] = on
	if !on {
		r.nJoined--
		return res
	}
	r.nJoined++
	for round := r.base + 2; round+1 > r.base; round-- { // the latest first
		if r.begun(round) && r.tell(w, round, &res) {
			break
		}
	}
	return res
}

// began tells the joined workers that round needs of it, once each: a
// push for round was accepted.
func (r *Rounds) began(round uint64, res *Result) {
	if r.nJoined == 0 {
		return
	}
	for w, j := range r.joined {
		if j {
			r.tell(w, round, res)
		}
	}
}

// tell adds joined worker w to res.Behind for round if round needs w and
// w was not told of it (or a later round) yet, and reports whether it did.
func (r *Rounds) tell(w int, round uint64, res *Result) bool {
	if round < r.told[w] || !r.needs(w, round) {
		return false
	}
	r.told[w] = round + 1
	res.Behind = append(res.Behind, Behind{Worker: w, Round: round})
	return true
}

// begun reports whether a push for round was accepted (or, for a
// broadcast key, a pull).
func (r *Rounds) begun(round uint64) bool {
	bcast := r.decl.Root >= 0
	if round <= r.base+1 {
		s := &r.slots[round%2]
		return slices.Contains(s.pushed, true) || bcast && slices.Contains(s.pulled, true)
	}
	return slices.ContainsFunc(r.held, func(h op) bool { return h.round == round && (h.push || bcast) })
}

// needs reports whether round still waits for worker w: its push (its
// machine's, under local aggregation), or for a broadcast key its pull.
func (r *Rounds) needs(w int, round uint64) bool {
	var s *slot
	if round <= r.base+1 {
		s = &r.slots[round%2]
	}
	did := func(w int, push bool) bool {
		if s != nil {
			if push {
				return s.pushed[w]
			}
			return s.pulled[w]
		}
		return slices.ContainsFunc(r.held, func(h op) bool { return h.push == push && h.worker == w && h.round == round })
	}
	if r.decl.Root >= 0 {
		if w == int(r.decl.Root) {
			return !did(w, true)
		}
		return !did(w, false)
	}
	per := r.perPusher()
	m := w / per * per
	for q := m; q < m+per; q++ {
		if did(q, true) {
			return false
		}
	}
	return true
}

// perPusher is the number of workers per pusher: a machine's, under local
// aggregation, else 1.
func (r *Rounds) perPusher() int {
	if r.pushers > 0 && r.pushers < r.workers && r.workers%r.pushers == 0 {
		return r.workers / r.pushers
	}
	return 1
}

// excuse counts gone worker w's pull of slot s as served if w would have
// pulled it and has not: a broadcast key's every worker pulls, a sum key's
// pushers pull what they pushed.
func (r *Rounds) excuse(s *slot, w int) {
	if !s.pulled[w] && (r.decl.Root >= 0 || s.pushed[w]) {
		s.pulled[w] = true
		s.served++
	}
}

// lost says why round can never complete, or nil: a push it needs will
// never come, because its pusher has left (for a sum key under local
// aggregation, every worker of the pusher's machine).
func (r *Rounds) lost(round uint64) error {
	if !r.anyGone || round < r.base {
		return nil
	}
	var s *slot
	if round <= r.base+1 {
		if s = &r.slots[round%2]; s.complete {
			return nil
		}
	}
	pushed := func(w int) bool {
		if s != nil {
			return s.pushed[w]
		}
		for _, h := range r.held {
			if h.push && h.worker == w && h.round == round {
				return true
			}
		}
		return false
	}
	if r.decl.Root >= 0 {
		if err := r.gone[r.decl.Root]; err != nil && !pushed(int(r.decl.Root)) {
			return err
		}
		return nil
	}
	per := r.perPusher()
	for m := 0; m < r.workers; m += per {
		var err error
		all, any := true, false
		for w := m; w < m+per; w++ {
			if r.gone[w] == nil {
				all = false
				break
			}
			err = r.gone[w]
			any = any || pushed(w)
		}
		if all && !any {
			return err
		}
	}
	return nil
}

// Waiting describes the oldest round in the window that has begun and is
// not complete: its number, and whom it still waits for. For a sum key
// that is the workers whose push is missing (under local aggregation,
// every worker of each machine whose push is missing); for a broadcast key
// the root, while its push is missing. ok is false when no begun round is
// waiting for a push (a complete round waiting for its pulls is not).
func (r *Rounds) Waiting() (round uint64, missing []int, ok bool) {
	for round = r.base; round <= r.base+1; round++ {
		s := &r.slots[round%2]
		if s.complete || !r.begun(round) {
			continue
		}
		if r.decl.Root >= 0 {
			if root := int(r.decl.Root); !s.pushed[root] {
				return round, []int{root}, true
			}
			continue
		}
		per := r.perPusher()
		for m := 0; m < r.workers; m += per {
			if r.needs(m, round) {
				for w := m; w < m+per; w++ {
					missing = append(missing, w)
				}
			}
		}
		if len(missing) > 0 {
			return round, missing, true
		}
	}
	return 0, nil, false
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
			r.slots[h.round%2].pushed[h.worker] = true
			if h.got > 0 {
				r.add(h.worker, h.round, 0, h.data[:h.got], res)
			}
			res.Free = append(res.Free, h.data)
		} else if err := r.pull(h.pull, h.round, res); err != nil {
			// The pull's own push was refused earlier.
			res.Failed = append(res.Failed, Failure{Pull: h.pull, Err: err})
		}
	}
}
