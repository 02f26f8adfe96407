package local

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gobps/gobps/proto"
)

// joinAll joins ranks 0..cfg.Size-1 of cfg's group from goroutines of this
// process and closes them when the test ends.
func joinAll(t *testing.T, cfg Config) []*Group {
	t.Helper()
	gs := make([]*Group, cfg.Size)
	errs := make([]error, cfg.Size)
	var wg sync.WaitGroup
	for r := range cfg.Size {
		c := cfg
		c.Rank = r
		wg.Go(func() { gs[r], errs[r] = Join(context.Background(), c) })
	}
	wg.Wait()
	t.Cleanup(func() {
		for _, g := range gs {
			if g != nil {
				g.Close()
			}
		}
	})
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
	return gs
}

// joinErrs joins the given ranks of cfg's group concurrently and returns
// their errors (groups that do join are closed at once).
func joinErrs(cfg Config, ranks ...int) []error {
	errs := make([]error, len(ranks))
	var wg sync.WaitGroup
	for i, r := range ranks {
		c := cfg
		c.Rank = r
		wg.Go(func() {
			g, err := Join(context.Background(), c)
			if g != nil {
				g.Close()
			}
			errs[i] = err
		})
	}
	wg.Wait()
	return errs
}

// declareAll declares keys in every group, in order.
func declareAll(t *testing.T, gs []*Group, keys []keySpec) [][]*Segment {
	t.Helper()
	segs := make([][]*Segment, len(gs))
	for r, g := range gs {
		for _, k := range keys {
			s, err := g.Declare(k.Key, k.bytes(), k.DType)
			if err != nil {
				t.Fatalf("local rank %d: %v", r, err)
			}
			segs[r] = append(segs[r], s)
		}
	}
	return segs
}

// runRound runs round r of every key in every rank concurrently, the owner
// multiplying the local sum by factor, and checks every result.
func runRound(t *testing.T, segs [][]*Segment, keys []keySpec, r uint64, factor int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	size := len(segs)
	errs := make(chan error, size*len(keys))
	var wg sync.WaitGroup
	for rank := range size {
		for i, k := range keys {
			s := segs[rank][i]
			wg.Go(func() {
				errs <- func() error {
					n := k.bytes()
					copy(s.Input(), gen(k.DType, n, seed(0, rank, k.Key, r)))
					if err := s.Contribute(r); err != nil {
						return err
					}
					parts := make([][]byte, size)
					for q := range parts {
						parts[q] = gen(k.DType, n, seed(0, q, k.Key, r))
					}
					var got []byte
					if s.IsOwner() {
						sum, err := s.Reduce(ctx, r)
						if err != nil {
							return err
						}
						scale(k.DType, sum, factor)
						if err := s.Publish(r); err != nil {
							return err
						}
						got = sum
					} else {
						var err error
						if got, err = s.Wait(ctx, r); err != nil {
							return err
						}
					}
					if i := firstDiff(got, combine(k.DType, parts, factor)); i >= 0 {
						return fmt.Errorf("local rank %d key %s round %d: differs at byte %d", rank, k.Key, r, i)
					}
					return s.Done(r)
				}()
			})
		}
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Error(err)
		}
	}
}

// wantErr fails the test unless err is non-nil and contains every substr.
func wantErr(t *testing.T, err error, substr ...string) {
	t.Helper()
	if err == nil {
		t.Fatalf("got no error, want one containing %q", substr)
	}
	for _, s := range substr {
		if !strings.Contains(err.Error(), s) {
			t.Fatalf("error %q does not contain %q", err, s)
		}
	}
}

