package main

/*
#cgo CFLAGS: -Wall -Werror
#include <stdlib.h>
#include "gobps.h"
#include "lasterror.h"

// gobps_cchar lets an exported Go function take a const char *, so that the
// prototypes cgo generates agree with gobps.h: this preamble is copied into
// the generated header, which then includes gobps.h too, and the C compiler
// rejects any export whose signature differs from the hand-written one.
typedef const char gobps_cchar;
typedef const int64_t gobps_cint64;
*/
import "C"

import (
	"fmt"
	"math"
	"os"
	"runtime/debug"
	"time"
	"unsafe"

	"github.com/gobps/gobps/core"
	"github.com/gobps/gobps/proto"
)

// The status codes, dtypes and ops of gobps.h must equal lib.go's: each line
// fails to compile (a negative constant converted to uint) if they differ.
const (
	_ = uint(C.GOBPS_OK-statusOK) + uint(statusOK-C.GOBPS_OK)
	_ = uint(C.GOBPS_ERR_NOT_INITIALIZED-statusNotInitialized) + uint(statusNotInitialized-C.GOBPS_ERR_NOT_INITIALIZED)
	_ = uint(C.GOBPS_ERR_INVALID_ARGUMENT-statusInvalidArgument) + uint(statusInvalidArgument-C.GOBPS_ERR_INVALID_ARGUMENT)
	_ = uint(C.GOBPS_ERR_BAD_HANDLE-statusBadHandle) + uint(statusBadHandle-C.GOBPS_ERR_BAD_HANDLE)
	_ = uint(C.GOBPS_ERR_TIMEOUT-statusTimeout) + uint(statusTimeout-C.GOBPS_ERR_TIMEOUT)
	_ = uint(C.GOBPS_ERR_CONFIG-statusConfig) + uint(statusConfig-C.GOBPS_ERR_CONFIG)
	_ = uint(C.GOBPS_ERR_FAILED-statusFailed) + uint(statusFailed-C.GOBPS_ERR_FAILED)
	_ = uint(C.GOBPS_ERR_INTERNAL-statusInternal) + uint(statusInternal-C.GOBPS_ERR_INTERNAL)
	_ = uint(C.GOBPS_ERR_NOT_SUPPORTED-statusNotSupported) + uint(statusNotSupported-C.GOBPS_ERR_NOT_SUPPORTED)
	_ = uint(C.GOBPS_SUM-opSum) + uint(opSum-C.GOBPS_SUM)
	_ = uint(C.GOBPS_AVERAGE-opAverage) + uint(opAverage-C.GOBPS_AVERAGE)
	_ = uint(C.GOBPS_API_VERSION-apiVersion) + uint(apiVersion-C.GOBPS_API_VERSION)
)

// result turns err into a status and, on failure, the calling thread's last
// error.
func result(err error) C.int {
	code := statusOf(err)
	if code != statusOK {
		setLastError(err.Error())
	}
	return C.int(code)
}

func setLastError(msg string) {
	C.gobps_set_last_error(C.CString(msg)) // ownership passes to C
}

// guard recovers a panic into GOBPS_ERR_INTERNAL. Every export defers it.
func guard(rc *C.int) {
	if r := recover(); r != nil {
		fmt.Fprintf(os.Stderr, "gobps: internal error: %v\n%s", r, debug.Stack())
		setLastError(fmt.Sprintf("gobps: internal error (a bug in gobps; please report it with the stack printed on stderr): %v", r))
		*rc = C.int(statusInternal)
	}
}

// getenv reads the process environment as it is now (see main.go).
func getenv(name string) (string, bool) {
	cs := C.CString(name)
	defer C.free(unsafe.Pointer(cs))
	v := C.getenv(cs)
	if v == nil {
		return "", false
	}
	return C.GoString(v), true
}

func millis(ms C.int64_t) time.Duration {
	if ms < 0 || int64(ms) > math.MaxInt64/int64(time.Millisecond) {
		return -1
	}
	return time.Duration(ms) * time.Millisecond
}

