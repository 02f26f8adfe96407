package summation

import (
	"fmt"
	"testing"

	"github.com/gobps/gobps/proto"
	"github.com/gobps/gobps/rdma"
	"github.com/gobps/gobps/rdma/tcp"
)

// The server's edges, each found by probing a running job.

// TestMemoryBudget: a declaration frame whose new keys would take the
// server's declared bytes beyond its budget is refused whole, with an
// error naming the budget and GOBPS_SERVER_MEMORY_BYTES, and allocates
// nothing; declarations within the budget still work, up to it exactly.
// Before the budget, 200 declarations of 1 GiB in one 4.8 KB frame were
// acknowledged and took the server to 412 GB of virtual memory.
func TestMemoryBudget(t *testing.T) {
	tr := tcp.New(rdma.Options{})
	s, err := New(Config{Workers: 1, Engines: 2, Transport: tr, Addr: "127.0.0.1:0", MemoryBudget: 1000, Logf: t.Logf})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close(); tr.Close() })
	c := dial(t, s, 0)

	huge := make([]proto.Decl, 200)
	for i := range huge {
		huge[i] = proto.Decl{Key: proto.MakeKey(uint32(i), 0), DType: proto.Float32, Root: proto.NoRoot, Bytes: 1 << 30}
	}
	c.send(proto.Header{Op: proto.OpDeclare, ReqID: 11}, proto.EncodeDecls(huge))
	c.expectError(11, "beyond its memory budget of 1000 bytes (GOBPS_SERVER_MEMORY_BYTES")
	if st := s.Stats(); st.Keys != 0 || st.Declared != 0 {
		t.Fatalf("after a refused declaration: %d keys, %d bytes declared", st.Keys, st.Declared)
	}

	// Whole: a batch with one key that fits and one that does not
	// declares neither.
	small := proto.Decl{Key: proto.MakeKey(1, 0), DType: proto.Int32, Root: proto.NoRoot, Bytes: 8}
	big := proto.Decl{Key: proto.MakeKey(2, 0), DType: proto.Uint8, Root: proto.NoRoot, Bytes: 993}
	c.send(proto.Header{Op: proto.OpDeclare, ReqID: 12}, proto.EncodeDecls([]proto.Decl{small, big}))
	c.expectError(12, "declaring 2 new keys of 1001 bytes")
	if st := s.Stats(); st.Keys != 0 {
		t.Fatalf("a refused batch declared %d keys", st.Keys)
	}

	// Within the budget, up to it exactly; a key declared again (here
	// twice in one frame) counts once.
	c.declare(small)
	big.Bytes = 992
	c.declare(small, big, big)
	if st := s.Stats(); st.Keys != 2 || st.Declared != 1000 {
		t.Fatalf("%d keys, %d bytes declared; want 2 and 1000", st.Keys, st.Declared)
	}
	one := proto.Decl{Key: proto.MakeKey(3, 0), DType: proto.Uint8, Root: proto.NoRoot, Bytes: 1}
	c.send(proto.Header{Op: proto.OpDeclare, ReqID: 13}, proto.EncodeDecls([]proto.Decl{one}))
	c.expectError(13, "would take this server to 1001 declared bytes")

	// The keys that were declared work.
	c.send(proto.Header{Op: proto.OpPush, DType: proto.Int32, Key: small.Key, ReqID: 14}, i32s(3, 4))
	c.send(proto.Header{Op: proto.OpPull, Key: small.Key, ReqID: 14}, nil)
	if f := c.next(); f.h.Op != proto.OpPullResp || string(f.p) != string(i32s(3, 4)) {
		t.Fatalf("pull answered %v %v", &f.h, f.p)
	}
}

// TestDeclarationsDisagreeInOneFrame: two declarations of one key in one
// frame that disagree are refused, as they would be in two frames.
func TestDeclarationsDisagreeInOneFrame(t *testing.T) {
	s := newServer(t, 1)
	c := dial(t, s, 0)
	other := testKey
	other.Bytes = 16
	c.send(proto.Header{Op: proto.OpDeclare, ReqID: 5}, proto.EncodeDecls([]proto.Decl{testKey, other}))
	c.expectError(5, "declared as 16 bytes of int32 root -1, earlier as 8 bytes")
	if st := s.Stats(); st.Keys != 0 {
		t.Fatalf("%d keys declared", st.Keys)
	}
}

// TestDeclaredKeySize: a key of more than proto.MaxPayload bytes cannot be
// declared.
func TestDeclaredKeySize(t *testing.T) {
	s := newServer(t, 1)
	c := dial(t, s, 0)
	d := proto.Decl{Key: proto.MakeKey(1, 0), DType: proto.Uint8, Root: proto.NoRoot, Bytes: proto.MaxPayload + 1}
	c.send(proto.Header{Op: proto.OpDeclare, ReqID: 6}, proto.EncodeDecls([]proto.Decl{d}))
	c.expectError(6, fmt.Sprintf("outside 1..%d", proto.MaxPayload))
	if st := s.Stats(); st.Keys != 0 {
		t.Fatalf("%d keys declared", st.Keys)
	}
}
