"""DistributedDataParallel: byteps.torch.parallel's module wrapper.

Usage, one process per worker (``bpsrun --local -np N ...``)::

    import gobps.torch as bps
    from gobps.torch.parallel import DistributedDataParallel as DDP
    bps.init()
    model = DDP(model, device_ids=[bps.local_rank()])  # broadcasts rank 0's state
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)  # a plain optimizer
    for data, target in loader:
        optimizer.zero_grad()
        loss_fn(model(data), target).backward()   # averages the gradients
        optimizer.step()

What it does, as byteps's does:

- At construction it declares one gradient per parameter, in model order
  (``module.named_parameters()``: the layers nearest the input get the
  highest priority), and broadcasts rank 0's ``module.state_dict()``
  (parameters and buffers) to every worker.
- With ``broadcast_buffers`` (the default), every forward first broadcasts
  rank 0's buffers (BatchNorm statistics) to every worker.
- A hook on each parameter's gradient accumulator starts that gradient's
  push_pull (an average over workers, in place in ``p.grad``) as soon as
  backward has computed it, so communication overlaps the rest of
  backward.
- When backward returns, every gradient is averaged: the first hook of a
  backward pass queues a callback that runs at the end of that pass,
  starts the push_pulls of parameters this pass did not reach (unused
  branches: their current gradient, zeros if none, as byteps) and waits
  for all of them. byteps counts hooks instead and needs ``synchronize()``
  called by hand when a pass skips parameters; here ``synchronize()`` is
  accepted and returns at once once the pass is done.
- ``no_sync()``: backward passes inside it accumulate gradients locally;
  the first pass after it averages the sum.

Differences: ``device_ids`` may be omitted (CPU modules); the averaging
scales by 1/size before the push and lets the servers sum (byteps divides
after the pull), which gives the same result within float rounding.
"""

from contextlib import contextmanager

import torch
from torch.nn.modules import Module

from gobps.torch import _grad, broadcast_parameters
from gobps.torch.compression import Compression


def _device_index(d):
    if isinstance(d, bool):
        raise ValueError("gobps: DistributedDataParallel: device_ids: %r is not a device" % (d,))
    if isinstance(d, int):
        return d
    if isinstance(d, (str, torch.device)):
        return torch.device(d).index
    raise ValueError("gobps: DistributedDataParallel: device_ids: %r is not a device "
                     "(want an int, a string or a torch.device)" % (d,))


class DistributedDataParallel(Module):
    """Wraps ``module`` so that its gradients are averaged over all workers
    by the end of every backward pass (see the module documentation).

    Arguments:
        module: the model; every parameter and buffer it will ever have must
            be registered by now.
        device_ids: None (CPU), or a list of exactly one device (the GPU
            this process uses), as byteps requires.
        broadcast_buffers: broadcast rank 0's buffers at the start of every
            forward.
        compression: Compression.none or Compression.fp16 for the
            gradients' push_pulls.
    """

    def __init__(self, module, device_ids=None, broadcast_buffers=True, compression=Compression.none):
        super(DistributedDataParallel, self).__init__()
        if not isinstance(module, Module):
            raise TypeError("gobps: DistributedDataParallel: want a torch.nn.Module, got %s"
                            % type(module).__name__)
        if device_ids is not None:
            device_ids = list(device_ids)
            if len(device_ids) != 1:
                raise ValueError("gobps: DistributedDataParallel: device_ids must hold exactly one device "
                                 "(one process per GPU), got %r" % (device_ids,))
            device_ids = [_device_index(d) for d in device_ids]
        self.device_ids = device_ids
        self.module = module
        self.broadcast_buffers = broadcast_buffers
        self.require_forward_param_sync = broadcast_buffers
        self.modules_buffers = [list(module.buffers())]
        self._compression = compression
        self._require_backward_grad_sync = True
        named = [(name, p) for name, p in module.named_parameters() if p.requires_grad]
        # Declares every gradient, in model order (the priority order).
        self._reducer = _grad.Reducer(named, compression)
        self._handles = {}  # p -> Pending, for this backward pass
        self._callback_queued = False
        self._grad_accs = []
        for _, p in named:
            # The gradient accumulator of p runs once p.grad holds this
            # pass's gradient: the earliest moment to send it.
            grad_acc = p.expand_as(p).grad_fn.next_functions[0][0]
            grad_acc.register_hook(self._make_hook(p))
            self._grad_accs.append(grad_acc)
        # Every worker starts from rank 0's parameters and buffers.
        if len(module.state_dict()) > 0:
            broadcast_parameters(module.state_dict(), root_rank=0)

    @contextmanager
    def no_sync(self):
        """A context in which backward passes accumulate gradients locally,
        without push_pulls; the first backward pass after it averages the
        accumulated gradients."""
        old = self._require_backward_grad_sync
        self._require_backward_grad_sync = False
        try:
            yield
        finally:
            self._require_backward_grad_sync = old

    def forward(self, *inputs, **kwargs):
        if self.require_forward_param_sync:
            self._sync_params()
        return self.module(*inputs, **kwargs)

    def _sync_params(self):
        if self.broadcast_buffers and len(self.modules_buffers[0]) > 0:
            with torch.no_grad():
                broadcast_parameters(list(self.module.named_buffers()), root_rank=0)

    def _make_hook(self, p):
        def hook(*ignore):
            if not self._require_backward_grad_sync:
                return
            if p in self._handles:
                raise AssertionError(
                    "gobps: DistributedDataParallel: the gradient of %s was computed twice before its "
                    "average was taken; call synchronize() after a backward pass that failed"
                    % self._reducer.name(p))
            self._handles[p] = self._reducer.start(p)
            if not self._callback_queued:
                # Runs when this backward pass is over.
                self._callback_queued = True
                torch.autograd.Variable._execution_engine.queue_callback(self._backward_done)
        return hook

    def _backward_done(self):
        self._callback_queued = False
        self.synchronize()

    def synchronize(self):
        """Averages the gradients of this backward pass: starts the
        push_pulls of the parameters it did not reach and waits for all.
        Runs by itself when a backward pass ends; calling it again returns
        at once."""
        if not self._handles:
            return
        try:
            for p in self._reducer.order:
                if p not in self._handles:
                    self._handles[p] = self._reducer.start(p)
        finally:
            pending = [(p, self._handles[p]) for p in self._reducer.order if p in self._handles]
            self._handles.clear()
        self._reducer.wait(pending)
