package local

import (
	"fmt"
	"os"
	"runtime"
	"strings"
	"testing"
	"time"
)

// childEnv, when set, makes the test binary a local rank of a multi-process
// test (see child_test.go) instead of running tests; its value is the
// child's JSON spec.
const childEnv = "GOBPS_LOCAL_TEST_CHILD"

// TestMain runs a child rank when asked to, and otherwise the tests, failing
// the run if any goroutine of this package outlives them: every Group is
// closed by then, and Close promises to stop everything it started.
func TestMain(m *testing.M) {
	if spec := os.Getenv(childEnv); spec != "" {
		os.Exit(runChild(spec))
	}
	code := m.Run()
	if code == 0 {
		if leaks := waitLeaks(3 * time.Second); len(leaks) > 0 {
			fmt.Fprintf(os.Stderr, "local: %d leaked goroutines:\n\n%s\n", len(leaks), strings.Join(leaks, "\n\n"))
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
		if strings.Contains(g, "core/local.") && !strings.Contains(g, "local.TestMain") &&
			!strings.Contains(g, "local.leakedGoroutines") {
			leaks = append(leaks, g)
		}
	}
	return leaks
}
