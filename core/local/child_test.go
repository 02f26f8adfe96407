package local

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gobps/gobps/proto"
	"github.com/gobps/gobps/summation/kernel"
)

// childSpec tells a child process which local rank to be and what to do.
type childSpec struct {
	Dir, Group string
	Size, Rank int
	// Machine numbers the emulated machine (group) this rank is on, for its
	// data seeds and the server's bookkeeping; Machines is how many there
	// are (all of Size ranks).
	Machine, Machines int
	Keys              []keySpec
	Rounds            int
	// Without Server, the owner's global step multiplies the local sum by
	// Factor (standing for Factor identical machines). With Server (a unix
	// socket of a fakeServer), the owner pushes the local sum there and
	// pulls the sum over all machines.
	Factor int
	Server string
	// Victim >= 0: that rank, at round HangRound, contributes every key
	// and then prints "READY" and sleeps until it is killed.
	Victim, HangRound int
}

// childResult is what a child reports, as "RESULT <json>" on stdout.
type childResult struct {
	Owned []proto.Key
	Err   string // the first error, if any
	ErrAt int64  // when it happened, unix nanoseconds
}

// runChild is a child process's main.
func runChild(spec string) int {
	var sp childSpec
	if err := json.Unmarshal([]byte(spec), &sp); err != nil {
		fmt.Fprintln(os.Stderr, "bad child spec:", err)
		return 2
	}
	res := childMain(sp)
	b, _ := json.Marshal(res)
	fmt.Printf("RESULT %s\n", b)
	return 0
}

