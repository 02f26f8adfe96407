package main

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// TestGenerated checks that asm_amd64.s and its stubs are what this
// generator writes now: an edit of the generator without go generate, or
// of the generated files by hand, fails here.
func TestGenerated(t *testing.T) {
	goBin, err := exec.LookPath("go")
	if err != nil {
		t.Skipf("go command not on PATH: %v", err)
	}
	dir := t.TempDir()
	s, stubs := filepath.Join(dir, "asm_amd64.s"), filepath.Join(dir, "asm_amd64.go")
	cmd := exec.Command(goBin, "run", ".", "-out", s, "-stubs", stubs, "-pkg", "codec")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go run asmgen: %v\n%s", err, out)
	}
	for _, f := range []string{s, stubs} {
		got, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		want, err := os.ReadFile(filepath.Join("..", filepath.Base(f)))
		if err != nil {
			t.Fatal(err)
		}
		// The header names the command line, which differs.
		strip := func(b []byte) []byte { _, rest, _ := bytes.Cut(b, []byte("\n")); return rest }
		if !bytes.Equal(strip(got), strip(want)) {
			t.Errorf("%s is stale: run go generate ./summation/codec", filepath.Base(f))
		}
	}
}
