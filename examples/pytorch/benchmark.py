"""Synthetic training throughput of gobps, and of torch DDP for comparison.

In the spirit of BytePS's benchmark_byteps.py: a model trained on fixed
random data, timed over iterations of several batches, reported in samples
per second per worker and in total.

    # gobps: 2 workers, 2 servers on this machine
    bpsrun --local -np 2 --servers 2 -- /usr/bin/python3 examples/pytorch/benchmark.py

    # the same model with torch's DistributedDataParallel over gloo:
    # benchmark.py starts its 2 processes itself (127.0.0.1)
    /usr/bin/python3 examples/pytorch/benchmark.py --mode ddp --np 2

    # both, one after the other, in one run (bpsrun from --bpsrun or PATH)
    /usr/bin/python3 examples/pytorch/benchmark.py --mode compare --np 2 --servers 2

Both modes use the same model, data, batch size, optimizer (SGD with
momentum) and torch thread count. The last line of each run is
``RESULT mode=... workers=... samples_per_sec=...`` (total over workers).
"""

import argparse
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

MODELS = ("cnn", "mlp", "mlp2048", "resnet18")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description="Synthetic training throughput of gobps and torch DDP",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--mode", choices=("gobps", "ddp", "compute", "compare"), default="gobps",
                   help="gobps: run as a worker of a bpsrun job; ddp: start --np processes running torch "
                        "DistributedDataParallel over gloo; compute: the same training step in one process "
                        "with no communication (the limit, per worker); compare: run compute, ddp and gobps "
                        "under bpsrun in turn")
    p.add_argument("--model", choices=MODELS, default="cnn",
                   help="cnn: a small ResNet-style network on 3x32x32 images (0.3M parameters); "
                        "mlp: 1024-4096-4096-1024-10 (25M parameters, communication-heavy); "
                        "mlp2048: 4 layers 2048 wide, 2048-2048-2048-2048-10 (12.6M parameters); "
                        "resnet18: torchvision's ResNet-18 on 3x64x64 images (11.2M parameters)")
    p.add_argument("--batch-size", type=int, default=32, help="batch size per worker")
    p.add_argument("--num-warmup-batches", type=int, default=5, help="batches before timing starts")
    p.add_argument("--num-batches-per-iter", type=int, default=10, help="batches per timed iteration")
    p.add_argument("--num-iters", type=int, default=5, help="timed iterations")
    p.add_argument("--threads", type=int, default=1, help="torch threads per worker")
    p.add_argument("--fp16", action="store_true", help="gobps: Compression.fp16")
    p.add_argument("--optimizer", choices=("distributed", "crossbarrier"), default="distributed",
                   help="gobps: DistributedOptimizer, or CrossBarrier (no global barrier between steps)")
    p.add_argument("--timeline", default=None,
                   help="gobps: rank 0 writes each step's times (wall clock: step, forward and backward "
                        "begin and end, each layer's forward begin) to this JSON file")
    p.add_argument("--np", type=int, default=2, help="ddp and compare: number of workers")
    p.add_argument("--servers", type=int, default=2, help="compare: number of gobps servers")
    p.add_argument("--repeats", type=int, default=1,
                   help="compare: run ddp and gobps alternately this many times each and report the medians "
                        "(less sensitive to other load on the machine)")
    p.add_argument("--with-servers", action="store_true",
                   help="compare: also run gobps with BYTEPS_FORCE_DISTRIBUTED=1 (sums through the servers, "
                        "as before the one-machine path), interleaved with the others")
    p.add_argument("--bpsrun", default=None, help="compare: the bpsrun binary (default: bin/bpsrun of this "
                                                  "source tree, then PATH)")
    return p.parse_args(argv)


