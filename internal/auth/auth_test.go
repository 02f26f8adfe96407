package auth

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"io"
	"math/big"
	"net"
	"strings"
	"testing"
	"time"
)

// pair returns two ends of a loopback TCP connection (deadlines work on
// them, as on the job's).
func pair(t *testing.T) (dialer, acceptor net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	ch := make(chan net.Conn, 1)
	go func() {
		c, _ := ln.Accept()
		ch <- c
	}()
	d, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	a := <-ch
	t.Cleanup(func() { d.Close(); a.Close() })
	return d, a
}

type result struct {
	conn net.Conn
	id   uint32
	err  error
	took time.Duration
}

// handshake runs both sides at once; either side's config may be nil.
func handshake(t *testing.T, dc, ac *Config, did, aid uint32) (d, a result) {
	t.Helper()
	dconn, aconn := pair(t)
	ch := make(chan result, 1)
	go func() {
		start := time.Now()
		c, id, err := ac.Accept(aconn, aid)
		if err != nil {
			aconn.Close() // as every caller does
		}
		ch <- result{c, id, err, time.Since(start)}
	}()
	start := time.Now()
	c, id, err := dc.Dial(dconn, did)
	if err != nil {
		dconn.Close()
	}
	d = result{c, id, err, time.Since(start)}
	return d, <-ch
}

func refusedWithin(t *testing.T, what string, r result, want string) {
	t.Helper()
	if r.err == nil {
		t.Fatalf("%s: accepted", what)
	}
	if !errors.Is(r.err, ErrRefused) || !strings.Contains(r.err.Error(), want) {
		t.Errorf("%s: %v; want a refusal mentioning %q", what, r.err, want)
	}
	if r.took > time.Second {
		t.Errorf("%s: refused after %v, want within 1 s", what, r.took)
	}
}

func TestHandshake(t *testing.T) {
	c := &Config{Secret: []byte("job secret")}
	d, a := handshake(t, c, c, 0x0200_0003, 0x0100_0001)
	if d.err != nil || a.err != nil {
		t.Fatalf("dial %v, accept %v", d.err, a.err)
	}
	if d.id != 0x0100_0001 || a.id != 0x0200_0003 {
		t.Errorf("ids: the dialer saw %#x, the acceptor %#x", d.id, a.id)
	}
	// The connection carries data both ways afterwards, nothing left over.
	go d.conn.Write([]byte("after"))
	buf := make([]byte, 5)
	if _, err := io.ReadFull(a.conn, buf); err != nil || string(buf) != "after" {
		t.Errorf("after the handshake: %q, %v", buf, err)
	}
}

func TestNoConfig(t *testing.T) {
	var c *Config
	if c.Enabled() || (&Config{}).Enabled() {
		t.Error("an empty config is enabled")
	}
	d, a := handshake(t, nil, nil, 1, 2)
	if d.err != nil || a.err != nil || d.conn == nil || a.conn == nil {
		t.Fatalf("without auth: dial %v, accept %v", d.err, a.err)
	}
	if (&Config{Secret: []byte("s"), TLS: &TLS{}}).WithoutTLS().TLS != nil || (&Config{TLS: &TLS{}}).WithoutTLS() != nil {
		t.Error("WithoutTLS kept TLS")
	}
}

