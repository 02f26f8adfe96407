package verbs

import (
	"fmt"

	"github.com/gobps/gobps/proto"
)

// protocol is the verbs protocol of one connection as a state machine with
// no I/O: it decides, the driver (conn, in verbs.go) acts. It keeps both
// halves of the connection:
//
//   - sending: the send ids of rendezvous and stable frames and what each
//     waits for (its CTS, its write's completion), and the stable
//     destinations the peer granted, each with its one credit;
//   - receiving: the rendezvous receive slots (slot id → destination and
//     its registration, awaiting the peer's write), and the stable
//     destinations this side granted (by (op, key) and by id, held or
//     released, with their header slots);
//
// and the connection's bounded resources: frames in flight (SendDepth
// tokens), eager send buffers and control slots. It checks every message
// of the peer's that touches that state (CTS, credit, write, a write into
// a stable destination and the header found in its slot) and returns an
// error wrapping proto.ErrBadFrame for one the protocol does not allow; the
// driver fails the connection with it. It hands out send ids, slot ids and
// stable ids, and never one that a message still in flight may name.
//
// It never looks into memory: destination buffers are slices it only
// hands back, and registrations (MR cache entries, temporary MRs, pages of
// header slots) are opaque handles of the driver's that it hands back,
// each exactly once, when the driver must release them: a receive slot's
// when its write has landed (landSlot), the others when the connection is
// torn down (teardown). A send's payload registration stays with the
// Send's goroutine; closeSend says whether the NIC may still read it.
//
// Misuse by the driver (a resource put back that was not taken, a grant
// after teardown) panics: it is a bug of this package, not of the peer.
//
// Locking: none inside; the machine starts no goroutine and uses no
// channel or clock. The driver makes every call under conn.mu, which
// guards the machine as a whole: Sends on the callers' goroutines, the
// poller (completions, CTS, credits), serve (RTS, writes, teardown) and
// Release on any goroutine. Values it returns (a *grant, *stableDest,
// *recvSlot) may be read outside the lock only for their immutable fields:
// everything but a grant's credit and a stable destination's held.
type protocol struct {
	failed bool // the connection failed: no new sends, no credits
	torn   bool // teardown has run: nothing more may be registered

	tokens, maxTokens int  // frames in flight, and SendDepth
	eager, ctl        pool // eager send buffers; control slots (RTS, CTS, header writes, credits)
	eagerMax          int  // the largest eager message: our receive buffers and the peer's

	// Sending.
	sends      map[uint32]*sendState
	nextSID    uint32
	grants     map[stableKey]*grant // stable destinations the peer granted us
	grantsByID map[uint32]*grant

	// Receiving.
	slots      map[uint32]*recvSlot
	nextSlot   uint32
	stable     map[stableKey]*stableDest // granted to the peer; nil: the handler declined
	stableByID []*stableDest             // INVARIANT: stableByID[i].id == i
	pages      []any                     // registered pages of stableHdrPage header slots
}

// protoConfig sizes a protocol.
type protoConfig struct {
	sendDepth int // frames in flight (tokens)
	eagerBufs int // eager send buffers
	ctlSlots  int // control slots: our send depth plus the peer's, plus spare
	eagerMax  int // the largest eager message (header included)
}

func newProtocol(cfg protoConfig) *protocol {
	return &protocol{
		maxTokens: cfg.sendDepth, eager: newPool(cfg.eagerBufs), ctl: newPool(cfg.ctlSlots), eagerMax: cfg.eagerMax,
		sends: map[uint32]*sendState{}, grants: map[stableKey]*grant{}, grantsByID: map[uint32]*grant{},
		slots: map[uint32]*recvSlot{}, stable: map[stableKey]*stableDest{},
	}
}

// stableKey names the frames that share a stable destination.
type stableKey struct {
	op  proto.Op
	key proto.Key
}

// badFrame is an error about a message of the peer's.
func badFrame(format string, args ...any) error {
	return fmt.Errorf("%w: %s", proto.ErrBadFrame, fmt.Sprintf(format, args...))
}

// pool hands out the indices 0..n-1 (buffers, slots) one at a time.
type pool struct {
	free []int
	busy []bool
}

