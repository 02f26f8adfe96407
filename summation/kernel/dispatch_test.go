package kernel

import (
	"slices"
	"strings"
	"testing"
)

type testImpl struct{ name string }

func TestDispatch(t *testing.T) {
	generic, fast := &testImpl{"generic"}, &testImpl{"fast"}
	s := NewDispatch("pkg", []*testImpl{generic, fast}, func(m *testImpl) string { return m.name })
	if s.Current() != fast || s.Name() != "fast" || !slices.Equal(s.Names(), []string{"generic", "fast"}) {
		t.Fatalf("at start: %s of %v", s.Name(), s.Names())
	}
	restore, err := s.Use("generic")
	if err != nil || s.Current() != generic || s.Name() != "generic" {
		t.Fatalf("Use(generic): %v, now %s", err, s.Name())
	}
	restore()
	if s.Current() != fast {
		t.Errorf("restore left %s", s.Name())
	}
	if _, err := s.Use("avx9"); err == nil || !strings.Contains(err.Error(), `pkg: implementation "avx9" not available here (have generic, fast)`) {
		t.Errorf("Use(avx9): %v", err)
	}
	s.Names()[0] = "changed"
	if s.Names()[0] != "generic" {
		t.Error("Names shares its slice")
	}
}
