"""Crossing the global barrier: byteps.torch.cross_barrier's CrossBarrier.

With DistributedOptimizer, step() waits for every gradient's average and
then updates every parameter: the next forward pass starts only when the
whole model is updated (a global barrier between iterations). CrossBarrier
removes it (see byteps's docs/cross-barrier.md and the paper
https://dl.acm.org/citation.cfm?id=3359642):

- backward hooks start each gradient's push_pull as soon as autograd has
  computed it, as DistributedOptimizer does;
- a background thread applies the optimizer to each parameter as soon as
  its averaged gradient is back, one parameter at a time, in priority
  order (the model's order, input side first: the order the next forward
  pass needs them and the engine sends them), then zeroes that gradient;
- step() only starts the push_pulls of parameters backward did not reach
  and returns without waiting;
- a forward pre-hook on every module that owns parameters makes that
  module's forward wait for its own parameters' updates only, so the next
  forward pass of the first layers runs while the later layers' gradients
  are still being averaged and applied.

Use it as byteps's example does (this module also exports init, rank,
broadcast_parameters, ... so that it can stand in for gobps.torch)::

    import gobps.torch.cross_barrier as bps
    bps.init()
    optimizer = bps.CrossBarrier(model, torch.optim.SGD(model.parameters(), lr=0.01),
                                 named_parameters=model.named_parameters(),
                                 num_steps=steps)
    bps.broadcast_parameters(model.state_dict(), root_rank=0)
    bps.broadcast_optimizer_state(optimizer, root_rank=0)
    for data, target in loader:
        optimizer.zero_grad()
        loss_fn(model(data), target).backward()
        optimizer.step()
    optimizer.synchronize()   # every update applied (the num_steps-th step does it too)

What differs from byteps: the optimizer's own step() is applied to one
parameter at a time (its hyper-parameters as they were when that
gradient's push_pull started), so every torch optimizer whose update is
per-parameter works the same: SGD, Adam, AdamW, RMSprop and Adagrad
(byteps re-implements SGD, Adam and RMSprop); updates are applied in
priority order rather than in completion order; ``synchronize()`` waits
for every update; a failed push_pull is raised by the next forward,
step() or synchronize() rather than lost in a thread; broadcast_optimizer_
state does not count as a training step. Every parameter must belong to a
module of ``model`` and be used only inside that module's forward: its
forward pre-hook is what waits for the parameter's update.
"""

import atexit
import threading

import torch

from gobps._lib import GobpsError, NotSupportedError
from gobps.torch import (Compression, _DistributedOptimizer,  # noqa: F401 (byteps's names)
                         broadcast_object, broadcast_optimizer_state,
                         broadcast_parameters, byteps_push_pull, init,
                         local_rank, local_size, poll, push_pull, rank,
                         shutdown, size, synchronize)
from gobps.torch import DistributedOptimizer as _bps_DistributedOptimizer  # noqa: F401
from gobps.torch import _grad

__all__ = [
    "CrossBarrier", "init", "shutdown", "size", "local_size", "rank", "local_rank", "poll",
    "synchronize", "push_pull", "byteps_push_pull", "broadcast_parameters",
    "broadcast_optimizer_state", "broadcast_object", "Compression",
]

# Optimizers whose step updates each parameter from its own gradient and
# state only, so that stepping one parameter at a time is exact.
SUPPORTED_OPTIMIZERS = (torch.optim.SGD, torch.optim.Adam, torch.optim.AdamW, torch.optim.RMSprop,
                        torch.optim.Adagrad)

# How long a wait sleeps between checks that the update thread is alive
# (and lets Ctrl-C in).
_WAIT_SLICE = 0.5


