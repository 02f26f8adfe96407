package proto

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
)

// Key names one partition of one declared tensor. The high 32 bits are the
// tensor's declaration index, the low 32 bits the partition index.
type Key uint64

// MakeKey builds the key of partition part of tensor tensor.
func MakeKey(tensor, part uint32) Key { return Key(uint64(tensor)<<32 | uint64(part)) }

// Tensor returns the tensor index of k.
func (k Key) Tensor() uint32 { return uint32(k >> 32) }

// Part returns the partition index of k.
func (k Key) Part() uint32 { return uint32(k) }

func (k Key) String() string { return fmt.Sprintf("%d.%d", k.Tensor(), k.Part()) }

// Op is a frame's operation.
type Op uint8

// Control operations, between a node and the coordinator.
const (
	OpRegister  Op = iota + 1 // node -> coordinator: JSON Registration
	OpBook                    // coordinator -> node: JSON Book (the address book)
	OpBarrier                 // node -> coordinator: enter barrier Round
	OpBarrierOK               // coordinator -> node: barrier Round released
	OpHeartbeat               // node -> coordinator, both ways allowed
	OpNodeDead                // coordinator -> node: JSON NodeEvent
	OpLeave                   // node -> coordinator: clean departure
	OpShutdown                // coordinator -> node: the job is over
	OpNodeLeft                // coordinator -> node: JSON NodeEvent, a worker left before the others
	OpReport                  // node -> coordinator: UTF-8 text for the job's log, such as a stall report
	OpProgress                // worker -> coordinator: its cumulative counts (cluster.Progress), for the job's progress line
)

// Data operations, between a worker and a server.
const (
	OpHello      Op = iota + 16 // worker -> server: Sender identifies the worker rank
	OpDeclare                   // worker -> server: payload is encoded []Decl
	OpDeclareAck                // server -> worker
	OpPush                      // worker -> server: payload is the partition; answered only on error
	OpPull                      // worker -> server: ask for the sum of Round
	OpPullResp                  // server -> worker: payload is the sum
	OpError                     // either way: payload is a UTF-8 message; ReqID names the request
	OpJoin                      // worker -> server: Round 1: joined (out of data), 0: no longer; answered by OpJoinAck
	OpJoinAck                   // server -> worker
	OpBehind                    // server -> joined worker: round Round of Key began without this worker
	maxOp
)

var opNames = map[Op]string{
	OpRegister: "register", OpBook: "book", OpBarrier: "barrier", OpBarrierOK: "barrier-ok",
	OpHeartbeat: "heartbeat", OpNodeDead: "node-dead", OpLeave: "leave", OpShutdown: "shutdown", OpNodeLeft: "node-left", OpReport: "report", OpProgress: "progress",
	OpHello: "hello", OpDeclare: "declare", OpDeclareAck: "declare-ack", OpPush: "push",
	OpPull: "pull", OpPullResp: "pull-resp", OpError: "error", OpJoin: "join", OpJoinAck: "join-ack", OpBehind: "behind",
}

// Valid reports whether o is a known operation.
func (o Op) Valid() bool { _, ok := opNames[o]; return ok }

func (o Op) String() string {
	if n, ok := opNames[o]; ok {
		return n
	}
	return fmt.Sprintf("op(%d)", uint8(o))
}

// CarriesTensor reports whether frames of o carry tensor data: they must
// name a dtype, their payload may exceed MaxControlPayload, and a
// transport moves it as a tensor (verbs: by rendezvous, straight between
// registered buffers) rather than as a small control message.
func (o Op) CarriesTensor() bool { return o == OpPush || o == OpPullResp }

// Flags are per-frame bits.
type Flags uint16

const (
	// FlagCRC says the CRC field holds the CRC32C of the payload.
	FlagCRC Flags = 1 << iota
	// FlagPiece marks an OpPullResp that carries one piece of the answer:
	// the Length bytes at offset Piece×PieceBytes. A server streams an
	// answer in pieces as their sums complete; the pieces of one answer
	// together cover it exactly once.
	FlagPiece
	// FlagPull on an OpPush asks for the round's sum as well, as an OpPull
	// with the same ReqID right after it would: the server then streams
	// the answer while this push, and the others, are still arriving.
	FlagPull
	// FlagFatal on an OpError that answers no request (a notice) says the
	// job cannot go on: the worker fails as a whole, with the payload as
	// the reason (a tensor that some workers never declared, past
	// GOBPS_DECLARE_TIMEOUT: ops of it may wait where no answer reaches
	// them, in another worker's shared memory).
	FlagFatal
	knownFlags = FlagCRC | FlagPiece | FlagPull | FlagFatal
)

