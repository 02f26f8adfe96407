package verbs

import (
	"errors"
	"fmt"
	"maps"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"

	"github.com/gobps/gobps/proto"
)

// TestProtocolRandomSchedules wires two protocol machines, the two ends of
// a connection, through simulated queue pairs (each way a queue of posted
// work requests delivered in order; completions and arrivals in one queue
// per end, taken in order by a simulated poller) and drives them the way
// the driver does: Sends on several simulated goroutines, serve answering
// RTSs and taking writes, a handler that refuses frames, declines or takes
// stable destinations and releases them late, registrations that fail, a
// connection that fails at a random moment (and always at the end), and
// now and then a forged message from a bad peer. Each step is chosen by a
// seeded random schedule. After every step it checks:
//
//   - the machine's verdict on every message of the peer's (CTS, credit,
//     write, stable landing, header) is the one an independent model of the
//     protocol gives, and with an honest peer it is always "legal";
//   - with an honest peer, a write is only ever written (by the simulated
//     NIC) and accepted (by the machine) into a destination the receiver
//     granted for exactly that frame and still holds for it: an open slot
//     offered to that frame, or a stable destination for its (op, key) and
//     length that the handler released; a header only into the header slot
//     of such a destination, never over one not yet read;
//   - no slot id or send id is handed out while a message in flight may
//     name it, and no stable id twice;
//   - each stable destination has exactly one credit in circulation (held
//     by the receiver, in flight, held by the sender, or used by a frame in
//     flight), so there is never more than one;
//   - no control slot or eager buffer is handed out while the NIC may read
//     it, and no payload is released while a write may read it (closeSend
//     says so);
//   - every frame whose Send returned nil is handed to the handler exactly
//     once when no failure came first;
//   - after the failure every registration is handed back exactly once,
//     and none while a write may still land in it.
func TestProtocolRandomSchedules(t *testing.T) {
	n := 4000
	switch {
	case testing.Short():
		n = 400
	case raceEnabled:
		n = 1000 // the race detector makes a schedule ten times slower
	}
	var total simStats
	for seed := uint64(0); seed < uint64(n); seed++ {
		s := newSim(seed)
		if err := s.run(); err != nil {
			t.Fatalf("seed %d: %v\nlast steps:\n%s", seed, err, strings.Join(s.trace, "\n"))
		}
		total.add(&s.stats)
	}
	t.Logf("%+v", total)
	// The schedules must reach every path they are meant to test.
	for name, v := range map[string]int{
		"stable frames": total.stable, "rendezvous frames": total.rendezvous, "eager frames": total.eager,
		"refusals": total.refused, "credit waits": total.creditWaits, "token waits": total.tokenWaits,
		"control slot waits": total.ctlWaits, "failures mid-flight": total.midFailures,
		"closes with a write posted": total.writingCloses, "forged messages refused": total.forgedRefused,
		"forged messages accepted": total.forgedAccepted, "registration failures": total.regFailures,
	} {
		if v == 0 {
			t.Errorf("no schedule produced %s", name)
		}
	}
}

type simStats struct {
	steps, frames, stable, rendezvous, eager, refused, creditWaits, tokenWaits, ctlWaits int
	midFailures, writingCloses, forgedRefused, forgedAccepted, regFailures               int
}

func (a *simStats) add(b *simStats) {
	a.steps += b.steps
	a.frames += b.frames
	a.stable += b.stable
	a.rendezvous += b.rendezvous
	a.eager += b.eager
	a.refused += b.refused
	a.creditWaits += b.creditWaits
	a.tokenWaits += b.tokenWaits
	a.ctlWaits += b.ctlWaits
	a.midFailures += b.midFailures
	a.writingCloses += b.writingCloses
	a.forgedRefused += b.forgedRefused
	a.forgedAccepted += b.forgedAccepted
	a.regFailures += b.regFailures
}

// sim is one schedule.
type sim struct {
	r      *rand.Rand
	ends   [2]*simEnd
	regs   []*simReg
	nextID int
	trace  []string // the last steps, for a failure's message
	stats  simStats

	failed bool // the connection has failed (at one end at least)
	forged bool // a forged message reached a machine: the honest-peer checks are off
	frames int  // frames to send, all ends together
	framed int  // frames started
	// every frame ever started, by ReqID
	all map[uint64]*simSend
}

// simReg is a registration: a payload, a destination, a page of header
// slots.
type simReg struct {
	id       int
	addr     uint64
	what     string
	end      *simEnd
	released int
	reads    int // writes posted from it and not yet delivered or flushed
}

func (r *simReg) String() string { return fmt.Sprintf("%s#%d", r.what, r.id) }

// simEnd is one end of the connection: its machine, its queue pair, its
// goroutines, and the model of what the machine should hold.
type simEnd struct {
	s          *sim
	i          int
	m          *protocol
	peer       *simEnd
	stableRecv bool // its handler is a StableReceiver

	wire   []*wmsg // posted, not yet delivered to the peer
	cq     []cqe   // completions and arrivals, for the poller
	events []*wmsg // poller → serve
	sends  []*simSend

	failed, graceful, dead, torn   bool
	serveCTS                       *wmsg          // serve waits for a control slot to send this CTS
	releases                       []uint32       // stable ids whose credit waits for a control slot
	ctlBusy, eagerBusy             map[int]bool   // read by the NIC: posted, not completed
	hdrSlots                       map[uint64]int // header slot address → stable id (receiver)
	hdrMem                         map[int]proto.Header
	handlerHolds                   map[uint32]bool // stable destinations whose frame the handler has and has not released
	pages                          int             // header pages registered
	lostTokens, lostCtl, lostEager int             // kept by work requests that completed with an error, as the driver does

	// The model.
	open      map[uint32]*simSend // sends between openSend and closeSend, by id
	announced map[uint32]bool     // send ids named by an RTS whose CTS has not been taken
	grants    map[stableKey]*mGrant
	grantsID  map[uint32]*mGrant
	slots     map[uint32]*mSlot // receive slots open
	promised  map[uint32]bool   // slot ids named in a CTS whose write has not been taken
	stable    []*mStable        // destinations granted, by id
	answered  map[stableKey]bool
	delivered map[uint64]int // frames handed to the handler, by ReqID
}

type mGrant struct {
	id     uint32
	n      uint32
	credit creditState
}

type mSlot struct {
	hdr    proto.Header
	reg    *simReg
	stable int // the stable destination whose first frame this is, or -1
}

