package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/derpd/derpd/actors"
	"github.com/rs/zerolog"
	"golang.org/x/crypto/acme"
)

// -acme-ip-certs: ACME certificates for the server's own IP addresses, as
// upstream derper's ipcert.go has them, in derpd's own code.
//
// A client that dials a DERP node by IP address sends no SNI (TLS has no
// SNI for addresses), so the address to certify is the one the connection
// arrived on: its local address. That covers every IPv4 and IPv6 address
// of the host with no configuration. A client that does send an IP SNI is
// served only if it names that same local address, so no client can make
// the server order a certificate for an address that is not its own. A
// DNS name in the SNI goes to the -hostname's autocert manager, or is
// refused on an IP-only server (an IP -hostname).
//
// Orders use the http-01 challenge, answered on the port-80 listener, and
// the "shortlived" profile, which Let's Encrypt requires for IP
// certificates (about six days). A CA that advertises no such profile (a
// private one, say) gets an order without a profile: it then issues with
// its own default, or says why not, and that answer is logged.

// Tuning of IP certificate issuance.
const (
	// shortlivedProfile is Let's Encrypt's profile for short-lived
	// certificates, the only one it issues IP certificates under.
	shortlivedProfile acme.ProfileName = "shortlived"
	// ipIssueTimeout bounds one issuance: account, order, validation,
	// finalization. A handshake waiting for the first certificate waits
	// at most this long.
	ipIssueTimeout = 3 * time.Minute
	// ipRetryFirst and ipRetryMax are the backoff after a failed
	// issuance (doubling), as upstream's: a CA that refuses is not asked
	// again by every handshake, and its rate limits are respected.
	ipRetryFirst = time.Minute
	ipRetryMax   = 30 * time.Minute
	// renewalCap is the most time before expiry a renewal starts,
	// autocert's cap: a year-long certificate from a private CA renews 30
	// days early, not four months.
	renewalCap = 30 * 24 * time.Hour
)

// ipAccountKeyFile is the ACME account key of IP certificates in -certdir:
// upstream derper's name, so its cache carries over. (The -hostname's
// autocert manager keeps its own account, in "acme_account+key".)
const ipAccountKeyFile = "acme-account.key"

// renewalTime is when a certificate is due for renewal: once a third of
// its lifetime remains, and never more than renewalCap before it expires.
// Let's Encrypt's 90-day certificates renew 30 days early, its 6-day ones
// 2 days early, and a certificate of 30 seconds at 20 seconds: the rule
// scales with the lifetime, so no lifetime renews in a loop.
func renewalTime(leaf *x509.Certificate) time.Time {
	life := leaf.NotAfter.Sub(leaf.NotBefore)
	return leaf.NotAfter.Add(-min(life/3, renewalCap))
}

// ipCerts is the certSource of -acme-ip-certs.
//
// It is not an actor: its state is an entry per address of the server
// (a handful) and the HTTP-01 tokens of orders in flight, read on every
// TLS handshake, which must block until a certificate exists, and by the
// port-80 handler. A mutex held only for map reads and writes serves both
// without a mailbox round trip on the handshake path; the slow part, the
// ACME order, runs outside it on one goroutine per address at a time.
type ipCerts struct {
	// Set once at construction.
	dir    string
	email  string
	client *acme.Client
	names  *acmeCerts // handshakes with a DNS name in the SNI; nil on an IP-only server
	clock  actors.Clock
	log    zerolog.Logger
	// obtain runs one ACME order for ip (order); tests replace it.
	obtain func(ctx context.Context, ip netip.Addr) (*tls.Certificate, error)

	mu      sync.Mutex
	entries map[netip.Addr]*ipCertEntry
	tokens  map[string]string // HTTP-01 path → key authorization, while a validation is pending
}

// ipCertEntry is one address's certificate and issuance, guarded by
// ipCerts.mu.
type ipCertEntry struct {
	cert    *tls.Certificate // Leaf set; nil until the first issuance
	flight  chan struct{}    // non-nil while an issuance runs; closed when it ends
	err     error            // why the last issuance failed
	retryAt time.Time        // after a failure, no new attempt before this
	backoff time.Duration    // the wait after the next failure; zero after a success
	renew   actors.Timer     // the next renewal, or retry of a failed one
}

