package cluster

import (
	"encoding/binary"
	"fmt"
	"slices"
	"time"

	"github.com/gobps/gobps/proto"
)

// Progress is a worker's cumulative counts since it started, which it
// sends to the coordinator every GOBPS_PROGRESS (Member.Progress); the
// coordinator logs one progress line for the job from them.
type Progress struct {
	Ops   uint64 // push_pulls (and broadcasts) completed
	Bytes uint64 // the tensor bytes of those operations
}

const progressSize = 16

func (p Progress) encode() []byte {
	b := make([]byte, progressSize)
	binary.BigEndian.PutUint64(b, p.Ops)
	binary.BigEndian.PutUint64(b[8:], p.Bytes)
	return b
}

func decodeProgress(b []byte) (Progress, error) {
	if len(b) != progressSize {
		return Progress{}, fmt.Errorf("progress payload of %d bytes, want %d", len(b), progressSize)
	}
	return Progress{Ops: binary.BigEndian.Uint64(b), Bytes: binary.BigEndian.Uint64(b[8:])}, nil
}

// Progress sends this worker's counts to the coordinator.
func (m *Member) Progress(p Progress) error {
	return m.write(proto.Header{Op: proto.OpProgress}, p.encode())
}

// progress is the coordinator's view of the workers' counts (owned by
// the loop).
type progress struct {
	every time.Duration // CoordinatorConfig.Progress; 0: off
	next  time.Time     // when the next line is due
	by    map[int]*workerProgress
}

type workerProgress struct {
	last, prev     Progress
	lastAt, prevAt time.Time
}

// rate is the worker's push_pulls and bytes per second between its last
// two reports.
func (w *workerProgress) rate() (ops, bytes float64, ok bool) {
	dt := w.lastAt.Sub(w.prevAt).Seconds()
	if w.prevAt.IsZero() || dt <= 0 || w.last.Ops < w.prev.Ops || w.last.Bytes < w.prev.Bytes {
		return 0, 0, false
	}
	return float64(w.last.Ops-w.prev.Ops) / dt, float64(w.last.Bytes-w.prev.Bytes) / dt, true
}

// record takes a worker's report.
func (pr *progress) record(rank int, p Progress, now time.Time) {
	if pr.by == nil {
		pr.by = map[int]*workerProgress{}
	}
	w := pr.by[rank]
	if w == nil {
		w = &workerProgress{}
		pr.by[rank] = w
	}
	w.prev, w.prevAt = w.last, w.lastAt
	w.last, w.lastAt = p, now
}

// forget drops a worker that left or died.
func (pr *progress) forget(rank int) { delete(pr.by, rank) }

// line is the job's progress line at now, or "" when no line is due or
// no worker has reported twice recently. workers is the job's number.
func (pr *progress) line(now time.Time, workers int) string {
	if pr.every <= 0 || now.Before(pr.next) {
		return ""
	}
	pr.next = now.Add(pr.every)
	type r struct {
		rank       int
		ops, bytes float64
	}
	var rs []r
	for rank, w := range pr.by {
		if now.Sub(w.lastAt) > 3*pr.every {
			continue // silent: stopped reporting
		}
		if ops, bytes, ok := w.rate(); ok {
			rs = append(rs, r{rank, ops, bytes})
		}
	}
	if len(rs) == 0 {
		return ""
	}
	// The slowest: fewest push_pulls a second, then fewest bytes, then
	// the lowest rank (a fixed order, for a stable line).
	slices.SortFunc(rs, func(a, b r) int {
		switch {
		case a.ops != b.ops:
			if a.ops < b.ops {
				return -1
			}
			return 1
		case a.bytes != b.bytes:
			if a.bytes < b.bytes {
				return -1
			}
			return 1
		}
		return a.rank - b.rank
	})
	var ops, bytes float64
	for _, x := range rs {
		ops += x.ops
		bytes += x.bytes
	}
	n := float64(len(rs))
	s := rs[0]
	return fmt.Sprintf("progress: %d of %d workers reporting: %.1f push_pulls/s and %.3f GB/s per worker; slowest worker %d: %.1f push_pulls/s, %.3f GB/s",
		len(rs), workers, ops/n, bytes/n/1e9, s.rank, s.ops, s.bytes/1e9)
}

// progressTick is the coordinator's tick that progress lines need: a
// quarter of the interval (a line is at most that late), or no limit.
func progressTick(every time.Duration) time.Duration {
	if every <= 0 {
		return time.Hour
	}
	return max(every/4, time.Millisecond)
}
