package verbs

import (
	"encoding/binary"
	"fmt"

	"github.com/gobps/gobps/proto"
	"github.com/gobps/gobps/rdma/ibv"
)

// The verbs transport's own wire formats: the bootstrap message exchanged
// over TCP, and the messages SENT into the peer's receive buffers. All
// little-endian.

// qpInfo is what each side tells the other over the TCP bootstrap to
// connect their RC queue pairs. It goes in two messages: the hello (all but
// the QP's number and PSN), after which each side sizes its QP from both
// sides' depths, then the QP address.
type qpInfo struct {
	LinkLayer  ibv.LinkLayer
	MTU        ibv.MTU // active MTU of the port
	LID        uint16
	GID        ibv.GID
	SendDepth  uint32 // frames the sender may have in flight
	RecvDepth  uint32 // receive buffers posted
	EagerBytes uint32 // size of each receive buffer: the largest message it may be sent
	QPN        uint32 // second message
	PSN        uint32 // first send PSN; second message
}

const (
	bootMagic   = "GBRV" // gobps RDMA verbs
	bootVersion = 1
	helloSize   = 64
	qpAddrSize  = 8
	// maxDepth bounds SendDepth and RecvDepth on both sides.
	maxDepth = 4096
)

// encodeHello writes the hello:
//
//	0 magic "GBRV" | 4 version u16 | 6 link layer u8 | 7 MTU u8
//	8 LID u16 | 10 reserved u16 | 12 send depth u32 | 16 recv depth u32
//	20 eager bytes u32 | 24 reserved [8] | 32 GID [16] | 48 reserved [16]
func (q *qpInfo) encodeHello() []byte {
	b := make([]byte, helloSize)
	le := binary.LittleEndian
	copy(b, bootMagic)
	le.PutUint16(b[4:], bootVersion)
	b[6], b[7] = byte(q.LinkLayer), byte(q.MTU)
	le.PutUint16(b[8:], q.LID)
	le.PutUint32(b[12:], q.SendDepth)
	le.PutUint32(b[16:], q.RecvDepth)
	le.PutUint32(b[20:], q.EagerBytes)
	copy(b[32:48], q.GID[:])
	return b
}

// encodeQPAddr writes the second message: QPN u32 | PSN u32.
func (q *qpInfo) encodeQPAddr() []byte {
	b := make([]byte, qpAddrSize)
	binary.LittleEndian.PutUint32(b, q.QPN)
	binary.LittleEndian.PutUint32(b[4:], q.PSN)
	return b
}

// checkMagic tells a verbs bootstrap from anything else by its first four
// bytes.
func checkMagic(b []byte) error {
	if string(b[:4]) == bootMagic {
		return nil
	}
	if binary.LittleEndian.Uint32(b) == proto.Magic {
		return fmt.Errorf("%w: the peer speaks the TCP transport, not verbs (bootstrap magic %q): "+
			"every process of a job must choose the same transport (BYTEPS_ENABLE_RDMA)", proto.ErrBadFrame, b[:4])
	}
	return fmt.Errorf("%w: bootstrap magic %q, want %q", proto.ErrBadFrame, b[:4], bootMagic)
}

// decodeHello parses and checks a peer's hello.
func decodeHello(b []byte) (qpInfo, error) {
	var q qpInfo
	if len(b) != helloSize {
		return q, fmt.Errorf("%w: bootstrap hello of %d bytes, want %d", proto.ErrBadFrame, len(b), helloSize)
	}
	if err := checkMagic(b); err != nil {
		return q, err
	}
	le := binary.LittleEndian
	if v := le.Uint16(b[4:]); v != bootVersion {
		return q, fmt.Errorf("%w: bootstrap version %d, this build speaks %d", proto.ErrBadFrame, v, bootVersion)
	}
	q = qpInfo{
		LinkLayer: ibv.LinkLayer(b[6]), MTU: ibv.MTU(b[7]), LID: le.Uint16(b[8:]),
		SendDepth: le.Uint32(b[12:]), RecvDepth: le.Uint32(b[16:]), EagerBytes: le.Uint32(b[20:]),
	}
	copy(q.GID[:], b[32:48])
	switch {
	case q.MTU.Bytes() == 0:
		return q, fmt.Errorf("%w: bootstrap MTU code %d", proto.ErrBadFrame, q.MTU)
	case q.SendDepth < 1 || q.SendDepth > maxDepth || q.RecvDepth < 1 || q.RecvDepth > maxDepth:
		return q, fmt.Errorf("%w: bootstrap depths %d/%d outside 1..%d", proto.ErrBadFrame, q.SendDepth, q.RecvDepth, maxDepth)
	case q.EagerBytes < ctlSlotBytes || q.EagerBytes > 1<<20:
		return q, fmt.Errorf("%w: bootstrap receive buffers of %d bytes", proto.ErrBadFrame, q.EagerBytes)
	case q.LinkLayer > ibv.LinkEthernet:
		return q, fmt.Errorf("%w: bootstrap link layer %d", proto.ErrBadFrame, q.LinkLayer)
	}
	return q, nil
}