func TestRefusals(t *testing.T) {
	good := &Config{Secret: []byte("job secret")}
	wrong := &Config{Secret: []byte("another job")}

	t.Run("no secret", func(t *testing.T) {
		// A dialer without the secret speaks gobps at once: a plain hello.
		dconn, aconn := pair(t)
		ch := make(chan result, 1)
		go func() {
			start := time.Now()
			_, id, err := good.Accept(aconn, 1)
			ch <- result{nil, id, err, time.Since(start)}
		}()
		dconn.Write(append([]byte("GBPS"), make([]byte, 28)...))
		refusedWithin(t, "plain hello", <-ch, "did not start the job's handshake")
	})
	t.Run("wrong secret, dialer", func(t *testing.T) {
		d, a := handshake(t, wrong, good, 1, 2)
		refusedWithin(t, "dialer", d, "does not hold the job's secret")
		if a.err == nil {
			t.Error("the acceptor accepted a dialer with the wrong secret")
		}
	})
	t.Run("wrong secret, acceptor", func(t *testing.T) {
		// A fake server: the dialer refuses it before proving anything.
		d, a := handshake(t, good, wrong, 1, 2)
		refusedWithin(t, "dialer facing a fake acceptor", d, "wrong answer")
		refusedWithin(t, "fake acceptor", a, "hung up")
	})
	t.Run("acceptor without secret", func(t *testing.T) {
		dconn, aconn := pair(t)
		go func() { io.CopyN(io.Discard, aconn, int64(HelloSize)); aconn.Close() }()
		start := time.Now()
		_, _, err := good.Dial(dconn, 1)
		refusedWithin(t, "dialer", result{err: err, took: time.Since(start)}, "hung up on the handshake")
	})
	t.Run("silent dialer", func(t *testing.T) {
		c := &Config{Secret: []byte("job secret"), Timeout: 200 * time.Millisecond}
		_, aconn := pair(t)
		start := time.Now()
		_, _, err := c.Accept(aconn, 1)
		refusedWithin(t, "silent", result{err: err, took: time.Since(start)}, "no hello within")
	})
	t.Run("replay", func(t *testing.T) {
		// Record a genuine dialer's messages, then replay them on a new
		// connection: the acceptor's fresh nonce makes the proof wrong.
		var sent bytes.Buffer
		dconn, aconn := pair(t)
		go good.Accept(aconn, 2)
		rec := &recorder{Conn: dconn, w: &sent}
		if _, _, err := good.Dial(rec, 1); err != nil {
			t.Fatal(err)
		}
		dconn2, aconn2 := pair(t)
		ch := make(chan result, 1)
		go func() {
			start := time.Now()
			_, _, err := good.Accept(aconn2, 2)
			ch <- result{err: err, took: time.Since(start)}
		}()
		dconn2.Write(sent.Bytes())
		refusedWithin(t, "replayed handshake", <-ch, "wrong proof")
	})
	t.Run("reflection", func(t *testing.T) {
		// An attacker opens two connections and hands the acceptor's own
		// answer on one back as the challenge on the other, then offers
		// the MAC it got as its proof: the labels differ, refused.
		d1, a1 := pair(t)
		d2, a2 := pair(t)
		ch := make(chan result, 2)
		for _, a := range []net.Conn{a1, a2} {
			go func() {
				start := time.Now()
				_, _, err := good.Accept(a, 2)
				ch <- result{err: err, took: time.Since(start)}
			}()
		}
		nonce := make([]byte, NonceSize)
		rand.Read(nonce)
		d1.Write(EncodeHello(2, nonce))
		ans1 := make([]byte, AnswerSize)
		if _, err := io.ReadFull(d1, ans1); err != nil {
			t.Fatal(err)
		}
		_, na1, _, _ := DecodeAnswer(ans1)
		d2.Write(EncodeHello(2, na1)) // the acceptor's challenge, reflected
		ans2 := make([]byte, AnswerSize)
		if _, err := io.ReadFull(d2, ans2); err != nil {
			t.Fatal(err)
		}
		_, _, mac2, _ := DecodeAnswer(ans2)
		d1.Write(mac2)
		refusedWithin(t, "reflected challenge", <-ch, "wrong proof")
		d2.Close()
		<-ch
	})
}

// recorder copies what is written to the connection.
type recorder struct {
	net.Conn
	w io.Writer
}

func (r *recorder) Write(b []byte) (int, error) {
	r.w.Write(b)
	return r.Conn.Write(b)
}

// ---------------------------------------------------------------- TLS

type ca struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	pool *x509.CertPool
}

func newCA(t *testing.T, name string) *ca {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	return &ca{cert, key, pool}
}

func (c *ca) issue(t *testing.T, name string, notAfter time.Time) tls.Certificate {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: name},
		NotBefore: time.Now().Add(-2 * time.Hour), NotAfter: notAfter,
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, c.cert, &key.PublicKey, c.key)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

