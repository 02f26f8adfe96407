package ibv

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"sync"
	"syscall"
	"time"
	"unsafe"
)

// EmuOptions configure an emulated fabric.
type EmuOptions struct {
	// Devices are the fabric's devices; nil means one, "emu0", whose port 1
	// is ACTIVE RoCE with the GID table of rxe on lo: index 0 a link-local
	// RoCE v1 GID, index 1 ::ffff:127.0.0.1 (RoCE v2).
	Devices []EmuDevice
	// MemlockBytes, if positive, bounds the bytes registered at once across
	// the fabric, as RLIMIT_MEMLOCK bounds a process: a registration past it
	// fails with ENOMEM and the same message the real binding gives.
	MemlockBytes int64
}

// EmuDevice is an emulated device.
type EmuDevice struct {
	Name  string
	Ports []EmuPort // port 1 is Ports[0]
}

// EmuPort is an emulated port.
type EmuPort struct {
	State     PortState
	LinkLayer LinkLayer
	MTU       MTU
	LID       uint16
	GIDs      []GID
	GIDTypes  []string // as in sysfs; may be shorter than GIDs
}

// DefaultEmuDevice is the device an Emulator has when EmuOptions.Devices is
// nil.
func DefaultEmuDevice(name string) EmuDevice {
	return EmuDevice{Name: name, Ports: []EmuPort{{
		State: PortActive, LinkLayer: LinkEthernet, MTU: MTU1024,
		GIDs: []GID{
			netip.MustParseAddr("fe80::200:ff:fe00:0").As16(),
			netip.MustParseAddr("::ffff:127.0.0.1").As16(),
		},
		GIDTypes: []string{"IB/RoCE v1", "RoCE v2"},
	}}}
}

// Emulator is an in-process verbs fabric with the semantics the transport
// relies on, in pure Go: queue pairs connect by QP number (and GID or LID,
// which must match the peer's port); RDMA_WRITE and RDMA_WRITE_WITH_IMM copy
// into the peer's registered memory after checking the rkey, the access
// flags and the bounds; SEND and WRITE_WITH_IMM consume the peer's next
// posted receive, and with none posted either wait (rnr_retry 7, "forever",
// as long as the peer lives) or fail with RNR_RETRY_EXC_ERR; each QP's work
// requests complete in order; a QP moved to ERROR flushes its outstanding
// work requests; an operation towards a QP that is gone, not yet ready or in
// ERROR fails with RETRY_EXC_ERR (at once, where hardware would retry for a
// while first). "DMA" happens synchronously inside PostSend/PostRecv, under
// one fabric-wide lock.
//
// It is a Library: the transport runs on it unchanged, which is how the RDMA
// protocol is tested without a NIC. It is not a performance model.
type Emulator struct {
	opt EmuOptions

	mu      sync.Mutex
	qps     map[uint32]*emuQP
	mrs     map[uint32]*emuMR
	nextQPN uint32
	nextKey uint32
	locked  int64
	live    EmuLive
}

// EmuLive counts an Emulator's live objects, for leak checks.
type EmuLive struct {
	Contexts, PDs, MRs, Channels, CQs, QPs int
	// RegisteredBytes is the memory registered now.
	RegisteredBytes int64
}

// NewEmulator returns an emulated fabric.
func NewEmulator(opt EmuOptions) *Emulator {
	if opt.Devices == nil {
		opt.Devices = []EmuDevice{DefaultEmuDevice("emu0")}
	}
	return &Emulator{opt: opt, qps: map[uint32]*emuQP{}, mrs: map[uint32]*emuMR{}, nextQPN: 0x11, nextKey: 0x1000}
}

// Live returns the counts of live objects.
func (e *Emulator) Live() EmuLive {
	e.mu.Lock()
	defer e.mu.Unlock()
	l := e.live
	l.RegisteredBytes = e.locked
	return l
}

// Devices implements Library.
func (e *Emulator) Devices() ([]string, error) {
	var names []string
	for _, d := range e.opt.Devices {
		names = append(names, d.Name)
	}
	return names, nil
}

