"""Checks of gobps.torch, one per case, run by cgo/torch_test.go.

    torch_job.py CASE [OUTDIR]

Job cases run as every worker of a bpsrun job; each worker exits non-zero
with a message naming what differed, or prints "CASE ok rank R". The
reference every check compares with is computed in the same process (each
worker can rebuild every worker's data, because data come from seeds), so a
worker needs nothing from the others but what gobps gives it.

    errors     bpsrun -np 1: calls before init, bad tensors, after shutdown
    grads      bpsrun -np 2 or 3: DistributedOptimizer's gradients are the
               mean of the workers' gradients (float32, float64, fp16)
    train      bpsrun -np 2: training matches one process on the whole batch
    broadcast  bpsrun -np 2 or more: parameters and optimizer state become
               rank 0's (every rank saves them to OUTDIR, rank 0 compares)
    overlap    bpsrun -np 2: push_pulls start (and finish) during backward
    nolib      no job: GOBPS_LIB names a missing file
    noenv      no job: no environment
"""

import copy
import os
import sys
import time

import torch

import gobps.torch as bps
from gobps import _lib

torch.set_num_threads(1)


class CheckFailed(Exception):
    pass


def check(cond, msg, *args):
    if not cond:
        raise CheckFailed(msg % args if args else msg)


def expect_raises(exc, want, fn, *args, **kwargs):
    """fn(*args) must raise exc with want in its message."""
    try:
        fn(*args, **kwargs)
    except exc as e:
        check(want in str(e), "%s raised %r; want the message to mention %r", fn.__name__, str(e), want)
        return e
    except Exception as e:  # noqa: BLE001
        raise CheckFailed("%s raised %s(%s); want %s" % (fn.__name__, type(e).__name__, e, exc.__name__))
    raise CheckFailed("%s did not raise %s" % (fn.__name__, exc.__name__))


# ---------------------------------------------------------------- models


def make_model(dtype, seed):
    """A small CNN + MLP: conv, batch-norm-free so that per-sample gradients
    add up (the mean of shard means is the batch mean)."""
    g = torch.Generator().manual_seed(seed)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.MaxPool2d(2),
        torch.nn.Flatten(),
        torch.nn.Linear(4 * 4 * 4, 32),
        torch.nn.Tanh(),
        torch.nn.Linear(32, 10),
    ).to(dtype)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64).to(dtype) * 0.3)
    return model


def make_data(dtype, seed, n):
    g = torch.Generator().manual_seed(1000 + seed)
    x = torch.randn(n, 1, 8, 8, generator=g, dtype=torch.float64).to(dtype)
    y = torch.randint(0, 10, (n,), generator=g)
    return x, y


def loss_fn(model, x, y):
    return torch.nn.functional.cross_entropy(model(x), y)


def local_grads(model, x, y):
    model.zero_grad()
    loss_fn(model, x, y).backward()
    return [p.grad.detach().clone() for p in model.parameters()]


# ---------------------------------------------------------------- cases


