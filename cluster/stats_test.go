package cluster

import (
	"testing"
	"time"
)

// TestStats: the coordinator counts the active nodes of each role once the
// book is out, and each death and departure, as they happen.
func TestStats(t *testing.T) {
	t.Parallel()
	ctx := timeout(t, 5*time.Second)
	tc := startCoordinator(t, CoordinatorConfig{NumWorkers: 2, NumServers: 1}, nil)
	want := func(what string, w CoordinatorStats) {
		t.Helper()
		w.ExpectedWorkers, w.ExpectedServers = 2, 1
		eventually(t, ctx, what, func() bool { return tc.Stats() == w })
	}
	want("nothing before anyone registers", CoordinatorStats{})
	ms := joinAll(t, ctx, tc.Addr(), Options{}, worker(0), worker(1), server("127.0.0.1:7000", 7))
	if got := tc.Stats(); got.Workers != 2 || got.Servers != 1 {
		t.Fatalf("every node has the book, yet the coordinator counts %+v", got)
	}
	abort(ms[1])
	want("worker 1 dead", CoordinatorStats{Workers: 1, Servers: 1, WorkerDeaths: 1})
	if err := ms[0].Leave(); err != nil {
		t.Fatal(err)
	}
	want("worker 0 gone", CoordinatorStats{Servers: 1, WorkerDeaths: 1, WorkerDepartures: 1})
	recv(t, ctx, ms[2].ShutdownRequested(), "shutdown")
	if err := ms[2].Leave(); err != nil {
		t.Fatal(err)
	}
	want("the server gone", CoordinatorStats{WorkerDeaths: 1, WorkerDepartures: 1, ServerDepartures: 1})
	wantErr(t, tc.result(t, ctx), "worker 1 (pid 1001) died")
}
