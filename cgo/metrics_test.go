package main

import (
	"net"
	"strconv"
	"testing"
	"time"

	"github.com/gobps/gobps/metrics/metricstest"
	"github.com/gobps/gobps/proto"
)

// TestMetrics: with GOBPS_METRICS_ADDR (port 0: one free port each), every
// worker's library serves its engine's metrics, labelled worker and its
// rank, whose counters match the bytes the workers moved; shutdown stops
// the endpoint. Without the variable a library serves nothing.
func TestMetrics(t *testing.T) {
	// One machine: without BYTEPS_FORCE_DISTRIBUTED its sums would end in
	// shared memory and the counters of server traffic stay at 0.
	libs := job(t, 2, 1, "GOBPS_METRICS_ADDR", "127.0.0.1:0", "BYTEPS_FORCE_DISTRIBUTED", "1")
	const n, rounds = 3000, 4 // 24000 bytes: 3 partitions of 8192 bytes
	for range rounds {
		ids := make([]int64, len(libs))
		for r, l := range libs {
			id, err := l.pushPull("m", make([]byte, 8*n), int(proto.Float64), n, opSum)
			if err != nil {
				t.Fatal(err)
			}
			ids[r] = id
		}
		for r, l := range libs {
			if err := l.wait(ids[r], 10*time.Second); err != nil {
				t.Fatal(err)
			}
		}
	}
	// One machine of two workers: local aggregation has the owner of each
	// partition push the machine's sum and pull the result, so the two
	// workers' pushes add up to the tensor, once per round.
	var pushed, pulled, parts float64
	for r, l := range libs {
		url := l.metrics.URL()
		if url == "" {
			t.Fatalf("rank %d serves no metrics", r)
		}
		f, err := metricstest.Scrape(url)
		if err != nil {
			t.Fatal(err)
		}
		if err := f.CheckLabels("role", "worker", "rank", strconv.Itoa(r)); err != nil {
			t.Error(err)
		}
		if v, _ := f.Sum("gobps_worker_operations_completed_total"); v != rounds {
			t.Errorf("rank %d: %v operations completed, want %d", r, v, rounds)
		}
		p, _ := f.Sum("gobps_worker_push_bytes_total")
		q, _ := f.Sum("gobps_worker_pull_bytes_total")
		k, _ := f.Sum("gobps_worker_push_pull_seconds")
		pushed, pulled, parts = pushed+p, pulled+q, parts+k
	}
	if pushed != rounds*8*n || pulled != rounds*8*n || parts != rounds*3 {
		t.Errorf("the workers pushed %v bytes, pulled %v and timed %v partitions; want %d, %d and %d", pushed, pulled, parts, rounds*8*n, rounds*8*n, rounds*3)
	}
	addr := libs[0].metrics.Addr()
	if err := libs[0].shutdown(); err != nil {
		t.Fatal(err)
	}
	if c, err := net.Dial("tcp", addr); err == nil {
		c.Close()
		t.Error("the endpoint still listens after shutdown")
	}
}

// TestNoMetrics: a library without GOBPS_METRICS_ADDR has no endpoint.
func TestNoMetrics(t *testing.T) {
	libs := job(t, 1, 1)
	if libs[0].metrics != nil {
		t.Fatalf("an endpoint at %s without GOBPS_METRICS_ADDR", libs[0].metrics.Addr())
	}
}
