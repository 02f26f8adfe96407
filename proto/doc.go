// Package proto is gobps's leaf vocabulary: keys, dtypes, operations, the
// versioned wire header and its codec, the declaration records a worker sends
// to the servers, and partition math.
//
// It imports only the standard library, and every other gobps package may
// import it. Nothing here does I/O beyond reading and writing one frame on an
// io.Reader or io.Writer handed in by the caller.
//
// # Wire format
//
// A frame is a fixed 48-byte little-endian header followed by Length payload
// bytes:
//
//	off size field
//	  0    4 magic    "GBPS" (0x53504247)
//	  4    1 version  1
//	  5    1 op       Op
//	  6    2 flags    Flags
//	  8    1 dtype    DType (0 when the op carries no tensor data)
//	  9    3 reserved must be zero
//	 12    4 sender   node id of the sender (see cluster)
//	 16    8 key      Key
//	 24    8 round    per-key round number
//	 32    8 reqid    request id, echoed in the reply
//	 40    4 length   payload length in bytes
//	 44    4 crc      CRC32C (Castagnoli) of the payload when FlagCRC is set
//
// Decode checks every field and returns an error that says which one is
// wrong; it never panics on any input (see FuzzDecodeHeader). Frames of ops
// that carry no tensor (Op.CarriesTensor: all but push and pull-resp,
// declarations included) have at most MaxControlPayload bytes.
//
// # Admission
//
// On a data connection between a worker and a server, Admit says whether
// the reading side takes a decoded frame, before any of its payload is read:
// take it, refuse it (ErrRefused: the payload is discarded unread, the
// handler sees the header with the error and the connection stays), or
// close the connection (ErrBadFrame). The server side is a connection
// accepted by a listener, the worker side one that was dialed; "hello" is
// whether the connection's hello came before the frame.
//
//	side    op           hello  payload bytes         result
//	server  hello        any    > 0                   bad frame
//	server  hello        yes    0                     refused: second hello
//	server  hello        no     0                     take
//	server  other ops    no     any                   refused: "<op> before hello"
//	server  declare      yes    0                     refused
//	server  declare      yes    1..MaxControlPayload  take
//	server  declare      yes    > MaxControlPayload   bad frame
//	server  push         yes    0                     refused
//	server  push         yes    > 0                   take
//	server  pull         yes    0                     take
//	server  pull         yes    > 0                   refused
//	server  error        yes    any                   take
//	server  other ops    yes    any                   refused: "unexpected <op>"
//	worker  pull-resp    -      0                     refused
//	worker  pull-resp    -      > 0                   take
//	worker  declare-ack  -      0                     take
//	worker  declare-ack  -      > 0                   refused
//	worker  error        -      any                   take
//	worker  other ops    -      any                   refused: "unexpected <op>"
package proto
