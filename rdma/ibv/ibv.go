package ibv

import (
	"errors"
	"fmt"
	"net/netip"
	"syscall"
	"time"
)

// ErrNotSupported is wrapped by every error that means "verbs cannot be used
// here at all": the library is missing, or this binary was built without
// the binding (CGO_ENABLED=0 or -tags noverbs). Callers fall back to TCP.
var ErrNotSupported = errors.New("RDMA verbs not supported")

// Library is the verbs library: libibverbs loaded with dlopen (Load), or the
// in-process emulation (NewEmulator). Everything the transport does goes
// through it, so the protocol code above runs unchanged on either.
type Library interface {
	// Devices lists the names of the devices the library can open
	// (ibv_get_device_list).
	Devices() ([]string, error)
	// Open opens the named device (ibv_open_device).
	Open(name string) (Context, error)
}

// Context is an open device.
//
// Locking: every method of Context and of the objects made from it is safe
// for concurrent use, except that one CQ must be polled by one goroutine at
// a time.
type Context interface {
	// Name is the device name, e.g. "rxe0".
	Name() string
	// Query returns the device attributes (ibv_query_device).
	Query() (DeviceAttr, error)
	// Port returns the attributes of port (1-based; ibv_query_port).
	Port(port int) (PortAttr, error)
	// GID returns entry index of port's GID table (ibv_query_gid).
	GID(port, index int) (GID, error)
	// GIDType names the type of a GID table entry as the kernel does in
	// sysfs ("RoCE v2", "IB/RoCE v1"), or "" when it cannot tell.
	GIDType(port, index int) string
	// AllocPD allocates a protection domain (ibv_alloc_pd).
	AllocPD() (PD, error)
	// NewCompChannel creates a completion channel (ibv_create_comp_channel).
	NewCompChannel() (CompChannel, error)
	// NewCQ creates a completion queue of at least size entries whose
	// events go to ch (ibv_create_cq).
	NewCQ(size int, ch CompChannel) (CQ, error)
	// Close closes the device (ibv_close_device). Everything made from it
	// must be closed first.
	Close() error
}

// PD is a protection domain.
type PD interface {
	// Register registers b (ibv_reg_mr). b must stay allocated and
	// unchanged in place until the MR is deregistered; the binding pins Go
	// memory (runtime.Pinner) for that long. b must not be empty.
	Register(b []byte, access Access) (MR, error)
	// NewQP creates a reliable-connected queue pair in the RESET state whose
	// send and receive completions go to cq (ibv_create_qp).
	NewQP(cq CQ, c QPCaps) (QP, error)
	// Close deallocates the PD (ibv_dealloc_pd).
	Close() error
}

// MR is a registered memory region.
type MR interface {
	// Addr is the address of the first byte, as the NIC sees it: the value
	// for SGEs (Addr()+offset) and for a peer's RDMA writes.
	Addr() uint64
	// Len is the length in bytes.
	Len() int
	// LKey and RKey are the local and remote keys.
	LKey() uint32
	RKey() uint32
	// Deregister releases the registration (ibv_dereg_mr) and unpins the
	// memory. The memory itself is the caller's.
	Deregister() error
}

// CompChannel delivers "this CQ has completions" events.
type CompChannel interface {
	// Wait waits at most timeout for an event, acknowledges it
	// (ibv_get_cq_event + ibv_ack_cq_events) and reports whether there was
	// one. The CQ must be re-armed (CQ.Notify) before the next event.
	Wait(timeout time.Duration) (bool, error)
	// Fd is the channel's file descriptor (non-blocking), for callers that
	// want to wait on it themselves; -1 in the emulation.
	Fd() int
	// Close destroys the channel (ibv_destroy_comp_channel). Its CQs must
	// be closed first.
	Close() error
}

// CQ is a completion queue.
type CQ interface {
	// Poll moves up to len(wc) completions into wc and returns how many
	// (ibv_poll_cq).
	Poll(wc []WC) (int, error)
	// Notify arms the CQ: the next completion raises one event on its
	// channel (ibv_req_notify_cq, not solicited-only).
	Notify() error
	// Close destroys the CQ (ibv_destroy_cq). Its QPs must be closed first.
	Close() error
}

