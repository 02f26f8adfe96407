package main

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gobps/gobps/cluster"
	"github.com/gobps/gobps/core"
	"github.com/gobps/gobps/proto"
	"github.com/gobps/gobps/rdma"
	"github.com/gobps/gobps/rdma/tcp"
	"github.com/gobps/gobps/summation"
)

// These tests drive lib.go directly, without cgo, so they also run with
// CGO_ENABLED=0 and under the race detector. exports.go (the C side) is
// tested through the real library by capi_test.go.

func envLookup(env map[string]string) func(string) (string, bool) {
	return func(k string) (string, bool) { v, ok := env[k]; return v, ok }
}

// wantStatus fails unless err has status code and mentions want.
func wantStatus(t *testing.T, what string, err error, code status, want string) {
	t.Helper()
	if got := statusOf(err); got != code {
		t.Errorf("%s: status %d (%v), want %d", what, got, err, code)
		return
	}
	if code != statusOK && !strings.Contains(err.Error(), want) {
		t.Errorf("%s: %q does not mention %q", what, err, want)
	}
}

func TestStatusOf(t *testing.T) {
	for _, c := range []struct {
		desc string
		err  error
		want status
	}{
		{"nil", nil, statusOK},
		{"a callError", fail(statusTimeout, "x"), statusTimeout},
		{"a wrapped callError", fmt.Errorf("ctx: %w", fail(statusBadHandle, "x")), statusBadHandle},
		{"the engine shut down", fmt.Errorf("%q: %w", "t", core.ErrNotInitialized), statusNotInitialized},
		{"anything else from the engine", errors.New("gobps: server 1 failed"), statusFailed},
	} {
		if got := statusOf(c.err); got != c.want {
			t.Errorf("%s: statusOf = %d, want %d", c.desc, got, c.want)
		}
	}
}

func TestBeforeInit(t *testing.T) {
	l := newLibrary()
	buf := make([]byte, 16)
	_, err := l.info((*core.Engine).Rank)
	wantStatus(t, "info", err, statusNotInitialized, "call gobps_init first")
	_, err = l.declare("a", int(proto.Float32), 4, -1, nil)
	wantStatus(t, "declare", err, statusNotInitialized, "not initialized")
	_, err = l.pushPull("a", buf, int(proto.Float32), 4, opSum)
	wantStatus(t, "push_pull", err, statusNotInitialized, "not initialized")
	_, err = l.broadcast("a", buf, int(proto.Float32), 4, 0)
	wantStatus(t, "broadcast", err, statusNotInitialized, "not initialized")
	_, err = l.poll(1)
	wantStatus(t, "poll", err, statusNotInitialized, "not initialized")
	wantStatus(t, "wait", l.wait(1, -1), statusNotInitialized, "not initialized")
	wantStatus(t, "shutdown", l.shutdown(), statusNotInitialized, "not initialized")
	// Bad ops are caught before anything else.
	_, err = l.pushPull("a", buf, int(proto.Float32), 4, 9)
	wantStatus(t, "push_pull op 9", err, statusInvalidArgument, "unknown reduce op 9")
}

func TestInitConfig(t *testing.T) {
	for _, c := range []struct {
		desc string
		env  map[string]string
		want string
	}{
		{"empty environment", nil, "DMLC_ROLE"},
		{"server role", map[string]string{"DMLC_ROLE": "server", "DMLC_NUM_WORKER": "1", "DMLC_NUM_SERVER": "1",
			"DMLC_PS_ROOT_URI": "127.0.0.1", "DMLC_PS_ROOT_PORT": "9000"}, "only a worker"},
		{"malformed port", map[string]string{"DMLC_ROLE": "worker", "DMLC_NUM_WORKER": "1", "DMLC_NUM_SERVER": "1",
			"DMLC_PS_ROOT_URI": "127.0.0.1", "DMLC_PS_ROOT_PORT": "x"}, "DMLC_PS_ROOT_PORT"},
	} {
		l := newLibrary()
		wantStatus(t, c.desc, l.init(time.Second, envLookup(c.env), io.Discard), statusConfig, c.want)
		_, err := l.info((*core.Engine).Size)
		wantStatus(t, c.desc+": size after", err, statusNotInitialized, "not initialized")
	}
}

