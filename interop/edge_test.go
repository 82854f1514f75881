package interop

import (
	"bytes"
	"crypto/sha256"
	"crypto/tls"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"hash/crc32"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/derpd/derpd/interop/harness"
	"tailscale.com/net/stun"
	"tailscale.com/types/key"
)

const tlsHost = "derp.test"

func startTLS(t *testing.T, extra harness.Options) (*harness.Server, *harness.CA, string) {
	t.Helper()
	ca := harness.NewCA(t)
	dir := t.TempDir()
	ca.Issue(t, dir, tlsHost, 2)
	extra.CertDir, extra.Hostname = dir, tlsHost
	return start(t, extra), ca, dir
}

// Relay over TLS the way tailscaled connects: a DERP map node, SNI = its
// HostName, the chain verified against a CA, and (TLS 1.3) the server's
// key taken from the meta certificate, which enables fast start.
func TestTLSRelayWithMetaCertificate(t *testing.T) {
	srv, ca, _ := startTLS(t, harness.Options{})
	a, err := harness.DialRegion(srv, key.NodePrivate{}, ca.Pool, "")
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	b, err := harness.DialRegion(srv, key.NodePrivate{}, ca.Pool, "")
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if got, want := a.ServerPublicKey(), serverKey(t, srv); got != want {
		t.Fatalf("client learned server key %v, want %v", got, want)
	}
	if err := a.Send(b.Pub, []byte("over TLS")); err != nil {
		t.Fatal(err)
	}
	b.ExpectPacket(t, a.Pub, []byte("over TLS"))
	if srv.Kind == harness.Derpd && !strings.Contains(srv.Output(), `"fast_start":true`) {
		t.Fatal("the client did not use fast start: it did not find the key in the meta certificate")
	}
}

// §9.6: over TLS 1.3 the chain ends with the derpkey certificate, serial 2;
// h2 is never negotiated; TLS 1.1 is refused.
func TestTLSChainAndVersions(t *testing.T) {
	srv, ca, _ := startTLS(t, harness.Options{})
	c, err := tls.Dial("tcp", srv.Addr(), &tls.Config{ServerName: tlsHost, RootCAs: ca.Pool, NextProtos: []string{"h2", "http/1.1"}})
	if err != nil {
		t.Fatal(err)
	}
	cs := c.ConnectionState()
	c.Close()
	if cs.Version != tls.VersionTLS13 {
		t.Fatalf("TLS version %x, want 1.3", cs.Version)
	}
	if cs.NegotiatedProtocol == "h2" {
		t.Fatal("h2 negotiated on the DERP listener")
	}
	last := cs.PeerCertificates[len(cs.PeerCertificates)-1]
	if want := "derpkey" + toWire(serverKey(t, srv)).UntypedHexString(); last.Subject.CommonName != want {
		t.Fatalf("last certificate CN %q, want %q", last.Subject.CommonName, want)
	}
	if last.SerialNumber.Int64() != 2 {
		t.Fatalf("meta certificate serial %v", last.SerialNumber)
	}
	if _, err := tls.Dial("tcp", srv.Addr(), &tls.Config{ServerName: tlsHost, RootCAs: ca.Pool, MaxVersion: tls.VersionTLS11}); err == nil {
		t.Fatal("TLS 1.1 accepted")
	}
	if _, err := tls.Dial("tcp", srv.Addr(), &tls.Config{ServerName: "wrong.test", InsecureSkipVerify: true}); err == nil {
		t.Fatal("handshake for another server name accepted in manual mode")
	}
}

// An IP-only server makes itself a certificate; clients pin its hash.
func TestIPCertificatePinnedByHash(t *testing.T) {
	dir := t.TempDir()
	srv := start(t, harness.Options{CertDir: dir, Hostname: "127.0.0.1"})
	c, err := tls.Dial("tcp", srv.Addr(), &tls.Config{InsecureSkipVerify: true})
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(c.ConnectionState().PeerCertificates[0].Raw)
	c.Close()
	certName := "sha256-raw:" + hex.EncodeToString(sum[:])
	if srv.Kind == harness.Derpd && !strings.Contains(srv.Output(), certName) {
		t.Fatalf("derpd did not print the DERP map CertName %s", certName)
	}
	a, err := harness.DialRegion(srv, key.NodePrivate{}, nil, certName)
	if err != nil {
		t.Fatalf("pinned connection: %v", err)
	}
	a.Sync(t)
	a.Close()
	if _, err := harness.DialRegion(srv, key.NodePrivate{}, nil, "sha256-raw:"+strings.Repeat("00", 32)); err == nil {
		t.Fatal("connected with the wrong pinned hash")
	}
}

