"""Checks of the byteps.torch API beyond DistributedOptimizer, one per case,
run by cgo/torch_test.go as every worker of a bpsrun job (the way
torch_job.py's cases run):

    torch_compat_job.py CASE

Each worker exits non-zero naming what differed, or prints "CASE ok rank
R". Every reference is computed in the same process from the same seeds
(each worker can rebuild every worker's data).

    metrics       -np 2: push_pull of 0-dim tensors, byteps's other names,
                  get_pushpull_speed
    freshstate    -np 3: broadcast_optimizer_state on fresh optimizers
    ddp           -np 2: parallel.DistributedDataParallel
    crossbarrier  -np 2: cross_barrier.CrossBarrier trains as one process
    crossoverlap  -np 2: CrossBarrier's next forward overlaps the updates
"""

import copy
import os
import sys
import time

import torch

import gobps.torch as bps
from gobps.torch import _speed
from gobps.torch.cross_barrier import CrossBarrier
from gobps.torch.parallel import DistributedDataParallel as DDP
from torch_job import (CheckFailed, check, expect_raises, loss_fn, make_data,
                       make_model)

torch.set_num_threads(1)


def rel_diff(a, b):
    """max |a-b| / (1 + |b|)."""
    return float(((a.detach().double() - b.detach().double()).abs() / (1 + b.detach().double().abs())).max())


def compare_params(label, model, ref, tol):
    """Every parameter of model is within tol (relative) of ref's."""
    worst = 0.0
    for (name, p), q in zip(model.named_parameters(), ref.parameters()):
        d = rel_diff(p, q)
        worst = max(worst, d)
        check(d <= tol, "%s: %s differs from one process by %.3g (> %g)", label, name, d, tol)
    return worst


def shard(t, r, n):
    k = t.shape[0] // n
    return t[r * k:(r + 1) * k]


# ---------------------------------------------------------------- metrics and names


def check_meter():
    """The speed arithmetic, on a fake clock."""
    now = [0.0]
    m = _speed.Meter(window=10.0, clock=lambda: now[0], wall=lambda: 1000.0 + now[0])
    check(m.speed() == (0, -5.0), "empty meter: %s", m.speed())

    def at(t, f, *a):
        now[0] = t
        f(*a)
    at(0.0, m.started, 1, 1e6)
    at(0.5, m.started, 2, 2e6)
    at(0.7, m.started, 9, 0)  # moves nothing: not counted
    at(0.8, m.completed, 9)
    at(1.0, m.completed, 1)
    check(m.speed() == (1001000, 1.0), "one push_pull of 1 MB in 1 s: %s", m.speed())
    at(1.5, m.completed, 2)
    check(m.speed() == (1001500, 2.0), "3 MB over [0, 1.5]: %s", m.speed())
    at(3.0, m.started, 4, 5e6)
    at(3.1, m.discard, 4)  # failed: not counted
    at(5.0, m.started, 3, 1e6)
    at(6.0, m.completed, 3)
    at(6.0, m.completed, 3)  # twice: once
    want = 4e6 / 2.5 / 1e6
    check(m.speed() == (1006000, want), "4 MB in 2.5 busy s: %s, want %s", m.speed(), want)
    now[0] = 11.6  # push_pulls 1 and 2 ended more than 10 s ago
    check(m.speed() == (1006000, 1.0), "window: %s", m.speed())
    now[0] = 16.5
    check(m.speed() == (0, -5.0), "window empty again: %s", m.speed())