def case_errors():
    x = torch.ones(4)
    # Before init: every call says init() comes first.
    for fn, args in [(bps.size, ()), (bps.rank, ()), (bps.local_rank, ()), (bps.local_size, ()),
                     (bps.push_pull_async_inplace, (x,)), (bps.declare, ("d", x)),
                     (bps.broadcast_, (x, 0)), (bps.shutdown, ())]:
        e = expect_raises(bps.NotInitializedError, "init() first", fn, *args)
        check(isinstance(e, RuntimeError), "NotInitializedError is not a RuntimeError")
    model = make_model(torch.float32, 0)
    expect_raises(bps.NotInitializedError, "init() first", bps.DistributedOptimizer,
                  torch.optim.SGD(model.parameters(), lr=0.1), model.named_parameters())
    expect_raises(bps.NotInitializedError, "init() first", bps.broadcast_parameters, model.state_dict(), 0)

    bps.init()
    bps.init()  # again: nothing to do
    check(bps.size() == 1 and bps.rank() == 0, "size %d rank %d", bps.size(), bps.rank())

    # A non-contiguous tensor.
    m = torch.ones(3, 4).t()
    e = expect_raises(bps.InvalidArgumentError, "not contiguous", bps.push_pull_async_inplace, m, name="m")
    check(isinstance(e, ValueError), "non-contiguous: not a ValueError")
    expect_raises(ValueError, "not contiguous", bps.push_pull, m, name="m")
    expect_raises(ValueError, "not contiguous", bps.broadcast_, m, 0, "m")
    # Unsupported dtypes.
    for dt in (torch.int16, torch.int8, torch.bool, torch.complex64):
        e = expect_raises(bps.UnsupportedDTypeError, str(dt), bps.push_pull_async_inplace,
                          torch.zeros(3, dtype=dt), average=False, name="bad." + str(dt))
        check(isinstance(e, TypeError), "unsupported dtype: not a TypeError")
        check("float32" in str(e), "unsupported dtype: message does not list the supported ones: %s", e)
    # ... which broadcast still copies, as bytes.
    b = torch.tensor([True, False, True])
    check(torch.equal(bps.broadcast_(b, 0, "bools"), torch.tensor([True, False, True])), "bool broadcast")
    # Averaging integers, names, handles, types.
    expect_raises(bps.InvalidArgumentError, "cannot average", bps.push_pull_async_inplace,
                  torch.ones(3, dtype=torch.int64), name="ints")
    check(torch.equal(bps.push_pull_inplace(torch.ones(3, dtype=torch.int64), average=False, name="ints"),
                      torch.ones(3, dtype=torch.int64)), "int64 sum over one worker")
    bps.push_pull_inplace(torch.ones(5), name="five")
    expect_raises(bps.InvalidArgumentError, "declared as float32[5]",
                  bps.push_pull_async_inplace, torch.ones(6), name="five")
    expect_raises(bps.InvalidArgumentError, "declared with shape [5]; now used with shape [5, 1]",
                  bps.push_pull_async_inplace, torch.ones(5, 1), name="five")
    expect_raises(bps.InvalidArgumentError, "float64", bps.push_pull_async_inplace,
                  torch.ones(5, dtype=torch.float64), name="five")
    expect_raises(bps.InvalidArgumentError, "needs a name", bps.push_pull, torch.ones(2))
    expect_raises(bps.InvalidArgumentError, "unknown handle", bps.synchronize, 123456)
    expect_raises(bps.InvalidArgumentError, "unknown handle", bps.poll, 123456)
    expect_raises(TypeError, "expected a torch.Tensor", bps.push_pull_async_inplace, [1.0, 2.0], name="list")
    expect_raises(bps.InvalidArgumentError, "sparse", bps.push_pull_async_inplace,
                  torch.eye(3).to_sparse(), name="sparse")
    expect_raises(bps.InvalidArgumentError, "root 3 is not a rank", bps.broadcast_, torch.ones(2), 3, "root3")
    # Device tensors: only CPU and CUDA ones are taken. This torch has no
    # CUDA, so the CUDA path is reached through the binding: without a
    # driver the library says what is missing.
    expect_raises(bps.InvalidArgumentError, "CPU and CUDA tensors", bps.push_pull_async_inplace,
                  torch.ones(2, device="meta"), name="meta")
    expect_raises(bps.InvalidArgumentError, "CPU tensors only", bps.broadcast_,
                  torch.ones(2, device="meta"), 0, "meta.b")
    expect_raises(bps.NotSupportedError, "libcuda.so.1", _lib.push_pull_cuda,
                  "cuda.x", 0x1000, _lib.FLOAT32, 4, _lib.SUM, 0, 0)
    expect_raises(ValueError, "tuples", bps.DistributedOptimizer,
                  torch.optim.SGD(model.parameters(), lr=0.1), list(model.parameters()))
    expect_raises(ValueError, "duplicates", bps.DistributedOptimizer,
                  torch.optim.SGD(model.parameters(), lr=0.1), [("w", p) for p in model.parameters()])
    expect_raises(ValueError, "not in it", bps.DistributedOptimizer,
                  torch.optim.SGD(model.parameters(), lr=0.1), list(model.named_parameters())[:2])
    # A zero-element tensor completes at once.
    check(bps.synchronize(bps.push_pull_async_inplace(torch.ones(0), name="empty")).numel() == 0, "empty")
    # A non-contiguous gradient is handled by DistributedOptimizer (it
    # reduces a contiguous copy and copies the result back).
    w = torch.nn.Parameter(torch.ones(3, 2))
    opt = bps.DistributedOptimizer(torch.optim.SGD([w], lr=1.0), [("w", w)])
    w.grad = torch.ones(2, 3).t()
    opt.step()
    check(torch.equal(w.detach(), torch.zeros(3, 2)), "non-contiguous gradient step gave %s", w)

    bps.shutdown()
    expect_raises(bps.NotInitializedError, "shut down", bps.size)
    expect_raises(bps.NotInitializedError, "shut down", bps.push_pull_async_inplace, torch.ones(5), name="five")
    expect_raises(bps.JobFailedError, "only once", bps.init)