type mStable struct {
	sk   stableKey
	n    uint32
	reg  *simReg
	held bool
}

type wkind uint8

const (
	wEager wkind = iota + 1
	wRTS
	wCTS
	wCredit
	wHdr   // RDMA write of a header into a header slot
	wWrite // RDMA write with immediate
)

var wkindNames = [...]string{wEager: "eager", wRTS: "RTS", wCTS: "CTS", wCredit: "credit", wHdr: "header write", wWrite: "write"}

// wmsg is a work request on the wire and, delivered, what it carries.
type wmsg struct {
	kind   wkind
	hdr    proto.Header // the frame's (eager, RTS, header write, write)
	sid    uint32       // RTS
	cts    cts          // CTS
	id     uint32       // credit
	imm, n uint32       // write
	addr   uint64       // header write, write: where
	idx    int          // the sender's eager buffer or control slot
	send   *simSend     // write: whose
	forged bool
}

func (w *wmsg) String() string {
	switch w.kind {
	case wRTS:
		return fmt.Sprintf("RTS sid=%d frame=%d", w.sid, w.hdr.ReqID)
	case wCTS:
		return fmt.Sprintf("CTS %+v", w.cts)
	case wCredit:
		return fmt.Sprintf("credit %d", w.id)
	case wWrite:
		return fmt.Sprintf("write imm=%#x n=%d frame=%d forged=%v", w.imm, w.n, w.hdr.ReqID, w.forged)
	}
	return fmt.Sprintf("%s frame=%d", wkindNames[w.kind], w.hdr.ReqID)
}

// cqe is an arrival from the peer (rx) or the completion of one of ours.
type cqe struct {
	rx, tx *wmsg
	ok     bool
}

// simSend is a Send in progress, on its own goroutine.
type simSend struct {
	e       *simEnd
	h       proto.Header
	st      sendStep
	route   route
	g       *grant
	payload *simReg
	sid     uint32
	gotCTS  *cts
	status  *bool
	err     bool
	// The model: the credit this frame commits and whose write is not
	// delivered yet (conservation of credits).
	carries    *mGrant
	writeInAir bool
	waiting    bool // blocked, and counted as a wait
}

type sendStep uint8

const (
	stStart sendStep = iota
	stToken
	stEager
	stOpen
	stCtl
	stCTS
	stPost
	stWait
	stDead
	stDone
)

func newSim(seed uint64) *sim {
	r := rand.New(rand.NewPCG(seed, 0x5eed))
	s := &sim{r: r, all: map[uint64]*simSend{}}
	for i := range s.ends {
		e := &simEnd{s: s, i: i, stableRecv: r.IntN(4) != 0,
			ctlBusy: map[int]bool{}, eagerBusy: map[int]bool{}, hdrSlots: map[uint64]int{}, hdrMem: map[int]proto.Header{}, handlerHolds: map[uint32]bool{},
			open: map[uint32]*simSend{}, announced: map[uint32]bool{}, grants: map[stableKey]*mGrant{}, grantsID: map[uint32]*mGrant{},
			slots: map[uint32]*mSlot{}, promised: map[uint32]bool{}, answered: map[stableKey]bool{}, delivered: map[uint64]int{}}
		e.m = newProtocol(protoConfig{sendDepth: 1 + r.IntN(4), eagerBufs: 1 + r.IntN(2), ctlSlots: 1 + r.IntN(6), eagerMax: eagerBytes})
		if r.IntN(4) == 0 { // ids about to wrap
			e.m.nextSlot, e.m.nextSID = stableBit-1-uint32(r.IntN(8)), 1<<32-1-uint32(r.IntN(8))
		}
		s.ends[i] = e
	}
	s.ends[0].peer, s.ends[1].peer = s.ends[1], s.ends[0]
	s.frames = 1 + r.IntN(40)
	return s
}

func (s *sim) logf(format string, args ...any) {
	if len(s.trace) >= 40 {
		s.trace = s.trace[1:]
	}
	s.trace = append(s.trace, fmt.Sprintf("%4d ", s.stats.steps)+fmt.Sprintf(format, args...))
}

func (s *sim) reg(e *simEnd, what string) *simReg {
	s.nextID++
	r := &simReg{id: s.nextID, addr: uint64(s.nextID) << 20, what: what, end: e}
	s.regs = append(s.regs, r)
	return r
}

// release hands back a registration; the NIC must be done with it.
func (s *sim) release(r *simReg) error {
	r.released++
	if r.released > 1 {
		return fmt.Errorf("%v released twice", r)
	}
	if r.reads > 0 {
		return fmt.Errorf("%v released while a write reads it", r)
	}
	if !s.forged {
		for _, e := range s.ends {
			if e.failed {
				continue // its NIC only flushes: nothing of it lands any more
			}
			for _, w := range e.wire {
				if w.kind == wWrite && w.addr == r.addr {
					return fmt.Errorf("%v released while a write into it is on the wire", r)
				}
			}
		}
	}
	return nil
}

// run plays the schedule: steps until every frame is sent and settled,
// then the connection fails and everything must be handed back.
func (s *sim) run() error {
	failAt := -1
	if s.r.IntN(3) == 0 {
		failAt = s.r.IntN(200)
	}
	forgeAt := -1
	if s.r.IntN(2) == 0 {
		forgeAt = s.r.IntN(200)
	}
	for s.stats.steps = 0; s.stats.steps < 5000; s.stats.steps++ {
		if err := s.check(); err != nil {
			return fmt.Errorf("step %d: %w", s.stats.steps, err)
		}
		if s.stats.steps == failAt && !s.failed {
			if s.busy() {
				s.stats.midFailures++
			}
			s.fail(s.ends[s.r.IntN(2)])
			continue
		}
		if s.stats.steps == forgeAt && !s.failed {
			if err := s.forge(); err != nil {
				return fmt.Errorf("step %d: %w", s.stats.steps, err)
			}
			continue
		}
		acts := s.actions()
		if len(acts) == 0 {
			if s.settled() {
				if !s.failed {
					if err := s.allDelivered(); err != nil {
						return err
					}
					s.fail(s.ends[s.r.IntN(2)]) // Close
					continue
				}
				return s.final()
			}
			return fmt.Errorf("step %d: deadlock: nothing can move\n%s", s.stats.steps, s.dump())
		}
		if err := acts[s.r.IntN(len(acts))](); err != nil {
			return fmt.Errorf("step %d: %w", s.stats.steps, err)
		}
	}
	return fmt.Errorf("not settled after %d steps\n%s", s.stats.steps, s.dump())
}