def case_metrics():
    check_meter()
    bps.init()
    n, r = bps.size(), bps.rank()
    check(bps.get_pushpull_speed() == (0, -5.0), "speed before any push_pull: %s", bps.get_pushpull_speed())
    # byteps's metric_average: a Python float in, the mean out.
    for name, val, want in [("avg_loss", 0.25 * (r + 1), 0.25 * (n + 1) / 2),
                            ("avg_accuracy", float(r), (n - 1) / 2)]:
        t = torch.tensor(val)
        out = bps.push_pull(t, name=name)
        check(out.dim() == 0 and out.dtype == torch.float32, "%s: shape %s dtype %s", name, tuple(out.shape), out.dtype)
        check(abs(out.item() - want) < 1e-7, "%s: %r, want %r", name, out.item(), want)
        check(t.item() == val, "%s: push_pull changed its input", name)
    # A 0-dim accumulated tensor (test_accuracy in byteps's mnist example).
    acc = torch.zeros(()) + torch.arange(4, dtype=torch.float32).sum() * (r + 1)
    out = bps.push_pull(acc, name="acc0")
    check(out.item() == 6.0 * (n + 1) / 2, "0-dim sum: %r", out.item())
    # float64, sums, in place, asynchronous.
    d = torch.tensor(1.5 * (r + 1), dtype=torch.float64)
    check(bps.push_pull(d, average=False, name="sum64").item() == 1.5 * n * (n + 1) / 2, "float64 sum")
    c = torch.tensor(r + 1, dtype=torch.int64)
    check(bps.push_pull_inplace(c, average=False, name="count") is c and c.item() == n * (n + 1) // 2,
          "int64 count: %r", c)
    expect_raises(bps.InvalidArgumentError, "cannot average", bps.push_pull, torch.tensor(3), name="intavg")
    h = bps.push_pull_async(torch.tensor(float(r)), name="async0")
    check(bps.synchronize(h).item() == (n - 1) / 2, "push_pull_async of a 0-dim tensor")
    # Differentiable: the gradient is the average of the gradients.
    x = torch.tensor(2.0 * (r + 1), requires_grad=True)
    (bps.push_pull(x, name="diff0") * (r + 1)).backward()
    check(abs(x.grad.item() - (n + 1) / 2) < 1e-7, "gradient through push_pull: %r", x.grad.item())

    # byteps.torch's other names.
    t = torch.full((3,), float(r))
    check(bps.synchronize(bps.byteps_push_pull(t, name="bpp")) is t and torch.equal(t, torch.full((3,), (n - 1) / 2)),
          "byteps_push_pull: %s", t)
    check(bps.ops.BytePSPushPull is bps.ops._PushPull, "BytePSPushPull")
    bps.ops.byteps_torch_set_num_grads(3)
    ts = [torch.full((2,), float(r + k)) for k in range(4)]
    counts = []
    handles = []
    for k, t in enumerate(ts):
        h, cnt = bps.push_pull_group_sync_inplace(t, name="group.%d" % k)
        handles.append(h)
        counts.append(cnt)
    check(counts == [1, 2, 3, 1], "push_pull_group_sync_inplace counts %s, want [1, 2, 3, 1]", counts)
    for h in handles:
        bps.synchronize(h)
    for k, t in enumerate(ts):
        check(torch.equal(t, torch.full((2,), (n - 1) / 2 + k)), "group push_pull %d: %s", k, t)
    expect_raises(bps.InvalidArgumentError, "count >= 0", bps.ops.byteps_torch_set_num_grads, -1)

    # get_pushpull_speed after push_pulls of a known size (a new meter,
    # so that the window holds these only).
    bps.ops._meter = _speed.Meter()
    check(bps.get_pushpull_speed() == (0, -5.0), "speed of a new meter: %s", bps.get_pushpull_speed())
    big = torch.ones(1 << 20)  # 4 MB
    w0, t0 = time.time(), time.perf_counter()
    for k in range(5):
        bps.push_pull_inplace(big, name="speed")
    t1, w1 = time.perf_counter(), time.time()
    ts_ms, mbps = bps.get_pushpull_speed()
    check(int(w0 * 1000) - 1 <= ts_ms <= int(w1 * 1000) + 1, "speed timestamp %d outside [%d, %d]",
          ts_ms, w0 * 1000, w1 * 1000)
    floor = 5 * 4 * (1 << 20) / (t1 - t0) / 1e6
    check(mbps >= floor, "speed %.1f MB/s is below the bytes over the elapsed time, %.1f MB/s", mbps, floor)
    if r == 0:
        print("metrics: push_pull speed %.1f MB/s (at least %.1f: 20 MB over %.1f ms)" % (mbps, floor, 1000 * (t1 - t0)))


