package cluster

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gobps/gobps/internal/auth"
	"github.com/gobps/gobps/proto"
)

// refusalBound is how fast a peer that speaks wrongly must be refused.
const refusalBound = time.Second

// logLines records a coordinator's log (and passes it on to the test's).
type logLines struct {
	t  *testing.T
	mu sync.Mutex
	l  []string
}

func (l *logLines) logf(format string, args ...any) {
	l.t.Logf(format, args...)
	l.mu.Lock()
	l.l = append(l.l, fmt.Sprintf(format, args...))
	l.mu.Unlock()
}

// count is the number of lines that contain every one of substr.
func (l *logLines) count(substr ...string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
next:
	for _, line := range l.l {
		for _, s := range substr {
			if !strings.Contains(line, s) {
				continue next
			}
		}
		n++
	}
	return n
}

// loggedOnce waits until one log line contains every one of substr, then
// a little longer to see that no second one follows.
func (l *logLines) loggedOnce(t *testing.T, ctx context.Context, substr ...string) {
	t.Helper()
	eventually(t, ctx, "log line "+strings.Join(substr, " ... "), func() bool { return l.count(substr...) > 0 })
	time.Sleep(100 * time.Millisecond)
	if n := l.count(substr...); n != 1 {
		t.Errorf("%d log lines contain %q, want 1", n, substr)
	}
}

// startAuthCoordinator runs a coordinator on loopback with authentication
// auth until the test ends, recording its log.
func startAuthCoordinator(t *testing.T, cfg CoordinatorConfig, a *auth.Config, registered func(Node)) (*testCoord, *logLines) {
	t.Helper()
	log := &logLines{t: t}
	cfg.Addr = "127.0.0.1:0"
	if cfg.HeartbeatTimeout == 0 {
		cfg.HeartbeatTimeout = 2 * time.Second
	}
	cfg.Logf = log.logf
	cfg.Auth = a
	c, err := NewCoordinator(cfg)
	if err != nil {
		t.Fatal(err)
	}
	c.registered = registered
	tc := &testCoord{Coordinator: c, runErr: make(chan error, 1)}
	go func() { tc.runErr <- c.Run(context.Background()) }()
	t.Cleanup(func() { c.Close() })
	return tc, log
}

func secret(s string) *auth.Config {
	return &auth.Config{Secret: []byte(s), Timeout: 2 * time.Second}
}

func withAuth(opt Options, a *auth.Config) Options {
	opt.Auth = a
	return opt
}

// within fails the test if d exceeds the refusal bound.
func within(t *testing.T, what string, d time.Duration) {
	t.Helper()
	if d > refusalBound {
		t.Errorf("%s took %v, want at most %v", what, d, refusalBound)
	}
}

// testTLS returns a TLS setup from a fresh CA, with one certificate for
// every process.
func testTLS(t *testing.T) *auth.TLS {
	t.Helper()
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "job CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	caCert, _ := x509.ParseCertificate(caDER)
	pool := x509.NewCertPool()
	pool.AddCert(caCert)
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "node"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	return auth.NewTLS(tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}, pool)
}

