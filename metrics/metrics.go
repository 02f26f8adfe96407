// Package metrics serves a gobps process's Prometheus metrics: the
// endpoint GOBPS_METRICS_ADDR names, with a registry of its own (never the
// global one) whose every metric carries the process's role and rank as
// constant labels, and the collectors of each role, which read the
// counters the coordinator (cluster.Coordinator.Stats), a server
// (summation.Server.Stats, and CountPushes) and a worker engine
// (core.Engine.Metrics) keep anyway, at scrape time: nothing is counted on
// the data path for the endpoint's sake, and without GOBPS_METRICS_ADDR
// nothing listens and no goroutine runs. docs/operations.md lists every
// metric.
//
// An endpoint is made in two steps, so that a process fails before it
// joins the job when it cannot listen, and labels its metrics with the
// rank the job gives it: Listen (nil without an address), then Serve once
// the rank is known. The programs wire it: cmd/internal/roles for the
// coordinator and the server, the C library (cgo) for a worker, and
// ServeWorker for Go programs that run core.Engine themselves.
package metrics

import (
	"errors"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/gobps/gobps/config"
)

// Path is where an endpoint serves its metrics.
const Path = "/metrics"

// Endpoint is one process's metrics endpoint. Its methods may be called on
// a nil *Endpoint (metrics off) and then do nothing.
type Endpoint struct {
	ln   net.Listener
	once sync.Once // Serve
	srv  *http.Server
	done chan struct{} // closed when the server's goroutine has returned
	shut sync.Once     // Close
}

// Listen opens the endpoint's listener at addr (host:port; port 0 picks a
// free one), serving nothing until Serve: a scrape meanwhile waits in the
// listen queue. An empty addr means metrics off: nil, and no error.
func Listen(addr string) (*Endpoint, error) {
	if addr == "" {
		return nil, nil
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("metrics: GOBPS_METRICS_ADDR=%s: %w", addr, err)
	}
	return &Endpoint{ln: ln, done: make(chan struct{})}, nil
}

// Addr is the address the endpoint listens on ("" when off).
func (e *Endpoint) Addr() string {
	if e == nil {
		return ""
	}
	return e.ln.Addr().String()
}

// URL is the endpoint's metrics URL ("" when off).
func (e *Endpoint) URL() string {
	if e == nil {
		return ""
	}
	return "http://" + e.Addr() + Path
}

// Serve starts serving Path on one goroutine, from a registry of its own
// holding the Go runtime's and the process's standard collectors and cs,
// every metric labelled role and rank. Only the first call serves; Serve
// after Close does nothing.
func (e *Endpoint) Serve(role config.Role, rank int, cs ...prometheus.Collector) error {
	if e == nil {
		return nil
	}
	var err error
	e.once.Do(func() {
		reg := prometheus.NewRegistry()
		labelled := prometheus.WrapRegistererWith(prometheus.Labels{"role": string(role), "rank": strconv.Itoa(rank)}, reg)
		all := append([]prometheus.Collector{
			collectors.NewGoCollector(),
			collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		}, cs...)
		for _, c := range all {
			if err = labelled.Register(c); err != nil {
				err = fmt.Errorf("metrics: %w", err)
				return
			}
		}
		mux := http.NewServeMux()
		mux.Handle(Path, promhttp.HandlerFor(reg, promhttp.HandlerOpts{ErrorHandling: promhttp.ContinueOnError}))
		e.srv = &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
		srv := e.srv
		go func() {
			defer close(e.done)
			srv.Serve(e.ln) // returns at Close
		}()
	})
	return err
}

// Close stops the endpoint: it closes the listener and every connection,
// and returns once the serving goroutine has returned. Idempotent.
func (e *Endpoint) Close() error {
	if e == nil {
		return nil
	}
	var err error
	e.shut.Do(func() {
		served := false
		e.once.Do(func() {}) // no Serve after Close
		if e.srv != nil {
			served = true
			err = e.srv.Close()
			<-e.done
		}
		if !served {
			err = e.ln.Close()
		}
		if errors.Is(err, net.ErrClosed) {
			err = nil
		}
	})
	return err
}
