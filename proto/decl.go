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
//
// Name and Shape say which tensor the key is a partition of (its name and
// shape as the worker's framework knows them): every worker must declare
// the same tensor for a key, and the servers compare the declarations of
// all of them, so that tensors matched up wrongly (other names on other
// ranks, another order, another shape of the same size) are refused
// instead of summed. An empty Shape is a scalar (or, from a caller that
// knows no shape, unknown).
type Decl struct {
	Key   Key
	DType DType
	Root  int32
	Bytes uint64 // the partition's bytes
	Name  string
	Shape []int64
}

// DeclSize is the encoded size of one Decl without its name and shape
// (EncodedSize gives the whole).
const DeclSize = 24

// Bounds on a declaration's name and shape.
const (
	MaxNameBytes = 1024
	MaxDims      = 32
)

// MaxDecls bounds the number of declarations in one frame: a declaration
// frame is a control frame (at most MaxControlPayload bytes), so a worker
// sends a larger batch in several (see EncodedSize).
const MaxDecls = MaxControlPayload / DeclSize

// EncodedSize is the bytes d takes in a declaration payload.
func (d Decl) EncodedSize() int { return DeclSize + len(d.Name) + 8*len(d.Shape) }

// Same reports whether d and o declare the same thing: the key, its size,
// dtype and root, and the tensor's name and shape.
func (d Decl) Same(o Decl) bool {
	if d.Key != o.Key || d.DType != o.DType || d.Root != o.Root || d.Bytes != o.Bytes || d.Name != o.Name || len(d.Shape) != len(o.Shape) {
		return false
	}
	for i := range d.Shape {
		if d.Shape[i] != o.Shape[i] {
			return false
		}
	}
	return true
}

// Tensor describes the tensor d is a partition of, for messages:
// "fc1.weight" float32[512 128].
func (d Decl) Tensor() string {
	return fmt.Sprintf("%q %s%v", d.Name, d.DType, d.Shape)
}

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
	if len(d.Name) > MaxNameBytes {
		return fmt.Errorf("declaration of key %s: a name of %d bytes, more than %d", d.Key, len(d.Name), MaxNameBytes)
	}
	if len(d.Shape) > MaxDims {
		return fmt.Errorf("declaration of key %s: %d dimensions, more than %d", d.Key, len(d.Shape), MaxDims)
	}
	elems := uint64(1)
	for _, n := range d.Shape {
		if n <= 0 || uint64(n) > MaxPayload || elems > MaxPayload/uint64(n) {
			return fmt.Errorf("declaration of key %s: shape %v is empty or too large", d.Key, d.Shape)
		}
		elems *= uint64(n)
	}
	if len(d.Shape) > 0 && elems*uint64(d.DType.Size()) < d.Bytes {
		return fmt.Errorf("declaration of key %s: a partition of %d bytes of a tensor of shape %v", d.Key, d.Bytes, d.Shape)
	}
	return nil
}

// EncodeDecls encodes ds as a declaration payload. Each declaration is 24
// bytes, then its name and its shape (8 bytes a dimension):
//
//	0  key        u64
//	8  dtype      u8
//	9  name bytes u16
//	11 dims       u8
//	12 root       i32
//	16 bytes      u64
//	24 name, then the dims (i64 each)
func EncodeDecls(ds []Decl) []byte {
	n := 0
	for _, d := range ds {
		n += d.EncodedSize()
	}
	b := make([]byte, n)
	le := binary.LittleEndian
	off := 0
	for _, d := range ds {
		p := b[off:]
		le.PutUint64(p[0:], uint64(d.Key))
		p[8] = uint8(d.DType)
		le.PutUint16(p[9:], uint16(len(d.Name)))
		p[11] = uint8(len(d.Shape))
		le.PutUint32(p[12:], uint32(d.Root))
		le.PutUint64(p[16:], d.Bytes)
		copy(p[DeclSize:], d.Name)
		q := p[DeclSize+len(d.Name):]
		for i, dim := range d.Shape {
			le.PutUint64(q[8*i:], uint64(dim))
		}
		off += d.EncodedSize()
	}
	return b
}

// DecodeDecls parses a declaration payload and checks every entry.
func DecodeDecls(b []byte) ([]Decl, error) {
	le := binary.LittleEndian
	var ds []Decl
	for i := 0; len(b) > 0; i++ {
		if len(b) < DeclSize {
			return nil, badFrame("declaration %d: %d bytes, less than %d", i, len(b), DeclSize)
		}
		names, dims := int(le.Uint16(b[9:])), int(b[11])
		if names > MaxNameBytes || dims > MaxDims {
			return nil, badFrame("declaration %d: a name of %d bytes and %d dimensions (at most %d and %d)", i, names, dims, MaxNameBytes, MaxDims)
		}
		size := DeclSize + names + 8*dims
		if len(b) < size {
			return nil, badFrame("declaration %d: %d bytes, its name and shape need %d", i, len(b), size)
		}
		d := Decl{
			Key:   Key(le.Uint64(b[0:])),
			DType: DType(b[8]),
			Root:  int32(le.Uint32(b[12:])),
			Bytes: le.Uint64(b[16:]),
			Name:  string(b[DeclSize : DeclSize+names]),
		}
		if dims > 0 {
			d.Shape = make([]int64, dims)
			for j := range d.Shape {
				d.Shape[j] = int64(le.Uint64(b[DeclSize+names+8*j:]))
			}
		}
		if err := d.Check(); err != nil {
			return nil, fmt.Errorf("%w: %v", ErrBadFrame, err)
		}
		ds = append(ds, d)
		b = b[size:]
	}
	return ds, nil
}
