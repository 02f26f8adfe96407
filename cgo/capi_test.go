package main

import (
	"path/filepath"
	"testing"
	"time"
)

// TestCAPINoInit calls every entry point of libgobps.so from C without a
// job: before init, with NULL and out-of-range arguments, from a second
// thread (the last error is per thread), and init with no environment.
func TestCAPINoInit(t *testing.T) {
	if testing.Short() {
		t.Skip("builds libgobps.so")
	}
	dir := binaries(t)
	out, err := run(t, time.Minute, jobEnv(), filepath.Join(dir, "capi"), "noinit")
	if err != nil || out != "capi noinit: ok\n" {
		t.Fatalf("capi noinit: %v\n%s", err, out)
	}
}

// TestCAPIJob runs the C API as both workers of a job with two servers:
// reductions (a multi-partition float32 average, int sums), broadcasts,
// zero elements, poll and wait with timeouts, workers that start tensors
// in different orders, bad calls, four threads at once, and shutdown.
func TestCAPIJob(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a 5-process job")
	}
	dir := binaries(t)
	out := bpsrun(t, 2*time.Minute, jobEnv(), 2, 2, filepath.Join(dir, "capi"), "job")
	wantLines(t, out, 2, "capi job: rank %d ok")
}