func TestChecks(t *testing.T) {
	for _, c := range []struct {
		dtype int
		count int64
		want  string // "" for valid
	}{
		{int(proto.Float32), 0, ""},
		{int(proto.Uint8), 1 << 40, ""},
		{0, 1, "unknown dtype 0"},
		{-1, 1, "unknown dtype -1"},
		{256 + int(proto.Float32), 1, "unknown dtype 257"},
		{int(proto.Float64), -1, "negative"},
		{int(proto.Float64), math.MaxInt64 / 4, "do not fit"},
	} {
		dt, err := checkDType("t", c.dtype)
		if err == nil {
			_, err = checkCount("t", dt, c.count)
		}
		switch {
		case c.want == "" && err != nil:
			t.Errorf("dtype %d count %d: %v", c.dtype, c.count, err)
		case c.want != "":
			wantStatus(t, fmt.Sprintf("dtype %d count %d", c.dtype, c.count), err, statusInvalidArgument, c.want)
		}
	}
}

// job is a coordinator and servers in this process, and one library per
// worker joined to them over loopback; extra (name, value pairs) adds to
// the workers' environment.
func job(t *testing.T, workers, servers int, extra ...string) []*library {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	coord, err := cluster.NewCoordinator(cluster.CoordinatorConfig{
		Addr: "127.0.0.1:0", NumWorkers: workers, NumServers: servers, HeartbeatTimeout: 2 * time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}
	go coord.Run(ctx)
	var srvs []*summation.Server
	t.Cleanup(func() {
		for _, s := range srvs {
			s.Close()
		}
		coord.Close()
		cancel()
	})
	for i := range servers {
		// One machine of workers: with local aggregation (the default) one
		// push per key per round reaches the server.
		s, err := summation.New(summation.Config{Workers: workers, Pushers: 1, Engines: 2, Transport: tcp.New(rdma.Options{}), Addr: "127.0.0.1:0"})
		if err != nil {
			t.Fatal(err)
		}
		srvs = append(srvs, s)
		go func() {
			m, err := cluster.Join(ctx, coord.Addr(), cluster.Registration{Role: cluster.RoleServer, WorkerID: i, Addr: s.Addr(), PID: 1},
				cluster.Options{HeartbeatInterval: 100 * time.Millisecond})
			if err == nil {
				s.SetID(m.Self().ID)
			}
		}()
	}
	_, port, _ := strings.Cut(coord.Addr(), ":")
	libs := make([]*library, workers)
	errs := make([]error, workers)
	var wg sync.WaitGroup
	for i := range workers {
		libs[i] = newLibrary()
		env := map[string]string{
			"DMLC_ROLE": "worker", "DMLC_NUM_WORKER": "1", "BYTEPS_LOCAL_SIZE": strconv.Itoa(workers),
			"DMLC_NUM_SERVER": strconv.Itoa(servers), "DMLC_PS_ROOT_URI": "127.0.0.1", "DMLC_PS_ROOT_PORT": port,
			"DMLC_WORKER_ID": "0", "BYTEPS_LOCAL_RANK": strconv.Itoa(i), "GOBPS_HEARTBEAT_INTERVAL": "100ms",
			"BYTEPS_PARTITION_BYTES": "8192",
		}
		for j := 0; j+1 < len(extra); j += 2 {
			env[extra[j]] = extra[j+1]
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = libs[i].init(20*time.Second, envLookup(env), io.Discard)
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		for _, l := range libs {
			l.shutdown()
		}
	})
	return libs
}

func f64s(b []byte) []float64 {
	out := make([]float64, len(b)/8)
	for i := range out {
		out[i] = math.Float64frombits(binary.LittleEndian.Uint64(b[8*i:]))
	}
	return out
}

func f64bytes(vs ...float64) []byte {
	b := make([]byte, 8*len(vs))
	for i, v := range vs {
		binary.LittleEndian.PutUint64(b[8*i:], math.Float64bits(v))
	}
	return b
}

// TestJob runs lib.go's operations on a two-worker job in this process (a
// few milliseconds; it runs under -short, for the race detector).
func TestJob(t *testing.T) {
	libs := job(t, 2, 2)
	f64 := int(proto.Float64)
	// Concurrent push_pulls of a multi-partition tensor, average.
	const n = 3000 // 24000 bytes: 3 partitions
	bufs := make([][]byte, 2)
	ids := make([]int64, 2)
	for r, l := range libs {
		if v, err := l.info((*core.Engine).Rank); err != nil || v != r {
			t.Fatalf("rank %d: %d %v", r, v, err)
		}
		vs := make([]float64, n)
		for i := range vs {
			vs[i] = float64(r*n + i)
		}
		bufs[r] = f64bytes(vs...)
		id, err := l.pushPull("a", bufs[r], f64, n, opAverage)
		if err != nil {
			t.Fatal(err)
		}
		ids[r] = id
	}
	for r, l := range libs {
		if err := l.wait(ids[r], 10*time.Second); err != nil {
			t.Fatal(err)
		}
		for i, v := range f64s(bufs[r]) {
			if want := float64(n)/2 + float64(i); v != want {
				t.Fatalf("rank %d a[%d] = %v, want %v", r, i, v, want)
			}
		}
		wantStatus(t, "second wait", l.wait(ids[r], 0), statusBadHandle, "already consumed")
		_, err := l.pushPull("a", bufs[r][:8], f64, 1, opAverage)
		wantStatus(t, "redeclared smaller", err, statusInvalidArgument, "declared as 3000 elements of float64 for push_pull")
		_, err = l.broadcast("a", bufs[r], f64, n, 0)
		wantStatus(t, "broadcast of a push_pull name", err, statusInvalidArgument, "for broadcast from rank 0")
		_, err = l.pushPull("i", bufs[r][:8], int(proto.Int64), 1, opAverage)
		wantStatus(t, "average int64", err, statusInvalidArgument, "cannot average int64")
	}

	// A handle that cannot complete until rank 1 pushes.
	b0 := f64bytes(1, 2)
	id0, err := libs[0].pushPull("late", b0, f64, 2, opSum)
	if err != nil {
		t.Fatal(err)
	}
	if done, err := libs[0].poll(id0); err != nil || done {
		t.Fatalf("poll before rank 1 pushed: %v %v", done, err)
	}
	wantStatus(t, "wait 10ms", libs[0].wait(id0, 10*time.Millisecond), statusTimeout, "not done after 10ms")
	wantStatus(t, "wait 0", libs[0].wait(id0, 0), statusTimeout, "not done")
	b1 := f64bytes(10, 20)
	id1, err := libs[1].pushPull("late", b1, f64, 2, opSum)
	if err != nil {
		t.Fatal(err)
	}
	for i, id := range []int64{id0, id1} {
		if err := libs[i].wait(id, -1); err != nil {
			t.Fatal(err)
		}
	}
	if got := f64s(b0); got[0] != 11 || got[1] != 22 {
		t.Errorf("late sum %v", got)
	}

	// Broadcast from rank 1, and zero elements.
	bb := [][]byte{f64bytes(0, 0, 0), f64bytes(7, 8, 9)}
	for r, l := range libs {
		if ids[r], err = l.broadcast("b", bb[r], f64, 3, 1); err != nil {
			t.Fatal(err)
		}
	}
	for r, l := range libs {
		if err := l.wait(ids[r], 10*time.Second); err != nil {
			t.Fatal(err)
		}
		if got := f64s(bb[r]); got[0] != 7 || got[2] != 9 {
			t.Errorf("rank %d broadcast %v", r, got)
		}
		id, err := l.pushPull("empty", nil, f64, 0, opSum)
		if err != nil {
			t.Fatal(err)
		}
		if done, err := l.poll(id); !done || err != nil {
			t.Errorf("empty: done %v err %v", done, err)
		}
		wantStatus(t, "empty wait", l.wait(id, 0), statusOK, "")
		_, err = l.pushPull("empty", nil, f64, 1, opSum)
		wantStatus(t, "empty redeclared", err, statusInvalidArgument, "declared as 0 elements")
	}

	// After shutdown.
	wantStatus(t, "shutdown", libs[0].shutdown(), statusOK, "")
	wantStatus(t, "shutdown again", libs[0].shutdown(), statusNotInitialized, "already shut down")
	_, err = libs[0].pushPull("a", bufs[0], f64, n, opAverage)
	wantStatus(t, "push_pull after shutdown", err, statusNotInitialized, "shut down")
	wantStatus(t, "unknown handle after shutdown", libs[0].wait(9999, 0), statusBadHandle, "unknown handle")
	wantStatus(t, "init again", libs[0].init(time.Second, envLookup(nil), io.Discard), statusFailed, "only once")
}

// TestNoNVMLInLibrary: the library must not link go-nvml, whose unresolved
// NVML symbols would make ctypes (which loads with RTLD_NOW) refuse it.
func TestNoNVMLInLibrary(t *testing.T) {
	out, err := exec.Command("go", "list", "-deps", ".").CombinedOutput()
	if err != nil {
		t.Fatalf("go list: %v\n%s", err, out)
	}
	if strings.Contains(string(out), "go-nvml") {
		t.Fatalf("libgobps.so would link go-nvml:\n%s", out)
	}
}
