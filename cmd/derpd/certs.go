package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/derpd/derpd/actors"
	"github.com/derpd/derpd/wire"
	"github.com/rs/zerolog"
	"golang.org/x/crypto/acme"
	"golang.org/x/crypto/acme/autocert"
)

// certSource supplies the certificates of the TLS listener.
type certSource interface {
	// GetCertificate is tls.Config.GetCertificate.
	GetCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error)
	// NextProtos lists the ALPN protocols to offer besides http/1.1.
	NextProtos() []string
	// HTTPHandler wraps the port-80 handler (ACME HTTP-01 challenges).
	HTTPHandler(fallback http.Handler) http.Handler
	// Reload re-reads certificates from disk where the mode has any, and
	// returns errNothingToReload where it has none.
	Reload() error
}

// errNothingToReload is what a certificate source without files to
// re-read answers to Reload (and what plain HTTP, with no source, means).
var errNothingToReload = errors.New("nothing to reload: only -certmode=manual certificates are read from files")

// gcpDirectory is Google Trust Services' ACME directory, which upstream
// uses for -certmode=gcp.
const gcpDirectory = "https://dv.acme-v02.api.pki.goog/directory"

// newCertSource builds the certificate source for the flags.
func newCertSource(o *options, log zerolog.Logger) (certSource, error) {
	switch o.certMode {
	case "manual":
		return newManualCerts(o.certDir, o.hostname, log)
	case "letsencrypt", "gcp":
		_, err := netip.ParseAddr(o.hostname)
		ipHostname := err == nil
		if ipHostname && !o.acmeIPCerts {
			// Clients send no SNI to an IP address, and a certificate
			// for a name would never match: every handshake would fail.
			return nil, errors.New("-hostname is an IP address: use -acme-ip-certs for ACME certificates for the server's IP addresses, or -certmode=manual for a self-signed certificate")
		}
		if o.acmeIPCerts && o.certMode != "letsencrypt" {
			return nil, errors.New("-acme-ip-certs needs -certmode=letsencrypt")
		}
		if err := os.MkdirAll(o.certDir, 0o700); err != nil {
			return nil, fmt.Errorf("-certdir: %w", err)
		}
		var names *acmeCerts // nil on an IP-only server
		if !ipHostname {
			if names, err = newACMECerts(o, log); err != nil {
				return nil, err
			}
		}
		if !o.acmeIPCerts {
			return names, nil
		}
		ips, err := newIPCerts(o.certDir, o.acmeEmail, o.acmeDirectory(), names, actors.RealClock, log)
		if err != nil {
			return nil, err
		}
		return ips, nil
	}
	return nil, fmt.Errorf("-certmode: unknown mode %q", o.certMode)
}

// newACMECerts is the autocert manager for -hostname, a DNS name.
//
// Its renewal is autocert's own: with RenewBefore left at zero, a
// certificate is renewed when a third of its lifetime remains (at most 30
// days before it expires), less up to a tenth of that as jitter. That is
// the rule derpd's IP certificates follow too (renewalTime), and it suits
// every lifetime: 90-day certificates renew 30 days early, Let's Encrypt's
// 6-day "shortlived" ones 2 days early. A fixed RenewBefore longer than
// the lifetime would instead renew on every timer, in a loop.
func newACMECerts(o *options, log zerolog.Logger) (*acmeCerts, error) {
	m := &autocert.Manager{
		Prompt:     autocert.AcceptTOS,
		HostPolicy: acmeHostPolicy(o.hostname),
		Cache:      autocert.DirCache(o.certDir),
		Email:      o.acmeEmail,
		Client:     &acme.Client{DirectoryURL: o.acmeDirectory()},
	}
	if o.certMode == "gcp" {
		if o.acmeEmail == "" || o.acmeEABKid == "" || o.acmeEABKey == "" {
			return nil, errors.New("-certmode=gcp needs -acme-email, -acme-eab-kid and -acme-eab-key")
		}
		key, err := decodeEABKey(o.acmeEABKey)
		if err != nil {
			return nil, fmt.Errorf("-acme-eab-key: %w", err)
		}
		m.ExternalAccountBinding = &acme.ExternalAccountBinding{KID: o.acmeEABKid, Key: key}
	}
	log = log.With().Str("component", "acme").Logger()
	log.Info().Str("hostname", o.hostname).Str("directory", m.Client.DirectoryURL).
		Msg("ACME certificates for the hostname: obtained on the first handshake, renewed when a third of their lifetime remains")
	return &acmeCerts{
		m:   m,
		log: log,
		// One line a minute is enough to say the certificate expired;
		// every handshake fails until a renewal succeeds.
		expiredLog: log.Sample(&zerolog.BurstSampler{Burst: 1, Period: time.Minute}),
	}, nil
}

