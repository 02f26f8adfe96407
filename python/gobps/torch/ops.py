"""Tensor operations of gobps.torch: push_pull, broadcast, handles.

A CPU tensor is handed to the library by its ``data_ptr()``, without a copy.
A CUDA tensor's push_pull is handed over with its device pointer, its
device index and the current CUDA stream: the library copies the gradient
out on its own stream once the work queued on that stream (backprop) is
done, and copies the result back before the handle completes (see
``docs/architecture.md``, "GPU path"; never run on a GPU in this project's
CI).
The library reduces it in place, from its own threads, after the call has
returned: until ``synchronize(handle)`` returns (or ``poll(handle)`` is
true), the tensor must be left alone. This module keeps a reference to every
tensor in flight, so that it is not freed under the library.
"""

import atexit
import itertools
import threading

import torch

from gobps import _lib
from gobps._lib import (InvalidArgumentError, NotInitializedError,
                        UnsupportedDTypeError)
from gobps.torch import _speed
from gobps.torch.compression import Compression

_DTYPES = {
    torch.float32: _lib.FLOAT32,
    torch.float64: _lib.FLOAT64,
    torch.float16: _lib.FLOAT16,
    torch.bfloat16: _lib.BFLOAT16,
    torch.int32: _lib.INT32,
    torch.int64: _lib.INT64,
    torch.uint8: _lib.UINT8,
}

_SUPPORTED = ", ".join(str(d).replace("torch.", "") for d in _DTYPES)

# handle -> (tensors kept alive until it completes, output tensor, and a
# callable run by synchronize once it has (or None))
_handle_map = {}

_noname = itertools.count()
_meter = _speed.Meter()

# push_pull_group_sync_inplace's count (see byteps_torch_set_num_grads).
_group_lock = threading.Lock()
_group_num_grads = 0
_group_count = 0
_atexit_lock = threading.Lock()
_atexit_registered = False


def init(lazy=True, timeout=600.0):
    """Joins the job that the environment describes (bpsrun sets it) and
    waits until every worker and server is there, at most ``timeout``
    seconds (None: no bound). Calling it again does nothing. ``lazy`` is
    accepted for byteps compatibility and ignored."""
    global _atexit_registered
    _lib.init(timeout)
    with _atexit_lock:
        if not _atexit_registered:
            # Leave the job cleanly at exit: a worker that vanishes without
            # leaving is reported dead to the others.
            atexit.register(_shutdown_at_exit)
            _atexit_registered = True


def _forget_shapes():
    with _shapes_lock:
        _shapes.clear()


def _shutdown_at_exit():
    try:
        _lib.shutdown()
    except _lib.GobpsError:
        pass


def shutdown():
    """Leaves the job. Pending operations fail."""
    _lib.shutdown()
    _forget_shapes()


def suspend(timeout=None):
    """Pauses the job, as byteps's suspend does: every worker calls it.
    Operations in flight complete; later ones raise until ``resume``. It
    returns once every worker has suspended (at most ``timeout`` seconds;
    None: no bound)."""
    _lib.suspend(timeout)


def resume(num_workers, num_servers, global_rank=None, context=None, timeout=None):
    """Ends a suspension once every worker resumes. ``num_workers`` and
    ``num_servers`` must be the job's size: changing it (byteps's elastic
    training) is not implemented yet and raises InvalidArgumentError.
    ``global_rank``, if given, must be this worker's rank; ``context`` is
    accepted for byteps compatibility and ignored. The tensors stay
    declared, in the same order."""
    if global_rank is not None and global_rank != _lib.rank():
        raise InvalidArgumentError(
            "gobps: resume: global_rank %d, but this worker is rank %d; changing ranks (elastic training) "
            "is not implemented yet" % (global_rank, _lib.rank()))
    _lib.resume(num_workers, num_servers, timeout)