// Open implements Library.
func (e *Emulator) Open(name string) (Context, error) {
	for i := range e.opt.Devices {
		if e.opt.Devices[i].Name == name {
			e.mu.Lock()
			e.live.Contexts++
			e.mu.Unlock()
			return &emuCtx{e: e, dev: &e.opt.Devices[i]}, nil
		}
	}
	return nil, fmt.Errorf("ibv_open_device: no device %q", name)
}

type emuCtx struct {
	e      *Emulator
	dev    *EmuDevice
	refs   int // PDs, channels, CQs; guarded by e.mu
	closed bool
}

func (c *emuCtx) Name() string { return c.dev.Name }

func (c *emuCtx) Query() (DeviceAttr, error) {
	return DeviceAttr{PhysPortCnt: len(c.dev.Ports), MaxQPWR: 16384, MaxCQE: 1 << 20, MaxMRSize: 1 << 40, MaxSGE: 32}, nil
}

func (c *emuCtx) port(port int) (*EmuPort, error) {
	if port < 1 || port > len(c.dev.Ports) {
		return nil, &Error{Op: "ibv_query_port", Errno: syscall.EINVAL, Detail: fmt.Sprintf("%s port %d", c.dev.Name, port)}
	}
	return &c.dev.Ports[port-1], nil
}

func (c *emuCtx) Port(port int) (PortAttr, error) {
	p, err := c.port(port)
	if err != nil {
		return PortAttr{}, err
	}
	return PortAttr{State: p.State, ActiveMTU: p.MTU, LID: p.LID, LinkLayer: p.LinkLayer, GIDTblLen: len(p.GIDs), MaxMsgSz: 1 << 31}, nil
}

func (c *emuCtx) GID(port, index int) (GID, error) {
	p, err := c.port(port)
	if err != nil {
		return GID{}, err
	}
	if index < 0 || index >= len(p.GIDs) {
		return GID{}, &Error{Op: "ibv_query_gid", Errno: syscall.EINVAL, Detail: fmt.Sprintf("%s port %d index %d", c.dev.Name, port, index)}
	}
	return p.GIDs[index], nil
}

func (c *emuCtx) GIDType(port, index int) string {
	p, err := c.port(port)
	if err != nil || index < 0 || index >= len(p.GIDTypes) {
		return ""
	}
	return p.GIDTypes[index]
}

func (c *emuCtx) Close() error {
	c.e.mu.Lock()
	defer c.e.mu.Unlock()
	if c.closed {
		return &Error{Op: "ibv_close_device", Errno: syscall.EINVAL, Detail: "closed twice"}
	}
	if c.refs > 0 {
		return &Error{Op: "ibv_close_device", Errno: syscall.EBUSY, Detail: fmt.Sprintf("%d objects still open", c.refs)}
	}
	c.closed = true
	c.e.live.Contexts--
	return nil
}

func (c *emuCtx) AllocPD() (PD, error) {
	c.e.mu.Lock()
	defer c.e.mu.Unlock()
	c.refs++
	c.e.live.PDs++
	return &emuPD{ctx: c}, nil
}

func (c *emuCtx) NewCompChannel() (CompChannel, error) {
	c.e.mu.Lock()
	defer c.e.mu.Unlock()
	c.refs++
	c.e.live.Channels++
	return &emuChan{ctx: c, ev: make(chan struct{}, 1), done: make(chan struct{})}, nil
}

func (c *emuCtx) NewCQ(size int, ch CompChannel) (CQ, error) {
	if size < 1 {
		return nil, &Error{Op: "ibv_create_cq", Errno: syscall.EINVAL, Detail: fmt.Sprintf("%d entries", size)}
	}
	c.e.mu.Lock()
	defer c.e.mu.Unlock()
	q := &emuCQ{ctx: c, size: size}
	if ch != nil {
		q.ch = ch.(*emuChan)
		q.ch.refs++
	}
	c.refs++
	c.e.live.CQs++
	return q, nil
}

