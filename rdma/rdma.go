package rdma

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/gobps/gobps/internal/auth"
	"github.com/gobps/gobps/proto"
)

// Caps says what a transport does beyond the common contract. A caller
// asks the transport (Transport.Caps) instead of testing for its type.
type Caps struct {
	// Name is the transport's name: "tcp" or "verbs".
	Name string
	// Chunks: the transport delivers large payloads to a ChunkReceiver
	// handler in pieces of at most proto.PieceBytes (tcp).
	Chunks bool
	// StableDest: the transport grants stable destinations to a
	// StableReceiver handler, which must then call Conn.Release (verbs).
	StableDest bool
	// Registered: payload memory is registered with a NIC and
	// registrations are cached by address, so memory that C code may free
	// and reuse at the same address must be staged through Go-owned
	// buffers first (verbs).
	Registered bool
	// Counts: Counters reports real work counts (verbs).
	Counts bool
}

// Handler receives the frames of a Conn. See the package doc for the call
// protocol.
type Handler interface {
	// Dest returns the memory the payload of h is read into; it must be
	// exactly h.Length bytes. A nil slice with a nil error asks the
	// transport to allocate, which it does only for payloads up to
	// proto.MaxControlPayload (a larger one closes the connection as a bad
	// frame). An error refuses the payload: the transport discards it and
	// calls Handle with a nil payload and that error.
	Dest(c Conn, h *proto.Header) ([]byte, error)
	// Handle is called once the frame's payload is in place, or with the
	// error Dest returned, or with the reason the transport refused the
	// frame (an error wrapping proto.ErrRefused: see proto.Admit) and a nil
	// payload.
	Handle(c Conn, h *proto.Header, payload []byte, err error)
	// Closed is called once when the connection ends. err is nil when this
	// side closed it.
	Closed(c Conn, err error)
}

// ChunkReceiver is an optional interface of a Handler: it takes some
// payloads in pieces, so that it can start on the first piece (summing it,
// say) while the rest is still arriving. For a frame it accepts, Chunks is
// called instead of Dest; the transport then reads the payload in pieces of
// at most proto.PieceBytes and calls the sink for each, in order, then
// Handle with a nil payload. Only transports with Caps.Chunks use it
// (TCP); those whose payloads land in one piece (RDMA writes) call Dest.
type ChunkReceiver interface {
	// Chunks returns the sink for h's payload; ok false asks for Dest
	// instead. An error refuses the payload as Dest's error does.
	Chunks(c Conn, h *proto.Header) (sink ChunkSink, ok bool, err error)
}

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
// them, so that a transport with remote memory access (Caps.StableDest:
// verbs) can exchange that buffer's address once and let the peer write
// every later frame straight into it, without a per-frame rendezvous.
// Other transports ignore it.
//
// A handler that gives a stable buffer must not let the payload of a frame
// delivered there be overwritten before it is done with it: it calls
// Conn.Release once it no longer needs the payload, and only then may the
// peer write the next frame there. Handle tells such a frame by its
// payload being the stable buffer.
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

// Conn is one connection to a peer.
type Conn interface {
	// Send writes one frame. h.Length is set from the payload, and so is the
	// CRC when the transport checksums. The payload must not change until
	// Send returns; after that it may be reused. Safe for concurrent use.
	Send(h proto.Header, payload []byte) error
	// Release says the handler is done with the frame of (op, key) in its
	// stable destination (see StableReceiver): the peer may write the next
	// one there. Call it once per such frame; on a Conn that has failed
	// it does nothing. A no-op on transports without Caps.StableDest.
	Release(op proto.Op, key proto.Key)
	// Close ends the connection: pending and later Sends fail, and the
	// handler's Closed follows (with a nil error). Close does not wait for
	// the connection's goroutines, so a handler may call it from inside
	// Handle; Transport.Close does the waiting.
	Close() error
	// RemoteAddr names the peer, for messages.
	RemoteAddr() string
}

// Listener accepts connections on behalf of a Transport.
type Listener interface {
	// Addr is the address peers dial.
	Addr() string
	// Close stops accepting and waits for the listener's accept goroutine
	// (and, on verbs, the bootstraps it started, which it abandons).
	// Established Conns stay open; Transport.Close ends them.
	Close() error
}

