"""A training script written the way BytePS's example/pytorch scripts are
(train_mnist_byteps.py, benchmark_byteps_ddp.py,
benchmark_cross_barrier_byteps.py): it imports byteps, not gobps, and
trains on torchvision's FakeData (generated, nothing to download). It runs
on gobps unedited under

    bpsrun --byteps-compat --local -np 2 -- /usr/bin/python3 byteps_example.py --mode MODE

with MODE one of optimizer (DistributedOptimizer), ddp
(byteps.torch.parallel.DistributedDataParallel) or cross_barrier
(byteps.torch.cross_barrier.CrossBarrier). Everything up to "gobps's
check" is the BytePS way; that last part trains one process on the
concatenated batches in the same process and compares, then prints
"byteps_example MODE ok rank R" (cgo/torch_test.go runs it).
"""

from __future__ import print_function

import argparse
import os
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.optim as optim
import torch.utils.data.distributed
from torchvision import datasets, transforms

import byteps.torch
from byteps.torch.parallel import DistributedDataParallel as DDP

# Training settings
parser = argparse.ArgumentParser(description='PyTorch FakeData Example')
parser.add_argument('--mode', choices=['optimizer', 'ddp', 'cross_barrier'], default='optimizer',
                    help='how gradients are averaged')
parser.add_argument('--batch-size', type=int, default=8, metavar='N',
                    help='input batch size for training (default: 8)')
parser.add_argument('--test-batch-size', type=int, default=16, metavar='N',
                    help='input batch size for testing (default: 16)')
parser.add_argument('--epochs', type=int, default=2, metavar='N',
                    help='number of epochs to train (default: 2)')
parser.add_argument('--lr', type=float, default=0.05, metavar='LR',
                    help='learning rate (default: 0.05)')
parser.add_argument('--momentum', type=float, default=0.5, metavar='M',
                    help='SGD momentum (default: 0.5)')
parser.add_argument('--no-cuda', action='store_true', default=False,
                    help='disables CUDA training')
parser.add_argument('--seed', type=int, default=42, metavar='S',
                    help='random seed (default: 42)')
parser.add_argument('--fp16-pushpull', action='store_true', default=False,
                    help='use fp16 compression during pushpull')
args = parser.parse_args()
args.cuda = not args.no_cuda and torch.cuda.is_available()

if args.mode == 'cross_barrier':
    import byteps.torch.cross_barrier as bps
else:
    import byteps.torch as bps

# BytePS: initialize library.
bps.init()
torch.manual_seed(args.seed)
torch.set_num_threads(1)

if args.cuda:
    # BytePS: pin GPU to local rank.
    torch.cuda.set_device(bps.local_rank())
    torch.cuda.manual_seed(args.seed)

kwargs = {'num_workers': 0, 'pin_memory': True} if args.cuda else {}
train_dataset = datasets.FakeData(size=64, image_size=(1, 8, 8), num_classes=10,
                                  transform=transforms.ToTensor())
# BytePS: use DistributedSampler to partition the training data.
train_sampler = torch.utils.data.distributed.DistributedSampler(
    train_dataset, num_replicas=bps.size(), rank=bps.rank())
train_loader = torch.utils.data.DataLoader(
    train_dataset, batch_size=args.batch_size, sampler=train_sampler, **kwargs)

test_dataset = datasets.FakeData(size=32, image_size=(1, 8, 8), num_classes=10,
                                 transform=transforms.ToTensor(), random_offset=1000)
# BytePS: use DistributedSampler to partition the test data.
test_sampler = torch.utils.data.distributed.DistributedSampler(
    test_dataset, num_replicas=bps.size(), rank=bps.rank())
test_loader = torch.utils.data.DataLoader(test_dataset, batch_size=args.test_batch_size,
                                          sampler=test_sampler, **kwargs)


class Net(nn.Module):
    def __init__(self):
        super(Net, self).__init__()
        self.conv1 = nn.Conv2d(1, 4, kernel_size=3, padding=1)
        self.fc1 = nn.Linear(64, 32)
        self.fc2 = nn.Linear(32, 10)

    def forward(self, x):
        x = F.relu(F.max_pool2d(self.conv1(x), 2))
        x = x.view(-1, 64)
        x = F.relu(self.fc1(x))
        x = self.fc2(x)
        return F.log_softmax(x, dim=1)


model = Net()

if args.cuda:
    # Move model to GPU.
    model.cuda()

steps_per_epoch = len(train_loader)

# BytePS: (optional) compression algorithm.
compression = bps.Compression.fp16 if args.fp16_pushpull else bps.Compression.none

if args.mode == 'ddp':
    optimizer = optim.SGD(model.parameters(), lr=args.lr, momentum=args.momentum)
    model = DDP(model, device_ids=[bps.local_rank()])
elif args.mode == 'cross_barrier':
    # Wrap Torch optimizer with CrossBarrier.
    optimizer = bps.CrossBarrier(model,
                                 optim.SGD(model.parameters(), lr=args.lr, momentum=args.momentum),
                                 named_parameters=model.named_parameters(),
                                 compression=compression,
                                 num_steps=args.epochs * steps_per_epoch)