type emuPD struct {
	ctx    *emuCtx
	refs   int // MRs and QPs
	closed bool
}

func (p *emuPD) Close() error {
	e := p.ctx.e
	e.mu.Lock()
	defer e.mu.Unlock()
	if p.closed {
		return &Error{Op: "ibv_dealloc_pd", Errno: syscall.EINVAL, Detail: "closed twice"}
	}
	if p.refs > 0 {
		return &Error{Op: "ibv_dealloc_pd", Errno: syscall.EBUSY, Detail: fmt.Sprintf("%d MRs and QPs still open", p.refs)}
	}
	p.closed = true
	p.ctx.refs--
	e.live.PDs--
	return nil
}

func (p *emuPD) Register(b []byte, access Access) (MR, error) {
	if len(b) == 0 {
		return nil, &Error{Op: "ibv_reg_mr", Errno: syscall.EINVAL, Detail: "empty buffer"}
	}
	if access&AccessRemoteWrite != 0 && access&AccessLocalWrite == 0 {
		return nil, &Error{Op: "ibv_reg_mr", Errno: syscall.EINVAL, Detail: "remote write without local write"}
	}
	e := p.ctx.e
	e.mu.Lock()
	defer e.mu.Unlock()
	if lim := e.opt.MemlockBytes; lim > 0 && e.locked+int64(len(b)) > lim {
		return nil, &Error{Op: "ibv_reg_mr", Errno: syscall.ENOMEM,
			Detail: memlockDetail(len(b), uint64(lim), fmt.Sprintf(" (emulated; %s registered already)", sizeString(uint64(e.locked))))}
	}
	e.nextKey++
	m := &emuMR{pd: p, b: b, addr: uint64(uintptr(unsafe.Pointer(&b[0]))), key: e.nextKey, access: access}
	e.mrs[m.key] = m
	e.locked += int64(len(b))
	p.refs++
	e.live.MRs++
	return m, nil
}

type emuMR struct {
	pd     *emuPD
	b      []byte
	addr   uint64
	key    uint32
	access Access
	dead   bool
}

func (m *emuMR) Addr() uint64 { return m.addr }
func (m *emuMR) Len() int     { return len(m.b) }
func (m *emuMR) LKey() uint32 { return m.key }
func (m *emuMR) RKey() uint32 { return m.key }

func (m *emuMR) Deregister() error {
	e := m.pd.ctx.e
	e.mu.Lock()
	defer e.mu.Unlock()
	if m.dead {
		return &Error{Op: "ibv_dereg_mr", Errno: syscall.EINVAL, Detail: "deregistered twice"}
	}
	m.dead = true
	delete(e.mrs, m.key)
	e.locked -= int64(len(m.b))
	m.pd.refs--
	e.live.MRs--
	return nil
}

// slice returns the n bytes at addr inside m, or false when they are not
// all inside it.
func (m *emuMR) slice(addr uint64, n uint32) ([]byte, bool) {
	if addr < m.addr || addr-m.addr > uint64(len(m.b)) || uint64(n) > uint64(len(m.b))-(addr-m.addr) {
		return nil, false
	}
	off := addr - m.addr
	return m.b[off : off+uint64(n)], true
}

type emuChan struct {
	ctx    *emuCtx
	ev     chan struct{} // one pending event at most
	done   chan struct{}
	refs   int // CQs
	closed bool
}

func (c *emuChan) Fd() int { return -1 }

func (c *emuChan) Wait(timeout time.Duration) (bool, error) {
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case <-c.ev:
		return true, nil
	case <-t.C:
		return false, nil
	case <-c.done:
		return false, errors.New("completion channel closed")
	}
}

func (c *emuChan) Close() error {
	e := c.ctx.e
	e.mu.Lock()
	defer e.mu.Unlock()
	if c.closed {
		return &Error{Op: "ibv_destroy_comp_channel", Errno: syscall.EINVAL, Detail: "closed twice"}
	}
	if c.refs > 0 {
		return &Error{Op: "ibv_destroy_comp_channel", Errno: syscall.EBUSY, Detail: "CQs still use it"}
	}
	c.closed = true
	close(c.done)
	c.ctx.refs--
	e.live.Channels--
	return nil
}

