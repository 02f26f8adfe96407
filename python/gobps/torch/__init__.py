"""gobps.torch: a drop-in for byteps.torch.

Change ``import byteps.torch as bps`` to ``import gobps.torch as bps`` and
start the job with bpsrun::

    bpsrun --local -np 2 --servers 2 -- /usr/bin/python3 train.py

    import gobps.torch as bps
    bps.init()
    model = ...
    optimizer = bps.DistributedOptimizer(
        optim.SGD(model.parameters(), lr=0.01),
        named_parameters=model.named_parameters())
    bps.broadcast_parameters(model.state_dict(), root_rank=0)
    bps.broadcast_optimizer_state(optimizer, root_rank=0)
    for data, target in loader:
        optimizer.zero_grad()
        loss_fn(model(data), target).backward()   # push_pulls start here
        optimizer.step()                          # waits for them

The submodules are byteps.torch's too: ``gobps.torch.parallel``
(DistributedDataParallel) and ``gobps.torch.cross_barrier`` (CrossBarrier).
An unedited byteps script runs under ``bpsrun --byteps-compat``, which puts
a ``byteps`` package that aliases gobps on the workers' path.

Tensors: CPU and CUDA ones. A CUDA tensor's push_pull is staged through
pinned host memory by the library (never run on a GPU in this project's
CI); broadcasts of CUDA tensors go through a CPU copy.

Every worker's declaration of a tensor (name, dtype, shape) is compared
by the servers: tensors that do not match up across workers (other names,
another order, another shape) are refused with an error naming both, never
summed. A worker that leaves early is reported to the others at once;
``join()`` lets workers with uneven data end cleanly.

Differences from byteps.torch (docs/pytorch.md lists every name): the
``version``, ``priority`` and ``staleness`` arguments are accepted and
ignored (priorities come from the declaration order, which
DistributedOptimizer makes the model's order); averaging an integer tensor
is refused rather than floor-divided; ``resume`` continues a suspended job
of the same size (changing it, elastic training, is not supported);
asynchronous training (BYTEPS_ENABLE_ASYNC) is not supported.
"""

import collections
import pickle
from contextlib import contextmanager

import torch

from gobps import _lib
from gobps._lib import (ConfigError, GobpsError, InvalidArgumentError,
                        JobFailedError, LibraryNotFoundError,
                        NotInitializedError, NotSupportedError,
                        UnsupportedDTypeError)
from gobps.torch import _grad, ops
from gobps.torch.compression import Compression
from gobps.torch.ops import (broadcast_, broadcast_async_inplace, declare,
                             get_pushpull_speed, init, local_rank, local_size,
                             poll, push_pull, push_pull_async,
                             push_pull_async_inplace,
                             push_pull_group_sync_inplace, push_pull_inplace,
                             rank, resume, shutdown, size, suspend,
                             synchronize, join)

# byteps.torch's name for push_pull_async_inplace.
byteps_push_pull = push_pull_async_inplace

__all__ = [
    "init", "shutdown", "suspend", "resume", "join", "size", "local_size", "rank",
    "local_rank", "declare", "push_pull", "push_pull_async",
    "push_pull_async_inplace", "push_pull_inplace", "byteps_push_pull",
    "push_pull_group_sync_inplace", "get_pushpull_speed", "poll", "synchronize",
    "broadcast_", "broadcast_async_inplace", "DistributedOptimizer",
    "broadcast_parameters", "broadcast_optimizer_state", "broadcast_object",
    "Compression", "GobpsError", "NotInitializedError", "InvalidArgumentError",
    "UnsupportedDTypeError", "ConfigError", "JobFailedError",
    "LibraryNotFoundError", "NotSupportedError",
]