// eventually polls f for up to 5 s.
func eventually(t *testing.T, what string, f func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !f() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestConfig(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "file")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		desc string
		cfg  Config
		want string
	}{
		{"empty group", Config{Dir: dir, Size: 2}, "Group is empty"},
		{"size 0", Config{Dir: dir, Group: "g"}, "group size 0 is outside 1..255"},
		{"size too large", Config{Dir: dir, Group: "g", Size: 256}, "group size 256"},
		{"negative rank", Config{Dir: dir, Group: "g", Size: 2, Rank: -1}, "local rank -1 is outside 0..1"},
		{"rank too large", Config{Dir: dir, Group: "g", Size: 2, Rank: 2}, "local rank 2 is outside 0..1"},
		{"negative timeout", Config{Dir: dir, Group: "g", Size: 2, JoinTimeout: -1}, "negative JoinTimeout"},
		{"missing dir", Config{Dir: filepath.Join(dir, "nope"), Group: "g", Size: 2}, "no such file"},
		{"dir is a file", Config{Dir: file, Group: "g", Size: 2}, "is not a directory"},
	} {
		t.Run(tc.desc, func(t *testing.T) {
			_, err := Join(context.Background(), tc.cfg)
			wantErr(t, err, tc.want)
		})
	}
}

func TestNames(t *testing.T) {
	b := baseName("10.0.0.1:9000/worker 3/../x")
	if !strings.HasPrefix(b, "gobps.") || strings.ContainsAny(b[len("gobps."):], "./: ") || len(b) > 6+32+1+16 {
		t.Errorf("baseName = %q", b)
	}
	if baseName("a/b") == baseName("a_b") {
		t.Error("groups that sanitise alike get the same name")
	}
	if baseName("g") != baseName("g") {
		t.Error("baseName is not deterministic")
	}
	long := strings.Repeat("x", 200)
	if b := baseName(long); len(b) != 6+32+1+16 {
		t.Errorf("baseName of a long group = %q", b)
	}
	base := baseName("g")
	if p, err := socketPath("/dev/shm", base); err != nil || p != "/dev/shm/"+base+".sock" {
		t.Errorf("socketPath = %q, %v", p, err)
	}
	dir := "/" + strings.Repeat("d", 60)
	longBase := baseName(strings.Repeat("g", 40))
	p, err := socketPath(dir, longBase)
	if err != nil || p != dir+"/gobps."+longBase[len(longBase)-16:]+".sock" {
		t.Errorf("socketPath(long dir) = %q, %v; want the short name", p, err)
	}
	_, err = socketPath("/"+strings.Repeat("d", 100), base)
	wantErr(t, err, "use a shorter Dir")
}

func TestFrames(t *testing.T) {
	f := frame{op: opContrib, dtype: proto.Int64, key: 1 << 40, round: 7, bytes: 4096, payload: []byte("x")}
	b := appendFrame(nil, f)
	g, n, err := decodeHeader(b)
	if err != nil || n != 1 || g.op != f.op || g.dtype != f.dtype || g.key != f.key || g.round != f.round || g.bytes != f.bytes {
		t.Fatalf("round trip: %+v, %d, %v", g, n, err)
	}
	for _, tc := range []struct {
		desc string
		edit func([]byte)
		want string
	}{
		{"op 0", func(b []byte) { b[0] = 0 }, "unknown op 0"},
		{"op too large", func(b []byte) { b[0] = byte(maxOp) }, "unknown op"},
		{"reserved", func(b []byte) { b[3] = 1 }, "reserved bytes"},
		{"payload too long", func(b []byte) { b[6] = 0xff }, "exceeds"},
	} {
		t.Run(tc.desc, func(t *testing.T) {
			h := appendFrame(nil, f)
			tc.edit(h)
			_, _, err := decodeHeader(h)
			wantErr(t, err, tc.want)
		})
	}
}

// TestInProcess runs groups of 1 and 3 ranks inside this process.
func TestInProcess(t *testing.T) {
	for _, size := range []int{1, 3} {
		t.Run(fmt.Sprintf("size%d", size), func(t *testing.T) {
			dir := t.TempDir()
			gs := joinAll(t, Config{Dir: dir, Group: "inproc", Size: size})
			keys := mixedKeys[:5]
			segs := declareAll(t, gs, keys)
			for r := range uint64(3) {
				runRound(t, segs, keys, r, 2)
			}
			for _, g := range gs {
				if err := g.Close(); err != nil {
					t.Error(err)
				}
			}
			if left := groupFiles(t, dir, "inproc"); len(left) > 0 {
				t.Errorf("files left: %v", left)
			}
		})
	}
}