type emuCQ struct {
	ctx     *emuCtx
	ch      *emuChan
	size    int
	q       []WC
	armed   bool
	overrun bool
	refs    int // QPs
	closed  bool
}

// push adds a completion. REQUIRES: e.mu.
func (q *emuCQ) push(wc WC) {
	if q.closed {
		return
	}
	if wc.Status != StatusSuccess {
		wc.StatusText = wc.Status.String()
	}
	if len(q.q) >= q.size {
		q.overrun = true
	} else {
		q.q = append(q.q, wc)
	}
	if q.armed && q.ch != nil {
		q.armed = false
		select {
		case q.ch.ev <- struct{}{}:
		default:
		}
	}
}

func (q *emuCQ) Poll(wc []WC) (int, error) {
	e := q.ctx.e
	e.mu.Lock()
	defer e.mu.Unlock()
	if q.overrun {
		return 0, &Error{Op: "ibv_poll_cq", Errno: syscall.EOVERFLOW, Detail: fmt.Sprintf("CQ of %d entries overran", q.size)}
	}
	n := copy(wc, q.q)
	q.q = q.q[n:]
	if len(q.q) == 0 {
		q.q = nil
	}
	return n, nil
}

func (q *emuCQ) Notify() error {
	e := q.ctx.e
	e.mu.Lock()
	defer e.mu.Unlock()
	q.armed = true
	return nil
}

func (q *emuCQ) Close() error {
	e := q.ctx.e
	e.mu.Lock()
	defer e.mu.Unlock()
	if q.closed {
		return &Error{Op: "ibv_destroy_cq", Errno: syscall.EINVAL, Detail: "closed twice"}
	}
	if q.refs > 0 {
		return &Error{Op: "ibv_destroy_cq", Errno: syscall.EBUSY, Detail: "QPs still use it"}
	}
	q.closed = true
	if q.ch != nil {
		q.ch.refs--
	}
	q.ctx.refs--
	e.live.CQs--
	return nil
}

type qpState uint8

const (
	qpReset qpState = iota
	qpInit
	qpRTR
	qpRTS
	qpErr
)

var qpStateNames = [...]string{"RESET", "INIT", "RTR", "RTS", "ERROR"}

type emuQP struct {
	pd     *emuPD
	cq     *emuCQ
	num    uint32
	caps   QPCaps
	state  qpState
	port   int
	access Access
	rtr    RTRAttr
	rts    RTSAttr
	sendq  []emuOp // posted, not yet completed (the head may wait on RNR)
	recvq  []RecvWR
	closed bool
	// pumping is set while pump runs: a failure it causes on the peer
	// pumps this QP back, which must not re-enter the loop.
	pumping bool
}

type emuOp struct {
	wr   SendWR
	data []byte // inline data, copied at post time
}

func (pd *emuPD) NewQP(cq CQ, c QPCaps) (QP, error) {
	if c.MaxSendWR < 1 || c.MaxRecvWR < 1 || c.MaxSendWR > 16384 || c.MaxRecvWR > 16384 {
		return nil, &Error{Op: "ibv_create_qp", Errno: syscall.EINVAL, Detail: fmt.Sprintf("%d send and %d receive WRs", c.MaxSendWR, c.MaxRecvWR)}
	}
	e := pd.ctx.e
	e.mu.Lock()
	defer e.mu.Unlock()
	q := cq.(*emuCQ)
	c.MaxInline = min(c.MaxInline, 256)
	e.nextQPN++
	qp := &emuQP{pd: pd, cq: q, num: e.nextQPN, caps: c}
	e.qps[qp.num] = qp
	q.refs++
	pd.refs++
	e.live.QPs++
	return qp, nil
}

func (q *emuQP) Num() uint32    { return q.num }
func (q *emuQP) MaxInline() int { return q.caps.MaxInline }

func (q *emuQP) e() *Emulator { return q.pd.ctx.e }