// busy says whether anything is in flight.
func (s *sim) busy() bool {
	for _, e := range s.ends {
		if len(e.wire)+len(e.cq)+len(e.events) > 0 {
			return true
		}
		for _, sd := range e.sends {
			if sd.st != stDone {
				return true
			}
		}
	}
	return false
}

// settled: nothing in flight, every Send returned, and after a failure
// both ends torn down.
func (s *sim) settled() bool {
	if s.busy() || s.framed < s.frames && !s.failed {
		return false
	}
	for _, e := range s.ends {
		if s.failed && !e.torn {
			return false
		}
		if e.serveCTS != nil || len(e.releases) > 0 {
			return false
		}
	}
	return true
}

func (s *sim) dump() string {
	var b strings.Builder
	for _, e := range s.ends {
		fmt.Fprintf(&b, "end %d: failed=%v dead=%v torn=%v wire=%v cq=%d events=%v serveCTS=%v releases=%v tokens=%d/%d ctl=%d eager=%d\n",
			e.i, e.failed, e.dead, e.torn, e.wire, len(e.cq), e.events, e.serveCTS, e.releases, e.m.tokens, e.m.maxTokens, e.m.ctl.inUse(), e.m.eager.inUse())
		for _, sd := range e.sends {
			if sd.st != stDone {
				fmt.Fprintf(&b, "  send frame %d at step %d route %d sid %d\n", sd.h.ReqID, sd.st, sd.route, sd.sid)
			}
		}
		for id, d := range e.stable {
			fmt.Fprintf(&b, "  stable %d: held %v\n", id, d.held)
		}
	}
	return b.String()
}

// actions lists what may happen next.
func (s *sim) actions() []func() error {
	var acts []func() error
	if !s.failed && s.framed < s.frames {
		acts = append(acts, s.startFrame)
	}
	for _, e := range s.ends {
		if len(e.wire) > 0 && !e.failed {
			acts = append(acts, e.deliver)
		}
		if len(e.wire) > 0 && e.failed {
			acts = append(acts, e.flush)
		}
		if len(e.cq) > 0 {
			acts = append(acts, e.poll)
		}
		ctlFree := len(e.m.ctl.free) > 0 || e.failed
		if e.serveCTS != nil && ctlFree || e.serveCTS == nil && (len(e.events) > 0 || e.failed && e.dead && !e.torn) {
			acts = append(acts, e.serve)
		}
		if len(e.releases) > 0 && ctlFree {
			acts = append(acts, e.retryRelease)
		}
		for _, id := range slices.Sorted(maps.Keys(e.handlerHolds)) { // in order: the schedule is the seed's
			if !e.torn {
				acts = append(acts, func() error { return e.release(id) })
			}
		}
		for _, sd := range e.sends {
			if sd.st != stDone && sd.canStep() {
				acts = append(acts, sd.step)
			}
		}
		if e.failed && !e.dead && len(e.wire) == 0 && len(e.cq) == 0 {
			acts = append(acts, func() error { e.dead = true; s.logf("end %d dead", e.i); return nil })
		}
	}
	return acts
}

// startFrame starts a Send at a random end.
func (s *sim) startFrame() error {
	e := s.ends[s.r.IntN(2)]
	s.framed++
	s.stats.frames++
	h := proto.Header{ReqID: uint64(s.framed)}
	switch k := s.r.IntN(10); {
	case k < 7:
		h.Op = []proto.Op{proto.OpPush, proto.OpPush, proto.OpPullResp}[s.r.IntN(3)]
		h.Key = proto.Key(s.r.IntN(2))
		h.Length = []uint32{64, 64, 64, 128}[s.r.IntN(4)]
	case k < 8:
		h.Op, h.Length = proto.OpError, uint32(s.r.IntN(100))
	default:
		h.Op, h.Length = proto.OpError, 5000 // too long for a receive buffer: rendezvous
	}
	sd := &simSend{e: e, h: h}
	e.sends = append(e.sends, sd)
	s.all[h.ReqID] = sd
	s.logf("end %d starts frame %d: %s key %d, %d bytes", e.i, h.ReqID, h.Op, h.Key, h.Length)
	return nil
}

// canStep says whether the Send's goroutine can move: it is not blocked
// on something that has not come. It only looks.
func (sd *simSend) canStep() bool {
	e, m, s := sd.e, sd.e.m, sd.e.s
	ready, wait := true, (*int)(nil) // whether what it waits for is there; what to count if not
	switch sd.st {
	case stStart:
		// The model's credit, not the machine's: a Send tries when it
		// may, and now and then when woken for nothing (the driver wakes
		// every waiter) to see the machine say wait.
		if rt, g := m.route(&sd.h); rt == routeStable && !e.failed {
			if mg := e.grantsID[g.id]; mg != nil {
				ready, wait = mg.credit == creditHeld, &s.stats.creditWaits
			}
		}
	case stToken:
		ready, wait = m.tokens < m.maxTokens || e.failed, &s.stats.tokenWaits
	case stEager:
		return len(m.eager.free) > 0 || e.failed
	case stCtl:
		ready, wait = len(m.ctl.free) > 0 || e.failed, &s.stats.ctlWaits
	case stCTS:
		return sd.gotCTS != nil || e.failed
	case stWait:
		return sd.status != nil || e.failed
	case stDead:
		return e.dead
	}
	if !ready && !sd.waiting && wait != nil {
		*wait++
	}
	sd.waiting = !ready
	spurious := (sd.st == stStart || sd.st == stToken) && s.r.IntN(8) == 0
	return ready || spurious
}