def case_nolib():
    e = expect_raises(bps.LibraryNotFoundError, "GOBPS_LIB", bps.init)
    check(os.environ["GOBPS_LIB"] in str(e), "message does not name the file: %s", e)
    expect_raises(bps.LibraryNotFoundError, "cannot load", bps.size)


def case_noenv():
    expect_raises(bps.NotInitializedError, "init() first", bps.rank)
    e = expect_raises(bps.ConfigError, "DMLC_ROLE", bps.init)
    check("bpsrun" in str(e), "the config error does not mention bpsrun: %s", e)
    expect_raises(bps.NotInitializedError, "init() first", bps.rank)


def case_grads():
    bps.init()
    n, r = bps.size(), bps.rank()
    configs = [
        # (dtype, compression, backward passes per step, tolerance)
        (torch.float32, bps.Compression.none, 1, 1e-6),
        (torch.float64, bps.Compression.none, 1, 1e-6),
        (torch.float32, bps.Compression.none, 2, 1e-6),
        # fp16: each gradient is rounded to fp16 (2^-11 relative), the
        # server's sum is rounded again and the average once more: 3
        # roundings of at most 2^-11 of the scale each, ~1.5e-3; values
        # below fp16's normal range lose more, hence the absolute term.
        (torch.float32, bps.Compression.fp16, 1, 2e-3),
    ]
    worst = {}
    for ci, (dtype, comp, passes, tol) in enumerate(configs):
        model = make_model(dtype, 0)  # the same weights on every rank
        ref = make_model(dtype, 0)
        opt = bps.DistributedOptimizer(torch.optim.SGD(model.parameters(), lr=0.05),
                                       named_parameters=[("c%d.%s" % (ci, k), v) for k, v in model.named_parameters()],
                                       compression=comp, backward_passes_per_step=passes)
        label = "%s/%s/passes=%d" % (dtype, comp.__name__, passes)
        for step in range(3):
            # Reference: every rank's local gradient (summed over the
            # passes), in float64, and their mean.
            per_rank = []
            for q in range(n):
                acc = None
                for k in range(passes):
                    x, y = make_data(dtype, 100 * step + 10 * q + k, 8)
                    g = local_grads(ref, x, y)
                    acc = g if acc is None else [a + b for a, b in zip(acc, g)]
                per_rank.append([a.double() for a in acc])
            mean = [sum(gs) / n for gs in zip(*per_rank)]
            scale = [sum(g.abs() for g in gs) / n for gs in zip(*per_rank)]

            opt.zero_grad()
            for k in range(passes):
                x, y = make_data(dtype, 100 * step + 10 * r + k, 8)
                loss_fn(model, x, y).backward()
            opt.synchronize()
            for (name, p), want, sc in zip(model.named_parameters(), mean, scale):
                got = p.grad.double()
                err = (got - want).abs()
                bound = tol * torch.maximum(want.abs(), sc) + (1e-7 if comp is bps.Compression.fp16 else 0)
                bad = err > bound
                check(not bool(bad.any()), "%s step %d %s: %d of %d gradients off; worst |got-want| %.3g "
                      "(want %.6g, got %.6g)", label, step, name, int(bad.sum()), err.numel(),
                      float(err.max()), float(want.flatten()[err.argmax()]), float(got.flatten()[err.argmax()]))
                # The relative error where fp16 is in its normal range.
                big = torch.maximum(want.abs(), sc)
                normal = big >= 6.1e-5
                if bool(normal.any()):
                    rel = float((err[normal] / big[normal]).max())
                    worst[label] = max(worst.get(label, 0.0), rel)
            with opt.skip_synchronize():
                opt.step()
            with torch.no_grad():  # keep the reference on the same weights
                for p, q in zip(ref.parameters(), model.parameters()):
                    p.copy_(q)
    if r == 0:
        for label, w in worst.items():
            print("grads n=%d %s: worst relative error %.3g" % (n, label, w))


