package proto

import (
	"encoding/binary"
	"fmt"
)

// NoRoot marks a declaration whose rounds sum a push from every worker.
const NoRoot = -1

// Decl declares one key to the server that owns it.
//
// A key with Root == NoRoot completes a round when every worker has pushed;
// a key with Root >= 0 is a broadcast key: its round completes with the push
// of worker Root alone, and the other workers only pull.
type Decl struct {
	Key   Key
	DType DType
	Root  int32
	Bytes uint64
}

// DeclSize is the encoded size of one Decl.
const DeclSize = 24

// MaxDecls bounds the number of declarations in one frame: a declaration
// frame is a control frame (at most MaxControlPayload bytes), so a worker
// sends a larger batch in several.
const MaxDecls = MaxControlPayload / DeclSize

func (d Decl) String() string {
	return fmt.Sprintf("key %s: %d bytes of %s root %d", d.Key, d.Bytes, d.DType, d.Root)
}

// Check reports whether d is well formed on its own.
func (d Decl) Check() error {
	if !d.DType.Valid() {
		return fmt.Errorf("declaration of key %s: unknown dtype %d", d.Key, uint8(d.DType))
	}
	if d.Bytes == 0 || d.Bytes > MaxPayload {
		return fmt.Errorf("declaration of key %s: size %d bytes is outside 1..%d", d.Key, d.Bytes, MaxPayload)
	}
	if d.Bytes%uint64(d.DType.Size()) != 0 {
		return fmt.Errorf("declaration of key %s: %d bytes is not a whole number of %s elements", d.Key, d.Bytes, d.DType)
	}
	if d.Root < NoRoot {
		return fmt.Errorf("declaration of key %s: root %d is negative", d.Key, d.Root)
	}
	return nil
}

// EncodeDecls encodes ds as a declaration payload.
func EncodeDecls(ds []Decl) []byte {
	b := make([]byte, DeclSize*len(ds))
	le := binary.LittleEndian
	for i, d := range ds {
		p := b[i*DeclSize:]
		le.PutUint64(p[0:], uint64(d.Key))
		p[8] = uint8(d.DType)
		// p[9:12] reserved, zero
		le.PutUint32(p[12:], uint32(d.Root))
		le.PutUint64(p[16:], d.Bytes)
	}
	return b
}

// DecodeDecls parses a declaration payload and checks every entry.
func DecodeDecls(b []byte) ([]Decl, error) {
	if len(b)%DeclSize != 0 {
		return nil, badFrame("declaration payload of %d bytes is not a multiple of %d", len(b), DeclSize)
	}
	le := binary.LittleEndian
	ds := make([]Decl, len(b)/DeclSize)
	for i := range ds {
		p := b[i*DeclSize:]
		if p[9]|p[10]|p[11] != 0 {
			return nil, badFrame("declaration %d: reserved bytes are not zero", i)
		}
		ds[i] = Decl{
			Key:   Key(le.Uint64(p[0:])),
			DType: DType(p[8]),
			Root:  int32(le.Uint32(p[12:])),
			Bytes: le.Uint64(p[16:]),
		}
		if err := ds[i].Check(); err != nil {
			return nil, fmt.Errorf("%w: %v", ErrBadFrame, err)
		}
	}
	return ds, nil
}
