// Package memnet is an in-memory network for tests, with faults injected
// on demand or by a seeded random schedule. It stands beside what it fakes
// (the sockets under rdma/tcp, the coordinator's connections) and only
// tests import it: a lint test forbids production packages to.
//
// A Network hands out net.Listeners and net.Conns with the semantics code
// relies on from TCP: full duplex byte streams, writes that block while
// the peer's buffer is full (back-pressure), read and write deadlines
// whose errors wrap os.ErrDeadlineExceeded, a Close that unblocks the
// end's own reads and writes with an error wrapping net.ErrClosed, and a
// peer that reads what was sent before the close and then io.EOF.
// Addresses are names ("srv0:1"); a name ending in ":0" gets a free
// number instead of the 0. Anything that speaks over a net.Conn runs on
// it: the TCP transport (tcp.NewOn(network, opt)), and with it the
// summation server and the worker engine, or the cluster's members
// (cluster.Options.Dial = network.Dial).
//
//	n := memnet.New(memnet.Options{Policy: memnet.Random(seed, memnet.Faults{Break: 0.001})})
//	defer n.Close()
//	tr := tcp.NewOn(n, rdma.Options{})
//
// # Faults
//
// Each connection is a Link with two directions (FromDialer, FromListener)
// and an ID, numbered from 0 in the order of the Dials. A test faults a
// link by hand (Break, Stall and Resume, FailNextWrite, SetDelay; find it
// with Network.Links or Conn.Link), or lets Options.Policy decide what
// happens to every write: it is asked once per Write call with the link's
// ID, the direction, the write's number in that direction and its length,
// and answers with an Action (delay it, stall the direction, fail it after
// part of it went through, break the link). Random is a Policy drawn from
// a seed: each decision is a hash of the seed and the write's coordinates,
// not a draw from a shared stream, so a link's faults do not depend on how
// the goroutines writing on other links were scheduled, nor on the clock.
// Only the timing of delays and stalls is wall-clock.
//
//   - Break: both ends fail at once with ErrBroken (wrapping
//     syscall.ECONNRESET): blocked and later reads and writes, data not
//     yet read discarded, as a reset TCP connection.
//   - Stall: writes in one direction block (as on a socket whose peer
//     stopped reading) until resumed, the stall's time is up, the link
//     breaks or either end closes.
//   - Fail: the write returns an error wrapping ErrInjected after its
//     first Action.Keep bytes went through; the link stays up (a transport
//     that cannot tell how much of a frame left closes it).
//   - Delay: the write's bytes reach the reader that much later, never
//     ahead of earlier bytes of the same direction; different delays on
//     different links reorder traffic across them.
//
// # Lifecycle
//
// The network starts no goroutine: every wait happens in the caller's
// Read, Write or Accept and ends with the end's or the network's Close.
// Network.Close closes every listener and connection; Listen and Dial fail
// afterwards.
//
// # Locking
//
// Each direction of a link has its own mutex guarding its buffer, its
// counters and its fault state; a change of that state is broadcast by
// closing and replacing a channel the waiters select on. The network's
// mutex guards its listeners, links and closed flag, and is never held
// while a direction's mutex is taken.
package memnet
