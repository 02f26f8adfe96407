package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/gobps/gobps/cmd/internal/roles"
	"github.com/gobps/gobps/config"
	"github.com/gobps/gobps/core"
	"github.com/gobps/gobps/internal/auth"
	"github.com/gobps/gobps/proto"
)

func parseSizes(s string) ([]int, error) {
	var out []int
	for _, f := range strings.Split(s, ",") {
		f = strings.TrimSpace(f)
		mult := 1
		switch {
		case strings.HasSuffix(f, "KiB"):
			mult, f = 1<<10, strings.TrimSuffix(f, "KiB")
		case strings.HasSuffix(f, "MiB"):
			mult, f = 1<<20, strings.TrimSuffix(f, "MiB")
		}
		n, err := strconv.Atoi(f)
		if err != nil || n <= 0 {
			return nil, fmt.Errorf("bad size %q", f)
		}
		out = append(out, n*mult)
	}
	return out, nil
}

func parseInts(s string) ([]int, error) {
	var out []int
	for _, f := range strings.Split(s, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n <= 0 {
			return nil, fmt.Errorf("bad count %q", f)
		}
		out = append(out, n)
	}
	return out, nil
}

func pushPull(args []string) error {
	fs := flag.NewFlagSet("pushpull", flag.ContinueOnError)
	sizesF := fs.String("sizes", "1MiB,4MiB,16MiB,64MiB", "tensor sizes")
	workersF := fs.String("workers", "1,2", "worker counts")
	serversF := fs.String("servers", "1,2", "server counts")
	part := fs.String("partition", "4MiB", "BYTEPS_PARTITION_BYTES")
	localAgg := fs.Bool("localagg", false, "the workers are one machine and sum in shared memory first, so one push per key reaches the servers (GOBPS_LOCAL_AGGREGATION=1); off, every worker pushes")
	dur := fs.Duration("time", 2*time.Second, "measuring time per configuration")
	lanes := fs.Int("lanes", 2, "GOBPS_TCP_LANES")
	authF := fs.String("auth", "none", "none, secret (GOBPS_SECRET: the handshake) or tls (the secret and mutual TLS 1.3)")
	metricsF := fs.Bool("metrics", false, "every process serves its Prometheus metrics (GOBPS_METRICS_ADDR, a free port each), scraped once a second while measuring")
	if err := fs.Parse(args); err != nil {
		return err
	}
	authEnv, cleanup, err := benchAuth(*authF)
	if err != nil {
		return err
	}
	defer cleanup()
	sizes, err := parseSizes(*sizesF)
	if err != nil {
		return err
	}
	ws, err := parseInts(*workersF)
	if err != nil {
		return err
	}
	ss, err := parseInts(*serversF)
	if err != nil {
		return err
	}
	pb, err := parseSizes(*part)
	if err != nil {
		return err
	}
	raw, err := rawTCP(*dur)
	if err != nil {
		return fmt.Errorf("raw tcp baseline: %w", err)
	}
	host, _ := os.Hostname()
	fmt.Printf("machine: %s, %d CPUs; raw TCP loopback stream (one connection, 4 MiB writes): %.2f GB/s; auth %s; metrics %v\n", host, numCPU(), raw/1e9, *authF, *metricsF)
	fmt.Println("tensor = tensor bytes push_pulled per second by each worker (each byte goes out and comes back)")
	fmt.Println("wire   = push + pull bytes through loopback per second, all workers (with -localagg, one per key): what the raw stream measures")
	fmt.Println("ratio  = wire / raw stream;  tensor/raw = tensor / raw stream")
	fmt.Printf("%8s %7s %7s %6s %8s %12s %10s %6s %10s\n", "size", "workers", "servers", "iters", "ms/iter", "tensor GB/s", "wire GB/s", "ratio", "tensor/raw")
	for _, s := range sizes {
		for _, w := range ws {
			for _, k := range ss {
				r, err := measure(s, w, k, pb[0], *lanes, *localAgg, *dur, authEnv, *metricsF)
				if err != nil {
					return fmt.Errorf("size %d workers %d servers %d: %w", s, w, k, err)
				}
				fmt.Printf("%8s %7d %7d %6d %8.2f %12.2f %10.2f %6.2f %10.2f\n", human(s), w, k, r.iters,
					r.perIter.Seconds()*1e3, r.goodput/1e9, r.wire/1e9, r.wire/raw, r.goodput/raw)
			}
		}
	}
	return nil
}

