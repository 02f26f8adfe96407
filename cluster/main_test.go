package cluster

import (
	"os"
	"testing"

	"github.com/gobps/gobps/internal/leakcheck"
)

// TestMain fails the run if any goroutine of this package outlives the
// tests: every Coordinator is closed and every Member has left or ended by
// then, and both promise to stop everything they started.
func TestMain(m *testing.M) {
	os.Exit(leakcheck.Main(m.Run(), "gobps/gobps/cluster."))
}
