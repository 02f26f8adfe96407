package cluster

import (
	"fmt"
	"os"
	"runtime"
	"strings"
	"testing"
	"time"
)

// TestMain fails the run if any goroutine of this package outlives the
// tests: every Coordinator is closed and every Member has left or ended by
// then, and both promise to stop everything they started.
func TestMain(m *testing.M) {
	code := m.Run()
	if code == 0 {
		if leaks := waitLeaks(3 * time.Second); len(leaks) > 0 {
			fmt.Fprintf(os.Stderr, "cluster: %d leaked goroutines:\n\n%s\n", len(leaks), strings.Join(leaks, "\n\n"))
			code = 1
		}
	}
	os.Exit(code)
}

// waitLeaks polls for up to d until no goroutine runs code of this package
// other than the test harness itself, and returns the stacks of those left.
func waitLeaks(d time.Duration) []string {
	deadline := time.Now().Add(d)
	for {
		leaks := leakedGoroutines()
		if len(leaks) == 0 || time.Now().After(deadline) {
			return leaks
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func leakedGoroutines() []string {
	buf := make([]byte, 1<<20)
	for {
		n := runtime.Stack(buf, true)
		if n < len(buf) {
			buf = buf[:n]
			break
		}
		buf = make([]byte, 2*len(buf))
	}
	var leaks []string
	for _, g := range strings.Split(string(buf), "\n\n") {
		if strings.Contains(g, "core/cluster.") && !strings.Contains(g, "cluster.TestMain") &&
			!strings.Contains(g, "cluster.leakedGoroutines") {
			leaks = append(leaks, g)
		}
	}
	return leaks
}
