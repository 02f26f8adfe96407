package local

import (
	"os"
	"testing"

	"github.com/gobps/gobps/internal/leakcheck"
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
	os.Exit(leakcheck.Main(m.Run(), "gobps/gobps/core/local."))
}
