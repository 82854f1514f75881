package main

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/derpd/derpd/actors"
	"github.com/rs/zerolog"
	"golang.org/x/crypto/acme"
)

func TestRenewalTimeIsAThirdOfTheLifetimeCappedAt30Days(t *testing.T) {
	start := time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC)
	day := 24 * time.Hour
	for _, c := range []struct {
		life, renewAfter time.Duration
	}{
		{90 * day, 60 * day},                 // Let's Encrypt's classic certificates: 30 days early
		{6 * day, 4 * day},                   // its shortlived ones: 2 days early
		{45 * day, 30 * day},                 // the 45-day ones to come: 15 days early
		{30 * time.Second, 20 * time.Second}, // a test CA's: renewed, not looped
		{365 * day, 335 * day},               // a private CA's year: capped at 30 days early
	} {
		leaf := &x509.Certificate{NotBefore: start, NotAfter: start.Add(c.life)}
		if got := renewalTime(leaf).Sub(start); got != c.renewAfter {
			t.Errorf("lifetime %v: renewed after %v, want %v", c.life, got, c.renewAfter)
		}
	}
}

func TestPickIP(t *testing.T) {
	tcp := func(s string) net.Addr { return net.TCPAddrFromAddrPort(netip.MustParseAddrPort(s)) }
	for _, c := range []struct {
		sni   string
		local net.Addr
		want  string // "" when refused
		name  bool   // refused as a DNS name, for the hostname's manager
	}{
		{"", tcp("192.0.2.7:443"), "192.0.2.7", false},
		{"", tcp("[::ffff:192.0.2.7]:443"), "192.0.2.7", false}, // a dual-stack socket's IPv4
		{"", tcp("[2001:db8::7]:443"), "2001:db8::7", false},
		{"", tcp("[fe80::7%eth0]:443"), "fe80::7", false},
		{"192.0.2.7", tcp("192.0.2.7:443"), "192.0.2.7", false},
		{"2001:db8::7", tcp("[2001:db8::7]:443"), "2001:db8::7", false},
		{"192.0.2.8", tcp("192.0.2.7:443"), "", false}, // not our address: never ordered
		{"derp.example.com", tcp("192.0.2.7:443"), "", true},
		{"", nil, "", false},
		{"", &net.UnixAddr{Name: "/run/x", Net: "unix"}, "", false},
	} {
		got, err := pickIP(c.sni, c.local)
		switch {
		case c.want == "" && err == nil:
			t.Errorf("SNI %q on %v: picked %v, want a refusal", c.sni, c.local, got)
		case c.want != "" && (err != nil || got.String() != c.want):
			t.Errorf("SNI %q on %v: %v, %v, want %s", c.sni, c.local, got, err, c.want)
		case errors.Is(err, errNameSNI) != c.name:
			t.Errorf("SNI %q on %v: %v, DNS name %v", c.sni, c.local, err, c.name)
		}
	}
}

func TestPickProfile(t *testing.T) {
	if p := pickProfile(nil); p != "" {
		t.Errorf("a CA without profiles: %q, want none", p)
	}
	if p := pickProfile(map[acme.ProfileName]string{"classic": "", "shortlived": "", "tlsserver": ""}); p != shortlivedProfile {
		t.Errorf("Let's Encrypt's profiles: %q, want shortlived", p)
	}
	if p := pickProfile(map[acme.ProfileName]string{"default": ""}); p != "" {
		t.Errorf("a CA without shortlived: %q, want none (its default)", p)
	}
}

// ipCertRig is an ipCerts on a fake clock whose ACME order is a local CA
// that signs for certLife and can be made to fail.
type ipCertRig struct {
	t     *testing.T
	m     *ipCerts
	clock *actors.FakeClock
	dir   string
	logs  *syncBuffer

	caKey  *ecdsa.PrivateKey
	caCert *x509.Certificate

	mu       sync.Mutex
	orders   int
	fail     error
	certLife time.Duration
}

// syncBuffer is a log sink written by the issuance goroutines and read by
// the test.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

var rigStart = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