class Block(torch.nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = torch.nn.BatchNorm2d(cout)
        self.conv2 = torch.nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = torch.nn.BatchNorm2d(cout)
        self.skip = None
        if stride != 1 or cin != cout:
            self.skip = torch.nn.Sequential(torch.nn.Conv2d(cin, cout, 1, stride, bias=False),
                                            torch.nn.BatchNorm2d(cout))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + (x if self.skip is None else self.skip(x)))


def make_model(name):
    if name == "cnn":
        model = torch.nn.Sequential(
            torch.nn.Conv2d(3, 32, 3, 1, 1, bias=False), torch.nn.BatchNorm2d(32), torch.nn.ReLU(),
            Block(32, 32, 1), Block(32, 64, 2), Block(64, 128, 2),
            torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(128, 10))
        shape = (3, 32, 32)
    elif name == "mlp2048":
        model = torch.nn.Sequential(
            torch.nn.Linear(2048, 2048), torch.nn.ReLU(), torch.nn.Linear(2048, 2048), torch.nn.ReLU(),
            torch.nn.Linear(2048, 2048), torch.nn.ReLU(), torch.nn.Linear(2048, 10))
        shape = (2048,)
    elif name == "resnet18":
        import torchvision
        model = torchvision.models.resnet18(num_classes=10)
        shape = (3, 64, 64)
    else:
        model = torch.nn.Sequential(
            torch.nn.Linear(1024, 4096), torch.nn.ReLU(), torch.nn.Linear(4096, 4096), torch.nn.ReLU(),
            torch.nn.Linear(4096, 1024), torch.nn.ReLU(), torch.nn.Linear(1024, 10))
        shape = (1024,)
    return model, shape


def fake_data(args, shape, seed):
    g = torch.Generator().manual_seed(seed)
    data = [torch.rand((args.batch_size,) + shape, generator=g) for _ in range(10)]
    target = torch.randint(0, 10, (args.batch_size,), generator=g)
    return data, target


class Timeline(object):
    """Wall-clock times of every step (time.time(), the clock gobps's
    BYTEPS_TRACE_ON timeline is anchored to): when the step, its forward
    and backward and optimizer.step() began and ended, and when each
    layer's forward began (after any wait for its parameters: these
    pre-hooks run after CrossBarrier's)."""

    def __init__(self, model, path):
        self.path, self.steps, self.cur = path, [], None
        self.layers = [name for name, m in model.named_modules() if list(m.parameters(recurse=False))]
        for i, (name, m) in enumerate((n, m) for n, m in model.named_modules() if n in self.layers):
            m.register_forward_pre_hook(self._layer_hook(i))

    def _layer_hook(self, i):
        def hook(mod, inputs):
            if self.cur is not None:
                self.cur["layers"][i] = time.time()
        return hook

    def begin(self):
        self.cur = {"begin": time.time(), "layers": [None] * len(self.layers)}
        self.steps.append(self.cur)

    def mark(self, what):
        self.cur[what] = time.time()

    def write(self, extra):
        doc = dict(extra, layers=self.layers, steps=self.steps)
        with open(self.path, "w") as f:
            json.dump(doc, f)


