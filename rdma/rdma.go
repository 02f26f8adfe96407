package rdma

import (
	"context"
	"fmt"

	"github.com/gobps/gobps/proto"
)

// Handler receives the frames of a Conn. See the package doc for the call
// protocol.
type Handler interface {
	// Dest returns the memory the payload of h is read into; it must be
	// exactly h.Length bytes. A nil slice with a nil error asks the transport
	// to allocate (allowed for payloads up to proto.MaxControlPayload and for
	// OpDeclare). An error refuses the payload: the transport discards it
	// and calls Handle with a nil payload and that error.
	Dest(c Conn, h *proto.Header) ([]byte, error)
	// Handle is called once the frame's payload is in place, or with the
	// error Dest returned.
	Handle(c Conn, h *proto.Header, payload []byte, err error)
	// Closed is called once when the connection ends. err is nil when this
	// side closed it.
	Closed(c Conn, err error)
}

// ChunkReceiver is an optional interface of a Handler: it takes some
// payloads in pieces, so that it can start on the first piece (summing it,
// say) while the rest is still arriving. For a frame it accepts, Chunks is
// called instead of Dest; the transport then reads the payload in pieces of
// at most ChunkBytes and calls the sink for each, in order, then Handle with
// a nil payload. Transports whose payloads land in one piece (RDMA writes)
// call Dest instead and never use it.
type ChunkReceiver interface {
	// Chunks returns the sink for h's payload; ok false asks for Dest
	// instead. An error refuses the payload as Dest's error does.
	Chunks(c Conn, h *proto.Header) (sink ChunkSink, ok bool, err error)
}

// ChunkBytes is the size of the pieces a ChunkReceiver gets: a few hundred
// KiB, so that a piece is still in cache when it is summed.
const ChunkBytes = 256 << 10

// ChunkSink receives one payload in pieces.
type ChunkSink interface {
	// Buffer returns memory for the n bytes at offset off of the payload.
	// It may block (back-pressure) until memory is free.
	Buffer(off, n int) []byte
	// Filled says that b, the buffer for offset off, is in. The sink owns
	// b again.
	Filled(off int, b []byte)
	// Abort says the rest of the payload will not come (the connection
	// failed); buffers handed out and not filled are the sink's again.
	Abort(err error)
}

// StableReceiver is an optional interface of a Handler: the frames of one
// (op, key) from one Conn always land in one buffer the handler keeps for
// them, so that a transport with remote memory access (verbs) can exchange
// that buffer's address once and let the peer write every later frame
// straight into it, without a per-frame rendezvous. TCP ignores it.
//
// A handler that gives a stable buffer must not let the payload of a frame
// delivered there be overwritten before it is done with it: it calls
// Release on the Conn (which implements Releaser) once it no longer needs
// the payload, and only then may the peer write the next frame there.
type StableReceiver interface {
	// StableDest returns the buffer for h's (op, key) on c, exactly
	// h.Length bytes, and ok true; or ok false to keep the per-frame path
	// (Dest) for it. An error refuses the payload as Dest's error does.
	// The transport calls it for the first such frame, and again only
	// after an error: at most once per (op, key, Conn) that it answers
	// with a buffer or with ok false. Frames of that (op, key) with
	// another length, or sent while the buffer is still held, go through
	// Dest.
	StableDest(c Conn, h *proto.Header) (buf []byte, ok bool, err error)
}

// Releaser is implemented by the Conns of transports that grant stable
// destinations (verbs). After Handle delivered a frame into a buffer that
// StableDest gave, the handler calls Release(op, key) once, when it no
// longer needs that payload; the peer may then write the next frame of
// (op, key) there. Handle tells such a frame by its payload being the
// stable buffer. Release on a Conn that has failed does nothing.
type Releaser interface {
	Release(op proto.Op, key proto.Key)
}

// Conn is one connection to a peer.
type Conn interface {
	// Send writes one frame. h.Length is set from the payload, and so is the
	// CRC when the transport checksums. The payload must not change until
	// Send returns; after that it may be reused. Safe for concurrent use.
	Send(h proto.Header, payload []byte) error
	// Close ends the connection. Pending and later Sends fail.
	Close() error
	// RemoteAddr names the peer, for messages.
	RemoteAddr() string
}

// Listener accepts connections on behalf of a Transport.
type Listener interface {
	// Addr is the address peers dial.
	Addr() string
	// Close stops accepting; established Conns stay open.
	Close() error
}

// Region is registered memory.
type Region interface {
	Bytes() []byte
	// Deregister releases the registration. The memory itself is the
	// caller's.
	Deregister() error
}

// Transport creates connections. One Transport serves a whole process.
type Transport interface {
	// Name is "tcp" or "verbs".
	Name() string
	// Listen accepts connections at addr and serves each with h.
	Listen(addr string, h Handler) (Listener, error)
	// Dial connects to addr and serves the connection with h.
	Dial(ctx context.Context, addr string, h Handler) (Conn, error)
	// Register registers b for sending and receiving.
	Register(b []byte) (Region, error)
}

// Mode says whether Open may, must or must not use RDMA verbs.
type Mode string

