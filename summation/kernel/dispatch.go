package kernel

import (
	"fmt"
	"strings"
	"sync/atomic"
)

// Dispatch chooses among the implementations of a set of kernels (SIMD for
// this CPU, or the pure-Go twin): the best one this CPU and build can run
// at start, switchable by name for tests and benchmarks. The sum kernels
// here and summation/codec's each keep one.
//
// Dispatch is the implementations one CPU and build can run, from the slowest
// (the pure-Go one, always there) to the best, and the one in use.
type Dispatch[T any] struct {
	pkg   string // names the package in errors
	impls []*T
	names []string
	cur   atomic.Pointer[T]
}

// NewDispatch returns the Dispatch of impls (slowest first, at least one), named by
// name, with the last one in use.
func NewDispatch[T any](pkg string, impls []*T, name func(*T) string) *Dispatch[T] {
	s := &Dispatch[T]{pkg: pkg, impls: impls}
	for _, m := range impls {
		s.names = append(s.names, name(m))
	}
	s.cur.Store(impls[len(impls)-1])
	return s
}

// Current is the implementation in use.
func (s *Dispatch[T]) Current() *T { return s.cur.Load() }

// Name is the name of the implementation in use.
func (s *Dispatch[T]) Name() string {
	cur := s.cur.Load()
	for i, m := range s.impls {
		if m == cur {
			return s.names[i]
		}
	}
	return "unknown"
}

// Names are the implementations' names, slowest first.
func (s *Dispatch[T]) Names() []string { return append([]string(nil), s.names...) }

// Use makes the named implementation the one in use and returns a function
// that restores the previous one; an error if this CPU or build cannot run
// it.
func (s *Dispatch[T]) Use(name string) (restore func(), err error) {
	for i, m := range s.impls {
		if s.names[i] == name {
			prev := s.cur.Swap(m)
			return func() { s.cur.Store(prev) }, nil
		}
	}
	return nil, fmt.Errorf("%s: implementation %q not available here (have %s)", s.pkg, name, strings.Join(s.names, ", "))
}
