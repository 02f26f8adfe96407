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
// wrong; it never panics on any input (see FuzzDecodeHeader).
package proto
