"""User mistakes and uneven jobs under bpsrun, one case per run, run by
cgo/torch_checks_test.go as every worker of a job (as torch_job.py's cases
run):

    torch_checks_job.py CASE [OUTDIR]

Each worker exits non-zero naming what went wrong, or prints "CASE ok rank
R". Every wait is bounded here, so a hang is a failure that says where it
was, not a test timeout. Before declarations were compared across workers,
the mistake cases summed unrelated tensors without a word (or hung); before
departures and join, the uneven cases hung.

    names      -np 2: the workers push_pull tensors of different names
    order      -np 2: the same two tensors, started in opposite orders
    shape      -np 2: one name, shapes (2, 3) and (3, 2)
    onerank    -np 2: only rank 0 push_pulls a tensor (run with
               GOBPS_DECLARE_WARN and GOBPS_DECLARE_TIMEOUT short); rank 1
               waits for rank 0's verdict in OUTDIR
    earlyexit  -np 2: rank 0 leaves after one step; rank 1's next step fails
               naming worker 0
    join       -np 2: uneven batches under DistributedOptimizer in a
               ``with join()`` block match one process's arithmetic
    suspend    -np 2: suspend, calls refused, resume (also byteps's
               elastic form resume(size, servers, rank)); training across
               a suspension matches one process
    reserve    -np 2: names declared without a tensor, then used in
               different orders by the workers
    stall      -np 2: rank 1 skips one tensor of a step (run with
               GOBPS_STALL_WARNING and GOBPS_STALL_SHUTDOWN short): rank
               0's push_pull of it fails with the report naming worker 1
               and the tensor; rank 1 waits for rank 0's verdict in OUTDIR
"""

import os
import sys
import time

import torch

import gobps.torch as bps
from gobps import _lib
from torch_job import CheckFailed, check, expect_raises, loss_fn, make_data, make_model

torch.set_num_threads(1)

BOUND = 30.0  # seconds any one wait may take before the case fails


def wait(handle, what, bound=BOUND):
    """synchronize(handle), but a failure if it takes more than bound
    seconds (the bug this file guards against is a silent hang)."""
    deadline = time.monotonic() + bound
    while not bps.poll(handle):
        check(time.monotonic() < deadline, "%s: still waiting after %.0f s", what, bound)
        time.sleep(0.01)
    return bps.synchronize(handle)


def expect_failure(what, start, *wants, bound=BOUND):
    """start() begins an operation (returns a handle) or raises; either it
    raises, or its handle fails within bound, with an error naming every
    one of wants. Returns the message."""
    t0 = time.monotonic()
    try:
        wait(start(), what, bound)
    except CheckFailed:
        raise
    except _lib.GobpsError as e:
        msg = str(e)
        for w in wants:
            check(w in msg, "%s: the error %r does not mention %r", what, msg, w)
        return msg, time.monotonic() - t0
    raise CheckFailed("%s succeeded; want an error naming %s" % (what, ", ".join(map(repr, wants))))


def say(fmt, *args):
    print(fmt % args if args else fmt, flush=True)


# ---------------------------------------------------------------- mistakes


def case_names():
    bps.init()
    r = bps.rank()
    t = torch.full((6,), float(r + 1))
    name = "a" if r == 0 else "b"
    msg, took = expect_failure("push_pull of %r" % name,
                               lambda: bps.push_pull_async_inplace(t, name=name), '"a"', '"b"')
    say("names: rank %d refused in %.2f s: %s", r, took, msg)


def case_order():
    bps.init()
    r = bps.rank()
    a = torch.full((8,), 1.0 + r)
    b = torch.full((8,), 10.0 + r)
    first, second = (("a", a), ("b", b)) if r == 0 else (("b", b), ("a", a))
    h1 = None
    t0 = time.monotonic()
    failed = []
    try:
        h1 = bps.push_pull_async_inplace(first[1], name=first[0], average=False)
        h2 = bps.push_pull_async_inplace(second[1], name=second[0], average=False)
        for h, n in ((h1, first[0]), (h2, second[0])):
            try:
                wait(h, "push_pull of %r" % n)
            except _lib.GobpsError as e:
                failed.append(str(e))
    except _lib.GobpsError as e:
        failed.append(str(e))
    check(failed, "started %r then %r (the other rank the other way round): both succeeded, a=%s b=%s",
          first[0], second[0], a.tolist()[:2], b.tolist()[:2])
    check(any('"a"' in m and '"b"' in m for m in failed), "no error names both tensors: %s", failed)
    say("order: rank %d refused in %.2f s: %s", r, time.monotonic() - t0, failed[0])


def case_shape():
    bps.init()
    r = bps.rank()
    t = torch.ones((2, 3) if r == 0 else (3, 2))
    msg, took = expect_failure("push_pull of w", lambda: bps.push_pull_async_inplace(t, name="w"),
                               "[2 3]", "[3 2]")
    say("shape: rank %d refused in %.2f s: %s", r, took, msg)