func newPool(n int) pool {
	p := pool{free: make([]int, n), busy: make([]bool, n)}
	for i := range p.free {
		p.free[i] = n - 1 - i // 0 first
	}
	return p
}

func (p *pool) take() (int, bool) {
	if len(p.free) == 0 {
		return 0, false
	}
	i := p.free[len(p.free)-1]
	p.free = p.free[:len(p.free)-1]
	p.busy[i] = true
	return i, true
}

func (p *pool) put(i int) {
	if i < 0 || i >= len(p.busy) || !p.busy[i] {
		panic(fmt.Sprintf("verbs: index %d put back to a pool of %d that did not hand it out", i, len(p.busy)))
	}
	p.busy[i] = false
	p.free = append(p.free, i)
}

// inUse is the number of indices handed out.
func (p *pool) inUse() int { return len(p.busy) - len(p.free) }

// takeToken takes one of SendDepth frames in flight; false: wait until
// putToken.
func (p *protocol) takeToken() bool {
	if p.tokens >= p.maxTokens {
		return false
	}
	p.tokens++
	return true
}

// putToken gives back a token: an eager frame's send completed, or a
// rendezvous or stable Send returned.
func (p *protocol) putToken() {
	if p.tokens <= 0 {
		panic("verbs: a token put back that was not taken")
	}
	p.tokens--
}

// takeEager takes an eager send buffer; false: wait until putEager.
func (p *protocol) takeEager() (int, bool) { return p.eager.take() }

// putEager gives back eager send buffer i: its SEND completed, or was
// never posted.
func (p *protocol) putEager(i int) { p.eager.put(i) }

// takeCtl takes a control slot for an RTS, a CTS, a header write or a
// credit; false: wait until putCtl. There are enough that only messages
// already on the wire hold them all (see handshake), so the wait ends
// without the peer's software.
func (p *protocol) takeCtl() (int, bool) { return p.ctl.take() }

// putCtl gives back control slot i: its work request completed, or was
// never posted.
func (p *protocol) putCtl(i int) { p.ctl.put(i) }

// fail marks the connection failed; true the first time. Sends may no
// longer open and releases no longer send credits.
func (p *protocol) fail() bool {
	if p.failed {
		return false
	}
	p.failed = true
	return true
}

// Sending.

// route is the way a frame goes.
type route uint8

const (
	routeEager      route = iota + 1 // one SEND of header and payload into a receive buffer
	routeRendezvous                  // RTS, the peer's CTS, one RDMA write with immediate
	routeStable                      // header and payload written into a stable destination of the peer's
)

// sendPhase is where a rendezvous or stable send is.
type sendPhase uint8

const (
	sendCTS     sendPhase = iota + 1 // its RTS is posted (or about to be): it waits for the CTS
	sendReady                        // it may post its write: the CTS came, or a stable frame
	sendWriting                      // its write is posted: the NIC may read the payload
	sendFailed                       // its write completed with an error
	sendDone                         // its write completed, or the CTS refused the frame
)

// sendState is one open send.
type sendState struct {
	op    proto.Op
	key   proto.Key
	n     uint32
	phase sendPhase
	cts   bool // a CTS came for it
	w     any  // the driver's, handed back to wake the Send
}

// creditState is where the one credit of a grant is.
type creditState uint8

const (
	creditOwed  creditState = iota // a frame of ours is (or is about to be) in the destination: the peer owes the credit
	creditHeld                     // we may write one frame
	creditTaken                    // a Send took it and has neither committed it (openSend) nor given it back
)

func (c creditState) String() string {
	switch c {
	case creditOwed:
		return "owed"
	case creditHeld:
		return "held"
	case creditTaken:
		return "taken"
	}
	return fmt.Sprintf("credit(%d)", uint8(c))
}

// grant is a stable destination the peer granted: the frames of its (op,
// key) and length go there, one per credit.
type grant struct {
	id, n         uint32
	rkey, hdrRKey uint32
	addr, hdrAddr uint64
	credit        creditState // the only mutable field
}