// TestAuthJoin: members with the job's secret (and, in the second case,
// its TLS certificates) join, run barriers and leave as without
// authentication.
func TestAuthJoin(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		name string
		a    *auth.Config
	}{
		{"secret", secret("s3cret")},
		{"secret and TLS", &auth.Config{Secret: []byte("s3cret"), TLS: testTLS(t), Timeout: 2 * time.Second}},
		{"TLS only", &auth.Config{TLS: testTLS(t), Timeout: 2 * time.Second}},
	} {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			ctx := timeout(t, 8*time.Second)
			tc, log := startAuthCoordinator(t, CoordinatorConfig{NumWorkers: 2, NumServers: 1}, c.a, nil)
			opt := withAuth(fast, c.a)
			ms := joinAll(t, ctx, tc.Addr(), opt,
				worker(0),
				worker(1),
				Registration{Role: RoleServer, WorkerID: 0, Addr: "127.0.0.1:7000", PID: 9})
			if _, ok := ms[0].conn.(*tls.Conn); ok != (c.a.TLS != nil) {
				t.Errorf("member's connection is a %T", ms[0].conn)
			}
			for _, m := range ms {
				if len(m.Book().Workers) != 2 || len(m.Book().Servers) != 1 {
					t.Fatalf("book %+v", m.Book())
				}
			}
			var wg sync.WaitGroup
			errs := make([]error, len(ms))
			for i, m := range ms {
				wg.Go(func() { errs[i] = m.Barrier(ctx, All) })
			}
			wg.Wait()
			for _, err := range errs {
				if err != nil {
					t.Fatal(err)
				}
			}
			for _, m := range ms {
				if err := m.Leave(); err != nil {
					t.Fatal(err)
				}
			}
			if err := tc.result(t, ctx); err != nil {
				t.Fatalf("Run: %v", err)
			}
			if n := log.count("refused"); n != 0 {
				t.Errorf("%d refusals logged", n)
			}
		})
	}
}

