#!/usr/bin/env python3
"""Where a step's time goes: lines up the step times that
examples/pytorch/benchmark.py --timeline writes with gobps's communication
timeline of the same worker (BYTEPS_TRACE_ON=1: TRACE_DIR/RANK/comm.json),
on the wall clock, and prints the medians over the timed steps:

    timeline_overlap.py STEPS.json COMM.json [STEPS.json COMM.json ...]

For each step i: its period (begin of step i+1 minus begin of step i), its
forward pass, backward pass and optimizer.step() as the training thread saw
them, and its gradients' communication (every partition of every
"Gradient." push_pull of round i: first push queued to last answer in).
Then where the communication of step i ends: how long after backward it
goes on, how much of that overlaps step i+1's forward pass (CrossBarrier's
gain: a layer's forward starts once its own parameters are back), and how
long the training thread was blocked on it (optimizer.step(), or in
CrossBarrier's forward pre-hooks: the forward pass beyond the plain one).

Standard library only.
"""

import datetime
import json
import re
import sys


def parse_start(s):
    """RFC 3339 with nanoseconds -> seconds since the epoch."""
    m = re.match(r"(.*T\d\d:\d\d:\d\d)(\.\d+)?(Z|[+-]\d\d:\d\d)$", s)
    if not m:
        raise SystemExit("timeline_overlap: cannot parse the trace's start %r" % s)
    base = datetime.datetime.fromisoformat(m.group(1) + ("+00:00" if m.group(3) == "Z" else m.group(3)))
    return base.timestamp() + float(m.group(2) or 0)


def median(xs):
    xs = sorted(xs)
    if not xs:
        return float("nan")
    return (xs[(len(xs) - 1) // 2] + xs[len(xs) // 2]) / 2


def comm_windows(path):
    """round -> (first start, last end) of the gradients' partitions, in
    seconds since the epoch."""
    with open(path) as f:
        doc = json.load(f)
    t0 = parse_start(doc["otherData"]["start"])
    win = {}
    for ev in doc["traceEvents"]:
        if ev.get("ph") != "X" or not ev.get("name", "").startswith("Gradient."):
            continue
        r = ev["args"]["round"]
        a, b = t0 + ev["ts"] / 1e6, t0 + (ev["ts"] + ev["dur"]) / 1e6
        lo, hi = win.get(r, (a, b))
        win[r] = (min(lo, a), max(hi, b))
    return win


def analyse(steps_path, comm_path):
    with open(steps_path) as f:
        tl = json.load(f)
    steps, win = tl["steps"], comm_windows(comm_path)
    rows = []
    # Timed steps only, and each needs the next one's begin.
    for i in range(tl["warmup"], len(steps) - 1):
        s, nxt = steps[i], steps[i + 1]
        if i not in win:
            continue
        c0, c1 = win[i]
        rows.append({
            "period": nxt["begin"] - s["begin"],
            "forward": s["backward"] - s["forward"],
            "backward": s["step"] - s["backward"],
            "step()": s["end"] - s["step"],
            "comm": c1 - c0,
            "comm after backward": max(0.0, c1 - s["step"]),
            "overlapped with next forward": max(0.0, min(c1, nxt["backward"]) - nxt["forward"]),
            "next first layer starts before comm ends": max(0.0, c1 - nxt["layers"][0]),
        })
    return tl, rows


def main(argv):
    if len(argv) < 2 or len(argv) % 2:
        raise SystemExit(__doc__)
    keys = ["period", "forward", "backward", "step()", "comm", "comm after backward",
            "overlapped with next forward", "next first layer starts before comm ends"]
    cols = []
    for i in range(0, len(argv), 2):
        tl, rows = analyse(argv[i], argv[i + 1])
        if not rows:
            raise SystemExit("timeline_overlap: no timed step of %s has a communication round in %s" % (
                argv[i], argv[i + 1]))
        cols.append(("%s (%d steps)" % (tl["optimizer"], len(rows)), {k: median([r[k] for r in rows]) for k in keys}))
    print("| median, ms | " + " | ".join(c[0] for c in cols) + " |")
    print("|---|" + "---:|" * len(cols))
    for k in keys:
        print("| %s | %s |" % (k, " | ".join("%.0f" % (1000 * c[1][k]) for c in cols)))


if __name__ == "__main__":
    main(sys.argv[1:])