class _DistributedOptimizer(torch.optim.Optimizer):
    # Marks the classes DistributedOptimizer makes (CrossBarrier refuses them).
    _gobps_distributed = True

    def __init__(self, params, named_parameters, compression, backward_passes_per_step=1):
        super(self.__class__, self).__init__(params)
        self._compression = compression
        in_groups = [p for group in self.param_groups for p in group["params"]]
        named = _grad.named_order(in_groups, named_parameters, "DistributedOptimizer")
        # Declare every gradient now, in model order: the engine gives
        # earlier declarations higher priority, so the layers nearest the
        # input, which the next forward pass needs first, go first; and
        # every worker declares the same tensors in the same order.
        self._reducer = _grad.Reducer(named, compression)
        self._order = self._reducer.order
        self._parameter_names = dict(self._reducer.names)
        self.backward_passes_per_step = backward_passes_per_step
        self._push_pull_delay = {p: backward_passes_per_step for p in self._order}
        self._handles = {}  # p -> Pending, or None while its passes are not all done
        self._grad_accs = []
        self._should_sync = True
        self._register_hooks()

    def _register_hooks(self):
        for p in self._order:
            if p.grad is None:
                p.grad = torch.zeros_like(p, memory_format=torch.contiguous_format)
            # The gradient accumulator of p runs once p.grad holds this
            # backward pass's gradient: the earliest moment to send it.
            grad_acc = p.expand_as(p).grad_fn.next_functions[0][0]
            grad_acc.register_hook(self._make_hook(p))
            self._grad_accs.append(grad_acc)

    def set_backward_passes_per_step(self, passes):
        self.backward_passes_per_step = passes
        for p in self._push_pull_delay:
            self._push_pull_delay[p] = passes

    def _make_hook(self, p):
        def hook(*ignore):
            if self._handles.get(p) is not None:
                if self._push_pull_delay[p] <= 0:
                    raise AssertionError(
                        "Gradients were computed more than backward_passes_per_step times before "
                        "call to step(). Increase backward_passes_per_step to accumulate gradients "
                        "locally.")
            assert not p.grad.requires_grad
            assert self._push_pull_delay[p] > 0
            pending = None
            self._push_pull_delay[p] -= 1
            if self._push_pull_delay[p] == 0:
                pending = self._reducer.start(p)
            self._handles[p] = pending
        return hook

    def synchronize(self):
        """Waits for every gradient's push_pull (starting those whose hook
        has not fired, e.g. of parameters unused in this step) and leaves
        the averaged gradients in p.grad."""
        try:
            for p in self._order:
                if self._handles.get(p) is None:
                    self._handles[p] = self._reducer.start(p)
        finally:
            pending = [(p, self._handles[p]) for p in self._order if self._handles.get(p) is not None]
            self._handles.clear()
            for p in self._order:
                self._push_pull_delay[p] = self.backward_passes_per_step
        self._reducer.wait(pending)

    @contextmanager
    def skip_synchronize(self):
        """A context in which step() does not synchronize: for calling
        synchronize() yourself first (gradient clipping)."""
        self._should_sync = False
        try:
            yield
        finally:
            self._should_sync = True

    def step(self, closure=None):
        if self._should_sync:
            self.synchronize()
        return super(self.__class__, self).step(closure)

    def _plain_step(self):
        """The wrapped optimizer's own step, without push_pulls (for
        broadcast_optimizer_state's state-creating step)."""
        return super(self.__class__, self).step()

    def zero_grad(self, *args, **kwargs):
        if self._handles:
            raise AssertionError(
                "optimizer.zero_grad() was called after loss.backward() but before optimizer.step() "
                "or optimizer.synchronize(): gobps is still reducing the gradients in place.")
        return super(self.__class__, self).zero_grad(*args, **kwargs)


def DistributedOptimizer(optimizer, named_parameters=None, compression=Compression.none,
                         backward_passes_per_step=1):
    """Wraps a torch.optim.Optimizer so that step() applies gradients
    averaged over all workers.

    Each gradient's push_pull starts from a hook as soon as backward has
    computed it, so communication overlaps the rest of backward; step()
    waits for them. Gradients are declared in the order of
    ``named_parameters`` (model.named_parameters(): input side first), which
    gives the layers the next forward pass needs first the highest
    priority. Call synchronize() yourself to work on the averaged gradients
    before step() (clipping), then step() inside skip_synchronize().

    Arguments:
        optimizer: the optimizer to wrap.
        named_parameters: (name, parameter) pairs, usually
            model.named_parameters(); names key the reductions.
        compression: Compression.none or Compression.fp16.
        backward_passes_per_step: backward passes (accumulating gradients
            locally) per step().
    """
    cls = type(optimizer.__class__.__name__, (optimizer.__class__,),
               dict(_DistributedOptimizer.__dict__))
    return cls(optimizer.param_groups, named_parameters, compression, backward_passes_per_step)


def broadcast_parameters(params, root_rank, prefix="Parameter."):
    """Copies root_rank's parameters to every worker, in place.

    ``params`` is model.state_dict() (a dict: sent in sorted name order),
    model.named_parameters() or a list of tensors. All broadcasts run
    concurrently; this returns when every one has completed.
    """
    if isinstance(params, dict):
        items = sorted(params.items(), key=lambda kv: kv[0])
    else:
        items = [p if isinstance(p, tuple) else (None, p) for p in params]
    started = []
    try:
        for i, (name, p) in enumerate(items):
            if not torch.is_tensor(p):
                raise TypeError("gobps: broadcast_parameters: %r is a %s, not a tensor" % (name, type(p).__name__))
            t = p.detach()
            if not t.is_contiguous():
                t = t.contiguous()
            key = prefix + (name if name is not None else "noname.%d" % i)
            started.append((broadcast_async_inplace(t, root_rank, key), p, t))
    finally:
        _grad.wait_all([h for h, _, _ in started])
    with torch.no_grad():
        for _, p, t in started:
            if t.data_ptr() != p.data_ptr():
                p.copy_(t)


