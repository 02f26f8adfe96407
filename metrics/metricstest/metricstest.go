// Package metricstest scrapes a metrics endpoint and reads the result,
// for tests: the text format parsed by Prometheus's own parser (expfmt).
package metricstest

import (
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/prometheus/client_golang/prometheus/testutil/promlint"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// Families are the metric families of one scrape, by name.
type Families map[string]*dto.MetricFamily

// Scrape GETs url and parses the text exposition format.
func Scrape(url string) (Families, error) {
	r, err := http.Get(url)
	if err != nil {
		return nil, err
	}
	defer r.Body.Close()
	if r.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET %s: %s", url, r.Status)
	}
	if ct := r.Header.Get("Content-Type"); !strings.HasPrefix(ct, "text/plain") {
		return nil, fmt.Errorf("GET %s: content type %q, want the text format", url, ct)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	fs, err := p.TextToMetricFamilies(r.Body)
	if err != nil {
		return nil, fmt.Errorf("parse %s: %w", url, err)
	}
	return fs, nil
}

// matches reports whether m has every label of want (name, value pairs).
func matches(m *dto.Metric, want []string) bool {
	for i := 0; i+1 < len(want); i += 2 {
		found := false
		for _, l := range m.GetLabel() {
			if l.GetName() == want[i] && l.GetValue() == want[i+1] {
				found = true
			}
		}
		if !found {
			return false
		}
	}
	return true
}

// value is a metric's value: a counter's, a gauge's, an untyped one's,
// or a histogram's count.
func value(m *dto.Metric) float64 {
	switch {
	case m.Counter != nil:
		return m.Counter.GetValue()
	case m.Gauge != nil:
		return m.Gauge.GetValue()
	case m.Histogram != nil:
		return float64(m.Histogram.GetSampleCount())
	case m.Untyped != nil:
		return m.Untyped.GetValue()
	}
	return 0
}

// Sum is the sum of the values of name's series that carry the labels
// given as name, value pairs (all of them when none is given), and the
// number of those series.
func (f Families) Sum(name string, labels ...string) (float64, int) {
	var sum float64
	n := 0
	for _, m := range f[name].GetMetric() {
		if matches(m, labels) {
			sum += value(m)
			n++
		}
	}
	return sum, n
}

// Histogram returns the histogram of name with the labels given, or nil
// unless exactly one series matches.
func (f Families) Histogram(name string, labels ...string) *dto.Histogram {
	var h *dto.Histogram
	for _, m := range f[name].GetMetric() {
		if matches(m, labels) {
			if h != nil {
				return nil
			}
			h = m.Histogram
		}
	}
	return h
}

// CheckLabels returns an error naming every series that lacks one of the
// labels given as name, value pairs.
func (f Families) CheckLabels(labels ...string) error {
	var bad []string
	for name, fam := range f {
		for _, m := range fam.GetMetric() {
			if !matches(m, labels) {
				bad = append(bad, fmt.Sprintf("%s%v", name, m.GetLabel()))
			}
		}
	}
	if len(bad) > 0 {
		sort.Strings(bad)
		return fmt.Errorf("%d series without the labels %v: %s", len(bad), labels, strings.Join(bad, "; "))
	}
	return nil
}

// Lint returns the problems Prometheus's linter (promlint: naming, units,
// help text) finds in the families, one line each.
func (f Families) Lint() ([]string, error) {
	var mfs []*dto.MetricFamily
	for _, n := range f.Names() {
		mfs = append(mfs, f[n])
	}
	ps, err := promlint.NewWithMetricFamilies(mfs).Lint()
	var out []string
	for _, p := range ps {
		out = append(out, p.Metric+": "+p.Text)
	}
	return out, err
}

// Names are the families' names, sorted.
func (f Families) Names() []string {
	var out []string
	for n := range f {
		out = append(out, n)
	}
	sort.Strings(out)
	return out
}

// Listeners counts this process's listening TCP sockets (IPv4 and IPv6),
// from /proc: the sockets among its file descriptors that /proc/net/tcp
// and tcp6 list in state LISTEN.
func Listeners() (int, error) {
	listening := map[string]bool{}
	for _, f := range []string{"/proc/net/tcp", "/proc/net/tcp6"} {
		b, err := os.ReadFile(f)
		if err != nil {
			if os.IsNotExist(err) {
				continue
			}
			return 0, err
		}
		for _, line := range strings.Split(string(b), "\n")[1:] {
			// sl local_address rem_address st tx_queue:rx_queue tr:tm->when retrnsmt uid timeout inode
			fs := strings.Fields(line)
			if len(fs) >= 10 && fs[3] == "0A" {
				listening[fs[9]] = true
			}
		}
	}
	fds, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return 0, err
	}
	n := 0
	for _, fd := range fds {
		target, err := os.Readlink(filepath.Join("/proc/self/fd", fd.Name()))
		if err != nil {
			continue // closed meanwhile
		}
		if inode, ok := strings.CutPrefix(target, "socket:["); ok && listening[strings.TrimSuffix(inode, "]")] {
			n++
		}
	}
	return n, nil
}