// step moves the Send on by one action.
func (sd *simSend) step() error {
	e, s, m := sd.e, sd.e.s, sd.e.m
	fail := func() error {
		sd.err, sd.st = true, stDone
		s.logf("end %d frame %d: Send fails", e.i, sd.h.ReqID)
		return nil
	}
	switch sd.st {
	case stStart:
		if e.failed {
			return fail()
		}
		sd.route, sd.g = m.route(&sd.h)
		if sd.g != nil {
			mg := e.grantsID[sd.g.id]
			if mg == nil || sd.g.n != sd.h.Length {
				return fmt.Errorf("frame %d routed to stable destination %d, never granted for it", sd.h.ReqID, sd.g.id)
			}
			ok := m.takeCredit(sd.g)
			if ok != (mg.credit == creditHeld) {
				return fmt.Errorf("takeCredit of %d says %v, the model's credit is %s", sd.g.id, ok, mg.credit)
			}
			if !ok {
				if e.failed {
					return fail()
				}
				return nil // waits on
			}
			mg.credit = creditTaken
		}
		s.logf("end %d frame %d: route %d", e.i, sd.h.ReqID, sd.route)
		sd.st = stToken
	case stToken:
		if e.failed {
			sd.giveBackCredit()
			return fail()
		}
		if !m.takeToken() {
			return nil // woken for nothing: waits on
		}
		if sd.route == routeEager {
			sd.st = stEager
			return nil
		}
		sd.st = stOpen
	case stEager:
		i, ok := m.takeEager()
		if !ok {
			if e.failed {
				m.putToken()
				return fail()
			}
			return nil
		}
		if e.failed {
			m.putEager(i)
			m.putToken()
			return fail()
		}
		if e.eagerBusy[i] {
			return fmt.Errorf("eager buffer %d handed out while the NIC reads it", i)
		}
		e.eagerBusy[i] = true
		if !e.post(&wmsg{kind: wEager, hdr: sd.h, idx: i}) {
			delete(e.eagerBusy, i)
			m.putEager(i)
			m.putToken()
			return fail()
		}
		s.stats.eager++
		sd.st = stDone // the token comes back with the completion
	case stOpen:
		if s.r.IntN(40) == 0 { // the payload cannot be registered
			s.stats.regFailures++
			sd.giveBackCredit()
			m.putToken()
			return fail()
		}
		sd.payload = s.reg(e, "payload")
		sid, ok := m.openSend(&sd.h, sd.g, sd)
		if ok && e.failed {
			return errors.New("openSend succeeded on a failed connection")
		}
		if !ok {
			if !e.failed {
				return errors.New("openSend failed on a live connection")
			}
			sd.giveBackCredit()
			m.putToken()
			if err := s.release(sd.payload); err != nil {
				return err
			}
			return fail()
		}
		if e.open[sid] != nil || e.announced[sid] {
			return fmt.Errorf("send id %d handed out while a CTS may name it", sid)
		}
		sd.sid = sid
		e.open[sid] = sd
		if sd.g != nil {
			mg := e.grantsID[sd.g.id]
			mg.credit = creditOwed
			sd.carries, sd.writeInAir = mg, true
		}
		sd.st = stCtl
	case stCtl:
		slot, ok := m.takeCtl()
		if !ok {
			return sd.close(fail) // the connection failed
		}
		if e.ctlBusy[slot] {
			return fmt.Errorf("control slot %d handed out while the NIC reads it", slot)
		}
		e.ctlBusy[slot] = true
		w := &wmsg{kind: wRTS, hdr: sd.h, sid: sd.sid, idx: slot}
		sd.st = stCTS
		if sd.g != nil {
			w = &wmsg{kind: wHdr, hdr: sd.h, addr: sd.g.hdrAddr, idx: slot}
			sd.st = stPost
		}
		if !e.post(w) {
			e.unpost(slot)
			return sd.close(fail)
		}
		if sd.g == nil {
			e.announced[sd.sid] = true
		}
	case stCTS:
		if sd.gotCTS == nil {
			return sd.close(fail) // the connection failed
		}
		if sd.gotCTS.refused {
			s.stats.refused++
			return sd.close(nil)
		}
		sd.st = stPost
	case stPost:
		if e.failed && s.r.IntN(2) == 0 {
			return sd.close(fail) // it saw the failure first
		}
		m.writePosted(sd.sid)
		w := &wmsg{kind: wWrite, hdr: sd.h, n: sd.h.Length, send: sd}
		if sd.g != nil {
			w.addr, w.imm = sd.g.addr, stableBit|sd.g.id
			s.stats.stable++
		} else {
			w.addr, w.imm = sd.gotCTS.addr, sd.gotCTS.slot
			s.stats.rendezvous++
		}
		sd.payload.reads++
		if !e.post(w) {
			sd.payload.reads--
			m.writeNotPosted(sd.sid)
			return sd.close(fail)
		}
		sd.st = stWait
	case stWait:
		if sd.status == nil || !*sd.status {
			return sd.close(fail)
		}
		return sd.close(nil)
	case stDead:
		m.putToken()
		if err := s.release(sd.payload); err != nil {
			return err
		}
		sd.st = stDone
	}
	return nil
}

// giveBackCredit returns the credit a Send took and did not commit.
func (sd *simSend) giveBackCredit() {
	if sd.g == nil {
		return
	}
	sd.e.m.returnCredit(sd.g)
	sd.e.grantsID[sd.g.id].credit = creditHeld
}

// close ends an opened send: closeSend says whether the NIC may still
// read the payload; then (at once, or once the end is dead) the payload is
// released and the token given back. then, if set, ends the Send with an
// error.
func (sd *simSend) close(then func() error) error {
	e, s := sd.e, sd.e.s
	writing := e.m.closeSend(sd.sid)
	delete(e.open, sd.sid)
	if sd.payload.reads > 0 && !writing {
		return fmt.Errorf("frame %d: closeSend says the NIC is done with the payload while its write is on the wire", sd.h.ReqID)
	}
	s.logf("end %d frame %d: close (writing %v)", e.i, sd.h.ReqID, writing)
	if then != nil {
		sd.err = true
	}
	if writing {
		s.stats.writingCloses++
		sd.st = stDead
		return nil
	}
	e.m.putToken()
	if err := s.release(sd.payload); err != nil {
		return err
	}
	sd.st = stDone
	return nil
}

// post puts w on the wire to the peer. After a failure of this end the
// NIC flushes it, in its own time; once the QP is destroyed posting fails
// (false), and the caller takes back what it gave the work request.
func (e *simEnd) post(w *wmsg) bool {
	if e.dead {
		e.s.logf("end %d cannot post %v: the QP is gone", e.i, w)
		return false
	}
	e.s.logf("end %d posts %v", e.i, w)
	e.wire = append(e.wire, w)
	return true
}

// unpost takes back control slot i of a work request that was not posted.
func (e *simEnd) unpost(i int) {
	delete(e.ctlBusy, i)
	e.m.putCtl(i)
}