const (
	// PieceBytes is the unit of Header.Piece: a piece of an answer starts
	// at a multiple of it (the servers' summing chunk, 256 KiB).
	PieceBytes = 256 << 10
	// MaxPiece bounds Header.Piece, which the header holds in 24 bits.
	MaxPiece = 1<<24 - 1
)

const (
	// Magic opens every frame: "GBPS" read as a little-endian uint32.
	Magic uint32 = 0x53504247
	// Version is the wire version this package speaks. 2: declarations
	// carry the tensor's name and shape (EncodeDecls).
	Version uint8 = 2
	// HeaderSize is the encoded size of a Header.
	HeaderSize = 48
	// MaxPayload bounds a frame's payload (1 GiB): larger lengths are
	// rejected before anything is allocated.
	MaxPayload = 1 << 30
	// MaxControlPayload bounds the payload of frames that carry no tensor
	// (every op but OpPush and OpPullResp; declarations included).
	MaxControlPayload = 1 << 20
)

// Header is the fixed part of every frame.
type Header struct {
	Op     Op
	Flags  Flags
	DType  DType
	Sender uint32
	Key    Key
	Round  uint64
	ReqID  uint64
	Length uint32
	CRC    uint32
	// Piece is, with FlagPiece, where the payload starts in the whole
	// answer, in PieceBytes; zero otherwise.
	Piece uint32
}

func (h *Header) String() string {
	piece := ""
	if h.Flags&FlagPiece != 0 {
		piece = fmt.Sprintf(" piece=%d", h.Piece)
	}
	return fmt.Sprintf("%s key=%s round=%d req=%d len=%d%s dtype=%s sender=%d",
		h.Op, h.Key, h.Round, h.ReqID, h.Length, piece, h.DType, h.Sender)
}

// ErrBadFrame is wrapped by every decoding error.
var ErrBadFrame = errors.New("bad frame")

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// Checksum is the CRC32C of b, as carried with FlagCRC.
func Checksum(b []byte) uint32 { return crc32.Checksum(b, castagnoli) }

// UpdateChecksum extends a CRC32C over b: Checksum(x+y) ==
// UpdateChecksum(Checksum(x), y).
func UpdateChecksum(crc uint32, b []byte) uint32 { return crc32.Update(crc, castagnoli, b) }

// Encode writes h into b, which must hold HeaderSize bytes.
func (h *Header) Encode(b []byte) {
	_ = b[HeaderSize-1]
	le := binary.LittleEndian
	le.PutUint32(b[0:], Magic)
	b[4] = Version
	b[5] = uint8(h.Op)
	le.PutUint16(b[6:], uint16(h.Flags))
	b[8] = uint8(h.DType)
	b[9], b[10], b[11] = uint8(h.Piece), uint8(h.Piece>>8), uint8(h.Piece>>16)
	le.PutUint32(b[12:], h.Sender)
	le.PutUint64(b[16:], uint64(h.Key))
	le.PutUint64(b[24:], h.Round)
	le.PutUint64(b[32:], h.ReqID)
	le.PutUint32(b[40:], h.Length)
	le.PutUint32(b[44:], h.CRC)
}

func badFrame(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrBadFrame, fmt.Sprintf(format, args...))
}

// Decode parses and checks a header. It checks every field it can check
// without the payload; the CRC is checked by CheckPayload.
func (h *Header) Decode(b []byte) error {
	if len(b) < HeaderSize {
		return badFrame("header is %d bytes, want %d", len(b), HeaderSize)
	}
	le := binary.LittleEndian
	if m := le.Uint32(b[0:]); m != Magic {
		return badFrame("magic %#08x, want %#08x", m, Magic)
	}
	if b[4] != Version {
		return badFrame("version %d, this build speaks %d", b[4], Version)
	}
	*h = Header{
		Op:     Op(b[5]),
		Flags:  Flags(le.Uint16(b[6:])),
		DType:  DType(b[8]),
		Sender: le.Uint32(b[12:]),
		Key:    Key(le.Uint64(b[16:])),
		Round:  le.Uint64(b[24:]),
		ReqID:  le.Uint64(b[32:]),
		Length: le.Uint32(b[40:]),
		CRC:    le.Uint32(b[44:]),
		Piece:  uint32(b[9]) | uint32(b[10])<<8 | uint32(b[11])<<16,
	}
	return h.Check()
}