def run_benchmark(args, model, optimizer, rank, size, mode, log, timeline=None):
    _, shape = make_model(args.model)
    data, target = fake_data(args, shape, rank)
    index = [0]
    mark = (lambda what: None) if timeline is None else timeline.mark

    def step():
        x = data[index[0] % len(data)]
        index[0] += 1
        if timeline is not None:
            timeline.begin()
        optimizer.zero_grad()
        mark("forward")
        loss = F.cross_entropy(model(x), target)
        mark("backward")
        loss.backward()
        mark("step")
        optimizer.step()
        mark("end")

    nparams = sum(p.numel() for p in model.parameters())
    log("Model: %s (%.2fM parameters, %.1f MB of float32 gradients)" % (args.model, nparams / 1e6, nparams * 4 / 1e6))
    log("Batch size: %d per worker" % args.batch_size)
    log("Number of workers: %d (%s, %d torch thread%s each)" % (size, mode, args.threads,
                                                               "" if args.threads == 1 else "s"))
    log("Running warmup...")
    for _ in range(args.num_warmup_batches):
        step()
    log("Running benchmark...")
    rates = []
    for it in range(args.num_iters):
        t0 = time.perf_counter()
        for _ in range(args.num_batches_per_iter):
            step()
        rate = args.batch_size * args.num_batches_per_iter / (time.perf_counter() - t0)
        log("Iter #%d: %.1f samples/sec per worker" % (it, rate))
        rates.append(rate)
    mean = sum(rates) / len(rates)
    conf = 1.96 * (sum((r - mean) ** 2 for r in rates) / len(rates)) ** 0.5
    log("Samples/sec per worker: %.1f +-%.1f" % (mean, conf))
    log("Total samples/sec on %d workers: %.1f +-%.1f" % (size, size * mean, size * conf))
    return mean


