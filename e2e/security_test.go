package e2e

import (
	"context"
	"errors"
	"io"
	"net"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/gobps/gobps/internal/auth"
	"github.com/gobps/gobps/proto"
)

// Attacks on a running job with a secret (issue 17): each is refused
// within 1 s, logged with the attacker's address, and nothing it sent is
// summed: the job's sums stay exact.

// refusedWithin1s dials addr, lets attack write on the connection, and
// checks that the peer closes it within 1 s without answering a frame.
func refusedWithin1s(t *testing.T, what, addr string, attack func(net.Conn) error) {
	t.Helper()
	nc, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		t.Fatalf("%s: %v", what, err)
	}
	defer nc.Close()
	start := time.Now()
	if err := attack(nc); err != nil {
		t.Logf("%s: %v", what, err) // refused already
	}
	nc.SetReadDeadline(start.Add(time.Second))
	b, err := io.ReadAll(nc)
	switch {
	case errors.Is(err, os.ErrDeadlineExceeded):
		t.Errorf("%s: connection still open after 1 s", what)
	case len(b) >= proto.HeaderSize && string(b[:4]) == "GBPS":
		var h proto.Header
		if h.Decode(b) == nil && h.Op != proto.OpError {
			t.Errorf("%s: answered with %s", what, h.Op)
		}
	}
	t.Logf("%s: closed after %v (%d bytes back)", what, time.Since(start).Round(time.Millisecond), len(b))
}

func frame(h proto.Header, payload []byte) []byte {
	b := make([]byte, proto.HeaderSize)
	h.Length = uint32(len(payload))
	h.Encode(b)
	return append(b, payload...)
}