// Check validates the fields of h as Decode does.
func (h *Header) Check() error {
	if !h.Op.Valid() {
		return badFrame("unknown op %d", uint8(h.Op))
	}
	if h.Flags&^knownFlags != 0 {
		return badFrame("unknown flags %#04x", uint16(h.Flags&^knownFlags))
	}
	if h.DType != 0 && !h.DType.Valid() {
		return badFrame("unknown dtype %d", uint8(h.DType))
	}
	if h.Op.CarriesTensor() {
		if h.DType == 0 {
			return badFrame("%s without a dtype", h.Op)
		}
		if int(h.Length)%h.DType.Size() != 0 {
			return badFrame("%s payload of %d bytes is not a whole number of %s elements", h.Op, h.Length, h.DType)
		}
	}
	if h.Length > MaxPayload {
		return badFrame("payload length %d exceeds %d", h.Length, MaxPayload)
	}
	if !h.Op.CarriesTensor() && h.Length > MaxControlPayload {
		return badFrame("%s payload length %d exceeds %d", h.Op, h.Length, MaxControlPayload)
	}
	if h.Flags&FlagCRC == 0 && h.CRC != 0 {
		return badFrame("crc set without the crc flag")
	}
	switch {
	case h.Flags&FlagPiece != 0 && h.Op != OpPullResp:
		return badFrame("piece flag on %s", h.Op)
	case h.Flags&FlagPull != 0 && h.Op != OpPush:
		return badFrame("pull flag on %s", h.Op)
	case h.Flags&FlagFatal != 0 && (h.Op != OpError || h.ReqID != 0):
		return badFrame("fatal flag on %s for request %d", h.Op, h.ReqID)
	case h.Flags&FlagPiece == 0 && h.Piece != 0:
		return badFrame("piece %d without the piece flag", h.Piece)
	case h.Piece > MaxPiece:
		return badFrame("piece %d exceeds %d", h.Piece, MaxPiece)
	case h.Flags&FlagPiece != 0 && uint64(h.Piece)*PieceBytes+uint64(h.Length) > MaxPayload:
		return badFrame("piece %d of %d bytes ends past %d", h.Piece, h.Length, MaxPayload)
	}
	return nil
}

// CheckPayload verifies the payload's CRC when the header carries one.
func (h *Header) CheckPayload(p []byte) error {
	if len(p) != int(h.Length) {
		return badFrame("payload is %d bytes, header says %d", len(p), h.Length)
	}
	if h.Flags&FlagCRC != 0 {
		if c := Checksum(p); c != h.CRC {
			return badFrame("payload crc %#08x, header says %#08x", c, h.CRC)
		}
	}
	return nil
}

// WriteFrame writes one frame (header then payload) to w. It sets h.Length
// from the payload. Transports with a faster path (writev) need not use it.
func WriteFrame(w io.Writer, h Header, payload []byte) error {
	h.Length = uint32(len(payload))
	var b [HeaderSize]byte
	h.Encode(b[:])
	if len(payload) == 0 {
		_, err := w.Write(b[:])
		return err
	}
	buf := make([]byte, 0, HeaderSize+len(payload))
	buf = append(append(buf, b[:]...), payload...)
	_, err := w.Write(buf)
	return err
}

// ReadFrame reads one frame from r, allocating its payload, and refuses
// payloads longer than maxPayload. It is meant for control traffic; the data
// path reads payloads straight into their destination instead.
func ReadFrame(r io.Reader, maxPayload int) (Header, []byte, error) {
	var b [HeaderSize]byte
	var h Header
	if _, err := io.ReadFull(r, b[:]); err != nil {
		return h, nil, err
	}
	if err := h.Decode(b[:]); err != nil {
		return h, nil, err
	}
	if int(h.Length) > maxPayload {
		return h, nil, badFrame("%s payload of %d bytes exceeds this channel's limit of %d", h.Op, h.Length, maxPayload)
	}
	p := make([]byte, h.Length)
	if _, err := io.ReadFull(r, p); err != nil {
		return h, nil, fmt.Errorf("proto: read %s payload: %w", h.Op, err)
	}
	if err := h.CheckPayload(p); err != nil {
		return h, nil, err
	}
	return h, p, nil
}