def case_onerank(outdir):
    bps.init()
    r = bps.rank()
    marker = os.path.join(outdir, "onerank.done")
    if r == 0:
        t = torch.ones(4)
        try:
            msg, took = expect_failure("push_pull of lonely", lambda: bps.push_pull_async_inplace(t, name="lonely"),
                                       '"lonely"', "not by worker(s) [1]", "GOBPS_DECLARE_TIMEOUT")
        finally:
            with open(marker, "w") as f:
                f.write("done\n")
        say("onerank: rank 0 refused in %.2f s: %s", took, msg)
    else:
        deadline = time.monotonic() + BOUND
        while not os.path.exists(marker):
            check(time.monotonic() < deadline, "rank 0 wrote no verdict in %.0f s", BOUND)
            time.sleep(0.05)


def case_earlyexit():
    bps.init()
    r = bps.rank()
    t = torch.full((16,), float(r + 1))
    wait(bps.push_pull_async_inplace(t, name="x", average=False), "step 0")
    check(torch.all(t == 3.0), "step 0: sum %s, want 3", t[:2].tolist())
    if r == 0:
        say("earlyexit: rank 0 leaves after one step")
        return  # leaves the job at exit
    time.sleep(0.5)
    t0 = time.monotonic()
    for step in range(1, 100):
        t.fill_(2.0)
        try:
            wait(bps.push_pull_async_inplace(t, name="x", average=False), "step %d" % step, bound=15.0)
        except _lib.GobpsError as e:
            msg = str(e)
            check("worker 0" in msg, "step %d: the error %r does not name worker 0", step, msg)
            say("earlyexit: rank 1's step %d failed %.2f s after it began: %s", step, time.monotonic() - t0, msg)
            return
        check(False, "step %d succeeded after worker 0 left: %s", step, t[:2].tolist())
    raise CheckFailed("no step failed")


# ---------------------------------------------------------------- uneven and paused jobs


def sgd_step(ref, grads, lr):
    with torch.no_grad():
        for p, g in zip(ref.parameters(), grads):
            p -= lr * g


def shard_grads(model, step, r, batch):
    x, y = make_data(torch.float32, step, 2 * batch)
    model.zero_grad()
    loss_fn(model, x[r * batch:(r + 1) * batch], y[r * batch:(r + 1) * batch]).backward()
    return [p.grad.detach().clone() for p in model.parameters()]


def compare(label, model, ref, tol=1e-5):
    worst = 0.0
    for (name, p), q in zip(model.named_parameters(), ref.parameters()):
        d = float(((p.detach() - q.detach()).abs() / (1 + q.detach().abs())).max())
        worst = max(worst, d)
        check(d <= tol, "%s: %s differs by %.3g (> %g)", label, name, d, tol)
    return worst


def case_join():
    bps.init()
    n, r = bps.size(), bps.rank()
    check(n == 2, "run with -np 2")
    batches = (3, 5)  # rank 0 runs out of data first
    lr, batch = 0.1, 8
    model = make_model(torch.float32, 0)
    opt = bps.DistributedOptimizer(torch.optim.SGD(model.parameters(), lr=lr),
                                   named_parameters=model.named_parameters())
    with bps.join(timeout=BOUND):
        for step in range(batches[r]):
            x, y = make_data(torch.float32, step, 2 * batch)
            opt.zero_grad()
            loss_fn(model, x[r * batch:(r + 1) * batch], y[r * batch:(r + 1) * batch]).backward()
            opt.step()
    # One process's arithmetic: while both ranks train, the mean of their
    # gradients; once rank 0 has joined, rank 1's gradient over size().
    ref, probe = make_model(torch.float32, 0), make_model(torch.float32, 0)
    for step in range(batches[r]):
        probe.load_state_dict(ref.state_dict())
        live = [q for q in range(n) if step < batches[q]]
        gs = [shard_grads(probe, step, q, batch) for q in live]
        sgd_step(ref, [sum(g) / n for g in zip(*gs)], lr)
    worst = compare("join: after %d steps" % batches[r], model, ref)
    # The job goes on with every worker.
    t = torch.full((5,), float(r + 1))
    wait(bps.push_pull_async_inplace(t, name="after.join", average=False), "push_pull after join")
    check(torch.all(t == 3.0), "push_pull after join: %s, want 3", t.tolist())
    say("join: rank %d took %d steps; vs one process max |dw|/(1+|w|) = %.3g", r, batches[r], worst)


