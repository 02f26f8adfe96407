"""The ctypes binding of libgobps.so (the C API of cgo/gobps.h).

Framework-independent: it moves raw pointers, dtype codes and element
counts. ``gobps.torch`` builds the PyTorch API on top of it.

Where the library is looked for, in order:

1. the file named by the environment variable ``GOBPS_LIB``;
2. ``libgobps.so`` next to this package (an installed copy);
3. ``build/libgobps.so`` at the root of the source tree this package sits
   in (``make lib`` puts it there);
4. ``libgobps.so`` on the dynamic loader's path (``LD_LIBRARY_PATH``).
"""

import ctypes
import os
import threading

API_VERSION = 3  # GOBPS_API_VERSION of gobps.h

# Status codes (gobps.h).
OK = 0
ERR_NOT_INITIALIZED = 1
ERR_INVALID_ARGUMENT = 2
ERR_BAD_HANDLE = 3
ERR_TIMEOUT = 4
ERR_CONFIG = 5
ERR_FAILED = 6
ERR_INTERNAL = 7
ERR_NOT_SUPPORTED = 8

# Element types (gobps.h).
FLOAT32 = 1
FLOAT64 = 2
FLOAT16 = 3
BFLOAT16 = 4
INT32 = 5
INT64 = 6
UINT8 = 7

DTYPE_NAMES = {FLOAT32: "float32", FLOAT64: "float64", FLOAT16: "float16",
               BFLOAT16: "bfloat16", INT32: "int32", INT64: "int64",
               UINT8: "uint8"}
FLOAT_DTYPES = frozenset((FLOAT32, FLOAT64, FLOAT16, BFLOAT16))

# Reduce ops (gobps.h).
SUM = 0
AVERAGE = 1


class GobpsError(RuntimeError):
    """Base class of every error gobps raises."""


class NotInitializedError(GobpsError):
    """A call needs init() first, or came after shutdown()."""


class InvalidArgumentError(GobpsError, ValueError):
    """A bad argument: a non-contiguous tensor, a name redeclared with
    another size, averaging integers, ..."""


class UnsupportedDTypeError(GobpsError, TypeError):
    """The tensor's dtype cannot be reduced by gobps."""


class ConfigError(GobpsError):
    """The environment does not describe a gobps job (start the workers
    with bpsrun, or set DMLC_ROLE and the rest; see docs/env.md)."""


class JobFailedError(GobpsError):
    """A server or worker died, a connection broke, or the job did not
    gather in time."""


class NotSupportedError(GobpsError):
    """The call needs something this process lacks, such as a CUDA driver
    for a tensor in GPU memory."""


class LibraryNotFoundError(GobpsError):
    """libgobps.so could not be found or loaded."""


class _TimeoutError(GobpsError, TimeoutError):
    pass


_ERRORS = {
    ERR_NOT_INITIALIZED: NotInitializedError,
    ERR_INVALID_ARGUMENT: InvalidArgumentError,
    ERR_BAD_HANDLE: InvalidArgumentError,
    ERR_TIMEOUT: _TimeoutError,
    ERR_CONFIG: ConfigError,
    ERR_FAILED: JobFailedError,
    ERR_INTERNAL: GobpsError,
    ERR_NOT_SUPPORTED: NotSupportedError,
}

_lock = threading.Lock()
_lib = None


def _candidates():
    here = os.path.dirname(os.path.abspath(__file__))
    env = os.environ.get("GOBPS_LIB")
    if env:
        return [env]  # an explicit choice is not second-guessed
    return [
        os.path.join(here, "libgobps.so"),
        os.path.join(os.path.dirname(os.path.dirname(here)), "build", "libgobps.so"),
        "libgobps.so",
    ]


def _declare(lib):
    c_int_p = ctypes.POINTER(ctypes.c_int)
    c_handle_p = ctypes.POINTER(ctypes.c_int64)
    sigs = {
        "gobps_api_version": ([], ctypes.c_int),
        "gobps_last_error": ([], ctypes.c_char_p),
        "gobps_init": ([ctypes.c_int64], ctypes.c_int),
        "gobps_shutdown": ([], ctypes.c_int),
        "gobps_rank": ([c_int_p], ctypes.c_int),
        "gobps_size": ([c_int_p], ctypes.c_int),
        "gobps_local_rank": ([c_int_p], ctypes.c_int),
        "gobps_local_size": ([c_int_p], ctypes.c_int),
        "gobps_declare": ([ctypes.c_char_p, ctypes.c_int, ctypes.c_int64], ctypes.c_int),
        "gobps_declare_broadcast": ([ctypes.c_char_p, ctypes.c_int, ctypes.c_int64, ctypes.c_int], ctypes.c_int),
        "gobps_push_pull": ([ctypes.c_char_p, ctypes.c_void_p, ctypes.c_int, ctypes.c_int64, ctypes.c_int, c_handle_p], ctypes.c_int),
        "gobps_push_pull_cuda": ([ctypes.c_char_p, ctypes.c_void_p, ctypes.c_int, ctypes.c_int64, ctypes.c_int,
                                  ctypes.c_int, ctypes.c_void_p, c_handle_p], ctypes.c_int),
        "gobps_broadcast": ([ctypes.c_char_p, ctypes.c_void_p, ctypes.c_int, ctypes.c_int64, ctypes.c_int, c_handle_p], ctypes.c_int),
        "gobps_declare_shape": ([ctypes.c_char_p, ctypes.c_int, ctypes.c_int, ctypes.POINTER(ctypes.c_int64), ctypes.c_int], ctypes.c_int),
        "gobps_reserve": ([ctypes.c_char_p], ctypes.c_int),
        "gobps_join": ([ctypes.c_int64], ctypes.c_int),
        "gobps_suspend": ([ctypes.c_int64], ctypes.c_int),
        "gobps_resume": ([ctypes.c_int, ctypes.c_int, ctypes.c_int64], ctypes.c_int),
        "gobps_poll": ([ctypes.c_int64, c_int_p], ctypes.c_int),
        "gobps_wait": ([ctypes.c_int64, ctypes.c_int64], ctypes.c_int),
    }
    for name, (args, res) in sigs.items():
        f = getattr(lib, name)
        f.argtypes = args
        f.restype = res