class join(object):
    """A context manager for uneven inputs, as PyTorch DDP's ``Join``: a
    worker whose loop ends (it ran out of data) goes on answering the other
    workers' push_pulls with zeros until every worker's loop has ended, so
    the job ends cleanly instead of waiting forever::

        with bps.join():
            for x, y in my_shard:          # shards of different lengths
                ...                        # forward, backward, step

    The averaged gradients of a step that some workers no longer take part
    in are the sum over the workers that do, divided by ``size()`` (DDP's
    default). On leaving the block, ``join`` returns once every worker has
    left its block (at most ``timeout`` seconds; None: no bound); the job
    can go on afterwards with every worker. An exception leaving the block
    is not a join: it propagates, and the worker's exit is reported to the
    others."""

    def __init__(self, timeout=None):
        self._timeout = timeout

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            _lib.join(self._timeout)
        return False


def size():
    """The number of workers."""
    return _lib.size()


def local_size():
    """The number of workers on this machine."""
    return _lib.local_size()


def rank():
    """This worker's rank, 0 .. size()-1."""
    return _lib.rank()


def local_rank():
    """This worker's rank on its machine."""
    return _lib.local_rank()


def _check_tensor(tensor, what, any_dtype=False, cuda_ok=False):
    """Returns (address, dtype code, element count) of a tensor the library
    may read and write in place, or raises a clear exception. With
    any_dtype, a tensor of a dtype gobps cannot reduce is described as raw
    bytes (good for broadcast: a copy is a copy). With cuda_ok, a CUDA
    tensor is accepted (its address is a device pointer)."""
    if not isinstance(tensor, torch.Tensor):
        raise TypeError("gobps: %s: expected a torch.Tensor, got %s" % (what, type(tensor).__name__))
    if tensor.is_sparse:
        raise InvalidArgumentError("gobps: %s: sparse tensors are not supported; pass a dense tensor" % what)
    if tensor.device.type != "cpu" and not (cuda_ok and tensor.device.type == "cuda"):
        supported = "CPU and CUDA tensors" if cuda_ok else "CPU tensors"
        raise InvalidArgumentError(
            "gobps: %s: the tensor is on %s; this operation takes %s only" % (what, tensor.device, supported))
    code = _DTYPES.get(tensor.dtype)
    if code is None and not any_dtype:
        raise UnsupportedDTypeError(
            "gobps: %s: dtype %s is not supported (supported: %s)" % (what, tensor.dtype, _SUPPORTED))
    if not tensor.is_contiguous():
        raise InvalidArgumentError(
            "gobps: %s: the tensor is not contiguous (shape %s, strides %s); pass tensor.contiguous() "
            "and copy the result back" % (what, tuple(tensor.shape), tensor.stride()))
    if code is None:
        return tensor.data_ptr(), _lib.UINT8, tensor.numel() * tensor.element_size()
    return tensor.data_ptr(), code, tensor.numel()


def _name(name, what):
    if name is None:
        return "%s.noname.%d" % (what, next(_noname))
    if not isinstance(name, str) or not name:
        raise InvalidArgumentError("gobps: %s: the name must be a non-empty string, got %r" % (what, name))
    return name


def declare(name, tensor=None):
    """Declares the tensor that ``name`` will push_pull, fixing its place in
    the order: every worker must declare in the same order, and the earlier
    a tensor is declared the higher its priority. With ``tensor`` (or one
    shaped like it), its dtype and shape are declared too; without, as in
    byteps, the name's place is reserved and its dtype and shape come with
    its first use, in whatever order the workers get there. Every worker's
    declaration of a name is compared (name, dtype, shape): tensors that do
    not match up are refused with an error naming both, never summed.
    DistributedOptimizer declares every gradient, in model order, when it
    is built."""
    if tensor is None:
        _lib.reserve(_name(name, "declare"))
        return
    _, code, _ = _check_tensor(tensor, "declare %r" % name, cuda_ok=True)
    _declare_shape(_name(name, "declare"), code, tensor.shape, -1)


# name -> (dtype code, shape, root) of the names declared with their shape
_shapes = {}
_shapes_lock = threading.Lock()


def _numel(shape):
    n = 1
    for d in shape:
        n *= d
    return n