// acmeHostPolicy allows exactly the configured host, and for upstream's
// own derp.tailscale.com any derp*.tailscale.com, as upstream does.
//
// autocert also asks it about the Host header of HTTP-01 requests, which
// carries a port when the CA validates on one other than 80 (a private
// CA, or a test CA): the port is not part of the name.
func acmeHostPolicy(hostname string) autocert.HostPolicy {
	return func(_ context.Context, host string) error {
		if h, _, err := net.SplitHostPort(host); err == nil {
			host = h
		}
		if host == hostname || (hostname == "derp.tailscale.com" && tailscaleHostname.MatchString(host)) {
			return nil
		}
		return fmt.Errorf("host %q is not served here", host)
	}
}

func decodeEABKey(s string) ([]byte, error) {
	for _, enc := range []func(string) ([]byte, error){
		base64.RawURLEncoding.DecodeString, base64.URLEncoding.DecodeString,
		base64.StdEncoding.DecodeString, base64.RawStdEncoding.DecodeString,
	} {
		if b, err := enc(s); err == nil {
			return b, nil
		}
	}
	return nil, errors.New("not base64url or standard base64")
}

// acmeCerts are obtained and renewed by autocert (Let's Encrypt, GCP or
// the CA of -acme-directory-url), cached in -certdir in the layout
// upstream derper uses, so either reads the other's cache. Renewal
// happens in the background, so nothing needs reloading.
type acmeCerts struct {
	m          *autocert.Manager
	clock      actors.Clock // nil: the wall clock
	log        zerolog.Logger
	expiredLog zerolog.Logger

	// serving is the serial of the certificate last served, so that a
	// renewed one is logged once, when it is first served, rather than
	// on every handshake.
	serving atomic.Pointer[big.Int]
}

func (a *acmeCerts) GetCertificate(hi *tls.ClientHelloInfo) (*tls.Certificate, error) {
	c, err := a.m.GetCertificate(hi)
	if err != nil {
		return nil, err
	}
	if isALPNChallenge(hi) {
		a.log.Info().Str("name", hi.ServerName).Str("from", remoteOf(hi)).Msg("answering an ACME tls-alpn-01 challenge")
		return c, nil
	}
	leaf := c.Leaf
	if leaf == nil {
		if leaf, err = x509.ParseCertificate(c.Certificate[0]); err != nil {
			return nil, err
		}
	}
	// autocert keeps serving what it holds while a renewal fails; past
	// its expiry that certificate helps no client and hides the cause,
	// so the handshake fails here, with a line saying why.
	now := time.Now()
	if a.clock != nil {
		now = a.clock.Now()
	}
	if !now.Before(leaf.NotAfter) {
		a.expiredLog.Error().Str("name", hi.ServerName).Time("not_after", leaf.NotAfter).
			Msg("the ACME certificate has expired and no renewal has succeeded yet; refusing handshakes until one does")
		return nil, fmt.Errorf("certificate for %s expired at %v", hi.ServerName, leaf.NotAfter)
	}
	if old := a.serving.Load(); old == nil || old.Cmp(leaf.SerialNumber) != 0 {
		if a.serving.CompareAndSwap(old, leaf.SerialNumber) {
			a.log.Info().Str("name", hi.ServerName).Str("serial", leaf.SerialNumber.Text(16)).
				Time("not_before", leaf.NotBefore).Time("not_after", leaf.NotAfter).Str("issuer", leaf.Issuer.CommonName).
				Msg("serving an ACME certificate")
		}
	}
	return c, nil
}

