package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"sync"
	"time"
)

// netperf measures the TCP goodput of the links of an emulated cluster
// (scripts/netcluster.sh verify). One process runs on every host: it
// accepts one stream from its left neighbour and sends one to its right
// neighbour at the same time, so every link carries a full-duplex load, the
// pattern a ring all-reduce and a parameter server both put on it. It prints
// one line:
//
//	netperf recv_bps=941234567 recv_bytes=... recv_s=... sent_bytes=...
//
// recv_bps is the goodput of the incoming stream in its steady state: the
// bytes read after the first -skip, over the time they took.
func netperf(args []string) error {
	fs := flag.NewFlagSet("netperf", flag.ContinueOnError)
	listen := fs.String("listen", "", "address to accept the incoming stream on (host:port)")
	to := fs.String("to", "", "address to send a stream to (host:port)")
	dur := fs.Duration("time", 3*time.Second, "how long to send")
	skip := fs.Duration("skip", time.Second, "leave out the first part of the incoming stream (slow start)")
	wait := fs.Duration("wait", 15*time.Second, "how long to keep dialling -to, and to wait for the incoming stream")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *listen == "" && *to == "" {
		return errors.New("netperf: give -listen, -to or both")
	}
	type recvResult struct {
		n      int64
		el     time.Duration
		err    error
		gotAny bool
	}
	var wg sync.WaitGroup
	recv := make(chan recvResult, 1)
	if *listen != "" {
		ln, err := net.Listen("tcp", *listen)
		if err != nil {
			return fmt.Errorf("netperf: %w", err)
		}
		defer ln.Close()
		wg.Add(1)
		go func() {
			defer wg.Done()
			_ = ln.(*net.TCPListener).SetDeadline(time.Now().Add(*wait))
			c, err := ln.Accept()
			if err != nil {
				recv <- recvResult{err: fmt.Errorf("accept: %w", err)}
				return
			}
			defer c.Close()
			// bound the whole receive: sending time plus the wait
			_ = c.SetReadDeadline(time.Now().Add(*dur + *wait))
			buf := make([]byte, 1<<20)
			// count from the first byte read after skip has passed since
			// the stream began
			var n, all int64
			var begin, first, last time.Time
			for {
				m, err := c.Read(buf)
				if m > 0 {
					now := time.Now()
					if all == 0 {
						begin = now
					}
					all += int64(m)
					if now.Sub(begin) >= *skip {
						if first.IsZero() {
							first = now
						} else {
							n += int64(m)
							last = now
						}
					}
				}
				if err != nil {
					if errors.Is(err, io.EOF) {
						err = nil
					}
					recv <- recvResult{n: n, el: last.Sub(first), err: err, gotAny: n > 0}
					return
				}
			}
		}()
	}
	var sent int64
	var sendErr error
	if *to != "" {
		ctx, cancel := context.WithTimeout(context.Background(), *wait)
		c, err := dialRetry(ctx, *to)
		cancel()
		if err != nil {
			sendErr = err
		} else {
			buf := make([]byte, 1<<20)
			start := time.Now()
			for time.Since(start) < *dur {
				m, err := c.Write(buf)
				sent += int64(m)
				if err != nil {
					sendErr = err
					break
				}
			}
			c.Close()
		}
	}
	wg.Wait()
	line := fmt.Sprintf("netperf sent_bytes=%d", sent)
	var errs []error
	if sendErr != nil {
		errs = append(errs, fmt.Errorf("send to %s: %w", *to, sendErr))
	}
	if *listen != "" {
		r := <-recv
		if r.err != nil {
			errs = append(errs, fmt.Errorf("receive on %s: %w", *listen, r.err))
		}
		if r.gotAny && r.el > 0 {
			line += fmt.Sprintf(" recv_bytes=%d recv_s=%.3f recv_bps=%.0f", r.n, r.el.Seconds(), float64(r.n)*8/r.el.Seconds())
		}
	}
	fmt.Println(line)
	return errors.Join(errs...)
}

// dialRetry dials addr until it answers or ctx ends: the peer may not be
// listening yet.
func dialRetry(ctx context.Context, addr string) (net.Conn, error) {
	var d net.Dialer
	for {
		c, err := d.DialContext(ctx, "tcp", addr)
		if err == nil {
			return c, nil
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("dial %s: %w", addr, err)
		case <-time.After(50 * time.Millisecond):
		}
	}
}
