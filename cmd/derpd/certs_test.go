package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/derpd/derpd/wire"
	"github.com/rs/zerolog"
)

func TestMetaCertCarriesKeyAndVersion(t *testing.T) {
	pub := wire.GenerateNodePrivate().Public()
	der, err := metaCert(pub)
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	if c.Subject.CommonName != "derpkey"+pub.UntypedHexString() {
		t.Fatalf("CN %q", c.Subject.CommonName)
	}
	if c.SerialNumber.Int64() != 2 {
		t.Fatalf("serial %v, want the protocol version 2", c.SerialNumber)
	}
	if !c.BasicConstraintsValid || c.IsCA {
		t.Fatal("want basic constraints present with CA=false")
	}
	if d := c.NotAfter.Sub(c.NotBefore); d < 59*24*time.Hour || d > 61*24*time.Hour {
		t.Fatalf("validity %v, want 60 days around now", d)
	}
}

// writeCert writes a certificate for names signed by a throwaway CA.
func writeCert(t *testing.T, dir, base string, names ...string) {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()),
		Subject:      pkix.Name{CommonName: names[0]},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		DNSNames:     names,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kd, _ := x509.MarshalECPrivateKey(key)
	os.WriteFile(filepath.Join(dir, base+".key"), pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kd}), 0o600)
	os.WriteFile(filepath.Join(dir, base+".crt"), pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644)
}

func TestManualCertsCheckNameAndReload(t *testing.T) {
	dir := t.TempDir()
	writeCert(t, dir, "derp.example.com", "other.example.com")
	if _, err := newManualCerts(dir, "derp.example.com", zerolog.Nop()); err == nil {
		t.Fatal("certificate for another name accepted")
	}
	writeCert(t, dir, "derp.example.com", "derp.example.com")
	m, err := newManualCerts(dir, "derp.example.com", zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	c1, err := m.GetCertificate(&tls.ClientHelloInfo{ServerName: "derp.example.com"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := m.GetCertificate(&tls.ClientHelloInfo{ServerName: "scanner.example"}); err == nil {
		t.Fatal("handshake for another SNI accepted")
	}
	// Renewed on disk: picked up by Reload (SIGHUP) without a restart.
	writeCert(t, dir, "derp.example.com", "derp.example.com")
	future := time.Now().Add(time.Minute)
	os.Chtimes(filepath.Join(dir, "derp.example.com.crt"), future, future)
	if err := m.Reload(); err != nil {
		t.Fatal(err)
	}
	c2, _ := m.GetCertificate(&tls.ClientHelloInfo{ServerName: "derp.example.com"})
	if string(c1.Certificate[0]) == string(c2.Certificate[0]) {
		t.Fatal("reload kept the old certificate")
	}
}

func TestSelfSignedIPCertificate(t *testing.T) {
	dir := t.TempDir()
	m, err := newManualCerts(dir, "192.0.2.7", zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	c, err := m.GetCertificate(&tls.ClientHelloInfo{}) // no SNI for an IP
	if err != nil {
		t.Fatal(err)
	}
	leaf, _ := x509.ParseCertificate(c.Certificate[0])
	if len(leaf.IPAddresses) != 1 || !leaf.IPAddresses[0].Equal(net.ParseIP("192.0.2.7")) {
		t.Fatalf("IP SANs %v", leaf.IPAddresses)
	}
	if _, ok := leaf.PublicKey.(*ecdsa.PublicKey); !ok {
		t.Fatalf("key type %T, want ECDSA", leaf.PublicKey)
	}
	if d := leaf.NotAfter.Sub(time.Now()); d < 360*24*time.Hour {
		t.Fatalf("valid for %v, want a year", d)
	}
	// A restart reuses the same certificate: the pinned hash stays valid.
	m2, err := newManualCerts(dir, "192.0.2.7", zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	c2, _ := m2.GetCertificate(&tls.ClientHelloInfo{})
	if string(c2.Certificate[0]) != string(c.Certificate[0]) {
		t.Fatal("restart generated a new certificate")
	}
}

func TestTLSConfigAppendsMetaCertAndRefusesHTTP2(t *testing.T) {
	dir := t.TempDir()
	writeCert(t, dir, "derp.example.com", "derp.example.com")
	m, err := newManualCerts(dir, "derp.example.com", zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	meta := []byte("meta")
	var versions tlsVersionCounter
	cfg := tlsConfig(m, meta, &versions)
	if cfg.MinVersion != tls.VersionTLS12 {
		t.Fatal("TLS 1.2 must be the minimum")
	}
	for _, p := range cfg.NextProtos {
		if p == "h2" {
			t.Fatal("h2 offered on the DERP listener")
		}
	}
	c, err := cfg.GetCertificate(&tls.ClientHelloInfo{ServerName: "derp.example.com"})
	if err != nil {
		t.Fatal(err)
	}
	if string(c.Certificate[len(c.Certificate)-1]) != "meta" || len(c.Certificate) != 2 {
		t.Fatalf("chain of %d, last %q", len(c.Certificate), c.Certificate[len(c.Certificate)-1])
	}
	// The source's own certificate is not modified.
	orig, _ := m.GetCertificate(&tls.ClientHelloInfo{ServerName: "derp.example.com"})
	if len(orig.Certificate) != 1 {
		t.Fatal("meta certificate leaked into the source's certificate")
	}
	acmeHello := &tls.ClientHelloInfo{ServerName: "derp.example.com", SupportedProtos: []string{"acme-tls/1"}}
	if c, _ := cfg.GetCertificate(acmeHello); len(c.Certificate) != 1 {
		t.Fatal("meta certificate added to an ACME challenge answer")
	}
}

func TestACMERefusesAnIPHostname(t *testing.T) {
	for _, mode := range []string{"letsencrypt", "gcp"} {
		o := &options{certMode: mode, hostname: "192.0.2.7", certDir: t.TempDir()}
		if _, err := newCertSource(o, zerolog.Nop()); err == nil || !strings.Contains(err.Error(), "IP address") {
			t.Errorf("-certmode=%s with an IP -hostname: %v, want a refusal that says why", mode, err)
		}
	}
}

func TestACMEHostPolicy(t *testing.T) {
	p := acmeHostPolicy("derp.example.com")
	if p(nil, "derp.example.com") != nil || p(nil, "evil.example.com") == nil {
		t.Fatal("policy for derp.example.com")
	}
	p = acmeHostPolicy("derp.tailscale.com")
	if p(nil, "derp7.tailscale.com") != nil || p(nil, "x.tailscale.com") == nil {
		t.Fatal("policy for derp.tailscale.com")
	}
}

func TestEABKeyEncodings(t *testing.T) {
	for _, s := range []string{"aGVsbG8_d29ybGQ", "aGVsbG8/d29ybGQ=", "aGVsbG8_d29ybGQ="} {
		if _, err := decodeEABKey(s); err != nil {
			t.Errorf("%q: %v", s, err)
		}
	}
	if _, err := decodeEABKey("not base64 !!"); err == nil {
		t.Error("garbage accepted")
	}
	_ = strings.TrimSpace
}