// TestAuthRefused: with a secret, a member without it, one with another
// secret, a raw client that sends a plain frame and one that sends garbage
// are each refused within the bound and logged once, with their address;
// a silent one does not hold up the others and is dropped at the
// handshake's timeout. The job then forms as usual.
func TestAuthRefused(t *testing.T) {
	t.Parallel()
	ctx := timeout(t, 10*time.Second)
	// The silent peer's handshake outlasts the refusals of the others
	// (each within the bound): it holds none of them up.
	a := &auth.Config{Secret: []byte("right"), Timeout: 3 * refusalBound / 2}
	regs := make(chan Node, 16)
	tc, log := startAuthCoordinator(t, CoordinatorConfig{NumWorkers: 1, NumServers: 1}, a, func(n Node) { regs <- n })

	// A silent peer first: it holds no one up.
	silent, err := net.Dial("tcp", tc.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()

	// Each refused member dials through a hook that remembers its
	// address, to find the coordinator's log line about it.
	var local string
	opt := func(a *auth.Config) Options {
		o := withAuth(fast, a)
		o.Dial = func(ctx context.Context, addr string) (net.Conn, error) {
			var d net.Dialer
			c, err := d.DialContext(ctx, "tcp", addr)
			if err == nil {
				local = c.LocalAddr().String()
			}
			return c, err
		}
		return o
	}

	start := time.Now()
	_, err = Join(ctx, tc.Addr(), worker(0), opt(nil))
	within(t, "refusing a member without a secret", time.Since(start))
	wantErr(t, err, "refused", "did not authenticate", "GOBPS_SECRET")
	log.loggedOnce(t, ctx, "refused connection from "+local, "authentication failed", "did not start the job's handshake")

	start = time.Now()
	_, err = Join(ctx, tc.Addr(), worker(0), opt(secret("wrong")))
	within(t, "refusing a member with a wrong secret", time.Since(start))
	if !errors.Is(err, auth.ErrRefused) {
		t.Errorf("wrong secret: %v, want an auth.ErrRefused", err)
	}
	wantErr(t, err, "refused this process's handshake", "does not hold the job's secret", "GOBPS_SECRET", "must be the same in every process of the job")
	log.loggedOnce(t, ctx, "refused connection from "+local, "authentication failed")

	// A raw client that sends a plain registration: it hears why, and is
	// closed; its registration is not used.
	reg, _ := json.Marshal(worker(0))
	conn, err := net.Dial("tcp", tc.Addr())
	if err != nil {
		t.Fatal(err)
	}
	start = time.Now()
	conn.SetDeadline(start.Add(3 * time.Second))
	conn.Write(frame(proto.OpRegister, reg))
	h, payload, err := proto.ReadFrame(conn, proto.MaxControlPayload)
	if err != nil || h.Op != proto.OpError || !strings.Contains(string(payload), "did not authenticate") {
		t.Errorf("raw frame: got %s %q (%v), want an error saying it did not authenticate", h.Op, payload, err)
	}
	if _, err := io.Copy(io.Discard, conn); err != nil {
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			t.Error("raw frame: connection left open")
		}
	}
	within(t, "refusing a raw frame", time.Since(start))
	log.loggedOnce(t, ctx, "refused connection from "+conn.LocalAddr().String(), "authentication failed")
	conn.Close()

	// Garbage: closed without a word.
	conn, err = net.Dial("tcp", tc.Addr())
	if err != nil {
		t.Fatal(err)
	}
	start = time.Now()
	conn.SetDeadline(start.Add(3 * time.Second))
	conn.Write([]byte("GET / HTTP/1.1\r\n\r\n"))
	if b, err := io.ReadAll(conn); len(b) != 0 || isTimeout(err) {
		t.Errorf("garbage: got %q (%v), want a close", b, err)
	}
	within(t, "refusing garbage", time.Since(start))
	log.loggedOnce(t, ctx, "refused connection from "+conn.LocalAddr().String(), "authentication failed")
	conn.Close()

	select {
	case n := <-regs:
		t.Fatalf("%s registered", n)
	default:
	}

	// The job forms, the silent peer notwithstanding.
	ms := joinAll(t, ctx, tc.Addr(), withAuth(fast, a), worker(0), server("127.0.0.1:7000", 9))
	if ms[0].Self().Rank != 0 {
		t.Fatalf("worker rank %d", ms[0].Self().Rank)
	}
	// The silent peer goes at the handshake's timeout.
	silent.SetDeadline(time.Now().Add(3 * time.Second))
	if _, err := io.ReadAll(silent); isTimeout(err) {
		t.Error("silent peer: connection left open")
	}
	log.loggedOnce(t, ctx, "refused connection from "+silent.LocalAddr().String(), "no hello within")
	for _, m := range ms {
		if err := m.Leave(); err != nil {
			t.Fatal(err)
		}
	}
	if err := tc.result(t, ctx); err != nil {
		t.Fatalf("Run: %v", err)
	}
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// TestAuthCoordinatorWithoutSecret: a member with a secret that meets a
// coordinator without one fails at once, with a clear error, and the
// coordinator logs why.
func TestAuthCoordinatorWithoutSecret(t *testing.T) {
	t.Parallel()
	ctx := timeout(t, 5*time.Second)
	tc, log := startAuthCoordinator(t, CoordinatorConfig{NumWorkers: 1}, nil, nil)
	start := time.Now()
	_, err := Join(ctx, tc.Addr(), worker(0), withAuth(fast, secret("s")))
	within(t, "the failed handshake", time.Since(start))
	if !errors.Is(err, auth.ErrRefused) {
		t.Errorf("got %v, want an auth.ErrRefused", err)
	}
	wantErr(t, err, "refused this process's handshake", "GOBPS_SECRET", "must be the same in every process of the job")
	log.loggedOnce(t, ctx, "closed connection from", "authentication handshake, but this coordinator has no secret")
	// The rank is still free.
	ms := joinAll(t, ctx, tc.Addr(), fast, worker(0))
	if err := ms[0].Leave(); err != nil {
		t.Fatal(err)
	}
	if err := tc.result(t, ctx); err != nil {
		t.Fatalf("Run: %v", err)
	}
}

// authRaw dials the coordinator at addr, passes the handshake claiming id,
// sends reg and returns the coordinator's first answer and the local
// address of the connection.
func authRaw(t *testing.T, addr string, a *auth.Config, id uint32, reg Registration) (proto.Header, string, string) {
	t.Helper()
	raw, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	conn, _, err := a.Dial(raw, id)
	if err != nil {
		t.Fatal(err)
	}
	conn.SetDeadline(time.Now().Add(3 * time.Second))
	b, _ := json.Marshal(reg)
	if _, err := conn.Write(frame(proto.OpRegister, b)); err != nil {
		t.Fatal(err)
	}
	h, payload, err := proto.ReadFrame(conn, proto.MaxControlPayload)
	if err != nil {
		t.Fatal(err)
	}
	return h, string(payload), raw.LocalAddr().String()
}

// TestAuthClaimedID: a registration that does not match the node id its
// handshake claimed is refused; one that matches is accepted.
func TestAuthClaimedID(t *testing.T) {
	t.Parallel()
	ctx := timeout(t, 8*time.Second)
	a := secret("s")
	regs := make(chan Node, 16)
	tc, log := startAuthCoordinator(t, CoordinatorConfig{NumWorkers: 2, NumServers: 1}, a, func(n Node) { regs <- n })
	for _, c := range []struct {
		desc string
		id   uint32
		reg  Registration
		want string
	}{
		{"other worker rank", NodeID(RoleWorker, 1), worker(0), "registration as worker 0 does not match the id the authentication handshake claimed: worker 1"},
		{"server as worker", NodeID(RoleServer, 0), worker(0), "claimed: server 0"},
		{"worker as server", NodeID(RoleWorker, 0), Registration{Role: RoleServer, WorkerID: 0, Addr: "127.0.0.1:7000"}, "claimed: worker 0"},
		{"any rank", NodeID(RoleWorker, 1), Registration{Role: RoleWorker, WorkerID: -1, LocalSize: 1}, "registration as worker 0 does not match"},
		{"no role", 0xff000001, worker(1), "claimed: 0xff000001"},
	} {
		start := time.Now()
		h, msg, local := authRaw(t, tc.Addr(), a, c.id, c.reg)
		within(t, c.desc, time.Since(start))
		if h.Op != proto.OpError || !strings.Contains(msg, c.want) {
			t.Errorf("%s: got %s %q, want an error containing %q", c.desc, h.Op, msg, c.want)
		}
		log.loggedOnce(t, ctx, "closed connection from "+local, c.want)
	}
	select {
	case n := <-regs:
		t.Fatalf("%s registered", n)
	default:
	}
	// Matching claims (and members, which claim their rank or 0) join.
	ms := joinAll(t, ctx, tc.Addr(), withAuth(fast, a), worker(1), Registration{Role: RoleWorker, WorkerID: -1, LocalSize: 1},
		Registration{Role: RoleServer, WorkerID: 0, Addr: "127.0.0.1:7000"})
	if ms[0].Self().Rank != 1 || ms[1].Self().Rank != 0 {
		t.Fatalf("ranks %d and %d", ms[0].Self().Rank, ms[1].Self().Rank)
	}
	for _, m := range ms {
		if err := m.Leave(); err != nil {
			t.Fatal(err)
		}
	}
	if err := tc.result(t, ctx); err != nil {
		t.Fatalf("Run: %v", err)
	}
}

// TestLiveRankKept: without authentication, a second registration of a
// rank a live node holds (worker or server, by explicit rank), a server
// beyond the job's servers, and any registration after the book are
// refused within the bound, logged, and told nothing of the other nodes'
// addresses; the nodes that hold the ranks keep working.
func TestLiveRankKept(t *testing.T) {
	t.Parallel()
	ctx := timeout(t, 10*time.Second)
	regs := make(chan Node, 16)
	tc, log := startAuthCoordinator(t, CoordinatorConfig{NumWorkers: 2, NumServers: 1}, nil, func(n Node) { regs <- n })
	const serverAddr = "127.0.0.1:7000"
	s0 := joinAsync(ctx, tc.Addr(), Registration{Role: RoleServer, WorkerID: 0, Addr: serverAddr, PID: 9}, fast)
	recv(t, ctx, regs, "server 0")
	w0 := joinAsync(ctx, tc.Addr(), worker(0), fast)
	recv(t, ctx, regs, "worker 0")

	refused := func(desc string, reg Registration, want ...string) {
		t.Helper()
		start := time.Now()
		_, err := Join(ctx, tc.Addr(), reg, fast)
		within(t, desc, time.Since(start))
		wantErr(t, err, append([]string{"refused"}, want...)...)
		if strings.Contains(err.Error(), serverAddr) || strings.Contains(err.Error(), "7000") {
			t.Errorf("%s: the refusal %q names the server's address", desc, err)
		}
		log.loggedOnce(t, ctx, "closed connection from", want[len(want)-1])
	}
	refused("a second server 0", Registration{Role: RoleServer, WorkerID: 0, Addr: "127.0.0.1:7001", PID: 10},
		"server rank 0 is already taken by server 0 (pid 9)")
	refused("a second server by arrival", Registration{Role: RoleServer, WorkerID: -1, Addr: "127.0.0.1:7002", PID: 11},
		"all 1 server ranks are taken")
	refused("a second worker 0", worker(0), "worker rank 0 (worker id 0, local rank 0) is already taken by worker 0 (pid 1000)")
	select {
	case n := <-regs:
		t.Fatalf("%s registered", n)
	default:
	}

	ms := joinAll(t, ctx, tc.Addr(), fast, worker(1))
	book := ms[0].Book()
	if book.Servers[0].PID != 9 || book.Servers[0].Addr != serverAddr || book.Workers[0].PID != 1000 {
		t.Fatalf("book %+v: the first holders were displaced", book)
	}
	s := recv(t, ctx, s0, "server 0").must(t)
	w := recv(t, ctx, w0, "worker 0").must(t)
	refused("server 0 after the book", Registration{Role: RoleServer, WorkerID: 0, Addr: "127.0.0.1:7003", PID: 12}, "already complete")

	// The holders keep working: a barrier of all, then a clean end.
	var wg sync.WaitGroup
	all := []*Member{s, w, ms[0]}
	errs := make([]error, len(all))
	for i, m := range all {
		wg.Go(func() { errs[i] = m.Barrier(ctx, All) })
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	for _, m := range []*Member{w, ms[0], s} {
		if err := m.Leave(); err != nil {
			t.Fatal(err)
		}
	}
	if err := tc.result(t, ctx); err != nil {
		t.Fatalf("Run: %v", err)
	}
}

// TestNoServers: a server that registers with a job that has none is
// refused, whether it names a rank or not.
func TestNoServers(t *testing.T) {
	t.Parallel()
	ctx := timeout(t, 5*time.Second)
	tc := startCoordinator(t, CoordinatorConfig{NumWorkers: 1}, nil)
	for _, id := range []int{-1, 0} {
		_, err := Join(ctx, tc.Addr(), Registration{Role: RoleServer, WorkerID: id, Addr: "127.0.0.1:7000"}, Options{})
		wantErr(t, err, "refused", "this job has no servers")
	}
}

// TestClaimedID: the id a member claims in the handshake.
func TestClaimedID(t *testing.T) {
	for _, c := range []struct {
		reg  Registration
		want uint32
	}{
		{worker(3), NodeID(RoleWorker, 3)},
		{Registration{Role: RoleWorker, WorkerID: 2, LocalRank: 1, LocalSize: 4}, NodeID(RoleWorker, 9)},
		{Registration{Role: RoleWorker, WorkerID: -1, LocalSize: 1}, 0},
		{Registration{Role: RoleServer, WorkerID: 1}, NodeID(RoleServer, 1)},
		{Registration{Role: RoleServer, WorkerID: -1}, 0},
		{Registration{Role: RoleWorker, WorkerID: proto.MaxRank, LocalSize: 2}, 0},
	} {
		if got := c.reg.claimedID(); got != c.want {
			t.Errorf("%+v claims %#x, want %#x", c.reg, got, c.want)
		}
	}
}