// Modes. The zero value, "", means ModeAuto too.
const (
	// ModeAuto uses verbs when a usable device with an active port exists,
	// TCP otherwise (BYTEPS_ENABLE_RDMA unset).
	ModeAuto Mode = "auto"
	// ModeForce uses verbs, or fails with the reason they cannot be used
	// (BYTEPS_ENABLE_RDMA=1, DMLC_ENABLE_RDMA=ibverbs).
	ModeForce Mode = "force"
	// ModeOff uses TCP (BYTEPS_ENABLE_RDMA=0).
	ModeOff Mode = "off"
)

// Defaults of the verbs settings in Options.
const (
	// DefaultSendDepth bounds the frames a verbs Conn has in flight.
	DefaultSendDepth = 128
	// DefaultRecvDepth is the number of receive buffers a verbs Conn posts.
	DefaultRecvDepth = 64
	// DefaultMRCacheBytes bounds the memory the verbs MR cache keeps
	// registered while unused (see Options.MRCacheBytes).
	DefaultMRCacheBytes = 4 << 30
)

// Options configure Open.
type Options struct {
	// Checksum adds a CRC32C of every payload to its header. Receivers
	// always verify a CRC that is present.
	Checksum bool

	// Mode chooses between verbs and TCP (BYTEPS_ENABLE_RDMA,
	// DMLC_ENABLE_RDMA).
	Mode Mode
	// Device names the verbs device to use (GOBPS_RDMA_DEVICE); "" takes the
	// first with an active port.
	Device string
	// GIDIndex is the GID table index used on RoCE ports
	// (GOBPS_RDMA_GID_INDEX); negative picks one automatically (a RoCE v2
	// GID holding an IPv4 address first). Note that the zero value is
	// index 0: callers that do not set it from the configuration should set
	// it to -1.
	GIDIndex int
	// SendDepth bounds the frames a verbs Conn has in flight: Send blocks
	// while that many are outstanding (GOBPS_RDMA_SEND_DEPTH; 0 means
	// DefaultSendDepth).
	SendDepth int
	// RecvDepth is the number of receive buffers each verbs Conn posts
	// (GOBPS_RDMA_RECV_DEPTH; 0 means DefaultRecvDepth).
	RecvDepth int
	// MRCacheBytes bounds the bytes the verbs MR cache keeps registered
	// (GOBPS_RDMA_MR_CACHE_BYTES; 0 means DefaultMRCacheBytes). Regions in
	// use by a transfer are never evicted, so the bound can be exceeded
	// while they are.
	MRCacheBytes int
	// Logf, if set, receives one line per notable transport event (an MR
	// cache that overflows its bound, say). The transport never logs
	// otherwise.
	Logf func(format string, args ...any)
}

// Counters are a transport's work counts, for tests and benchmarks: how
// often it registered memory and copied payloads, and what it put on the
// wire. Sub gives the work of an interval.
type Counters struct {
	Registrations   uint64 // memory registrations (ibv_reg_mr)
	Deregistrations uint64 // ibv_dereg_mr
	CacheHits       uint64 // payload buffers found registered in the MR cache
	Evictions       uint64 // registrations the MR cache dropped to stay under its bound
	Copies          uint64 // payloads the transport copied (eager frames, in and out)
	CopiedBytes     uint64 // bytes of those copies
	Writes          uint64 // RDMA writes with immediate posted: one per rendezvous frame
	Sends           uint64 // SENDs posted: eager frames, RTS and CTS messages
	Eager           uint64 // frames sent eagerly (header and payload in one SEND)
	Rendezvous      uint64 // frames sent by rendezvous (RTS, CTS, write)
	Refused         uint64 // rendezvous the receiver refused (Dest error)
	Stable          uint64 // frames sent into a stable destination: no RTS/CTS (StableReceiver)
	Credits         uint64 // credits sent for released stable destinations (counted in Sends too)
}

// Sub returns c − o, field by field: the work done since o was taken.
func (c Counters) Sub(o Counters) Counters {
	return Counters{
		Registrations: c.Registrations - o.Registrations, Deregistrations: c.Deregistrations - o.Deregistrations,
		CacheHits: c.CacheHits - o.CacheHits, Evictions: c.Evictions - o.Evictions,
		Copies: c.Copies - o.Copies, CopiedBytes: c.CopiedBytes - o.CopiedBytes,
		Writes: c.Writes - o.Writes, Sends: c.Sends - o.Sends, Eager: c.Eager - o.Eager,
		Rendezvous: c.Rendezvous - o.Rendezvous, Refused: c.Refused - o.Refused,
		Stable: c.Stable - o.Stable, Credits: c.Credits - o.Credits,
	}
}

// Counting is implemented by transports that count their work (verbs).
type Counting interface {
	Counters() Counters
}

// CountersOf returns t's counters, and false for a transport that does not
// count (TCP, whose copies are the kernel's).
func CountersOf(t Transport) (Counters, bool) {
	if c, ok := t.(Counting); ok {
		return c.Counters(), true
	}
	return Counters{}, false
}

// stamp readies h for sending payload, as every transport's Send does
// first: refuses a payload over proto.MaxPayload, sets the length and, with
// checksum, the CRC.
func stamp(h *proto.Header, payload []byte, checksum bool) error {
	if len(payload) > proto.MaxPayload {
		return fmt.Errorf("rdma: payload of %d bytes exceeds %d", len(payload), proto.MaxPayload)
	}
	h.Length = uint32(len(payload))
	if checksum && len(payload) > 0 {
		h.Flags |= proto.FlagCRC
		h.CRC = proto.Checksum(payload)
	}
	return nil
}