func newIPCerts(dir, email, directoryURL string, names *acmeCerts, clock actors.Clock, log zerolog.Logger) (*ipCerts, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("-certdir: %w", err)
	}
	key, err := loadOrCreateAccountKey(filepath.Join(dir, ipAccountKeyFile))
	if err != nil {
		return nil, fmt.Errorf("ACME account key for IP certificates: %w", err)
	}
	m := &ipCerts{
		dir:     dir,
		email:   email,
		client:  &acme.Client{Key: key, DirectoryURL: directoryURL, UserAgent: "derpd"},
		names:   names,
		clock:   clock,
		log:     log.With().Str("component", "acme-ip").Logger(),
		entries: map[netip.Addr]*ipCertEntry{},
		tokens:  map[string]string{},
	}
	m.obtain = m.order
	m.log.Info().Str("directory", directoryURL).Bool("hostname_certs", names != nil).
		Msg("ACME certificates for the server's IP addresses: obtained on the first handshake to each address (http-01 on the port-80 listener), renewed when a third of their lifetime remains")
	return m, nil
}

// errNameSNI is pickIP's answer for a DNS name in the SNI: not an address.
var errNameSNI = errors.New("the TLS server name is a DNS name")

// pickIP chooses the address to serve a certificate for: the connection's
// local address, when the client sent no SNI or sent that same address.
func pickIP(serverName string, local net.Addr) (netip.Addr, error) {
	var localIP netip.Addr
	if ta, ok := local.(*net.TCPAddr); ok {
		// A v4-mapped address is the IPv4 address on a dual-stack
		// socket; a zone only says which link, and certificates have none.
		localIP = ta.AddrPort().Addr().Unmap().WithZone("")
	}
	if serverName != "" {
		sni, err := netip.ParseAddr(serverName)
		if err != nil {
			return netip.Addr{}, errNameSNI
		}
		if sni = sni.Unmap().WithZone(""); sni != localIP {
			return netip.Addr{}, fmt.Errorf("TLS server name %v is not the address the connection came to (%v): no certificate ordered for an address that may not be ours", sni, localIP)
		}
	}
	if !localIP.IsValid() {
		return netip.Addr{}, errors.New("the connection's local address is unknown")
	}
	return localIP, nil
}

func (m *ipCerts) GetCertificate(hi *tls.ClientHelloInfo) (*tls.Certificate, error) {
	var local net.Addr
	if hi.Conn != nil {
		local = hi.Conn.LocalAddr()
	}
	ip, err := pickIP(hi.ServerName, local)
	if errors.Is(err, errNameSNI) {
		if m.names != nil {
			return m.names.GetCertificate(hi)
		}
		return nil, fmt.Errorf("no certificate for %q: this server has only IP address certificates (-hostname is an IP address)", hi.ServerName)
	}
	if err != nil {
		return nil, err
	}
	ctx := hi.Context()
	if ctx == nil {
		ctx = context.Background()
	}
	return m.certFor(ctx, ip)
}

