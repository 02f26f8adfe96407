package core

import (
	"os"
	"testing"

	"github.com/gobps/gobps/internal/leakcheck"
)

// TestMain fails the run if any goroutine running the engine's code
// outlives the tests: every engine is shut down by its test, and Shutdown
// returns only after every goroutine the engine started has ended.
func TestMain(m *testing.M) {
	os.Exit(leakcheck.Main(m.Run(), "gobps/gobps/core."))
}
