package logging

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
)

// TestJSON: every line is one JSON object with time, level, message, role,
// rank, host and pid; the rank follows SetRank; the level filters.
func TestJSON(t *testing.T) {
	var buf bytes.Buffer
	l := New(&buf, Options{Format: "json", Level: "INFO", Role: "server", Rank: -1})
	l.Logf("hello %d", 1)
	l.Debugf("hidden")
	l.SetRank(3)
	l.Logf("WARNING: careful")
	l.KeyLogf("7.0", "about a key")
	lines := strings.Split(strings.TrimRight(buf.String(), "\n"), "\n")
	if len(lines) != 3 {
		t.Fatalf("%d lines, want 3:\n%s", len(lines), buf.String())
	}
	want := []struct {
		level, msg string
		rank       float64
	}{{"info", "hello 1", -1}, {"warn", "careful", 3}, {"info", "about a key", 3}}
	for i, line := range lines {
		var m map[string]any
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			t.Fatalf("%q: %v", line, err)
		}
		for _, f := range []string{"time", "host", "pid"} {
			if _, ok := m[f]; !ok {
				t.Errorf("%q: no %s", line, f)
			}
		}
		if m["role"] != "server" || m["rank"] != want[i].rank || m["level"] != want[i].level || m["message"] != want[i].msg {
			t.Errorf("%q: want %+v", line, want[i])
		}
	}
	var m map[string]any
	_ = json.Unmarshal([]byte(lines[2]), &m)
	if m["key"] != "7.0" {
		t.Errorf("%q: want key 7.0", lines[2])
	}
}

// TestConsole: readable lines with level, role, rank and message, no
// colour codes when not a terminal, no host or pid.
func TestConsole(t *testing.T) {
	var buf bytes.Buffer
	l := New(&buf, Options{Level: "WARNING", Role: "coordinator", Rank: 0})
	l.Logf("not shown")
	l.Logf("WARNING: shown")
	out := buf.String()
	if strings.Contains(out, "not shown") || strings.Contains(out, "\x1b[") || strings.Contains(out, "pid") {
		t.Errorf("%q", out)
	}
	if !strings.Contains(out, "WARN  role=coordinator rank=0 shown") {
		t.Errorf("%q lacks level, role, rank and message", out)
	}
	buf.Reset()
	New(&buf, Options{Level: "ERROR", Verbose: true, Role: "x", Rank: -1}).Debugf("verbose")
	if !strings.Contains(buf.String(), "DEBUG role=x rank=-1 verbose") {
		t.Errorf("-v: %q", buf.String())
	}
}

// TestNotice: a "NOTICE: " line shows at every level, without a level name
// (console) or field (JSON).
func TestNotice(t *testing.T) {
	var buf bytes.Buffer
	New(&buf, Options{Level: "ERROR", Role: "scheduler", Rank: 0}).Logf("NOTICE: progress: fine")
	if out := buf.String(); !strings.Contains(out, "-     role=scheduler rank=0 progress: fine") {
		t.Errorf("console: %q", out)
	}
	buf.Reset()
	New(&buf, Options{Format: JSON, Level: "ERROR", Role: "scheduler", Rank: 0}).Logf("NOTICE: progress: fine")
	if out := buf.String(); !strings.Contains(out, `"message":"progress: fine"`) || strings.Contains(out, `"level"`) {
		t.Errorf("json: %q", out)
	}
}