def case_train():
    bps.init()
    n, r = bps.size(), bps.rank()
    steps, batch = 6, 32
    check(batch % n == 0, "batch %d does not split over %d workers", batch, n)
    model = make_model(torch.float32, r)  # different weights: broadcast fixes it
    bps.broadcast_parameters(model.state_dict(), root_rank=0)
    opt = bps.DistributedOptimizer(torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9),
                                   named_parameters=model.named_parameters())
    bps.broadcast_optimizer_state(opt, root_rank=0)
    ref = make_model(torch.float32, 0)
    ref_opt = torch.optim.SGD(ref.parameters(), lr=0.1, momentum=0.9)
    shard = batch // n
    for step in range(steps):
        x, y = make_data(torch.float32, step, batch)
        opt.zero_grad()
        loss = loss_fn(model, x[r * shard:(r + 1) * shard], y[r * shard:(r + 1) * shard])
        loss.backward()
        opt.step()
        ref_opt.zero_grad()
        ref_loss = loss_fn(ref, x, y)
        ref_loss.backward()
        ref_opt.step()
        if r == 0:
            print("train step %d: shard loss %.5f, whole-batch loss %.5f" % (step, loss.item(), ref_loss.item()))
    worst = 0.0
    for (name, p), q in zip(model.named_parameters(), ref.parameters()):
        d = float(((p - q).abs() / (1 + q.abs())).max())
        worst = max(worst, d)
        check(d <= 1e-5, "after %d steps %s differs from one process by %.3g (> 1e-5)", steps, name, d)
    # Every rank holds exactly rank 0's weights.
    w0 = bps.broadcast_object([p.detach().clone() for p in model.parameters()], 0, name="train.weights")
    for (name, p), q in zip(model.named_parameters(), w0):
        check(torch.equal(p.detach(), q), "%s differs from rank 0's", name)
    if r == 0:
        print("train: 2-worker weights vs one process: max |dw|/(1+|w|) = %.3g" % worst)


def bn_model(seed):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.BatchNorm1d(8), torch.nn.ReLU(),
                               torch.nn.Linear(8, 3))


def case_broadcast(outdir):
    bps.init()
    n, r = bps.size(), bps.rank()
    model = bn_model(r)
    opt = torch.optim.Adam(model.parameters(), lr=0.01 * (r + 1), betas=(0.9, 0.99 - 0.01 * r))
    for step in range(2 + r):  # different state on every rank (Adam's step differs too)
        x, y = make_data(torch.float32, 50 * r + step, 16)
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x.reshape(16, -1)[:, :6]), y % 3).backward()
        opt.step()
    params = list(model.parameters())
    if r == 0:
        opt.state[params[0]]["note"] = {"from": "rank 0", "k": [1, 2]}  # a non-tensor entry
    else:
        opt.state[params[1]]["stale"] = torch.ones(2)  # an entry rank 0 lacks
    # A second optimizer whose state is empty on rank 0 only: rank 0 creates
    # it with a zero-gradient step (momentum buffers of zeros), which every
    # rank then gets.
    opt2 = torch.optim.SGD(model.parameters(), lr=0.3, momentum=0.5)
    if r != 0:
        model(torch.randn(4, 6)).sum().backward()
        opt2.step()
        opt2.param_groups[0]["lr"] = 0.7

    before = None
    if r == 0:  # the root's own state must come through unchanged
        before = copy.deepcopy({"model": model.state_dict(), "opt": opt.state_dict(),
                                "opt2 groups": opt2.state_dict()["param_groups"]})
    bps.broadcast_parameters(model.state_dict(), root_rank=0)
    bps.broadcast_optimizer_state(opt, root_rank=0)
    bps.broadcast_optimizer_state(opt2, root_rank=0)
    if r == 0:
        compare("rank 0 after broadcast", {"model": model.state_dict(), "opt": opt.state_dict(),
                                           "opt2 groups": opt2.state_dict()["param_groups"]}, before)
    check(len(opt2.state) == len(params), "opt2 has state for %d parameters, want %d", len(opt2.state), len(params))
    for i, p in enumerate(params):
        st = opt2.state[p]
        check(set(st) == {"momentum_buffer"} and torch.equal(st["momentum_buffer"], torch.zeros_like(p)),
              "opt2's state of parameter %d is %s, want rank 0's zero momentum buffer", i, st)
    obj = bps.broadcast_object({"rank": r, "blob": bytes(range(256)) * (r + 1)}, root_rank=0)
    check(obj == {"rank": 0, "blob": bytes(range(256))}, "broadcast_object gave rank %s's object", obj.get("rank"))
    big = bps.broadcast_object(list(range(10000 * (r + 1))), root_rank=0, name="big")
    check(big == list(range(10000)), "broadcast_object of a long list")
    torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "opt2": opt2.state_dict()},
               os.path.join(outdir, "rank%d.pt" % r))
    bps.push_pull_inplace(torch.ones(1), name="barrier")  # every file is written
    if r != 0:
        return
    want = torch.load(os.path.join(outdir, "rank0.pt"))
    for q in range(1, n):
        got = torch.load(os.path.join(outdir, "rank%d.pt" % q))
        compare("rank %d" % q, got, want)
    print("broadcast: %d ranks identical to rank 0 (parameters, buffers, optimizer state and options)" % n)