// flush completes the next work request of a failed end with an error:
// it never reaches the peer.
func (e *simEnd) flush() error {
	w := e.wire[0]
	e.wire = e.wire[1:]
	if w.kind == wWrite && w.send != nil {
		w.send.payload.reads--
		w.send.writeInAir = false
	}
	e.cq = append(e.cq, cqe{tx: w})
	e.s.logf("end %d flushes %v", e.i, w)
	return nil
}

// fail fails the connection at e, and at its peer (its TCP socket ends):
// both QPs go to ERROR; what is on their wires is flushed (later steps),
// and what has arrived is still taken by their pollers.
func (s *sim) fail(e *simEnd) {
	s.logf("end %d fails", e.i)
	s.failed = true
	graceful := s.r.IntN(2) == 0
	for _, x := range []*simEnd{e, e.peer} {
		if x.failed {
			continue
		}
		x.failed, x.graceful = true, graceful && x != e
		x.m.fail()
		// A Release waiting for a control slot gives up.
		x.releases = nil
	}
}

// deliver takes the next message off e's wire into the peer.
func (e *simEnd) deliver() error {
	s, p := e.s, e.peer
	w := e.wire[0]
	e.wire = e.wire[1:]
	s.logf("end %d → %d: %v", e.i, p.i, w)
	e.cq = append(e.cq, cqe{tx: w, ok: true})
	switch w.kind {
	case wHdr:
		id, ok := p.hdrSlots[w.addr]
		if !ok {
			if s.forged {
				return nil // where a forged grant said: none of our concern
			}
			return fmt.Errorf("header written at %#x, no header slot of end %d", w.addr, p.i)
		}
		if !s.forged {
			d := p.stable[id]
			if d.held {
				return fmt.Errorf("header of frame %d written into stable destination %d, which the handler holds", w.hdr.ReqID, id)
			}
			if d.sk != (stableKey{w.hdr.Op, w.hdr.Key}) || d.n != w.hdr.Length {
				return fmt.Errorf("header of frame %d written into the slot of stable destination %d for %v", w.hdr.ReqID, id, d.sk)
			}
			for _, q := range p.pendingWrites() {
				if q.imm == stableBit|uint32(id) {
					return fmt.Errorf("header of frame %d written over the unread one of stable destination %d", w.hdr.ReqID, id)
				}
			}
		}
		p.hdrMem[id] = w.hdr
		return nil
	case wWrite:
		w.send.payload.reads--
		w.send.writeInAir = false
		if !s.forged {
			if err := p.checkWrite(w); err != nil {
				return err
			}
		}
	}
	p.cq = append(p.cq, cqe{rx: w, ok: true})
	return nil
}

// pendingWrites are the writes that reached e and that serve has not
// taken yet.
func (e *simEnd) pendingWrites() []*wmsg {
	var ws []*wmsg
	for _, c := range e.cq {
		if c.rx != nil && c.rx.kind == wWrite {
			ws = append(ws, c.rx)
		}
	}
	for _, w := range e.events {
		if w.kind == wWrite {
			ws = append(ws, w)
		}
	}
	return ws
}

// checkWrite: the NIC writes frame w into e's memory. It must be a
// destination e granted for exactly this frame and still holds for it.
func (e *simEnd) checkWrite(w *wmsg) error {
	if w.imm&stableBit != 0 {
		id := int(w.imm &^ stableBit)
		if id >= len(e.stable) {
			return fmt.Errorf("frame %d written into stable destination %d, never granted", w.hdr.ReqID, id)
		}
		d := e.stable[id]
		switch {
		case d.reg.addr != w.addr:
			return fmt.Errorf("frame %d written at %#x with the immediate of stable destination %d (%v)", w.hdr.ReqID, w.addr, id, d.reg)
		case d.reg.released > 0:
			return fmt.Errorf("frame %d written into %v, released", w.hdr.ReqID, d.reg)
		case d.held:
			return fmt.Errorf("frame %d written into stable destination %d, which the handler holds", w.hdr.ReqID, id)
		case d.sk != (stableKey{w.hdr.Op, w.hdr.Key}) || d.n != w.hdr.Length:
			return fmt.Errorf("frame %d (%s %d, %d bytes) written into the stable destination of %v, %d bytes", w.hdr.ReqID, w.hdr.Op, w.hdr.Key, w.hdr.Length, d.sk, d.n)
		}
		return nil
	}
	sl := e.slots[w.imm]
	switch {
	case sl == nil:
		return fmt.Errorf("frame %d written for slot %d, which is not open", w.hdr.ReqID, w.imm)
	case sl.reg.addr != w.addr || sl.hdr.ReqID != w.hdr.ReqID:
		return fmt.Errorf("frame %d written at %#x for slot %d, offered to frame %d in %v", w.hdr.ReqID, w.addr, w.imm, sl.hdr.ReqID, sl.reg)
	case sl.reg.released > 0:
		return fmt.Errorf("frame %d written into %v, released", w.hdr.ReqID, sl.reg)
	}
	return nil
}

// poll takes e's next completion or arrival.
func (e *simEnd) poll() error {
	m := e.m
	c := e.cq[0]
	e.cq = e.cq[1:]
	if w := c.tx; w != nil {
		switch w.kind {
		case wEager:
			delete(e.eagerBusy, w.idx)
			if c.ok {
				m.putEager(w.idx)
				m.putToken()
			} else {
				e.lostTokens++
				e.lostEager++
			}
		case wRTS, wCTS, wHdr, wCredit:
			delete(e.ctlBusy, w.idx)
			if c.ok {
				m.putCtl(w.idx)
			} else {
				e.lostCtl++
			}
		case wWrite:
			sd := w.send
			writing := sd.st == stWait && e.open[sd.sid] == sd
			got := m.wrote(sd.sid, c.ok)
			if (got != nil) != writing || got != nil && got != any(sd) {
				return fmt.Errorf("wrote(%d) woke %v, the model says writing=%v", sd.sid, got, writing)
			}
			if got != nil {
				ok := c.ok
				sd.status = &ok
			}
		}
		return nil
	}
	w := c.rx
	if w.forged {
		e.s.forged = true // from here on the peer is not honest
	}
	var err error
	switch w.kind {
	case wCTS:
		err = e.takeCTS(w)
	case wCredit:
		legal := func() bool { g := e.grantsID[w.id]; return g != nil && g.credit == creditOwed }()
		err = e.verdict(w, legal, m.credit(w.id))
		if err == nil && legal {
			e.grantsID[w.id].credit = creditHeld
		}
	default:
		e.events = append(e.events, w)
	}
	return err
}

