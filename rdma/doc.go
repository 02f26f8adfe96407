// Package rdma is the contract of gobps's transport layer: one interface
// shaped by RDMA semantics (Transport, Listener, Conn and the Handler a
// caller gives them), its options, its capabilities (Caps), its counters,
// the frame admission every implementation applies, and Open, which
// chooses an implementation once per process. It holds no implementation:
//
//   - rdma/tcp: frames over TCP sockets (tcp.New).
//   - rdma/verbs: RC queue pairs, eager SENDs and RDMA writes between
//     registered buffers (verbs.New), on libibverbs or an emulation
//     (rdma/ibv).
//
// The implementations import this package and register a Driver from init;
// a program that calls Open imports the ones it may use (core and
// cmd/internal/roles import both).
//
// The shape follows verbs, so that TCP is a fallback of the same semantics
// rather than the other way round:
//
//   - A frame is a proto.Header plus an optional payload. Conn.Send returns
//     once the payload may be reused.
//   - The receiver chooses where a payload lands before it arrives:
//     Handler.Dest is asked, with the header in hand, for the destination,
//     and the payload is read (TCP) or written by the peer's NIC (verbs)
//     straight into it.
//   - What differs is said by Caps, not found by type assertions: payloads
//     in pieces to a ChunkReceiver (Caps.Chunks: TCP), stable destinations
//     for a StableReceiver, released with Conn.Release (Caps.StableDest:
//     verbs), payload memory registered with the NIC and cached by address
//     (Caps.Registered: verbs, so memory C code may free and reuse must be
//     staged through Go-owned buffers), work counts (Caps.Counts: verbs).
//
// # Call protocol
//
// A Handler's methods are called from one goroutine per Conn, one at a
// time: Dest (for a frame with a payload), then Handle, for each frame in
// arrival order. Closed is called exactly once, after the last Handle. Handle
// must not block for long: it holds up that connection's reader; and it must
// not wait for a Send on its own connection to complete (on verbs a tensor
// Send needs that reader to take the peer's answer to its announcement).
// A frame that fails to decode, or whose CRC does not match, closes the
// connection with a reason given to Closed; it never panics the process.
//
// On verbs, frames sent by concurrent Sends may be in flight together: Dest
// is called for each as it is announced and Handle as each payload lands, so
// one frame's Dest may come between another's Dest and Handle. Frames one
// goroutine sends one after another (each Send returned before the next) are
// seen Dest, Handle, Dest, Handle, in order, on both transports. A payload
// whose destination Dest gave is never written after Closed; a destination
// whose payload never came (the connection failed) is not handed to Handle:
// Closed is the handler's signal to let it go.
//
// Conn.Send is safe for concurrent use; frames from concurrent Sends never
// interleave.
//
// # Hello and admission
//
// Dial sends the hello (proto.OpHello, Sender = the caller's node id, no
// payload) as the connection's first frame before it returns. A connection
// Listen accepts must get its hello within Options.HelloTimeout (10 s by
// default) of being accepted, on verbs the bootstrap included; otherwise
// the transport closes it and Closed gets an error wrapping ErrNoHello
// that says how long it waited. The hello itself is handed to Handle (the
// summation server checks the sender's role and rank there).
//
// Every decoded header goes through proto.Admit (kept per connection by
// Admission: ServerSide for an accepted connection, WorkerSide for a dialed
// one) before any of its payload is read or any destination asked for.
// A refused frame (data before the hello, a second hello, a push without a
// payload, an answer without one, an op the reading side never gets, ...)
// has its payload discarded unread and is handed to Handle with a nil
// payload and the reason, an error wrapping proto.ErrRefused; the
// connection stays. A bad frame (a hello with a payload, a declaration over
// proto.MaxControlPayload) closes it. Both transports refuse every
// out-of-protocol frame the same way (TestOutOfProtocolFrames).
//
// # Lifecycle
//
// Conn.Close ends one connection and does not wait for its goroutines, so
// a handler may call it from inside Handle. Listener.Close stops accepting
// and waits for the listener's accept goroutine (on verbs also for the
// bootstraps it abandons); the connections it accepted stay open.
// Transport.Close closes every listener and connection, waits for every
// goroutine the transport started, and releases its device resources;
// it is idempotent, and Listen and Dial fail after it. Listeners accept
// with internal/accept: a burst of EMFILE or ECONNABORTED is logged once
// and backed off (5 ms doubling to 1 s), not the end of the listener.
//
// # Choosing the transport
//
// Open uses an RDMA transport (verbs) when a usable device with an ACTIVE
// port exists and TCP otherwise, and returns the reason in a sentence the
// caller logs once ("using verbs on mlx5_0 port 1 (RoCE v2, GID index 3
// ...)", "no RDMA devices in /sys/class/infiniband; using TCP").
// Options.Mode forces either (BYTEPS_ENABLE_RDMA, DMLC_ENABLE_RDMA);
// forced verbs that cannot be used are an error carrying the same reason.
// A program that registered no driver of a kind gets an error naming the
// package to import, not a panic.
package rdma