func TestJoinTimeout(t *testing.T) {
	cfg := Config{Dir: t.TempDir(), Group: "timeout", Size: 4, JoinTimeout: 400 * time.Millisecond}
	start := time.Now()
	errs := joinErrs(cfg, 0, 2)
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("join took %v", d)
	}
	wantErr(t, errs[0], "local rank 0 of 4", "timed out after 400ms", "local ranks [1 3]", "joined: [0 2]")
	wantErr(t, errs[1], "local rank 2 of 4", "refused by local rank 0", "gave up", "local ranks [1 3]")
}

func TestJoinNoHost(t *testing.T) {
	cfg := Config{Dir: t.TempDir(), Group: "nohost", Size: 2, JoinTimeout: 300 * time.Millisecond}
	wantErr(t, joinErrs(cfg, 1)[0], "timed out after 300ms", "local rank 0 never accepted")
}

func TestJoinRefused(t *testing.T) {
	dir := t.TempDir()
	cfg := Config{Dir: dir, Group: "refused", Size: 2, JoinTimeout: 500 * time.Millisecond}
	var wg sync.WaitGroup
	var err0, err1 error
	wg.Go(func() { err0 = joinErrs(cfg, 0)[0] })
	wg.Go(func() {
		c := cfg
		c.Size = 3
		err1 = joinErrs(c, 1)[0]
	})
	wg.Wait()
	wantErr(t, err1, "refused by local rank 0", "says the group has 3 ranks, local rank 0 says 2")
	wantErr(t, err0, "timed out", "local ranks [1]", "refused: local rank 1")
}

func TestJoinCancel(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(50*time.Millisecond, cancel)
	for _, rank := range []int{0, 1} {
		start := time.Now()
		_, err := Join(ctx, Config{Dir: t.TempDir(), Group: "cancel", Size: 2, Rank: rank})
		wantErr(t, err, "context canceled")
		if d := time.Since(start); d > 2*time.Second {
			t.Errorf("rank %d: cancelled join took %v", rank, d)
		}
	}
}

// TestSecondHost checks that a second rank 0 of a live group is refused
// rather than taking over its socket.
func TestSecondHost(t *testing.T) {
	cfg := Config{Dir: t.TempDir(), Group: "twohosts", Size: 2, JoinTimeout: 5 * time.Second}
	first := make(chan error, 1)
	go func() { first <- joinErrs(cfg, 0)[0] }()
	path, _ := socketPath(cfg.Dir, baseName(cfg.Group))
	eventually(t, "the first rank 0 to listen", func() bool { _, err := os.Stat(path); return err == nil })
	wantErr(t, joinErrs(cfg, 0)[0], "a live process listens at", "another local rank 0")
	if err := joinErrs(cfg, 1)[0]; err != nil {
		t.Fatal(err)
	}
	if err := <-first; err != nil {
		t.Fatal(err)
	}
}