def broadcast_object(obj, root_rank=0, name=None):
    """Returns root_rank's ``obj`` (any picklable object) on every worker."""
    name = "BroadcastObject." + (name or "object")
    root = rank() == root_rank
    if root:
        payload = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
        length = torch.tensor([len(payload)], dtype=torch.int64)
    else:
        length = torch.zeros(1, dtype=torch.int64)
    broadcast_(length, root_rank, name + ".length")
    n = int(length[0])
    # Tensors are declared with their size: round it up to a power of two
    # so that objects of similar size share one declaration.
    cap = 64
    while cap < n:
        cap *= 2
    buf = torch.zeros(cap, dtype=torch.uint8)
    if root and n:
        buf[:n] = torch.frombuffer(bytearray(payload), dtype=torch.uint8)
    broadcast_(buf, root_rank, "%s.data.%d" % (name, cap))
    if root:
        return obj
    return pickle.loads(buf[:n].numpy().tobytes())


def _create_state(optimizer):
    """Creates the state of an optimizer that has none yet, as byteps does:
    one step of the wrapped optimizer on zero gradients, without any
    push_pull. Unlike byteps, the parameters and gradients are put back
    as they were (a zero-gradient step still moves parameters where weight
    decay is set)."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    saved = []
    with torch.no_grad():
        for p in params:
            saved.append((p, p.detach().clone(), p.grad))
            p.grad = torch.zeros_like(p, memory_format=torch.contiguous_format)
    try:
        plain = getattr(optimizer, "_plain_step", None)
        if plain is not None:  # DistributedOptimizer, CrossBarrier: no push_pulls
            plain()
        else:
            optimizer.step()
    finally:
        with torch.no_grad():
            for p, value, grad in saved:
                p.copy_(value)
                p.grad = grad


def broadcast_optimizer_state(optimizer, root_rank, prefix="Parameter."):
    """Makes every worker's optimizer state and hyper-parameters (the
    param_groups' options, such as lr) identical to root_rank's.

    An optimizer without any state yet (Adam before its first step, SGD
    with momentum) first gets one, as in byteps: a step of the wrapped
    optimizer on zero gradients, without push_pulls; unlike byteps, the
    parameters and gradients are then restored, so weight decay does not
    move them. Root then describes its state (which parameters have which
    entries, tensor shapes and dtypes, non-tensor values) with
    broadcast_object; the others shape their state to match, dropping
    entries root lacks, and every state tensor is broadcast in place.
    Works on a torch optimizer, a DistributedOptimizer or a CrossBarrier
    (after its synchronize).
    """
    if isinstance(optimizer, torch.optim.LBFGS):
        raise ValueError("cannot broadcast torch.optim.LBFGS state")
    sync = getattr(optimizer, "_gobps_quiesce", None)
    if sync is not None:  # CrossBarrier: no update in flight
        sync()
    if not any(len(v) for v in optimizer.state.values()):
        _create_state(optimizer)
    groups = optimizer.param_groups
    state = optimizer.state
    root = rank() == root_rank
    desc = None
    if root:
        desc = []
        for group in groups:
            opts = {k: v for k, v in group.items() if k != "params"}
            entries = []
            for p in group["params"]:
                es = []
                for k, v in (state[p].items() if p in state else ()):
                    if torch.is_tensor(v):
                        es.append((k, True, (v.dtype, tuple(v.shape), v.device.type)))
                    else:
                        es.append((k, False, v))
                entries.append(es)
            desc.append((opts, entries))
    desc = broadcast_object(desc, root_rank, name=prefix + "optimizer_state")
    if len(desc) != len(groups):
        raise ValueError("gobps: broadcast_optimizer_state: rank %d's optimizer has %d parameter groups, "
                         "this one %d" % (root_rank, len(desc), len(groups)))
    tensors = []
    for gi, (group, (opts, entries)) in enumerate(zip(groups, desc)):
        params = group["params"]
        if len(entries) != len(params):
            raise ValueError("gobps: broadcast_optimizer_state: parameter group %d has %d parameters on "
                             "rank %d, %d here" % (gi, len(entries), root_rank, len(params)))
        if not root:
            for k, v in opts.items():
                group[k] = v
        for pi, (p, es) in enumerate(zip(params, entries)):
            if not root:
                old = state[p] if p in state else {}
                new = collections.OrderedDict()
                for k, is_tensor, v in es:
                    if is_tensor:
                        dtype, shape, device = v
                        # On root's kind of device: this parameter's
                        # device if root's is a GPU (Adam keeps its step
                        # count on the CPU even for CUDA parameters).
                        device = p.device if device == "cuda" and p.device.type == "cuda" else torch.device("cpu")
                        t = old.get(k)
                        if not (torch.is_tensor(t) and t.dtype == dtype and tuple(t.shape) == shape
                                and t.device == device and t.is_contiguous()):
                            t = torch.empty(shape, dtype=dtype, device=device)
                        new[k] = t
                    else:
                        new[k] = v
                if new:
                    state[p] = dict(new)
                elif p in state:
                    del state[p]
            for k, is_tensor, _ in es:
                if is_tensor:
                    tensors.append(("%soptimizer.%d.%d.%s" % (prefix, gi, pi, k), state[p][k]))
    broadcast_parameters(tensors, root_rank, prefix="")
