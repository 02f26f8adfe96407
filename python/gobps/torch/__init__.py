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

Differences from byteps.torch: CPU tensors only (GPU staging is future
work); ``declare`` needs the tensor, since gobps declares dtype and size
up front; the ``version``, ``priority`` and ``staleness`` arguments are
accepted and ignored (priorities come from the declaration order, which
DistributedOptimizer makes the model's order); asynchronous training
(BYTEPS_ENABLE_ASYNC) is not supported.
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
from gobps.torch import ops
from gobps.torch.compression import Compression
from gobps.torch.ops import (broadcast_, broadcast_async_inplace, declare,
                             init, local_rank, local_size, poll, push_pull,
                             push_pull_async, push_pull_async_inplace,
                             push_pull_inplace, rank, resume, shutdown, size,
                             suspend, synchronize)

__all__ = [
    "init", "shutdown", "suspend", "resume", "size", "local_size", "rank",
    "local_rank", "declare", "push_pull", "push_pull_async",
    "push_pull_async_inplace", "push_pull_inplace", "poll", "synchronize",
    "broadcast_", "broadcast_async_inplace", "DistributedOptimizer",
    "broadcast_parameters", "broadcast_optimizer_state", "broadcast_object",
    "Compression", "GobpsError", "NotInitializedError", "InvalidArgumentError",
    "UnsupportedDTypeError", "ConfigError", "JobFailedError",
    "LibraryNotFoundError", "NotSupportedError",
]


def _wait_all(handles):
    """Synchronizes every handle, even after one fails, so that no tensor is
    still being written when this returns; then raises the first error."""
    first = None
    for h in handles:
        try:
            synchronize(h)
        except BaseException as e:  # noqa: B902 (KeyboardInterrupt too)
            if first is None:
                first = e
    if first is not None:
        raise first


class _DistributedOptimizer(torch.optim.Optimizer):
    def __init__(self, params, named_parameters, compression, backward_passes_per_step=1):
        super(self.__class__, self).__init__(params)
        self._compression = compression
        in_groups = [p for group in self.param_groups for p in group["params"]]
        if named_parameters is not None:
            named_parameters = list(named_parameters)
        else:
            named_parameters = [("push_pull.noname.%d" % i, p) for i, p in enumerate(in_groups)]
        if any(not isinstance(p, tuple) or len(p) != 2 for p in named_parameters):
            raise ValueError("named_parameters should be a sequence of tuples (name, parameter), "
                             "usually produced by model.named_parameters().")
        seen, dups = set(), set()
        for name, _ in named_parameters:
            if name in seen:
                dups.add(name)
            seen.add(name)
        if dups:
            raise ValueError("Parameter names in named_parameters must be unique. Found duplicates: %s"
                             % ", ".join(sorted(dups)))
        names = {}
        for name, p in named_parameters:
            names.setdefault(p, name)
        unnamed = [p for p in in_groups if p not in names]
        if unnamed:
            raise ValueError("named_parameters was specified, but %d of the optimizer's parameters "
                             "are not in it" % len(unnamed))
        in_opt = set(in_groups)
        # Model order: the order of named_parameters (registration order,
        # input side first for the usual model), restricted to what this
        # optimizer updates.
        self._order, ordered = [], set()
        for _, p in named_parameters:
            if p in in_opt and p.requires_grad and id(p) not in ordered:
                self._order.append(p)
                ordered.add(id(p))
        self._parameter_names = {p: names[p] for p in self._order}
        self.backward_passes_per_step = backward_passes_per_step
        self._push_pull_delay = {p: backward_passes_per_step for p in self._order}
        self._handles = {}  # p -> (handle or None, ctx, tensor sent)
        self._grad_accs = []
        self._should_sync = True
        self._size = size()
        # Declare every gradient now, in model order: the engine gives
        # earlier declarations higher priority, so the layers nearest the
        # input, which the next forward pass needs first, go first; and
        # every worker declares the same tensors in the same order.
        for p in self._order:
            wire, _ = compression.compress(torch.empty(0, dtype=p.dtype))
            declare("Gradient." + self._parameter_names[p], torch.empty(p.numel(), dtype=wire.dtype))
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

    def _push_pull_grad_async(self, p):
        if p.grad is None:  # not used in this step's graph: contribute zeros
            p.grad = torch.zeros_like(p, memory_format=torch.contiguous_format)
        # Average as byteps does: scale by 1/size before the push (in
        # torch's vectorised kernel, before any fp16 cast, which also keeps
        # the fp16 sum from overflowing) and let the servers sum.
        if self._size > 1:
            p.grad.mul_(1.0 / self._size)
        compressed, ctx = self._compression.compress(p.grad)
        if not compressed.is_contiguous():
            compressed = compressed.contiguous()
        handle = ops.push_pull_async_inplace(compressed, average=False,
                                             name="Gradient." + self._parameter_names[p])
        return handle, ctx, compressed

    def _make_hook(self, p):
        def hook(*ignore):
            if p in self._handles and self._handles[p][0] is not None:
                if self._push_pull_delay[p] <= 0:
                    raise AssertionError(
                        "Gradients were computed more than backward_passes_per_step times before "
                        "call to step(). Increase backward_passes_per_step to accumulate gradients "
                        "locally.")
            assert not p.grad.requires_grad
            assert self._push_pull_delay[p] > 0
            entry = (None, None, None)
            self._push_pull_delay[p] -= 1
            if self._push_pull_delay[p] == 0:
                entry = self._push_pull_grad_async(p)
            self._handles[p] = entry
        return hook

    def synchronize(self):
        """Waits for every gradient's push_pull (starting those whose hook
        has not fired, e.g. of parameters unused in this step) and leaves
        the averaged gradients in p.grad."""
        try:
            for p in self._order:
                if self._handles.get(p, (None,))[0] is None:
                    self._handles[p] = self._push_pull_grad_async(p)
        finally:
            pending = [(p, self._handles[p]) for p in self._order if p in self._handles]
            self._handles.clear()
        _wait_all([h for _, (h, _, _) in pending if h is not None])
        for p, (_, ctx, sent) in pending:
            self._push_pull_delay[p] = self.backward_passes_per_step
            g = self._compression.decompress(sent, ctx)
            if g is not p.grad:
                with torch.no_grad():
                    p.grad.copy_(g)

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
        _wait_all([h for h, _, _ in started])
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


def broadcast_optimizer_state(optimizer, root_rank, prefix="Parameter."):
    """Makes every worker's optimizer state and hyper-parameters (the
    param_groups' options, such as lr) identical to root_rank's.

    Root describes its state (which parameters have which entries, tensor
    shapes and dtypes, non-tensor values) with broadcast_object; the others
    shape their state to match, dropping entries root lacks, and then every
    state tensor is broadcast in place. An optimizer whose state is still
    empty on root leaves every worker with an empty state; no step is
    taken to create one.
    """
    if isinstance(optimizer, torch.optim.LBFGS):
        raise ValueError("cannot broadcast torch.optim.LBFGS state")
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
                        es.append((k, True, (v.dtype, tuple(v.shape))))
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
                        dtype, shape = v
                        t = old.get(k)
                        if not (torch.is_tensor(t) and t.dtype == dtype and tuple(t.shape) == shape
                                and t.device.type == "cpu" and t.is_contiguous()):
                            t = torch.empty(shape, dtype=dtype)
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
