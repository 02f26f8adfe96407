// Package tcp is gobps's TCP transport (rdma.Transport): tcp.New, and the
// "tcp" driver that rdma.Open falls back to when no RDMA device can be
// used. It owns the framing of proto headers and payloads on TCP sockets,
// each connection's reader goroutine, the accept loops of its listeners
// and their lifecycle. tcp.NewOn runs the same transport over another
// network with net.Conn semantics (Net): tests use rdma/memnet, an
// in-memory network that injects faults.
//
// The header and the payload leave in one writev, and the payload is read
// from the socket straight into the destination the Handler gives
// (Handler.Dest), or, for a ChunkReceiver, in pieces of proto.PieceBytes
// so that the first piece is summed while the rest is still on the wire
// (Caps.Chunks). A refused frame's payload is skipped with io.CopyN into
// io.Discard, in bounded memory. An accepted connection reads under a
// deadline until its hello is in (Options.HelloTimeout).
//
// Several connections per peer pair (lanes) are the caller's choice: it
// dials the same address several times and spreads keys over the Conns.
// TCP registers no memory, grants no stable destinations
// (Conn.Release does nothing) and counts nothing (its copies are the
// kernel's).
//
// Conn.Close marks the connection closed and closes the socket without
// waiting for a Send in progress: a Send blocked on a peer that stopped
// reading fails at once. A Send whose write fails closes the connection,
// since part of its frame may be on the wire; Closed gets the write's
// error.
package tcp