// TestOutsiderCannotPoison runs a 2-worker job with the job's secret and,
// while it runs, tries as an outsider: a hello as worker 1 and a push on
// the server's data port (no secret, a wrong secret, a replayed
// handshake), and a registration as server 0 with the coordinator. Every
// attempt is refused within 1 s and logged; both workers' sums stay exact.
func TestOutsiderCannotPoison(t *testing.T) {
	if probeAuth == nil {
		t.Skip("GOBPS_E2E_AUTH=none: the jobs have no secret")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	p := startProbed(t, ctx, 2, "")
	// Worker 0 is in the job (registered, connected, waiting for worker
	// 1, so the job cannot end under the attacks); worker 1 comes after.
	ws := []*job{p.worker(ctx, 0, "-tensors", "8", "-rounds", "40", "-max", "65536", "-timeout", "90s")}
	time.Sleep(500 * time.Millisecond)

	poison := frame(proto.Header{Op: proto.OpPush, Flags: proto.FlagPull, DType: proto.Float32, Key: proto.Key(0), ReqID: 1},
		make([]byte, 1<<10))
	hello := frame(proto.Header{Op: proto.OpHello, Sender: proto.NodeID(proto.RoleWorker, 1)}, nil)
	refusedWithin1s(t, "no secret", p.addr, func(nc net.Conn) error {
		_, err := nc.Write(append(hello, poison...))
		return err
	})
	if probeAuth.TLS == nil {
		// A wrong secret: the attacker cannot check the server's answer,
		// so it sends a proof made with its own secret, then its frames.
		refusedWithin1s(t, "wrong secret", p.addr, func(nc net.Conn) error {
			nonce := make([]byte, auth.NonceSize)
			nc.Write(auth.EncodeHello(proto.NodeID(proto.RoleWorker, 1), nonce))
			if _, err := io.ReadFull(nc, make([]byte, auth.AnswerSize)); err != nil {
				return err
			}
			_, err := nc.Write(append(append(make([]byte, auth.ProofSize), hello...), poison...))
			return err
		})
	} else {
		// Under TLS an outsider without a certificate fails the TLS
		// handshake itself.
		refusedWithin1s(t, "no certificate", p.addr, func(nc net.Conn) error {
			_, err := nc.Write([]byte("\x16\x03\x01\x00\x05hello"))
			return err
		})
	}
	if probeAuth.TLS == nil {
		// Replay: a handshake recorded from a genuine member, sent again.
		var rec recorder
		nc, err := net.DialTimeout("tcp", p.addr, time.Second)
		if err != nil {
			t.Fatal(err)
		}
		rec.Conn = nc
		if _, _, err := probeAuth.Dial(&rec, proto.NodeID(proto.RoleWorker, 1)); err != nil {
			t.Fatal(err)
		}
		nc.Close()
		refusedWithin1s(t, "replayed handshake", p.addr, func(nc net.Conn) error {
			_, err := nc.Write(append(append(rec.sent, hello...), poison...))
			return err
		})
	}
	coord := net.JoinHostPort("127.0.0.1", envOf(p.env, "DMLC_PS_ROOT_PORT"))
	refusedWithin1s(t, "registration as server 0 without the secret", coord, func(nc net.Conn) error {
		reg := []byte(`{"role":"server","worker_id":0,"local_size":1,"addr":"127.0.0.1:1","pid":1}`)
		_, err := nc.Write(frame(proto.Header{Op: proto.OpRegister}, reg))
		return err
	})

	ws = append(ws, p.worker(ctx, 1, "-tensors", "8", "-rounds", "40", "-max", "65536", "-timeout", "90s"))
	for rank, w := range ws {
		if code := w.wait(90 * time.Second); code != 0 {
			t.Fatalf("worker %d exited %d:\n%s\nserver:\n%s", rank, code, w.output(), p.srv.output())
		}
		w.waitFor(regexp.MustCompile(`all 40 rounds exact`), 1, time.Second)
	}
	refusals := p.srv.waitFor(regexp.MustCompile(`refused 127\.0\.0\.1:\d+`), 2, 5*time.Second)
	for _, l := range refusals {
		t.Log(l.text)
	}
}

// recorder keeps what is written through it.
type recorder struct {
	net.Conn
	sent []byte
}

func (r *recorder) Write(b []byte) (int, error) {
	r.sent = append(r.sent, b...)
	return r.Conn.Write(b)
}

func envOf(env []string, name string) string {
	for _, kv := range env {
		if k, v, ok := strings.Cut(kv, "="); ok && k == name {
			return v
		}
	}
	return ""
}

// TestUnauthenticatedJob: bpsrun --local --insecure, with no secret in the
// environment, runs a job as BytePS would, exact, and every process says
// once that it is unauthenticated.
func TestUnauthenticatedJob(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	env := []string{"GOBPS_SECRET=", "GOBPS_TLS_CERT=", "GOBPS_TLS_KEY=", "GOBPS_TLS_CA="}
	j := start(t, ctx, env, "--local", "--insecure", "-v", "-np", "2", "--servers", "1", "--",
		bin+"/testjob", "-tensors", "4", "-rounds", "3", "-max", "4096")
	if code := j.wait(90 * time.Second); code != 0 {
		t.Fatalf("bpsrun exited %d:\n%s", code, j.output())
	}
	j.waitFor(regexp.MustCompile(`all 3 rounds exact`), 2, time.Second)
	notices := j.waitFor(regexp.MustCompile(`this job is unauthenticated`), 4, time.Second)
	seen := map[string]int{}
	for _, l := range notices {
		seen[l.text[:strings.Index(l.text, "]")+1]]++
	}
	for who, n := range seen {
		if n != 1 {
			t.Errorf("%s says it is unauthenticated %d times", who, n)
		}
	}
}

// TestSecretNeverLeaks: a job whose secret is too short is refused with an
// error that does not show it.
func TestSecretNeverLeaks(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	j := start(t, ctx, []string{"GOBPS_SECRET=tooshort42"}, "--local", "-np", "1", "--", bin+"/testjob")
	if code := j.wait(30 * time.Second); code == 0 {
		t.Fatal("a job with a 10-character secret ran")
	}
	out := j.output()
	if strings.Contains(out, "tooshort42") {
		t.Errorf("the secret is in the output:\n%s", out)
	}
	if !strings.Contains(out, "GOBPS_SECRET") || !strings.Contains(out, "at least 16") {
		t.Errorf("the error does not say what is wrong:\n%s", out)
	}
}