func childMain(sp childSpec) (res childResult) {
	var mu sync.Mutex
	fail := func(err error) {
		mu.Lock()
		defer mu.Unlock()
		if res.Err == "" {
			res.Err, res.ErrAt = err.Error(), time.Now().UnixNano()
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	g, err := Join(ctx, Config{Dir: sp.Dir, Group: sp.Group, Size: sp.Size, Rank: sp.Rank, JoinTimeout: 20 * time.Second,
		Logf: func(f string, a ...any) { fmt.Fprintf(os.Stderr, f+"\n", a...) }})
	if err != nil {
		fail(err)
		return res
	}
	defer func() {
		if err := g.Close(); err != nil {
			fail(err)
		}
	}()
	segs := make([]*Segment, len(sp.Keys))
	for i, k := range sp.Keys {
		if segs[i], err = g.Declare(k.Key, k.bytes(), k.DType); err != nil {
			fail(err)
			return res
		}
		if segs[i].IsOwner() {
			res.Owned = append(res.Owned, k.Key)
		}
	}
	var hung sync.WaitGroup
	victim := sp.Rank == sp.Victim
	if victim {
		hung.Add(len(segs))
		go func() {
			hung.Wait()
			fmt.Println("READY")
		}()
	}
	var wg sync.WaitGroup
	for i, s := range segs {
		wg.Go(func() {
			for r := range uint64(sp.Rounds) {
				if err := childRound(ctx, sp, s, sp.Keys[i], r, victim, &hung); err != nil {
					fail(err)
					return
				}
			}
		})
	}
	wg.Wait()
	return res
}

// childRound runs round r of one key in a child and checks its sums.
func childRound(ctx context.Context, sp childSpec, s *Segment, k keySpec, r uint64, victim bool, hung *sync.WaitGroup) error {
	n := k.bytes()
	copy(s.Input(), gen(k.DType, n, seed(sp.Machine, sp.Rank, k.Key, r)))
	if err := s.Contribute(r); err != nil {
		return err
	}
	if victim && int(r) == sp.HangRound {
		hung.Done()
		time.Sleep(time.Hour) // until killed
	}
	local := make([][]byte, sp.Size)
	for q := range local {
		local[q] = gen(k.DType, n, seed(sp.Machine, q, k.Key, r))
	}
	want := combine(k.DType, local, sp.Factor)
	if sp.Server != "" {
		var all [][]byte
		for m := range sp.Machines {
			for q := range sp.Size {
				all = append(all, gen(k.DType, n, seed(m, q, k.Key, r)))
			}
		}
		want = combine(k.DType, all, 1)
	}
	var got []byte
	if s.IsOwner() {
		sum, err := s.Reduce(ctx, r)
		if err != nil {
			return err
		}
		if i := firstDiff(sum, combine(k.DType, local, 1)); i >= 0 {
			return fmt.Errorf("key %s round %d: local sum differs at byte %d", k.Key, r, i)
		}
		if sp.Server != "" {
			if err := push(sp, k, r, sum); err != nil {
				return err
			}
		} else {
			scale(k.DType, sum, sp.Factor)
		}
		if err := s.Publish(r); err != nil {
			return err
		}
		got = s.Result()
	} else {
		var err error
		if got, err = s.Wait(ctx, r); err != nil {
			return err
		}
	}
	if i := firstDiff(got, want); i >= 0 {
		return fmt.Errorf("key %s (%s) round %d: result differs at byte %d (local rank %d, owner %d): got % x, want % x", k.Key, k.DType, r, i, sp.Rank, s.Owner(), got[i:min(i+8, len(got))], want[i:min(i+8, len(want))])
	}
	return s.Done(r)
}

// The fake server's frame: key, round (uint64), machine, local rank, bytes
// (uint32), dtype (uint8) and padding to 32 bytes, then the data. The answer
// is the sum over all machines, the same size.
const pushHeader = 32

// push sends an owner's local sum to the fake server and reads the global
// sum back into it.
func push(sp childSpec, k keySpec, r uint64, data []byte) error {
	c, err := net.DialTimeout("unix", sp.Server, 5*time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(20 * time.Second))
	h := make([]byte, pushHeader)
	le := binary.LittleEndian
	le.PutUint64(h[0:], uint64(k.Key))
	le.PutUint64(h[8:], r)
	le.PutUint32(h[16:], uint32(sp.Machine))
	le.PutUint32(h[20:], uint32(sp.Rank))
	le.PutUint32(h[24:], uint32(len(data)))
	h[28] = byte(k.DType)
	if _, err := c.Write(append(h, data...)); err != nil {
		return fmt.Errorf("push key %s round %d: %w", k.Key, r, err)
	}
	if _, err := io.ReadFull(c, data); err != nil {
		return fmt.Errorf("pull key %s round %d: %w", k.Key, r, err)
	}
	return nil
}

// fakeServer stands for the summation servers in the two-machine test: it
// sums one push per machine per key and round, answers every pusher with
// the sum, and counts who pushed what.
type fakeServer struct {
	ln       *net.UnixListener
	machines int
	wg       sync.WaitGroup

	mu      sync.Mutex
	pushes  map[pushID][]int // local ranks that pushed, by key, round and machine
	pending map[pushID]*sumState
	errs    []error
}

type pushID struct {
	key     proto.Key
	round   uint64
	machine int // -1 in pending
}

type sumState struct {
	sum  []byte
	n    int
	done chan struct{}
}

func startServer(t *testing.T, machines int) *fakeServer {
	addr := &net.UnixAddr{Name: filepath.Join(t.TempDir(), "srv.sock"), Net: "unix"}
	ln, err := net.ListenUnix("unix", addr)
	if err != nil {
		t.Fatal(err)
	}
	s := &fakeServer{ln: ln, machines: machines, pushes: make(map[pushID][]int), pending: make(map[pushID]*sumState)}
	s.wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			s.wg.Go(func() { s.serve(c) })
		}
	})
	t.Cleanup(func() {
		ln.Close()
		s.wg.Wait()
	})
	return s
}

func (s *fakeServer) addr() string { return s.ln.Addr().String() }

func (s *fakeServer) fail(err error) {
	s.mu.Lock()
	s.errs = append(s.errs, err)
	s.mu.Unlock()
}

