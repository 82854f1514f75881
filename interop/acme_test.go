package interop

import (
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/derpd/derpd/interop/harness"
	"tailscale.com/types/key"
)

// The ACME tests run derpd with -certmode=letsencrypt against Pebble,
// Let's Encrypt's test CA, on loopback. derpd serves TLS in that mode only
// on port 443, as derper does, so each test takes an address of its own
// in 127.0.0.0/8 and binds port 443 there; Pebble's DNS answers the
// test's host name with that address.

// acmeRig is one test's CA and server.
type acmeRig struct {
	ip       netip.Addr
	host     string // -hostname: a DNS name, or ip
	httpPort int    // derpd's -http-port, or -1
	pebble   *harness.Pebble
	srv      *harness.Server
	certDir  string
}

type acmeSetup struct {
	ipHostname bool // -hostname is the address (an IP-only server)
	http01     bool // the port-80 listener runs and Pebble validates HTTP-01 on it
	tlsALPN01  bool // Pebble validates TLS-ALPN-01 on port 443 (else: a closed port)
	profiles   map[string]time.Duration
	args       []string
}

func startACME(t *testing.T, setup acmeSetup) *acmeRig {
	t.Helper()
	if harness.TargetFromEnv() == harness.Derper {
		t.Skip("derper takes no ACME directory (it always asks Let's Encrypt), so it cannot be pointed at a test CA")
	}
	r := &acmeRig{ip: uniqueLoopback(t), httpPort: -1, certDir: t.TempDir()}
	r.host = "derp-" + strings.ReplaceAll(r.ip.String(), ".", "-") + ".acme.test"
	if setup.ipHostname {
		r.host = r.ip.String()
	}
	// A port on the test's address that nothing listens on: Pebble's
	// validation of a challenge the test rules out goes there and fails.
	closed := freePortOn(t, r.ip)
	pebbleHTTP, pebbleTLS := closed, closed
	if setup.http01 {
		r.httpPort = freePortOn(t, r.ip)
		pebbleHTTP = r.httpPort
	}
	if setup.tlsALPN01 {
		pebbleTLS = 443
	}
	r.pebble = harness.StartPebble(t, harness.PebbleOptions{
		HTTPPort: pebbleHTTP,
		TLSPort:  pebbleTLS,
		Profiles: setup.profiles,
		Hosts:    map[string]netip.Addr{r.host: r.ip},
	})
	r.srv = r.start(t, setup.args, "")
	return r
}

// start runs derpd on the rig (again, with keyFile, for a restart).
func (r *acmeRig) start(t *testing.T, args []string, keyFile string) *harness.Server {
	t.Helper()
	return harness.Start(t, harness.Options{
		Host: r.ip.String(), Port: 443, HTTPPort: r.httpPort, KeyFile: keyFile,
		CertDir: r.certDir, CertMode: "letsencrypt", Hostname: r.host,
		Args: append([]string{"-acme-directory-url", r.pebble.DirectoryURL}, args...),
		Env:  []string{"SSL_CERT_FILE=" + r.pebble.CAFile},
	})
}

// uniqueLoopback is an address in 127.0.0.0/8 that no other test (here or
// in another engineer's run on the machine) is likely to use, whose port
// 443 is free.
func uniqueLoopback(t *testing.T) netip.Addr {
	t.Helper()
	for range 10 {
		var b [3]byte
		rand.Read(b[:])
		ip := netip.AddrFrom4([4]byte{127, 64 + b[0]%128, b[1], 1 + b[2]%254})
		ln, err := net.Listen("tcp", netip.AddrPortFrom(ip, 443).String())
		if errors.Is(err, syscall.EACCES) {
			t.Fatalf("the ACME tests listen on port 443, where alone derpd serves ACME certificates (as derper does): run them as root, or lower net.ipv4.ip_unprivileged_port_start: %v", err)
		}
		if err == nil {
			ln.Close()
			return ip
		}
	}
	t.Fatal("no free port 443 on ten loopback addresses")
	return netip.Addr{}
}

// logHas reports whether one line of out contains every part.
func logHas(out string, parts ...string) bool {
	for line := range strings.Lines(out) {
		all := true
		for _, p := range parts {
			all = all && strings.Contains(line, p)
		}
		if all {
			return true
		}
	}
	return false
}

