// Package accept is the accept loop every gobps listener shares: the TCP
// transport's, the verbs transport's bootstrap listener and the
// coordinator's.
//
// A listener that runs out of file descriptors (EMFILE, ENFILE), or sees a
// connection aborted before it was accepted (ECONNABORTED), must keep
// accepting once the burst has passed: a server that stopped for good after
// one burst would be deaf for the rest of the job. Loop backs off while
// Accept fails (5 ms, doubling to 1 s, reset by a success), logs the first
// error of each burst and the end of the burst, and returns only once the
// listener is closed.
package accept

import (
	"errors"
	"net"
	"time"
)

// Backoff bounds.
const (
	// FirstDelay is the wait after the first failed Accept of a burst.
	FirstDelay = 5 * time.Millisecond
	// MaxDelay bounds the wait between two failed Accepts.
	MaxDelay = time.Second
)

// Loop accepts connections on ln and hands each to serve, on Loop's
// goroutine (serve should start the connection's own goroutines and
// return), until ln is closed (Accept returns net.ErrClosed) or stop is
// closed. Every other Accept error is taken as transient: Loop logs the
// first of a burst with logf (which may be nil), waits (FirstDelay,
// doubling to MaxDelay) and tries again; the first success after a burst
// is logged too, with the number of failures.
//
// stop lets the owner end a backoff at once: it closes stop, then ln, then
// waits for Loop to return. A nil stop is never closed (Loop then ends at
// the Accept after ln is closed, at most MaxDelay later).
func Loop(ln net.Listener, stop <-chan struct{}, logf func(string, ...any), serve func(net.Conn)) {
	if logf == nil {
		logf = func(string, ...any) {}
	}
	delay, failures := time.Duration(0), 0
	for {
		nc, err := ln.Accept()
		if err == nil {
			if failures > 0 {
				logf("accept: accepting again after %d failed tries", failures)
			}
			delay, failures = 0, 0
			serve(nc)
			continue
		}
		if errors.Is(err, net.ErrClosed) {
			return
		}
		select {
		case <-stop:
			return
		default:
		}
		if failures == 0 {
			logf("accept: %v (retrying, %v to %v apart, until it succeeds)", err, FirstDelay, MaxDelay)
		}
		failures++
		delay = min(max(2*delay, FirstDelay), MaxDelay)
		if !wait(delay, stop) {
			return
		}
	}
}

// wait sleeps for d and returns true, or returns false as soon as stop is
// closed. A variable for the tests, which record the delays.
var wait = func(d time.Duration, stop <-chan struct{}) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-stop:
		return false
	}
}
