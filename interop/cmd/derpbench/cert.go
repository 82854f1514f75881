package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"os"
	"path/filepath"
	"time"
)

// benchHostname is the name both servers serve TLS for in the TLS
// scenarios; clients send it as SNI and skip verification.
const benchHostname = "derp.bench.test"

// benchCertificate writes a self-signed certificate and key for host in
// the layout -certmode=manual reads (<dir>/<host>.crt and .key), which
// both servers accept, and returns the directory.
func benchCertificate(host string) (string, error) {
	dir, err := os.MkdirTemp("", "derpbench-certs")
	if err != nil {
		return "", err
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return "", err
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: host},
		DNSNames:     []string{host},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return "", err
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return "", err
	}
	crt := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	k := pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER})
	if err := os.WriteFile(filepath.Join(dir, host+".crt"), crt, 0o600); err != nil {
		return "", err
	}
	if err := os.WriteFile(filepath.Join(dir, host+".key"), k, 0o600); err != nil {
		return "", err
	}
	return dir, nil
}