// buffer is the count elements of dtype at data, as a Go slice over C
// memory. The dtype and count are checked first.
func buffer(what string, data unsafe.Pointer, dtype C.int, count C.int64_t) ([]byte, error) {
	dt, err := checkDType(what, int(dtype))
	if err != nil {
		return nil, err
	}
	n, err := checkCount(what, dt, int64(count))
	if err != nil || n == 0 {
		return nil, err
	}
	if data == nil {
		return nil, fail(statusInvalidArgument, "gobps: %s: NULL data pointer for %d elements", what, count)
	}
	return unsafe.Slice((*byte)(data), n), nil
}

func goName(what string, name *C.gobps_cchar) (string, error) {
	if name == nil {
		return "", fail(statusInvalidArgument, "gobps: %s: NULL tensor name", what)
	}
	return C.GoString((*C.char)(name)), nil
}

//export gobps_api_version
func gobps_api_version() C.int { return apiVersion }

//export gobps_init
func gobps_init(timeoutMS C.int64_t) (rc C.int) {
	defer guard(&rc)
	timeout := time.Duration(0)
	if timeoutMS > 0 {
		timeout = millis(timeoutMS)
	}
	return result(lib.init(timeout, getenv, os.Stderr))
}

//export gobps_shutdown
func gobps_shutdown() (rc C.int) {
	defer guard(&rc)
	return result(lib.shutdown())
}

//export gobps_join
func gobps_join(timeoutMS C.int64_t) (rc C.int) {
	defer guard(&rc)
	return result(lib.join(millis(timeoutMS)))
}

//export gobps_suspend
func gobps_suspend(timeoutMS C.int64_t) (rc C.int) {
	defer guard(&rc)
	return result(lib.suspend(millis(timeoutMS)))
}

//export gobps_resume
func gobps_resume(workers, servers C.int, timeoutMS C.int64_t) (rc C.int) {
	defer guard(&rc)
	return result(lib.resume(int(workers), int(servers), millis(timeoutMS)))
}

func infoExport(out *C.int, what string, f func() (int, error)) C.int {
	if out == nil {
		return result(fail(statusInvalidArgument, "gobps: %s: NULL result pointer", what))
	}
	v, err := f()
	if err == nil {
		*out = C.int(v)
	}
	return result(err)
}

//export gobps_rank
func gobps_rank(out *C.int) (rc C.int) {
	defer guard(&rc)
	return infoExport(out, "rank", func() (int, error) { return lib.info((*core.Engine).Rank) })
}

//export gobps_size
func gobps_size(out *C.int) (rc C.int) {
	defer guard(&rc)
	return infoExport(out, "size", func() (int, error) { return lib.info((*core.Engine).Size) })
}

//export gobps_local_rank
func gobps_local_rank(out *C.int) (rc C.int) {
	defer guard(&rc)
	return infoExport(out, "local_rank", func() (int, error) { return lib.info((*core.Engine).LocalRank) })
}

//export gobps_local_size
func gobps_local_size(out *C.int) (rc C.int) {
	defer guard(&rc)
	return infoExport(out, "local_size", func() (int, error) { return lib.info((*core.Engine).LocalSize) })
}

//export gobps_declare
func gobps_declare(name *C.gobps_cchar, dtype C.int, count C.int64_t) (rc C.int) {
	defer guard(&rc)
	n, err := goName("declare", name)
	if err != nil {
		return result(err)
	}
	_, err = lib.declare(n, int(dtype), int64(count), -1, nil)
	return result(err)
}

//export gobps_declare_broadcast
func gobps_declare_broadcast(name *C.gobps_cchar, dtype C.int, count C.int64_t, root C.int) (rc C.int) {
	defer guard(&rc)
	n, err := goName("declare_broadcast", name)
	if err != nil {
		return result(err)
	}
	if root < 0 {
		return result(fail(statusInvalidArgument, "gobps: declare_broadcast %q: root %d is not a rank", n, root))
	}
	_, err = lib.declare(n, int(dtype), int64(count), int(root), nil)
	return result(err)
}

//export gobps_reserve
func gobps_reserve(name *C.gobps_cchar) (rc C.int) {
	defer guard(&rc)
	n, err := goName("reserve", name)
	if err != nil {
		return result(err)
	}
	e, err := lib.live()
	if err != nil {
		return result(err)
	}
	if err := e.Reserve(n); err != nil {
		return result(fail(statusInvalidArgument, "%w", err))
	}
	return result(nil)
}

