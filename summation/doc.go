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
//     whole push in a scratch buffer from the key's pool instead.) Each key belongs to one engine, chosen at declaration as
//     the engine with the fewest declared bytes, so one key is never summed
//     by two goroutines at once and no lock is held while summing.
//   - Answers are sent by one sender goroutine per connection, straight from
//     the sum buffer; when the send returns, the engine is told the answer
//     was served, which is what lets the round's buffer be reused.
//
// The server is handed a transport and never picks one (see rdma.Open).
//
// # Errors
//
// A push or pull for an undeclared key, with the wrong dtype or size, for a
// round outside the window, or from a connection that has not said hello,
// is answered with OpError naming the problem; nothing else changes and
// every other worker is served as before. A malformed frame closes only the
// connection it came on.
package summation
