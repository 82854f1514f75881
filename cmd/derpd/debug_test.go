package main

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"
)

func TestDebugAccessRule(t *testing.T) {
	s := &server{}
	for addr, want := range map[string]bool{
		"127.0.0.1:1":           true,
		"[::1]:1":               true,
		"100.64.0.7:1":          true,
		"100.115.92.5:1":        false, // ChromeOS VM range inside CGNAT
		"[fd7a:115c:a1e0::1]:1": true,
		"192.0.2.1:1":           false,
		"[::ffff:127.0.0.1]:1":  true,
	} {
		req := httptest.NewRequest("GET", "/debug/", nil)
		req.RemoteAddr = addr
		if got := s.debugAllowed(req); got != want {
			t.Errorf("debug from %s = %v, want %v", addr, got, want)
		}
	}
	req := httptest.NewRequest("GET", "/debug/", nil)
	req.RemoteAddr = "127.0.0.1:1"
	req.Header.Set("X-Forwarded-For", "192.0.2.1")
	if s.debugAllowed(req) {
		t.Error("proxied request from loopback allowed without the debug key")
	}
	t.Setenv("TS_DEBUG_TRUSTED_CIDRS", "192.0.2.0/24")
	t.Setenv("TS_ALLOW_DEBUG_IP", "198.51.100.3")
	for addr, want := range map[string]bool{"192.0.2.9:1": true, "198.51.100.3:1": true, "198.51.100.4:1": false} {
		req = httptest.NewRequest("GET", "/debug/", nil)
		req.RemoteAddr = addr
		if got := s.debugAllowed(req); got != want {
			t.Errorf("debug from %s with the environment's allowances = %v, want %v", addr, got, want)
		}
	}
}

func TestDebugAllowWidensAccess(t *testing.T) {
	allow, err := parseDebugAllow("10.20.0.0/16, 203.0.113.9,::ffff:198.51.100.0/120,2001:db8::/32,")
	if err != nil {
		t.Fatal(err)
	}
	s := &server{debugAllow: allow}
	for addr, want := range map[string]bool{
		"10.20.3.4:1":             true,
		"10.21.0.1:1":             false,
		"203.0.113.9:1":           true,
		"203.0.113.10:1":          false,
		"198.51.100.77:1":         true, // written as an IPv4-mapped prefix
		"[::ffff:10.20.0.1]:1":    true, // a dual-stack socket's view of an IPv4 peer
		"[2001:db8:1::5]:1":       true,
		"[2001:db9::1]:1":         false,
		"127.0.0.1:1":             true, // still, as upstream
		"[fd7a:115c:a1e0::9]:443": true,
	} {
		req := httptest.NewRequest("GET", "/debug/", nil)
		req.RemoteAddr = addr
		if got := s.debugAllowed(req); got != want {
			t.Errorf("debug from %s with -debug-allow = %v, want %v", addr, got, want)
		}
	}
	req := httptest.NewRequest("GET", "/debug/", nil)
	req.RemoteAddr = "10.20.3.4:1"
	req.Header.Set("X-Forwarded-For", "192.0.2.1")
	if s.debugAllowed(req) {
		t.Error("proxied request from an allowed network let in without the key")
	}
}