# ---------------------------------------------------------------- fresh optimizer state


def zero_grad_step(opt, params):
    """What broadcast_optimizer_state does to a fresh optimizer: a step on
    zero gradients, parameters put back."""
    saved = [(p, p.detach().clone()) for p in params]
    for p in params:
        p.grad = torch.zeros_like(p)
    opt.step()
    with torch.no_grad():
        for p, v in saved:
            p.copy_(v)
            p.grad = None


def case_freshstate():
    bps.init()
    n, r = bps.size(), bps.rank()
    kinds = [
        ("adam", torch.optim.Adam, lambda q: dict(lr=0.01 * (q + 1), weight_decay=0.1 * (q + 1))),
        ("sgd", torch.optim.SGD, lambda q: dict(lr=0.1 * (q + 1), momentum=0.9, weight_decay=0.05 * (q + 1))),
    ]
    for label, cls, opts in kinds:
        for wrapped in (False, True):
            name = "%s%s" % (label, " (DistributedOptimizer)" if wrapped else "")
            # A model of its own: a DistributedOptimizer's hooks stay on
            # the parameters it was built for.
            model = make_model(torch.float32, r)
            bps.broadcast_parameters(model.state_dict(), root_rank=0)
            opt = cls(model.parameters(), **opts(r))
            if wrapped:
                opt = bps.DistributedOptimizer(opt, named_parameters=[("fs.%s.%s" % (label, k), v)
                                                                      for k, v in model.named_parameters()])
            before = [p.detach().clone() for p in model.parameters()]
            grads = [None if p.grad is None else p.grad.clone() for p in model.parameters()]
            check(len(opt.state) == 0, "%s: state before the broadcast", name)
            bps.broadcast_optimizer_state(opt, root_rank=0)
            for (pn, p), b, g in zip(model.named_parameters(), before, grads):
                check(torch.equal(p.detach(), b), "%s: broadcast_optimizer_state moved %s", name, pn)
                check((g is None and p.grad is None) or (g is not None and torch.equal(p.grad, g)),
                      "%s: broadcast_optimizer_state changed %s's gradient", name, pn)
            # The reference: rank 0's optimizer after a zero-gradient step.
            ref = make_model(torch.float32, 0)
            ref_opt = cls(ref.parameters(), **opts(0))
            zero_grad_step(ref_opt, list(ref.parameters()))
            got, want = opt.state_dict(), ref_opt.state_dict()
            for gi, (g, w) in enumerate(zip(got["param_groups"], want["param_groups"])):
                check(g == w, "%s: param group %d is %s, rank 0's is %s", name, gi, g, w)
            check(set(got["state"]) == set(want["state"]), "%s: state for %s, want %s", name,
                  sorted(got["state"]), sorted(want["state"]))
            for k in want["state"]:
                for e, w in want["state"][k].items():
                    v = got["state"][k].get(e)
                    check(torch.is_tensor(v) and v.dtype == w.dtype and torch.equal(v, w),
                          "%s: state[%d][%s] is %r, rank 0's is %r", name, k, e, v, w)
            # Trained from there, it matches one process trained likewise.
            if wrapped:
                steps, batch = 3, 8 * n
                for step in range(steps):
                    x, y = make_data(torch.float32, 1000 + step, batch)
                    opt.zero_grad()
                    loss_fn(model, shard(x, r, n), shard(y, r, n)).backward()
                    opt.step()
                    ref_opt.zero_grad()
                    loss_fn(ref, x, y).backward()
                    ref_opt.step()
                worst = compare_params(name, model, ref, 1e-5)
                if r == 0:
                    print("freshstate %s: state identical to rank 0's; %d workers vs one process after %d steps: "
                          "max |dw|/(1+|w|) = %.3g" % (name, n, steps, worst))


# ---------------------------------------------------------------- ddp