def _declare_shape(name, code, shape, root):
    """Declares name with its shape on first use, so that the servers
    compare every worker's shape too; a later use with another shape (of
    the same size) is refused here. Raw-byte tensors are declared by their
    size in bytes."""
    shape = tuple(int(d) for d in shape)
    with _shapes_lock:
        known = _shapes.get(name)
        if known == (code, shape, root):
            return
        if known is not None:
            if known[0] == code and known[1] != shape and _numel(known[1]) == _numel(shape):
                raise InvalidArgumentError(
                    "gobps: %r was declared with shape %s; now used with shape %s: a name is one tensor"
                    % (name, list(known[1]), list(shape)))
            return  # another size, dtype or root: the library refuses the use, in its words
        _lib.declare_shape(name, code, shape, root)
        _shapes[name] = (code, shape, root)


def _cuda_stream(tensor):
    """The CUstream handle (an int) of the current stream of the tensor's
    device: the stream the framework queued the gradient's kernels on."""
    return torch.cuda.current_stream(tensor.device).cuda_stream


def _push_pull_start(tensor, output, average, name, what):
    ptr, code, n = _check_tensor(output, what, cuda_ok=True)
    if average and code not in _lib.FLOAT_DTYPES:
        raise InvalidArgumentError(
            "gobps: %s: cannot average a %s tensor; use average=False" % (what, output.dtype))
    op = _lib.AVERAGE if average else _lib.SUM
    name = _name(name, "push_pull")
    _declare_shape(name, code, output.shape, -1)
    if output.device.type == "cuda":
        h = _lib.push_pull_cuda(name, ptr, code, n, op, output.device.index, _cuda_stream(output))
    else:
        h = _lib.push_pull(name, ptr, code, n, op)
    _handle_map[h] = ((tensor, output), output, None)
    _meter.started(h, output.numel() * output.element_size())
    return h


def push_pull_async_inplace(tensor, average=True, name=None, version=0, priority=0, staleness=0):
    """Starts averaging (or summing) ``tensor`` over all workers, in place;
    returns a handle for ``poll`` and ``synchronize``. The reduction is keyed
    by ``name``; every worker must use the same names, shapes and dtypes, and
    the same number of calls per name. ``version``, ``priority`` and
    ``staleness`` are accepted for byteps compatibility and ignored: the
    priority comes from the declaration order."""
    return _push_pull_start(tensor, tensor, average, name, "push_pull %r" % (name,))


def push_pull_async(tensor, average=True, name=None, version=0, priority=0):
    """Like push_pull_async_inplace, into a new tensor (``tensor`` is not
    modified); synchronize returns it."""
    _check_tensor(tensor, "push_pull %r" % (name,), cuda_ok=True)
    output = tensor.detach().clone()
    return _push_pull_start(tensor, output, average, name, "push_pull %r" % (name,))


def poll(handle):
    """Whether the operation of ``handle`` has completed; synchronize does
    not block once it has."""
    if handle not in _handle_map:
        raise InvalidArgumentError("gobps: poll: unknown handle %r" % (handle,))
    done = _lib.poll(handle)
    if done:
        _meter.completed(handle)
    return done


def synchronize(handle):
    """Waits for the operation of ``handle`` and returns its output tensor
    (the tensor itself for in-place operations)."""
    entry = _handle_map.get(handle)
    if entry is None:
        raise InvalidArgumentError("gobps: synchronize: unknown handle %r (already synchronized?)" % (handle,))
    try:
        _lib.wait(handle)
    except KeyboardInterrupt:
        raise  # the handle stays valid: synchronize may be called again
    except BaseException:
        _handle_map.pop(handle, None)
        _meter.discard(handle)
        raise
    _meter.completed(handle)
    _handle_map.pop(handle, None)
    if entry[2] is not None:
        entry[2]()
    return entry[1]


def push_pull_inplace(tensor, average=True, name=None, version=0, priority=0, staleness=0):
    """push_pull_async_inplace, then synchronize."""
    return synchronize(push_pull_async_inplace(tensor, average, name, version, priority, staleness))


