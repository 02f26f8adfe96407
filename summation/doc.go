// Package summation is the summation server: it owns a share of the keys,
// sums the pushes of every worker round by round, and answers pulls from the
// sum buffer.
//
// # Structure
//
//   - Rounds (rounds.go) is one key's round state machine, with no I/O and
//     no locks: double-buffered rounds, the zero-copy first push, held ops
//     for the next round. It is tested step by step.
//   - Server (server.go) wires Rounds to a transport. Each connection's
//     reader goroutine receives a push chunk by chunk into buffers from a
//     bounded per-connection pool (rdma.ChunkReceiver) and hands each chunk
//     to the key's engine goroutine, which sums it while the rest of the
//     push is still arriving. (A transport without chunks hands over the
//     whole push in a scratch buffer from the key's pool instead.) Each
//     key belongs to one engine, chosen at declaration as the engine with
//     the fewest declared bytes, so one key is never summed by two
//     goroutines at once and no lock is held while summing.
//   - Answers are sent by one sender goroutine per connection (its
//     outbox), straight from the sum buffer; when the send returns, the
//     engine is told the answer was served, which is what lets the round's
//     buffer be reused. A send that fails closes the connection, so that
//     the worker learns of it instead of waiting for answers.
//
// The server is handed a transport and never picks one (see rdma.Open).
//
// # Memory
//
// Keys are declared by the workers, and each declared byte costs the
// server about two (the sum buffers of the two open rounds, allocated at
// declaration) plus pushes in flight. Config.MemoryBudget bounds the
// declared bytes: a declaration frame whose new keys would go beyond it
// is refused whole, naming the budget and GOBPS_SERVER_MEMORY_BYTES.
// cmd/internal/roles sets it from the configuration, by default a quarter
// of the memory the process may use. Not counted: on verbs, the landing
// buffer each worker's pushes of a key get (a stable destination, one per
// worker connection and key).
//
// # Errors
//
// A push or pull for an undeclared key, with the wrong dtype or size (a
// push without a payload included), for a round outside the window, or
// from a connection that has not said hello, is answered with OpError
// naming the problem; so is a declaration that disagrees with an earlier
// one or goes beyond the memory budget. Nothing else changes and every
// other worker is served as before. A malformed frame closes only the
// connection it came on; so does the transport when a connection says no
// hello within its hello timeout (logged once, with the address).
//
// # Lifecycle
//
// Close returns once every goroutine the server started has ended and no
// call into the server is in progress: the listener's accept loop
// (Listener.Close), the handler calls under way (new ones are barred), the
// engines, and every connection's outbox; it closes each connection the
// server has heard from and waits for its Closed, after which its reader
// makes no more calls into the server. A connection that never sent a
// frame is unknown to the server and ends with the transport
// (Transport.Close); a call for it after Close closes it and returns at
// once, taking no lock.
//
// TestFaultSchedules runs the server against raw workers over rdma/memnet
// with a seeded random schedule of broken links, stalls, failed writes and
// delays per seed, and checks every answer and the goroutines after Close.
package summation
