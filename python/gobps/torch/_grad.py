"""Per-parameter gradient averaging, shared by DistributedOptimizer,
parallel.DistributedDataParallel and cross_barrier.CrossBarrier.

Each of them names the parameters it reduces, declares one gradient per
parameter at construction (in model order, which is the priority order:
the engine sends earlier declarations first) and, from a backward hook,
starts an in-place push_pull of each gradient as soon as autograd has
accumulated it. ``Reducer`` holds what is common: the names, the
declarations, starting one gradient's push_pull and putting the averaged
gradient back in ``p.grad``.
"""

import torch

from gobps.torch import ops


def wait_all(handles):
    """Synchronizes every handle, even after one fails, so that no tensor is
    still being written when this returns; then raises the first error."""
    first = None
    for h in handles:
        try:
            ops.synchronize(h)
        except BaseException as e:  # noqa: B902 (KeyboardInterrupt too)
            if first is None:
                first = e
    if first is not None:
        raise first


def named_order(params, named_parameters, what):
    """Returns [(name, parameter)] for the parameters in ``params`` that
    require a gradient, in the order of ``named_parameters`` (model order),
    each once. ``named_parameters`` is a sequence of (name, parameter)
    tuples or None (the parameters are then named by position,
    "push_pull.noname.<i>", as byteps does). Raises ValueError for
    malformed, duplicate or missing names."""
    params = list(params)
    if named_parameters is not None:
        named_parameters = list(named_parameters)
    else:
        named_parameters = [("push_pull.noname.%d" % i, p) for i, p in enumerate(params)]
    if any(not isinstance(p, tuple) or len(p) != 2 for p in named_parameters):
        raise ValueError("%s: named_parameters should be a sequence of tuples (name, parameter), "
                         "usually produced by model.named_parameters()." % what)
    seen, dups = set(), set()
    for name, _ in named_parameters:
        if name in seen:
            dups.add(name)
        seen.add(name)
    if dups:
        raise ValueError("%s: parameter names in named_parameters must be unique. Found duplicates: %s"
                         % (what, ", ".join(sorted(dups))))
    names = {}
    for name, p in named_parameters:
        names.setdefault(p, name)
    unnamed = [p for p in params if p not in names]
    if unnamed:
        raise ValueError("%s: named_parameters was specified, but %d of the optimizer's parameters "
                         "are not in it" % (what, len(unnamed)))
    wanted = set(params)
    out, done = [], set()
    for _, p in named_parameters:
        if p in wanted and p.requires_grad and p not in done:
            out.append((names[p], p))
            done.add(p)
    return out


class Pending(object):
    """One gradient's push_pull in flight: its handle, the compression
    context and the tensor that is being reduced in place."""

    __slots__ = ("handle", "ctx", "sent")

    def __init__(self, handle, ctx, sent):
        self.handle, self.ctx, self.sent = handle, ctx, sent


class Reducer(object):
    """Averages the gradients of a fixed, ordered list of parameters over
    all workers: one in-place push_pull per parameter, keyed
    ``prefix + name``.

    The constructor declares every gradient in the given order, which makes
    that order the priority order (the first parameter's push_pull goes
    first) and requires every worker to build its Reducer from the same
    names in the same order.

    Averaging is done as byteps does it: the gradient is scaled by 1/size
    before the push (before any fp16 cast, which keeps an fp16 sum from
    overflowing) and the servers sum.
    """

    def __init__(self, named, compression, prefix="Gradient."):
        self.order = [p for _, p in named]
        self.names = {p: name for name, p in named}
        self.index = {p: i for i, p in enumerate(self.order)}
        self.compression = compression
        self.prefix = prefix
        self.size = ops.size()
        for name, p in named:
            wire, _ = compression.compress(torch.empty(0, dtype=p.dtype))
            ops.declare(prefix + name, torch.empty(p.shape, dtype=wire.dtype))

    def name(self, p):
        return self.prefix + self.names[p]

    def start(self, p):
        """Starts averaging p.grad (zeros if p has no gradient) in place;
        returns its Pending."""
        if p.grad is None:  # not used in this step's graph: contribute zeros
            p.grad = torch.zeros_like(p, memory_format=torch.contiguous_format)
        if self.size > 1:
            p.grad.mul_(1.0 / self.size)
        compressed, ctx = self.compression.compress(p.grad)
        if not compressed.is_contiguous():
            compressed = compressed.contiguous()
        handle = ops.push_pull_async_inplace(compressed, average=False, name=self.name(p))
        return Pending(handle, ctx, compressed)

    def finish(self, p, pending):
        """Puts the averaged gradient of a completed (synchronized) push_pull
        into p.grad."""
        g = self.compression.decompress(pending.sent, pending.ctx)
        if g is not p.grad:
            with torch.no_grad():
                p.grad.copy_(g)

    def wait(self, pendings):
        """Waits for [(p, Pending)] (every one, even after a failure, then
        raises the first error) and puts the averages into the gradients."""
        wait_all([pd.handle for _, pd in pendings])
        for p, pd in pendings:
            self.finish(p, pd)