class _CrossBarrier(torch.optim.Optimizer):
    """The optimizer CrossBarrier returns. It is a torch.optim.Optimizer
    whose param_groups, state and defaults are the wrapped optimizer's (LR
    schedulers work on it).

    Locking: ``_cond`` guards ``_inflight``, ``_next`` and ``_error``. The
    update thread runs ``_run`` and touches only parameters in
    ``_inflight``; everything else runs in the training thread.
    """

    def __init__(self, model, optimizer, named_parameters=None, compression=Compression.none,
                 backward_passes_per_step=1, num_steps=10 ** 6):
        # Not Optimizer.__init__: the state and groups are the wrapped
        # optimizer's (see the properties below).
        self.__dict__["_opt"] = optimizer
        if not isinstance(model, torch.nn.Module):
            raise TypeError("gobps: CrossBarrier: model must be a torch.nn.Module, got %s" % type(model).__name__)
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError("gobps: CrossBarrier: optimizer must be a torch.optim.Optimizer, got %s"
                            % type(optimizer).__name__)
        if getattr(type(optimizer), "_gobps_distributed", False) or isinstance(optimizer, _CrossBarrier):
            raise ValueError("gobps: CrossBarrier: pass the torch optimizer itself, not a DistributedOptimizer "
                             "or CrossBarrier: CrossBarrier starts the push_pulls")
        if not isinstance(optimizer, SUPPORTED_OPTIMIZERS):
            raise NotSupportedError(
                "gobps: CrossBarrier: %s is not supported: CrossBarrier updates one parameter at a time, which is "
                "exact only for optimizers that update each parameter from its own gradient and state (%s); use "
                "DistributedOptimizer for others" % (type(optimizer).__name__,
                                                     ", ".join(c.__name__ for c in SUPPORTED_OPTIMIZERS)))
        for what, v in (("backward_passes_per_step", backward_passes_per_step), ("num_steps", num_steps)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError("gobps: CrossBarrier: %s must be an int >= 1, got %r" % (what, v))
        params = [p for group in optimizer.param_groups for p in group["params"]]
        named = _grad.named_order(params, named_parameters, "CrossBarrier")
        self._group_of = {}
        for gi, group in enumerate(optimizer.param_groups):
            for p in group["params"]:
                self._group_of.setdefault(p, gi)
        # Which module's forward needs which parameter.
        owned = {}
        for mod in model.modules():
            for p in mod.parameters(recurse=False):
                owned.setdefault(p, mod)
        missing = [name for name, p in named if p not in owned]
        if missing:
            raise ValueError("gobps: CrossBarrier: %s %s in the optimizer but in no module of the model: "
                             "CrossBarrier could not tell when a forward pass needs %s"
                             % (", ".join(missing), "is" if len(missing) == 1 else "are",
                                "it" if len(missing) == 1 else "them"))
        # Declares every gradient, in model order (the priority order).
        self._reducer = _grad.Reducer(named, compression)
        self._order = self._reducer.order
        self._passes = backward_passes_per_step
        self._delay = {p: backward_passes_per_step for p in self._order}
        self._pushed = set()  # pushed since the last step()
        self._steps = 0
        self._final_step = num_steps
        self._cond = threading.Condition()
        self._inflight = {}  # p -> (Pending, the group's options when it started)
        self._next = 0  # index in _order of the next update
        self._error = None
        self._stop = False
        # A copy of the optimizer object whose param_groups the update
        # thread narrows to one parameter; it shares the wrapped
        # optimizer's state (see _apply).
        self._shadow = object.__new__(type(optimizer))
        self._hooks = []
        self._grad_accs = []
        for p in self._order:
            if p.grad is None:
                p.grad = torch.zeros_like(p, memory_format=torch.contiguous_format)
            # Before autograd adds a gradient into p.grad: refuse one that
            # would land in a gradient being reduced.
            self._hooks.append(p.register_hook(self._make_guard(p)))
            # After: p.grad holds this pass's gradient; send it.
            grad_acc = p.expand_as(p).grad_fn.next_functions[0][0]
            self._hooks.append(grad_acc.register_hook(self._make_hook(p)))
            self._grad_accs.append(grad_acc)
        by_module = {}
        for p in self._order:
            by_module.setdefault(owned[p], []).append(p)
        for mod, ps in by_module.items():
            self._hooks.append(mod.register_forward_pre_hook(self._make_pre_hook(ps)))
        self._thread = None
        if self._order:
            self._thread = threading.Thread(target=self._run, name="gobps-cross-barrier", daemon=True)
            self._thread.start()
            atexit.register(self._close_at_exit)

    # The wrapped optimizer's attributes.

    @property
    def param_groups(self):
        return self._opt.param_groups

    @property
    def state(self):
        return self._opt.state

    @property
    def defaults(self):
        return self._opt.defaults

    def __getattr__(self, name):
        opt = self.__dict__.get("_opt")
        if opt is None:
            raise AttributeError(name)
        return getattr(opt, name)

    def __repr__(self):
        return "CrossBarrier(%r)" % (self._opt,)

    def __getstate__(self):
        raise TypeError("gobps: a CrossBarrier cannot be pickled; save its state_dict()")

    # Training.

    def _raise_error(self):
        """Raises the failure of the update thread, if any. REQUIRES: _cond."""
        e = self._error
        if e is not None:
            cls = type(e) if isinstance(e, GobpsError) else GobpsError
            raise cls("gobps: CrossBarrier: a gradient's push_pull or update failed: %s" % (e,)) from e

    def _check(self):
        with self._cond:
            self._raise_error()

    def _make_guard(self, p):
        def guard(grad):
            self._check()
            if p in self._pushed:
                raise AssertionError(
                    "gobps: CrossBarrier: the gradient of %s was computed more than backward_passes_per_step "
                    "times before step(); increase backward_passes_per_step to accumulate gradients locally"
                    % self._reducer.name(p))
            if p in self._inflight:
                raise AssertionError(
                    "gobps: CrossBarrier: %s got a gradient while its previous one was still being averaged: it "
                    "is used outside the forward of the module that owns it, whose pre-hook waits for its update"
                    % self._reducer.name(p))
            return None
        return guard

    def _make_hook(self, p):
        def hook(*ignore):
            self._delay[p] -= 1
            if self._delay[p] == 0:
                self._push(p)
        return hook

    def _push(self, p):
        group = self._opt.param_groups[self._group_of[p]]
        opts = {k: v for k, v in group.items() if k != "params"}
        pending = self._reducer.start(p)
        self._pushed.add(p)
        self._delay[p] = self._passes
        with self._cond:
            self._inflight[p] = (pending, opts)
            self._cond.notify_all()

    def _wait(self, done, what):
        """Waits, under _cond, until done() holds; raises the update
        thread's failure, or an error if that thread is gone."""
        with self._cond:
            while True:
                self._raise_error()
                if done():
                    return
                if self._thread is None or not self._thread.is_alive():
                    raise GobpsError("gobps: CrossBarrier: %s: the update thread has stopped (closed?)" % what)
                self._cond.wait(_WAIT_SLICE)

    def _make_pre_hook(self, params):
        def pre_hook(mod, inputs):
            self._wait(lambda: not any(p in self._inflight for p in params), "forward")
        return pre_hook

    def step(self, closure=None):
        """Ends this training step: runs closure (if any), starts the
        push_pulls of parameters that backward did not reach (their
        current gradient, as DistributedOptimizer does) and returns without
        waiting for the updates. The num_steps-th call waits for every
        update (synchronize)."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self._check()
        for p in self._order:
            if p not in self._pushed:
                self._push(p)
        self._pushed.clear()
        self._steps += 1
        if self._steps == self._final_step:
            self.synchronize()
        return loss

    def synchronize(self):
        """Waits until every step's updates have been applied."""
        if self._pushed:
            raise AssertionError("gobps: CrossBarrier.synchronize: backward has started push_pulls of a step that "
                                 "step() has not ended; call step() first")
        if self._thread is None:
            return
        self._wait(lambda: not self._inflight, "synchronize")

    # broadcast_optimizer_state's entry points.
    _gobps_quiesce = synchronize

    def _plain_step(self):
        """The wrapped optimizer's own step, without push_pulls."""
        return type(self._opt).step(self._opt)

    def zero_grad(self, set_to_none=False):
        """Zeroes the gradients of parameters whose update is not in flight
        (the update thread zeroes the others once it has applied them)."""
        with self._cond:
            busy = set(self._inflight)
        managed = self._reducer.index
        for group in self._opt.param_groups:
            for p in group["params"]:
                if p in busy or p.grad is None:
                    continue
                if set_to_none and p not in managed:
                    p.grad = None
                else:
                    p.grad.detach_()
                    p.grad.zero_()

    def state_dict(self):
        """The wrapped optimizer's state_dict, once every finished step's
        updates are applied."""
        if not self._pushed:
            self.synchronize()
        return self._opt.state_dict()

    def load_state_dict(self, state_dict):
        self.synchronize()
        self._opt.load_state_dict(state_dict)

    def add_param_group(self, param_group):
        raise NotSupportedError("gobps: CrossBarrier: parameters cannot be added after construction (their gradients "
                                "would be neither declared nor hooked); wrap an optimizer that has every group")

    def close(self):
        """Waits for the updates in flight (if the step is complete), stops
        the update thread and removes the hooks. Runs at exit."""
        try:
            if not self._pushed:
                self.synchronize()
        finally:
            with self._cond:
                self._stop = True
                self._cond.notify_all()
            if self._thread is not None:
                self._thread.join(10 * _WAIT_SLICE)
            for h in self._hooks:
                h.remove()
            self._hooks = []

    def _close_at_exit(self):
        try:
            self.close()
        except BaseException:  # noqa: B902 (leaving anyway)
            pass

    # The update thread.

    def _run(self):
        n = len(self._order)
        while True:
            with self._cond:
                while True:
                    p = self._order[self._next]
                    if p in self._inflight:
                        pending, opts = self._inflight[p]
                        break
                    if self._stop:
                        return
                    self._cond.wait()
            try:
                synchronize(pending.handle)
                self._reducer.finish(p, pending)
                self._apply(p, opts)
            except BaseException as e:  # noqa: B902 (reported to the training thread)
                self._fail(e)
                return
            with self._cond:
                del self._inflight[p]
                self._next = (self._next + 1) % n
                self._cond.notify_all()

    def _apply(self, p, opts):
        """One step of the wrapped optimizer on p alone."""
        shadow = self._shadow
        shadow.__dict__.update(self._opt.__dict__)  # the current state object (load_state_dict replaces it)
        # An LR scheduler replaces the optimizer's step with a wrapper bound
        # to the optimizer itself: call the class's.
        shadow.__dict__.pop("step", None)
        opts = dict(opts)
        opts["params"] = [p]
        shadow.param_groups = [opts]
        type(shadow).step(shadow)
        with torch.no_grad():
            p.grad.zero_()

    def _fail(self, e):
        """Records the failure, waits for the push_pulls still in flight
        (so no gradient is written any more) and wakes every waiter."""
        with self._cond:
            if self._error is None:
                self._error = e
            rest = [pd for pd, _ in self._inflight.values()]
        for pd in rest:
            try:
                synchronize(pd.handle)
            except BaseException:  # noqa: B902
                pass
        with self._cond:
            self._inflight.clear()
            self._cond.notify_all()


def CrossBarrier(model, optimizer, named_parameters=None, compression=Compression.none, backward_passes_per_step=1,
                 num_steps=10 ** 6):
    """Wraps a torch optimizer for barrier-free training of ``model`` (see
    the module documentation).

    Arguments:
        model: the torch.nn.Module being trained; its modules get forward
            pre-hooks that wait for their parameters' updates.
        optimizer: a torch.optim SGD, Adam, AdamW, RMSprop or Adagrad over
            (some of) the model's parameters; not a DistributedOptimizer.
        named_parameters: (name, parameter) pairs, usually
            model.named_parameters(); names key the push_pulls and give the
            priority order.
        compression: Compression.none or Compression.fp16.
        backward_passes_per_step: backward passes (accumulating gradients
            locally) per step().
        num_steps: the step() call that waits for every update before
            returning (byteps's end of training).
    """
    return _CrossBarrier(model, optimizer, named_parameters, compression, backward_passes_per_step, num_steps)
