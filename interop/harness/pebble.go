package harness

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// Pebble is Let's Encrypt's test ACME server (github.com/letsencrypt/pebble,
// pinned in go.mod as a tool), run as a process on loopback with a small
// DNS server of the test's own, so that derpd can be pointed at a real CA
// with -acme-directory-url.
//
// Pebble validates challenges by connecting to the address its DNS
// answers for a name (or to the address itself, for an IP identifier):
// HTTP-01 at PebbleOptions.HTTPPort, TLS-ALPN-01 at TLSPort. One port of
// each for the whole server is why a test that wants only one challenge
// to be possible points the other at a closed port.
type Pebble struct {
	DirectoryURL string         // for derpd's -acme-directory-url
	Roots        *x509.CertPool // Pebble's issuing root: what clients in the test trust, and nothing else
	CAFile       string         // PEM of the CA of Pebble's own HTTPS listener: derpd's SSL_CERT_FILE

	cmd    *exec.Cmd
	out    *syncBuffer
	exited chan struct{}
}

// PebbleOptions configure a Pebble.
type PebbleOptions struct {
	HTTPPort int // where HTTP-01 validation connects (derpd's -http-port)
	TLSPort  int // where TLS-ALPN-01 validation connects (derpd's TLS port)
	// Profiles are the certificate profiles Pebble advertises, by name,
	// with each one's validity. An order without a profile gets one of
	// them at random (Pebble's way), so a test that cares gives one.
	// Empty: "default", valid for an hour.
	Profiles map[string]time.Duration
	// Hosts are the A records of Pebble's DNS server; any other name does
	// not exist.
	Hosts map[string]netip.Addr
}

const pebbleKind Kind = "pebble"

// pebbleBinary builds Pebble once per process, beside the servers.
func pebbleBinary() (string, error) {
	buildMu.Lock()
	defer buildMu.Unlock()
	if p, ok := built[pebbleKind]; ok {
		return p, nil
	}
	if buildDir == "" {
		d, err := os.MkdirTemp("", "derpd-interop-bin")
		if err != nil {
			return "", err
		}
		buildDir = d
	}
	out := filepath.Join(buildDir, string(pebbleKind))
	cmd := exec.Command("go", "build", "-o", out, "github.com/letsencrypt/pebble/v2/cmd/pebble")
	cmd.Dir = ModuleDir()
	if b, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("building pebble: %v\n%s", err, b)
	}
	built[pebbleKind] = out
	return out, nil
}

// StartPebble runs Pebble and its DNS server until the test ends, and
// waits until Pebble hands out its issuing root. Its output is logged if
// the test failed.
func StartPebble(tb testing.TB, opts PebbleOptions) *Pebble {
	tb.Helper()
	bin, err := pebbleBinary()
	if err != nil {
		tb.Fatal(err)
	}
	dir := tb.TempDir()
	dnsAddr := startPebbleDNS(tb, opts.Hosts)

	// Pebble's own HTTPS certificate, from a CA derpd is told to trust.
	ca := NewCA(tb)
	ca.Issue(tb, dir, "127.0.0.1", 1)
	p := &Pebble{CAFile: filepath.Join(dir, "pebble-ca.pem"), out: &syncBuffer{}, exited: make(chan struct{})}
	if err := ca.WritePEM(p.CAFile); err != nil {
		tb.Fatal(err)
	}

	type profile struct {
		Description    string
		ValidityPeriod uint64 // seconds
	}
	profiles := map[string]profile{}
	for name, validity := range opts.Profiles {
		profiles[name] = profile{Description: name, ValidityPeriod: uint64(validity / time.Second)}
	}
	if len(profiles) == 0 {
		profiles["default"] = profile{Description: "default", ValidityPeriod: 3600}
	}
	listen, management := freeLoopback(tb), freeLoopback(tb)
	cfg := map[string]any{"pebble": map[string]any{
		"listenAddress":           listen,
		"managementListenAddress": management,
		"httpPort":                opts.HTTPPort,
		"tlsPort":                 opts.TLSPort,
		"certificate":             filepath.Join(dir, "127.0.0.1.crt"),
		"privateKey":              filepath.Join(dir, "127.0.0.1.key"),
		"keyAlgorithm":            "ecdsa", // quicker to start than RSA
		"profiles":                profiles,
		// Seconds a client waits between polls of an authorization or
		// an order: the shortest, so issuance takes about a second.
		"retryAfter": map[string]int{"authz": 1, "order": 1},
	}}
	b, _ := json.Marshal(cfg)
	cfgPath := filepath.Join(dir, "pebble.json")
	if err := os.WriteFile(cfgPath, b, 0o600); err != nil {
		tb.Fatal(err)
	}
	p.cmd = exec.Command(bin, "-config", cfgPath, "-dnsserver", dnsAddr)
	p.cmd.Stdout, p.cmd.Stderr = p.out, p.out
	p.cmd.Env = append(os.Environ(),
		"PEBBLE_VA_NOSLEEP=1",      // validate at once, not after a random sleep of up to 5 s
		"PEBBLE_WFE_NONCEREJECT=0", // accept every good nonce (by default it rejects 5%, to test clients' retries)
		"PEBBLE_AUTHZREUSE=0",      // every order validates afresh, renewals too
	)
	if err := p.cmd.Start(); err != nil {
		tb.Fatal(err)
	}
	go func() {
		p.cmd.Wait()
		close(p.exited)
	}()
	tb.Cleanup(func() {
		p.cmd.Process.Kill()
		<-p.exited
		if tb.Failed() {
			tb.Logf("pebble output:\n%s", p.Output())
		}
	})
	p.DirectoryURL = "https://" + listen + "/dir"
	if p.Roots, err = p.fetchRoot(ca.Pool, "https://"+management+"/roots/0"); err != nil {
		tb.Fatalf("pebble did not start: %v\n%s", err, p.Output())
	}
	return p
}