func (q *emuQP) transition(from, to qpState) error {
	if q.closed || q.state != from {
		return &Error{Op: "ibv_modify_qp", Errno: syscall.EINVAL,
			Detail: fmt.Sprintf("QP %d to %s from %s", q.num, qpStateNames[to], qpStateNames[q.state])}
	}
	q.state = to
	return nil
}

func (q *emuQP) Init(port int, access Access) error {
	e := q.e()
	e.mu.Lock()
	defer e.mu.Unlock()
	if _, err := q.pd.ctx.port(port); err != nil {
		return &Error{Op: "ibv_modify_qp", Errno: syscall.EINVAL, Detail: fmt.Sprintf("QP %d to INIT: no port %d", q.num, port)}
	}
	q.port, q.access = port, access
	return q.transition(qpReset, qpInit)
}

func (q *emuQP) ReadyToReceive(a RTRAttr) error {
	e := q.e()
	e.mu.Lock()
	defer e.mu.Unlock()
	p, _ := q.pd.ctx.port(q.port)
	if a.MTU.Bytes() == 0 || a.DestQPN == 0 || a.DestQPN >= 1<<24 || a.RecvPSN >= 1<<24 {
		return &Error{Op: "ibv_modify_qp", Errno: syscall.EINVAL, Detail: fmt.Sprintf("QP %d to RTR: bad attributes %+v", q.num, a)}
	}
	if p.LinkLayer == LinkEthernet {
		if !a.Global {
			return &Error{Op: "ibv_modify_qp", Errno: syscall.EINVAL, Detail: fmt.Sprintf("QP %d to RTR: RoCE needs the GRH", q.num)}
		}
		if a.SGIDIndex < 0 || a.SGIDIndex >= len(p.GIDs) || p.GIDs[a.SGIDIndex].IsZero() {
			return &Error{Op: "ibv_modify_qp", Errno: syscall.EINVAL, Detail: fmt.Sprintf("QP %d to RTR: no source GID at index %d", q.num, a.SGIDIndex)}
		}
	}
	q.rtr = a
	return q.transition(qpInit, qpRTR)
}

func (q *emuQP) ReadyToSend(a RTSAttr) error {
	e := q.e()
	e.mu.Lock()
	defer e.mu.Unlock()
	if a.SendPSN >= 1<<24 || a.RetryCnt > 7 || a.RNRRetry > 7 {
		return &Error{Op: "ibv_modify_qp", Errno: syscall.EINVAL, Detail: fmt.Sprintf("QP %d to RTS: bad attributes %+v", q.num, a)}
	}
	q.rts = a
	return q.transition(qpRTR, qpRTS)
}

func (q *emuQP) Fail() error {
	e := q.e()
	e.mu.Lock()
	defer e.mu.Unlock()
	if q.closed {
		return &Error{Op: "ibv_modify_qp", Errno: syscall.EINVAL, Detail: fmt.Sprintf("QP %d to ERROR: destroyed", q.num)}
	}
	q.toErr()
	return nil
}

func (q *emuQP) Close() error {
	e := q.e()
	e.mu.Lock()
	defer e.mu.Unlock()
	if q.closed {
		return &Error{Op: "ibv_destroy_qp", Errno: syscall.EINVAL, Detail: "destroyed twice"}
	}
	if q.state != qpErr {
		q.toErr()
	}
	q.closed = true
	delete(e.qps, q.num)
	q.cq.refs--
	q.pd.refs--
	e.live.QPs--
	return nil
}

// toErr moves q to ERROR, flushing its work requests, and fails what its
// peer was waiting to deliver to it. REQUIRES: e.mu.
func (q *emuQP) toErr() {
	q.state = qpErr
	for _, op := range q.sendq {
		q.cq.push(WC{ID: op.wr.ID, Status: StatusFlushErr, QPNum: q.num})
	}
	q.sendq = nil
	for _, r := range q.recvq {
		q.cq.push(WC{ID: r.ID, Status: StatusFlushErr, QPNum: q.num})
	}
	q.recvq = nil
	if p := q.peer(); p != nil {
		p.pump()
	}
}