def case_suspend():
    bps.init()
    n, r = bps.size(), bps.rank()
    servers = int(os.environ["DMLC_NUM_SERVER"])
    t = torch.full((9,), float(r + 1))
    wait(bps.push_pull_async_inplace(t, name="s", average=False), "before suspend")
    check(torch.all(t == 3.0), "before suspend: %s", t.tolist())
    for round_, how in enumerate(("plain", "elastic")):
        bps.suspend(timeout=BOUND)
        expect_raises(_lib.GobpsError, "suspend", bps.push_pull_async_inplace, t, name="s")
        expect_raises(_lib.InvalidArgumentError, "not implemented", bps.resume, n + 1, servers)
        if how == "plain":
            bps.resume(n, servers, timeout=BOUND)
        else:  # as byteps's elastic example: resume(size, servers, rank, context)
            bps.resume(n, servers, r, None, timeout=BOUND)
        for step in range(3):
            t.fill_(float(r + 1 + step))
            wait(bps.push_pull_async_inplace(t, name="s", average=False), "after resume %d step %d" % (round_, step))
            want = float(3 + 2 * step)
            check(torch.all(t == want), "after %s resume, step %d: %s, want %g", how, step, t.tolist(), want)
    # Training across a suspension matches one process on the whole batches.
    lr, batch = 0.1, 8
    model, ref = make_model(torch.float32, 0), make_model(torch.float32, 0)
    opt = bps.DistributedOptimizer(torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9),
                                   named_parameters=model.named_parameters())
    ref_opt = torch.optim.SGD(ref.parameters(), lr=lr, momentum=0.9)
    for step in range(6):
        if step == 3:
            bps.suspend(timeout=BOUND)
            bps.resume(n, servers, r, None, timeout=BOUND)
        x, y = make_data(torch.float32, step, n * batch)
        opt.zero_grad()
        loss_fn(model, x[r * batch:(r + 1) * batch], y[r * batch:(r + 1) * batch]).backward()
        opt.step()
        ref_opt.zero_grad()
        loss_fn(ref, x, y).backward()
        ref_opt.step()
    worst = compare("suspend: after 6 steps", model, ref)
    say("suspend: rank %d suspended and resumed three times; trained vs one process max |dw|/(1+|w|) = %.3g", r, worst)


def case_reserve():
    bps.init()
    r = bps.rank()
    names = ["grad.%d" % i for i in range(4)]
    for name in names:
        bps.declare(name)  # byteps's declare(name): order fixed, shape comes with first use
    ts = {name: torch.arange(10 * (i + 1), dtype=torch.float32) * (r + 1) for i, name in enumerate(names)}
    order = names if r == 0 else list(reversed(names))
    handles = [(name, bps.push_pull_async_inplace(ts[name], name=name, average=False)) for name in order]
    for name, h in handles:
        wait(h, "push_pull of %s" % name)
    for i, name in enumerate(names):
        want = torch.arange(10 * (i + 1), dtype=torch.float32) * 3
        check(torch.equal(ts[name], want), "%s: %s, want %s", name, ts[name][:3].tolist(), want[:3].tolist())
    say("reserve: rank %d started %s in its own order; every sum right", r, order)


def case_stall(outdir):
    bps.init()
    r = bps.rank()
    marker = os.path.join(outdir, "stall.done")
    a, b = torch.ones(6), torch.ones(3)
    wait(bps.push_pull_async_inplace(a, name="layer.weight", average=False), "a")
    if r == 0:
        try:
            # A server names the tensor; a machine's local group, whose
            # laggard never declared it, names its key and the worker.
            msg, took = expect_failure("push_pull of layer.bias",
                                       lambda: bps.push_pull_async_inplace(b, name="layer.bias", average=False),
                                       "stall", "GOBPS_STALL_SHUTDOWN", "key 1.0")
            check("worker(s) [1] have not pushed" in msg or "for worker 1 (pid" in msg,
                  "the report does not name worker 1: %s", msg)
        finally:
            with open(marker, "w") as f:
                f.write("done\n")
        say("stall: rank 0 failed in %.2f s: %s", took, msg)
    else:
        # Skips layer.bias, as a buggy training loop would.
        deadline = time.monotonic() + BOUND
        while not os.path.exists(marker):
            check(time.monotonic() < deadline, "rank 0 wrote no verdict in %.0f s", BOUND)
            time.sleep(0.05)


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    case = sys.argv[1]
    cases = {
        "names": case_names,
        "order": case_order,
        "shape": case_shape,
        "onerank": case_onerank,
        "earlyexit": case_earlyexit,
        "join": case_join,
        "suspend": case_suspend,
        "reserve": case_reserve,
        "stall": case_stall,
    }
    if case not in cases:
        sys.exit("unknown case %r; cases: %s" % (case, ", ".join(sorted(cases))))
    try:
        cases[case](*sys.argv[2:])
    except CheckFailed as e:
        print("FAIL %s: %s" % (case, e), file=sys.stderr)
        sys.exit(1)
    print("%s ok rank %d" % (case, bps.rank()), flush=True)


if __name__ == "__main__":
    main()