func newIPCertRig(t *testing.T, dir string, clock *actors.FakeClock, names *acmeCerts) *ipCertRig {
	t.Helper()
	r := &ipCertRig{t: t, clock: clock, dir: dir, logs: &syncBuffer{}, certLife: 6 * 24 * time.Hour}
	r.caKey, _ = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test ACME CA"},
		NotBefore: rigStart.Add(-time.Hour), NotAfter: rigStart.AddDate(1, 0, 0),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &r.caKey.PublicKey, r.caKey)
	if err != nil {
		t.Fatal(err)
	}
	r.caCert, _ = x509.ParseCertificate(der)
	r.m, err = newIPCerts(dir, "", "https://ca.invalid/directory", names, clock, zerolog.New(r.logs))
	if err != nil {
		t.Fatal(err)
	}
	r.m.obtain = r.order
	return r
}

// order stands in for the CA: a certificate for ip from now for certLife.
func (r *ipCertRig) order(_ context.Context, ip netip.Addr) (*tls.Certificate, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.orders++
	if r.fail != nil {
		return nil, r.fail
	}
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	now := r.clock.Now()
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(int64(100 + r.orders)),
		NotBefore:    now, NotAfter: now.Add(r.certLife),
		IPAddresses: []net.IP{ip.AsSlice()},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, r.caCert, &key.PublicKey, r.caKey)
	if err != nil {
		return nil, err
	}
	leaf, _ := x509.ParseCertificate(der)
	// Room to spare, as a chain parsed from a CA's answer may have.
	chain := append(make([][]byte, 0, 4), der, r.caCert.Raw)
	return &tls.Certificate{Certificate: chain, PrivateKey: key, Leaf: leaf}, nil
}

func (r *ipCertRig) orderCount() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.orders
}

func (r *ipCertRig) setFail(err error) {
	r.mu.Lock()
	r.fail = err
	r.mu.Unlock()
}

// settle waits for an issuance that a handshake or a timer started.
func (r *ipCertRig) settle(ip netip.Addr) {
	r.m.mu.Lock()
	var flight chan struct{}
	if e := r.m.entries[ip]; e != nil {
		flight = e.flight
	}
	r.m.mu.Unlock()
	if flight != nil {
		<-flight
	}
}

// step moves the clock to the next timer, runs it, and waits for the
// issuance it started.
func (r *ipCertRig) step(ip netip.Addr) {
	r.t.Helper()
	d, ok := r.clock.NextIn()
	if !ok {
		r.t.Fatal("no renewal is scheduled")
	}
	r.clock.Advance(d)
	r.settle(ip)
}

// hello is a handshake arriving on local with the given SNI.
func hello(local, sni string) *tls.ClientHelloInfo {
	return &tls.ClientHelloInfo{ServerName: sni, Conn: localConn{addr: net.TCPAddrFromAddrPort(netip.MustParseAddrPort(local))}}
}

type localConn struct {
	net.Conn
	addr net.Addr
}

func (c localConn) LocalAddr() net.Addr { return c.addr }
func (c localConn) RemoteAddr() net.Addr {
	return &net.TCPAddr{IP: net.IPv4(198, 51, 100, 1), Port: 40000}
}

// serve is a handshake on local with the given SNI; it returns the
// serial served.
func (r *ipCertRig) serve(local, sni string) int64 {
	r.t.Helper()
	c, err := r.m.GetCertificate(hello(local, sni))
	if err != nil {
		r.t.Fatal(err)
	}
	return c.Leaf.SerialNumber.Int64()
}