def gobps_main(args):
    try:
        import gobps.torch as bps
    except ImportError:
        sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "python"))
        import gobps.torch as bps
    torch.set_num_threads(args.threads)
    bps.init()
    rank, size = bps.rank(), bps.size()
    torch.manual_seed(0)
    model, _ = make_model(args.model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    bps.broadcast_parameters(model.state_dict(), root_rank=0)
    bps.broadcast_optimizer_state(optimizer, root_rank=0)
    compression = bps.Compression.fp16 if args.fp16 else bps.Compression.none
    if args.optimizer == "crossbarrier":
        from gobps.torch.cross_barrier import CrossBarrier
        optimizer = CrossBarrier(model, optimizer, named_parameters=model.named_parameters(),
                                 compression=compression)
    else:
        optimizer = bps.DistributedOptimizer(optimizer, named_parameters=model.named_parameters(),
                                             compression=compression)
    timeline = Timeline(model, args.timeline) if args.timeline and rank == 0 else None

    def log(s):
        if rank == 0:
            print(s, flush=True)
    mean = run_benchmark(args, model, optimizer, rank, size, "gobps, %s" % args.optimizer, log, timeline)
    if args.optimizer == "crossbarrier":
        optimizer.synchronize()
        optimizer.close()
    if timeline is not None:
        timeline.write({"optimizer": args.optimizer, "model": args.model, "batch_size": args.batch_size,
                        "workers": size, "warmup": args.num_warmup_batches})
    # The total is the sum over the workers, as measured by each.
    total = bps.push_pull(torch.tensor([mean], dtype=torch.float64), average=False, name="benchmark.total")
    log("RESULT mode=gobps model=%s workers=%d samples_per_sec=%.1f optimizer=%s" % (
        args.model, size, float(total[0]), args.optimizer))
    bps.shutdown()


def ddp_worker(rank, args, port):
    import torch.distributed as dist
    torch.set_num_threads(args.threads)
    dist.init_process_group("gloo", init_method="tcp://127.0.0.1:%d" % port, rank=rank, world_size=args.np)
    torch.manual_seed(0)
    model, _ = make_model(args.model)
    model = torch.nn.parallel.DistributedDataParallel(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    def log(s):
        if rank == 0:
            print(s, flush=True)
    mean = run_benchmark(args, model, optimizer, rank, args.np, "torch DDP over gloo", log)
    total = torch.tensor([mean], dtype=torch.float64)
    dist.all_reduce(total)
    log("RESULT mode=ddp model=%s workers=%d samples_per_sec=%.1f" % (args.model, args.np, float(total[0])))
    dist.destroy_process_group()


def compute_main(args):
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model, _ = make_model(args.model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    mean = run_benchmark(args, model, optimizer, 0, 1, "compute only, no communication", lambda s: print(s, flush=True))
    # As if --np such processes ran side by side, each on a core of its own.
    print("RESULT mode=compute model=%s workers=%d samples_per_sec=%.1f" % (args.model, args.np, args.np * mean), flush=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ddp_main(args):
    import torch.multiprocessing as mp
    mp.spawn(ddp_worker, args=(args, free_port()), nprocs=args.np, join=True)


def find_bpsrun(args):
    if args.bpsrun:
        return args.bpsrun
    here = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "bin", "bpsrun")
    if os.path.exists(here):
        return os.path.normpath(here)
    found = shutil.which("bpsrun")
    if not found:
        sys.exit("benchmark: --mode compare needs bpsrun: build it (make build) or pass --bpsrun")
    return found


def compare_main(args, argv):
    # Forward every option but the mode and the launcher's own.
    rest, skip = [], False
    for a in argv:
        if skip:
            skip = False
            continue
        name = a.split("=", 1)[0]
        if name == "--with-servers":
            continue
        if name in ("--mode", "--np", "--servers", "--bpsrun", "--repeats"):
            skip = "=" not in a
            continue
        rest.append(a)
    me = [sys.executable, os.path.abspath(__file__)]
    cmds = {"compute": me + ["--mode", "compute", "--np", str(args.np)] + rest,
            "ddp": me + ["--mode", "ddp", "--np", str(args.np)] + rest,
            "gobps": [find_bpsrun(args), "--local", "-np", str(args.np), "--servers", str(args.servers), "--"]
            + me + ["--mode", "gobps"] + rest}
    names = ["compute", "ddp", "gobps"]
    env = {name: None for name in names}
    if args.with_servers:
        cmds["gobps-servers"] = cmds["gobps"]
        env["gobps-servers"] = dict(os.environ, BYTEPS_FORCE_DISTRIBUTED="1")
        names.append("gobps-servers")
    results = {name: [] for name in names}
    for i in range(args.repeats):
        for name in names:
            print("benchmark: run %d of %d, %s: %s" % (i + 1, args.repeats, name, " ".join(cmds[name])), flush=True)
            out = subprocess.run(cmds[name], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env[name])
            sys.stdout.write(out.stdout)
            m = re.search(r"RESULT mode=\w+ model=\w+ workers=\d+ samples_per_sec=([0-9.]+)", out.stdout)
            if out.returncode != 0 or not m:
                sys.exit("benchmark: the %s run failed (exit status %d)" % (name, out.returncode))
            results[name].append(float(m.group(1)))

    def median(xs):
        xs = sorted(xs)
        return (xs[(len(xs) - 1) // 2] + xs[len(xs) // 2]) / 2
    g, d, c = median(results["gobps"]), median(results["ddp"]), median(results["compute"])
    print("benchmark: runs: gobps %s, ddp %s, compute-only %s samples/s" % tuple(
        " ".join("%.1f" % x for x in results[k]) for k in ("gobps", "ddp", "compute")))
    print("benchmark: %s, %d workers, batch %d per worker: gobps (%d servers) %.1f samples/s, "
          "torch DDP (gloo) %.1f samples/s: %.2fx; compute-only %.1f samples/s: gobps %.2f of it, DDP %.2f" % (
              args.model, args.np, args.batch_size, args.servers, g, d, g / d, c, g / c, d / c))
    if args.with_servers:
        s = median(results["gobps-servers"])
        print("benchmark: gobps through the servers (BYTEPS_FORCE_DISTRIBUTED=1) %.1f samples/s (runs %s): "
              "%.2fx DDP, %.2f of compute-only; the one-machine path is %.2fx that" % (
                  s, " ".join("%.1f" % x for x in results["gobps-servers"]), s / d, s / c, g / s))


def main():
    argv = sys.argv[1:]
    args = parse_args(argv)
    if args.mode == "gobps":
        gobps_main(args)
    elif args.mode == "ddp":
        ddp_main(args)
    elif args.mode == "compute":
        compute_main(args)
    else:
        compare_main(args, argv)


if __name__ == "__main__":
    main()