func human(n int) string {
	if n >= 1<<20 && n%(1<<20) == 0 {
		return fmt.Sprintf("%dMiB", n>>20)
	}
	if n >= 1<<10 && n%(1<<10) == 0 {
		return fmt.Sprintf("%dKiB", n>>10)
	}
	return strconv.Itoa(n)
}

// benchAuth is the environment of -auth: a secret, and for tls a job CA
// and certificate in a temporary directory (removed by cleanup).
func benchAuth(mode string) (env map[string]string, cleanup func(), err error) {
	cleanup = func() {}
	switch mode {
	case "none":
		return nil, cleanup, nil
	case "secret", "tls":
	default:
		return nil, cleanup, fmt.Errorf("-auth %s: want none, secret or tls", mode)
	}
	env = map[string]string{"GOBPS_SECRET": "bpsbench's secret, 32 characters"}
	if mode == "tls" {
		dir, err := os.MkdirTemp("", "bpsbench-tls")
		if err != nil {
			return nil, cleanup, err
		}
		cleanup = func() { os.RemoveAll(dir) }
		cert, key, ca, err := auth.WritePKI(dir, time.Hour)
		if err != nil {
			cleanup()
			return nil, func() {}, err
		}
		env["GOBPS_TLS_CERT"], env["GOBPS_TLS_KEY"], env["GOBPS_TLS_CA"] = cert, key, ca
	}
	return env, cleanup, nil
}

// rawTCP measures one loopback TCP stream: 4 MiB writes, reads into a 4 MiB
// buffer, for about d. It returns bytes per second.
func rawTCP(d time.Duration) (float64, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	got := make(chan int64, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			got <- 0
			return
		}
		defer c.Close()
		buf := make([]byte, 4<<20)
		var n int64
		for {
			m, err := io.ReadFull(c, buf)
			n += int64(m)
			if err != nil {
				got <- n
				return
			}
		}
	}()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		return 0, err
	}
	buf := make([]byte, 4<<20)
	start := time.Now()
	var sent int64
	for time.Since(start) < d {
		if _, err := c.Write(buf); err != nil {
			return 0, err
		}
		sent += int64(len(buf))
	}
	c.Close()
	n := <-got
	el := time.Since(start)
	if n != sent {
		return 0, fmt.Errorf("sent %d bytes, received %d", sent, n)
	}
	return float64(n) / el.Seconds(), nil
}

type result struct {
	iters   int
	perIter time.Duration
	goodput float64 // per worker
	wire    float64
}