// decodeQPAddr parses the second message into q.
func decodeQPAddr(b []byte, q *qpInfo) error {
	if len(b) != qpAddrSize {
		return fmt.Errorf("%w: bootstrap QP address of %d bytes, want %d", proto.ErrBadFrame, len(b), qpAddrSize)
	}
	q.QPN, q.PSN = binary.LittleEndian.Uint32(b), binary.LittleEndian.Uint32(b[4:])
	if q.QPN == 0 || q.QPN >= 1<<24 || q.PSN >= 1<<24 {
		return fmt.Errorf("%w: bootstrap QPN %d / PSN %d out of range", proto.ErrBadFrame, q.QPN, q.PSN)
	}
	return nil
}

// Messages SENT into the peer's receive buffers start with an 8-byte
// message header:
//
//	0 kind u8 | 1 status u8 (CTS) | 2 reserved u16 | 4 send id u32
//
// then, by kind:
//
//	msgEager  proto.Header (48) + payload: a whole frame
//	msgRTS    proto.Header (48): "frame send-id is ready; where do I write it?"
//	msgCTS    slot u32 | rkey u32 | addr u64 | len u32 | reserved u32:
//	          "write frame send-id at addr/rkey, immediate = slot"
//	          (status ctsRefused: the receiver refused the payload)
//	          with flag ctsStable in byte 2, 16 more bytes follow:
//	          header slot addr u64 | header rkey u32 | stable id u32:
//	          "and write every later frame of this (op, key) of this
//	          length into addr too, its header into the header slot, with
//	          immediate stableBit|stable id, once you hold a credit"
//	msgCredit (send id = stable id): "one more frame may be written into
//	          stable destination id"
const (
	msgEager  = 1
	msgRTS    = 2
	msgCTS    = 3
	msgCredit = 4

	msgHeaderSize   = 8
	rtsSize         = msgHeaderSize + proto.HeaderSize
	ctsSize         = msgHeaderSize + 24
	ctsStableSize   = ctsSize + 16
	creditSize      = msgHeaderSize
	ctsStable       = 1       // flag in byte 2 of a CTS
	stableBit       = 1 << 31 // in the immediate of a write into a stable destination
	stableHdrBytes  = 64      // a stable destination's header slot
	stableHdrPage   = 64      // header slots registered together
	maxStableGrants = 1024    // stable destinations per connection

	ctsOK      = 0
	ctsRefused = 1

	// eagerBytes is the size of a receive buffer and so the largest eager
	// message: header + frame header + payload up to 4040 bytes. Small on
	// purpose: a connection pins RecvDepth of them, and registered memory
	// counts against RLIMIT_MEMLOCK (8 MiB by default on Debian).
	eagerBytes = 4096
	// ctlSlotBytes is the size of a slot for an outgoing RTS or CTS.
	ctlSlotBytes = 64
	// inlineBytes is the inline data asked of the QP: RTS and CTS go inline.
	inlineBytes = ctlSlotBytes
)

func putMsgHeader(b []byte, kind, status byte, sid uint32) {
	b[0], b[1], b[2], b[3] = kind, status, 0, 0
	binary.LittleEndian.PutUint32(b[4:], sid)
}

// cts is a decoded clear-to-send.
type cts struct {
	sid     uint32
	refused bool
	slot    uint32
	rkey    uint32
	addr    uint64
	n       uint32

	stable  bool // a stable grant: the fields below are set
	hdrAddr uint64
	hdrRKey uint32
	id      uint32
}

func (m *cts) encode(b []byte) int {
	status := byte(ctsOK)
	if m.refused {
		status = ctsRefused
	}
	putMsgHeader(b, msgCTS, status, m.sid)
	le := binary.LittleEndian
	le.PutUint32(b[8:], m.slot)
	le.PutUint32(b[12:], m.rkey)
	le.PutUint64(b[16:], m.addr)
	le.PutUint32(b[24:], m.n)
	le.PutUint32(b[28:], 0)
	if !m.stable {
		return ctsSize
	}
	b[2] = ctsStable
	le.PutUint64(b[32:], m.hdrAddr)
	le.PutUint32(b[40:], m.hdrRKey)
	le.PutUint32(b[44:], m.id)
	return ctsStableSize
}

func decodeCTS(b []byte) (cts, error) {
	if len(b) < msgHeaderSize || b[2] > ctsStable {
		return cts{}, fmt.Errorf("%w: CTS of %d bytes", proto.ErrBadFrame, len(b))
	}
	want := ctsSize
	if b[2] == ctsStable {
		want = ctsStableSize
	}
	if len(b) != want {
		return cts{}, fmt.Errorf("%w: CTS of %d bytes, want %d", proto.ErrBadFrame, len(b), want)
	}
	le := binary.LittleEndian
	m := cts{sid: le.Uint32(b[4:]), slot: le.Uint32(b[8:]), rkey: le.Uint32(b[12:]), addr: le.Uint64(b[16:]), n: le.Uint32(b[24:])}
	if b[2] == ctsStable {
		m.stable, m.hdrAddr, m.hdrRKey, m.id = true, le.Uint64(b[32:]), le.Uint32(b[40:]), le.Uint32(b[44:])
		if m.id >= maxStableGrants {
			return cts{}, fmt.Errorf("%w: stable id %d", proto.ErrBadFrame, m.id)
		}
	}
	switch b[1] {
	case ctsOK:
	case ctsRefused:
		m.refused = true
	default:
		return cts{}, fmt.Errorf("%w: CTS status %d", proto.ErrBadFrame, b[1])
	}
	return m, nil
}
