package proto

import (
	"bytes"
	"errors"
	"math"
	"slices"
	"strings"
	"testing"
)

func TestHeaderRoundTrip(t *testing.T) {
	h := Header{Op: OpPush, Flags: FlagCRC, DType: Float16, Sender: 7, Key: MakeKey(3, 9), Round: 1 << 40, ReqID: 12345, Length: 64, CRC: 0xdeadbeef}
	var b [HeaderSize]byte
	h.Encode(b[:])
	var g Header
	if err := g.Decode(b[:]); err != nil {
		t.Fatal(err)
	}
	if g != h {
		t.Fatalf("got %+v, want %+v", g, h)
	}
}

func TestHeaderPiece(t *testing.T) {
	h := Header{Op: OpPullResp, Flags: FlagPiece, DType: Float32, Key: 5, Length: PieceBytes, Piece: 4095}
	var b [HeaderSize]byte
	h.Encode(b[:])
	var g Header
	if err := g.Decode(b[:]); err != nil || g != h {
		t.Fatalf("piece round trip: %+v, %v", g, err)
	}
	// A piece that would end past MaxPayload is refused.
	h.Piece = MaxPayload / PieceBytes
	h.Encode(b[:])
	if err := g.Decode(b[:]); !errors.Is(err, ErrBadFrame) {
		t.Fatalf("piece past the largest payload: %v", err)
	}
}

func TestHeaderRejects(t *testing.T) {
	good := Header{Op: OpPush, DType: Float32, Key: 1, Length: 8}
	cases := []struct {
		desc string
		mut  func(b []byte)
	}{
		{"short", nil},
		{"magic", func(b []byte) { b[0] = 'X' }},
		{"version", func(b []byte) { b[4] = 9 }},
		{"unknown op", func(b []byte) { b[5] = 200 }},
		{"unknown flag", func(b []byte) { b[7] = 0x80 }},
		{"unknown dtype", func(b []byte) { b[8] = 99 }},
		{"piece without flag", func(b []byte) { b[10] = 1 }},
		{"piece flag on a push", func(b []byte) { b[6] |= byte(FlagPiece) }},
		{"fatal flag on a push", func(b []byte) { b[6] |= byte(FlagFatal) }},
		{"push without dtype", func(b []byte) { b[8] = 0 }},
		{"partial element", func(b []byte) { b[40] = 7 }},
		{"too long", func(b []byte) { b[43] = 0x80 }},
		{"crc without flag", func(b []byte) { b[44] = 1 }},
	}
	for _, c := range cases {
		t.Run(c.desc, func(t *testing.T) {
			var b [HeaderSize]byte
			good.Encode(b[:])
			in := b[:]
			if c.mut == nil {
				in = b[:10]
			} else {
				c.mut(in)
			}
			var h Header
			err := h.Decode(in)
			if !errors.Is(err, ErrBadFrame) {
				t.Fatalf("Decode = %v, want ErrBadFrame", err)
			}
			t.Log(err)
		})
	}
}

func TestFrameCRC(t *testing.T) {
	var buf bytes.Buffer
	p := []byte("12345678")
	if err := WriteFrame(&buf, Header{Op: OpPush, DType: Uint8, Flags: FlagCRC, CRC: Checksum(p)}, p); err != nil {
		t.Fatal(err)
	}
	raw := buf.Bytes()
	raw[len(raw)-1] ^= 1
	if _, _, err := ReadFrame(bytes.NewReader(raw), 100); !errors.Is(err, ErrBadFrame) {
		t.Fatalf("corrupted payload: err = %v", err)
	}
	raw[len(raw)-1] ^= 1
	h, got, err := ReadFrame(bytes.NewReader(raw), 100)
	if err != nil || !bytes.Equal(got, p) || h.Length != 8 {
		t.Fatalf("ReadFrame = %v %q %v", h, got, err)
	}
	if _, _, err := ReadFrame(bytes.NewReader(raw), 4); !errors.Is(err, ErrBadFrame) {
		t.Fatalf("over channel limit: err = %v", err)
	}
}

