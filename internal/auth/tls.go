package auth

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
)

// LoadTLS reads a PEM certificate and key (this process's) and a PEM CA
// bundle (the job's) for mutual TLS 1.3: each side presents its
// certificate, and each accepts only a peer certificate that chains to the
// CA and is valid now. Host names are not checked (processes reach each
// other by address, and every holder of a certificate the CA signed is a
// member of the job): the CA is what a job trusts, so give each job its
// own.
func LoadTLS(certFile, keyFile, caFile string) (*TLS, error) {
	if certFile == "" || keyFile == "" || caFile == "" {
		return nil, errors.New("auth: TLS needs a certificate, a key and a CA (GOBPS_TLS_CERT, GOBPS_TLS_KEY, GOBPS_TLS_CA)")
	}
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return nil, fmt.Errorf("auth: TLS certificate %s and key %s: %w", certFile, keyFile, err)
	}
	pem, err := os.ReadFile(caFile)
	if err != nil {
		return nil, fmt.Errorf("auth: TLS CA: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("auth: TLS CA %s holds no PEM certificate", caFile)
	}
	return NewTLS(cert, pool), nil
}

// NewTLS is LoadTLS on certificates in memory.
func NewTLS(cert tls.Certificate, ca *x509.CertPool) *TLS {
	verify := func(cs tls.ConnectionState) error {
		if len(cs.PeerCertificates) == 0 {
			return errors.New("the peer presented no certificate")
		}
		opts := x509.VerifyOptions{Roots: ca, Intermediates: x509.NewCertPool(),
			KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}
		for _, c := range cs.PeerCertificates[1:] {
			opts.Intermediates.AddCert(c)
		}
		if _, err := cs.PeerCertificates[0].Verify(opts); err != nil {
			return fmt.Errorf("the peer's certificate (%s): %w", cs.PeerCertificates[0].Subject, err)
		}
		return nil
	}
	base := tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{cert},
		// The chain is checked by verify, without a host name.
		InsecureSkipVerify: true,
		VerifyConnection:   verify,
	}
	server, client := base.Clone(), base.Clone()
	server.ClientAuth = tls.RequireAnyClientCert
	return &TLS{server: server, client: client}
}
