"""Trains a small CNN on scikit-learn's handwritten digits with gobps.

    bpsrun --local -np 2 --servers 2 -- /usr/bin/python3 examples/pytorch/train_digits.py

The data set is scikit-learn's bundled 8x8 digits (1797 images, 10 classes;
Debian's python3-sklearn), split 80/20 into training and test sets. Every
worker sees the same data and the same order of global batches (both come
from --seed); worker r of n trains on the r-th contiguous shard of each
global batch, and DistributedOptimizer averages the gradients, so the job
trains as one process would on the whole batch. Rank 0's initial weights are
broadcast to everyone before the first step.

Rank 0 prints, per epoch, the training loss (averaged over all workers), the
test accuracy (the test set is split over the workers and the counts
summed) and the training throughput in samples per second over all workers.

The only gobps-specific lines are marked "gobps:"; with byteps installed,
``import byteps.torch as bps`` runs the same script.
"""

import argparse
import os
import sys
import time

import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

try:
    import gobps.torch as bps  # gobps: the one changed line
except ImportError:  # running from a source tree: use its python/ directory
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "python"))
    import gobps.torch as bps


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--epochs", type=int, default=10, help="passes over the training set")
    p.add_argument("--batch-size", type=int, default=64, help="global batch size, split evenly over the workers")
    p.add_argument("--lr", type=float, default=0.05, help="SGD learning rate")
    p.add_argument("--momentum", type=float, default=0.9, help="SGD momentum")
    p.add_argument("--seed", type=int, default=1, help="seed of the split, the batch order and the weights")
    p.add_argument("--fp16", action="store_true", help="send gradients as float16 (Compression.fp16)")
    p.add_argument("--threads", type=int, default=1, help="torch threads per worker")
    return p.parse_args()


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(1, 16, 3, padding=1)   # 16 x 8 x 8
        self.conv2 = torch.nn.Conv2d(16, 32, 3, padding=1)  # 32 x 4 x 4
        self.fc1 = torch.nn.Linear(32 * 2 * 2, 64)
        self.fc2 = torch.nn.Linear(64, 10)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = F.relu(self.fc1(x.flatten(1)))
        return self.fc2(x)


def main():
    args = parse_args()
    torch.set_num_threads(args.threads)
    bps.init()  # gobps: join the job (bpsrun sets the environment)
    rank, size = bps.rank(), bps.size()
    if args.batch_size % size:
        sys.exit("train_digits: --batch-size %d does not split evenly over %d workers" % (args.batch_size, size))

    digits = load_digits()
    x = torch.tensor(digits.data, dtype=torch.float32).reshape(-1, 1, 8, 8) / 16.0
    y = torch.tensor(digits.target, dtype=torch.int64)
    idx_train, idx_test = train_test_split(range(len(y)), test_size=0.2, random_state=args.seed,
                                           stratify=digits.target)
    x_train, y_train = x[idx_train], y[idx_train]
    x_test, y_test = x[idx_test], y[idx_test]

    torch.manual_seed(args.seed + rank)  # different on every rank until the broadcast
    model = Net()
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=args.momentum)
    # gobps: average gradients over the workers, each sent as soon as backward computes it.
    optimizer = bps.DistributedOptimizer(
        optimizer, named_parameters=model.named_parameters(),
        compression=bps.Compression.fp16 if args.fp16 else bps.Compression.none)
    # gobps: start every worker from rank 0's weights and optimizer state.
    bps.broadcast_parameters(model.state_dict(), root_rank=0)
    bps.broadcast_optimizer_state(optimizer, root_rank=0)

    shard = args.batch_size // size
    steps = len(y_train) // args.batch_size
    if rank == 0:
        print("train_digits: %d training and %d test images, %d workers, global batch %d (%d per worker), "
              "%d steps per epoch" % (len(y_train), len(y_test), size, args.batch_size, shard, steps), flush=True)
    g = torch.Generator().manual_seed(args.seed)
    for epoch in range(1, args.epochs + 1):
        model.train()
        order = torch.randperm(len(y_train), generator=g)  # the same on every worker
        loss_sum = torch.zeros(2, dtype=torch.float64)     # sum of shard losses, steps
        start = time.perf_counter()
        for step in range(steps):
            batch = order[step * args.batch_size:(step + 1) * args.batch_size]
            mine = batch[rank * shard:(rank + 1) * shard]
            optimizer.zero_grad()
            loss = F.cross_entropy(model(x_train[mine]), y_train[mine])
            loss.backward()
            optimizer.step()
            loss_sum += torch.tensor([loss.item(), 1.0], dtype=torch.float64)
        elapsed = time.perf_counter() - start
        # gobps: average the loss and the epoch time over the workers.
        stats = bps.push_pull(torch.cat([loss_sum, torch.tensor([elapsed], dtype=torch.float64)]),
                              average=True, name="stats.loss")
        accuracy = evaluate(model, x_test, y_test, rank, size)
        if rank == 0:
            print("epoch %2d/%d  loss %.4f  test accuracy %.2f%%  %.0f samples/s" % (
                epoch, args.epochs, stats[0] / stats[1], 100 * accuracy,
                steps * args.batch_size / stats[2]), flush=True)
    bps.shutdown()


def evaluate(model, x, y, rank, size):
    """Test accuracy over all workers: each counts its share."""
    model.eval()
    lo, hi = rank * len(y) // size, (rank + 1) * len(y) // size
    with torch.no_grad():
        correct = (model(x[lo:hi]).argmax(1) == y[lo:hi]).sum().item()
    counts = bps.push_pull(torch.tensor([correct, hi - lo], dtype=torch.float64), average=False,
                           name="stats.accuracy")
    return float(counts[0] / counts[1])


if __name__ == "__main__":
    main()