class Branchy(torch.nn.Module):
    """A model with a branch only some ranks use."""

    def __init__(self, seed):
        super().__init__()
        torch.manual_seed(seed)
        self.body = torch.nn.Linear(6, 4)
        self.extra = torch.nn.Linear(4, 4)
        self.head = torch.nn.Linear(4, 3)

    def forward(self, x, use_extra):
        h = torch.tanh(self.body(x))
        if use_extra:
            h = h + torch.tanh(self.extra(h))
        return self.head(h)


class BNNet(torch.nn.Module):
    """A model with buffers (BatchNorm statistics), under its own names:
    names key the broadcasts, and one name always has one size."""

    def __init__(self, seed):
        super().__init__()
        torch.manual_seed(seed)
        self.bnnet = torch.nn.Sequential(torch.nn.Linear(5, 4), torch.nn.BatchNorm1d(4), torch.nn.ReLU(),
                                         torch.nn.Linear(4, 2))
        with torch.no_grad():  # buffers that differ between ranks
            self.bnnet[1].running_mean.normal_()
            self.bnnet[1].running_var.uniform_(0.5, 2.0)

    def forward(self, x):
        return self.bnnet(x)


def case_ddp():
    bps.init()
    n, r = bps.size(), bps.rank()
    expect_raises(ValueError, "exactly one device", DDP, make_model(torch.float32, 0), device_ids=[0, 1])

    # 1. Construction broadcasts rank 0's parameters; training on shards
    # equals one process on the concatenated batches.
    steps, batch = 5, 32
    model = DDP(make_model(torch.float32, r), device_ids=[bps.local_rank()])
    for (name, p), q in zip(model.module.named_parameters(), make_model(torch.float32, 0).parameters()):
        check(torch.equal(p.detach(), q.detach()), "after construction %s is not rank 0's", name)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    ref = make_model(torch.float32, 0)
    ref_opt = torch.optim.SGD(ref.parameters(), lr=0.1, momentum=0.9)
    for step in range(steps):
        x, y = make_data(torch.float32, 300 + step, batch)
        opt.zero_grad()
        loss_fn(model, shard(x, r, n), shard(y, r, n)).backward()
        # Averaged when backward returns, before the optimizer runs.
        if step == 0:
            g_ref = [g for g in _mean_grads(make_model(torch.float32, 0), x, y, n)]
            for (name, p), g in zip(model.module.named_parameters(), g_ref):
                d = rel_diff(p.grad, g)
                check(d <= 1e-6, "step 0: %s's gradient after backward is off the mean by %.3g", name, d)
        opt.step()
        ref_opt.zero_grad()
        loss_fn(ref, x, y).backward()
        ref_opt.step()
    worst = compare_params("ddp train", model.module, ref, 1e-5)

    # 2. no_sync: the first pass accumulates locally, the second averages
    # the sum.
    model.zero_grad()
    xs = [make_data(torch.float32, 400 + k, batch) for k in range(2)]
    with model.no_sync():
        loss_fn(model, shard(xs[0][0], r, n), shard(xs[0][1], r, n)).backward()
    base = copy.deepcopy(model.module)
    local = [p.grad.detach().clone() for p in model.parameters()]
    mine = _local_grads(copy.deepcopy(base), shard(xs[0][0], r, n), shard(xs[0][1], r, n))
    for g, h in zip(local, mine):
        check(rel_diff(g, h) <= 1e-6, "no_sync: the gradient is not this rank's own")
    loss_fn(model, shard(xs[1][0], r, n), shard(xs[1][1], r, n)).backward()
    want = None
    for q in range(n):
        acc = [a + b for a, b in zip(_local_grads(copy.deepcopy(base), shard(xs[0][0], q, n), shard(xs[0][1], q, n)),
                                     _local_grads(copy.deepcopy(base), shard(xs[1][0], q, n), shard(xs[1][1], q, n)))]
        want = acc if want is None else [a + b for a, b in zip(want, acc)]
    for (name, p), w in zip(model.module.named_parameters(), want):
        d = rel_diff(p.grad, w / n)
        check(d <= 1e-6, "no_sync: %s's gradient is off the mean of the accumulated ones by %.3g", name, d)
    model.synchronize()  # nothing left to do: returns at once

    # 3. A branch only rank 0 uses: its gradient is rank 0's over n on
    # every rank, averaged when backward returns.
    branchy = DDP(Branchy(r), broadcast_buffers=False)
    x, _ = make_data(torch.float32, 500, 8 * n)
    x = x.reshape(8 * n, -1)[:, :6]
    branchy(shard(x, r, n), use_extra=(r == 0)).sum().backward()
    ref = Branchy(0)
    want = [torch.zeros_like(p) for p in ref.parameters()]
    for q in range(n):
        ref.zero_grad()
        ref(shard(x, q, n), use_extra=(q == 0)).sum().backward()
        want = [w + (p.grad if p.grad is not None else 0) for w, p in zip(want, ref.parameters())]
    for (name, p), w in zip(branchy.module.named_parameters(), want):
        check(p.grad is not None, "branch: %s has no gradient", name)
        d = rel_diff(p.grad, w / n)
        check(d <= 1e-6, "branch: %s's gradient is off by %.3g", name, d)

    # 4. Buffers: rank 0's at construction and at every forward (then each
    # rank's own forward updates them); without broadcast_buffers, each
    # rank's own from construction on.
    for bcast in (True, False):
        net = DDP(BNNet(10 + r), broadcast_buffers=bcast)
        data = [torch.randn(8 * n, 5, generator=torch.Generator().manual_seed(600 + k)) for k in range(3)]
        for k in range(3):
            net(shard(data[k], r, n))
        ref = BNNet(10)  # rank 0's at construction
        for k in range(3):
            if bcast:
                src = copy.deepcopy(ref)  # rank 0's buffers before forward k
                src(shard(data[k], 0, n))
                if k < 2:
                    ref = src
                else:
                    ref(shard(data[k], r, n))
            else:
                ref(shard(data[k], r, n))
        for (name, b), w in zip(net.module.named_buffers(), ref.buffers()):
            check(torch.allclose(b.double(), w.double(), rtol=1e-6, atol=1e-7),
                  "broadcast_buffers=%s: buffer %s is %s, want %s", bcast, name, b, w)
    if r == 0:
        print("ddp: %d workers vs one process after %d steps: max |dw|/(1+|w|) = %.3g" % (n, steps, worst))