def compare(path, got, want):
    if torch.is_tensor(want):
        check(torch.is_tensor(got) and got.dtype == want.dtype and got.shape == want.shape and torch.equal(got, want),
              "%s: %r differs from rank 0's %r", path, got, want)
    elif isinstance(want, dict):
        check(isinstance(got, dict) and set(got) == set(want), "%s: keys %s, rank 0 has %s",
              path, sorted(map(str, got)), sorted(map(str, want)))
        for k in want:
            compare("%s.%s" % (path, k), got[k], want[k])
    elif isinstance(want, (list, tuple)):
        check(type(got) is type(want) and len(got) == len(want), "%s: %r, rank 0 has %r", path, got, want)
        for i, (a, b) in enumerate(zip(got, want)):
            compare("%s[%d]" % (path, i), a, b)
    else:
        check(got == want, "%s: %r, rank 0 has %r", path, got, want)


def case_overlap():
    """The last layer's gradient is ready first; its push_pull must start
    before backward computes the first layer's gradient, which comes after
    the expensive middle layers."""
    bps.init()
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(512, 1536), torch.nn.ReLU(),
        torch.nn.Linear(1536, 1536), torch.nn.ReLU(),
        torch.nn.Linear(1536, 1536), torch.nn.ReLU(),
        torch.nn.Linear(1536, 10))
    opt = bps.DistributedOptimizer(torch.optim.SGD(model.parameters(), lr=0.01),
                                   named_parameters=model.named_parameters())
    events = []
    real = bps.ops.push_pull_async_inplace

    def recording(tensor, *args, **kwargs):
        h = real(tensor, *args, **kwargs)
        events.append(("start", kwargs.get("name"), time.perf_counter(), h))
        return h
    bps.ops.push_pull_async_inplace = recording

    def first_layer_grad(g):
        done = sum(1 for e in events if e[0] == "start" and bps.poll(e[3]))
        events.append(("first layer gradient", done, time.perf_counter(), None))
    model[0].weight.register_hook(first_layer_grad)

    x = torch.randn(256, 512)
    y = torch.randint(0, 10, (256,))
    completed = []
    for step in range(3):
        events.clear()
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        t0 = time.perf_counter()
        loss.backward()
        t1 = time.perf_counter()
        opt.step()
        starts = [e for e in events if e[0] == "start"]
        last = [e for e in events if e[0] == "first layer gradient"]
        check(len(starts) == 8 and len(last) == 1, "events: %s", [e[:2] for e in events])
        first = starts[0]
        check(first[1] == "Gradient.6.bias" or first[1] == "Gradient.6.weight",
              "the first push_pull was %s, not the last layer's", first[1])
        check(first[2] < last[0][2], "step %d: the first push_pull started %.1f ms after the first layer's "
              "gradient was computed", step, 1000 * (first[2] - last[0][2]))
        completed.append(last[0][1])
        if bps.rank() == 0:
            print("overlap step %d: backward %.1f ms; first push_pull (%s) started %.1f ms into it, %.1f ms "
                  "before the first layer's gradient; %d push_pulls already complete by then" % (
                      step, 1000 * (t1 - t0), first[1], 1000 * (first[2] - t0), 1000 * (last[0][2] - first[2]),
                      last[0][1]))
    check(max(completed) > 0, "no push_pull completed during backward in 3 steps: %s", completed)
    bps.ops.push_pull_async_inplace = real


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    case = sys.argv[1]
    cases = {"errors": case_errors, "grads": case_grads, "train": case_train, "overlap": case_overlap,
             "nolib": case_nolib, "noenv": case_noenv,
             "broadcast": lambda: case_broadcast(sys.argv[2])}
    if case not in cases:
        sys.exit("unknown case %r; cases: %s" % (case, ", ".join(sorted(cases))))
    try:
        cases[case]()
    except CheckFailed as e:
        print("FAIL %s: %s" % (case, e), file=sys.stderr)
        sys.exit(1)
    r = os.environ.get("BYTEPS_LOCAL_RANK", "-")
    print("%s ok rank %s" % (case, r))


if __name__ == "__main__":
    main()
