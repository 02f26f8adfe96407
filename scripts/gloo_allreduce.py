#!/usr/bin/python3
"""One rank of torch.distributed's gloo all_reduce, timed like
`bpsbench allreduce` and `bpsbench psworker`: integer-valued float32 data
(the sum is exact in any order), a barrier before every timed call, every
element checked. Prints one line:

    gloo rank=0 ranks=4 bytes=67108864 iters=10 median_ms=... min_ms=... max_ms=... exact=true

Run by scripts/bench_allreduce_vs_ps.sh on every worker host, with
GLOO_SOCKET_IFNAME naming the host's interface.
"""
import argparse
import datetime
import sys
import time

PERIOD = 251  # as bpsbench's fillExact: values and sums stay small integers


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rank", type=int, required=True)
    ap.add_argument("--ranks", type=int, required=True)
    ap.add_argument("--master", required=True, help="host:port of rank 0's rendezvous store")
    ap.add_argument("--bytes", type=int, required=True)
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--timeout", type=float, default=600)
    a = ap.parse_args()

    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)  # the hosts share two cores
    dist.init_process_group(
        "gloo",
        init_method="tcp://" + a.master,
        rank=a.rank,
        world_size=a.ranks,
        timeout=datetime.timedelta(seconds=a.timeout),
    )
    count = a.bytes // 4
    idx = torch.arange(count, dtype=torch.int64)
    n = a.ranks
    times = []
    for it in range(a.warmup + a.iters):
        base = ((idx + (it * 17) % PERIOD) % PERIOD).to(torch.float32)
        vals = base * float(a.rank + 1)
        dist.barrier()
        t0 = time.perf_counter()
        dist.all_reduce(vals, op=dist.ReduceOp.SUM)
        el = time.perf_counter() - t0
        want = base * float(n * (n + 1) // 2)
        if not torch.equal(vals, want):
            bad = (vals != want).nonzero()[0].item()
            print(f"gloo rank={a.rank}: iteration {it}: element {bad} is {vals[bad].item()}, want {want[bad].item()}",
                  file=sys.stderr)
            sys.exit(1)
        if it >= a.warmup:
            times.append(el)
    dist.barrier()
    dist.destroy_process_group()
    s = sorted(times)
    med = s[(len(s) - 1) // 2]
    print(f"gloo rank={a.rank} ranks={n} bytes={a.bytes} iters={a.iters} "
          f"median_ms={med * 1e3:.2f} min_ms={s[0] * 1e3:.2f} max_ms={s[-1] * 1e3:.2f} exact=true", flush=True)


if __name__ == "__main__":
    main()