def _local_grads(model, x, y):
    model.zero_grad()
    loss_fn(model, x, y).backward()
    return [p.grad.detach().clone() for p in model.parameters()]


def _mean_grads(model, x, y, n):
    gs = [_local_grads(model, shard(x, q, n), shard(y, q, n)) for q in range(n)]
    return [sum(g) / n for g in zip(*gs)]


# ---------------------------------------------------------------- CrossBarrier


def case_crossbarrier():
    bps.init()
    n, r = bps.size(), bps.rank()
    steps, batch = 5, 32
    configs = [
        # (optimizer, options, backward passes per step, wait by num_steps,
        # dtype, tolerance). RMSprop's first steps divide by the root of a
        # small running average, which turns float32's rounding of the mean
        # of shards (vs the whole batch) into 1.2e-5 after 5 steps in one
        # process alone: it runs in float64.
        (torch.optim.SGD, dict(lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.01), 1, True, torch.float32, 1e-5),
        (torch.optim.SGD, dict(lr=0.05, momentum=0.5), 2, False, torch.float32, 1e-5),
        (torch.optim.Adam, dict(lr=0.01, weight_decay=0.001), 1, False, torch.float32, 1e-5),
        (torch.optim.RMSprop, dict(lr=0.01, momentum=0.3), 1, True, torch.float64, 1e-10),
    ]
    for ci, (cls, kw, passes, by_num_steps, dtype, tol) in enumerate(configs):
        label = "%s %s %s passes=%d" % (cls.__name__, kw, str(dtype).replace("torch.", ""), passes)
        model = make_model(dtype, r)
        opt = CrossBarrier(model, cls(model.parameters(), **kw),
                           named_parameters=[("cb%d.%s" % (ci, k), v) for k, v in model.named_parameters()],
                           backward_passes_per_step=passes, num_steps=steps if by_num_steps else 10 ** 6)
        # (names key the broadcasts: one per config, whose dtypes differ)
        bps.broadcast_parameters(model.state_dict(), root_rank=0, prefix="cb%d." % ci)
        bps.broadcast_optimizer_state(opt, root_rank=0, prefix="cb%d." % ci)
        check(len(opt.state) > 0, "%s: broadcast_optimizer_state left no state", label)
        ref = make_model(dtype, 0)
        ref_opt = cls(ref.parameters(), **kw)
        zero_grad_step(ref_opt, list(ref.parameters()))
        # The learning rate halves every 2 steps: an update uses the rate of
        # the step its gradient belongs to, however late it is applied.
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
        ref_sched = torch.optim.lr_scheduler.StepLR(ref_opt, step_size=2, gamma=0.5)
        for step in range(steps):
            opt.zero_grad()
            ref_opt.zero_grad()
            for k in range(passes):
                x, y = make_data(dtype, 700 + 10 * step + k, batch)
                loss_fn(model, shard(x, r, n), shard(y, r, n)).backward()
                loss_fn(ref, x, y).backward()
            opt.step()
            ref_opt.step()
            sched.step()
            ref_sched.step()
        check(opt.param_groups[0]["lr"] == ref_opt.param_groups[0]["lr"] < kw["lr"], "%s: lr %s, want %s",
              label, opt.param_groups[0]["lr"], ref_opt.param_groups[0]["lr"])
        if not by_num_steps:
            opt.synchronize()
        # (with by_num_steps, the steps-th step() waited for every update)
        worst = compare_params(label, model, ref, tol)
        opt.close()
        if r == 0:
            print("crossbarrier %s: %d workers vs one process after %d steps: max |dw|/(1+|w|) = %.3g"
                  % (label, n, steps, worst))

    # Misuse gets clear errors.
    model = make_model(torch.float32, 0)
    expect_raises(bps.NotSupportedError, "LBFGS", CrossBarrier, model, torch.optim.LBFGS(model.parameters()))
    other = make_model(torch.float32, 0)  # its hooks must not touch model's gradients
    expect_raises(ValueError, "not a DistributedOptimizer", CrossBarrier, other,
                  bps.DistributedOptimizer(torch.optim.SGD(other.parameters(), lr=0.1),
                                           named_parameters=[("e." + k, v) for k, v in other.named_parameters()]))
    stray = torch.nn.Parameter(torch.ones(3))
    expect_raises(ValueError, "in no module of the model", CrossBarrier, model,
                  torch.optim.SGD(list(model.parameters()) + [stray], lr=0.1),
                  named_parameters=[("s." + k, v) for k, v in model.named_parameters()] + [("stray", stray)])
    expect_raises(ValueError, "num_steps", CrossBarrier, model, torch.optim.SGD(model.parameters(), lr=0.1), num_steps=0)
    opt = CrossBarrier(model, torch.optim.SGD(model.parameters(), lr=0.1),
                       named_parameters=[("m." + k, v) for k, v in model.named_parameters()])
    x, y = make_data(torch.float32, 800, 8)
    loss_fn(model, x, y).backward()
    expect_raises(AssertionError, "call step() first", opt.synchronize)
    expect_raises(AssertionError, "more than backward_passes_per_step", lambda: loss_fn(model, x, y).backward())
    opt.step()
    opt.synchronize()
    expect_raises(bps.NotSupportedError, "cannot be added", opt.add_param_group, {"params": [stray]})
    opt.close()


