package auth

import (
	"crypto/aes"
	"crypto/cipher"
	"io"
	"net"
	"testing"
	"time"
)

// BenchmarkHandshake: one connection's handshake, both sides, on loopback
// TCP (the connection's own set-up included, as a job pays it): with the
// secret alone, and with TLS 1.3 and the secret.
func BenchmarkHandshake(b *testing.B) {
	cert, key, ca, err := WritePKI(b.TempDir(), time.Hour)
	if err != nil {
		b.Fatal(err)
	}
	tl, err := LoadTLS(cert, key, ca)
	if err != nil {
		b.Fatal(err)
	}
	for _, c := range []struct {
		name string
		cfg  *Config
	}{
		{"none", nil},
		{"secret", &Config{Secret: []byte("a benchmark's secret")}},
		{"tls", &Config{Secret: []byte("a benchmark's secret"), TLS: tl}},
	} {
		b.Run(c.name, func(b *testing.B) {
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				b.Fatal(err)
			}
			defer ln.Close()
			go func() {
				for {
					nc, err := ln.Accept()
					if err != nil {
						return
					}
					go func() {
						ac, _, err := c.cfg.Accept(nc, 1)
						if err == nil {
							ac.Write([]byte{0})
						}
						nc.Close()
					}()
				}
			}()
			var one [1]byte
			for b.Loop() {
				nc, err := net.Dial("tcp", ln.Addr().String())
				if err != nil {
					b.Fatal(err)
				}
				ac, _, err := c.cfg.Dial(nc, 2)
				if err != nil {
					b.Fatal(err)
				}
				if _, err := io.ReadFull(ac, one[:]); err != nil {
					b.Fatal(err)
				}
				nc.Close()
			}
		})
	}
}

// BenchmarkAESGCM: sealing 16 KiB records (TLS's largest) with AES-128-GCM
// on one core, the work TLS adds per byte per direction: a yardstick for
// the TLS figures of bpsbench pushpull -auth tls.
func BenchmarkAESGCM(b *testing.B) {
	blk, _ := aes.NewCipher(make([]byte, 16))
	g, _ := cipher.NewGCM(blk)
	nonce := make([]byte, g.NonceSize())
	rec := make([]byte, 16<<10)
	out := make([]byte, 0, len(rec)+g.Overhead())
	b.SetBytes(int64(len(rec)))
	for b.Loop() {
		out = g.Seal(out[:0], nonce, rec, nil)
	}
}