// verdict compares the machine's verdict got on w with the model's. A
// refusal fails the connection.
func (e *simEnd) verdict(w *wmsg, legal bool, got error) error {
	s := e.s
	switch {
	case got != nil && !errors.Is(got, proto.ErrBadFrame):
		return fmt.Errorf("%v: %v does not wrap proto.ErrBadFrame", w, got)
	case legal && got != nil:
		return fmt.Errorf("%v refused, the model finds it legal: %v", w, got)
	case !legal && got == nil:
		return fmt.Errorf("%v accepted, the model finds it illegal", w)
	case !legal && !w.forged && !s.forged && !e.failed:
		// (Once the connection has failed, a Send may end before its CTS
		// comes; the late CTS is refused, to no effect.)
		return fmt.Errorf("an honest peer's %v is illegal: %v", w, got)
	}
	if w.forged {
		if legal {
			s.stats.forgedAccepted++
		} else {
			s.stats.forgedRefused++
		}
	}
	if got != nil {
		s.logf("end %d refuses %v: %v", e.i, w, got)
		if !e.failed {
			s.fail(e)
		}
	}
	return nil
}

// takeCTS hands the peer's CTS to the machine.
func (e *simEnd) takeCTS(w *wmsg) error {
	m := &w.cts
	sd := e.open[m.sid]
	// A CTS may come as soon as the send is open: the machine cannot tell
	// whether its RTS has been posted yet (nor need it: a CTS only says
	// where in the peer's memory to write).
	legal := sd != nil && sd.route == routeRendezvous && sd.gotCTS == nil
	if !w.forged && !e.s.forged && !e.announced[m.sid] {
		return fmt.Errorf("an honest peer answers send %d, never announced", m.sid)
	}
	sk := stableKey{}
	if legal && !m.refused {
		sk = stableKey{sd.h.Op, sd.h.Key}
		legal = m.n == sd.h.Length && (!m.stable || e.grants[sk] == nil && e.grantsID[m.id] == nil)
	}
	got, err := e.m.cts(m)
	if err := e.verdict(w, legal, err); err != nil || !legal {
		return err
	}
	if got != any(sd) {
		return fmt.Errorf("CTS for send %d woke %v", m.sid, got)
	}
	delete(e.announced, m.sid)
	if m.stable && !m.refused {
		g := &mGrant{id: m.id, n: m.n, credit: creditOwed}
		e.grants[sk], e.grantsID[m.id] = g, g
	}
	cp := *m
	sd.gotCTS = &cp
	return nil
}

// serve takes e's next event, or sends the CTS it waits to send, or tears
// e down once it is dead.
func (e *simEnd) serve() error {
	s, m := e.s, e.m
	if e.serveCTS != nil {
		return e.sendCTS(e.serveCTS)
	}
	if e.failed && len(e.events) == 0 {
		if !e.dead {
			return nil
		}
		e.torn = true
		for _, r := range m.teardown() {
			sr, ok := r.(*simReg)
			if !ok || sr.end != e {
				return fmt.Errorf("teardown handed back %v, not a registration of end %d", r, e.i)
			}
			if err := s.release(sr); err != nil {
				return err
			}
		}
		clear(e.slots)
		clear(e.promised)
		s.logf("end %d torn down", e.i)
		return nil
	}
	w := e.events[0]
	e.events = e.events[1:]
	if w.forged {
		s.forged = true
	}
	if e.failed && (!e.graceful || w.kind == wRTS) {
		return nil // dropped: the connection is gone
	}
	switch w.kind {
	case wEager:
		return e.handled(w.hdr)
	case wRTS:
		return e.rts(w)
	case wWrite:
		if w.imm&stableBit != 0 {
			return e.landStable(w)
		}
		sl := e.slots[w.imm]
		legal := sl != nil && sl.hdr.Length == w.n
		got, err := m.landSlot(w.imm, w.n)
		if (got != nil) != (sl != nil) {
			return fmt.Errorf("landSlot(%d) gave %v, the model's slot is %v", w.imm, got, sl)
		}
		if got != nil {
			if got.reg != any(sl.reg) || got.hdr != sl.hdr {
				return fmt.Errorf("landSlot(%d) gave %v for frame %d, the model's slot is %v for frame %d", w.imm, got.reg, got.hdr.ReqID, sl.reg, sl.hdr.ReqID)
			}
			delete(e.slots, w.imm)
			delete(e.promised, w.imm)
			if err := s.release(sl.reg); err != nil {
				return err
			}
		}
		if err := e.verdict(w, legal, err); err != nil || !legal {
			return err
		}
		if !s.forged && got.hdr.ReqID != w.hdr.ReqID {
			return fmt.Errorf("frame %d landed in the slot of frame %d", w.hdr.ReqID, got.hdr.ReqID)
		}
		if sl.stable >= 0 {
			e.handlerHolds[uint32(sl.stable)] = true // the first frame, in the stable buffer
		}
		return e.handled(got.hdr)
	}
	return nil
}

// landStable takes a write into a stable destination and the header in
// its slot.
func (e *simEnd) landStable(w *wmsg) error {
	s := e.s
	id := w.imm &^ stableBit
	var md *mStable
	if int(id) < len(e.stable) {
		md = e.stable[id]
	}
	legal := md != nil && !md.held && md.n == w.n
	d, err := e.m.landStable(id, w.n)
	if err := e.verdict(w, legal, err); err != nil || !legal {
		return err
	}
	if d.id != id || d.reg != any(md.reg) {
		return fmt.Errorf("landStable(%d) gave destination %d in %v", id, d.id, d.reg)
	}
	md.held = true
	hdr := e.hdrMem[int(id)]
	legal = hdr.Op == md.sk.op && hdr.Key == md.sk.key && hdr.Length == md.n
	hw := &wmsg{kind: wHdr, hdr: hdr, forged: w.forged}
	if err := e.verdict(hw, legal, d.check(&hdr)); err != nil || !legal {
		return err
	}
	if !s.forged && hdr.ReqID != w.hdr.ReqID {
		return fmt.Errorf("frame %d landed in stable destination %d under the header of frame %d", w.hdr.ReqID, id, hdr.ReqID)
	}
	e.handlerHolds[id] = true
	return e.handled(hdr)
}