func TestDecls(t *testing.T) {
	ds := []Decl{
		{Key: MakeKey(1, 0), DType: Float32, Root: NoRoot, Bytes: 4096},
		{Key: MakeKey(2, 1), DType: BFloat16, Root: 0, Bytes: 2, Name: "fc1.weight", Shape: []int64{3, 5}},
		{Key: MakeKey(3, 0), DType: Int64, Root: NoRoot, Bytes: 8, Name: "step"}, // a scalar
	}
	got, err := DecodeDecls(EncodeDecls(ds))
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != len(ds) {
		t.Fatalf("%d declarations back, want %d", len(got), len(ds))
	}
	for i := range ds {
		if !got[i].Same(ds[i]) {
			t.Fatalf("decl %d: %+v != %+v", i, got[i], ds[i])
		}
	}
	other := ds[1]
	other.Shape = []int64{5, 3}
	if other.Same(ds[1]) {
		t.Error("another shape of the same size is the same declaration")
	}
	other = ds[1]
	other.Name = "fc2.weight"
	if other.Same(ds[1]) {
		t.Error("another name is the same declaration")
	}
	bad := []Decl{
		{Key: 1, DType: 0, Root: NoRoot, Bytes: 4},
		{Key: 1, DType: Float64, Root: NoRoot, Bytes: 4},
		{Key: 1, DType: Float64, Root: NoRoot, Bytes: 0},
		{Key: 1, DType: Float64, Root: -5, Bytes: 8},
		{Key: 1, DType: Float64, Root: NoRoot, Bytes: 8, Shape: []int64{2, 0}},
		{Key: 1, DType: Float64, Root: NoRoot, Bytes: 32, Shape: []int64{3}}, // a partition larger than its tensor
		{Key: 1, DType: Float64, Root: NoRoot, Bytes: 8, Shape: []int64{-1}},
		{Key: 1, DType: Float64, Root: NoRoot, Bytes: 8, Name: strings.Repeat("x", MaxNameBytes+1)},
		{Key: 1, DType: Float64, Root: NoRoot, Bytes: 8, Shape: make([]int64, MaxDims+1)},
	}
	for _, d := range bad {
		if _, err := DecodeDecls(EncodeDecls([]Decl{d})); !errors.Is(err, ErrBadFrame) {
			t.Errorf("%v: err = %v", d, err)
		}
	}
	if _, err := DecodeDecls(make([]byte, 5)); err == nil {
		t.Error("ragged payload accepted")
	}
	// A name or shape that runs past the payload.
	enc := EncodeDecls(ds[1:2])
	if _, err := DecodeDecls(enc[:len(enc)-1]); !errors.Is(err, ErrBadFrame) {
		t.Errorf("truncated shape: err = %v", err)
	}
}

func TestPartition(t *testing.T) {
	cases := []struct {
		desc        string
		n, part     int
		wantParts   int
		wantLastLen int
	}{
		{"empty", 0, 4096, 0, 0},
		{"one byte", 1, 4096, 1, 1},
		{"exact", 8192, 4096, 2, 4096},
		{"ragged", 8193, 4096, 3, 1},
	}
	for _, c := range cases {
		rs, err := Partition(c.n, c.part)
		if err != nil {
			t.Fatal(err)
		}
		if len(rs) != c.wantParts {
			t.Fatalf("%s: %d parts", c.desc, len(rs))
		}
		total := 0
		for i, r := range rs {
			if r.Off != total {
				t.Fatalf("%s: part %d at %d, want %d", c.desc, i, r.Off, total)
			}
			total += r.Len
		}
		if total != c.n || (len(rs) > 0 && rs[len(rs)-1].Len != c.wantLastLen) {
			t.Fatalf("%s: %+v", c.desc, rs)
		}
	}
	if _, err := Partition(10, 1000); err == nil {
		t.Error("unaligned partition size accepted")
	}
	if RoundPartitionBytes(1) != PageSize || RoundPartitionBytes(3*PageSize+5) != 3*PageSize {
		t.Error("RoundPartitionBytes")
	}
}

func TestBalancer(t *testing.T) {
	b := NewBalancer(3)
	got := []int{b.Assign(100), b.Assign(10), b.Assign(10), b.Assign(10), b.Assign(50)}
	want := []int{0, 1, 2, 1, 2}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("assign %v, want %v", got, want)
		}
	}
	if l := b.Load(); l[0] != 100 || l[1] != 20 || l[2] != 60 {
		t.Fatalf("load %v", l)
	}
}

// TestWeightedBalancer: BytePS's mixed mode at n = 4, k = 2 gives each of
// the 2 dedicated servers 0.3 of the bytes and each of the 4 co-located ones
// 0.1; 100 equal keys must split 30, 30, 10, 10, 10, 10.
func TestWeightedBalancer(t *testing.T) {
	b := NewWeightedBalancer([]float64{0.1, 0.1, 0.1, 0.1, 0.3, 0.3})
	count := make([]int, 6)
	for i := 0; i < 100; i++ {
		count[b.Assign(4096)]++
	}
	if want := []int{10, 10, 10, 10, 30, 30}; !slices.Equal(count, want) {
		t.Errorf("keys per server %v, want %v", count, want)
	}
	// A weight of 0 gets nothing; all zero counts as equal.
	b = NewWeightedBalancer([]float64{0, 1, -1})
	for i := 0; i < 5; i++ {
		if s := b.Assign(10); s != 1 {
			t.Fatalf("key %d went to server %d, want 1", i, s)
		}
	}
	b = NewWeightedBalancer([]float64{0, 0})
	if got := []int{b.Assign(1), b.Assign(1), b.Assign(1)}; !slices.Equal(got, []int{0, 1, 0}) {
		t.Errorf("all-zero weights: %v, want an even split", got)
	}
	// Equal weights behave as NewBalancer.
	b, e := NewWeightedBalancer([]float64{2, 2, 2}), NewBalancer(3)
	for _, n := range []uint64{100, 10, 10, 10, 50, 7, 300, 1} {
		if x, y := b.Assign(n), e.Assign(n); x != y {
			t.Fatalf("equal weights chose %d, NewBalancer %d", x, y)
		}
	}
}