func TestIPCertsIssueOnFirstUseCacheAndRenewOnTheClock(t *testing.T) {
	clock := actors.NewFakeClock(rigStart)
	dir := t.TempDir()
	r := newIPCertRig(t, dir, clock, nil)
	ip := netip.MustParseAddr("192.0.2.7")

	if s := r.serve("192.0.2.7:443", ""); s != 101 || r.orderCount() != 1 {
		t.Fatalf("first handshake: serial %d after %d orders, want 101 after 1", s, r.orderCount())
	}
	// Cached under upstream derper's names, the key private.
	for _, name := range []string{"192.0.2.7.crt", "192.0.2.7.key", ipAccountKeyFile} {
		if _, err := os.Stat(filepath.Join(dir, name)); err != nil {
			t.Fatalf("cache: %v", err)
		}
	}
	if fi, _ := os.Stat(filepath.Join(dir, "192.0.2.7.key")); fi.Mode().Perm() != 0o600 {
		t.Fatalf("key file mode %v", fi.Mode().Perm())
	}
	if !strings.Contains(r.logs.String(), `"derp_map_node":{"HostName":"192.0.2.7","IPv4":"192.0.2.7","Name":"900a","RegionID":900}`) {
		t.Fatalf("no DERP map node in the log:\n%s", r.logs)
	}
	// Later handshakes reuse it, an IP SNI naming the address too.
	if s := r.serve("192.0.2.7:443", "192.0.2.7"); s != 101 || r.orderCount() != 1 {
		t.Fatalf("second handshake: serial %d after %d orders", s, r.orderCount())
	}

	// The renewal is due when a third of the six days remains.
	if d, ok := clock.NextIn(); !ok || d != 4*24*time.Hour {
		t.Fatalf("renewal in %v (%v), want 4 days", d, ok)
	}
	clock.Advance(4*24*time.Hour - time.Second)
	if r.orderCount() != 1 {
		t.Fatal("renewed early")
	}
	clock.Advance(time.Second)
	r.settle(ip)
	if s := r.serve("192.0.2.7:443", ""); s != 102 || r.orderCount() != 2 {
		t.Fatalf("after the renewal: serial %d after %d orders, want 102 after 2", s, r.orderCount())
	}
	if d, _ := clock.NextIn(); d != 4*24*time.Hour {
		t.Fatalf("next renewal in %v, want 4 days after this one", d)
	}

	// A restart serves the cached certificate and orders nothing...
	// (Each restart has a clock of its own, so that no earlier rig's
	// renewal timer fires in it.)
	r2 := newIPCertRig(t, dir, actors.NewFakeClock(clock.Now()), nil)
	if s := r2.serve("192.0.2.7:443", ""); s != 102 || r2.orderCount() != 0 {
		t.Fatalf("after a restart: serial %d after %d orders, want the cached 102", s, r2.orderCount())
	}
	// ...unless the cached one is already due for renewal.
	r3 := newIPCertRig(t, dir, actors.NewFakeClock(clock.Now().Add(4*24*time.Hour+time.Second)), nil)
	if _, err := r3.m.GetCertificate(hello("192.0.2.7:443", "")); err != nil || r3.orderCount() != 1 {
		t.Fatalf("a restart with a due certificate: %v after %d orders, want a new order", err, r3.orderCount())
	}
}

func TestIPCertsEachAddressItsOwnCertificate(t *testing.T) {
	r := newIPCertRig(t, t.TempDir(), actors.NewFakeClock(rigStart), nil)
	c4, err := r.m.GetCertificate(hello("192.0.2.7:443", ""))
	if err != nil {
		t.Fatal(err)
	}
	c6, err := r.m.GetCertificate(hello("[2001:db8::7]:443", ""))
	if err != nil {
		t.Fatal(err)
	}
	if c4.Leaf.VerifyHostname("192.0.2.7") != nil || c6.Leaf.VerifyHostname("2001:db8::7") != nil || r.orderCount() != 2 {
		t.Fatalf("IPv4 %v, IPv6 %v, %d orders", c4.Leaf.IPAddresses, c6.Leaf.IPAddresses, r.orderCount())
	}
	if _, err := os.Stat(filepath.Join(r.dir, "2001.db8..7.crt")); err != nil {
		t.Fatalf("IPv6 cache file: %v", err)
	}
	// Handshakes append the meta certificate to what they are served;
	// two of them must not write into one shared array.
	again, _ := r.m.GetCertificate(hello("192.0.2.7:443", ""))
	a := append(c4.Certificate, []byte("meta of handshake a"))
	_ = append(again.Certificate, []byte("meta of handshake b"))
	if string(a[2]) != "meta of handshake a" {
		t.Fatalf("one handshake's chain was overwritten by another's: %q", a[2])
	}
}

