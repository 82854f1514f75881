package interop

import (
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/derpd/derpd/interop/harness"
	"tailscale.com/types/key"
)

// outsideAddr is an address of this machine other than loopback: a
// connection to it comes from it, so the server sees a client that is
// neither loopback nor a Tailscale address, as a stranger on the network
// would be.
func outsideAddr(t *testing.T) string {
	t.Helper()
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		t.Fatal(err)
	}
	var v6 string
	for _, a := range addrs {
		ipn, ok := a.(*net.IPNet)
		if !ok || !ipn.IP.IsGlobalUnicast() && !ipn.IP.IsPrivate() {
			continue
		}
		if ipn.IP.To4() != nil {
			return ipn.IP.String()
		}
		if v6 == "" {
			v6 = ipn.IP.String()
		}
	}
	if v6 == "" {
		t.Skip("this machine has no address but loopback: nothing to reach the server from outside")
	}
	return v6
}

// debugKeyFile writes a debug key and returns TS_DEBUG_KEY_PATH=….
func debugKeyFile(t *testing.T, key string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "debug.key")
	if err := os.WriteFile(path, []byte(key+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return "TS_DEBUG_KEY_PATH=" + path
}

// status GETs url with c (nil: a plain client) and returns the status.
func status(t *testing.T, c *http.Client, url string) int {
	t.Helper()
	if c == nil {
		c = &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	}
	res, err := c.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	io.Copy(io.Discard, res.Body)
	res.Body.Close()
	return res.StatusCode
}

// The debug key opens /debug on the TLS listener, as upstream's does, and
// never on port 80, where it would travel in clear text. derpd only:
// upstream accepts it on port 80 too.
func TestDebugKeyRefusedOverPort80(t *testing.T) {
	if harness.TargetFromEnv() != harness.Derpd {
		t.Skip("upstream derper accepts the debug key over plain HTTP")
	}
	host := outsideAddr(t)
	p80, err := harness.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	srv, _, _ := startTLS(t, harness.Options{Host: host, HTTPPort: p80, Env: []string{debugKeyFile(t, "open-sesame")}})
	https := srv.HTTPClient()
	if got := status(t, https, srv.BaseURL()+"/debug/"); got != http.StatusForbidden {
		t.Fatalf("/debug/ from %s without the key: %d, want 403 (is the address really not trusted?)", host, got)
	}
	if got := status(t, https, srv.BaseURL()+"/debug/?debugkey=open-sesame"); got != 200 {
		t.Errorf("/debug/ with the key over TLS: %d, want 200", got)
	}
	plain := "http://" + net.JoinHostPort(host, strconv.Itoa(p80))
	waitListening(t, net.JoinHostPort(host, strconv.Itoa(p80)))
	for _, path := range []string{"/debug/?debugkey=open-sesame", "/debug/varz?debugkey=open-sesame", "/debug/mesh?format=json&debugkey=open-sesame"} {
		if got := status(t, nil, plain+path); got != http.StatusForbidden {
			t.Errorf("%s on port 80: %d, want 403", path, got)
		}
	}
	// Nor does it earn port 80's redirect to the debug index.
	res, err := (&http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}).Get(plain + "/?debugkey=open-sesame")
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if loc := res.Header.Get("Location"); strings.Contains(loc, "/debug/") {
		t.Errorf("port 80 / with the key redirects to %q", loc)
	}
}

// waitListening waits until addr accepts connections (port 80 is served
// by a goroutine of its own; the harness waits for the main listener).
func waitListening(t *testing.T, addr string) {
	t.Helper()
	deadline := time.Now().Add(harness.Wait)
	for {
		c, err := net.Dial("tcp", addr)
		if err == nil {
			c.Close()
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: %v", addr, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// -debug-addr serves /debug/ and nothing else, under the same rule as the
// main listener (the key aside, which it ignores); -debug-allow admits a
// network on both.
func TestDebugAddrAndDebugAllow(t *testing.T) {
	if harness.TargetFromEnv() != harness.Derpd {
		t.Skip("-debug-addr and -debug-allow are derpd's")
	}
	host := outsideAddr(t)
	port, err := harness.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	debugAddr := net.JoinHostPort(host, strconv.Itoa(port))
	keyEnv := debugKeyFile(t, "open-sesame")
	srv := start(t, harness.Options{Host: host, Args: []string{"-debug-addr", debugAddr}, Env: []string{keyEnv}})
	main, debug := srv.BaseURL(), "http://"+debugAddr
	for _, c := range []struct {
		url  string
		want int
	}{
		{main + "/debug/", 403},
		{debug + "/debug/", 403},
		{debug + "/debug/varz", 403},
		{debug + "/debug/?debugkey=open-sesame", 403}, // clear text: ignored
		{main + "/debug/?debugkey=open-sesame", 200},  // the main listener, as upstream
		{debug + "/", 404},
		{debug + "/derp", 404},
		{debug + "/derp/probe", 404},
		{debug + "/generate_204", 404},
		{debug + "/bootstrap-dns", 404},
	} {
		if got := status(t, nil, c.url); got != c.want {
			t.Errorf("GET %s from %s: %d, want %d", c.url, host, got, c.want)
		}
	}
	srv.Stop()

	// The same server admitting this machine's network.
	bits := 32
	if strings.Contains(host, ":") {
		bits = 128
	}
	srv = start(t, harness.Options{Host: host, Env: []string{keyEnv},
		Args: []string{"-debug-addr", debugAddr, "-debug-allow", "198.51.100.0/24," + host + "/" + strconv.Itoa(bits)}})
	main = srv.BaseURL()
	for _, c := range []struct {
		url  string
		want int
	}{
		{main + "/debug/", 200},
		{debug + "/debug/", 200},
		{debug + "/debug/varz", 200},
		{debug + "/debug/mesh?format=json", 200},
		{debug + "/", 404},
		{debug + "/derp", 404},
	} {
		if got := status(t, nil, c.url); got != c.want {
			t.Errorf("with -debug-allow, GET %s from %s: %d, want %d", c.url, host, got, c.want)
		}
	}
	// The relay is not on the debug listener: a DERP upgrade there fails.
	if _, err := harness.Dial(debug+"/derp", key.NodePrivate{}); err == nil {
		t.Error("a DERP client connected through -debug-addr")
	}
}

// A -debug-addr that cannot be listened on stops derpd at start, with a
// message naming the flag.
func TestDebugAddrInUseRefused(t *testing.T) {
	if harness.TargetFromEnv() != harness.Derpd {
		t.Skip("-debug-addr is derpd's")
	}
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	_, err = harness.Launch(harness.Options{Args: []string{"-debug-addr", taken.Addr().String()}}, t.TempDir())
	if err == nil || !strings.Contains(err.Error(), "-debug-addr") {
		t.Fatalf("derpd with -debug-addr in use: %v, want a refusal naming -debug-addr", err)
	}
}
