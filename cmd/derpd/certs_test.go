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

	"github.com/derpd/derpd/actors"
	"github.com/derpd/derpd/wire"
	"github.com/rs/zerolog"
	"golang.org/x/crypto/acme"
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
		if _, err := newCertSource(o, zerolog.Nop()); err == nil || !strings.Contains(err.Error(), "IP address") || !strings.Contains(err.Error(), "-acme-ip-certs") {
			t.Errorf("-certmode=%s with an IP -hostname: %v, want a refusal that says why and what to use", mode, err)
		}
	}
}

// certSourceFor builds the certificate source of a command line.
func certSourceFor(t *testing.T, args ...string) certSource {
	t.Helper()
	o, err := parseFlags(append([]string{"-certdir", t.TempDir()}, args...))
	if err != nil {
		t.Fatal(err)
	}
	if err := o.checkSupported(); err != nil {
		t.Fatal(err)
	}
	src, err := newCertSource(o, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	return src
}

func TestACMEDirectoryFlag(t *testing.T) {
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"-hostname", "derp.example.com"}, "https://acme-v02.api.letsencrypt.org/directory"},
		{[]string{"-hostname", "derp.example.com", "-acme-directory-url", "https://ca.internal:9000/acme/derp/directory"}, "https://ca.internal:9000/acme/derp/directory"},
		{[]string{"-hostname", "derp.example.com", "-certmode", "gcp", "-acme-email", "a@example.com", "-acme-eab-kid", "k", "-acme-eab-key", "aGVsbG8"}, gcpDirectory},
		{[]string{"-hostname", "derp.example.com", "-certmode", "gcp", "-acme-email", "a@example.com", "-acme-eab-kid", "k", "-acme-eab-key", "aGVsbG8", "-acme-directory-url", "https://ca.internal/dir"}, "https://ca.internal/dir"},
	} {
		a := certSourceFor(t, c.args...).(*acmeCerts)
		if got := a.m.Client.DirectoryURL; got != c.want {
			t.Errorf("%q: directory %s, want %s", c.args, got, c.want)
		}
		// Zero keeps autocert's rule, a third of the lifetime; a fixed
		// value beyond a certificate's lifetime would renew it in a loop.
		if a.m.RenewBefore != 0 {
			t.Errorf("%q: RenewBefore %v, want autocert's lifetime-based default", c.args, a.m.RenewBefore)
		}
	}
	for _, c := range []struct {
		args []string
		flag string
	}{
		{[]string{"-certmode", "manual", "-acme-directory-url", "https://ca.internal/dir"}, "-acme-directory-url"},
		{[]string{"-acme-directory-url", "http://ca.internal/dir"}, "-acme-directory-url"},
		{[]string{"-acme-directory-url", "ca.internal/dir"}, "-acme-directory-url"},
		{[]string{"-certmode", "manual", "-acme-ip-certs"}, "-acme-ip-certs"},
		{[]string{"-a", ":8443", "-acme-ip-certs"}, "-acme-ip-certs"},
		{[]string{"-http-port", "-1", "-acme-ip-certs"}, "-acme-ip-certs"},
	} {
		expectRefused(t, c.args, c.flag)
	}
}

func TestACMEIPCertsSources(t *testing.T) {
	// An IP -hostname: an IP-only server.
	ips := certSourceFor(t, "-hostname", "192.0.2.7", "-acme-ip-certs").(*ipCerts)
	if ips.names != nil || ips.NextProtos() != nil {
		t.Fatal("an IP-only server has a hostname manager")
	}
	if _, err := os.Stat(filepath.Join(ips.dir, ipAccountKeyFile)); err != nil {
		t.Fatalf("account key: %v", err)
	}
	// A DNS -hostname: both.
	both := certSourceFor(t, "-hostname", "derp.example.com", "-acme-ip-certs", "-acme-directory-url", "https://ca.internal/dir").(*ipCerts)
	if both.names == nil || both.names.m.Client.DirectoryURL != "https://ca.internal/dir" || both.client.DirectoryURL != "https://ca.internal/dir" {
		t.Fatal("a DNS hostname with -acme-ip-certs: want both managers on the flag's directory")
	}
	// The account key survives a restart.
	again, err := newIPCerts(ips.dir, "", "https://ca.internal/dir", nil, actors.RealClock, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	if !again.client.Key.(*ecdsa.PrivateKey).Equal(ips.client.Key) {
		t.Fatal("a restart made a new ACME account key")
	}
}

// TestACMECertsNeverServeExpired puts a certificate in autocert's cache
// the way autocert stores one, then serves it before and after expiry.
func TestACMECertsNeverServeExpired(t *testing.T) {
	dir := t.TempDir()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(0x5eed), Subject: pkix.Name{CommonName: "derp.example.com"},
		DNSNames: []string{"derp.example.com"}, NotBefore: now.Add(-time.Hour), NotAfter: now.Add(time.Hour),
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kd, _ := x509.MarshalECPrivateKey(key)
	cached := append(pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kd}), pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})...)
	if err := os.WriteFile(filepath.Join(dir, "derp.example.com"), cached, 0o600); err != nil {
		t.Fatal(err)
	}
	var logs syncBuffer
	a, err := newACMECerts(&options{certMode: "letsencrypt", hostname: "derp.example.com", certDir: dir, acmeDirectoryURL: "https://ca.invalid/dir"}, zerolog.New(&logs))
	if err != nil {
		t.Fatal(err)
	}
	clock := actors.NewFakeClock(now)
	a.clock = clock
	hi := &tls.ClientHelloInfo{ServerName: "derp.example.com", CipherSuites: []uint16{tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256}}
	for range 2 {
		if c, err := a.GetCertificate(hi); err != nil || c.Leaf.SerialNumber.Int64() != 0x5eed {
			t.Fatalf("before expiry: %v", err)
		}
	}
	if n := strings.Count(logs.String(), "serving an ACME certificate"); n != 1 {
		t.Fatalf("the certificate served was logged %d times, want once:\n%s", n, logs.String())
	}
	clock.Advance(time.Hour + time.Second)
	if c, err := a.GetCertificate(hi); err == nil {
		t.Fatalf("served serial %v after its expiry", c.Leaf.SerialNumber)
	}
	if !strings.Contains(logs.String(), "has expired") {
		t.Fatalf("the refusal was not logged:\n%s", logs.String())
	}
	// A CA's tls-alpn-01 validation gets autocert's answer, logged (here
	// autocert has no token for the name, so it is refused).
	if _, err := a.GetCertificate(&tls.ClientHelloInfo{ServerName: "derp.example.com", SupportedProtos: []string{acme.ALPNProto}}); err == nil {
		t.Fatal("a tls-alpn-01 handshake with no challenge pending was answered")
	}
}

func TestACMEHostPolicy(t *testing.T) {
	p := acmeHostPolicy("derp.example.com")
	if p(nil, "derp.example.com") != nil || p(nil, "evil.example.com") == nil || p(nil, "evil.example.com:80") == nil {
		t.Fatal("policy for derp.example.com")
	}
	// An HTTP-01 request's Host header, from a CA validating on port 8080.
	if p(nil, "derp.example.com:8080") != nil {
		t.Fatal("the Host header of an HTTP-01 request on port 8080 refused")
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