func TestTLS(t *testing.T) {
	job := newCA(t, "job CA")
	other := newCA(t, "another CA")
	soon := time.Now().Add(time.Hour)
	member := func(name string) *Config {
		return &Config{Secret: []byte("s"), TLS: NewTLS(job.issue(t, name, soon), job.pool)}
	}
	t.Run("members", func(t *testing.T) {
		d, a := handshake(t, member("worker"), member("server"), 7, 9)
		if d.err != nil || a.err != nil {
			t.Fatalf("dial %v, accept %v", d.err, a.err)
		}
		if _, ok := d.conn.(*tls.Conn); !ok {
			t.Errorf("the dialer's connection is a %T, want *tls.Conn", d.conn)
		}
		if d.id != 9 || a.id != 7 {
			t.Errorf("ids %d, %d", d.id, a.id)
		}
		if v := d.conn.(*tls.Conn).ConnectionState().Version; v != tls.VersionTLS13 {
			t.Errorf("TLS version %#x", v)
		}
	})
	t.Run("plain client", func(t *testing.T) {
		d, a := handshake(t, &Config{Secret: []byte("s")}, member("server"), 1, 2)
		refusedWithin(t, "TLS listener", a, "TLS")
		if d.err == nil {
			t.Error("the plain client went on")
		}
	})
	t.Run("untrusted", func(t *testing.T) {
		stranger := &Config{Secret: []byte("s"), TLS: NewTLS(other.issue(t, "stranger", soon), job.pool)}
		d, a := handshake(t, stranger, member("server"), 1, 2)
		refusedWithin(t, "acceptor", a, "unknown authority")
		if d.err == nil {
			t.Error("the stranger went on")
		}
		d, a = handshake(t, member("worker"), stranger, 1, 2)
		refusedWithin(t, "dialer facing a stranger", d, "unknown authority")
	})
	t.Run("expired", func(t *testing.T) {
		old := &Config{Secret: []byte("s"), TLS: NewTLS(job.issue(t, "old", time.Now().Add(-time.Minute)), job.pool)}
		_, a := handshake(t, old, member("server"), 1, 2)
		refusedWithin(t, "acceptor", a, "expired")
	})
}

// ---------------------------------------------------------------- fuzz

// FuzzAccept: whatever a dialer without the secret sends, the acceptor
// refuses it (or reports a broken connection), never panics, never
// accepts.
func FuzzAccept(f *testing.F) {
	f.Add(EncodeHello(1, make([]byte, NonceSize)))
	f.Add(append(EncodeHello(1, make([]byte, NonceSize)), make([]byte, ProofSize)...))
	f.Add([]byte("GBPS"))
	f.Add([]byte{})
	c := &Config{Secret: []byte("job secret"), Timeout: 50 * time.Millisecond}
	f.Fuzz(func(t *testing.T, in []byte) {
		if _, _, err := DecodeHello(in); err == nil && len(in) != HelloSize {
			t.Fatalf("DecodeHello took %d bytes", len(in))
		}
		DecodeAnswer(in)
		if _, _, err := c.Accept(&script{in: bytes.NewReader(in)}, 1); err == nil {
			t.Fatalf("accepted %x without the secret", in)
		}
	})
}

// script is a connection that reads in, then EOF, and swallows writes.
type script struct {
	net.Conn
	in *bytes.Reader
}

func (s *script) Read(b []byte) (int, error)  { return s.in.Read(b) }
func (s *script) Write(b []byte) (int, error) { return len(b), nil }
func (s *script) SetDeadline(time.Time) error { return nil }
func (s *script) RemoteAddr() net.Addr        { return &net.TCPAddr{} }
func (s *script) Close() error                { return nil }

// TestWritePKI: the files WritePKI makes load and let two processes meet.
func TestWritePKI(t *testing.T) {
	cert, key, ca, err := WritePKI(t.TempDir(), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	tl, err := LoadTLS(cert, key, ca)
	if err != nil {
		t.Fatal(err)
	}
	c := &Config{Secret: []byte("s"), TLS: tl}
	d, a := handshake(t, c, c, 1, 2)
	if d.err != nil || a.err != nil {
		t.Fatalf("dial %v, accept %v", d.err, a.err)
	}
	if _, err := LoadTLS(cert, key, ""); err == nil {
		t.Error("LoadTLS without a CA succeeded")
	}
}
