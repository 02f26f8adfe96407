// Package rdma is gobps's transport layer: one interface shaped by RDMA
// semantics, and the implementations behind it, chosen once by Open.
//
// The shape follows verbs, so that TCP is a fallback of the same semantics
// rather than the other way round:
//
//   - Memory is registered (Transport.Register) before frames are sent from
//     or received into it. For TCP registration is a no-op.
//   - A frame is a proto.Header plus an optional payload in registered
//     memory. Conn.Send returns once the payload may be reused.
//   - The receiver chooses where a payload lands before it arrives:
//     Handler.Dest is asked, with the header in hand, for the destination,
//     and the payload is read straight into it (a pre-posted destination per
//     key, as an RDMA write into a remote key buffer would be).
//
// # Call protocol
//
// A Handler's methods are called from one reader goroutine per Conn, one
// frame at a time and in arrival order: Dest (for a frame with a payload),
// then Handle. Closed is called exactly once, after the last Handle. Handle
// must not block for long: it holds up that connection's reader. A frame that
// fails to decode, or whose CRC does not match, closes the connection with a
// reason given to Closed; it never panics the process.
//
// Conn.Send is safe for concurrent use; frames from concurrent Sends never
// interleave.
//
// # Implementations
//
// TCP (this package): the header and the payload leave in one writev, and
// the payload is read from the socket straight into its destination. Several
// connections per peer pair (lanes) are the caller's choice: it dials the
// same address several times and spreads keys over the Conns.
//
// Verbs are not implemented yet: Open always returns TCP and says why.
package rdma