// route says how h goes (h is stamped: its Length is the payload's) and,
// for a frame into a stable destination of the peer's, which.
func (p *protocol) route(h *proto.Header) (route, *grant) {
	if h.Length == 0 || (!h.Op.CarriesTensor() && msgHeaderSize+proto.HeaderSize+int(h.Length) <= p.eagerMax) {
		return routeEager, nil
	}
	if g := p.grants[stableKey{h.Op, h.Key}]; g != nil && g.n == h.Length {
		return routeStable, g
	}
	return routeRendezvous, nil
}

// takeCredit takes g's credit for one frame; false: the peer has not given
// it back yet, wait until credit(g.id) (or the connection fails). The Send
// then commits it with openSend or gives it back with returnCredit.
func (p *protocol) takeCredit(g *grant) bool {
	if g.credit != creditHeld {
		return false
	}
	g.credit = creditTaken
	return true
}

// returnCredit gives back a credit taken and never committed: the frame
// was not sent.
func (p *protocol) returnCredit(g *grant) {
	if g.credit != creditTaken {
		panic(fmt.Sprintf("verbs: credit of stable destination %d given back while %s", g.id, g.credit))
	}
	g.credit = creditHeld
}

// openSend opens a send of h (a rendezvous frame, or with g a stable frame
// holding g's taken credit, which it commits) under a fresh send id, with
// w, the driver's handle that cts and wrote return to wake the Send.
// False once the connection has failed: the Send fails, and gives back the
// credit it took.
//
// Send ids are handed out in increasing order (wrapping at 2^32) and never
// while open: a CTS names the send it answers, and one that comes late or
// twice finds its id closed, not another frame.
func (p *protocol) openSend(h *proto.Header, g *grant, w any) (uint32, bool) {
	if p.failed {
		return 0, false
	}
	s := &sendState{op: h.Op, key: h.Key, n: h.Length, phase: sendCTS, w: w}
	if g != nil {
		if g.credit != creditTaken {
			panic(fmt.Sprintf("verbs: stable send into %d without its credit", g.id))
		}
		g.credit = creditOwed
		s.phase = sendReady
	}
	p.nextSID++
	for p.sends[p.nextSID] != nil {
		p.nextSID++
	}
	p.sends[p.nextSID] = s
	return p.nextSID, true
}

// cts takes the peer's CTS m for one of our rendezvous sends and returns
// the driver's handle of that send, to which the driver hands m. A stable
// grant in m is recorded: later frames of the send's (op, key) and length
// go there once the peer gives its credit. An error changes nothing.
func (p *protocol) cts(m *cts) (any, error) {
	s := p.sends[m.sid]
	switch {
	case s == nil || (s.phase != sendCTS && !s.cts):
		return nil, badFrame("CTS for send %d, which is not waiting for one", m.sid)
	case s.cts:
		return nil, badFrame("second CTS for send %d", m.sid)
	}
	if m.refused {
		s.cts, s.phase = true, sendDone
		return s.w, nil
	}
	if m.n != s.n {
		return nil, badFrame("CTS for %d bytes, the frame has %d", m.n, s.n)
	}
	if m.stable {
		sk := stableKey{s.op, s.key}
		if p.grants[sk] != nil || p.grantsByID[m.id] != nil {
			return nil, badFrame("second stable grant for %s %s (id %d)", s.op, s.key, m.id)
		}
		// The credit is owed: the peer gives it once it is done with the
		// frame this CTS lets us write.
		g := &grant{id: m.id, n: m.n, rkey: m.rkey, hdrRKey: m.hdrRKey, addr: m.addr, hdrAddr: m.hdrAddr, credit: creditOwed}
		p.grants[sk], p.grantsByID[m.id] = g, g
	}
	s.cts, s.phase = true, sendReady
	return s.w, nil
}

// writePosted says the send's write is about to be posted: from now on
// the NIC may read its payload. Call it before posting, so that the
// completion, which may come at once, finds it.
func (p *protocol) writePosted(sid uint32) {
	s := p.sends[sid]
	if s == nil || s.phase != sendReady {
		panic(fmt.Sprintf("verbs: write of send %d posted out of turn", sid))
	}
	s.phase = sendWriting
}

