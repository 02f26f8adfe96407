"""The push_pull throughput that get_pushpull_speed reports.

byteps measures it in its C++ core: it adds up the bytes of the push_pulls
that complete and, every 10 seconds, queues (time, bytes / 10 s); each call
of get_pushpull_speed pops one entry, or returns (0, -5.0) when none is
queued. gobps measures it in the plugin instead, from the push_pulls it
started and saw complete, over a sliding window:

- a push_pull counts the bytes of the tensor handed to the library (after
  compression: what goes on the wire, as in byteps), once;
- it is timed from the call that started it to the moment the plugin saw
  it complete (synchronize returning, or poll returning True): the library
  reports no completion times, so a push_pull that is synchronized late
  counts as busy until then, and the figure is a lower bound of the
  engine's own speed;
- the window holds the push_pulls seen complete in the last ``window``
  seconds (10, as byteps);
- the speed is their bytes divided by the time at least one of them was in
  flight (the union of their intervals), in megabytes (10^6 bytes) per
  second: idle time between steps does not count, overlapping push_pulls
  are not counted twice;
- with nothing in the window it returns (0, -5.0), byteps's value for "no
  measurement yet".
"""

import collections
import threading
import time

NO_MEASUREMENT = (0, -5.0)


class Meter(object):
    """Times push_pulls by key (the handle). Thread-safe.

    ``clock`` (seconds, monotonic) times the intervals; ``wall`` (seconds
    since the epoch) gives the timestamp that speed() returns. Both can be
    replaced for tests."""

    def __init__(self, window=10.0, clock=time.monotonic, wall=time.time, limit=1 << 16):
        self.window = window
        self._clock = clock
        self._wall = wall
        self._limit = limit
        self._lock = threading.Lock()
        self._started = {}  # key -> (start, bytes)
        self._done = collections.deque()  # (start, end, bytes, wall ms at end), by end

    def started(self, key, nbytes):
        if nbytes <= 0:
            return  # completes at once, moves nothing
        with self._lock:
            self._started[key] = (self._clock(), nbytes)

    def completed(self, key):
        """Records the completion of key's push_pull (a no-op for a key that
        was not started, or was already recorded)."""
        with self._lock:
            entry = self._started.pop(key, None)
            if entry is None:
                return
            end = self._clock()
            self._done.append((entry[0], end, entry[1], int(self._wall() * 1000)))
            while len(self._done) > self._limit:
                self._done.popleft()

    def discard(self, key):
        """Forgets key's push_pull (it failed)."""
        with self._lock:
            self._started.pop(key, None)

    def speed(self):
        """(ms since the epoch of the last completion in the window, MB/s),
        or (0, -5.0) when the window is empty."""
        with self._lock:
            now = self._clock()
            while self._done and self._done[0][1] < now - self.window:
                self._done.popleft()
            if not self._done:
                return NO_MEASUREMENT
            done = list(self._done)
        total = sum(d[2] for d in done)
        busy, cur_start, cur_end = 0.0, None, None
        for start, end, _, _ in sorted(done):
            if cur_end is None or start > cur_end:
                if cur_end is not None:
                    busy += cur_end - cur_start
                cur_start, cur_end = start, end
            elif end > cur_end:
                cur_end = end
        busy += cur_end - cur_start
        ts = max(d[3] for d in done)
        if busy <= 0:
            return NO_MEASUREMENT  # below the clock's resolution
        return ts, total / busy / 1e6
