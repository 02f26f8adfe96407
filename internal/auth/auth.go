// Package auth makes every connection of a job prove, before anything
// else is read from it, that both ends hold the job's secret, and
// optionally wraps it in mutual TLS 1.3.
//
// The handshake (with a secret) is a mutual challenge-response over fresh
// nonces from both sides, three messages long:
//
//	dialer   -> acceptor  hello:  "GBA1", the dialer's claimed id (4 bytes), nonce D (32),
//	                              8 zero bytes (a gobps frame header's length, so that a
//	                              process without a secret reads a whole header, finds
//	                              the magic wrong and hangs up at once)
//	acceptor -> dialer    answer: "GBA1", the acceptor's id (4), nonce A (32),
//	                              MAC("acceptor", D, A, dialer id, acceptor id) (32)
//	dialer   -> acceptor  proof:  MAC("dialer", D, A, dialer id, acceptor id) (32)
//	acceptor -> dialer    one byte, 1: accepted
//
// MAC is HMAC-SHA256 keyed with a key derived from the secret. Each MAC
// covers both nonces, so it is bound to this connection and cannot be
// replayed on another; each is labelled with the side that made it, so a
// challenge reflected back at its sender (on this connection or another)
// yields a MAC of the wrong label; and each covers both claimed ids, so
// neither can be changed in flight. The dialer checks the acceptor's MAC
// before it proves anything, so a process without the secret that poses as
// a server or coordinator learns nothing it could use. An id is the caller's
// business (gobps passes node ids; 0 for a process that has none yet):
// Accept returns the dialer's, and the caller checks it against what the
// dialer says next (its hello).
//
// With TLS, the TLS 1.3 handshake (both sides present certificates signed
// by the job's CA) comes first and the secret's handshake, if any, runs
// inside it.
//
// A nil *Config is a job without authentication: Accept and Dial return
// the connection as it is.
package auth

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"time"
)

// Magic opens the dialer's hello and the acceptor's answer.
const Magic = "GBA1"

// Sizes of the handshake's messages.
const (
	NonceSize  = 32
	MACSize    = sha256.Size
	HelloSize  = len(Magic) + 4 + NonceSize + 8
	AnswerSize = len(Magic) + 4 + NonceSize + MACSize
	ProofSize  = MACSize
)

// Unauthenticated is what every process of a job without a secret says
// once at start.
const Unauthenticated = "this job is unauthenticated: any process that can reach its ports can take part in it " +
	"(set GOBPS_SECRET or GOBPS_SECRET_FILE in every process; bpsrun --local makes one; see docs/security.md)"

// DefaultTimeout bounds a handshake when Config.Timeout is zero.
const DefaultTimeout = 5 * time.Second

// ErrRefused is wrapped by every error that means the peer failed the
// handshake (as opposed to a broken connection).
var ErrRefused = errors.New("auth: refused")

// Config says how a job's connections authenticate.
type Config struct {
	// Secret is the job's shared secret; empty: no challenge-response.
	Secret []byte
	// TLS, if set, wraps every connection in mutual TLS 1.3 first (see
	// LoadTLS). Callers pass a Config without it for connections that
	// never leave the host (WithoutTLS).
	TLS *TLS
	// Timeout bounds the whole handshake; 0 means DefaultTimeout.
	Timeout time.Duration
}

// TLS is a loaded certificate, key and CA pool for mutual TLS.
type TLS struct {
	server, client *tls.Config
}

// Enabled reports whether c does anything.
func (c *Config) Enabled() bool { return c != nil && (len(c.Secret) > 0 || c.TLS != nil) }

// WithoutTLS returns c without TLS (nil if nothing is left), for
// connections that stay on the host, such as local aggregation's unix
// sockets.
func (c *Config) WithoutTLS() *Config {
	if c == nil || len(c.Secret) == 0 {
		return nil
	}
	d := *c
	d.TLS = nil
	return &d
}

func (c *Config) timeout() time.Duration {
	if c.Timeout > 0 {
		return c.Timeout
	}
	return DefaultTimeout
}

// key derives the MAC key from the secret, so that the secret itself is
// never used as a key for anything else.
func (c *Config) key() []byte {
	m := hmac.New(sha256.New, c.Secret)
	m.Write([]byte("gobps job key v1"))
	return m.Sum(nil)
}

func mac(key []byte, label string, nd, na []byte, dialer, acceptor uint32) []byte {
	m := hmac.New(sha256.New, key)
	m.Write([]byte("gobps auth v1 " + label))
	m.Write(nd)
	m.Write(na)
	var ids [8]byte
	binary.BigEndian.PutUint32(ids[0:], dialer)
	binary.BigEndian.PutUint32(ids[4:], acceptor)
	m.Write(ids[:])
	return m.Sum(nil)
}

func refused(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrRefused, fmt.Sprintf(format, args...))
}

// Accept runs the accepting side's handshake on conn, as the process with
// id self, within the timeout. It returns the connection to use from now
// on (the TLS connection, with TLS) and the id the dialer claimed (0
// without a secret). On error the caller closes conn; nothing read from
// it may be used.
func (c *Config) Accept(conn net.Conn, self uint32) (net.Conn, uint32, error) {
	return c.handshake(conn, self, false)
}