// TestStaleFiles leaves what a crashed job would (a socket nobody listens
// on, segment files of a dead rank 0) plus a file of a live job, and checks
// that a new job removes the stale ones, keeps the live one, and works.
func TestStaleFiles(t *testing.T) {
	dir := t.TempDir()
	const group = "stale"
	base := baseName(group)
	path, err := socketPath(dir, base)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	ln.SetUnlinkOnClose(false)
	ln.Close()
	dead := exec.Command("true")
	if err := dead.Run(); err != nil {
		t.Skip("cannot run true:", err)
	}
	stale := []string{
		fmt.Sprintf("%s.%d-%016x.%016x", base, dead.Process.Pid, 1, 0),
		fmt.Sprintf("%s.%d-%016x.%016x", base, dead.Process.Pid, 1, 1),
	}
	live := fmt.Sprintf("%s.%d-%016x.%016x", base, os.Getpid(), 2, 0)
	other := fmt.Sprintf("%s.%d-%016x.%016x", baseName("other"), dead.Process.Pid, 3, 0)
	for _, name := range append(stale, live, other) {
		if err := os.WriteFile(filepath.Join(dir, name), []byte("garbage"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	var logs []string
	var mu sync.Mutex
	cfg := Config{Dir: dir, Group: group, Size: 2, Logf: func(f string, a ...any) {
		mu.Lock()
		logs = append(logs, fmt.Sprintf(f, a...))
		mu.Unlock()
	}}
	gs := joinAll(t, cfg)
	mu.Lock()
	if joined := strings.Join(logs, "\n"); !strings.Contains(joined, "removed stale socket") || !strings.Contains(joined, "removed 2 stale shared-memory files") {
		t.Errorf("logs:\n%s", joined)
	}
	mu.Unlock()
	segs := declareAll(t, gs, mixedKeys[:2])
	runRound(t, segs, mixedKeys[:2], 0, 1)
	var names []string
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		names = append(names, e.Name())
	}
	for _, name := range stale {
		if slices.Contains(names, name) {
			t.Errorf("stale %s is still there", name)
		}
	}
	if !slices.Contains(names, live) || !slices.Contains(names, other) {
		t.Errorf("a file of a live job or another group was removed: %v", names)
	}
}

// TestMisuse checks that calls out of order or by the wrong rank fail with
// a clear error and change nothing.
func TestMisuse(t *testing.T) {
	gs := joinAll(t, Config{Dir: t.TempDir(), Group: "misuse", Size: 2})
	ctx := context.Background()
	k := mixedKeys[2]
	segs := declareAll(t, gs, []keySpec{k})
	own, other := segs[0][0], segs[1][0]
	if !own.IsOwner() || other.IsOwner() || own.Owner() != 0 {
		t.Fatalf("the first key should belong to local rank 0")
	}
	_, err := gs[0].Declare(k.Key, k.bytes(), k.DType)
	wantErr(t, err, "is declared already")
	_, err = gs[0].Declare(proto.MakeKey(9, 0), 6, proto.Float32)
	wantErr(t, err, "6 bytes is not a whole number of float32")
	_, err = gs[0].Declare(proto.MakeKey(9, 0), 0, proto.Float32)
	wantErr(t, err, "size 0 bytes is outside")
	_, err = gs[0].Declare(proto.MakeKey(9, 0), 4, proto.DType(0))
	wantErr(t, err, "invalid dtype")

	wantErr(t, own.Contribute(1), "Contribute(round 1) out of order: round 0 awaits Contribute")
	_, err = other.Reduce(ctx, 0)
	wantErr(t, err, "Reduce is for the owner, local rank 0; this is local rank 1")
	wantErr(t, other.Publish(0), "Publish is for the owner")
	_, err = own.Wait(ctx, 0)
	wantErr(t, err, "Wait is for the ranks that do not own the key")
	_, err = own.Reduce(ctx, 0)
	wantErr(t, err, "Reduce(round 0) out of order: round 0 awaits Contribute")
	wantErr(t, own.Publish(0), "Publish(round 0) out of order")
	wantErr(t, own.Done(0), "Done(round 0) out of order")
	wantErr(t, other.Done(0), "Done(round 0) out of order")
	if err := own.Contribute(0); err != nil {
		t.Fatal(err)
	}
	wantErr(t, own.Contribute(0), "Contribute(round 0) out of order: round 0 awaits Reduce")
	if err := other.Contribute(0); err != nil {
		t.Fatal(err)
	}
	wantErr(t, other.Done(0), "Done(round 0) out of order: round 0 awaits Wait")
	if _, err := own.Reduce(ctx, 0); err != nil {
		t.Fatal(err)
	}
	_, err = own.Reduce(ctx, 0)
	wantErr(t, err, "Reduce(round 0) out of order: round 0 awaits Publish")
	if err := own.Publish(0); err != nil {
		t.Fatal(err)
	}
	wantErr(t, own.Publish(0), "round 0 awaits Done")
	_, err = other.Wait(ctx, 1)
	wantErr(t, err, "Wait(round 1) out of order")
	for _, s := range []*Segment{own, other} {
		if s != own {
			if _, err := s.Wait(ctx, 0); err != nil {
				t.Fatal(err)
			}
		}
		if err := s.Done(0); err != nil {
			t.Fatal(err)
		}
	}
	// Nothing above broke the group.
	for _, g := range gs {
		if err := g.Err(); err != nil {
			t.Fatal(err)
		}
	}
	runRound(t, segs, []keySpec{k}, 1, 3)
}

// TestDeclareMismatch declares a key differently in two ranks: the rank
// that declares second gets the difference, and the whole group fails.
func TestDeclareMismatch(t *testing.T) {
	a := keySpec{proto.MakeKey(1, 0), proto.Float32, 1024}
	b := keySpec{proto.MakeKey(2, 0), proto.Float32, 2048}
	for _, tc := range []struct {
		desc   string
		r0, r1 []keySpec
		want   string
	}{
		{"size", []keySpec{a}, []keySpec{{a.Key, proto.Float32, 2048}}, "size in bytes 8192 here, 4096 there"},
		{"dtype", []keySpec{a}, []keySpec{{a.Key, proto.Int32, 1024}}, "dtype int32 here, float32 there"},
		{"order", []keySpec{a, b}, []keySpec{b, a}, "owner 0 here, 1 there"},
	} {
		t.Run(tc.desc, func(t *testing.T) {
			gs := joinAll(t, Config{Dir: t.TempDir(), Group: "mismatch", Size: 2})
			declareAll(t, gs[:1], tc.r0)
			var err error
			for _, k := range tc.r1 {
				if _, err = gs[1].Declare(k.Key, k.bytes(), k.DType); err != nil {
					break
				}
			}
			wantErr(t, err, "declared differently by local rank 1 and another local rank", tc.want)
			wantErr(t, gs[1].Err(), tc.want)
			select {
			case <-gs[0].Done():
			case <-time.After(5 * time.Second):
				t.Fatal("local rank 0 never heard of the mismatch")
			}
			wantErr(t, gs[0].Err(), "local rank 1 (pid", "gave up", tc.want)
			var pe *PeerError
			if !errors.As(gs[0].Err(), &pe) || pe.Rank != 1 || pe.PID != os.Getpid() {
				t.Errorf("Err() = %#v, want a PeerError naming local rank 1", gs[0].Err())
			}
		})
	}
}

// TestProtocolViolation sends frames that break the round order, as a buggy
// or mismatched rank would: the receiver fails naming the sender and tells
// it why.
func TestProtocolViolation(t *testing.T) {
	k0, k1 := mixedKeys[2], mixedKeys[3] // owned by ranks 0 and 1
	for _, tc := range []struct {
		desc string
		f    frame
		want string
	}{
		{"contrib of a future round", frame{op: opContrib, dtype: k0.DType, key: uint64(k0.Key), round: 5, bytes: uint64(k0.bytes())}, "contributed key 1.0 round 5 out of order"},
		{"contrib of the wrong size", frame{op: opContrib, dtype: k0.DType, key: uint64(k0.Key), bytes: 8}, "declared key 1.0 as 8 bytes of int32, but local rank 0 declared it as 4096 bytes"},
		{"contrib to a non-owner", frame{op: opContrib, dtype: k1.DType, key: uint64(k1.Key), bytes: uint64(k1.bytes())}, "local rank 1 owns the key here"},
		{"contrib through another file", frame{op: opContrib, dtype: k0.DType, key: uint64(k0.Key), bytes: uint64(k0.bytes()), payload: make([]byte, 8)}, "through another shared-memory file"},
		{"done before publish", frame{op: opDone, key: uint64(k0.Key)}, "finished key 1.0 round 0 out of order"},
		{"publish by a non-owner", frame{op: opPublish, key: uint64(k0.Key)}, "published key 1.0, which local rank 0 owns"},
		{"publish of an undeclared key", frame{op: opPublish, key: 99}, "sent publish for key 0.99 round 0, which this rank has not declared"},
		{"a hello after the join", frame{op: opHello}, "sent an unexpected hello frame"},
	} {
		t.Run(tc.desc, func(t *testing.T) {
			gs := joinAll(t, Config{Dir: t.TempDir(), Group: "proto", Size: 2})
			segs := declareAll(t, gs, []keySpec{k0, k1})
			gs[1].peers[0].send(tc.f)
			var pe *PeerError
			select {
			case <-gs[0].Done():
			case <-time.After(5 * time.Second):
				t.Fatal("local rank 0 did not fail")
			}
			wantErr(t, gs[0].Err(), "local rank 1 (pid", tc.want)
			if !errors.As(gs[0].Err(), &pe) || pe.Rank != 1 {
				t.Errorf("Err() = %v, want a PeerError naming local rank 1", gs[0].Err())
			}
			select {
			case <-gs[1].Done():
			case <-time.After(5 * time.Second):
				t.Fatal("local rank 1 was not told")
			}
			wantErr(t, gs[1].Err(), "local rank 0 (pid", "gave up", tc.want)
			// Every later call fails with the same error.
			wantErr(t, segs[0][0].Contribute(0), tc.want)
			_, err := gs[0].Declare(proto.MakeKey(7, 7), 4, proto.Float32)
			wantErr(t, err, tc.want)
		})
	}
}

// TestEarlyContribution has a rank contribute to a key its owner has not
// declared yet: the owner keeps it until it declares.
func TestEarlyContribution(t *testing.T) {
	gs := joinAll(t, Config{Dir: t.TempDir(), Group: "early", Size: 2})
	k := mixedKeys[3]
	s1, err := gs[1].Declare(k.Key, k.bytes(), k.DType)
	if err != nil {
		t.Fatal(err)
	}
	copy(s1.Input(), gen(k.DType, k.bytes(), seed(0, 1, k.Key, 0)))
	if err := s1.Contribute(0); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the early contribution to arrive", func() bool {
		gs[0].mu.Lock()
		defer gs[0].mu.Unlock()
		return gs[0].mu.nearly == 1
	})
	s0, err := gs[0].Declare(k.Key, k.bytes(), k.DType)
	if err != nil {
		t.Fatal(err)
	}
	copy(s0.Input(), gen(k.DType, k.bytes(), seed(0, 0, k.Key, 0)))
	if err := s0.Contribute(0); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	sum, err := s0.Reduce(ctx, 0)
	if err != nil {
		t.Fatal(err)
	}
	parts := [][]byte{gen(k.DType, k.bytes(), seed(0, 0, k.Key, 0)), gen(k.DType, k.bytes(), seed(0, 1, k.Key, 0))}
	if i := firstDiff(sum, combine(k.DType, parts, 1)); i >= 0 {
		t.Fatalf("sum differs at byte %d", i)
	}
}