func TestMixedShare(t *testing.T) {
	for _, tc := range []struct {
		n, k int
		want float64
	}{{4, 2, 0.6}, {4, 1, 6.0 / 18}, {3, 1, 0.4}, {4, 4, 1}, {4, 8, 1}, {2, 1, 0.5}, {1, 3, 0}, {4, 0, 0}} {
		if got := MixedShare(tc.n, tc.k); math.Abs(got-tc.want) > 1e-12 {
			t.Errorf("MixedShare(%d, %d) = %v, want %v", tc.n, tc.k, got, tc.want)
		}
	}
}

func FuzzDecodeHeader(f *testing.F) {
	var b [HeaderSize]byte
	(&Header{Op: OpPush, DType: Float32, Length: 16}).Encode(b[:])
	f.Add(b[:])
	(&Header{Op: OpDeclare, Length: DeclSize}).Encode(b[:])
	f.Add(b[:])
	f.Add([]byte("GBPS"))
	(&Header{Op: OpHello, Sender: 3}).Encode(b[:])
	f.Add(b[:])
	(&Header{Op: OpPullResp, DType: Int32}).Encode(b[:])
	f.Add(b[:])
	(&Header{Op: OpJoin, Round: 1}).Encode(b[:])
	f.Add(b[:])
	(&Header{Op: OpBehind, Round: 7}).Encode(b[:])
	f.Add(b[:])
	f.Fuzz(func(t *testing.T, in []byte) {
		var h Header
		if err := h.Decode(in); err != nil {
			if !errors.Is(err, ErrBadFrame) {
				t.Fatalf("error not wrapping ErrBadFrame: %v", err)
			}
			return
		}
		// An accepted header re-encodes to the same bytes.
		var out [HeaderSize]byte
		h.Encode(out[:])
		if !bytes.Equal(out[:], in[:HeaderSize]) {
			t.Fatalf("re-encode differs")
		}
		// And its frame reader never panics either.
		_, _, _ = ReadFrame(bytes.NewReader(in), 1<<16)
		_, _ = DecodeDecls(in[HeaderSize:])
		// Every decoded header is admitted, refused or a bad frame, on
		// either side, and what is taken keeps to the protocol.
		for _, side := range []Side{ServerSide, WorkerSide} {
			for _, hello := range []bool{false, true} {
				err := Admit(side, hello, &h)
				switch {
				case err == nil:
					checkAdmitted(t, side, hello, &h)
				case !errors.Is(err, ErrRefused) && !errors.Is(err, ErrBadFrame):
					t.Fatalf("Admit(%s, %v, %v) = %v: neither refused nor a bad frame", side, hello, &h, err)
				}
			}
		}
	})
}

// checkAdmitted fails t if Admit took a frame the protocol does not allow.
func checkAdmitted(t *testing.T, side Side, hello bool, h *Header) {
	t.Helper()
	ok := false
	switch side {
	case ServerSide:
		switch h.Op {
		case OpHello:
			ok = !hello && h.Length == 0
		case OpDeclare:
			ok = hello && h.Length > 0 && h.Length <= MaxControlPayload
		case OpPush:
			ok = hello && h.Length > 0
		case OpPull:
			ok = hello && h.Length == 0
		case OpError:
			ok = hello
		case OpJoin:
			ok = hello && h.Length == 0 && h.Round <= 1
		}
	case WorkerSide:
		switch h.Op {
		case OpPullResp:
			ok = h.Length > 0
		case OpDeclareAck, OpJoinAck, OpBehind:
			ok = h.Length == 0
		case OpError:
			ok = true
		}
	}
	if !ok {
		t.Fatalf("Admit(%s, hello %v) took %v", side, hello, h)
	}
	if !h.Op.CarriesTensor() && h.Length > MaxControlPayload {
		t.Fatalf("Admit took a %d-byte %s, over the control limit", h.Length, h.Op)
	}
}