// handled records a frame handed to the handler (refused or not).
func (e *simEnd) handled(h proto.Header) error {
	if e.s.forged {
		return nil
	}
	e.delivered[h.ReqID]++
	if e.delivered[h.ReqID] > 1 {
		return fmt.Errorf("frame %d handed to the handler twice", h.ReqID)
	}
	e.s.logf("end %d handles frame %d", e.i, h.ReqID)
	return nil
}

// rts answers an announced frame: a stable destination, a slot, or a
// refusal.
func (e *simEnd) rts(w *wmsg) error {
	s, m := e.s, e.m
	h := w.hdr
	if err := m.rts(&h); err != nil {
		return fmt.Errorf("RTS of frame %d refused: %v", h.ReqID, err)
	}
	refuse := func() error {
		_ = e.handled(h) // Handle with the reason
		return e.sendCTS(&wmsg{kind: wCTS, cts: cts{sid: w.sid, refused: true}})
	}
	sk := stableKey{h.Op, h.Key}
	wantAsk := e.stableRecv && h.Op.CarriesTensor() && !e.answered[sk] && len(e.stable) < maxStableGrants
	if ask := m.askStable(&h, e.stableRecv); ask != wantAsk {
		return fmt.Errorf("askStable for frame %d says %v, the model %v", h.ReqID, ask, wantAsk)
	}
	var d *stableDest
	var md *mStable
	if wantAsk {
		switch k := s.r.IntN(8); {
		case k == 0: // the handler refuses the frame
			return refuse()
		case k == 1: // it keeps this (op, key) on the per-frame path
			m.declineStable(&h)
			e.answered[sk] = true
		default:
			need := len(e.stable)/stableHdrPage >= e.pages
			if m.needHdrPage() != need {
				return fmt.Errorf("needHdrPage says %v, the model %v", !need, need)
			}
			if need {
				if s.r.IntN(20) == 0 {
					s.stats.regFailures++
					return refuse()
				}
				m.addHdrPage(s.reg(e, "page"))
				e.pages++
			}
			if s.r.IntN(20) == 0 {
				s.stats.regFailures++
				return refuse()
			}
			reg := s.reg(e, "stable")
			d = m.grantStable(&h, make([]byte, h.Length), reg)
			if int(d.id) != len(e.stable) {
				return fmt.Errorf("stable id %d handed out, want %d (ids are never reused)", d.id, len(e.stable))
			}
			md = &mStable{sk: sk, n: h.Length, reg: reg, held: true}
			e.stable = append(e.stable, md)
			e.answered[sk] = true
			pg := d.page.(*simReg)
			e.hdrSlots[pg.addr+uint64(d.hdrOff)] = int(d.id)
		}
	}
	if d == nil && s.r.IntN(10) == 0 { // Dest refuses
		return refuse()
	}
	if s.r.IntN(25) == 0 { // the destination cannot be registered
		s.stats.regFailures++
		return refuse()
	}
	reg := s.reg(e, "dest")
	sl := &mSlot{hdr: h, reg: reg, stable: -1}
	if d != nil {
		// The driver registers the stable buffer again for the slot: a
		// second reference to the same memory.
		reg.addr, reg.what, sl.stable = md.reg.addr, "stable-ref", int(d.id)
	}
	slot := m.openSlot(&h, make([]byte, h.Length), reg)
	if e.slots[slot] != nil || e.promised[slot] || slot == 0 || slot&stableBit != 0 {
		return fmt.Errorf("slot id %d handed out while a write may name it", slot)
	}
	e.slots[slot] = sl
	e.promised[slot] = true
	m2 := cts{sid: w.sid, slot: slot, n: h.Length, addr: reg.addr}
	if d != nil {
		pg := d.page.(*simReg)
		m2.stable, m2.id, m2.hdrAddr = true, d.id, pg.addr+uint64(d.hdrOff)
	}
	return e.sendCTS(&wmsg{kind: wCTS, cts: m2})
}

// sendCTS posts a CTS from a control slot, or leaves serve waiting for one.
func (e *simEnd) sendCTS(w *wmsg) error {
	slot, ok := e.m.takeCtl()
	if !ok {
		if e.failed {
			e.serveCTS = nil
			return nil
		}
		if e.serveCTS == nil {
			e.s.stats.ctlWaits++
		}
		e.serveCTS = w
		return nil
	}
	e.serveCTS = nil
	if e.ctlBusy[slot] {
		return fmt.Errorf("control slot %d handed out while the NIC reads it", slot)
	}
	e.ctlBusy[slot] = true
	w.idx = slot
	if !e.post(w) {
		e.unpost(slot)
	}
	return nil
}

// release is the handler's Release of stable destination id.
func (e *simEnd) release(id uint32) error {
	md := e.stable[id]
	got, ok := e.m.release(md.sk)
	if got != id && ok {
		return fmt.Errorf("release of %v gives a credit for %d", md.sk, got)
	}
	if ok == e.failed {
		return fmt.Errorf("release on a connection failed=%v sends a credit: %v", e.failed, ok)
	}
	md.held = false
	delete(e.handlerHolds, id)
	e.s.logf("end %d releases stable destination %d", e.i, id)
	if ok {
		e.releases = append(e.releases, id)
		if len(e.m.ctl.free) == 0 {
			e.s.stats.ctlWaits++
			return nil // the credit waits for a control slot
		}
		return e.retryRelease()
	}
	return nil
}

// retryRelease posts the oldest waiting credit, if a control slot is free.
func (e *simEnd) retryRelease() error {
	if e.failed {
		e.releases = nil
		return nil
	}
	slot, ok := e.m.takeCtl()
	if !ok {
		return errors.New("no control slot for a credit after the step was enabled")
	}
	if e.ctlBusy[slot] {
		return fmt.Errorf("control slot %d handed out while the NIC reads it", slot)
	}
	e.ctlBusy[slot] = true
	id := e.releases[0]
	e.releases = e.releases[1:]
	if !e.post(&wmsg{kind: wCredit, id: id, idx: slot}) {
		e.unpost(slot)
	}
	return nil
}