class SlowSGD(torch.optim.SGD):
    """SGD whose update of one chosen parameter takes DELAY seconds more;
    it records when that update started and ended."""

    DELAY = 0.3
    slow = None
    log = []

    def step(self, closure=None):
        params = [p for g in self.param_groups for p in g["params"]]
        if len(params) == 1 and params[0] is SlowSGD.slow:
            t0 = time.perf_counter()
            time.sleep(SlowSGD.DELAY)
            out = super().step(closure)
            SlowSGD.log.append((t0, time.perf_counter()))
            return out
        return super().step(closure)


def case_crossoverlap():
    """The last layer's update is slow (SlowSGD): the next forward pass
    must start (first layer) before it ends, and reach the last layer only
    after it."""
    bps.init()
    n, r = bps.size(), bps.rank()
    torch.manual_seed(0)
    layers = [torch.nn.Linear(32, 64), torch.nn.Tanh(), torch.nn.Linear(64, 64), torch.nn.Tanh(), torch.nn.Linear(64, 10)]
    model = torch.nn.Sequential(*layers)
    ref = copy.deepcopy(model)
    SlowSGD.slow = model[4].weight
    opt = CrossBarrier(model, SlowSGD(model.parameters(), lr=0.1, momentum=0.9),
                       named_parameters=model.named_parameters())
    ref_opt = torch.optim.SGD(ref.parameters(), lr=0.1, momentum=0.9)
    marks = []
    model[0].register_forward_pre_hook(lambda m, i: marks.append(("first", time.perf_counter())))
    model[4].register_forward_pre_hook(lambda m, i: marks.append(("last", time.perf_counter())))
    steps, batch = 4, 16
    step_ends = []
    for step in range(steps):
        t0 = time.perf_counter()
        g = torch.Generator().manual_seed(900 + step)
        x, y = torch.randn(batch, 32, generator=g), torch.randint(0, 10, (batch,), generator=g)
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(shard(x, r, n)), shard(y, r, n)).backward()
        opt.step()
        step_ends.append(time.perf_counter())
        check(step_ends[-1] - t0 < 10, "step %d took %.1f s", step, step_ends[-1] - t0)
        ref_opt.zero_grad()
        torch.nn.functional.cross_entropy(ref(x), y).backward()
        ref_opt.step()
    opt.synchronize()
    check(len(SlowSGD.log) == steps, "%d slow updates for %d steps", len(SlowSGD.log), steps)
    firsts = [t for what, t in marks if what == "first"]
    lasts = [t for what, t in marks if what == "last"]
    check(len(firsts) == steps and len(lasts) == steps, "forward marks: %s", marks)
    for i in range(1, steps):
        _, slow_end = SlowSGD.log[i - 1]
        check(step_ends[i - 1] < slow_end, "step %d: step() returned %.1f ms after the last layer's update ended",
              i - 1, 1000 * (step_ends[i - 1] - slow_end))
        check(firsts[i] < slow_end, "step %d: the first layer's forward started %.1f ms after the last layer's update "
              "of step %d ended: no overlap", i, 1000 * (firsts[i] - slow_end), i - 1)
        check(lasts[i] >= slow_end, "step %d: the last layer's forward started %.1f ms before its update ended",
              i, 1000 * (slow_end - lasts[i]))
        if r == 0:
            print("crossoverlap step %d: first layer's forward started %.1f ms before the last layer's update of "
                  "step %d ended; last layer's forward %.1f ms after" % (
                      i, 1000 * (slow_end - firsts[i]), i - 1, 1000 * (lasts[i] - slow_end)))
    worst = compare_params("crossoverlap", model, ref, 1e-5)
    opt.close()
    if r == 0:
        print("crossoverlap: %d workers vs one process: max |dw|/(1+|w|) = %.3g" % (n, worst))


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    case = sys.argv[1]
    cases = {
        "metrics": case_metrics,
        "freshstate": case_freshstate,
        "ddp": case_ddp,
        "crossbarrier": case_crossbarrier,
        "crossoverlap": case_crossoverlap,
    }
    if case not in cases:
        sys.exit("unknown case %r; cases: %s" % (case, ", ".join(sorted(cases))))
    try:
        cases[case]()
    except CheckFailed as e:
        print("FAIL %s: %s" % (case, e), file=sys.stderr)
        sys.exit(1)
    print("%s ok rank %s" % (case, os.environ.get("BYTEPS_LOCAL_RANK", "-")))


if __name__ == "__main__":
    main()