func freePortOn(t *testing.T, ip netip.Addr) int {
	t.Helper()
	ln, err := net.Listen("tcp", netip.AddrPortFrom(ip, 0).String())
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// handshake connects to the server as a client that trusts only Pebble's
// root and returns the chain it verified (leaf first) and the meta
// certificate at its end.
func (r *acmeRig) handshake(t *testing.T, serverName string) (leaf, meta *x509.Certificate) {
	t.Helper()
	c, err := tls.Dial("tcp", r.srv.Addr(), &tls.Config{ServerName: serverName, RootCAs: r.pebble.Roots})
	if err != nil {
		t.Fatalf("TLS to %s as %q with Pebble's root: %v", r.srv.Addr(), serverName, err)
	}
	defer c.Close()
	cs := c.ConnectionState()
	return cs.PeerCertificates[0], cs.PeerCertificates[len(cs.PeerCertificates)-1]
}

// relay connects two Tailscale clients through a DERP map node (HostName
// the rig's -hostname, Pebble's root the only one), checks the server key
// they learned, relays a packet, and checks fast start was used: the key
// came from the meta certificate in the ACME chain.
func (r *acmeRig) relay(t *testing.T) {
	t.Helper()
	a, err := harness.DialRegion(r.srv, key.NodePrivate{}, r.pebble.Roots, "")
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	b, err := harness.DialRegion(r.srv, key.NodePrivate{}, r.pebble.Roots, "")
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if got, want := a.ServerPublicKey(), serverKey(t, r.srv); got != want {
		t.Fatalf("client learned server key %v, want %v", got, want)
	}
	if err := a.Send(b.Pub, []byte("over an ACME certificate")); err != nil {
		t.Fatal(err)
	}
	b.ExpectPacket(t, a.Pub, []byte("over an ACME certificate"))
	if !strings.Contains(r.srv.Output(), `"fast_start":true`) {
		t.Fatal("the client did not use fast start: it did not find the key in the meta certificate")
	}
	_, meta := r.handshake(t, r.host)
	if want := "derpkey" + toWire(serverKey(t, r.srv)).UntypedHexString(); meta.Subject.CommonName != want {
		t.Fatalf("last certificate of the chain %q, want the meta certificate %q", meta.Subject.CommonName, want)
	}
}

// The port-443 form: with no port-80 listener and Pebble's HTTP-01
// validation aimed at a closed port, only TLS-ALPN-01 on the TLS listener
// can issue the certificate.
func TestACMEIssuesWithTLSALPN01(t *testing.T) {
	t.Parallel()
	r := startACME(t, acmeSetup{tlsALPN01: true})
	leaf, _ := r.handshake(t, r.host)
	if leaf.VerifyHostname(r.host) != nil {
		t.Fatalf("certificate for %v, want %s", leaf.DNSNames, r.host)
	}
	out := r.pebble.Output()
	if !strings.Contains(out, "set VALID by completed challenge") || strings.Contains(out, "Attempting to validate w/ HTTP") {
		t.Fatal("Pebble's log shows no TLS-ALPN-01 validation, or an HTTP-01 one")
	}
	if !strings.Contains(r.srv.Output(), "answering an ACME tls-alpn-01 challenge") {
		t.Fatal("derpd did not log the tls-alpn-01 challenge it answered")
	}
	r.relay(t)
}

// The port-80 form: Pebble's TLS-ALPN-01 validation is aimed at a closed
// port, so autocert's first choice fails and only HTTP-01 on the port-80
// listener can issue the certificate.
func TestACMEIssuesWithHTTP01(t *testing.T) {
	t.Parallel()
	r := startACME(t, acmeSetup{http01: true})
	leaf, _ := r.handshake(t, r.host)
	if leaf.VerifyHostname(r.host) != nil {
		t.Fatalf("certificate for %v, want %s", leaf.DNSNames, r.host)
	}
	out := r.pebble.Output()
	wantURL := fmt.Sprintf("Attempting to validate w/ HTTP: http://%s:%d/.well-known/acme-challenge/", r.host, r.httpPort)
	if !strings.Contains(out, wantURL) || !strings.Contains(out, "set VALID by completed challenge") {
		t.Fatalf("Pebble's log shows no successful HTTP-01 validation at %s", wantURL)
	}
	if !strings.Contains(out, "set INVALID by completed challenge") {
		t.Fatal("Pebble's log shows no failed TLS-ALPN-01 attempt before HTTP-01: was TLS-ALPN-01 really ruled out?")
	}
	if !logHas(r.srv.Output(), `"message":"answering an ACME http-01 challenge"`, `"status":200`) {
		t.Fatal("derpd did not log the http-01 challenge it answered")
	}
	r.relay(t)
}

// A certificate valid for 20 seconds is renewed when a third of that
// remains, while derpd runs: the served serial changes, the old
// certificate is never served once expired, and nothing renews in a loop.
func TestACMERenewsAShortLivedCertificate(t *testing.T) {
	t.Parallel()
	r := startACME(t, acmeSetup{tlsALPN01: true, profiles: map[string]time.Duration{"default": 20 * time.Second}})
	first, _ := r.handshake(t, r.host)
	var renewed *x509.Certificate
	deadline := first.NotAfter.Add(harness.Wait)
	for renewed == nil || !time.Now().After(first.NotAfter.Add(time.Second)) {
		asked := time.Now()
		leaf, _ := r.handshake(t, r.host)
		switch {
		case leaf.SerialNumber.Cmp(first.SerialNumber) == 0 && asked.After(first.NotAfter):
			t.Fatalf("the certificate that expired at %v was served at %v", first.NotAfter, asked)
		case leaf.SerialNumber.Cmp(first.SerialNumber) != 0 && renewed == nil:
			renewed = leaf
		case renewed != nil && leaf.SerialNumber.Cmp(renewed.SerialNumber) != 0:
			t.Fatalf("renewed again, to serial %v, within the first certificate's lifetime", leaf.SerialNumber)
		}
		if time.Now().After(deadline) {
			t.Fatalf("serial %v still served at %v, past its expiry at %v", first.SerialNumber, time.Now(), first.NotAfter)
		}
		time.Sleep(200 * time.Millisecond)
	}
	if !renewed.NotBefore.Before(first.NotAfter) {
		t.Fatalf("the renewal's certificate starts at %v, after the first expired at %v: renewed late", renewed.NotBefore, first.NotAfter)
	}
	// A loop would have issued a certificate per timer, dozens by now.
	if n := r.pebble.Issued(); n != 2 {
		t.Fatalf("Pebble issued %d certificates, want 2: the first and one renewal", n)
	}
	r.relay(t)
}

// An IP-only server (-hostname 127.x.y.z, -acme-ip-certs): a client that
// dials the address, trusting only Pebble's root, verifies an IP
// certificate obtained with HTTP-01 under the shortlived profile, which
// is cached in -certdir and reused by a restart.
func TestACMEIPCertificate(t *testing.T) {
	t.Parallel()
	// The two profiles' validities tell which one an order asked for.
	r := startACME(t, acmeSetup{ipHostname: true, http01: true, tlsALPN01: true, args: []string{"-acme-ip-certs"},
		profiles: map[string]time.Duration{"shortlived": 2 * time.Hour, "default": 90 * 24 * time.Hour}})
	leaf, _ := r.handshake(t, r.host)
	if leaf.VerifyHostname(r.host) != nil {
		t.Fatalf("certificate for %v, want %s", leaf.IPAddresses, r.host)
	}
	if life := leaf.NotAfter.Sub(leaf.NotBefore); life > 2*time.Hour {
		t.Fatalf("certificate valid for %v: not the shortlived profile's", life)
	}
	wantURL := fmt.Sprintf("Attempting to validate w/ HTTP: http://%s:%d/.well-known/acme-challenge/", r.host, r.httpPort)
	if !strings.Contains(r.pebble.Output(), wantURL) {
		t.Fatalf("Pebble's log shows no HTTP-01 validation at %s", wantURL)
	}
	if want := fmt.Sprintf(`DERP map node: {"HostName":"%s","IPv4":"%s","Name":"900a","RegionID":900}`, r.host, r.host); !strings.Contains(r.srv.Output(), want) {
		t.Fatalf("derpd did not print the DERP map node %s", want)
	}
	if _, err := os.Stat(filepath.Join(r.certDir, r.host+".crt")); err != nil {
		t.Fatalf("not cached in -certdir: %v", err)
	}
	r.relay(t)
	// A name is not served on an IP-only server.
	if c, err := tls.Dial("tcp", r.srv.Addr(), &tls.Config{ServerName: "derp.acme.test", RootCAs: r.pebble.Roots}); err == nil {
		c.Close()
		t.Fatal("an IP-only server completed a handshake for a DNS name")
	}

	keyFile := r.srv.KeyFile()
	r.srv.Stop()
	r.srv = r.start(t, []string{"-acme-ip-certs"}, keyFile)
	again, _ := r.handshake(t, r.host)
	if again.SerialNumber.Cmp(leaf.SerialNumber) != 0 || r.pebble.Issued() != 1 {
		t.Fatalf("after a restart: serial %v (was %v), %d issued: want the cached certificate", again.SerialNumber, leaf.SerialNumber, r.pebble.Issued())
	}
}

// A DNS -hostname with -acme-ip-certs: a client by name gets the name's
// certificate, one by address the address's, both from HTTP-01 on the
// port-80 listener (each order's tokens answered by its own manager).
func TestACMEHostnameAndIPCertificates(t *testing.T) {
	t.Parallel()
	r := startACME(t, acmeSetup{http01: true, args: []string{"-acme-ip-certs"}})
	byName, _ := r.handshake(t, r.host)
	byIP, _ := r.handshake(t, r.ip.String())
	if byName.VerifyHostname(r.host) != nil || byName.VerifyHostname(r.ip.String()) == nil {
		t.Fatalf("by name: a certificate for %v %v", byName.DNSNames, byName.IPAddresses)
	}
	if byIP.VerifyHostname(r.ip.String()) != nil || byIP.VerifyHostname(r.host) == nil {
		t.Fatalf("by address: a certificate for %v %v", byIP.DNSNames, byIP.IPAddresses)
	}
	out := r.pebble.Output()
	for _, host := range []string{r.host, r.ip.String()} {
		if want := "Attempting to validate w/ HTTP: http://" + net.JoinHostPort(host, strconv.Itoa(r.httpPort)); !strings.Contains(out, want) {
			t.Errorf("Pebble's log shows no HTTP-01 validation for %s", host)
		}
	}
	r.relay(t)
}