//export gobps_declare_shape
func gobps_declare_shape(name *C.gobps_cchar, dtype C.int, ndim C.int, dims *C.gobps_cint64, root C.int) (rc C.int) {
	defer guard(&rc)
	n, err := goName("declare_shape", name)
	if err != nil {
		return result(err)
	}
	what := fmt.Sprintf("declare_shape %q", n)
	switch {
	case ndim < 0 || ndim > proto.MaxDims:
		return result(fail(statusInvalidArgument, "gobps: %s: %d dimensions; 0 to %d", what, ndim, proto.MaxDims))
	case ndim > 0 && dims == nil:
		return result(fail(statusInvalidArgument, "gobps: %s: NULL dims for %d dimensions", what, ndim))
	case root < -1:
		return result(fail(statusInvalidArgument, "gobps: %s: root %d is not a rank (-1 for push_pull)", what, root))
	}
	shape := make([]int64, int(ndim))
	if ndim > 0 {
		for i, d := range unsafe.Slice(dims, int(ndim)) {
			shape[i] = int64(d)
		}
	}
	_, err = lib.declare(n, int(dtype), 0, int(root), shape)
	return result(err)
}

//export gobps_push_pull
func gobps_push_pull(name *C.gobps_cchar, data unsafe.Pointer, dtype C.int, count C.int64_t, op C.int, handle *C.gobps_handle_t) (rc C.int) {
	defer guard(&rc)
	n, err := goName("push_pull", name)
	if err != nil {
		return result(err)
	}
	what := fmt.Sprintf("push_pull %q", n)
	if handle == nil {
		return result(fail(statusInvalidArgument, "gobps: %s: NULL handle pointer", what))
	}
	buf, err := buffer(what, data, dtype, count)
	if err != nil {
		return result(err)
	}
	id, err := lib.pushPull(n, buf, int(dtype), int64(count), int(op))
	if err == nil {
		*handle = C.gobps_handle_t(id)
	}
	return result(err)
}

//export gobps_push_pull_cuda
func gobps_push_pull_cuda(name *C.gobps_cchar, data unsafe.Pointer, dtype C.int, count C.int64_t, op C.int, device C.int, stream unsafe.Pointer, handle *C.gobps_handle_t) (rc C.int) {
	defer guard(&rc)
	n, err := goName("push_pull_cuda", name)
	if err != nil {
		return result(err)
	}
	if handle == nil {
		return result(fail(statusInvalidArgument, "gobps: push_pull_cuda %q: NULL handle pointer", n))
	}
	// data and stream are CUDA handles, never dereferenced here.
	id, err := lib.pushPullCUDA(n, uintptr(data), int(dtype), int64(count), int(op), int(device), uintptr(stream))
	if err == nil {
		*handle = C.gobps_handle_t(id)
	}
	return result(err)
}

//export gobps_broadcast
func gobps_broadcast(name *C.gobps_cchar, data unsafe.Pointer, dtype C.int, count C.int64_t, root C.int, handle *C.gobps_handle_t) (rc C.int) {
	defer guard(&rc)
	n, err := goName("broadcast", name)
	if err != nil {
		return result(err)
	}
	what := fmt.Sprintf("broadcast %q", n)
	if handle == nil {
		return result(fail(statusInvalidArgument, "gobps: %s: NULL handle pointer", what))
	}
	buf, err := buffer(what, data, dtype, count)
	if err != nil {
		return result(err)
	}
	id, err := lib.broadcast(n, buf, int(dtype), int64(count), int(root))
	if err == nil {
		*handle = C.gobps_handle_t(id)
	}
	return result(err)
}

//export gobps_poll
func gobps_poll(handle C.gobps_handle_t, done *C.int) (rc C.int) {
	defer guard(&rc)
	if done == nil {
		return result(fail(statusInvalidArgument, "gobps: poll: NULL result pointer"))
	}
	ok, err := lib.poll(int64(handle))
	if err == nil {
		*done = 0
		if ok {
			*done = 1
		}
	}
	return result(err)
}

//export gobps_wait
func gobps_wait(handle C.gobps_handle_t, timeoutMS C.int64_t) (rc C.int) {
	defer guard(&rc)
	return result(lib.wait(int64(handle), millis(timeoutMS)))
}
