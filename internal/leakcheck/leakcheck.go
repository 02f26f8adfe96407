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