// peer returns the QP q is connected to, if it exists and is connected back.
// REQUIRES: e.mu.
func (q *emuQP) peer() *emuQP {
	if q.state < qpRTR {
		return nil
	}
	p := q.e().qps[q.rtr.DestQPN]
	if p == nil || p.state < qpRTR || p.rtr.DestQPN != q.num {
		return nil
	}
	return p
}

// reaches reports whether the address q was given for its peer names p's
// port: the GID (RoCE) or LID (InfiniBand). REQUIRES: e.mu.
func (q *emuQP) reaches(p *emuQP) bool {
	port, _ := p.pd.ctx.port(p.port)
	if q.rtr.Global {
		return slices.Contains(port.GIDs, q.rtr.DestGID)
	}
	return port.LID == q.rtr.DestLID
}

func (q *emuQP) PostSend(wr *SendWR) error {
	e := q.e()
	e.mu.Lock()
	defer e.mu.Unlock()
	switch {
	case q.closed:
		return &Error{Op: "ibv_post_send", Errno: syscall.EINVAL, Detail: "QP destroyed"}
	case q.state == qpErr:
		q.cq.push(WC{ID: wr.ID, Status: StatusFlushErr, QPNum: q.num})
		return nil
	case q.state != qpRTS:
		return &Error{Op: "ibv_post_send", Errno: syscall.EINVAL, Detail: fmt.Sprintf("QP %d is in %s", q.num, qpStateNames[q.state])}
	case len(q.sendq) >= q.caps.MaxSendWR:
		return &Error{Op: "ibv_post_send", Errno: syscall.ENOMEM, Detail: fmt.Sprintf("send queue of %d WRs is full", q.caps.MaxSendWR)}
	case wr.Op > OpSendWithImm:
		return &Error{Op: "ibv_post_send", Errno: syscall.EINVAL, Detail: wr.Op.String()}
	}
	op := emuOp{wr: *wr}
	if wr.Inline && wr.Len > 0 {
		if int(wr.Len) > q.caps.MaxInline {
			return &Error{Op: "ibv_post_send", Errno: syscall.EINVAL, Detail: fmt.Sprintf("%d bytes inline, the QP allows %d", wr.Len, q.caps.MaxInline)}
		}
		// Real inline data needs no MR; the emulation can only read Go
		// memory it knows about, so it finds the data in a registered
		// region of this PD.
		b, ok := q.findLocal(wr.Addr, wr.Len)
		if !ok {
			return &Error{Op: "ibv_post_send", Errno: syscall.EINVAL, Detail: "emulation: inline data outside every registered region"}
		}
		op.data = slices.Clone(b)
	}
	q.sendq = append(q.sendq, op)
	q.pump()
	return nil
}

func (q *emuQP) findLocal(addr uint64, n uint32) ([]byte, bool) {
	for _, m := range q.e().mrs {
		if m.pd == q.pd {
			if b, ok := m.slice(addr, n); ok {
				return b, true
			}
		}
	}
	return nil, false
}

func (q *emuQP) PostRecv(wr *RecvWR) error {
	e := q.e()
	e.mu.Lock()
	defer e.mu.Unlock()
	switch {
	case q.closed:
		return &Error{Op: "ibv_post_recv", Errno: syscall.EINVAL, Detail: "QP destroyed"}
	case q.state == qpErr:
		q.cq.push(WC{ID: wr.ID, Status: StatusFlushErr, QPNum: q.num})
		return nil
	case q.state == qpReset:
		return &Error{Op: "ibv_post_recv", Errno: syscall.EINVAL, Detail: fmt.Sprintf("QP %d is in RESET", q.num)}
	case len(q.recvq) >= q.caps.MaxRecvWR:
		return &Error{Op: "ibv_post_recv", Errno: syscall.ENOMEM, Detail: fmt.Sprintf("receive queue of %d WRs is full", q.caps.MaxRecvWR)}
	}
	q.recvq = append(q.recvq, *wr)
	if p := q.peer(); p != nil && len(p.sendq) > 0 {
		p.pump()
	}
	return nil
}

