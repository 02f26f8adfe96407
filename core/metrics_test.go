package core

import (
	"testing"
	"time"
)

// TestLatencyHistogram: observations land in the first bucket whose bound
// they do not exceed, cumulatively, and nothing is timed until
// MeasureLatency.
func TestLatencyHistogram(t *testing.T) {
	var h latency
	if h.stampFor() != 0 {
		t.Fatal("stamped before MeasureLatency")
	}
	h.on.Store(true)
	if h.stampFor() <= 0 {
		t.Fatal("no stamp after MeasureLatency")
	}
	for _, d := range []time.Duration{0, 100 * time.Microsecond, 101 * time.Microsecond, 3 * time.Millisecond, time.Hour} {
		h.observe(d)
	}
	var out Histogram
	h.addTo(&out)
	h.addTo(&out) // a second lane of the same server adds up
	if out.Count != 10 || len(out.Counts) != len(LatencyBounds) {
		t.Fatalf("count %d, %d buckets", out.Count, len(out.Counts))
	}
	want := map[float64]uint64{0.0001: 4, 0.0002: 6, 0.0016: 6, 0.0032: 8, LatencyBounds[len(LatencyBounds)-1]: 8}
	for i, b := range out.Bounds {
		if w, ok := want[b]; ok && out.Counts[i] != w {
			t.Errorf("bucket ≤ %vs holds %d, want %d", b, out.Counts[i], w)
		}
	}
	if s := 2 * (100*time.Microsecond + 101*time.Microsecond + 3*time.Millisecond + time.Hour).Seconds(); out.Sum < s*0.999999 || out.Sum > s*1.000001 {
		t.Errorf("sum %v s, want %v", out.Sum, s)
	}
}

// BenchmarkLatency is what metrics cost a partition: the stamp its lane
// takes and the observation when it finishes, with metrics off and on.
func BenchmarkLatency(b *testing.B) {
	for _, on := range []bool{false, true} {
		name := map[bool]string{false: "off", true: "on"}[on]
		b.Run(name, func(b *testing.B) {
			var h latency
			h.on.Store(on)
			for b.Loop() {
				if s := h.stampFor(); s != 0 {
					h.observe(time.Duration(stamp() - s))
				}
			}
		})
	}
}
