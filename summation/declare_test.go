package summation

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/gobps/gobps/proto"
	"github.com/gobps/gobps/rdma"
	"github.com/gobps/gobps/rdma/tcp"
)

// Declarations compared across workers: tensors matched up wrongly are
// refused, naming both, instead of summed.

// tensorDecl is the declaration of a whole one-partition tensor.
func tensorDecl(k proto.Key, name string, shape ...int64) proto.Decl {
	n := int64(1)
	for _, d := range shape {
		n *= d
	}
	return proto.Decl{Key: k, DType: proto.Int32, Root: proto.NoRoot, Bytes: uint64(4 * n), Name: name, Shape: shape}
}

// TestDeclarationsDisagreeAcrossWorkers: the workers declare another
// tensor under the same key (another name, another shape of the same
// size, the same names in another order). The later declaration is
// refused with an error naming both tensors and both workers; and the
// worker that declared the key first has its push refused with the same
// error, where it used to be summed with the other's tensor (or wait).
func TestDeclarationsDisagreeAcrossWorkers(t *testing.T) {
	k0, k1 := proto.MakeKey(0, 0), proto.MakeKey(1, 0)
	for _, tc := range []struct {
		desc   string
		w0, w1 []proto.Decl
		want   []string
	}{
		{"other names", []proto.Decl{tensorDecl(k0, "a", 2)}, []proto.Decl{tensorDecl(k0, "b", 2)},
			[]string{`tensor "b" int32[2]`, `tensor "a" int32[2]`, "worker 1 declares", "worker 0 declared"}},
		{"another shape of the same size", []proto.Decl{tensorDecl(k0, "w", 2, 3)}, []proto.Decl{tensorDecl(k0, "w", 3, 2)},
			[]string{`tensor "w" int32[3 2]`, `tensor "w" int32[2 3]`}},
		{"another order", []proto.Decl{tensorDecl(k0, "a", 4), tensorDecl(k1, "b", 4)}, []proto.Decl{tensorDecl(k0, "b", 4), tensorDecl(k1, "a", 4)},
			[]string{`tensor "b" int32[4]`, `tensor "a" int32[4]`}},
	} {
		t.Run(tc.desc, func(t *testing.T) {
			s := newServer(t, 2)
			c0, c1 := dial(t, s, 0), dial(t, s, 1)
			c0.declare(tc.w0...)
			c1.send(proto.Header{Op: proto.OpDeclare, ReqID: 2}, proto.EncodeDecls(tc.w1))
			f := c1.next()
			if f.h.Op != proto.OpError || f.h.ReqID != 2 {
				t.Fatalf("the disagreeing declaration was answered %v %q", &f.h, f.p)
			}
			for _, w := range tc.want {
				if !strings.Contains(string(f.p), w) {
					t.Fatalf("error %q does not say %q", f.p, w)
				}
			}
			t.Logf("worker 1 gets: %s", f.p)
			// Worker 0's push of the key, with its pull: refused, not
			// summed with anything and not left waiting.
			c0.send(proto.Header{Op: proto.OpPush, Flags: proto.FlagPull, DType: proto.Int32, Key: k0, ReqID: 3},
				make([]byte, tc.w0[0].Bytes))
			c0.expectError(3, "every worker must declare the same tensors")
		})
	}
}

