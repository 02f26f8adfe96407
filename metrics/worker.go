package metrics

import (
	"strconv"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/gobps/gobps/config"
	"github.com/gobps/gobps/core"
)

var (
	wPushes    = desc("worker_pushes_total", "Partitions the worker pushed to the server (the send completed).", "server")
	wPushBytes = desc("worker_push_bytes_total", "Bytes the worker pushed to the server.", "server")
	wPullReqs  = desc("worker_pull_requests_total", "Pull requests without a push (a broadcast's receivers) the worker sent to the server.", "server")
	wPulls     = desc("worker_pulls_total", "Partitions whose sum (or broadcast value) the worker received whole from the server.", "server")
	wPullBytes = desc("worker_pull_bytes_total", "Bytes of sums the worker received from the server.", "server")
	wFailed    = desc("worker_partitions_failed_total", "Partitions for the server that finished with an error (abandoned siblings of a failed one included).", "server")
	wLatency   = desc("worker_push_pull_seconds", "Time from the moment a partition's push began to be sent to the server until the partition finished with its sum in place.", "server")
	wOpsOK     = desc("worker_operations_completed_total", "Operations (push_pull, broadcast) whose handle completed without an error.")
	wOpsFailed = desc("worker_operations_failed_total", "Operations whose handle completed with an error.")
	wOpsOpen   = desc("worker_operations_in_flight", "Operations started and not yet complete.")
	wQueue     = desc("worker_queue_depth", "Partitions waiting in the scheduler's queue for credit.")
	wCreditUse = desc("worker_credit_in_use_bytes", "Bytes of the scheduling credit in use: partitions dispatched whose push has not yet been sent.")
	wCredit    = desc("worker_credit_bytes", "The scheduling credit (BYTEPS_SCHEDULING_CREDIT), in bytes.")
)

// workerCollector exports an engine's Metrics, read at scrape time.
type workerCollector struct{ e *core.Engine }

// NewWorkerCollector returns the collector of e's metrics. The push-pull
// latency histogram stays empty unless e.MeasureLatency was called (as
// ServeWorker does).
func NewWorkerCollector(e *core.Engine) prometheus.Collector { return workerCollector{e} }

func (c workerCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{wPushes, wPushBytes, wPullReqs, wPulls, wPullBytes, wFailed, wLatency, wOpsOK, wOpsFailed, wOpsOpen, wQueue, wCreditUse, wCredit} {
		ch <- d
	}
}

func (c workerCollector) Collect(ch chan<- prometheus.Metric) {
	m := c.e.Metrics()
	for _, s := range m.Servers {
		r := strconv.Itoa(s.Rank)
		counter(ch, wPushes, float64(s.Pushes), r)
		counter(ch, wPushBytes, float64(s.PushBytes), r)
		counter(ch, wPullReqs, float64(s.Pulls), r)
		counter(ch, wPulls, float64(s.Answers), r)
		counter(ch, wPullBytes, float64(s.AnswerBytes), r)
		counter(ch, wFailed, float64(s.Failed), r)
		buckets := make(map[float64]uint64, len(s.Latency.Bounds))
		for i, b := range s.Latency.Bounds {
			buckets[b] = s.Latency.Counts[i]
		}
		ch <- prometheus.MustNewConstHistogram(wLatency, s.Latency.Count, s.Latency.Sum, buckets, r)
	}
	counter(ch, wOpsOK, float64(m.OpsCompleted))
	counter(ch, wOpsFailed, float64(m.OpsFailed))
	gauge(ch, wOpsOpen, float64(m.OpsOpen))
	gauge(ch, wQueue, float64(m.Queued))
	gauge(ch, wCreditUse, float64(m.CreditInUse))
	gauge(ch, wCredit, float64(m.Credit))
}

// ServeWorker serves e's metrics on ep (labelled worker and e's rank) and
// starts measuring e's push-pull latency. A nil ep (metrics off) does
// nothing: the engine then never reads the clock for metrics.
func ServeWorker(ep *Endpoint, e *core.Engine) error {
	if ep == nil {
		return nil
	}
	e.MeasureLatency()
	return ep.Serve(config.Worker, e.Rank(), NewWorkerCollector(e))
}