// pump delivers q's posted sends in order until one has to wait for a
// receive on the peer (RNR, retried forever) or fails. REQUIRES: e.mu.
func (q *emuQP) pump() {
	if q.pumping {
		return
	}
	q.pumping = true
	defer func() { q.pumping = false }()
	for len(q.sendq) > 0 && q.state == qpRTS {
		op := q.sendq[0]
		st, wait := q.deliver(&op)
		if wait {
			return
		}
		q.sendq = q.sendq[1:]
		if st != StatusSuccess {
			q.cq.push(WC{ID: op.wr.ID, Status: st, QPNum: q.num})
			q.toErr()
			return
		}
		if op.wr.Signaled {
			wop := WCSend
			if op.wr.Op == OpWrite || op.wr.Op == OpWriteWithImm {
				wop = WCWrite
			}
			q.cq.push(WC{ID: op.wr.ID, Status: StatusSuccess, Op: wop, QPNum: q.num})
		}
	}
}

// deliver performs op towards the peer, or says it must wait for a posted
// receive. REQUIRES: e.mu.
func (q *emuQP) deliver(op *emuOp) (st WCStatus, wait bool) {
	p := q.peer()
	if p == nil || p.state == qpErr || !q.reaches(p) {
		return StatusRetryExcErr, false
	}
	wr := &op.wr
	src := op.data
	if wr.Len > 0 && !wr.Inline {
		m := q.e().mrs[wr.LKey]
		if m == nil || m.pd != q.pd {
			return StatusLocProtErr, false
		}
		b, ok := m.slice(wr.Addr, wr.Len)
		if !ok {
			return StatusLocProtErr, false
		}
		src = b
	}
	needsRecv := wr.Op != OpWrite
	if needsRecv && len(p.recvq) == 0 {
		if q.rts.RNRRetry == 7 {
			return 0, true
		}
		return StatusRNRRetryExc, false
	}
	var dst []byte
	switch wr.Op {
	case OpWrite, OpWriteWithImm:
		m := q.e().mrs[wr.RKey]
		if m == nil || m.pd != p.pd || m.access&AccessRemoteWrite == 0 || p.access&AccessRemoteWrite == 0 {
			p.toErr()
			return StatusRemAccessErr, false
		}
		b, ok := m.slice(wr.RemoteAddr, wr.Len)
		if !ok {
			p.toErr()
			return StatusRemAccessErr, false
		}
		dst = b
	default: // SEND, SEND_WITH_IMM: into the next receive
		r := p.recvq[0]
		if wr.Len > r.Len {
			p.recvq = p.recvq[1:]
			p.cq.push(WC{ID: r.ID, Status: StatusLocLenErr, QPNum: p.num})
			p.toErr()
			return StatusRemInvReqErr, false
		}
		if wr.Len > 0 {
			m := q.e().mrs[r.LKey]
			var ok bool
			if m != nil && m.pd == p.pd && m.access&AccessLocalWrite != 0 {
				dst, ok = m.slice(r.Addr, wr.Len)
			}
			if !ok {
				p.recvq = p.recvq[1:]
				p.cq.push(WC{ID: r.ID, Status: StatusLocProtErr, QPNum: p.num})
				p.toErr()
				return StatusRemOpErr, false
			}
		}
	}
	copy(dst, src)
	if needsRecv {
		r := p.recvq[0]
		p.recvq = p.recvq[1:]
		wc := WC{ID: r.ID, Status: StatusSuccess, Op: WCRecv, Len: wr.Len, QPNum: p.num}
		if wr.Op == OpWriteWithImm {
			wc.Op = WCRecvWriteWithImm
		}
		if wr.Op == OpWriteWithImm || wr.Op == OpSendWithImm {
			wc.Imm, wc.HasImm = wr.Imm, true
		}
		p.cq.push(wc)
	}
	return StatusSuccess, false
}