def byteps_torch_set_num_grads(num_grads):
    """Sets the number of gradients per step that
    push_pull_group_sync_inplace counts, and restarts its count (byteps's
    DistributedDataParallel calls it; gobps's does not need it)."""
    global _group_num_grads, _group_count
    if isinstance(num_grads, bool) or not isinstance(num_grads, int) or num_grads < 0:
        raise InvalidArgumentError("gobps: byteps_torch_set_num_grads: want a count >= 0, got %r" % (num_grads,))
    with _group_lock:
        _group_num_grads = num_grads
        _group_count = 0
    return 0


def push_pull_group_sync_inplace(tensor, average=True, name=None, version=0, priority=0):
    """Starts push_pull_async_inplace and counts it as one gradient of a
    group of byteps_torch_set_num_grads(n) gradients; returns (handle,
    count), where count runs 1 .. n and starts again at 1 after n (it is
    never reset when n is 0, byteps's initial value). As in byteps, the
    caller synchronizes every handle of the group once count is n; the
    count is process-wide."""
    global _group_count
    handle = push_pull_async_inplace(tensor, average, name, version, priority)
    with _group_lock:
        _group_count += 1
        count = _group_count
        if _group_count == _group_num_grads:
            _group_count = 0
    return handle, count


def get_pushpull_speed():
    """The recent push_pull throughput of this worker: (milliseconds since
    the epoch of the last push_pull counted, megabytes per second), or (0,
    -5.0) when no push_pull completed in the last 10 seconds. Measured in
    the plugin over a 10-second sliding window of the push_pulls it saw
    complete: their bytes over the time at least one was in flight (see
    gobps/torch/_speed.py)."""
    return _meter.speed()


class _PushPull(torch.autograd.Function):
    """push_pull as an autograd function: the gradient of an average over
    workers is the average of the gradients."""

    @staticmethod
    def forward(ctx, tensor, average, name):
        ctx.average = average
        ctx.name = name
        return synchronize(push_pull_async(tensor, average, name))

    @staticmethod
    def backward(ctx, grad_output):
        grad = grad_output.contiguous()
        return synchronize(push_pull_async(grad, ctx.average, ctx.name + ".grad")), None, None


# byteps's name for the autograd function.
BytePSPushPull = _PushPull


def push_pull(tensor, average=True, name=None, version=0, priority=0, compression=Compression.none):
    """Returns the average (or sum) of ``tensor`` over all workers as a new
    tensor; differentiable. As in byteps, ``name`` is required."""
    if name is None:
        raise InvalidArgumentError("gobps: push_pull needs a name (push_pull(tensor, name=...))")
    compressed, ctx = compression.compress(tensor)
    reduced = _PushPull.apply(compressed, average, name)
    return compression.decompress(reduced, ctx)


def broadcast_async_inplace(tensor, root_rank, name=None):
    """Starts copying root_rank's ``tensor`` into every worker's ``tensor``;
    returns a handle for ``synchronize``. A tensor of a dtype push_pull does
    not support (bool, int8, complex, ...) is sent as raw bytes. A CUDA
    tensor (model parameters at start-up, optimizer state) goes through a
    CPU copy, copied back by ``synchronize``: broadcasts are rare, and this
    keeps them off the GPU staging path."""
    what = "broadcast %r" % (name,)
    host, finish = tensor, None
    if isinstance(tensor, torch.Tensor) and tensor.device.type == "cuda":
        _check_tensor(tensor, what, any_dtype=True, cuda_ok=True)
        host = tensor.detach().cpu()

        def finish():
            with torch.no_grad():
                tensor.copy_(host)
    ptr, code, n = _check_tensor(host, what, any_dtype=True)
    name = _name(name, "broadcast")
    if isinstance(root_rank, int) and not isinstance(root_rank, bool) and root_rank >= 0:
        # (A bad root is the library's to refuse, with its words.)
        _declare_shape(name, code, host.shape if code != _lib.UINT8 or host.dtype == torch.uint8 else (n,), root_rank)
    h = _lib.broadcast(name, ptr, code, n, root_rank)
    _handle_map[h] = ((tensor, host), tensor, finish)
    return h


def broadcast_(tensor, root_rank, name=None):
    """broadcast_async_inplace, then synchronize; returns ``tensor``."""
    return synchronize(broadcast_async_inplace(tensor, root_rank, name))
