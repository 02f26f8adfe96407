package core

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/gobps/gobps/proto"
)

// TestTimeline runs two rounds of a 3-partition tensor on 2 workers with
// BYTEPS_TRACE_ON and reads back each worker's comm.json: every partition
// of every round must have its stages, in order, on its server's row.
func TestTimeline(t *testing.T) {
	dir := t.TempDir()
	tc := startCluster(t, 2, 2, "BYTEPS_TRACE_ON", "1", "BYTEPS_TRACE_DIR", dir)
	const count, rounds = 5000, 2 // 20000 bytes: partitions of 8192, 8192, 3616
	tc.each(t, func(rank int, e *Engine) error {
		tn, err := e.Declare("grad", proto.Float32, count)
		if err != nil {
			return err
		}
		for r := 0; r < rounds; r++ {
			h, err := e.PushPull(tn, make([]byte, 4*count), Sum)
			if err != nil {
				return err
			}
			if err := h.Wait(); err != nil {
				return err
			}
		}
		return nil
	})
	for _, e := range tc.engines {
		if err := e.Shutdown(); err != nil {
			t.Fatal(err)
		}
	}
	for rank := range tc.engines {
		data, err := os.ReadFile(filepath.Join(dir, strconv.Itoa(rank), "comm.json"))
		if err != nil {
			t.Fatal(err)
		}
		var doc struct {
			TraceEvents []traceEvent   `json:"traceEvents"`
			OtherData   map[string]any `json:"otherData"`
		}
		if err := json.Unmarshal(data, &doc); err != nil {
			t.Fatalf("rank %d: %v", rank, err)
		}
		if doc.OtherData["dropped"] != 0.0 {
			t.Errorf("rank %d: dropped %v events", rank, doc.OtherData["dropped"])
		}
		type id struct {
			name  string
			round float64
		}
		stages := map[id][]traceEvent{}
		for _, ev := range doc.TraceEvents {
			if ev.Ph != "X" {
				continue
			}
			if ev.PID != rank || ev.Dur < 0 {
				t.Errorf("rank %d: bad event %+v", rank, ev)
			}
			k := id{ev.Name, ev.Args["round"].(float64)}
			stages[k] = append(stages[k], ev)
		}
		if len(stages) != 3*rounds {
			t.Fatalf("rank %d: %d partition rounds traced, want %d: %v", rank, len(stages), 3*rounds, stages)
		}
		for k, evs := range stages {
			by := map[string]traceEvent{}
			for _, ev := range evs {
				by[ev.Cat] = ev
				if ev.TID < 0 || ev.TID >= 2 {
					t.Errorf("rank %d %v: server row %d", rank, k, ev.TID)
				}
			}
			// Every stage but wait, in this order, each starting where the
			// one before ended, except the answer: a push carries its pull,
			// so the answer may start while the push is still being sent,
			// and then there is no wait.
			end := func(ev traceEvent) float64 { return ev.TS + ev.Dur }
			q, l, p, pl := by["queue"], by["lane"], by["push"], by["pull"]
			w, waited := by["wait"]
			if len(evs) != len(by) || q.Cat == "" || l.Cat == "" || p.Cat == "" || pl.Cat == "" || len(by) != 4+map[bool]int{true: 1}[waited] {
				t.Errorf("rank %d %v: stages %v, want queue, lane, push, pull and perhaps wait", rank, k, evs)
				continue
			}
			const eps = 0.001 // µs: rounding
			if l.TS+eps < end(q) || p.TS+eps < end(l) || pl.TS+eps < p.TS {
				t.Errorf("rank %d %v: stages out of order: %v", rank, k, evs)
			}
			if waited && (w.TS+eps < end(p) || pl.TS+eps < end(w) || w.Dur <= 0) {
				t.Errorf("rank %d %v: wait %+v does not lie between push %+v and pull %+v", rank, k, w, p, pl)
			}
		}
	}
}

// TestTimelineUnwritable: a trace directory that cannot be created makes
// Shutdown report it, after leaving the job as usual.
func TestTimelineUnwritable(t *testing.T) {
	file := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(file, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	tc := startCluster(t, 1, 1, "BYTEPS_TRACE_ON", "1", "BYTEPS_TRACE_DIR", file)
	e := tc.engines[0]
	tn, err := e.Declare("grad", proto.Float32, 10)
	if err != nil {
		t.Fatal(err)
	}
	h, err := e.PushPull(tn, make([]byte, 40), Sum)
	if err != nil {
		t.Fatal(err)
	}
	if err := h.Wait(); err != nil {
		t.Fatal(err)
	}
	err = e.Shutdown()
	if err == nil || !strings.Contains(err.Error(), "trace") {
		t.Fatalf("Shutdown with an unwritable trace directory: %v, want a trace error", err)
	}
	if _, err := e.PushPull(tn, make([]byte, 40), Sum); err == nil {
		t.Error("PushPull after Shutdown succeeded")
	}
}
