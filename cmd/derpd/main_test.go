package main

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/derpd/derpd/wire"
)

func TestFlagDefaultsMatchUpstream(t *testing.T) {
	o, err := parseFlags(nil)
	if err != nil {
		t.Fatal(err)
	}
	checks := []struct {
		name      string
		got, want any
	}{
		{"a", o.addr, ":443"},
		{"http-port", o.httpPort, 80},
		{"stun-port", o.stunPort, 3478},
		{"stun", o.runSTUN, true},
		{"derp", o.runDERP, true},
		{"hostname", o.hostname, "derp.tailscale.com"},
		{"certmode", o.certMode, "letsencrypt"},
		{"verify-client-url-fail-open", o.verifyFailOpen, true},
		{"tcp-keepalive-time", o.tcpKeepAlive, 10 * time.Minute},
		{"tcp-user-timeout", o.tcpUserTimeout, 15 * time.Second},
		{"tcp-write-timeout", o.tcpWriteTimeout, 2 * time.Second},
		{"secrets-path-prefix", o.secretsPrefix, "prod/derp"},
	}
	for _, c := range checks {
		if c.got != c.want {
			t.Errorf("-%s default = %v, want %v", c.name, c.got, c.want)
		}
	}
	if !isInf(o.acceptLimit) {
		t.Errorf("-accept-connection-limit default = %v, want +Inf", o.acceptLimit)
	}
}

func TestEveryUpstreamFlagIsAccepted(t *testing.T) {
	// Every derper flag must parse, so a derper command line never fails
	// on an unknown flag; unsupported features are refused separately,
	// with a message naming them.
	upstream := []string{"a", "http-port", "stun-port", "stun", "derp", "c", "dev", "version",
		"hostname", "certmode", "certdir", "acme-email", "acme-eab-kid", "acme-eab-key",
		"acme-ip-certs", "home", "mesh-psk-file", "mesh-with", "secrets-url",
		"secrets-path-prefix", "secrets-cache-dir", "bootstrap-dns-names",
		"unpublished-bootstrap-dns-names", "verify-clients", "socket", "verify-client-url",
		"verify-client-url-fail-open", "accept-connection-limit", "accept-connection-burst",
		"rate-config", "tcp-keepalive-time", "tcp-user-timeout", "tcp-write-timeout", "ace"}
	fs := newFlagSet(&options{})
	for _, name := range upstream {
		if fs.Lookup(name) == nil {
			t.Errorf("flag -%s is missing", name)
		}
	}
}

func TestDevModeListensOn3340(t *testing.T) {
	o, err := parseFlags([]string{"-dev", "-a", ":9999"})
	if err != nil {
		t.Fatal(err)
	}
	if o.addr != ":3340" || o.serveTLS() {
		t.Fatalf("dev mode addr=%q tls=%v, want :3340 plain", o.addr, o.serveTLS())
	}
	if err := o.checkSupported(); err != nil {
		t.Fatalf("dev mode refused: %v", err)
	}
}

func TestUnsupportedFeaturesAreRefusedByName(t *testing.T) {
	for _, c := range []struct {
		args []string
		flag string // the refusal must name it
	}{
		{[]string{"-a", ":8080", "-mesh-with", "a/b/c"}, "-mesh-with"},
		{[]string{"-a", ":8080", "-mesh-dns", "10.0.0.1"}, "-mesh-dns"},
		{[]string{"-a", ":8080", "-mesh-dns", "derp.example.com", "-mesh-dns-interval", "0s"}, "-mesh-dns-interval"},
		{[]string{"-a", ":8080", "-mesh-dns-resolver", "10.0.0.53"}, "-mesh-dns-resolver"},
		{[]string{"-a", ":8080", "-mesh-max-peer-keys", "0"}, "-mesh-max-peer-keys"},
		{[]string{"-a", ":443", "-certmode", "gcp", "-acme-ip-certs"}, "-acme-ip-certs"},
		{[]string{"-a", ":8080", "-secrets-url", "https://setec.example"}, "-secrets-url"},
		{[]string{"-a", ":8080", "-ace"}, "-ace"},
		{[]string{"-a", ":8080", "-rate-config", "/nonexistent/rate.json"}, "-rate-config"},
		{[]string{"-a", ":8080", "-certmode", "bogus"}, "-certmode"},
		{[]string{"-a", ":8080", "-log-format", "xml"}, "-log-format"},
		{[]string{"-a", ":8080", "-log-level", "loud"}, "-log-level"},
		{[]string{"-a", ":8080", "-home", "bogus"}, "-home"},
		{[]string{"-a", ":8080", "-flows-max", "0"}, "-flows-max"},
		{[]string{"-a", ":8080", "-flows-sweep", "0s"}, "-flows-sweep"},
		{[]string{"-a", ":8080", "-rejects-max", "-1"}, "-rejects-max"},
	} {
		expectRefused(t, c.args, c.flag)
	}
	// Supported configurations pass: plain HTTP with admission control,
	// TLS with Let's Encrypt, manual certificates, bootstrap DNS.
	for _, args := range [][]string{
		{"-a", "127.0.0.1:8080", "-verify-client-url", "http://127.0.0.1:1/"},
		{"-a", ":443", "-hostname", "derp.example.com"},
		{"-a", ":8443", "-certmode", "manual"},
		{"-a", ":8080", "-bootstrap-dns-names", "example.com", "-unpublished-bootstrap-dns-names", "a.example/b.example"},
		{"-a", ":443", "-mesh-with", "derp2.example.com,derp3.example.com:8443/10.0.0.3,", "-mesh-dns", "derp.example.com:8443", "-mesh-dns-resolver", "10.0.0.53:53"},
	} {
		o, _ := parseFlags(args)
		if err := o.checkSupported(); err != nil {
			t.Errorf("%q refused: %v", args, err)
		}
	}
}