// TestCancel checks that Wait and Reduce give up with their context and can
// be called again.
func TestCancel(t *testing.T) {
	gs := joinAll(t, Config{Dir: t.TempDir(), Group: "cancel", Size: 2})
	k := mixedKeys[2]
	segs := declareAll(t, gs, []keySpec{k})
	own, other := segs[0][0], segs[1][0]
	short := func() context.Context {
		ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
		t.Cleanup(cancel)
		return ctx
	}
	if err := own.Contribute(0); err != nil {
		t.Fatal(err)
	}
	_, err := own.Reduce(short(), 0)
	wantErr(t, err, "key 1.0 round 0: waiting for local rank 1 to contribute", "deadline exceeded")
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("%v is not DeadlineExceeded", err)
	}
	if err := other.Contribute(0); err != nil {
		t.Fatal(err)
	}
	_, err = other.Wait(short(), 0)
	wantErr(t, err, "waiting for local rank 0 to publish", "deadline exceeded")
	ctx := context.Background()
	if _, err := own.Reduce(ctx, 0); err != nil {
		t.Fatal(err)
	}
	if err := own.Publish(0); err != nil {
		t.Fatal(err)
	}
	if _, err := other.Wait(ctx, 0); err != nil {
		t.Fatal(err)
	}
	// Wait may be repeated until Done.
	if _, err := other.Wait(ctx, 0); err != nil {
		t.Fatal(err)
	}
	for _, s := range []*Segment{own, other} {
		if err := s.Done(0); err != nil {
			t.Fatal(err)
		}
	}
}