def lib():
    """Returns the loaded library, loading it on first use."""
    global _lib
    if _lib is not None:
        return _lib
    with _lock:
        if _lib is not None:
            return _lib
        tried = []
        for path in _candidates():
            if os.path.sep in path and not os.path.exists(path):
                tried.append("%s (no such file)" % path)
                continue
            try:
                l = ctypes.CDLL(path)
            except OSError as e:
                tried.append("%s (%s)" % (path, e))
                continue
            try:
                _declare(l)
            except AttributeError as e:
                tried.append("%s (not libgobps: %s)" % (path, e))
                continue
            v = l.gobps_api_version()
            if v != API_VERSION:
                raise LibraryNotFoundError(
                    "gobps: %s implements C API version %d; this Python package needs %d "
                    "(rebuild the library from the same source tree)" % (path, v, API_VERSION))
            _lib = l
            return _lib
        raise LibraryNotFoundError(
            "gobps: cannot load libgobps.so; tried: %s. Build it with "
            "`go build -buildmode=c-shared -o build/libgobps.so ./cgo` (or `make lib`) "
            "in the gobps source tree, or point GOBPS_LIB at it." % "; ".join(tried))


def last_error():
    msg = lib().gobps_last_error()
    return msg.decode("utf-8", "replace") if msg else ""


def check(rc):
    """Raises the exception for status rc (a no-op for OK)."""
    if rc == OK:
        return
    msg = last_error() or "gobps: error %d" % rc
    # Name the Python call, not the C one.
    msg = msg.replace("(call gobps_init first)", "(call init() first)")
    raise _ERRORS.get(rc, GobpsError)(msg)



def init(timeout=None):
    """Joins the job; timeout in seconds, None waits as long as it takes."""
    ms = 0 if timeout is None else max(1, int(timeout * 1000))
    check(lib().gobps_init(ms))


def shutdown():
    check(lib().gobps_shutdown())


def _info(fn):
    v = ctypes.c_int()
    check(fn(ctypes.byref(v)))
    return v.value


def rank():
    return _info(lib().gobps_rank)


def size():
    return _info(lib().gobps_size)


def local_rank():
    return _info(lib().gobps_local_rank)


def local_size():
    return _info(lib().gobps_local_size)


def declare(name, dtype, count):
    check(lib().gobps_declare(name.encode(), dtype, count))


def declare_shape(name, dtype, shape, root=-1):
    """Declares name as a tensor of dtype and shape (a sequence of ints),
    for push_pull (root -1) or broadcast from root: the servers compare
    every worker's name, dtype and shape."""
    dims = (ctypes.c_int64 * max(1, len(shape)))(*shape)
    check(lib().gobps_declare_shape(name.encode(), dtype, len(shape), dims, root))


def reserve(name):
    check(lib().gobps_reserve(name.encode()))


def _ms(timeout):
    return -1 if timeout is None else max(0, int(timeout * 1000))


def join(timeout=None):
    check(lib().gobps_join(_ms(timeout)))


def suspend(timeout=None):
    check(lib().gobps_suspend(_ms(timeout)))


def resume(num_workers, num_servers, timeout=None):
    check(lib().gobps_resume(num_workers, num_servers, _ms(timeout)))


def declare_broadcast(name, dtype, count, root):
    check(lib().gobps_declare_broadcast(name.encode(), dtype, count, root))


def push_pull(name, ptr, dtype, count, op):
    """Starts an in-place push_pull of count elements at address ptr;
    returns the handle."""
    h = ctypes.c_int64()
    check(lib().gobps_push_pull(name.encode(), ptr, dtype, count, op, ctypes.byref(h)))
    return h.value


def push_pull_cuda(name, ptr, dtype, count, op, device, stream):
    """Starts an in-place push_pull of count elements at device pointer ptr
    on CUDA device `device`, written by work queued on the CUDA stream
    `stream` (a CUstream as an int; 0 for the default stream); returns the
    handle."""
    h = ctypes.c_int64()
    check(lib().gobps_push_pull_cuda(name.encode(), ptr, dtype, count, op, device, stream or None, ctypes.byref(h)))
    return h.value


def broadcast(name, ptr, dtype, count, root):
    h = ctypes.c_int64()
    check(lib().gobps_broadcast(name.encode(), ptr, dtype, count, root, ctypes.byref(h)))
    return h.value


def poll(handle):
    done = ctypes.c_int()
    check(lib().gobps_poll(handle, ctypes.byref(done)))
    return bool(done.value)


# wait sleeps in the library in slices of this many milliseconds, so that
# Ctrl-C (KeyboardInterrupt) reaches a Python program blocked in wait.
_WAIT_SLICE_MS = 200


def wait(handle, timeout=None):
    """Waits for handle (consuming it) and raises its error, if any.
    timeout in seconds; None waits as long as it takes."""
    l = lib()
    if timeout is not None:
        check(l.gobps_wait(handle, max(0, int(timeout * 1000))))
        return
    while True:
        rc = l.gobps_wait(handle, _WAIT_SLICE_MS)
        if rc != ERR_TIMEOUT:
            check(rc)
            return
