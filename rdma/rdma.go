package rdma

import (
	"context"

	"github.com/gobps/gobps/core/proto"
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

// Options configure Open.
type Options struct {
	// Checksum adds a CRC32C of every payload to its header. Receivers
	// always verify a CRC that is present.
	Checksum bool
}

// Open chooses the transport for this process and says why. Today only TCP
// exists, so the reason says verbs are not built.
func Open(opt Options) (Transport, string, error) {
	return NewTCP(opt), "RDMA verbs transport is not implemented in this build; using TCP", nil
}