// TestPeerLeaves closes one rank cleanly: calls that need it fail naming
// it, calls that do not still work, and the group is not failed.
func TestPeerLeaves(t *testing.T) {
	gs := joinAll(t, Config{Dir: t.TempDir(), Group: "leaves", Size: 3})
	keys := mixedKeys[2:5] // owned by ranks 0, 1, 2
	segs := declareAll(t, gs, keys)
	ctx := context.Background()
	runRound(t, segs, keys, 0, 1)
	// Round 1 of key 0: rank 0 (owner) and rank 2 contribute; rank 1
	// leaves instead; rank 0's Reduce is waiting for it.
	for _, r := range []int{0, 2} {
		if err := segs[r][0].Contribute(1); err != nil {
			t.Fatal(err)
		}
	}
	reduced := make(chan error, 1)
	go func() {
		_, err := segs[0][0].Reduce(ctx, 1)
		reduced <- err
	}()
	time.Sleep(20 * time.Millisecond)
	if err := gs[1].Close(); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-reduced:
		wantErr(t, err, "local rank 1 (pid", "closed the group")
	case <-time.After(5 * time.Second):
		t.Fatal("Reduce did not notice that local rank 1 left")
	}
	// Key 1 belongs to rank 1: nobody would reduce a contribution.
	wantErr(t, segs[0][1].Contribute(1), "local rank 1 (pid", "closed the group")
	// The group is not failed.
	if err := gs[0].Err(); err != nil {
		t.Fatalf("Err() = %v after a clean departure", err)
	}
	wantErr(t, gs[1].Err(), "group closed")
	_, err := gs[1].Declare(proto.MakeKey(8, 0), 4, proto.Float32)
	if !errors.Is(err, ErrClosed) {
		t.Errorf("Declare after Close: %v, want ErrClosed", err)
	}
}

