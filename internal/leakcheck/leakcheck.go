// Package leakcheck lets a package's tests check that no goroutine running
// its code outlives them: per test (Check, as a cleanup) or per test binary
// (Main, from TestMain). A goroutine is the package's when its stack holds
// a frame whose function name contains the marker the caller gives, such
// as "github.com/gobps/gobps/gpu" (gpu and everything under it, tests
// included) or "gobps/gobps/rdma." (rdma alone).
package leakcheck

import (
	"fmt"
	"os"
	"runtime"
	"strings"
	"testing"
	"time"
)

// Check registers a cleanup that fails t if, 5 s after the test (and its
// other cleanups, registered later, which run first) has finished, a
// goroutine other than the test's own still runs code matching marker.
func Check(t testing.TB, marker string) {
	t.Helper()
	t.Cleanup(func() {
		for _, g := range Wait(marker, 5*time.Second) {
			t.Errorf("goroutine leaked:\n%s", g)
		}
	})
}

// Main is for TestMain: given m.Run's exit code, it fails the run (returns
// 1) if, within 3 s, goroutines running code matching marker are still
// there, and prints their stacks.
func Main(code int, marker string) int {
	if code != 0 {
		return code
	}
	if left := Wait(marker, 3*time.Second); len(left) > 0 {
		fmt.Fprintf(os.Stderr, "%d leaked goroutines running %s:\n\n%s\n", len(left), marker, strings.Join(left, "\n\n"))
		return 1
	}
	return 0
}

// Wait polls for up to d until no goroutine matching marker is left, and
// returns the stacks of those still there.
func Wait(marker string, d time.Duration) []string {
	deadline := time.Now().Add(d)
	for {
		left := Goroutines(marker)
		if len(left) == 0 || time.Now().After(deadline) {
			return left
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// Goroutines returns the stacks of the goroutines, other than the caller's
// and test functions' (a parent test waiting in t.Run), that run code
// matching marker.
func Goroutines(marker string) []string {
	buf := make([]byte, 1<<20)
	for {
		n := runtime.Stack(buf, true)
		if n < len(buf) {
			buf = buf[:n]
			break
		}
		buf = make([]byte, 2*len(buf))
	}
	stacks := strings.Split(string(buf), "\n\n")
	var out []string
	for _, g := range stacks[1:] { // the first is the caller's
		if strings.Contains(g, marker) && !strings.Contains(g, "\ntesting.tRunner(") {
			out = append(out, g)
		}
	}
	return out
}

// Frame is one frame of a goroutine's stack: the function (with its
// arguments, as runtime.Stack prints it) and its file:line.
type Frame struct{ Func, File string }

// Parse splits one goroutine's stack (runtime.Stack's text) into its
// state ("running", "runnable", "chan receive", ...) and its frames,
// innermost first, leaving out the runtime's own frames, defer wrappers
// and the "created by" line.
func Parse(g string) (state string, frames []Frame) {
	lines := strings.Split(g, "\n")
	if i, j := strings.IndexByte(lines[0], '['), strings.IndexByte(lines[0], ']'); i >= 0 && j > i {
		state = lines[0][i+1 : j]
	}
	for i := 1; i+1 < len(lines); i += 2 {
		f := Frame{lines[i], strings.TrimSpace(lines[i+1])}
		if strings.HasPrefix(f.Func, "created by ") {
			break
		}
		if strings.HasPrefix(f.Func, "runtime.") || strings.HasPrefix(f.Func, "internal/") ||
			strings.Contains(f.Func, ".deferwrap") || strings.HasPrefix(f.Func, "sync.(*WaitGroup).Done-fm") {
			continue
		}
		frames = append(frames, f)
	}
	return state, frames
}

// OnCPU reports whether a goroutine in state is running, or could be at
// once (runnable, or assisting the garbage collector): not blocked.
func OnCPU(state string) bool {
	return strings.HasPrefix(state, "running") || strings.HasPrefix(state, "runnable") || strings.HasPrefix(state, "GC assist")
}

// Exiting reports whether stack g is that of a goroutine past its work:
// not blocked, and inside sync.(*WaitGroup).Done called from a deferred
// call of its one function, or returning from that function, or in the
// runtime's exit with no frame of it left. A component's Close that waits
// for its goroutines by their final Done can return while one is there.
func Exiting(g string) bool {
	state, frames := Parse(g)
	if !OnCPU(state) {
		return false
	}
	for len(frames) > 0 && strings.HasPrefix(frames[0].Func, "sync.(*WaitGroup).Add(") {
		frames = frames[1:] // Done calls Add
	}
	if len(frames) > 0 && strings.HasPrefix(frames[0].Func, "sync.(*WaitGroup).Done(") {
		frames = frames[1:]
	}
	return len(frames) <= 1
}

// Immediately fails t for every goroutine find returns now, right after
// what (a Close) returned; but while every one of them is on its way out
// (ending says so, e.g. Exiting), it yields the processor and looks again,
// a bounded number of times and never sleeping, to let them go.
func Immediately(t testing.TB, what string, find func() []string, ending func(g string) bool) {
	t.Helper()
	deadline := time.Now().Add(time.Second)
	for i := 0; ; i++ {
		left := find()
		n := 0
		for _, g := range left {
			if ending(g) {
				n++
			}
		}
		if len(left) > 0 && n == len(left) && i < 1000 && time.Now().Before(deadline) {
			runtime.Gosched()
			continue
		}
		for _, g := range left {
			t.Errorf("goroutine left %s:\n%s", what, g)
		}
		return
	}
}
