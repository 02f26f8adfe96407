package local

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/gobps/gobps/internal/auth"
)

// refusalBound is how long rank 0 may take to refuse a connection that
// fails the handshake or claims a rank it may not.
const refusalBound = time.Second

// logBook collects a group's notices.
type logBook struct {
	mu    sync.Mutex
	lines []string
}

func (l *logBook) logf(format string, args ...any) {
	l.mu.Lock()
	l.lines = append(l.lines, fmt.Sprintf(format, args...))
	l.mu.Unlock()
}

// matching returns the notices that contain every substr.
func (l *logBook) matching(substr ...string) []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []string
	for _, line := range l.lines {
		if !slices.ContainsFunc(substr, func(s string) bool { return !strings.Contains(line, s) }) {
			out = append(out, line)
		}
	}
	return out
}

func (l *logBook) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return strings.Join(l.lines, "\n")
}

// wantLoggedOnce fails the test unless exactly one notice contains every
// substr.
func wantLoggedOnce(t *testing.T, logs *logBook, substr ...string) {
	t.Helper()
	if n := len(logs.matching(substr...)); n != 1 {
		t.Errorf("%d notices contain %q, want 1; notices:\n%s", n, substr, logs)
	}
}

func secret(s string, timeout time.Duration) *auth.Config {
	return &auth.Config{Secret: []byte(s), Timeout: timeout}
}

// hostInBackground starts the join of the given ranks of cfg's group from
// goroutines and returns a function that waits for them; the groups are
// closed when the test ends.
func hostInBackground(t *testing.T, cfg Config, ranks ...int) (wait func() []error, gs []*Group) {
	gs = make([]*Group, cfg.Size)
	errs := make([]error, cfg.Size)
	var wg sync.WaitGroup
	for _, r := range ranks {
		c := cfg
		c.Rank = r
		wg.Go(func() { gs[r], errs[r] = Join(context.Background(), c) })
	}
	t.Cleanup(func() {
		wg.Wait()
		for _, g := range gs {
			if g != nil {
				g.Close()
			}
		}
	})
	return func() []error { wg.Wait(); return errs }, gs
}

// waitAdmitted waits until rank 0 reports that it admitted rank want.
func waitAdmitted(t *testing.T, admitted <-chan int, want int) {
	t.Helper()
	select {
	case r := <-admitted:
		if r != want {
			t.Fatalf("local rank 0 admitted local rank %d, want %d", r, want)
		}
	case <-time.After(5 * time.Second):
		t.Fatalf("local rank %d was not admitted within 5 s", want)
	}
}

// waitListening waits until the rendezvous socket of cfg's group exists and
// returns its path.
func waitListening(t *testing.T, cfg Config) string {
	t.Helper()
	path, err := socketPath(cfg.Dir, baseName(cfg.Group))
	if err != nil {
		t.Fatal(err)
	}
	eventually(t, "local rank 0 to listen", func() bool { _, err := os.Stat(path); return err == nil })
	return path
}