// TestPeerDies cuts a rank's connections without a goodbye, as the kernel
// does when a process dies: every pending call of the others fails at once
// naming it, and so does every later call.
func TestPeerDies(t *testing.T) {
	gs := joinAll(t, Config{Dir: t.TempDir(), Group: "dies", Size: 3})
	keys := mixedKeys[2:5]
	segs := declareAll(t, gs, keys)
	ctx := context.Background()
	if err := segs[2][1].Contribute(0); err != nil {
		t.Fatal(err)
	}
	waited := make(chan error, 1)
	go func() {
		_, err := segs[2][1].Wait(ctx, 0)
		waited <- err
	}()
	for _, p := range gs[1].peers {
		if p != nil {
			p.conn.Close()
		}
	}
	name := fmt.Sprintf("local rank 1 (pid %d) died or disconnected", os.Getpid())
	select {
	case err := <-waited:
		wantErr(t, err, name)
	case <-time.After(5 * time.Second):
		t.Fatal("Wait did not notice that local rank 1 died")
	}
	for _, r := range []int{0, 2} {
		select {
		case <-gs[r].Done():
		case <-time.After(5 * time.Second):
			t.Fatalf("local rank %d did not fail", r)
		}
		wantErr(t, gs[r].Err(), name)
		wantErr(t, segs[r][0].Contribute(0), name)
	}
}