// SIGHUP reloads manual certificates without a restart.
func TestSIGHUPReloadsManualCertificate(t *testing.T) {
	srv, ca, dir := startTLS(t, harness.Options{})
	if srv.Kind != harness.Derpd {
		t.Skip("upstream derper reloads only -rate-config on SIGHUP")
	}
	serial := func() int64 {
		c, err := tls.Dial("tcp", srv.Addr(), &tls.Config{ServerName: tlsHost, RootCAs: ca.Pool})
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		return c.ConnectionState().PeerCertificates[0].SerialNumber.Int64()
	}
	if s := serial(); s != 2 {
		t.Fatalf("serial %d", s)
	}
	ca.Issue(t, dir, tlsHost, 3)
	srv.Signal(syscall.SIGHUP)
	deadline := time.Now().Add(harness.Wait)
	for serial() != 3 {
		if time.Now().After(deadline) {
			t.Fatal("certificate not reloaded after SIGHUP")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// §9.28 and §9.29: the port-80 listener of a TLS server.
func TestPort80(t *testing.T) {
	p80, err := harness.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	srv, _, _ := startTLS(t, harness.Options{HTTPPort: p80})
	base := "http://127.0.0.1:" + strconv.Itoa(p80)
	noFollow := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	deadline := time.Now().Add(harness.Wait)
	var res *http.Response
	for {
		req, _ := http.NewRequest("GET", base+"/derp?x=1", nil)
		req.Host = tlsHost
		res, err = noFollow.Do(req)
		if err == nil || time.Now().After(deadline) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if res.StatusCode != http.StatusFound || res.Header.Get("Location") != "https://"+tlsHost+"/derp?x=1" {
		t.Fatalf("GET /derp on port 80: %d → %q", res.StatusCode, res.Header.Get("Location"))
	}
	res, err = noFollow.Post(base+"/x", "text/plain", nil)
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if res.StatusCode != http.StatusBadRequest {
		t.Fatalf("POST on port 80: %d, want 400", res.StatusCode)
	}
	req, _ := http.NewRequest("GET", base+"/generate_204", nil)
	req.Header.Set("X-Tailscale-Challenge", "ts_1.2.3.4")
	res, err = noFollow.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if res.StatusCode != 204 || res.Header.Get("X-Tailscale-Response") != "response ts_1.2.3.4" {
		t.Fatalf("captive-portal check on port 80: %d %q", res.StatusCode, res.Header.Get("X-Tailscale-Response"))
	}
	// §1.6: port 80 serves /generate_204 with the §1.5 handler, so a
	// cache between the client and the server cannot answer for it.
	if cc := res.Header.Get("Cache-Control"); cc != "no-cache, no-store, must-revalidate, no-transform, max-age=0" {
		t.Fatalf("Cache-Control on port 80 %q", cc)
	}
	_ = srv
}

// §9.32: STUN answered for Tailscale's own request, parsed with Tailscale's
// own parser; junk and non-Tailscale requests get nothing.
func TestSTUN(t *testing.T) {
	port, err := freeUDPPort()
	if err != nil {
		t.Fatal(err)
	}
	srv := start(t, harness.Options{STUNPort: port})
	c, err := net.DialUDP("udp", nil, &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: port})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	// The builder below makes Tailscale's exact request when given its
	// SOFTWARE value, so the requests it makes without it, or with
	// another value, are valid but for that attribute.
	if tx := stun.NewTxID(); !bytes.Equal(stunRequest(tx, "tailnode"), stun.Request(tx)) {
		t.Fatalf("stunRequest builds %x, Tailscale %x", stunRequest(tx, "tailnode"), stun.Request(tx))
	}
	junk := [][]byte{
		[]byte("hello, not STUN"),
		stunRequest(stun.NewTxID(), ""),         // no SOFTWARE attribute
		stunRequest(stun.NewTxID(), "tailnodX"), // somebody else's software
	}
	bad := stun.Request(stun.NewTxID())
	bad[len(bad)-1] ^= 1 // broken fingerprint
	junk = append(junk, bad)
	for _, b := range junk {
		if _, err := c.Write(b); err != nil {
			t.Fatal(err)
		}
	}
	tx := stun.NewTxID()
	if _, err := c.Write(stun.Request(tx)); err != nil {
		t.Fatal(err)
	}
	c.SetReadDeadline(time.Now().Add(harness.Wait))
	buf := make([]byte, 1500)
	n, err := c.Read(buf)
	if err != nil {
		t.Fatal(err)
	}
	gotTx, addr, err := stun.ParseResponse(buf[:n])
	if err != nil {
		t.Fatalf("response %x: %v", buf[:n], err)
	}
	if gotTx != tx {
		t.Fatal("response is not for the valid request (junk or a bad request was answered)")
	}
	if want := c.LocalAddr().(*net.UDPAddr).AddrPort(); addr != netip.AddrPortFrom(want.Addr().Unmap(), want.Port()) {
		t.Fatalf("mapped address %v, want %v", addr, want)
	}
	if n != 32 && n != 44 {
		t.Fatalf("response of %d bytes", n)
	}
	// Every junk datagram was counted as not STUN, and only one request
	// was answered (an answer to junk arriving after the valid one's
	// would count as a success).
	srv.WaitMetric(t, `stun_requests{disposition="not_stun"}`, float64(len(junk)))
	if got := srv.Metric(t, `stun_requests{disposition="success"}`); got != 1 {
		t.Fatalf("stun_requests{disposition=\"success\"} = %v, want 1", got)
	}
}

// stunRequest builds a Binding Request with a SOFTWARE attribute holding
// software (none if empty, padded to 4 bytes) and a correct FINGERPRINT
// last, as §6 describes.
func stunRequest(tx stun.TxID, software string) []byte {
	var attrs []byte
	if software != "" {
		attrs = binary.BigEndian.AppendUint16(attrs, 0x8022)
		attrs = binary.BigEndian.AppendUint16(attrs, uint16(len(software)))
		attrs = append(attrs, software...)
		for len(attrs)%4 != 0 {
			attrs = append(attrs, 0)
		}
	}
	b := []byte{0x00, 0x01}
	b = binary.BigEndian.AppendUint16(b, uint16(len(attrs)+8))
	b = append(b, 0x21, 0x12, 0xa4, 0x42)
	b = append(b, tx[:]...)
	b = append(b, attrs...)
	fp := crc32.ChecksumIEEE(b) ^ 0x5354554e
	b = append(b, 0x80, 0x28, 0x00, 0x04)
	return binary.BigEndian.AppendUint32(b, fp)
}

func freeUDPPort() (int, error) {
	c, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer c.Close()
	return c.LocalAddr().(*net.UDPAddr).Port, nil
}

// The accept limit closes excess sockets at once and the server keeps
// serving. (Upstream exits when its limit is hit, a bug derpd does not
// copy, so this runs against derpd only.)
func TestAcceptLimit(t *testing.T) {
	if harness.TargetFromEnv() != harness.Derpd {
		t.Skip("upstream derper stops serving when its accept limit is hit")
	}
	srv := start(t, harness.Options{Args: []string{"-accept-connection-limit", "2", "-accept-connection-burst", "5"}})
	var conns []net.Conn
	for range 40 {
		c, err := net.Dial("tcp", srv.Addr())
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, c)
	}
	// At 2 per second with a burst of 5, at least 30 of 40 sockets opened
	// at once are over the limit, whatever the machine's speed.
	srv.WaitMetricAtLeast(t, "tls_listener_rejected_connections", 30)
	// The server closed those at once: their reads end at EOF. (The short
	// deadline is only for the few it accepted, which stay open.)
	closed := 0
	for _, c := range conns {
		c.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
		if _, err := c.Read(make([]byte, 1)); err == io.EOF {
			closed++
		}
		c.Close()
	}
	if closed < 30 {
		t.Fatalf("only %d of 40 connections over the limit were closed", closed)
	}
	// Still serving once the limiter has tokens again.
	deadline := time.Now().Add(harness.Wait)
	for {
		res, err := http.Get(srv.BaseURL() + "/derp/probe")
		if err == nil {
			res.Body.Close()
			if res.StatusCode == 200 {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatal("server stopped serving after the burst")
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// -home chooses what / shows.
func TestHomePage(t *testing.T) {
	blank := start(t, harness.Options{Args: []string{"-home", "blank"}})
	res, body := get(t, "GET", blank.BaseURL()+"/", nil)
	if res.StatusCode != 200 || body != "" {
		t.Fatalf("-home=blank: %d %q", res.StatusCode, body)
	}
	redir := start(t, harness.Options{Args: []string{"-home", "https://example.com/about"}})
	res, _ = get(t, "GET", redir.BaseURL()+"/", nil)
	if res.StatusCode != http.StatusFound || res.Header.Get("Location") != "https://example.com/about" {
		t.Fatalf("-home=URL: %d %q", res.StatusCode, res.Header.Get("Location"))
	}
}

// /bootstrap-dns publishes resolved names (localhost resolves offline).
func TestBootstrapDNS(t *testing.T) {
	srv := start(t, harness.Options{Args: []string{"-bootstrap-dns-names", "localhost"}})
	deadline := time.Now().Add(harness.Wait)
	for {
		res, body := get(t, "GET", srv.BaseURL()+"/bootstrap-dns", nil)
		var m map[string][]string
		if res.StatusCode == 200 && json.Unmarshal([]byte(body), &m) == nil && len(m["localhost"]) > 0 {
			found := false
			for _, a := range m["localhost"] {
				found = found || a == "127.0.0.1" || a == "::1"
			}
			if !found {
				t.Fatalf("localhost resolved to %v", m["localhost"])
			}
			if res.Header.Get("Content-Type") != "application/json" {
				t.Fatalf("Content-Type %q", res.Header.Get("Content-Type"))
			}
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("no bootstrap answer: %d %q", res.StatusCode, body)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