// QP is a reliable-connected queue pair.
type QP interface {
	// Num is the QP number the peer needs.
	Num() uint32
	// Init moves RESET → INIT on port, with the remote access the peer's
	// operations need.
	Init(port int, access Access) error
	// ReadyToReceive moves INIT → RTR, connected to the peer described by a.
	ReadyToReceive(a RTRAttr) error
	// ReadyToSend moves RTR → RTS.
	ReadyToSend(a RTSAttr) error
	// Fail moves the QP to ERROR: outstanding work requests complete with
	// StatusFlushErr and the peer's operations are refused.
	Fail() error
	// PostSend posts one send work request (ibv_post_send).
	PostSend(wr *SendWR) error
	// PostRecv posts one receive work request (ibv_post_recv).
	PostRecv(wr *RecvWR) error
	// Close destroys the QP (ibv_destroy_qp). After it returns the NIC no
	// longer touches any memory through it.
	Close() error
	// MaxInline is the largest payload PostSend may send inline.
	MaxInline() int
}

// QPCaps size a queue pair.
type QPCaps struct {
	MaxSendWR, MaxRecvWR int
	MaxInline            int // bytes of inline data wanted; the QP may give less (MaxInline)
}

// RTRAttr connects a QP to its peer (INIT → RTR).
type RTRAttr struct {
	Port      int    // local port
	MTU       MTU    // path MTU
	DestQPN   uint32 // peer's QP number
	RecvPSN   uint32 // peer's initial send PSN
	DestLID   uint16 // peer's LID (InfiniBand)
	Global    bool   // use the GRH (RoCE): DestGID and SGIDIndex below
	DestGID   GID
	SGIDIndex int
	HopLimit  uint8
	// MinRNRTimer is the RNR NAK timer code sent to a peer that finds no
	// receive posted (12 = 0.64 ms).
	MinRNRTimer uint8
}

// RTSAttr arm a QP for sending (RTR → RTS).
type RTSAttr struct {
	SendPSN  uint32 // our initial send PSN
	Timeout  uint8  // local ACK timeout code: 4.096 µs × 2^Timeout
	RetryCnt uint8  // transport retries before RETRY_EXC_ERR
	RNRRetry uint8  // RNR retries; 7 means forever
}

// Access are memory and QP access flags (enum ibv_access_flags).
type Access uint32

// Access flags.
const (
	AccessLocalWrite  Access = 1
	AccessRemoteWrite Access = 1 << 1
	AccessRemoteRead  Access = 1 << 2
)

// Opcode is a send work request's operation (enum ibv_wr_opcode).
type Opcode uint32

// Send opcodes.
const (
	OpWrite        Opcode = 0 // IBV_WR_RDMA_WRITE
	OpWriteWithImm Opcode = 1 // IBV_WR_RDMA_WRITE_WITH_IMM
	OpSend         Opcode = 2 // IBV_WR_SEND
	OpSendWithImm  Opcode = 3 // IBV_WR_SEND_WITH_IMM
)

func (o Opcode) String() string {
	switch o {
	case OpWrite:
		return "RDMA_WRITE"
	case OpWriteWithImm:
		return "RDMA_WRITE_WITH_IMM"
	case OpSend:
		return "SEND"
	case OpSendWithImm:
		return "SEND_WITH_IMM"
	}
	return fmt.Sprintf("opcode(%d)", uint32(o))
}

// SendWR is a send work request with at most one scatter-gather entry.
type SendWR struct {
	ID       uint64
	Op       Opcode
	Signaled bool // generate a completion on success
	Inline   bool // copy the data into the WR (Len ≤ QP.MaxInline); LKey is ignored
	// The local data: Len bytes at Addr in the MR with LKey. Len 0: none.
	Addr uint64
	Len  uint32
	LKey uint32
	// RemoteAddr and RKey are the target of an RDMA write.
	RemoteAddr uint64
	RKey       uint32
	// Imm is the immediate data of *WithImm opcodes (host byte order; the
	// binding converts).
	Imm uint32
}

