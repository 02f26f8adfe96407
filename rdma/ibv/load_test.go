package ibv

import (
	"debug/elf"
	"errors"
	"os"
	"strings"
	"testing"
)

func TestLoad(t *testing.T) {
	lib, err := Load()
	if !Built {
		if !errors.Is(err, ErrNotSupported) || lib != nil {
			t.Fatalf("Load in a build without the binding: %v, %v", lib, err)
		}
		return
	}
	if err != nil {
		// libibverbs.so.1 is missing: the error must say so.
		if !errors.Is(err, ErrNotSupported) || !strings.Contains(err.Error(), "libibverbs.so.1") {
			t.Fatalf("Load error %q neither wraps ErrNotSupported nor names the library", err)
		}
		t.Skipf("libibverbs.so.1 is not installed: %v", err)
	}
	names, err := lib.Devices()
	if err != nil {
		// No kernel RDMA support: say so, and name the library's error.
		if !strings.Contains(err.Error(), "ibv_get_device_list") {
			t.Fatalf("Devices error %q does not name the call", err)
		}
		t.Skipf("no verbs devices: %v", err)
	}
	t.Logf("verbs devices: %q", names)
	if _, err := lib.Open("no-such-device"); err == nil || !strings.Contains(err.Error(), "no-such-device") {
		t.Fatalf("opening a missing device: %v", err)
	}
}

// TestNoVerbsSymbolsLinked checks that this test binary (which contains the
// binding) needs no ibv_* symbol from the dynamic linker: everything is
// found with dlsym, so the binary runs where libibverbs is missing.
func TestNoVerbsSymbolsLinked(t *testing.T) {
	if !Built {
		t.Skip("built without the verbs binding")
	}
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	f, err := elf.Open(exe)
	if err != nil {
		t.Skipf("cannot read own executable: %v", err)
	}
	defer f.Close()
	syms, err := f.ImportedSymbols()
	if err != nil {
		t.Fatal(err)
	}
	var dl bool
	for _, s := range syms {
		if strings.HasPrefix(s.Name, "ibv_") {
			t.Errorf("%s is linked from %s; it must be looked up with dlsym", s.Name, s.Library)
		}
		if s.Name == "dlopen" || s.Name == "dlsym" {
			dl = true
		}
	}
	if !dl {
		t.Error("dlopen/dlsym not imported: is the binding in this binary?")
	}
	libs, _ := f.ImportedLibraries()
	for _, l := range libs {
		if strings.Contains(l, "ibverbs") {
			t.Errorf("the binary needs %s", l)
		}
	}
}