func TestIPCertsNeverServeAnExpiredCertificate(t *testing.T) {
	clock := actors.NewFakeClock(rigStart)
	r := newIPCertRig(t, t.TempDir(), clock, nil)
	ip := netip.MustParseAddr("192.0.2.7")
	c, err := r.m.GetCertificate(hello("192.0.2.7:443", ""))
	if err != nil {
		t.Fatal(err)
	}
	notAfter := c.Leaf.NotAfter

	// The CA refuses every renewal: the certificate serves on until it
	// expires, retried with a growing backoff...
	r.setFail(errors.New("rateLimited: too many certificates"))
	r.step(ip)
	if r.orderCount() != 2 {
		t.Fatalf("%d orders, want the renewal attempted", r.orderCount())
	}
	var waits []time.Duration
	for {
		if s := r.serve("192.0.2.7:443", ""); s != 101 {
			t.Fatalf("serial %d before expiry", s)
		}
		d, _ := clock.NextIn()
		if !clock.Now().Add(d).Before(notAfter) {
			break
		}
		waits = append(waits, d)
		r.step(ip)
	}
	if len(waits) < 6 || waits[0] != ipRetryFirst || waits[1] != 2*ipRetryFirst || waits[len(waits)-1] != ipRetryMax {
		t.Fatalf("retries after %v, want 1m doubling to %v", waits, ipRetryMax)
	}
	// ...and never after.
	clock.Advance(notAfter.Sub(clock.Now()))
	r.settle(ip)
	for range 3 {
		if c, err := r.m.GetCertificate(hello("192.0.2.7:443", "")); err == nil {
			t.Fatalf("served serial %v after its expiry", c.Leaf.SerialNumber)
		}
		r.step(ip)
	}
	// The CA relents: the next attempt brings a certificate, and the
	// backoff starts over.
	r.setFail(nil)
	r.step(ip)
	if s := r.serve("192.0.2.7:443", ""); s <= 101 {
		t.Fatalf("serial %d once the CA issues again", s)
	}
	if !strings.Contains(r.logs.String(), "rateLimited") {
		t.Fatalf("the CA's refusal was not logged:\n%s", r.logs)
	}
}

func TestIPCertsFailedFirstIssuanceWaitsBeforeTheNext(t *testing.T) {
	clock := actors.NewFakeClock(rigStart)
	r := newIPCertRig(t, t.TempDir(), clock, nil)
	r.setFail(errors.New("connection refused"))
	for range 3 {
		if _, err := r.m.GetCertificate(hello("192.0.2.7:443", "")); err == nil || !strings.Contains(err.Error(), "connection refused") {
			t.Fatalf("handshake: %v, want the CA's error", err)
		}
	}
	if r.orderCount() != 1 {
		t.Fatalf("%d orders from 3 handshakes within the backoff, want 1", r.orderCount())
	}
	clock.Advance(ipRetryFirst)
	r.setFail(nil)
	if _, err := r.m.GetCertificate(hello("192.0.2.7:443", "")); err != nil || r.orderCount() != 2 {
		t.Fatalf("after the backoff: %v after %d orders", err, r.orderCount())
	}
}