// RecvWR is a receive work request with one scatter-gather entry.
type RecvWR struct {
	ID   uint64
	Addr uint64
	Len  uint32
	LKey uint32
}

// WCOpcode says what a completion completes (enum ibv_wc_opcode).
type WCOpcode uint32

// Completion opcodes.
const (
	WCSend             WCOpcode = 0   // IBV_WC_SEND
	WCWrite            WCOpcode = 1   // IBV_WC_RDMA_WRITE
	WCRecv             WCOpcode = 128 // IBV_WC_RECV
	WCRecvWriteWithImm WCOpcode = 129 // IBV_WC_RECV_RDMA_WITH_IMM
)

// WCStatus is a completion's status (enum ibv_wc_status).
type WCStatus uint32

// Completion statuses (the ones the emulation produces; the real library
// may report any of enum ibv_wc_status, and StatusString names them all).
const (
	StatusSuccess      WCStatus = 0  // IBV_WC_SUCCESS
	StatusLocLenErr    WCStatus = 1  // IBV_WC_LOC_LEN_ERR
	StatusLocQPOpErr   WCStatus = 2  // IBV_WC_LOC_QP_OP_ERR
	StatusLocProtErr   WCStatus = 4  // IBV_WC_LOC_PROT_ERR
	StatusFlushErr     WCStatus = 5  // IBV_WC_WR_FLUSH_ERR
	StatusRemInvReqErr WCStatus = 9  // IBV_WC_REM_INV_REQ_ERR
	StatusRemAccessErr WCStatus = 10 // IBV_WC_REM_ACCESS_ERR
	StatusRemOpErr     WCStatus = 11 // IBV_WC_REM_OP_ERR
	StatusRetryExcErr  WCStatus = 12 // IBV_WC_RETRY_EXC_ERR
	StatusRNRRetryExc  WCStatus = 13 // IBV_WC_RNR_RETRY_EXC_ERR
	StatusGeneralErr   WCStatus = 21 // IBV_WC_GENERAL_ERR
)

// statusStrings are libibverbs's ibv_wc_status_str texts, for the
// emulation and for a binding that could not find the function.
var statusStrings = []string{
	"success", "local length error", "local QP operation error", "local EE context operation error",
	"local protection error", "Work Request Flushed Error", "memory management operation error",
	"bad response error", "local access error", "remote invalid request error", "remote access error",
	"remote operation error", "transport retry counter exceeded", "RNR retry counter exceeded",
	"local RDD violation error", "remote invalid RD request", "aborted error", "invalid EE context number",
	"invalid EE context state", "fatal error", "response timeout error", "general error",
	"TM error", "TM rendezvous error",
}

// String is ibv_wc_status_str's text for s.
func (s WCStatus) String() string {
	if int(s) < len(statusStrings) {
		return statusStrings[s]
	}
	return fmt.Sprintf("unknown status %d", uint32(s))
}

// WC is one work completion.
type WC struct {
	ID     uint64
	Status WCStatus
	Op     WCOpcode // valid only when Status is StatusSuccess
	Len    uint32   // bytes received (receive completions)
	Imm    uint32   // immediate data, host byte order, when HasImm
	HasImm bool
	QPNum  uint32
	// VendorErr is the provider's error code for a failed completion.
	VendorErr uint32
	// StatusText is ibv_wc_status_str(Status).
	StatusText string
}

// PortState is a port's logical state (enum ibv_port_state).
type PortState uint32

// Port states.
const (
	PortNop         PortState = 0
	PortDown        PortState = 1
	PortInit        PortState = 2
	PortArmed       PortState = 3
	PortActive      PortState = 4
	PortActiveDefer PortState = 5
)

func (s PortState) String() string {
	switch s {
	case PortNop:
		return "NOP"
	case PortDown:
		return "DOWN"
	case PortInit:
		return "INIT"
	case PortArmed:
		return "ARMED"
	case PortActive:
		return "ACTIVE"
	case PortActiveDefer:
		return "ACTIVE_DEFER"
	}
	return fmt.Sprintf("state(%d)", uint32(s))
}