// writeNotPosted undoes writePosted: posting failed, the NIC never saw it.
func (p *protocol) writeNotPosted(sid uint32) {
	if s := p.sends[sid]; s != nil && s.phase == sendWriting {
		s.phase = sendReady
	}
}

// wrote takes the completion of a send's write and returns the driver's
// handle of the send to wake, or nil if the send is not writing (it
// returned already: the connection failed).
func (p *protocol) wrote(sid uint32, ok bool) any {
	s := p.sends[sid]
	if s == nil || s.phase != sendWriting {
		return nil
	}
	s.phase = sendFailed
	if ok {
		s.phase = sendDone
	}
	return s.w
}

// closeSend ends a send; writing says that its write was posted and did
// not complete successfully, so the NIC may still read the payload: the
// driver must not release or reuse it before the QP is destroyed.
func (p *protocol) closeSend(sid uint32) (writing bool) {
	s := p.sends[sid]
	if s == nil {
		panic(fmt.Sprintf("verbs: send %d closed twice", sid))
	}
	delete(p.sends, sid)
	return s.phase == sendWriting || s.phase == sendFailed
}

// credit takes the peer's credit for stable destination id: one more
// frame may be written there. It is due only once per frame written.
func (p *protocol) credit(id uint32) error {
	g := p.grantsByID[id]
	switch {
	case g == nil:
		return badFrame("credit for stable destination %d, which was never granted", id)
	case g.credit != creditOwed:
		return badFrame("second credit for stable destination %d", id)
	}
	g.credit = creditHeld
	return nil
}

// Receiving.

// recvSlot is a rendezvous receive: a destination offered to the peer in
// a CTS, awaiting its write. Immutable.
type recvSlot struct {
	hdr proto.Header
	dst []byte
	reg any // dst's registration: an MR cache entry or a temporary MR
}

// stableDest is a stable destination this side granted: the handler's
// buffer, registered for the life of the connection, and a header slot in
// a registered page that the peer writes each frame's header into.
type stableDest struct {
	id     uint32
	sk     stableKey
	buf    []byte
	reg    any // buf's registration
	page   any // the page of header slots holding its slot
	hdrOff int // the offset of its slot in the page
	held   bool
}

// rts checks a frame the peer announces, before the handler is asked
// anything about it.
func (p *protocol) rts(h *proto.Header) error {
	if h.Length == 0 {
		return badFrame("RTS for %s without a payload", h.Op)
	}
	return nil
}

// askStable says whether to ask the handler for a stable destination for
// the frame h announces: it can give one (stableRecv: a StableReceiver),
// h carries a tensor, its (op, key) was never answered (with a buffer or a
// refusal) and there is room for another. The handler's refusal is then
// recorded with declineStable, its buffer with grantStable.
func (p *protocol) askStable(h *proto.Header, stableRecv bool) bool {
	if !stableRecv || !h.Op.CarriesTensor() || len(p.stableByID) >= maxStableGrants {
		return false
	}
	_, seen := p.stable[stableKey{h.Op, h.Key}]
	return !seen
}

// declineStable records that the handler keeps h's (op, key) on the
// per-frame path.
func (p *protocol) declineStable(h *proto.Header) {
	p.stable[stableKey{h.Op, h.Key}] = nil
}

// needHdrPage says whether the next grant needs another page of header
// slots, which the driver registers and adds with addHdrPage before
// grantStable.
func (p *protocol) needHdrPage() bool {
	return len(p.pages) <= len(p.stableByID)/stableHdrPage
}

// addHdrPage adds a registered page of stableHdrPage header slots,
// released at teardown.
func (p *protocol) addHdrPage(pg any) {
	if p.torn {
		panic("verbs: header page added after teardown")
	}
	p.pages = append(p.pages, pg)
}

