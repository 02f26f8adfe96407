package main

import (
	"fmt"
	"io"
	"net/http"
	"sync"
	"time"

	"github.com/gobps/gobps/cmd/internal/roles"
	"github.com/gobps/gobps/core"
	"github.com/gobps/gobps/metrics"
)

// benchMetrics is pushpull's -metrics: every process of a measured job
// serves its metrics (the coordinator and servers through
// GOBPS_METRICS_ADDR, as bpsrun's would; the workers through
// metrics.ServeWorker, as the C library does), and a scraper reads every
// endpoint once a second while the job is timed, more often than
// Prometheus usually scrapes. Off, every method does nothing.
type benchMetrics struct {
	on      bool
	urls    []string
	workers []*metrics.Endpoint
}

// env is the environment that gives a coordinator or server process an
// endpoint of its own: nothing when off.
func (b *benchMetrics) env() ([]string, error) {
	if !b.on {
		return nil, nil
	}
	port, err := roles.FreePort()
	if err != nil {
		return nil, err
	}
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	b.urls = append(b.urls, "http://"+addr+metrics.Path)
	return []string{"GOBPS_METRICS_ADDR", addr}, nil
}

// worker serves e's metrics on a free port.
func (b *benchMetrics) worker(e *core.Engine) error {
	if !b.on {
		return nil
	}
	ep, err := metrics.Listen("127.0.0.1:0")
	if err != nil {
		return err
	}
	if err := metrics.ServeWorker(ep, e); err != nil {
		ep.Close()
		return err
	}
	b.workers = append(b.workers, ep)
	b.urls = append(b.urls, ep.URL())
	return nil
}

// scrape reads every endpoint every interval until the returned function
// is called; that function returns the scrapes made and the first error.
func (b *benchMetrics) scrape(every time.Duration) func() (int, error) {
	if !b.on {
		return func() (int, error) { return 0, nil }
	}
	stop, done := make(chan struct{}), make(chan struct{})
	var n int
	var first error
	go func() {
		defer close(done)
		t := time.NewTicker(every)
		defer t.Stop()
		for {
			select {
			case <-stop:
				return
			case <-t.C:
			}
			for _, u := range b.urls {
				if err := get(u); err != nil && first == nil {
					first = err
				}
				n++
			}
		}
	}()
	var once sync.Once
	return func() (int, error) {
		once.Do(func() { close(stop); <-done })
		return n, first
	}
}

func get(url string) error {
	r, err := http.Get(url)
	if err != nil {
		return err
	}
	defer r.Body.Close()
	if r.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %s", url, r.Status)
	}
	_, err = io.Copy(io.Discard, r.Body)
	return err
}

// close stops the workers' endpoints (the roles close their own).
func (b *benchMetrics) close() {
	for _, ep := range b.workers {
		ep.Close()
	}
	b.workers = nil
}
