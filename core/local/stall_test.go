package local

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gobps/gobps/proto"
)

// TestLocalStall: the owner of a key whose round waits for a rank that
// never contributes reports that rank after StallWarning, and after
// StallShutdown aborts the group with the report, which every rank sees.
func TestLocalStall(t *testing.T) {
	var mu sync.Mutex
	var logged []string
	cfg := Config{Dir: t.TempDir(), Group: "stall", Size: 3,
		StallWarning: 100 * time.Millisecond, StallShutdown: 400 * time.Millisecond,
		Logf: func(f string, a ...any) {
			mu.Lock()
			defer mu.Unlock()
			logged = append(logged, f)
			if len(a) > 0 {
				logged[len(logged)-1] = a[0].(string)
			}
		},
		Stalled: func(key proto.Key, round uint64, missing []Rank, waited time.Duration, fatal bool) string {
			var ranks []string
			for _, r := range missing {
				ranks = append(ranks, fmt.Sprint(r.Rank))
			}
			return "stalled key " + key.String() + " waiting for " + strings.Join(ranks, ",") + map[bool]string{true: " (fatal)", false: ""}[fatal]
		}}
	gs := joinAll(t, cfg)
	segs := declareAll(t, gs, mixedKeys[:1])
	owner := segs[0][0].Owner()
	// Every rank but the last non-owner contributes.
	lazy := (owner + 1) % 3
	for r := range 3 {
		if r != lazy {
			if err := segs[r][0].Contribute(0); err != nil {
				t.Fatal(err)
			}
		}
	}
	start := time.Now()
	_, err := segs[owner][0].Reduce(context.Background(), 0)
	if err == nil || !strings.Contains(err.Error(), fmt.Sprintf("waiting for %d (fatal)", lazy)) {
		t.Fatalf("Reduce: %v; want the fatal report naming rank %d", err, lazy)
	}
	if d := time.Since(start); d < 400*time.Millisecond || d > 3*time.Second {
		t.Errorf("aborted after %v, want about 400ms", d)
	}
	mu.Lock()
	warned := len(logged) > 0 && strings.Contains(logged[0], "stalled key") && !strings.Contains(logged[0], "fatal")
	mu.Unlock()
	if !warned {
		t.Errorf("no warning logged first: %q", logged)
	}
	// The other ranks fail with it too.
	deadline := time.Now().Add(2 * time.Second)
	for r := range 3 {
		for gs[r].Err() == nil && time.Now().Before(deadline) {
			time.Sleep(5 * time.Millisecond)
		}
		if err := gs[r].Err(); err == nil || !strings.Contains(err.Error(), "stalled key") {
			t.Errorf("rank %d: %v; want the report", r, err)
		}
	}
}
