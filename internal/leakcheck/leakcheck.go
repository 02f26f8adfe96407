// Package leakcheck lets tests of gpu/... check that no goroutine of theirs
// (stream goroutines of the fake device, pool waiters, test workers)
// outlives them.
package leakcheck

import (
	"runtime"
	"strings"
	"testing"
	"time"
)

// marker is in every frame of a gpu/... package, tests included.
const marker = "github.com/gobps/gobps/gpu"

// Check registers a cleanup that fails t if, 5 s after the test (and its
// other cleanups, registered later, which run first) has finished, a
// goroutine other than the test's own still runs code of gpu/....
func Check(t testing.TB) {
	t.Helper()
	t.Cleanup(func() {
		var left []string
		for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(10 * time.Millisecond) {
			left = Goroutines()
			if len(left) == 0 || time.Now().After(deadline) {
				break
			}
		}
		for _, g := range left {
			t.Errorf("goroutine leaked:\n%s", g)
		}
	})
}

// Goroutines returns the stacks of the goroutines, other than the caller's
// and other test functions' (a parent test waiting in t.Run), that run
// code of gpu/....
func Goroutines() []string {
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