func TestKeyFileCreatedPrivateAndReused(t *testing.T) {
	path := filepath.Join(t.TempDir(), "sub", "derper.key")
	k1, created, err := loadOrCreateKey(path)
	if err != nil || !created {
		t.Fatalf("first load: created=%v err=%v", created, err)
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Fatalf("key file mode %v, want 0600", fi.Mode().Perm())
	}
	var raw map[string]string
	b, _ := os.ReadFile(path)
	if err := json.Unmarshal(b, &raw); err != nil || !strings.HasPrefix(raw["PrivateKey"], "privkey:") {
		t.Fatalf("key file %q is not {\"PrivateKey\":\"privkey:…\"}", b)
	}
	k2, created, err := loadOrCreateKey(path)
	if err != nil || created || k2 != k1 {
		t.Fatalf("second load: created=%v err=%v same=%v", created, err, k2 == k1)
	}
	os.WriteFile(path, []byte("{not json"), 0o600)
	if _, _, err := loadOrCreateKey(path); err == nil {
		t.Fatal("corrupt key file accepted")
	}
}

func TestMeshKeyFile(t *testing.T) {
	dir := t.TempDir()
	hex64 := strings.Repeat("ab", 32)
	write := func(name, content string) string {
		p := filepath.Join(dir, name)
		os.WriteFile(p, []byte(content), 0o600)
		return p
	}
	k, err := loadMeshKey(write("ok", "  \n"+hex64+"\n\t"), true)
	if err != nil || k.IsZero() || k.Hex() != hex64 {
		t.Fatalf("whitespace-padded key: %v %v", k, err)
	}
	for name, content := range map[string]string{"63": hex64[:63], "65": hex64 + "a", "nothex": strings.Repeat("zz", 32)} {
		if _, err := loadMeshKey(write(name, content), true); err == nil {
			t.Errorf("mesh key of %s accepted", name)
		}
	}
	if k, err := loadMeshKey(write("empty", "\n"), true); err != nil || !k.IsZero() {
		t.Fatalf("empty file: %v %v", k, err)
	}
	if _, err := loadMeshKey(filepath.Join(dir, "missing"), true); err == nil {
		t.Fatal("explicitly named missing file accepted")
	}
	if _, err := loadMeshKey(filepath.Join(dir, "missing"), false); err != nil {
		t.Fatalf("missing default file: %v", err)
	}
}

func TestGenerate204Challenge(t *testing.T) {
	for challenge, want := range map[string]string{
		"ts_1.2.3.4":                 "response ts_1.2.3.4",
		"has space":                  "",
		strings.Repeat("a", 64):      "response " + strings.Repeat("a", 64),
		strings.Repeat("a", 65):      "",
		"derp1.tailscale.com:443_-x": "response derp1.tailscale.com:443_-x",
	} {
		rec := httptest.NewRecorder()
		req := httptest.NewRequest("GET", "/generate_204", nil)
		req.Header.Set("X-Tailscale-Challenge", challenge)
		serveNoContent(rec, req)
		if rec.Code != http.StatusNoContent {
			t.Fatalf("status %d", rec.Code)
		}
		if got := rec.Header().Get("X-Tailscale-Response"); got != want {
			t.Errorf("challenge %q: response %q, want %q", challenge, got, want)
		}
		if got := rec.Header().Get("Cache-Control"); got != "no-cache, no-store, must-revalidate, no-transform, max-age=0" {
			t.Errorf("Cache-Control %q", got)
		}
	}
}

func TestUpgradeResponseIsExact(t *testing.T) {
	var pub wire.NodePublic
	pub[0] = 0xab
	got := string(upgradeResponse(pub))
	want := "HTTP/1.1 101 Switching Protocols\r\nUpgrade: DERP\r\nConnection: Upgrade\r\nDerp-Version: 2\r\nDerp-Public-Key: ab" +
		strings.Repeat("00", 31) + "\r\n\r\n"
	if got != want {
		t.Fatalf("got %q\nwant %q", got, want)
	}
}

// expectRefused requires args to be refused at start-up with a message
// naming flag.
func expectRefused(t *testing.T, args []string, flag string) {
	t.Helper()
	o, err := parseFlags(args)
	if err != nil {
		t.Fatal(err)
	}
	err = o.checkSupported()
	if err == nil {
		t.Errorf("%q accepted, want a clear refusal", args)
		return
	}
	if !strings.Contains(err.Error(), flag) {
		t.Errorf("%q refused with %q, which does not name %s", args, err, flag)
	}
}