// TestCloseUnblocks closes a rank while one of its own calls waits.
func TestCloseUnblocks(t *testing.T) {
	gs := joinAll(t, Config{Dir: t.TempDir(), Group: "closeself", Size: 2})
	segs := declareAll(t, gs, mixedKeys[:1])
	s := segs[1][0]
	if err := s.Contribute(0); err != nil {
		t.Fatal(err)
	}
	waited := make(chan error, 1)
	go func() {
		_, err := s.Wait(context.Background(), 0)
		waited <- err
	}()
	time.Sleep(20 * time.Millisecond)
	if err := gs[1].Close(); err != nil {
		t.Fatal(err)
	}
	if err := gs[1].Close(); err != nil {
		t.Fatal("second Close:", err)
	}
	select {
	case err := <-waited:
		if !errors.Is(err, ErrClosed) {
			t.Fatalf("Wait returned %v, want ErrClosed", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Close did not end Wait")
	}
}

// TestRecreatedFile removes a key's file between the owner's Declare and
// another rank's, as an early Close would: the late rank creates a new file
// of the same name, and the owner must refuse its contribution rather than
// sum memory nobody wrote.
func TestRecreatedFile(t *testing.T) {
	gs := joinAll(t, Config{Dir: t.TempDir(), Group: "recreated", Size: 2})
	k := mixedKeys[2]
	s0, err := gs[0].Declare(k.Key, k.bytes(), k.DType)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(s0.path); err != nil {
		t.Fatal(err)
	}
	s1, err := gs[1].Declare(k.Key, k.bytes(), k.DType)
	if err != nil {
		t.Fatal(err)
	}
	if err := s0.Contribute(0); err != nil {
		t.Fatal(err)
	}
	if err := s1.Contribute(0); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, err = s0.Reduce(ctx, 0)
	wantErr(t, err, "local rank 1 (pid", "through another shared-memory file")
}

// TestAbort has an owner give up a round: the rank waiting for its result
// fails at once with the owner's reason.
func TestAbort(t *testing.T) {
	gs := joinAll(t, Config{Dir: t.TempDir(), Group: "abort", Size: 2})
	segs := declareAll(t, gs, mixedKeys[:1])
	own, other := segs[0][0], segs[1][0]
	for _, s := range []*Segment{own, other} {
		if err := s.Contribute(0); err != nil {
			t.Fatal(err)
		}
	}
	waited := make(chan error, 1)
	go func() {
		_, err := other.Wait(context.Background(), 0)
		waited <- err
	}()
	if _, err := own.Reduce(context.Background(), 0); err != nil {
		t.Fatal(err)
	}
	gs[0].Abort(errors.New("server 1 (10.0.0.2:9001) failed"))
	select {
	case err := <-waited:
		wantErr(t, err, "local rank 0 (pid", "gave up: local: local rank 0 aborted the group: server 1 (10.0.0.2:9001) failed")
	case <-time.After(5 * time.Second):
		t.Fatal("Wait did not end")
	}
	wantErr(t, gs[0].Err(), "local rank 0 aborted the group: server 1")
	wantErr(t, own.Publish(0), "aborted the group")
}

// TestAbortThenExit: an owner that aborts and then vanishes at once (its
// process exits without Close, as a program does when its operation has
// failed) still tells the waiting rank why, not merely that it died.
func TestAbortThenExit(t *testing.T) {
	for i := range 20 {
		gs := joinAll(t, Config{Dir: t.TempDir(), Group: fmt.Sprintf("abortexit%d", i), Size: 2})
		segs := declareAll(t, gs, mixedKeys[:1])
		own, other := segs[0][0], segs[1][0]
		for _, s := range []*Segment{own, other} {
			if err := s.Contribute(0); err != nil {
				t.Fatal(err)
			}
		}
		waited := make(chan error, 1)
		go func() {
			_, err := other.Wait(context.Background(), 0)
			waited <- err
		}()
		if _, err := own.Reduce(context.Background(), 0); err != nil {
			t.Fatal(err)
		}
		gs[0].Abort(errors.New("server 1 (10.0.0.2:9001) failed"))
		for _, p := range gs[0].peers {
			if p != nil {
				p.conn.Close() // the process is gone
			}
		}
		select {
		case err := <-waited:
			wantErr(t, err, "aborted the group: server 1 (10.0.0.2:9001) failed")
		case <-time.After(5 * time.Second):
			t.Fatal("Wait did not end")
		}
	}
}
