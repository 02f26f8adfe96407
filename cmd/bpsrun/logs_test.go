package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestJSONLogs runs a real bpsrun --local job (e2e/testjob as the worker
// program) with GOBPS_LOG_FORMAT=json and -v, and checks its stderr line by
// line. The rule: with JSON logs, bpsrun copies a child's line that starts
// with '{' unprefixed (it is a log line of a role, or of the library in a
// worker) and prefixes every other line with "[name] "; bpsrun's own lines
// are JSON too. So every line that does not start with "[worker " (the
// worker program's own output, which is not a log) must be a JSON object
// with role and rank, and no line may start with "[scheduler]" or
// "[server " (a role line that is not JSON).
func TestJSONLogs(t *testing.T) {
	if testing.Short() {
		t.Skip("builds bpsrun and e2e/testjob and runs a job")
	}
	bin := slurmBin(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(bin, "bpsrun"), "--local", "-v", "-np", "2", "--servers", "1", "--",
		filepath.Join(bin, "testjob"), "-tensors", "2", "-rounds", "2", "-max", "4096")
	cmd.Env = append(cleanEnv(), "GOBPS_LOG_FORMAT=json")
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("job: %v\nstderr:\n%s\nstdout:\n%s", err, stderr.String(), stdout.String())
	}
	seen := map[string]int{}
	serverRanked := false
	for _, line := range strings.Split(strings.TrimRight(stderr.String(), "\n"), "\n") {
		if strings.HasPrefix(line, "[worker ") {
			continue
		}
		if strings.HasPrefix(line, "[scheduler]") || strings.HasPrefix(line, "[server ") {
			t.Errorf("a role's line is not JSON: %q", line)
			continue
		}
		var m map[string]any
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			t.Errorf("not JSON (%v): %q", err, line)
			continue
		}
		role, ok := m["role"].(string)
		rank, okRank := m["rank"].(float64)
		if !ok || !okRank {
			t.Errorf("no role or rank: %q", line)
			continue
		}
		for _, f := range []string{"time", "level", "message", "host", "pid"} {
			if _, ok := m[f]; !ok {
				t.Errorf("no %s: %q", f, line)
			}
		}
		seen[role]++
		if role == "server" && rank == 0 {
			serverRanked = true
		}
	}
	if seen["scheduler"] == 0 || seen["server"] == 0 || seen["bpsrun"] == 0 {
		t.Errorf("lines by role %v: want some of scheduler, server and bpsrun\n%s", seen, stderr.String())
	}
	if !serverRanked {
		t.Errorf("no server line with rank 0:\n%s", stderr.String())
	}
}
