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