// forge puts a message a bad peer might send in front of a random end's
// poller (as the next arrival), or writes a header into a slot.
func (s *sim) forge() error {
	e := s.ends[s.r.IntN(2)]
	w := &wmsg{forged: true}
	pick := func(ids []uint32) uint32 {
		if len(ids) == 0 || s.r.IntN(4) == 0 {
			return uint32(s.r.IntN(5))
		}
		return ids[s.r.IntN(len(ids))]
	}
	switch s.r.IntN(4) {
	case 0:
		sids := slices.Sorted(maps.Keys(e.open))
		w.kind = wCTS
		w.cts = cts{sid: pick(sids), refused: s.r.IntN(4) == 0, n: []uint32{64, 128, 5000}[s.r.IntN(3)], slot: 1,
			addr: 1, stable: s.r.IntN(2) == 0, id: uint32(len(e.grantsID) + s.r.IntN(2) - s.r.IntN(2))}
		if sd := e.open[w.cts.sid]; sd != nil && s.r.IntN(2) == 0 {
			w.cts.n = sd.h.Length
		}
	case 1:
		w.kind, w.id = wCredit, uint32(s.r.IntN(3))
	case 2:
		w.kind, w.imm = wWrite, pick(slices.Sorted(maps.Keys(e.slots)))
		w.n = []uint32{64, 128, 5000}[s.r.IntN(3)]
		if sl := e.slots[w.imm]; sl != nil && s.r.IntN(2) == 0 {
			w.n = sl.hdr.Length
		}
	default:
		w.kind, w.imm = wWrite, stableBit|uint32(s.r.IntN(3))
		w.n = []uint32{64, 128}[s.r.IntN(2)]
		if id := int(w.imm &^ stableBit); id < len(e.stable) && s.r.IntN(2) == 0 {
			// and a header in its slot, right or wrong
			h := proto.Header{Op: e.stable[id].sk.op, Key: e.stable[id].sk.key, Length: e.stable[id].n}
			if s.r.IntN(2) == 0 {
				h.Key++
			}
			e.hdrMem[id] = h
			s.forged = true // our memory was written by a bad peer
		}
	}
	s.logf("forged for end %d: %v", e.i, w)
	e.cq = append([]cqe{{rx: w, ok: true}}, e.cq...)
	return nil
}

// check verifies what must hold between steps.
func (s *sim) check() error {
	for _, e := range s.ends {
		m := e.m
		if m.tokens < 0 || m.tokens > m.maxTokens {
			return fmt.Errorf("end %d: %d tokens of %d", e.i, m.tokens, m.maxTokens)
		}
		for i := range e.ctlBusy {
			if !m.ctl.busy[i] {
				return fmt.Errorf("end %d: control slot %d free while the NIC reads it", e.i, i)
			}
		}
		for i := range e.eagerBusy {
			if !m.eager.busy[i] {
				return fmt.Errorf("end %d: eager buffer %d free while the NIC reads it", e.i, i)
			}
		}
		// The machine's open sends and slots are the model's.
		if len(m.sends) != len(e.open) || len(m.slots) != len(e.slots) {
			return fmt.Errorf("end %d: the machine has %d sends and %d slots open, the model %d and %d",
				e.i, len(m.sends), len(m.slots), len(e.open), len(e.slots))
		}
		for id, md := range e.stable {
			if m.stableByID[id].held != md.held {
				return fmt.Errorf("end %d: stable destination %d held=%v, the model says %v", e.i, id, m.stableByID[id].held, md.held)
			}
		}
		for id, mg := range e.grantsID {
			if g := m.grantsByID[id]; g == nil || g.credit != mg.credit {
				return fmt.Errorf("end %d: grant %d: the machine's %v, the model's credit %s", e.i, id, g, mg.credit)
			}
		}
		if !s.forged {
			if err := e.creditsConserved(); err != nil {
				return err
			}
		}
	}
	return nil
}

// creditsConserved: every stable destination e granted has exactly one
// credit in circulation before the connection fails, at most one after.
func (e *simEnd) creditsConserved() error {
	p := e.peer
	for id, md := range e.stable {
		var where []string
		if md.held {
			where = append(where, "held by the receiver")
		}
		for _, w := range e.wire {
			if w.kind == wCredit && w.id == uint32(id) {
				where = append(where, "on the wire")
			}
		}
		for _, c := range p.cq {
			if c.rx != nil && c.rx.kind == wCredit && c.rx.id == uint32(id) && !c.rx.forged {
				where = append(where, "arrived at the sender")
			}
		}
		for _, rid := range e.releases {
			if rid == uint32(id) {
				where = append(where, "waiting for a control slot")
			}
		}
		if g := p.grantsID[uint32(id)]; g != nil && g.credit != creditOwed {
			where = append(where, "the sender's: "+g.credit.String())
		}
		for _, sd := range p.sends {
			if sd.carries != nil && sd.carries.id == uint32(id) && sd.writeInAir && sd.st != stDone && sd.st != stDead {
				where = append(where, fmt.Sprintf("used by frame %d", sd.h.ReqID))
			}
		}
		for _, w := range e.pendingWrites() {
			if w.imm == stableBit|uint32(id) && !w.forged {
				where = append(where, fmt.Sprintf("frame %d landed", w.hdr.ReqID))
			}
		}
		if len(where) > 1 || len(where) == 0 && !e.failed {
			return fmt.Errorf("stable destination %d of end %d: %d credits in circulation: %v\n%s", id, e.i, len(where), where, e.s.dump())
		}
	}
	return nil
}

// allDelivered: with no failure, every frame whose Send returned nil was
// handed to the handler.
func (s *sim) allDelivered() error {
	if s.forged {
		return nil
	}
	for id, sd := range s.all {
		if !sd.err && sd.e.peer.delivered[id] != 1 {
			return fmt.Errorf("frame %d sent, handed over %d times", id, sd.e.peer.delivered[id])
		}
	}
	return nil
}

// final: after the failure, every registration was handed back once, and
// every token, control slot and eager buffer is back but those kept by work
// requests that completed with an error (the driver keeps them too: the
// connection is gone).
func (s *sim) final() error {
	for _, r := range s.regs {
		if r.released != 1 {
			return fmt.Errorf("%v handed back %d times", r, r.released)
		}
	}
	for _, e := range s.ends {
		m := e.m
		if m.tokens != e.lostTokens || m.ctl.inUse() != e.lostCtl || m.eager.inUse() != e.lostEager {
			return fmt.Errorf("end %d: %d tokens, %d control slots, %d eager buffers still taken; %d, %d, %d were kept by errors",
				e.i, m.tokens, m.ctl.inUse(), m.eager.inUse(), e.lostTokens, e.lostCtl, e.lostEager)
		}
	}
	return nil
}
