package main

import (
	"os/exec"
	"slices"
	"testing"
)

// TestMetricsPorts: with GOBPS_METRICS_ADDR naming a port, each process of
// a --local job gets its own, in order; port 0 and no variable change
// nothing; a port that leaves no room is refused.
func TestMetricsPorts(t *testing.T) {
	mk := func() []*proc {
		var ps []*proc
		for _, n := range []string{"scheduler", "server 0", "worker 0", "worker 1"} {
			ps = append(ps, &proc{name: n, cmd: exec.Command("true")})
		}
		return ps
	}
	ps := mk()
	plan, err := metricsPorts([]string{"GOBPS_METRICS_ADDR=127.0.0.1:9400"}, ps)
	if err != nil || plan == "" {
		t.Fatalf("metricsPorts: %q, %v", plan, err)
	}
	for i, p := range ps {
		want := "GOBPS_METRICS_ADDR=127.0.0.1:" + []string{"9400", "9401", "9402", "9403"}[i]
		if !slices.Contains(p.cmd.Env, want) {
			t.Errorf("%s: env %q lacks %s", p.name, p.cmd.Env, want)
		}
	}
	for _, env := range [][]string{nil, {"GOBPS_METRICS_ADDR=127.0.0.1:0"}} {
		ps := mk()
		if _, err := metricsPorts(env, ps); err != nil {
			t.Fatal(err)
		}
		for _, p := range ps {
			if len(p.cmd.Env) != 0 {
				t.Errorf("%v: %s got %q", env, p.name, p.cmd.Env)
			}
		}
	}
	if _, err := metricsPorts([]string{"GOBPS_METRICS_ADDR=127.0.0.1:65534"}, mk()); err == nil {
		t.Error("a port without room for 4 processes was taken")
	}
}