// TestPartialDeclaration: a tensor that only some workers declare (and
// push) fails within DeclareTimeout, naming the workers that never
// declared it, where the others used to wait for ever.
func TestPartialDeclaration(t *testing.T) {
	tr := tcp.New(rdma.Options{})
	const timeout = 200 * time.Millisecond
	s, err := New(Config{Workers: 3, Engines: 2, Transport: tr, Addr: "127.0.0.1:0", Logf: t.Logf, DeclareTimeout: timeout})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close(); tr.Close() })
	cs := []*client{dial(t, s, 0), dial(t, s, 1), dial(t, s, 2)}
	both, only := tensorDecl(proto.MakeKey(0, 0), "everywhere", 2), tensorDecl(proto.MakeKey(1, 0), "on rank 0 and 1 only", 2)
	cs[0].declare(both, only)
	cs[1].declare(both, only)
	cs[2].declare(both)
	start := time.Now()
	// The tensor every worker declared works.
	for i, c := range cs {
		c.send(proto.Header{Op: proto.OpPush, Flags: proto.FlagPull, DType: proto.Int32, Key: both.Key, ReqID: 10}, i32s(int32(i), 1))
	}
	for _, c := range cs {
		if f := c.next(); f.h.Op != proto.OpPullResp || string(f.p) != string(i32s(3, 3)) {
			t.Fatalf("the tensor every worker declared: %v %v", &f.h, f.p)
		}
	}
	// Workers 0 and 1 push the other one, and wait: it fails for both.
	for i, c := range cs[:2] {
		c.send(proto.Header{Op: proto.OpPush, Flags: proto.FlagPull, DType: proto.Int32, Key: only.Key, ReqID: 11}, i32s(int32(i), 1))
	}
	// Each hears twice, in either order: the pull fails, and a fatal
	// notice (its rounds of the tensor may wait in shared memory, where
	// no answer reaches them) fails the worker as a whole.
	wants := []string{`tensor "on rank 0 and 1 only" int32[2]`, "was declared by worker(s) [0 1] but not by worker(s) [2] after",
		fmt.Sprintf("(GOBPS_DECLARE_TIMEOUT %v)", timeout)}
	for i, c := range cs[:2] {
		var pulled, fatal bool
		for range 2 {
			f := c.next()
			switch {
			case f.h.Op == proto.OpError && f.h.ReqID == 11:
				pulled = true
			case f.h.Op == proto.OpError && f.h.ReqID == 0 && f.h.Flags&proto.FlagFatal != 0:
				fatal = true
			default:
				t.Fatalf("worker %d got %v %q", i, &f.h, f.p)
			}
			for _, w := range wants {
				if !strings.Contains(string(f.p), w) {
					t.Fatalf("worker %d: %q does not say %q", i, f.p, w)
				}
			}
		}
		if !pulled || !fatal {
			t.Fatalf("worker %d: pull failed %v, fatal notice %v", i, pulled, fatal)
		}
		if d := time.Since(start); d > timeout+2*time.Second {
			t.Errorf("worker %d heard after %v", i, d)
		}
	}
}

// TestPartialDeclarationWarns: with DeclareWarn only (the default), the
// workers that declared a tensor the others did not are told, by name and
// rank, whom they wait for, and the key still works once the last worker
// gets there late.
func TestPartialDeclarationWarns(t *testing.T) {
	tr := tcp.New(rdma.Options{})
	const warn = 150 * time.Millisecond
	s, err := New(Config{Workers: 2, Engines: 2, Transport: tr, Addr: "127.0.0.1:0", Logf: t.Logf, DeclareWarn: warn})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close(); tr.Close() })
	c0, c1 := dial(t, s, 0), dial(t, s, 1)
	d := tensorDecl(proto.MakeKey(0, 0), "late", 2)
	start := time.Now()
	c0.declare(d)
	c0.send(proto.Header{Op: proto.OpPush, Flags: proto.FlagPull, DType: proto.Int32, Key: d.Key, ReqID: 5}, i32s(1, 2))
	// The notice: an error frame for no request.
	c0.expectError(0, `tensor "late" int32[2]`, "declared by worker(s) [0] but not by worker(s) [1]")
	if e := time.Since(start); e < warn || e > warn+2*time.Second {
		t.Errorf("notice after %v, want about %v", e, warn)
	}
	// Worker 1 comes late: the round completes for both.
	c1.declare(d)
	c1.send(proto.Header{Op: proto.OpPush, Flags: proto.FlagPull, DType: proto.Int32, Key: d.Key, ReqID: 5}, i32s(10, 20))
	for _, c := range []*client{c0, c1} {
		if f := c.next(); f.h.Op != proto.OpPullResp || f.h.ReqID != 5 || string(f.p) != string(i32s(11, 22)) {
			t.Fatalf("late tensor: %v %v", &f.h, f.p)
		}
	}
}