// writeDebugKey points TS_DEBUG_KEY_PATH at a file holding key (with the
// whitespace an editor leaves, which must not matter).
func writeDebugKey(t *testing.T, key string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "debugkey")
	if err := os.WriteFile(path, []byte(" "+key+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("TS_DEBUG_KEY_PATH", path)
}

func TestDebugKey(t *testing.T) {
	writeDebugKey(t, "sesame")
	s := &server{}
	do := func(method, target string, clearText bool, xff string) debugAdmission {
		req := httptest.NewRequest(method, target, nil)
		req.RemoteAddr = "192.0.2.1:5"
		if xff != "" {
			req.Header.Set("X-Forwarded-For", xff)
		}
		if clearText {
			req = viaClearText(req)
		}
		return s.debugAdmit(req)
	}
	for _, c := range []struct {
		method, target string
		clearText      bool
		xff            string
		want           debugAdmission
	}{
		{"GET", "/debug/?debugkey=sesame", false, "", debugByKey},
		{"GET", "/debug/?debugkey=sesame", false, "198.51.100.1", debugByKey}, // the key is for proxies
		{"GET", "/debug/?debugkey=sesamE", false, "", debugDenied},
		{"GET", "/debug/?debugkey=", false, "", debugDenied},
		{"POST", "/debug/?debugkey=sesame", false, "", debugDenied}, // GET only, as upstream
		{"GET", "/debug/?debugkey=sesame", true, "", debugDenied},   // port 80, -debug-addr
	} {
		if got := do(c.method, c.target, c.clearText, c.xff); got != c.want {
			t.Errorf("%s %s clear=%v xff=%q: admission %v, want %v", c.method, c.target, c.clearText, c.xff, got, c.want)
		}
	}
	// Loopback is let in over clear text too; only the key is ignored.
	req := viaClearText(httptest.NewRequest("GET", "/debug/?debugkey=wrong", nil))
	req.RemoteAddr = "127.0.0.1:5"
	if s.debugAdmit(req) != debugByAddress {
		t.Error("loopback over a side listener refused")
	}
}

// The port-80 listener passes /debug to the main router; a debug key
// sent over it must open nothing, while the same key over the main
// listener does.
func TestDebugKeyIgnoredOnPort80(t *testing.T) {
	writeDebugKey(t, "sesame")
	s := &server{opts: &options{hostname: "derp.example.com"}, started: time.Now()}
	debug := s.debugHandler()
	mux := http.NewServeMux()
	mux.Handle("/debug/", debug)
	p80 := s.port80Handler(mux)
	get := func(h http.Handler, target, remote string) int {
		req := httptest.NewRequest("GET", target, nil)
		req.RemoteAddr = remote
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		return rec.Code
	}
	if code := get(mux, "/debug/?debugkey=sesame", "192.0.2.1:5"); code != 200 {
		t.Fatalf("key on the main listener: %d, want 200", code)
	}
	if code := get(p80, "/debug/?debugkey=sesame", "192.0.2.1:5"); code != http.StatusForbidden {
		t.Errorf("key on port 80: %d, want 403", code)
	}
	if code := get(p80, "/debug/varz?debugkey=sesame", "192.0.2.1:5"); code != http.StatusForbidden {
		t.Errorf("key on port 80 for /debug/varz: %d, want 403", code)
	}
	if code := get(p80, "/debug/", "127.0.0.1:5"); code != 200 {
		t.Errorf("loopback on port 80: %d, want 200", code)
	}
	// Nor does the key earn the redirect to the debug index.
	req := httptest.NewRequest("GET", "/?debugkey=sesame", nil)
	req.RemoteAddr = "192.0.2.1:5"
	rec := httptest.NewRecorder()
	p80.ServeHTTP(rec, req)
	if loc := rec.Header().Get("Location"); strings.Contains(loc, "/debug/") {
		t.Errorf("port 80 / with the key redirected to %q", loc)
	}
}

func TestDebugListenerServesOnlyDebug(t *testing.T) {
	writeDebugKey(t, "sesame")
	allow, _ := parseDebugAllow("10.9.0.0/16")
	s := &server{opts: &options{hostname: "derp.example.com"}, started: time.Now(), debugAllow: allow}
	h := s.debugListenerHandler()
	for _, c := range []struct {
		target, remote string
		want           int
	}{
		{"/", "127.0.0.1:5", 404},
		{"/derp", "127.0.0.1:5", 404},
		{"/generate_204", "127.0.0.1:5", 404},
		{"/robots.txt", "127.0.0.1:5", 404},
		{"/debugger", "127.0.0.1:5", 404},
		{"/debug", "127.0.0.1:5", 302},
		{"/debug/", "127.0.0.1:5", 200},
		{"/debug/", "10.9.8.7:5", 200},
		{"/debug/", "192.0.2.1:5", 403},
		{"/debug/?debugkey=sesame", "192.0.2.1:5", 403}, // clear text: the key is ignored
		{"/debug/no-such-page", "127.0.0.1:5", 404},
	} {
		req := httptest.NewRequest("GET", c.target, nil)
		req.RemoteAddr = c.remote
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		if rec.Code != c.want {
			t.Errorf("GET %s from %s on -debug-addr: %d, want %d", c.target, c.remote, rec.Code, c.want)
		}
	}
}

func TestDebugFlagsRefusedByName(t *testing.T) {
	for _, c := range []struct {
		args []string
		flag string
	}{
		{[]string{"-a", ":8080", "-debug-addr", "9090"}, "-debug-addr"},
		{[]string{"-a", ":8080", "-debug-addr", "127.0.0.1:0"}, "-debug-addr"},
		{[]string{"-a", ":8080", "-debug-addr", "127.0.0.1:70000"}, "-debug-addr"},
		{[]string{"-a", ":8080", "-debug-addr", "127.0.0.1:metrics"}, "-debug-addr"},
		{[]string{"-a", "127.0.0.1:8080", "-debug-addr", "127.0.0.1:8080"}, "-debug-addr"},
		{[]string{"-a", ":8080", "-debug-allow", "10.0.0.0/33"}, "-debug-allow"},
		{[]string{"-a", ":8080", "-debug-allow", "10.0.0.0/8,banana"}, "-debug-allow"},
		{[]string{"-a", ":8080", "-debug-allow", "10.1.2.3/8"}, "-debug-allow"},
	} {
		expectRefused(t, c.args, c.flag)
	}
	for _, args := range [][]string{
		{"-a", ":8080", "-debug-addr", "127.0.0.1:9090"},
		{"-a", ":8080", "-debug-addr", ":9090", "-debug-allow", "10.0.0.0/8, 192.0.2.7,fd00::/8,"},
		{"-a", ":443", "-debug-addr", "[::1]:9090"},
	} {
		o, _ := parseFlags(args)
		if err := o.checkSupported(); err != nil {
			t.Errorf("%q refused: %v", args, err)
		}
	}
}

func TestDebugURLKeepsTheKeyOnlyForThoseWhoCameWithIt(t *testing.T) {
	for _, c := range []struct {
		adm        debugAdmission
		path, want string
	}{
		{debugByKey, "/debug/mesh", "/debug/mesh?debugkey=s%26x"},
		{debugByKey, "/debug/mesh?format=json", "/debug/mesh?debugkey=s%26x&format=json"},
		{debugByAddress, "/debug/mesh", "/debug/mesh"},
		{debugByAddress, "/debug/mesh?format=json", "/debug/mesh?format=json"},
	} {
		req := httptest.NewRequest("GET", "/debug/?debugkey="+url.QueryEscape("s&x"), nil)
		req = req.WithContext(context.WithValue(req.Context(), debugAdmissionKey{}, c.adm))
		f := debugFuncs(req)["debugURL"].(func(string) string)
		if got := f(c.path); got != c.want {
			t.Errorf("admission %v: debugURL(%q) = %q, want %q", c.adm, c.path, got, c.want)
		}
	}
}

func TestRoundForReading(t *testing.T) {
	for d, want := range map[time.Duration]string{
		1234567 * time.Microsecond:          "1.23s",
		850*time.Microsecond + 3:            "850µs",
		4*time.Minute + 5*time.Second:       "4m5s",
		2*time.Hour + 1500*time.Millisecond: "2h0m2s",
		0:                                   "0s",
	} {
		if got := roundForReading(d).String(); got != want {
			t.Errorf("roundForReading(%v) = %s, want %s", d, got, want)
		}
	}
	for n, want := range map[int64]string{0: "0 B", 1023: "1023 B", 1536: "1.5 KiB", 5 << 30: "5.0 GiB"} {
		if got := humanBytes(n); got != want {
			t.Errorf("humanBytes(%d) = %s, want %s", n, got, want)
		}
	}
}

// inProcess is a derpd started by run, as main starts it, on loopback.
type inProcess struct {
	base, debugBase string
	cancel          context.CancelFunc
	done            chan error
}

func freePort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// startInProcess runs a plain-HTTP derpd with -debug-addr and extra args
// in this process. It stops when the test ends, if the test has not
// stopped it.
func startInProcess(t *testing.T, args ...string) *inProcess {
	t.Helper()
	main := "127.0.0.1:" + strconv.Itoa(freePort(t))
	debug := "127.0.0.1:" + strconv.Itoa(freePort(t))
	all := append([]string{"-a", main, "-c", filepath.Join(t.TempDir(), "derper.key"),
		"-stun=false", "-http-port=-1", "-debug-addr", debug}, args...)
	opts, err := parseFlags(all)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	p := &inProcess{base: "http://" + main, debugBase: "http://" + debug, cancel: cancel, done: make(chan error, 1)}
	go func() { p.done <- run(ctx, opts, zerolog.Nop()) }()
	t.Cleanup(func() { p.stop(t) })
	deadline := time.Now().Add(10 * time.Second)
	for {
		select {
		case err := <-p.done:
			t.Fatalf("derpd stopped at start: %v", err)
		default:
		}
		res, err := http.Get(p.debugBase + "/debug/")
		if err == nil {
			res.Body.Close()
			if res.StatusCode == 200 {
				return p
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("derpd did not answer on -debug-addr: %v", err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// stop asks the server to stop and waits for run to return.
func (p *inProcess) stop(t *testing.T) {
	t.Helper()
	if p.cancel == nil {
		return
	}
	p.cancel()
	p.cancel = nil
	if err := <-p.done; err != nil {
		t.Errorf("run returned %v, want nil", err)
	}
}

func getBody(t *testing.T, url string) (*http.Response, string) {
	t.Helper()
	res, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	b, err := io.ReadAll(res.Body)
	if err != nil {
		t.Fatal(err)
	}
	return res, string(b)
}

// Every page on the index has an HTML view whose one style sheet the
// Content-Security-Policy admits by hash, and a JSON view; both the
// index and the endpoints are reachable on the main listener and on
// -debug-addr.
func TestEveryDebugPageHasBothViews(t *testing.T) {
	p := startInProcess(t)
	res, body := getBody(t, p.debugBase+"/debug/?format=json")
	if res.StatusCode != 200 || !strings.HasPrefix(res.Header.Get("Content-Type"), "application/json") {
		t.Fatalf("index JSON: %s %s", res.Status, res.Header.Get("Content-Type"))
	}
	var idx debugIndex
	if err := json.Unmarshal([]byte(body), &idx); err != nil {
		t.Fatalf("index JSON: %v\n%s", err, body)
	}
	if idx.ServerKey == "" || idx.Version == "" || idx.Uptime == "" {
		t.Errorf("index lacks the server's identity: %+v", idx)
	}
	listed := map[string]bool{}
	for _, e := range append(idx.Pages, idx.Endpoints...) {
		listed[e.Path] = true
		if e.Description == "" {
			t.Errorf("%s is listed without a description", e.Path)
		}
	}
	for path := range debugPages {
		if path != "/debug/" && !listed[path] {
			t.Errorf("page %s is not on the index", path)
		}
	}
	for _, want := range []string{"/debug/mesh", "/debug/varz", "/debug/check", "/debug/traffic", "/debug/pprof/"} {
		if !listed[want] {
			t.Errorf("%s is not on the index", want)
		}
	}
	pages := append([]debugIndexEntry{{Path: "/debug/", JSON: "/debug/?format=json"}}, idx.Pages...)
	for _, base := range []string{p.base, p.debugBase} {
		for _, pg := range pages {
			res, html := getBody(t, base+pg.Path)
			if res.StatusCode != 200 {
				t.Errorf("%s%s: %s\n%s", base, pg.Path, res.Status, html)
				continue
			}
			if ct := res.Header.Get("Content-Type"); ct != "text/html; charset=utf-8" {
				t.Errorf("%s: Content-Type %q", pg.Path, ct)
			}
			checkStyleAdmitted(t, pg.Path, res.Header.Get("Content-Security-Policy"), html)
			if !strings.Contains(html, `href="`+pg.JSON+`"`) {
				t.Errorf("%s does not link its JSON view %s", pg.Path, pg.JSON)
			}
			if pg.Path != "/debug/" && !strings.Contains(html, "<h1>"+templateEscape(pg.Title)+"</h1>") {
				t.Errorf("%s lacks its title %q as the heading", pg.Path, pg.Title)
			}
			res, js := getBody(t, base+pg.JSON)
			if res.StatusCode != 200 || !json.Valid([]byte(js)) {
				t.Errorf("%s: %s, valid JSON %v\n%s", pg.JSON, res.Status, json.Valid([]byte(js)), js)
			}
		}
	}
}

func templateEscape(s string) string {
	r := strings.NewReplacer("&", "&amp;", "<", "&lt;", ">", "&gt;", "'", "&#39;", `"`, "&#34;")
	return r.Replace(s)
}

// checkStyleAdmitted checks that the page has exactly one style element
// and that the policy admits it by its hash, and nothing else.
func checkStyleAdmitted(t *testing.T, path, csp, html string) {
	t.Helper()
	if strings.Count(html, "<style>") != 1 {
		t.Errorf("%s has %d style elements, want 1", path, strings.Count(html, "<style>"))
		return
	}
	start := strings.Index(html, "<style>") + len("<style>")
	end := strings.Index(html[start:], "</style>")
	if end < 0 {
		t.Errorf("%s: unterminated style element", path)
		return
	}
	sum := sha256.Sum256([]byte(html[start : start+end]))
	want := "style-src 'sha256-" + base64.StdEncoding.EncodeToString(sum[:]) + "'"
	if !strings.Contains(csp, want) {
		t.Errorf("%s: policy %q does not admit its style sheet (%s)", path, csp, want)
	}
	if !strings.Contains(csp, "default-src 'none'") || strings.Contains(csp, "script-src") || strings.Contains(csp, "unsafe-inline") {
		t.Errorf("%s: policy %q admits more than the style sheet", path, csp)
	}
}

// A page's error answers with its status in both views.
func TestDebugPageErrors(t *testing.T) {
	p := &debugPage{Path: "/debug/test-error", Title: "T", Description: "d",
		Data: func(s *server, r *http.Request) (any, error) {
			return nil, debugError(http.StatusBadRequest, "no key %q", r.URL.Query().Get("key"))
		}, Body: `{{.}}`}
	layout := mustLayout(t, p)
	s := &server{opts: &options{}}
	for _, target := range []string{"/debug/test-error?key=x", "/debug/test-error?key=x&format=json"} {
		rec := httptest.NewRecorder()
		s.servePage(layout, rec, httptest.NewRequest("GET", target, nil))
		if rec.Code != http.StatusBadRequest || !strings.Contains(rec.Body.String(), `no key`) {
			t.Errorf("%s: %d %s", target, rec.Code, rec.Body.String())
		}
	}
}

// mustLayout prepares p as registerDebugPage does, without registering
// it (the registrations are the program's).
func mustLayout(t *testing.T, p *debugPage) *debugPage {
	t.Helper()
	saved := debugPages
	debugPages = map[string]*debugPage{}
	defer func() { debugPages = saved }()
	registerDebugPage(*p)
	return debugPages[p.Path]
}
