"""gobps.torch.parallel: byteps.torch.parallel's DistributedDataParallel
over gobps."""

from gobps.torch.parallel.distributed import DistributedDataParallel

__all__ = ["DistributedDataParallel"]