// handshake is Accept's (dialer false) and Dial's: TLS first, when
// configured, then the secret's challenge and response over it, all
// within the timeout.
func (c *Config) handshake(conn net.Conn, self uint32, dialer bool) (net.Conn, uint32, error) {
	if !c.Enabled() {
		return conn, 0, nil
	}
	conn.SetDeadline(time.Now().Add(c.timeout()))
	if c.TLS != nil {
		var tc *tls.Conn
		if dialer {
			tc = tls.Client(conn, c.TLS.client)
		} else {
			tc = tls.Server(conn, c.TLS.server)
		}
		if err := tc.Handshake(); err != nil {
			return nil, 0, fmt.Errorf("%w: TLS: %w", ErrRefused, err)
		}
		conn = tc
	}
	var peer uint32
	if len(c.Secret) > 0 {
		var err error
		if dialer {
			peer, err = c.dial(conn, self)
		} else {
			peer, err = c.accept(conn, self)
		}
		if err != nil {
			return nil, 0, err
		}
	}
	conn.SetDeadline(time.Time{})
	return conn, peer, nil
}

func (c *Config) accept(conn net.Conn, self uint32) (uint32, error) {
	var hello [HelloSize]byte
	// The magic first: a peer speaking anything else (a plain gobps
	// hello, no secret) is refused at once, not at the deadline.
	if _, err := io.ReadFull(conn, hello[:len(Magic)]); err != nil {
		return 0, readErr("hello", err)
	}
	if string(hello[:len(Magic)]) != Magic {
		return 0, refused("the peer did not start the job's handshake (no secret set, or not a gobps process)")
	}
	if _, err := io.ReadFull(conn, hello[len(Magic):]); err != nil {
		return 0, readErr("hello", err)
	}
	peer, nd, err := DecodeHello(hello[:])
	if err != nil {
		return 0, err
	}
	na := make([]byte, NonceSize)
	rand.Read(na)
	key := c.key()
	var answer [AnswerSize]byte
	copy(answer[:], Magic)
	binary.BigEndian.PutUint32(answer[len(Magic):], self)
	copy(answer[len(Magic)+4:], na)
	copy(answer[len(Magic)+4+NonceSize:], mac(key, "acceptor", nd, na, peer, self))
	if _, err := conn.Write(answer[:]); err != nil {
		return 0, fmt.Errorf("auth: send answer: %w", err)
	}
	var proof [ProofSize]byte
	if _, err := io.ReadFull(conn, proof[:]); err != nil {
		return 0, readErr("proof", err)
	}
	if !hmac.Equal(proof[:], mac(key, "dialer", nd, na, peer, self)) {
		return 0, refused("wrong proof: the peer does not hold the job's secret")
	}
	if _, err := conn.Write([]byte{1}); err != nil {
		return 0, fmt.Errorf("auth: send acceptance: %w", err)
	}
	return peer, nil
}

// Dial runs the dialing side's handshake on conn, as the process with id
// self, within the timeout. It returns the connection to use from now on and the acceptor's id (0
// without a secret).
func (c *Config) Dial(conn net.Conn, self uint32) (net.Conn, uint32, error) {
	return c.handshake(conn, self, true)
}

func (c *Config) dial(conn net.Conn, self uint32) (uint32, error) {
	nd := make([]byte, NonceSize)
	rand.Read(nd)
	if _, err := conn.Write(EncodeHello(self, nd)); err != nil {
		return 0, fmt.Errorf("auth: send hello: %w", err)
	}
	var answer [AnswerSize]byte
	if _, err := io.ReadFull(conn, answer[:]); err != nil {
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			return 0, refused("the peer hung up on the handshake (does it have the job's secret?)")
		}
		return 0, readErr("answer", err)
	}
	peer, na, m, err := DecodeAnswer(answer[:])
	if err != nil {
		return 0, err
	}
	key := c.key()
	if !hmac.Equal(m, mac(key, "acceptor", nd, na, self, peer)) {
		return 0, refused("wrong answer: the peer does not hold the job's secret")
	}
	if _, err := conn.Write(mac(key, "dialer", nd, na, self, peer)); err != nil {
		return 0, fmt.Errorf("auth: send proof: %w", err)
	}
	var ok [1]byte
	if _, err := io.ReadFull(conn, ok[:]); err != nil || ok[0] != 1 {
		return 0, refused("the peer refused our proof")
	}
	return peer, nil
}

func readErr(what string, err error) error {
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return fmt.Errorf("%w: no %s within the handshake's time (%w)", ErrRefused, what, err)
	}
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		return refused("the peer hung up before its %s", what)
	}
	return fmt.Errorf("auth: read %s: %w", what, err)
}

// EncodeHello is the dialer's first message.
func EncodeHello(id uint32, nonce []byte) []byte {
	b := make([]byte, HelloSize)
	copy(b, Magic)
	binary.BigEndian.PutUint32(b[len(Magic):], id)
	copy(b[len(Magic)+4:], nonce[:NonceSize])
	return b
}

// DecodeHello parses the dialer's first message.
func DecodeHello(b []byte) (id uint32, nonce []byte, err error) {
	if len(b) != HelloSize || string(b[:len(Magic)]) != Magic {
		return 0, nil, refused("malformed hello")
	}
	for _, x := range b[len(Magic)+4+NonceSize:] {
		if x != 0 {
			return 0, nil, refused("malformed hello (reserved bytes set)")
		}
	}
	return binary.BigEndian.Uint32(b[len(Magic):]), b[len(Magic)+4 : len(Magic)+4+NonceSize], nil
}

// DecodeAnswer parses the acceptor's answer.
func DecodeAnswer(b []byte) (id uint32, nonce, m []byte, err error) {
	if len(b) != AnswerSize || string(b[:len(Magic)]) != Magic {
		return 0, nil, nil, refused("malformed answer (is the peer a gobps process with a secret?)")
	}
	o := len(Magic)
	return binary.BigEndian.Uint32(b[o:]), b[o+4 : o+4+NonceSize], b[o+4+NonceSize:], nil
}