// dialRank0 connects to the rendezvous socket of cfg's group once it exists.
func dialRank0(t *testing.T, cfg Config) *net.UnixConn {
	t.Helper()
	path := waitListening(t, cfg)
	c, err := net.DialUnix("unix", nil, &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// helloFrame is the group's own hello of local rank r of a group of size.
func helloFrame(r, size int) []byte {
	pid := binary.LittleEndian.AppendUint64(nil, uint64(os.Getpid()))
	return appendFrame(nil, frame{op: opHello, key: helloMagic, round: uint64(r), bytes: uint64(size), payload: pid})
}

// refusedWithin reads c until rank 0 closes it, failing the test if that
// takes longer than d (measured from since) or if rank 0 sent anything but
// a reject frame. It returns the reject's reason, if any.
func refusedWithin(t *testing.T, c net.Conn, since time.Time, d time.Duration) string {
	t.Helper()
	c.SetReadDeadline(since.Add(d))
	b, err := io.ReadAll(c)
	var ne net.Error
	switch {
	case errors.As(err, &ne) && ne.Timeout():
		t.Fatalf("the connection was not refused within %v (read %q)", d, b)
	case err != nil && !errors.Is(err, syscall.ECONNRESET):
		t.Fatalf("reading the refusal: %v", err)
	}
	if len(b) == 0 {
		return ""
	}
	f, n, err := decodeHeader(b)
	if err != nil || f.op != opReject || len(b) != frameSize+n {
		t.Fatalf("rank 0 answered with %q, want only a reject frame", b)
	}
	return string(b[frameSize:])
}

// TestAuthGroup forms groups whose ranks share a secret and runs rounds.
func TestAuthGroup(t *testing.T) {
	for _, size := range []int{2, 4} {
		t.Run(fmt.Sprintf("size%d", size), func(t *testing.T) {
			var logs logBook
			gs := joinAll(t, Config{Dir: t.TempDir(), Group: "auth", Size: size, Auth: secret("s3cret", 0), Logf: logs.logf})
			keys := mixedKeys[:4]
			segs := declareAll(t, gs, keys)
			for r := range uint64(2) {
				runRound(t, segs, keys, r, 3)
			}
			if l := logs.String(); l != "" {
				t.Errorf("notices:\n%s", l)
			}
		})
	}
}

// TestAuthIntruders has connections that do not hold the secret, or hold
// it but claim a rank they did not prove or that has joined, reach rank 0
// between the arrivals of the real ranks (after rank 1, before rank 2),
// while another connection says nothing: each is refused within
// refusalBound and logged once, and the real group forms without waiting
// for the silent one and runs a round.
func TestAuthIntruders(t *testing.T) {
	var logs logBook
	admitted := make(chan int, 8)
	cfg := Config{Dir: t.TempDir(), Group: "intruders", Size: 3, JoinTimeout: 20 * time.Second,
		Auth: secret("s3cret", 5*time.Second), Logf: logs.logf, admitted: func(r int) { admitted <- r }}
	wait, gs := hostInBackground(t, cfg, 0, 1)
	waitAdmitted(t, admitted, 1)
	silent := dialRank0(t, cfg)
	me := fmt.Sprintf("pid %d", os.Getpid())

	t.Run("no secret", func(t *testing.T) {
		c := dialRank0(t, cfg)
		start := time.Now()
		c.Write(helloFrame(2, 3))
		why := refusedWithin(t, c, start, refusalBound)
		if !strings.Contains(why, "GOBPS_SECRET") {
			t.Errorf("reject reason %q does not name GOBPS_SECRET", why)
		}
		wantLoggedOnce(t, &logs, "refused a connection", me, "failed the job's handshake", "did not start the job's handshake")
	})
	t.Run("wrong secret", func(t *testing.T) {
		c := dialRank0(t, cfg)
		_, _, err := secret("guess", time.Second).Dial(c, rankID(2))
		if !errors.Is(err, auth.ErrRefused) {
			t.Fatalf("handshake with the wrong secret: %v, want a refusal", err)
		}
		c.Close()
		eventually(t, "the refusal to be logged", func() bool {
			return len(logs.matching("claiming local rank 2 failed the job's handshake", "hung up before its proof")) > 0
		})
		wantLoggedOnce(t, &logs, "refused a connection", me, "claiming local rank 2 failed the job's handshake", "hung up before its proof")
	})
	t.Run("wrong secret forged proof", func(t *testing.T) {
		c := dialRank0(t, cfg)
		start := time.Now()
		nonce := make([]byte, auth.NonceSize)
		rand.Read(nonce)
		c.Write(auth.EncodeHello(rankID(2), nonce))
		answer := make([]byte, auth.AnswerSize)
		c.SetReadDeadline(start.Add(refusalBound))
		if _, err := io.ReadFull(c, answer); err != nil {
			t.Fatalf("no answer to the hello: %v", err)
		}
		proof := make([]byte, auth.ProofSize)
		rand.Read(proof)
		c.Write(proof)
		refusedWithin(t, c, start, refusalBound)
		wantLoggedOnce(t, &logs, "refused a connection", me, "claiming local rank 2 failed the job's handshake", "wrong proof")
	})
	t.Run("right secret other rank", func(t *testing.T) {
		c := dialRank0(t, cfg)
		start := time.Now()
		if _, _, err := secret("s3cret", time.Second).Dial(c, rankID(1)); err != nil {
			t.Fatal(err)
		}
		c.Write(helloFrame(2, 3))
		why := refusedWithin(t, c, start, refusalBound)
		if !strings.Contains(why, "proved local rank 1 in the job's handshake but says it is local rank 2") {
			t.Errorf("reject reason %q", why)
		}
		wantLoggedOnce(t, &logs, "refused a connection", me, "proved local rank 1 in the job's handshake but says it is local rank 2")
	})
	t.Run("right secret joined rank", func(t *testing.T) {
		c := dialRank0(t, cfg)
		start := time.Now()
		if _, _, err := secret("s3cret", time.Second).Dial(c, rankID(1)); err != nil {
			t.Fatal(err)
		}
		c.Write(helloFrame(1, 3))
		why := refusedWithin(t, c, start, refusalBound)
		if !strings.Contains(why, "has joined already") {
			t.Errorf("reject reason %q", why)
		}
		wantLoggedOnce(t, &logs, "refused a connection", "says it is local rank 1, but local rank 1 (pid", "has joined already")
	})
	if t.Failed() {
		return
	}

	start := time.Now()
	wait2, gs2 := hostInBackground(t, cfg, 2)
	errs := append(wait(), wait2()...)
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("local rank 2 took %v to join while a silent connection was pending", d)
	}
	waitAdmitted(t, admitted, 2)
	select {
	case r := <-admitted:
		t.Fatalf("local rank 0 admitted local rank %d once more", r)
	default:
	}
	// The silent connection was closed when the group formed, unlogged.
	refusedWithin(t, silent, time.Now(), refusalBound)
	if n := len(logs.matching("refused a connection")); n != 5 {
		t.Errorf("%d refusals logged, want 5:\n%s", n, &logs)
	}
	gs[2] = gs2[2]
	keys := mixedKeys[:3]
	segs := declareAll(t, gs, keys)
	runRound(t, segs, keys, 0, 1)
	for r, g := range gs {
		if g.PID(r) != os.Getpid() {
			t.Errorf("local rank %d has pid %d", r, g.PID(r))
		}
	}
}

// TestAuthSilentDialer checks that a connection that never starts the
// handshake is refused at the handshake's timeout, and the group still
// forms.
func TestAuthSilentDialer(t *testing.T) {
	var logs logBook
	cfg := Config{Dir: t.TempDir(), Group: "silent", Size: 2, JoinTimeout: 10 * time.Second,
		Auth: secret("s3cret", 300*time.Millisecond), Logf: logs.logf}
	wait, _ := hostInBackground(t, cfg, 0)
	c := dialRank0(t, cfg)
	refusedWithin(t, c, time.Now(), refusalBound)
	wantLoggedOnce(t, &logs, "refused a connection", "failed the job's handshake", "no hello within the handshake's time")
	if err := joinErrs(cfg, 1)[0]; err != nil {
		t.Fatal(err)
	}
	if err := errors.Join(wait()...); err != nil {
		t.Fatal(err)
	}
}

// TestAuthWrongSecret has rank 1 join with a secret other than rank 0's (or
// none where rank 0 has one, or one where rank 0 has none): its Join fails
// at once, naming the cause.
func TestAuthWrongSecret(t *testing.T) {
	for _, tc := range []struct {
		desc       string
		host, rank *auth.Config
		want       []string
		refusal    bool // errors.Is(err, auth.ErrRefused)
		logged     string
	}{
		{"other secret", secret("s3cret", 0), secret("guess", 0),
			[]string{"the local group's rank 0 refused this process's handshake", "wrong answer", "(every worker must have the job's GOBPS_SECRET)"}, true, "hung up before its proof"},
		{"no secret", secret("s3cret", 0), nil,
			[]string{"refused by local rank 0", "did not pass the job's handshake", "GOBPS_SECRET"}, false, "did not start the job's handshake"},
		{"rank 0 without secret", nil, secret("s3cret", 0),
			[]string{"the local group's rank 0 refused this process's handshake", "(every worker must have the job's GOBPS_SECRET)"}, true, ""},
	} {
		t.Run(tc.desc, func(t *testing.T) {
			var logs logBook
			cfg := Config{Dir: t.TempDir(), Group: "wrong", Size: 2, JoinTimeout: 10 * time.Second, Auth: tc.host, Logf: logs.logf}
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			host := make(chan error, 1)
			go func() {
				c := cfg
				g, err := Join(ctx, c)
				if g != nil {
					g.Close()
				}
				host <- err
			}()
			c := cfg
			c.Rank, c.Auth, c.Logf = 1, tc.rank, nil
			waitListening(t, c)
			start := time.Now()
			_, err := Join(context.Background(), c)
			if d := time.Since(start); d > refusalBound {
				t.Errorf("the refusal took %v", d)
			}
			wantErr(t, err, tc.want...)
			if errors.Is(err, auth.ErrRefused) != tc.refusal {
				t.Errorf("errors.Is(%v, auth.ErrRefused) = %v", err, !tc.refusal)
			}
			if tc.logged != "" {
				eventually(t, "the refusal to be logged", func() bool { return len(logs.matching(tc.logged)) > 0 })
				wantLoggedOnce(t, &logs, "refused a connection", tc.logged)
			}
			cancel()
			wantErr(t, <-host, "context canceled", "refused: ")
		})
	}
}

// TestDuplicateRank has a second connection claim a local rank that has
// joined: it is refused within refusalBound, and the member and the group
// go on unharmed.
func TestDuplicateRank(t *testing.T) {
	var logs logBook
	admitted := make(chan int, 8)
	cfg := Config{Dir: t.TempDir(), Group: "dup", Size: 3, JoinTimeout: 10 * time.Second,
		Logf: logs.logf, admitted: func(r int) { admitted <- r }}
	wait, gs := hostInBackground(t, cfg, 0, 1)
	waitAdmitted(t, admitted, 1)
	c := dialRank0(t, cfg)
	start := time.Now()
	c.Write(helloFrame(1, 3))
	why := refusedWithin(t, c, start, refusalBound)
	if !strings.Contains(why, "local rank 1 (pid") || !strings.Contains(why, "has joined already") {
		t.Errorf("reject reason %q", why)
	}
	wantLoggedOnce(t, &logs, "refused a connection", "has joined already")
	wait2, gs2 := hostInBackground(t, cfg, 2)
	if err := errors.Join(append(wait(), wait2()...)...); err != nil {
		t.Fatal(err)
	}
	gs[2] = gs2[2]
	keys := mixedKeys[:3]
	segs := declareAll(t, gs, keys)
	runRound(t, segs, keys, 0, 1)
	runRound(t, segs, keys, 1, 1)
}

// TestPrivateFiles checks, with a umask that hides nothing, that the
// rendezvous socket and the shared-memory files are the user's alone.
func TestPrivateFiles(t *testing.T) {
	dir := t.TempDir()
	old := syscall.Umask(0)
	t.Cleanup(func() { syscall.Umask(old) })
	cfg := Config{Dir: dir, Group: "private", Size: 2, JoinTimeout: 10 * time.Second}
	wait, gs := hostInBackground(t, cfg, 0)
	path := waitListening(t, cfg)
	st, err := os.Lstat(path)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Type() != os.ModeSocket || st.Mode().Perm() != 0o600 {
		t.Errorf("socket %s has mode %v, want a socket with 0600", path, st.Mode())
	}
	wait2, gs2 := hostInBackground(t, cfg, 1)
	if err := errors.Join(append(wait(), wait2()...)...); err != nil {
		t.Fatal(err)
	}
	gs[1] = gs2[1]
	keys := mixedKeys[:2]
	segs := declareAll(t, gs, keys)
	files := groupFiles(t, dir, cfg.Group)
	if len(files) != len(keys) {
		t.Fatalf("files %v, want one per key", files)
	}
	for _, name := range files {
		st, err := os.Stat(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		if st.Mode().Perm() != 0o600 {
			t.Errorf("shared-memory file %s has mode %v, want 0600", name, st.Mode())
		}
	}
	runRound(t, segs, keys, 0, 1)
}