// LinkLayer is a port's link layer.
type LinkLayer uint8

// Link layers (IBV_LINK_LAYER_*).
const (
	LinkUnspecified LinkLayer = 0
	LinkInfiniBand  LinkLayer = 1
	LinkEthernet    LinkLayer = 2
)

func (l LinkLayer) String() string {
	switch l {
	case LinkInfiniBand, LinkUnspecified:
		return "InfiniBand"
	case LinkEthernet:
		return "Ethernet"
	}
	return fmt.Sprintf("link layer %d", uint8(l))
}

// MTU is a path MTU code (enum ibv_mtu).
type MTU uint32

// MTU codes.
const (
	MTU256  MTU = 1
	MTU512  MTU = 2
	MTU1024 MTU = 3
	MTU2048 MTU = 4
	MTU4096 MTU = 5
)

// Bytes is the MTU in bytes, 0 for an invalid code.
func (m MTU) Bytes() int {
	if m < MTU256 || m > MTU4096 {
		return 0
	}
	return 128 << m
}

// DeviceAttr are the device attributes the transport needs.
type DeviceAttr struct {
	PhysPortCnt int
	MaxQPWR     int
	MaxCQE      int
	MaxMRSize   uint64
	MaxSGE      int
}

// PortAttr are the port attributes the transport needs.
type PortAttr struct {
	State     PortState
	ActiveMTU MTU
	LID       uint16
	LinkLayer LinkLayer
	GIDTblLen int
	MaxMsgSz  uint32
}

// GID is a 128-bit global identifier (a RoCE GID is an IPv6 address, or an
// IPv4 address mapped into IPv6).
type GID [16]byte

// IsZero reports whether g is all zeros (an unused table entry).
func (g GID) IsZero() bool { return g == GID{} }

// String writes g as an IPv6 address (IPv4-mapped ones as ::ffff:a.b.c.d).
func (g GID) String() string { return netip.AddrFrom16(g).String() }

// IPv4 reports whether g is an IPv4-mapped address.
func (g GID) IPv4() bool { return netip.AddrFrom16(g).Is4In6() }

// LinkLocal reports whether g is an IPv6 link-local address (fe80::/10).
func (g GID) LinkLocal() bool { return netip.AddrFrom16(g).IsLinkLocalUnicast() }

// Error is a failed verbs call.
type Error struct {
	Op     string        // the verbs function, e.g. "ibv_reg_mr"
	Errno  syscall.Errno // errno it reported (0 when it reported none)
	Detail string        // context: sizes, names, limits
}

func (e *Error) Error() string {
	s := e.Op
	if e.Errno != 0 {
		s += ": " + e.Errno.Error()
	} else {
		s += " failed"
	}
	if e.Detail != "" {
		s += " (" + e.Detail + ")"
	}
	return s
}

// Unwrap returns the errno, so that errors.Is(err, syscall.ENOMEM) works.
func (e *Error) Unwrap() error {
	if e.Errno == 0 {
		return nil
	}
	return e.Errno
}

// sizeString writes n bytes readably: "64 MiB", "3000 bytes".
func sizeString(n uint64) string {
	for _, u := range []struct {
		shift uint
		name  string
	}{{30, "GiB"}, {20, "MiB"}, {10, "KiB"}} {
		if n >= 1<<u.shift && n%(1<<u.shift) == 0 {
			return fmt.Sprintf("%d %s", n>>u.shift, u.name)
		}
	}
	return fmt.Sprintf("%d bytes", n)
}

// memlockDetail explains an ENOMEM from ibv_reg_mr: registering n bytes
// with RLIMIT_MEMLOCK limit (cur; ^uint64(0) is unlimited).
func memlockDetail(n int, limit uint64, what string) string {
	lim := "unlimited"
	if limit != ^uint64(0) {
		lim = sizeString(limit)
	}
	return fmt.Sprintf("registering %s; RLIMIT_MEMLOCK is %s%s: raise it with ulimit -l, "+
		"or LimitMEMLOCK= / docker --ulimit memlock=-1", sizeString(uint64(n)), lim, what)
}