func (a *acmeCerts) NextProtos() []string { return []string{acme.ALPNProto} }
func (a *acmeCerts) HTTPHandler(fallback http.Handler) http.Handler {
	return logChallenges(a.m.HTTPHandler(fallback), a.log)
}
func (a *acmeCerts) Reload() error { return errNothingToReload }

// isALPNChallenge reports whether a ClientHello is a CA's TLS-ALPN-01
// validation (RFC 8737), which offers acme-tls/1 and nothing else.
func isALPNChallenge(hi *tls.ClientHelloInfo) bool {
	return len(hi.SupportedProtos) == 1 && hi.SupportedProtos[0] == acme.ALPNProto
}

func remoteOf(hi *tls.ClientHelloInfo) string {
	if hi.Conn == nil {
		return ""
	}
	return hi.Conn.RemoteAddr().String()
}

// logChallenges logs every ACME HTTP-01 request h answers on the port-80
// listener and how: an operator whose certificate never arrives learns
// whether the CA reached the server at all. They are rare (one per
// issuance or renewal, a few more from a CA that validates from several
// places), so each gets a line, sampled only against a flood.
func logChallenges(h http.Handler, log zerolog.Logger) http.Handler {
	sampled := log.Sample(&zerolog.BurstSampler{Burst: 20, Period: time.Minute})
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !strings.HasPrefix(r.URL.Path, acmeChallengePrefix) {
			h.ServeHTTP(w, r)
			return
		}
		sw := &statusWriter{ResponseWriter: w, status: http.StatusOK}
		h.ServeHTTP(sw, r)
		ev := sampled.Info()
		if sw.status != http.StatusOK {
			ev = sampled.Warn()
		}
		ev.Str("host", r.Host).Str("path", r.URL.Path).Str("from", r.RemoteAddr).Int("status", sw.status).
			Msg("answering an ACME http-01 challenge")
	})
}

// acmeChallengePrefix is where RFC 8555 §8.3 puts HTTP-01 responses.
const acmeChallengePrefix = "/.well-known/acme-challenge/"

type statusWriter struct {
	http.ResponseWriter
	status int
}

func (w *statusWriter) WriteHeader(code int) {
	w.status = code
	w.ResponseWriter.WriteHeader(code)
}

// manualCerts serves <certdir>/<hostname>.crt and .key. The files are
// re-read when they change (checked at most every manualRecheck, and at
// once on SIGHUP), so an operator can renew certificates with any tool
// and never restart derpd.
type manualCerts struct {
	hostname string
	isIP     bool
	crtPath  string
	keyPath  string
	log      zerolog.Logger

	mu      sync.Mutex
	cert    *tls.Certificate
	modTime time.Time
	checked time.Time
}

const manualRecheck = 10 * time.Second

var unsafeHostChars = regexp.MustCompile(`[^A-Za-z0-9.-]`)

func newManualCerts(dir, hostname string, log zerolog.Logger) (*manualCerts, error) {
	base := unsafeHostChars.ReplaceAllString(hostname, "")
	m := &manualCerts{
		hostname: hostname,
		crtPath:  filepath.Join(dir, base+".crt"),
		keyPath:  filepath.Join(dir, base+".key"),
		log:      log,
	}
	ip, err := netip.ParseAddr(hostname)
	m.isIP = err == nil
	if m.isIP {
		if _, err := os.Stat(m.crtPath); errors.Is(err, os.ErrNotExist) {
			if err := writeSelfSigned(dir, m.crtPath, m.keyPath, ip); err != nil {
				return nil, fmt.Errorf("self-signed certificate for %s: %w", hostname, err)
			}
			log.Info().Str("cert", m.crtPath).Msg("generated a self-signed certificate for the IP address")
		}
	}
	if err := m.Reload(); err != nil {
		return nil, err
	}
	if m.isIP {
		m.logDERPMapNode()
	}
	return m, nil
}