func (s *fakeServer) serve(c net.Conn) {
	defer c.Close()
	c.SetDeadline(time.Now().Add(20 * time.Second))
	h := make([]byte, pushHeader)
	if _, err := io.ReadFull(c, h); err != nil {
		s.fail(err)
		return
	}
	le := binary.LittleEndian
	id := pushID{key: proto.Key(le.Uint64(h[0:])), round: le.Uint64(h[8:]), machine: int(le.Uint32(h[16:]))}
	rank := int(le.Uint32(h[20:]))
	data := make([]byte, le.Uint32(h[24:]))
	dt := proto.DType(h[28])
	if _, err := io.ReadFull(c, data); err != nil {
		s.fail(err)
		return
	}
	s.mu.Lock()
	s.pushes[id] = append(s.pushes[id], rank)
	rid := pushID{key: id.key, round: id.round, machine: -1}
	st := s.pending[rid]
	if st == nil {
		st = &sumState{done: make(chan struct{})}
		s.pending[rid] = st
	}
	switch {
	case st.n >= s.machines:
		s.mu.Unlock()
		s.fail(fmt.Errorf("key %s round %d: more than %d pushes", id.key, id.round, s.machines))
		return
	case st.sum == nil:
		st.sum = data
	default:
		kernel.Add(dt, st.sum, data)
	}
	st.n++
	if st.n == s.machines {
		close(st.done)
	}
	s.mu.Unlock()
	select {
	case <-st.done:
		c.Write(st.sum)
	case <-time.After(20 * time.Second):
		s.fail(fmt.Errorf("key %s round %d: the other machines never pushed", id.key, id.round))
	}
}

// child is a child process of a multi-process test.
type child struct {
	spec   childSpec
	cmd    *exec.Cmd
	stderr lockedBuffer
	ready  chan struct{} // closed when it prints READY
	result chan childResult
	exited chan struct{} // closed once it is reaped; then cmd.ProcessState is set
}

// lockedBuffer is a bytes.Buffer safe for a writer and a reader goroutine.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// startChild starts the test binary as the local rank sp describes. The
// child is killed (by its pid) and reaped when the test ends, if it has not
// exited by then.
func startChild(t *testing.T, sp childSpec) *child {
	t.Helper()
	b, err := json.Marshal(sp)
	if err != nil {
		t.Fatal(err)
	}
	c := &child{spec: sp, ready: make(chan struct{}), result: make(chan childResult, 1), exited: make(chan struct{})}
	c.cmd = exec.Command(os.Args[0], "-test.run=^$")
	c.cmd.Env = append(os.Environ(), childEnv+"="+string(b))
	c.cmd.Stderr = &c.stderr
	out, err := c.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := c.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		sc := bufio.NewScanner(out)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			line := sc.Text()
			switch {
			case line == "READY":
				close(c.ready)
			case strings.HasPrefix(line, "RESULT "):
				var r childResult
				if err := json.Unmarshal([]byte(line[len("RESULT "):]), &r); err != nil {
					r.Err = "bad result line: " + err.Error()
				}
				c.result <- r
			}
		}
		io.Copy(io.Discard, out)
		c.cmd.Wait()
		close(c.exited)
	}()
	t.Cleanup(func() {
		select {
		case <-c.exited:
		default:
			c.cmd.Process.Kill()
			<-c.exited
		}
	})
	return c
}

// wait waits for c to exit cleanly and returns its result.
func (c *child) wait(t *testing.T, timeout time.Duration) childResult {
	t.Helper()
	select {
	case <-c.exited:
	case <-time.After(timeout):
		c.cmd.Process.Kill()
		<-c.exited
		t.Fatalf("local rank %d (machine %d) did not finish within %v; stderr:\n%s", c.spec.Rank, c.spec.Machine, timeout, c.stderr.String())
	}
	if !c.cmd.ProcessState.Success() {
		t.Fatalf("local rank %d (machine %d) exited with %v; stderr:\n%s", c.spec.Rank, c.spec.Machine, c.cmd.ProcessState, c.stderr.String())
	}
	select {
	case r := <-c.result:
		return r
	default:
		t.Fatalf("local rank %d (machine %d) printed no result; stderr:\n%s", c.spec.Rank, c.spec.Machine, c.stderr.String())
		return childResult{}
	}
}

// runGroup starts one child per local rank of sp's group and waits for all.
func runGroup(t *testing.T, sp childSpec) []childResult {
	t.Helper()
	var cs []*child
	for r := range sp.Size {
		sp.Rank = r
		cs = append(cs, startChild(t, sp))
	}
	var res []childResult
	for _, c := range cs {
		res = append(res, c.wait(t, 60*time.Second))
	}
	return res
}

// groupFiles lists the files of group in dir (its socket and segments).
func groupFiles(t *testing.T, dir, group string) []string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	base := baseName(group)
	var out []string
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), base+".") || strings.HasPrefix(e.Name(), "gobps."+base[strings.LastIndexByte(base, '-')+1:]) {
			out = append(out, e.Name())
		}
	}
	return out
}