// grantStable grants the frames of h's (op, key) and length the stable
// destination buf, registered as reg (released at teardown). It is held:
// the frame h announces is the first to land there, by rendezvous.
func (p *protocol) grantStable(h *proto.Header, buf []byte, reg any) *stableDest {
	id := uint32(len(p.stableByID))
	switch {
	case p.torn:
		panic("verbs: stable destination granted after teardown")
	case int(id)/stableHdrPage >= len(p.pages):
		panic("verbs: stable destination granted without its header page")
	case len(buf) != int(h.Length):
		panic(fmt.Sprintf("verbs: a %d-byte stable destination for a %d-byte frame", len(buf), h.Length))
	}
	d := &stableDest{id: id, sk: stableKey{h.Op, h.Key}, buf: buf, reg: reg,
		page: p.pages[id/stableHdrPage], hdrOff: int(id%stableHdrPage) * stableHdrBytes, held: true}
	p.stable[d.sk] = d
	p.stableByID = append(p.stableByID, d)
	return d
}

// openSlot offers dst, registered as reg, to the frame h announces, under
// a fresh slot id: the CTS names it, and the peer's write carries it as its
// immediate. Slot ids run from 1 to stableBit-1, in increasing order
// (wrapping), never 0 and never one that is open: a slot is open until its
// write has landed or the connection is torn down, so no write can find
// another frame's slot under its id.
func (p *protocol) openSlot(h *proto.Header, dst []byte, reg any) uint32 {
	if p.torn {
		panic("verbs: receive slot opened after teardown")
	}
	p.nextSlot++
	for p.nextSlot == 0 || p.nextSlot >= stableBit || p.slots[p.nextSlot] != nil {
		p.nextSlot = max(1, (p.nextSlot+1)%stableBit)
	}
	p.slots[p.nextSlot] = &recvSlot{hdr: *h, dst: dst, reg: reg}
	return p.nextSlot
}

// landSlot takes the peer's write of n bytes into slot and closes the
// slot. The slot, when there was one, comes back even with an error: the
// driver releases its registration either way.
func (p *protocol) landSlot(slot, n uint32) (*recvSlot, error) {
	s := p.slots[slot]
	if s == nil {
		return nil, badFrame("write into slot %d, which awaits none", slot)
	}
	delete(p.slots, slot)
	if n != s.hdr.Length {
		return s, badFrame("wrote %d bytes of a %d-byte %s payload", n, s.hdr.Length, s.hdr.Op)
	}
	return s, nil
}

// landStable takes the peer's write of n bytes into stable destination id,
// which holds it until release. The driver then checks the header found
// in its slot (check).
func (p *protocol) landStable(id, n uint32) (*stableDest, error) {
	var d *stableDest
	if int(id) < len(p.stableByID) {
		d = p.stableByID[id]
	}
	switch {
	case d == nil:
		return nil, badFrame("write into stable destination %d, never granted", id)
	case d.held:
		return nil, badFrame("write into stable destination %d without a credit", id)
	case int(n) != len(d.buf):
		return nil, badFrame("wrote %d bytes into a %d-byte stable destination", n, len(d.buf))
	}
	d.held = true
	return d, nil
}

// check says whether h, the header found in d's header slot after a
// write, is that of a frame d was granted for. It reads only d's immutable
// fields: no lock needed.
func (d *stableDest) check(h *proto.Header) error {
	if h.Op != d.sk.op || h.Key != d.sk.key || int(h.Length) != len(d.buf) {
		return badFrame("%s %s of %d bytes in the stable destination of %s %s", h.Op, h.Key, h.Length, d.sk.op, d.sk.key)
	}
	return nil
}

// release says the handler is done with the frame in sk's stable
// destination. ok: the driver sends the peer a credit for id. Nothing to
// do for a destination not held, or once the connection has failed.
func (p *protocol) release(sk stableKey) (id uint32, ok bool) {
	d := p.stable[sk]
	if d == nil || !d.held {
		return 0, false
	}
	d.held = false
	return d.id, !p.failed
}

// teardown ends the receiving half once the QP is destroyed (no write can
// land any more) and returns every registration it kept, for the driver
// to release: the open slots', the stable destinations', then the header
// pages. Each is returned once; later calls return nothing.
func (p *protocol) teardown() []any {
	if p.torn {
		return nil
	}
	p.torn, p.failed = true, true
	var regs []any
	for id, s := range p.slots {
		regs = append(regs, s.reg)
		delete(p.slots, id)
	}
	for _, d := range p.stableByID {
		regs = append(regs, d.reg)
	}
	regs = append(regs, p.pages...)
	p.pages = nil
	return regs
}