// Transport creates connections. One Transport serves a whole process.
type Transport interface {
	// Caps says what the transport does beyond this contract.
	Caps() Caps
	// Listen accepts connections at addr and serves each with h. A
	// connection must send its hello (proto.OpHello) within
	// Options.HelloTimeout of being accepted, or it is closed with an
	// error wrapping ErrNoHello.
	Listen(addr string, h Handler) (Listener, error)
	// Dial connects to addr, serves the connection with h, and sends the
	// hello (proto.OpHello, Sender = self, no payload) as the connection's
	// first frame before it returns.
	Dial(ctx context.Context, addr string, self uint32, h Handler) (Conn, error)
	// Counters returns the work counts so far; zero unless Caps.Counts.
	Counters() Counters
	// Close closes every listener and connection of the transport, waits
	// for every goroutine it started (accept loops, readers, pollers,
	// bootstraps), and releases device resources (verbs: queue pairs,
	// completion queues, the MR cache, the protection domain, the device
	// context). Idempotent. Listen and Dial fail afterwards. It must not
	// be called from a Handler's methods: it waits for the goroutines
	// that call them.
	Close() error
}

// ErrNoHello is wrapped by the error a connection accepted by Listen is
// closed with when its hello did not come within Options.HelloTimeout.
var ErrNoHello = errors.New("rdma: no hello")

// NoHello is the error a transport closes a connection it accepted with
// when remote sent no hello within waited of the accept.
func NoHello(remote string, waited time.Duration) error {
	return fmt.Errorf("%w from %s within %v of accepting the connection", ErrNoHello, remote, waited)
}

// Admission is one connection's frame admission: proto.Admit's rules with
// the connection's hello state. A transport makes one per connection
// (proto.ServerSide for those Listen accepts, proto.WorkerSide for those
// Dial makes) and calls Admit on every decoded header, before it reads any
// of the payload or asks the handler for a destination.
//
// Locking: none. Admit and Hello are called from the connection's reading
// goroutine only.
type Admission struct {
	side  proto.Side
	hello bool
	bound bool   // the connection's handshake proved node peer
	peer  uint32 // (Bind)
}

// Bind records that the connection's handshake proved that the peer is
// node id: its hello must say so.
func (a *Admission) Bind(id uint32) { a.bound, a.peer = true, id }

// NewAdmission returns the admission of a connection read on side.
func NewAdmission(side proto.Side) Admission { return Admission{side: side} }

// Admit applies proto.Admit to h and notes an admitted hello. nil: take
// the frame. An error wrapping proto.ErrRefused: discard the payload
// unread and call Handle with the header, a nil payload and the error.
// An error wrapping proto.ErrBadFrame: close the connection with it.
func (a *Admission) Admit(h *proto.Header) error {
	err := proto.Admit(a.side, a.hello, h)
	if err == nil && h.Op == proto.OpHello {
		if a.bound && h.Sender != a.peer {
			return fmt.Errorf("%w: hello from node %#x, but the connection's handshake proved node %#x",
				proto.ErrBadFrame, h.Sender, a.peer)
		}
		a.hello = true
	}
	return err
}

// Hello reports whether the connection's hello has been admitted.
func (a *Admission) Hello() bool { return a.hello }

// Side is the side the connection is read on.
func (a *Admission) Side() proto.Side { return a.side }

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
	// DefaultHelloTimeout bounds the wait for an accepted connection's
	// hello (see Options.HelloTimeout).
	DefaultHelloTimeout = 10 * time.Second
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
	// HelloTimeout bounds the time from accepting a connection to its
	// hello (on verbs the bootstrap included); 0 means
	// DefaultHelloTimeout.
	HelloTimeout time.Duration
	// Auth, if set, authenticates every connection before its first
	// frame (internal/auth: the job's secret, mutual TLS): an accepted
	// connection that fails is closed and logged, and its hello must then
	// name the node its handshake proved; Dial fails with the refusal.
	Auth *auth.Config
	// Logf, if set, receives one line per notable transport event (an MR
	// cache that overflows its bound, an accept loop backing off, say).
	// The transport never logs otherwise.
	Logf func(format string, args ...any)
}

// HelloWait is o.HelloTimeout, or DefaultHelloTimeout when it is 0.
func (o Options) HelloWait() time.Duration {
	if o.HelloTimeout > 0 {
		return o.HelloTimeout
	}
	return DefaultHelloTimeout
}

// Counters are a transport's work counts, for tests and benchmarks: how
// often it registered memory and copied payloads, and what it put on the
// wire (Transport.Counters; zero on transports without Caps.Counts, such
// as TCP, whose copies are the kernel's). Sub gives the work of an
// interval.
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

// Stamp readies h for sending payload, as every transport's Send does
// first: refuses a payload over proto.MaxPayload, sets the length and, with
// checksum, the CRC.
func Stamp(h *proto.Header, payload []byte, checksum bool) error {
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
