package core

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	"github.com/gobps/gobps/core/lifecycle"
)

// maxTraceEvents bounds a timeline's memory: about 100 bytes an event, so
// 100 MiB at most. Events past it are counted, not kept.
const maxTraceEvents = 1 << 20

// timeline records, with BYTEPS_TRACE_ON=1, when each partition of each
// PushPull was queued, pushed, waited for and pulled, and writes them at
// Shutdown as a Chrome trace (chrome://tracing, Perfetto): one process per
// worker, one thread per server, so the partitions a server carries line up.
// BytePS writes its timeline to the same place, TRACE_DIR/RANK/comm.json.
type timeline struct {
	dir   string
	rank  int
	start time.Time

	mu      sync.Mutex
	events  []traceEvent
	dropped int
}

// traceEvent is one Chrome "complete" event; times are µs since start.
type traceEvent struct {
	Name string         `json:"name"`
	Cat  string         `json:"cat"`
	Ph   string         `json:"ph"`
	TS   float64        `json:"ts"`
	Dur  float64        `json:"dur"`
	PID  int            `json:"pid"`
	TID  int            `json:"tid"`
	Args map[string]any `json:"args,omitempty"`
}

func newTimeline(dir string, rank int) *timeline {
	return &timeline{dir: dir, rank: rank, start: time.Now()}
}

// taskTimes are the moments a partition passed; zero where it never did.
// They live in the task's Note from its dispatch on. A push carries its
// pull, so the answer may start, and even end, before the push's Send has
// returned: first may come before sent (a partition finishes only once
// both are done).
type taskTimes struct {
	queued, dispatched, sending, sent, first time.Time
}

// step is a moment a lane marks.
type step uint8

const (
	stepSending step = iota
	stepSent
	stepFirst
)

// started stamps an op's start, from which its partitions count their time
// in the queue; the zero time when not tracing, so that an untraced engine
// does not read the clock.
func (tl *timeline) started() time.Time {
	if tl == nil {
		return time.Time{}
	}
	return time.Now()
}

// dispatched notes that t has been handed to its lane. REQUIRES: Engine.mu
// (t is not yet on any other goroutine).
func (tl *timeline) dispatched(t *lifecycle.Task) {
	if tl == nil {
		return
	}
	t.Note = &taskTimes{queued: refOf(t.Op).queued, dispatched: time.Now()}
}

// mark notes a step of t's send or answer, on the goroutine that is busy
// with it (the lifecycle does not finish t meanwhile).
func (tl *timeline) mark(t *lifecycle.Task, s step) {
	if tl == nil {
		return
	}
	tt, ok := t.Note.(*taskTimes)
	if !ok {
		return
	}
	now := time.Now()
	switch s {
	case stepSending:
		tt.sending = now
	case stepSent:
		tt.sent = now
	case stepFirst:
		tt.first = now
	}
}

// finished adds the stages of t, which has finished with err.
func (tl *timeline) finished(t *lifecycle.Task, err error) {
	if tl == nil {
		return
	}
	tt, ok := t.Note.(*taskTimes)
	if !ok {
		return // never dispatched
	}
	end := time.Now()
	wait := tt.first
	if !wait.After(tt.sent) {
		wait = time.Time{} // the answer began while the push was still being sent
	}
	name := fmt.Sprintf("%s[%d]", t.Op.Spec.Name, t.Part.Key.Part())
	args := map[string]any{"key": t.Part.Key.String(), "round": t.Round, "bytes": t.Part.Len}
	if err != nil {
		args["error"] = err.Error()
	}
	stages := []struct {
		cat      string
		from, to time.Time
	}{
		{"queue", tt.queued, tt.dispatched}, // waiting for credit
		{"lane", tt.dispatched, tt.sending}, // waiting for the lane's sender
		{"push", tt.sending, tt.sent},       // on the wire
		{"wait", tt.sent, wait},             // the server summing the others' pushes
		{"pull", tt.first, end},             // the answer arriving
	}
	tl.mu.Lock()
	defer tl.mu.Unlock()
	for _, s := range stages {
		if s.from.IsZero() || s.to.IsZero() {
			continue
		}
		if len(tl.events) >= maxTraceEvents {
			tl.dropped++
			continue
		}
		tl.events = append(tl.events, traceEvent{
			Name: name, Cat: s.cat, Ph: "X",
			TS: tl.micros(s.from), Dur: float64(s.to.Sub(s.from).Nanoseconds()) / 1e3,
			PID: tl.rank, TID: t.Part.Server, Args: args,
		})
	}
}

func (tl *timeline) micros(t time.Time) float64 {
	return float64(t.Sub(tl.start).Nanoseconds()) / 1e3
}

// Path is where write puts the timeline.
func (tl *timeline) path() string {
	return filepath.Join(tl.dir, strconv.Itoa(tl.rank), "comm.json")
}

// write saves the timeline. It is called once, at Shutdown.
func (tl *timeline) write() error {
	if tl == nil {
		return nil
	}
	tl.mu.Lock()
	defer tl.mu.Unlock()
	type meta struct {
		Name string         `json:"name"`
		Ph   string         `json:"ph"`
		PID  int            `json:"pid"`
		TID  int            `json:"tid"`
		Args map[string]any `json:"args"`
	}
	doc := struct {
		TraceEvents     []any          `json:"traceEvents"`
		DisplayTimeUnit string         `json:"displayTimeUnit"`
		OtherData       map[string]any `json:"otherData"`
	}{
		DisplayTimeUnit: "ms",
		OtherData: map[string]any{
			"start":   tl.start.Format(time.RFC3339Nano),
			"rank":    tl.rank,
			"dropped": tl.dropped,
		},
	}
	doc.TraceEvents = append(doc.TraceEvents, meta{Name: "process_name", Ph: "M", PID: tl.rank,
		Args: map[string]any{"name": fmt.Sprintf("worker %d", tl.rank)}})
	seen := map[int]bool{}
	for _, ev := range tl.events {
		if !seen[ev.TID] {
			seen[ev.TID] = true
			doc.TraceEvents = append(doc.TraceEvents, meta{Name: "thread_name", Ph: "M", PID: tl.rank, TID: ev.TID,
				Args: map[string]any{"name": fmt.Sprintf("server %d", ev.TID)}})
		}
	}
	for _, ev := range tl.events {
		doc.TraceEvents = append(doc.TraceEvents, ev)
	}
	data, err := json.Marshal(doc)
	if err != nil {
		return fmt.Errorf("gobps: trace: %w", err)
	}
	p := tl.path()
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		return fmt.Errorf("gobps: trace: %w", err)
	}
	if err := os.WriteFile(p, data, 0o644); err != nil {
		return fmt.Errorf("gobps: trace: %w", err)
	}
	return nil
}