func TestIPCertsRefuseOtherAddressesAndNames(t *testing.T) {
	r := newIPCertRig(t, t.TempDir(), actors.NewFakeClock(rigStart), nil)
	if _, err := r.m.GetCertificate(hello("192.0.2.7:443", "192.0.2.8")); err == nil {
		t.Fatal("an IP SNI that is not the local address was served")
	}
	if _, err := r.m.GetCertificate(hello("192.0.2.7:443", "derp.example.com")); err == nil || !strings.Contains(err.Error(), "only IP address") {
		t.Fatalf("a DNS name on an IP-only server: %v", err)
	}
	if r.orderCount() != 0 {
		t.Fatalf("%d orders, want none", r.orderCount())
	}

	// Beside a DNS -hostname, names go to its autocert manager (here
	// refused by its host policy, which is the proof they got there).
	names, err := newACMECerts(&options{certMode: "letsencrypt", hostname: "derp.example.com", certDir: t.TempDir(), acmeDirectoryURL: "https://ca.invalid/directory"}, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	r = newIPCertRig(t, t.TempDir(), actors.NewFakeClock(rigStart), names)
	if _, err := r.m.GetCertificate(hello("192.0.2.7:443", "evil.example.com")); err == nil || !strings.Contains(err.Error(), "not served here") {
		t.Fatalf("a DNS name beside a hostname manager: %v", err)
	}
	if _, err := r.m.GetCertificate(hello("192.0.2.7:443", "")); err != nil || r.orderCount() != 1 {
		t.Fatalf("no SNI beside a hostname manager: %v after %d orders", err, r.orderCount())
	}
	if got := r.m.NextProtos(); len(got) != 1 || got[0] != acme.ALPNProto {
		t.Fatalf("NextProtos %q: the hostname's tls-alpn-01 must still be offered", got)
	}
}

func TestIPCertsIgnoreManualModesSelfSignedFile(t *testing.T) {
	dir := t.TempDir()
	// -certmode=manual -hostname 192.0.2.7 left its self-signed
	// certificate under the name IP certificates use.
	if _, err := newManualCerts(dir, "192.0.2.7", zerolog.Nop()); err != nil {
		t.Fatal(err)
	}
	clock := actors.NewFakeClock(time.Now())
	r := newIPCertRig(t, dir, clock, nil)
	c, err := r.m.GetCertificate(hello("192.0.2.7:443", ""))
	if err != nil {
		t.Fatal(err)
	}
	if r.orderCount() != 1 || c.Leaf.Issuer.CommonName != "test ACME CA" {
		t.Fatalf("served %q after %d orders, want a new CA-signed certificate", c.Leaf.Issuer.CommonName, r.orderCount())
	}
	if !strings.Contains(r.logs.String(), "self-signed") {
		t.Fatalf("why the file was not used is not logged:\n%s", r.logs)
	}
}

func TestIPCertsAnswerHTTP01(t *testing.T) {
	r := newIPCertRig(t, t.TempDir(), actors.NewFakeClock(rigStart), nil)
	path := acmeChallengePrefix + "tok123"
	r.m.tokens[path] = "tok123.thumbprint"
	fallback := http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(http.StatusTeapot) })
	h := r.m.HTTPHandler(fallback)
	get := func(p string) *httptest.ResponseRecorder {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest("GET", "http://192.0.2.7"+p, nil))
		return rec
	}
	if rec := get(path); rec.Code != 200 || rec.Body.String() != "tok123.thumbprint" {
		t.Fatalf("token: %d %q", rec.Code, rec.Body)
	}
	if rec := get(acmeChallengePrefix + "unknown"); rec.Code != http.StatusNotFound {
		t.Fatalf("unknown token: %d, want 404", rec.Code)
	}
	if rec := get("/generate_204"); rec.Code != http.StatusTeapot {
		t.Fatalf("other paths: %d, want the fallback", rec.Code)
	}
	if !strings.Contains(r.logs.String(), "answering an ACME http-01 challenge") {
		t.Fatalf("challenges not logged:\n%s", r.logs)
	}

	// Beside a hostname manager, a token that is not ours is its to
	// answer (here refused: the host is not the hostname).
	names, _ := newACMECerts(&options{certMode: "letsencrypt", hostname: "derp.example.com", certDir: t.TempDir(), acmeDirectoryURL: "https://ca.invalid/directory"}, zerolog.Nop())
	r = newIPCertRig(t, t.TempDir(), actors.NewFakeClock(rigStart), names)
	rec := httptest.NewRecorder()
	r.m.HTTPHandler(fallback).ServeHTTP(rec, httptest.NewRequest("GET", "http://192.0.2.7"+acmeChallengePrefix+"unknown", nil))
	if rec.Code != http.StatusForbidden {
		t.Fatalf("a token not ours beside a hostname manager: %d, want autocert's 403", rec.Code)
	}
}