// Reload reads the files and checks the certificate is for the hostname.
func (m *manualCerts) Reload() error {
	fi, err := os.Stat(m.crtPath)
	if err != nil {
		return fmt.Errorf("manual certificate: %w", err)
	}
	cert, err := tls.LoadX509KeyPair(m.crtPath, m.keyPath)
	if err != nil {
		return fmt.Errorf("manual certificate: %w", err)
	}
	leaf, err := x509.ParseCertificate(cert.Certificate[0])
	if err != nil {
		return fmt.Errorf("manual certificate: %w", err)
	}
	if err := leaf.VerifyHostname(m.hostname); err != nil {
		return fmt.Errorf("manual certificate %s is not valid for -hostname %s: %w", m.crtPath, m.hostname, err)
	}
	cert.Leaf = leaf
	m.mu.Lock()
	changed := m.cert != nil && !fi.ModTime().Equal(m.modTime)
	m.cert, m.modTime, m.checked = &cert, fi.ModTime(), time.Now()
	m.mu.Unlock()
	if changed {
		m.log.Info().Str("cert", m.crtPath).Time("not_after", leaf.NotAfter).Msg("reloaded the manual certificate")
	}
	return nil
}

func (m *manualCerts) GetCertificate(hi *tls.ClientHelloInfo) (*tls.Certificate, error) {
	// Tailscale clients send the DERP node's HostName as SNI; anything
	// else is a scanner or a misconfiguration. An IP hostname cannot be
	// sent as SNI, so it is not checked.
	if !m.isIP && hi.ServerName != m.hostname {
		return nil, fmt.Errorf("TLS server name %q does not match -hostname", hi.ServerName)
	}
	m.mu.Lock()
	recheck := time.Since(m.checked) > manualRecheck
	if recheck {
		m.checked = time.Now()
	}
	cert, mod := m.cert, m.modTime
	m.mu.Unlock()
	if recheck {
		if fi, err := os.Stat(m.crtPath); err == nil && !fi.ModTime().Equal(mod) {
			if err := m.Reload(); err != nil {
				m.log.Warn().Err(err).Msg("manual certificate changed but does not load; keeping the old one")
			} else {
				m.mu.Lock()
				cert = m.cert
				m.mu.Unlock()
			}
		}
	}
	return cert, nil
}

func (m *manualCerts) NextProtos() []string                           { return nil }
func (m *manualCerts) HTTPHandler(fallback http.Handler) http.Handler { return fallback }

// logDERPMapNode prints what an operator pastes into a DERP map to use an
// IP-only server: clients pin the certificate's hash instead of verifying
// a chain.
func (m *manualCerts) logDERPMapNode() {
	m.mu.Lock()
	der := m.cert.Certificate[0]
	m.mu.Unlock()
	sum := sha256.Sum256(der)
	logDERPMapNode(m.log, m.hostname, "sha256-raw:"+hex.EncodeToString(sum[:]),
		"this server uses a self-signed IP certificate; add this node (with your region and DERPPort) to your DERP map")
}

