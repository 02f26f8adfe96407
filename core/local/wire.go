package local

import (
	"encoding/binary"
	"fmt"
	"io"

	"github.com/gobps/gobps/proto"
)

// op is the operation of a frame between local ranks.
type op uint8

const (
	// opHello: rank r -> rank 0, the first frame on the rendezvous
	// connection. Key = helloMagic, Round = r, Bytes = group size, payload =
	// the sender's pid (8 bytes).
	opHello op = iota + 1
	// opWelcome: rank 0 -> rank r, the group is complete. Key = job nonce,
	// Bytes = group size, payload = every rank's pid (8 bytes each, by rank)
	// then, for each descriptor passed with the frame (SCM_RIGHTS), the rank
	// at the other end of that socket (4 bytes each).
	opWelcome
	// opReject: rank 0 -> rank r, the join failed; payload = why.
	opReject
	// opContrib: rank -> owner, its input slot holds Round of Key
	// (Bytes and DType repeat its declaration, for checking); payload = the
	// inode of the file the sender mapped (8 bytes), so that the owner
	// never sums from a file other than the one the sender wrote.
	opContrib
	// opPublish: owner -> every other rank, the result slot holds Round's
	// final value.
	opPublish
	// opDone: rank -> owner, it has finished reading Round's result.
	opDone
	// opBye: the sender is closing the group on purpose; payload = the
	// failure that made it leave, if any.
	opBye
	// opAbort: the sender saw a protocol error and gives up; payload = why.
	opAbort
	// opJoin: the sender has run out of data and answers rounds with
	// zeros (Round 1), or no longer does (Round 0). See Group.SetJoined.
	opJoin
	// opNeed: owner -> a joined rank, Round of Key began without it.
	opNeed
	maxOp
)

var opNames = [...]string{
	opHello: "hello", opWelcome: "welcome", opReject: "reject", opContrib: "contrib",
	opPublish: "publish", opDone: "done", opBye: "bye", opAbort: "abort", opJoin: "join", opNeed: "need",
}

func (o op) String() string {
	if o == 0 || o >= maxOp {
		return fmt.Sprintf("op(%d)", uint8(o))
	}
	return opNames[o]
}

const (
	// frameSize is the size of a frame header: op, dtype, 2 reserved bytes,
	// payload length (uint32), key, round, bytes (uint64 each), little endian.
	frameSize = 32
	// maxFramePayload bounds a frame's payload (pids, fd map, a reason).
	maxFramePayload = 64 << 10
	// helloMagic opens every hello ("GBPLOCL1" little endian), so that a
	// stray connection to the rendezvous socket is told apart from a rank.
	helloMagic uint64 = 0x314c434f4c504247
)

// frame is one message between local ranks.
type frame struct {
	op      op
	dtype   proto.DType
	key     uint64
	round   uint64
	bytes   uint64
	payload []byte
}

// appendFrame appends f's encoding to b.
func appendFrame(b []byte, f frame) []byte {
	var h [frameSize]byte
	h[0] = byte(f.op)
	h[1] = byte(f.dtype)
	le := binary.LittleEndian
	le.PutUint32(h[4:], uint32(len(f.payload)))
	le.PutUint64(h[8:], f.key)
	le.PutUint64(h[16:], f.round)
	le.PutUint64(h[24:], f.bytes)
	b = append(b, h[:]...)
	return append(b, f.payload...)
}

// decodeHeader parses a frame header; the payload, of the returned length,
// follows it.
func decodeHeader(h []byte) (frame, int, error) {
	le := binary.LittleEndian
	f := frame{
		op:    op(h[0]),
		dtype: proto.DType(h[1]),
		key:   le.Uint64(h[8:]),
		round: le.Uint64(h[16:]),
		bytes: le.Uint64(h[24:]),
	}
	n := le.Uint32(h[4:])
	switch {
	case f.op == 0 || f.op >= maxOp:
		return f, 0, fmt.Errorf("unknown op %d", h[0])
	case h[2] != 0 || h[3] != 0:
		return f, 0, fmt.Errorf("%s frame: reserved bytes are not zero", f.op)
	case n > maxFramePayload:
		return f, 0, fmt.Errorf("%s frame: payload of %d bytes exceeds %d", f.op, n, maxFramePayload)
	}
	return f, int(n), nil
}

// readFrame reads one frame from r.
func readFrame(r io.Reader) (frame, error) {
	var h [frameSize]byte
	if _, err := io.ReadFull(r, h[:]); err != nil {
		return frame{}, err
	}
	f, n, err := decodeHeader(h[:])
	if err != nil {
		return f, err
	}
	if n > 0 {
		f.payload = make([]byte, n)
		if _, err := io.ReadFull(r, f.payload); err != nil {
			return f, fmt.Errorf("%s frame payload: %w", f.op, noEOF(err))
		}
	}
	return f, nil
}

// noEOF turns io.EOF inside a frame into io.ErrUnexpectedEOF.
func noEOF(err error) error {
	if err == io.EOF {
		return io.ErrUnexpectedEOF
	}
	return err
}