// certFor returns ip's certificate, waiting for an issuance when there is
// no valid one. Concurrent handshakes share one issuance.
func (m *ipCerts) certFor(ctx context.Context, ip netip.Addr) (*tls.Certificate, error) {
	m.mu.Lock()
	e := m.entryLocked(ip)
	if c := m.usableLocked(e); c != nil {
		m.mu.Unlock()
		return c, nil
	}
	if e.flight == nil && m.clock.Now().Before(e.retryAt) {
		err, at := e.err, e.retryAt
		m.mu.Unlock()
		return nil, fmt.Errorf("no certificate for %v: the last attempt failed (%v); the next one is not before %s", ip, err, at.Format(time.RFC3339))
	}
	flight := m.startLocked(ip, e)
	m.mu.Unlock()
	select {
	case <-flight:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if c := m.usableLocked(e); c != nil {
		return c, nil
	}
	if e.err == nil {
		return nil, fmt.Errorf("no certificate for %v", ip)
	}
	return nil, fmt.Errorf("no certificate for %v: %w", ip, e.err)
}

func (m *ipCerts) entryLocked(ip netip.Addr) *ipCertEntry {
	e := m.entries[ip]
	if e == nil {
		e = &ipCertEntry{}
		m.entries[ip] = e
	}
	return e
}

// usableLocked returns e's certificate while it is valid. An expired one
// is never served, even while its renewal keeps failing. The copy's chain
// is clipped, so that appending the meta certificate never writes into
// ours.
func (m *ipCerts) usableLocked(e *ipCertEntry) *tls.Certificate {
	if e.cert == nil || !m.clock.Now().Before(e.cert.Leaf.NotAfter) {
		return nil
	}
	c := *e.cert
	c.Certificate = slices.Clip(c.Certificate)
	return &c
}

// startLocked starts an issuance for ip unless one runs, and returns the
// channel closed when it ends.
func (m *ipCerts) startLocked(ip netip.Addr, e *ipCertEntry) chan struct{} {
	if e.flight != nil {
		return e.flight
	}
	done := make(chan struct{})
	e.flight = done
	go func() {
		defer close(done)
		cert, err := m.acquire(ip)
		m.mu.Lock()
		defer m.mu.Unlock()
		e.flight = nil
		now := m.clock.Now()
		if err != nil {
			e.err = err
			wait := max(e.backoff, ipRetryFirst)
			e.retryAt = now.Add(wait)
			e.backoff = min(2*wait, ipRetryMax)
			if e.cert != nil {
				// A renewal failed: the current certificate serves on
				// until it expires, and the clock tries again.
				m.scheduleLocked(ip, e, wait)
			}
			m.log.Warn().Err(err).Str("ip", ip.String()).Dur("retry_in", wait).Msg("could not obtain an ACME certificate for the IP address")
			return
		}
		e.cert, e.err, e.retryAt, e.backoff = cert, nil, time.Time{}, 0
		wait := renewalTime(cert.Leaf).Sub(now)
		if wait <= 0 {
			// Only a clock far off the CA's gets a certificate already
			// due: renewing at once would loop.
			m.log.Warn().Str("ip", ip.String()).Time("not_after", cert.Leaf.NotAfter).Msg("the new certificate is already due for renewal; is the clock right?")
			wait = ipRetryFirst
		}
		m.scheduleLocked(ip, e, wait)
	}()
	return done
}

// scheduleLocked sets ip's next renewal d from now.
func (m *ipCerts) scheduleLocked(ip netip.Addr, e *ipCertEntry, d time.Duration) {
	if e.renew != nil {
		e.renew.Stop()
	}
	e.renew = m.clock.AfterFunc(d, func() {
		m.mu.Lock()
		defer m.mu.Unlock()
		m.startLocked(ip, m.entryLocked(ip))
	})
}

// acquire returns a certificate for ip: the cached one while it is not
// yet due for renewal (a restart orders nothing), else a new one from the
// CA, cached before it is served.
func (m *ipCerts) acquire(ip netip.Addr) (*tls.Certificate, error) {
	cached, err := m.loadCached(ip)
	switch {
	case err == nil && m.clock.Now().Before(renewalTime(cached.Leaf)):
		m.log.Info().Str("ip", ip.String()).Str("serial", cached.Leaf.SerialNumber.Text(16)).Time("not_after", cached.Leaf.NotAfter).
			Msg("serving the cached ACME certificate for the IP address")
		return cached, nil
	case err != nil && !errors.Is(err, fs.ErrNotExist):
		m.log.Info().Err(err).Str("ip", ip.String()).Msg("not using the cached certificate for the IP address")
	}
	ctx, cancel := context.WithTimeout(context.Background(), ipIssueTimeout)
	defer cancel()
	cert, err := m.obtain(ctx, ip)
	if err != nil {
		return nil, err
	}
	if err := m.store(ip, cert); err != nil {
		return nil, fmt.Errorf("caching the certificate: %w", err)
	}
	leaf := cert.Leaf
	m.log.Info().Str("ip", ip.String()).Str("serial", leaf.SerialNumber.Text(16)).
		Time("not_before", leaf.NotBefore).Time("not_after", leaf.NotAfter).Time("renew_at", renewalTime(leaf)).
		Str("issuer", leaf.Issuer.CommonName).Msg("obtained an ACME certificate for the IP address")
	logDERPMapNode(m.log, ip.String(), "", "clients reach this server by IP address with a CA-signed certificate; add this node (with your region and DERPPort) to your DERP map")
	return cert, nil
}

// certPaths are ip's files in -certdir: the address with an IPv6 address's
// colons made dots, upstream derper's names, so its cache carries over.
func (m *ipCerts) certPaths(ip netip.Addr) (crt, key string) {
	base := strings.ReplaceAll(ip.String(), ":", ".")
	return filepath.Join(m.dir, base+".crt"), filepath.Join(m.dir, base+".key")
}

// loadCached reads ip's cached certificate, if it is valid now, for ip,
// and signed by a CA. For an IPv4 address -certmode=manual keeps its
// self-signed certificate under the same name; that one is not ours to
// serve here.
func (m *ipCerts) loadCached(ip netip.Addr) (*tls.Certificate, error) {
	crt, key := m.certPaths(ip)
	cert, err := tls.LoadX509KeyPair(crt, key)
	if err != nil {
		return nil, err
	}
	leaf, err := x509.ParseCertificate(cert.Certificate[0])
	if err != nil {
		return nil, err
	}
	if now := m.clock.Now(); now.Before(leaf.NotBefore) || !now.Before(leaf.NotAfter) {
		return nil, fmt.Errorf("%s is not valid now (%v to %v)", crt, leaf.NotBefore, leaf.NotAfter)
	}
	if err := leaf.VerifyHostname(ip.String()); err != nil {
		return nil, fmt.Errorf("%s: %w", crt, err)
	}
	if leaf.CheckSignature(leaf.SignatureAlgorithm, leaf.RawTBSCertificate, leaf.Signature) == nil {
		return nil, fmt.Errorf("%s is self-signed (-certmode=manual's), not from the ACME CA", crt)
	}
	cert.Leaf = leaf
	return &cert, nil
}

// store writes ip's key, then its chain, each atomically: a crash leaves
// the old pair or, at worst, a new key beside the old chain, which
// LoadX509KeyPair refuses as a mismatch, so the next start orders anew.
func (m *ipCerts) store(ip netip.Addr, cert *tls.Certificate) error {
	key, ok := cert.PrivateKey.(*ecdsa.PrivateKey)
	if !ok {
		return fmt.Errorf("unexpected key type %T", cert.PrivateKey)
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return err
	}
	var chain []byte
	for _, der := range cert.Certificate {
		chain = append(chain, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})...)
	}
	crtPath, keyPath := m.certPaths(ip)
	if err := writeFileAtomic(keyPath, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER}), 0o600); err != nil {
		return err
	}
	return writeFileAtomic(crtPath, chain, 0o644)
}