// logDERPMapNode prints, to the log and plainly on stderr, the DERP map
// node of a server reached by IP address: HostName and IPv4 or IPv6 are
// the address, and certName (empty for a certificate a CA signed) is what
// clients pin.
func logDERPMapNode(log zerolog.Logger, hostname, certName, msg string) {
	node := map[string]any{
		"Name":     "900a",
		"RegionID": 900,
		"HostName": hostname,
	}
	if certName != "" {
		node["CertName"] = certName
	}
	if ip, err := netip.ParseAddr(hostname); err == nil {
		if ip.Is4() {
			node["IPv4"] = hostname
		} else {
			node["IPv6"] = hostname
		}
	}
	js, _ := json.Marshal(node)
	log.Info().RawJSON("derp_map_node", js).Msg(msg)
	fmt.Fprintf(os.Stderr, "DERP map node: %s\n", js)
}

// writeSelfSigned makes a one-year ECDSA P-256 certificate for ip.
func writeSelfSigned(dir, crtPath, keyPath string, ip netip.Addr) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: ip.String()},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.AddDate(1, 0, 0),
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IPAddresses:           []net.IP{ip.AsSlice()},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return err
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return err
	}
	if err := os.WriteFile(keyPath, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER}), 0o600); err != nil {
		return err
	}
	return os.WriteFile(crtPath, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644)
}

// metaCert is the extra certificate appended to every served chain. It
// carries the server's DERP key (in the CN) and protocol version (as the
// serial number), so a Tailscale client on TLS 1.3 learns the key during
// the handshake and can send its ClientInfo with the HTTP request (fast
// start), saving a round trip. Clients verify the chain as usual; this
// certificate is an unused extra.
func metaCert(pub wire.NodePublic) ([]byte, error) {
	_, key, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(wire.ProtocolVersion),
		Subject:               pkix.Name{CommonName: "derpkey" + pub.UntypedHexString()},
		NotBefore:             now.Add(-30 * 24 * time.Hour),
		NotAfter:              now.Add(30 * 24 * time.Hour),
		BasicConstraintsValid: true,
		IsCA:                  false,
	}
	return x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
}

// tlsConfig is the main listener's TLS configuration: certificates from
// src with the meta certificate appended, TLS 1.2 at least, and no HTTP/2
// (DERP is an HTTP/1.1 upgrade).
func tlsConfig(src certSource, meta []byte, versions *tlsVersionCounter) *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS12,
		NextProtos: append([]string{"http/1.1"}, src.NextProtos()...),
		GetCertificate: func(hi *tls.ClientHelloInfo) (*tls.Certificate, error) {
			c, err := src.GetCertificate(hi)
			if err != nil || c == nil {
				return c, err
			}
			// An ACME TLS-ALPN-01 challenge certificate must be served
			// exactly as the CA expects.
			if slices.Contains(hi.SupportedProtos, acme.ALPNProto) {
				return c, nil
			}
			// Built per handshake: a small copy next to the handshake's
			// own cost. Caching it by c would leak, since autocert
			// returns a fresh *tls.Certificate on every call.
			with := *c
			with.Certificate = append(slices.Clip(c.Certificate), meta)
			return &with, nil
		},
		VerifyConnection: func(cs tls.ConnectionState) error {
			versions.note(cs.Version)
			return nil
		},
	}
}

// tlsVersionCounter counts handshakes by TLS version, as upstream's
// derper_tls_request_version.
type tlsVersionCounter struct {
	mu     sync.Mutex
	counts map[string]int64
}

func (t *tlsVersionCounter) note(v uint16) {
	name := map[uint16]string{tls.VersionTLS10: "1.0", tls.VersionTLS11: "1.1", tls.VersionTLS12: "1.2", tls.VersionTLS13: "1.3"}[v]
	if name == "" {
		name = "unknown"
	}
	t.mu.Lock()
	if t.counts == nil {
		t.counts = map[string]int64{}
	}
	t.counts[name]++
	t.mu.Unlock()
}

func (t *tlsVersionCounter) snapshot() map[string]int64 {
	t.mu.Lock()
	defer t.mu.Unlock()
	out := map[string]int64{"1.0": 0, "1.1": 0, "1.2": 0, "1.3": 0, "unknown": 0}
	for k, v := range t.counts {
		out[k] = v
	}
	return out
}