else:
    optimizer = optim.SGD(model.parameters(), lr=args.lr, momentum=args.momentum)
    # BytePS: wrap optimizer with DistributedOptimizer.
    optimizer = bps.DistributedOptimizer(optimizer,
                                         named_parameters=model.named_parameters(),
                                         compression=compression)

# BytePS: broadcast parameters & optimizer state.
bps.broadcast_parameters(model.state_dict(), root_rank=0)
bps.broadcast_optimizer_state(optimizer, root_rank=0)


def train(epoch):
    model.train()
    # BytePS: set epoch to sampler for shuffling.
    train_sampler.set_epoch(epoch)
    for batch_idx, (data, target) in enumerate(train_loader):
        if args.cuda:
            data, target = data.cuda(), target.cuda()
        optimizer.zero_grad()
        output = model(data)
        loss = F.nll_loss(output, target)
        loss.backward()
        optimizer.step()
        if batch_idx % 2 == 0 and bps.rank() == 0:
            print('Train Epoch: {} [{}/{}]\tLoss: {:.6f}'.format(
                epoch, batch_idx * len(data), len(train_sampler), loss.item()))


def metric_average(val, name):
    tensor = torch.tensor(val)
    if args.cuda:
        tensor = tensor.cuda()
    avg_tensor = byteps.torch.push_pull(tensor, name=name)
    return avg_tensor.item()


def test():
    model.eval()
    test_loss = 0.
    test_accuracy = 0.
    for data, target in test_loader:
        if args.cuda:
            data, target = data.cuda(), target.cuda()
        output = model(data)
        # sum up batch loss
        test_loss += F.nll_loss(output, target, reduction='sum').item()
        # get the index of the max log-probability
        pred = output.data.max(1, keepdim=True)[1]
        test_accuracy += pred.eq(target.data.view_as(pred)).cpu().float().sum().item()

    # BytePS: use test_sampler to determine the number of examples in
    # this worker's partition.
    test_loss /= len(test_sampler)
    test_accuracy /= len(test_sampler)

    # BytePS: average metric values across workers.
    test_loss = metric_average(test_loss, 'avg_loss')
    test_accuracy = metric_average(test_accuracy, 'avg_accuracy')

    # BytePS: print output only on first rank.
    if bps.rank() == 0:
        print('\nTest set: Average loss: {:.4f}, Accuracy: {:.2f}%\n'.format(
            test_loss, 100. * test_accuracy))
    return test_loss, test_accuracy


for epoch in range(1, args.epochs + 1):
    train(epoch)
metrics = test()


# ---------------------------------------------------------------- gobps's check
# One process trained with plain SGD on the concatenation of every worker's
# batches (each worker's sampler is rebuilt for its rank), from the same
# seed; the workers' parameters and averaged metrics must match it.

def gobps_check():
    n = bps.size()
    torch.manual_seed(args.seed)
    ref = Net()
    ref_opt = optim.SGD(ref.parameters(), lr=args.lr, momentum=args.momentum)
    samplers = [torch.utils.data.distributed.DistributedSampler(train_dataset, num_replicas=n, rank=q)
                for q in range(n)]
    for epoch in range(1, args.epochs + 1):
        loaders = []
        for s in samplers:
            s.set_epoch(epoch)
            loaders.append(torch.utils.data.DataLoader(train_dataset, batch_size=args.batch_size, sampler=s))
        for batches in zip(*loaders):
            data = torch.cat([b[0] for b in batches])
            target = torch.cat([b[1] for b in batches])
            ref_opt.zero_grad()
            # every worker's batch is equally big: the mean of their means
            F.nll_loss(ref(data), target).backward()
            ref_opt.step()
    trained = model.module if args.mode == 'ddp' else model
    if args.mode == 'cross_barrier':
        optimizer.synchronize()
    worst = 0.0
    for (name, p), q in zip(trained.named_parameters(), ref.parameters()):
        d = float(((p.detach() - q.detach()).abs() / (1 + q.detach().abs())).max())
        worst = max(worst, d)
        if d > 1e-5:
            sys.exit("FAIL byteps_example %s: %s differs from one process by %.3g" % (args.mode, name, d))
    ref.eval()
    loss, correct = 0.0, 0.0
    with torch.no_grad():
        for data, target in torch.utils.data.DataLoader(test_dataset, batch_size=len(test_dataset)):
            out = ref(data)
            loss += F.nll_loss(out, target, reduction='sum').item()
            correct += out.max(1)[1].eq(target).float().sum().item()
    want = (loss / len(test_dataset), correct / len(test_dataset))
    for what, got, w in zip(("avg_loss", "avg_accuracy"), metrics, want):
        if abs(got - w) > 1e-5 * (1 + abs(w)):
            sys.exit("FAIL byteps_example %s: %s is %r, one process gives %r" % (args.mode, what, got, w))
    speed = byteps.torch.get_pushpull_speed()
    if bps.rank() == 0:
        print("byteps_example %s: parameters vs one process: max |dw|/(1+|w|) = %.3g; avg_loss %.6f, avg_accuracy "
              "%.4f as one process; pushpull speed %.2f MB/s" % (args.mode, worst, metrics[0], metrics[1], speed[1]))
    print("byteps_example %s ok rank %s" % (args.mode, os.environ.get("BYTEPS_LOCAL_RANK", "-")))


gobps_check()