// order runs one ACME issuance for ip: account, order (with the
// shortlived profile where the CA has it), http-01 validation, and a
// fresh P-256 key's certificate.
func (m *ipCerts) order(ctx context.Context, ip netip.Addr) (*tls.Certificate, error) {
	var contact []string
	if m.email != "" {
		contact = []string{"mailto:" + m.email}
	}
	if _, err := m.client.Register(ctx, &acme.Account{Contact: contact}, acme.AcceptTOS); err != nil && !accountExists(err) {
		return nil, fmt.Errorf("ACME account at %s: %w", m.client.DirectoryURL, err)
	}
	dir, err := m.client.Discover(ctx)
	if err != nil {
		return nil, fmt.Errorf("ACME directory %s: %w", m.client.DirectoryURL, err)
	}
	var opts []acme.OrderOption
	if p := pickProfile(dir.Profiles); p != "" {
		opts = append(opts, acme.WithOrderIssuanceProfile(p))
	}
	o, err := m.client.AuthorizeOrder(ctx, acme.IPIDs(ip.String()), opts...)
	if err != nil {
		return nil, fmt.Errorf("new order: %w", err)
	}
	for _, u := range o.AuthzURLs {
		if err := m.authorize(ctx, u, ip); err != nil {
			return nil, err
		}
	}
	if o, err = m.client.WaitOrder(ctx, o.URI); err != nil {
		return nil, fmt.Errorf("waiting for the order: %w", err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{IPAddresses: []net.IP{ip.AsSlice()}}, key)
	if err != nil {
		return nil, err
	}
	// From the order, not its finalize URL alone: a CA still processing
	// the CSR is polled at the order's URL.
	der, _, err := m.client.CreateCertFromOrder(ctx, o, csr, true)
	if err != nil {
		return nil, fmt.Errorf("finalizing the order: %w", err)
	}
	leaf, err := x509.ParseCertificate(der[0])
	if err != nil {
		return nil, fmt.Errorf("the issued certificate: %w", err)
	}
	if err := leaf.VerifyHostname(ip.String()); err != nil {
		return nil, fmt.Errorf("the issued certificate: %w", err)
	}
	return &tls.Certificate{Certificate: der, PrivateKey: key, Leaf: leaf}, nil
}

// pickProfile is the profile an IP order asks for: shortlived where the
// CA offers it, else none, so that a CA without profiles (or without that
// one) issues with its default rather than refusing the order outright.
func pickProfile(offered map[acme.ProfileName]string) acme.ProfileName {
	if _, ok := offered[shortlivedProfile]; ok {
		return shortlivedProfile
	}
	return ""
}

// authorize completes one authorization with http-01: the CA fetches the
// token from the port-80 listener at the address.
func (m *ipCerts) authorize(ctx context.Context, url string, ip netip.Addr) error {
	z, err := m.client.GetAuthorization(ctx, url)
	if err != nil {
		return fmt.Errorf("authorization: %w", err)
	}
	switch z.Status {
	case acme.StatusValid:
		return nil // validated for an earlier order and still valid
	case acme.StatusPending:
	default:
		return fmt.Errorf("authorization for %v is %s", ip, z.Status)
	}
	var chal *acme.Challenge
	for _, c := range z.Challenges {
		if c.Type == "http-01" {
			chal = c
		}
	}
	if chal == nil {
		return fmt.Errorf("the CA offers no http-01 challenge for %v, the only one derpd answers for IP addresses", ip)
	}
	body, err := m.client.HTTP01ChallengeResponse(chal.Token)
	if err != nil {
		return err
	}
	path := m.client.HTTP01ChallengePath(chal.Token)
	m.mu.Lock()
	m.tokens[path] = body
	m.mu.Unlock()
	defer func() {
		m.mu.Lock()
		delete(m.tokens, path)
		m.mu.Unlock()
	}()
	if _, err := m.client.Accept(ctx, chal); err != nil {
		return fmt.Errorf("accepting the http-01 challenge: %w", err)
	}
	if _, err := m.client.WaitAuthorization(ctx, z.URI); err != nil {
		return fmt.Errorf("the CA did not validate http-01 at http://%v%s (is the port-80 listener reachable?): %w", ip, path, err)
	}
	return nil
}

// HTTPHandler answers the http-01 tokens of IP orders, passes the
// hostname's to its autocert manager, and everything else to fallback.
func (m *ipCerts) HTTPHandler(fallback http.Handler) http.Handler {
	next := fallback
	if m.names != nil {
		// autocert's handler, not m.names.HTTPHandler: the requests are
		// logged once, below.
		next = m.names.m.HTTPHandler(fallback)
	}
	return logChallenges(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.HasPrefix(r.URL.Path, acmeChallengePrefix) {
			m.mu.Lock()
			body, ok := m.tokens[r.URL.Path]
			m.mu.Unlock()
			switch {
			case ok:
				w.Header().Set("Content-Type", "text/plain")
				io.WriteString(w, body)
				return
			case m.names == nil:
				http.NotFound(w, r)
				return
			}
		}
		next.ServeHTTP(w, r)
	}), m.log)
}