// fetchRoot polls Pebble's management listener until it answers with
// the issuing root, which Pebble makes afresh at every start.
func (p *Pebble) fetchRoot(trust *x509.CertPool, url string) (*x509.CertPool, error) {
	client := &http.Client{Timeout: Wait, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: trust}}}
	defer client.CloseIdleConnections()
	deadline := time.Now().Add(Wait)
	for {
		select {
		case <-p.exited:
			return nil, errors.New("pebble exited")
		default:
		}
		res, err := client.Get(url)
		if err == nil {
			body, _ := io.ReadAll(res.Body)
			res.Body.Close()
			block, _ := pem.Decode(body)
			if res.StatusCode == http.StatusOK && block != nil {
				root, err := x509.ParseCertificate(block.Bytes)
				if err != nil {
					return nil, err
				}
				pool := x509.NewCertPool()
				pool.AddCert(root)
				return pool, nil
			}
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("no root at %s: %v", url, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Output is everything Pebble logged: among it, a line per HTTP-01
// validation ("Attempting to validate w/ HTTP: <url>"), per finished
// validation ("authz … set VALID" or "set INVALID") and per certificate
// issued ("Issued certificate serial …").
func (p *Pebble) Output() string { return p.out.String() }

// Issued counts the certificates Pebble has issued.
func (p *Pebble) Issued() int { return strings.Count(p.Output(), "Issued certificate serial") }

// startPebbleDNS answers Pebble's lookups (it asks over TCP): A records
// from hosts, no AAAA, and NXDOMAIN for any other name.
func startPebbleDNS(tb testing.TB, hosts map[string]netip.Addr) string {
	tb.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	srv := &dns.Server{Listener: ln, Handler: dns.HandlerFunc(func(w dns.ResponseWriter, q *dns.Msg) {
		m := new(dns.Msg)
		m.SetReply(q)
		for _, question := range q.Question {
			ip, ok := hosts[strings.ToLower(strings.TrimSuffix(question.Name, "."))]
			switch {
			case !ok:
				m.Rcode = dns.RcodeNameError
			case question.Qtype == dns.TypeA && ip.Is4():
				m.Answer = append(m.Answer, &dns.A{
					Hdr: dns.RR_Header{Name: question.Name, Rrtype: dns.TypeA, Class: dns.ClassINET},
					A:   ip.AsSlice(),
				})
			}
		}
		w.WriteMsg(m)
	})}
	go srv.ActivateAndServe()
	tb.Cleanup(func() { srv.Shutdown() })
	return ln.Addr().String()
}

func freeLoopback(tb testing.TB) string {
	tb.Helper()
	port, err := FreePort()
	if err != nil {
		tb.Fatal(err)
	}
	return fmt.Sprintf("127.0.0.1:%d", port)
}
