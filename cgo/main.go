// Command cgo is libgobps.so, the C API of gobps, built with
//
//	go build -buildmode=c-shared -o build/libgobps.so ./cgo
//
// The API is the hand-written gobps.h in this directory; the header that go
// build writes next to the library is an artefact. Framework plugins
// (python/gobps/torch) load the library and call it.
//
// # Layout
//
// lib.go holds the library's state and every operation in plain Go (no cgo),
// so that its logic reads and tests like any Go code; exports.go holds the
// exported C functions, each a thin wrapper that converts C arguments,
// recovers panics and turns errors into status codes and the per-thread last
// error (lasterror.c).
//
// # Rules the wrappers keep
//
//   - No Go pointer crosses into C: handles are int64 ids into a table of
//     *core.Handle, and error strings are copied into C memory.
//   - The caller's buffer is C memory. The engine reads and writes it from
//     its goroutines after the call returns, which is legal for memory the
//     Go collector does not manage; gobps.h tells the caller to leave the
//     buffer alone until the handle completes.
//   - No panic reaches C: every export recovers, reports GOBPS_ERR_INTERNAL
//     and prints the stack to stderr.
//   - The environment is read through getenv(3) when gobps_init is called,
//     not from the copy the Go runtime took when the library was loaded, so
//     that a host which sets variables after loading the library (Python's
//     os.environ) is obeyed.
package main

// main is required by -buildmode=c-shared and never runs.
func main() {}
