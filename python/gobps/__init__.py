"""gobps: a BytePS-style parameter server for data-parallel training.

The engine is written in Go and runs inside the training process as a C
shared library, libgobps.so (built from cgo/ with
``go build -buildmode=c-shared -o build/libgobps.so ./cgo``).
Framework plugins live in subpackages; ``gobps.torch`` is a drop-in for
``byteps.torch``::

    import gobps.torch as bps

Start a job with ``bpsrun --local -np 2 --servers 2 -- /usr/bin/python3 train.py``.
"""

from gobps._lib import (ConfigError, GobpsError, InvalidArgumentError,
                        JobFailedError, LibraryNotFoundError,
                        NotInitializedError, UnsupportedDTypeError)

__version__ = "0.1.0"

__all__ = [
    "ConfigError", "GobpsError", "InvalidArgumentError", "JobFailedError",
    "LibraryNotFoundError", "NotInitializedError", "UnsupportedDTypeError",
]