func (m *ipCerts) NextProtos() []string {
	if m.names != nil {
		return m.names.NextProtos()
	}
	return nil
}

func (m *ipCerts) Reload() error { return errNothingToReload }

// accountExists reports whether Register failed only because the key
// already has an account, which is how every issuance after the first
// finds it.
func accountExists(err error) bool {
	var ae *acme.Error
	return errors.Is(err, acme.ErrAccountAlreadyExists) || (errors.As(err, &ae) && ae.StatusCode == http.StatusConflict)
}

// loadOrCreateAccountKey reads the PEM EC key at path, or makes one and
// writes it there.
func loadOrCreateAccountKey(path string) (*ecdsa.PrivateKey, error) {
	b, err := os.ReadFile(path)
	if err == nil {
		block, _ := pem.Decode(b)
		if block == nil {
			return nil, fmt.Errorf("%s: no PEM block", path)
		}
		return x509.ParseECPrivateKey(block.Bytes)
	}
	if !errors.Is(err, fs.ErrNotExist) {
		return nil, err
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	der, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return nil, err
	}
	return key, writeFileAtomic(path, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der}), 0o600)
}

// writeFileAtomic replaces path with data: a temporary file beside it,
// synced, then renamed over it, so a reader (or a restart after a crash)
// sees the old file or the new one, never half of one.
func writeFileAtomic(path string, data []byte, mode os.FileMode) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), filepath.Base(path)+".tmp*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name()) // nothing left after a successful rename
	if err := tmp.Chmod(mode); err != nil {
		tmp.Close()
		return err
	}
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}
