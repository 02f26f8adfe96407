package core

import (
	"sync/atomic"
	"time"

	"github.com/gobps/gobps/core/lifecycle"
)

// EngineMetrics are a worker engine's counters and gauges at one moment,
// for monitoring (the metrics package exports them to Prometheus). Counters
// are cumulative from Init.
type EngineMetrics struct {
	// Servers are the counts per server, by server rank.
	Servers []ServerMetrics
	// OpsCompleted and OpsFailed count the operations (PushPull,
	// Broadcast, their copies and device forms, ghost rounds of Join)
	// whose handles completed without an error and with one; OpsOpen is
	// the number started and not yet complete.
	OpsCompleted, OpsFailed uint64
	OpsOpen                 int
	// BytesCompleted is the tensor bytes of the operations completed
	// without an error.
	BytesCompleted uint64
	// Queued is the number of partitions in the scheduler's queue,
	// waiting for credit (a few may have failed there already).
	Queued int
	// CreditInUse is the bytes of partitions dispatched whose push has
	// not yet been sent; Credit is the most there may be
	// (BYTEPS_SCHEDULING_CREDIT).
	CreditInUse, Credit int
}

// ServerMetrics are what a worker exchanged with one server.
type ServerMetrics struct {
	Rank int
	// Pushes and PushBytes: partitions pushed (the Send returned without
	// an error) and their bytes. Pulls: pull requests of broadcast
	// receivers, which push nothing.
	Pushes, PushBytes, Pulls uint64
	// Answers: partitions whose sum (or broadcast value) came back whole;
	// AnswerBytes: the bytes of answers received.
	Answers, AnswerBytes uint64
	// Failed: partitions that finished with an error.
	Failed uint64
	// Latency is the distribution of push-pull times, from the moment a
	// lane began to send a partition to the moment the partition
	// finished (its sum in place, divided, and out of local aggregation
	// where it takes part), for partitions that finished without an
	// error; empty until MeasureLatency.
	Latency Histogram
}

// Histogram is a cumulative latency distribution in seconds.
type Histogram struct {
	// Bounds are the buckets' upper bounds, in seconds, ascending;
	// Counts[i] is the number of observations at most Bounds[i].
	Bounds []float64
	Counts []uint64
	// Count and Sum are the number and the sum of every observation
	// (Count is also the +Inf bucket).
	Count uint64
	Sum   float64
}

// LatencyBounds are the upper bounds, in seconds, of the push-pull latency
// histogram's buckets: 100 µs to about 52 s, doubling.
var LatencyBounds = func() []float64 {
	b := make([]float64, latencyBuckets)
	for i := range b {
		b[i] = float64(latencyBase<<i) / float64(time.Second)
	}
	return b
}()

const (
	latencyBuckets = 20
	latencyBase    = 100 * time.Microsecond
)

// latency is one lane's histogram, counted atomically: observe is called
// by whichever goroutine finishes a partition, the scrape reads it at any
// time.
type latency struct {
	on      atomic.Bool // MeasureLatency was called
	buckets [latencyBuckets + 1]atomic.Uint64
	count   atomic.Uint64
	sum     atomic.Uint64 // nanoseconds
}

// clockBase is the origin of the engine's clock for Task.Stamp: monotonic
// nanoseconds since the process started, never 0.
var clockBase = time.Now()

func stamp() int64 { return int64(time.Since(clockBase)) + 1 }

// stampFor is the Stamp for a partition a lane of l's begins to send: 0
// unless latency is measured.
func (h *latency) stampFor() int64 {
	if !h.on.Load() {
		return 0
	}
	return stamp()
}

func (h *latency) observe(d time.Duration) {
	i := 0
	for i < latencyBuckets && d > latencyBase<<i {
		i++
	}
	h.buckets[i].Add(1)
	h.count.Add(1)
	h.sum.Add(uint64(max(d, 0)))
}

// addTo adds h's observations to out, cumulative by bucket.
func (h *latency) addTo(out *Histogram) {
	if out.Counts == nil {
		out.Bounds, out.Counts = LatencyBounds, make([]uint64, latencyBuckets)
	}
	var cum uint64
	for i := 0; i < latencyBuckets; i++ {
		cum += h.buckets[i].Load()
		out.Counts[i] += cum
	}
	out.Count += h.count.Load()
	out.Sum += float64(h.sum.Load()) / float64(time.Second)
}

// finishedTask records the latency of t, which finished with err, in its
// lane's histogram when the lane stamped it.
func (e *Engine) finishedTask(t *lifecycle.Task, err error) {
	if t.Stamp == 0 || err != nil {
		return
	}
	e.servers[t.Part.Server].lanes[t.Part.Lane].latency.observe(time.Duration(stamp() - t.Stamp))
}

// MeasureLatency starts timing every partition's push-pull for the
// Latency histograms of Metrics. Until it is called the engine does not
// read the clock for them. Safe to call at any time, more than once.
func (e *Engine) MeasureLatency() {
	if e == nil {
		return
	}
	for _, s := range e.servers {
		for _, l := range s.lanes {
			l.latency.on.Store(true)
		}
	}
}

// Metrics returns the engine's counters and gauges now. It takes the
// engine's lock for the time of a copy; a monitoring scrape may call it
// at any time, after Shutdown too.
func (e *Engine) Metrics() EngineMetrics {
	if e == nil {
		return EngineMetrics{}
	}
	e.mu.Lock()
	c := e.mu.m.Counts()
	out := EngineMetrics{
		OpsCompleted: c.OpsCompleted, OpsFailed: c.OpsFailed, OpsOpen: e.mu.open, BytesCompleted: c.BytesCompleted,
		Queued: e.mu.m.Queued(), CreditInUse: e.mu.m.InFlight(), Credit: e.cfg.SchedulingCredit,
	}
	e.mu.Unlock()
	out.Servers = make([]ServerMetrics, len(e.servers))
	for i, s := range e.servers {
		m := &out.Servers[i]
		m.Rank = s.rank
		if i < len(c.Servers) {
			sc := c.Servers[i]
			m.Pushes, m.PushBytes, m.Pulls = sc.Pushes, sc.PushBytes, sc.Pulls
			m.Answers, m.AnswerBytes, m.Failed = sc.Answers, sc.AnswerBytes, sc.Failed
		}
		for _, l := range s.lanes {
			l.latency.addTo(&m.Latency)
		}
	}
	return out
}
