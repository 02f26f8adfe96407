package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// The tests in capi_test.go and torch_test.go run real programs against the
// real libgobps.so: a C program (testdata/capi.c) and Python scripts
// (python/tests, examples/pytorch), as workers of jobs started by bpsrun
// --local. The library, bpsrun and the C program are built once, into a
// temporary directory, by the first test that needs them.

var (
	binDir    string // TestMain's temporary directory
	buildOnce sync.Once
	buildSkip string // why the binaries cannot be built here (no cgo); tests skip
	buildErr  error
)

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "gobps-cgo-test")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binDir = dir
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// root is the module root (the test runs in cgo/).
func root(t *testing.T) string {
	t.Helper()
	dir, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, "go.mod")); err != nil {
		t.Fatalf("no go.mod above cgo/: %v", err)
	}
	return dir
}

// binaries builds libgobps.so, bpsrun and capi into binDir once, and
// returns binDir. Where cgo is off the test is skipped.
func binaries(t *testing.T) string {
	t.Helper()
	rootDir := root(t)
	buildOnce.Do(func() {
		out, err := exec.Command("go", "env", "CGO_ENABLED", "CC").Output()
		if err != nil {
			buildErr = fmt.Errorf("go env: %v", err)
			return
		}
		env := strings.Fields(string(out))
		if len(env) < 2 || env[0] != "1" {
			buildSkip = "cgo is disabled (CGO_ENABLED=0 or no C compiler): libgobps.so cannot be built"
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		lib := filepath.Join(binDir, "libgobps.so")
		steps := [][]string{
			{"go", "build", "-buildmode=c-shared", "-o", lib, "./cgo"},
			{"go", "build", "-o", binDir + string(filepath.Separator), "./cmd/bpsrun"},
			{env[1], "-Wall", "-Werror", "-O1", "-Icgo", "-o", filepath.Join(binDir, "capi"), "cgo/testdata/capi.c",
				lib, "-Wl,-rpath," + binDir, "-lpthread", "-ldl"},
		}
		for _, s := range steps {
			cmd := exec.CommandContext(ctx, s[0], s[1:]...)
			cmd.Dir = rootDir
			if out, err := cmd.CombinedOutput(); err != nil {
				buildErr = fmt.Errorf("%s: %v\n%s", strings.Join(s, " "), err, out)
				return
			}
		}
	})
	if buildSkip != "" {
		t.Skip(buildSkip)
	}
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return binDir
}

// jobEnv is this process's environment without any gobps, BytePS or DMLC
// variable (bpsrun --local sets its own), plus extra ("K=V").
func jobEnv(extra ...string) []string {
	var env []string
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		if strings.HasPrefix(k, "DMLC_") || strings.HasPrefix(k, "BYTEPS_") || strings.HasPrefix(k, "GOBPS_") ||
			k == "PYTHONPATH" {
			continue
		}
		env = append(env, kv)
	}
	return append(env, extra...)
}

// run runs a command bounded by timeout and returns its combined output
// and error. bpsrun kills its children if it is killed.
func run(t *testing.T, timeout time.Duration, env []string, name string, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Dir = root(t)
	cmd.Env = env
	cmd.WaitDelay = 10 * time.Second // don't hang on pipes held by orphans
	start := time.Now()
	out, err := cmd.CombinedOutput()
	if ctx.Err() != nil {
		err = errors.Join(err, fmt.Errorf("timed out after %v", timeout))
	}
	t.Logf("%s %s: %v in %v", filepath.Base(name), strings.Join(args, " "), err, time.Since(start).Round(time.Millisecond))
	return string(out), err
}

// bpsrun runs CMD as every worker of a local job of np workers and the
// given servers, and fails the test unless it succeeds.
func bpsrun(t *testing.T, timeout time.Duration, env []string, np, servers int, cmd ...string) string {
	t.Helper()
	dir := binaries(t)
	args := append([]string{"--local", "-np", fmt.Sprint(np), "--servers", fmt.Sprint(servers), "--"}, cmd...)
	out, err := run(t, timeout, env, filepath.Join(dir, "bpsrun"), args...)
	if err != nil {
		t.Fatalf("bpsrun %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

// wantLines fails unless out has, for every rank below np, the line
// "[worker R] " + fmt.Sprintf(format, R).
func wantLines(t *testing.T, out string, np int, format string) {
	t.Helper()
	for r := range np {
		if want := fmt.Sprintf("[worker %d] ", r) + fmt.Sprintf(format, r); !strings.Contains(out, want+"\n") {
			t.Errorf("no line %q in the output:\n%s", want, out)
		}
	}
}