// measure runs a coordinator, k servers and w workers in this process, over
// loopback TCP, and times PushPull of one tensor of size bytes.
func measure(size, w, k, partBytes, lanes int, localAgg bool, d time.Duration, authEnv map[string]string, metricsOn bool) (result, error) {
	// The coordinator's socket is bound here and handed to it: a port
	// found free and released could go to a server's listener first.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return result{}, err
	}
	defer ln.Close() // the coordinator closes it too; a second Close is harmless
	port := ln.Addr().(*net.TCPAddr).Port
	env := map[string]string{
		"DMLC_NUM_WORKER": "1", "BYTEPS_LOCAL_SIZE": strconv.Itoa(w), "DMLC_NUM_SERVER": strconv.Itoa(k),
		"DMLC_PS_ROOT_URI": "127.0.0.1", "DMLC_PS_ROOT_PORT": strconv.Itoa(port), "DMLC_NODE_HOST": "127.0.0.1",
		"BYTEPS_PARTITION_BYTES": strconv.Itoa(partBytes), "GOBPS_TCP_LANES": strconv.Itoa(lanes),
		"GOBPS_LOCAL_AGGREGATION": "0",
		// This measures the server path: with local aggregation on one
		// machine, the sums would otherwise end in shared memory.
		"BYTEPS_FORCE_DISTRIBUTED": "1",
	}
	if localAgg {
		env["GOBPS_LOCAL_AGGREGATION"] = "1"
	}
	for k, v := range authEnv {
		env[k] = v
	}
	cfgFor := func(kv ...string) (*config.Config, error) {
		m := map[string]string{}
		for a, b := range env {
			m[a] = b
		}
		for i := 0; i < len(kv); i += 2 {
			m[kv[i]] = kv[i+1]
		}
		return config.Parse(func(s string) (string, bool) { v, ok := m[s]; return v, ok })
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute+3*d)
	defer cancel()
	quiet := func(string, ...any) {}
	var bg sync.WaitGroup
	bgErr := make(chan error, k+1)
	mx := &benchMetrics{on: metricsOn}
	defer mx.close()
	mxEnv, err := mx.env()
	if err != nil {
		return result{}, err
	}
	sc, err := cfgFor(append([]string{"DMLC_ROLE", "scheduler"}, mxEnv...)...)
	if err != nil {
		return result{}, err
	}
	bg.Add(1)
	go func() { defer bg.Done(); bgErr <- roles.RunScheduler(roles.WithListener(ctx, ln), sc, quiet) }()
	for i := 0; i < k; i++ {
		mxEnv, err := mx.env()
		if err != nil {
			return result{}, err
		}
		c, err := cfgFor(append([]string{"DMLC_ROLE", "server"}, mxEnv...)...)
		if err != nil {
			return result{}, err
		}
		bg.Add(1)
		go func() { defer bg.Done(); bgErr <- roles.RunServer(ctx, c, quiet) }()
	}
	engines := make([]*core.Engine, w)
	var initWG sync.WaitGroup
	initErr := make([]error, w)
	for i := 0; i < w; i++ {
		c, err := cfgFor("DMLC_ROLE", "worker", "DMLC_WORKER_ID", "0", "BYTEPS_LOCAL_RANK", strconv.Itoa(i))
		if err != nil {
			return result{}, err
		}
		initWG.Add(1)
		go func(i int) {
			defer initWG.Done()
			engines[i], initErr[i] = core.Init(ctx, core.Options{Config: c})
		}(i)
	}
	initWG.Wait()
	if err := errors.Join(initErr...); err != nil {
		cancel()
		return result{}, err
	}
	for _, e := range engines {
		if err := mx.worker(e); err != nil {
			cancel()
			return result{}, err
		}
	}
	// Every worker runs the same number of iterations (sync rounds): worker
	// 0 decides when time is up by a shared deadline checked per iteration.
	count := size / 4
	times := make([][]time.Duration, w)
	runErr := make([]error, w)
	var wg sync.WaitGroup
	warm := 3
	iters := 0
	{
		// calibrate: time warm iterations on all workers, then pick a count
		// that fills d
		start := time.Now()
		runAll(engines, count, warm, times, runErr, &wg)
		if err := errors.Join(runErr...); err != nil {
			return result{}, err
		}
		per := time.Since(start) / time.Duration(warm)
		iters = max(3, int(d/max(per, time.Microsecond)))
	}
	stopScraping := mx.scrape(time.Second)
	start := time.Now()
	runAll(engines, count, iters, times, runErr, &wg)
	el := time.Since(start)
	if _, err := stopScraping(); err != nil {
		return result{}, fmt.Errorf("scrape metrics: %w", err)
	}
	if err := errors.Join(runErr...); err != nil {
		return result{}, err
	}
	for _, e := range engines {
		if err := e.Shutdown(); err != nil {
			return result{}, err
		}
	}
	bg.Wait()
	close(bgErr)
	for err := range bgErr {
		if err != nil {
			return result{}, err
		}
	}
	// median per-iteration time of worker 0 for ms/iter; goodput from the
	// whole run
	t0 := append([]time.Duration(nil), times[0]...)
	sort.Slice(t0, func(i, j int) bool { return t0[i] < t0[j] })
	per := float64(size) * float64(iters) / el.Seconds()
	pushers := w
	if localAgg {
		pushers = 1 // one machine: only the key's owner pushes and pulls
	}
	return result{iters: iters, perIter: t0[len(t0)/2], goodput: per, wire: 2 * per * float64(pushers)}, nil
}

func runAll(engines []*core.Engine, count, iters int, times [][]time.Duration, errs []error, wg *sync.WaitGroup) {
	for i, e := range engines {
		wg.Add(1)
		go func(i int, e *core.Engine) {
			defer wg.Done()
			t, err := e.Declare("bench", proto.Float32, count)
			if err != nil {
				errs[i] = err
				return
			}
			buf := make([]byte, t.Bytes())
			times[i] = times[i][:0]
			for it := 0; it < iters; it++ {
				s := time.Now()
				h, err := e.PushPull(t, buf, core.Sum)
				if err == nil {
					err = h.Wait()
				}
				if err != nil {
					errs[i] = err
					return
				}
				times[i] = append(times[i], time.Since(s))
			}
		}(i, e)
	}
	wg.Wait()
}
