package main

import (
	"bytes"
	"context"
	"crypto/subtle"
	"expvar"
	"fmt"
	"net/http"
	"net/http/pprof"
	"net/netip"
	"os"
	"runtime"
	"runtime/debug"
	"strings"
	"time"

	"github.com/derpd/derpd/actors"
)

// Debug pages are for operators: reachable from loopback, from Tailscale
// addresses, and from addresses the operator names, as upstream.
var (
	tailscaleCGNAT      = netip.MustParsePrefix("100.64.0.0/10")
	tailscaleChromeOSVM = netip.MustParsePrefix("100.115.92.0/23")
	tailscaleULA        = netip.MustParsePrefix("fd7a:115c:a1e0::/48")
)

// debugAdmission is how a request got into /debug: pages keep the debug
// key on their links only for those who came in with it.
type debugAdmission uint8

const (
	debugDenied    debugAdmission = iota
	debugByAddress                // loopback, Tailscale, TS_ALLOW_DEBUG_IP, TS_DEBUG_TRUSTED_CIDRS, -debug-allow
	debugByKey                    // ?debugkey= on the main listener
)

// clearTextKey marks, in a request's context, a request that came over a
// plain-HTTP listener beside the main one (port 80, -debug-addr).
type clearTextKey struct{}

// viaClearText marks r as having come over a side listener in plain
// HTTP. There the debug key counts for nothing, so that no browser
// bookmark or scraper gets into the habit of sending it where anyone on
// the path can read it and then use it on the main listener.
func viaClearText(r *http.Request) *http.Request {
	return r.WithContext(context.WithValue(r.Context(), clearTextKey{}, true))
}

func cameInClearText(r *http.Request) bool {
	b, _ := r.Context().Value(clearTextKey{}).(bool)
	return b
}

// debugAllowed reports whether r may see /debug.
func (s *server) debugAllowed(r *http.Request) bool { return s.debugAdmit(r) != debugDenied }

// debugAdmit applies upstream's access rule for /debug, widened by
// -debug-allow and narrowed on the side listeners, where the key is
// ignored.
func (s *server) debugAdmit(r *http.Request) debugAdmission {
	if key := debugKey(); key != "" && r.Method == http.MethodGet && !cameInClearText(r) {
		if got := r.URL.Query().Get("debugkey"); got != "" &&
			subtle.ConstantTimeCompare([]byte(got), []byte(key)) == 1 {
			return debugByKey
		}
	}
	// Behind a proxy every request looks local; only the key will do.
	if r.Header.Get("X-Forwarded-For") != "" {
		return debugDenied
	}
	ap, err := netip.ParseAddrPort(r.RemoteAddr)
	if err != nil {
		return debugDenied
	}
	ip := ap.Addr().Unmap()
	if ip.IsLoopback() {
		return debugByAddress
	}
	if (tailscaleCGNAT.Contains(ip) && !tailscaleChromeOSVM.Contains(ip)) || tailscaleULA.Contains(ip) {
		return debugByAddress
	}
	if s := os.Getenv("TS_ALLOW_DEBUG_IP"); s != "" {
		if allowed, err := netip.ParseAddr(s); err == nil && allowed.Unmap() == ip {
			return debugByAddress
		}
	}
	for _, s := range strings.Split(os.Getenv("TS_DEBUG_TRUSTED_CIDRS"), ",") {
		if p, err := netip.ParsePrefix(strings.TrimSpace(s)); err == nil && p.Contains(ip) {
			return debugByAddress
		}
	}
	for _, p := range s.debugAllow {
		if p.Contains(ip) {
			return debugByAddress
		}
	}
	return debugDenied
}

func debugKey() string {
	path := os.Getenv("TS_DEBUG_KEY_PATH")
	if path == "" {
		return ""
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(b))
}

// debugAdmissionKey holds, in a request's context, how debugHandler
// admitted it.
type debugAdmissionKey struct{}

func debugAdmissionOf(r *http.Request) debugAdmission {
	a, _ := r.Context().Value(debugAdmissionKey{}).(debugAdmission)
	return a
}

// debugHandler serves every registered page and endpoint under /debug/
// (see debugpage.go) to those debugAdmit lets in.
func (s *server) debugHandler() http.Handler {
	mux := http.NewServeMux()
	for path, p := range debugPages {
		pattern := path
		if pattern == "/debug/" {
			pattern = "/debug/{$}" // the index, not the whole subtree
		}
		mux.HandleFunc(pattern, func(w http.ResponseWriter, r *http.Request) { s.servePage(p, w, r) })
	}
	for path, e := range debugEndpoints {
		mux.HandleFunc(path, func(w http.ResponseWriter, r *http.Request) { e.Handler(s, w, r) })
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		a := s.debugAdmit(r)
		if a == debugDenied {
			http.Error(w, "debug access denied", http.StatusForbidden)
			return
		}
		mux.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), debugAdmissionKey{}, a)))
	})
}

func init() {
	for _, e := range []debugEndpoint{
		{"/debug/varz", "every metric in the Prometheus text format, upstream's names", (*server).serveVarz},
		{"/debug/check", "the registry cross-checked against the routing table, and with -verify-clients the local tailscaled asked to verify its own key: 200 okay or 500 with each problem", (*server).serveCheck},
		{"/debug/vars", "Go's expvar variables (cmdline, memstats)", func(_ *server, w http.ResponseWriter, r *http.Request) {
			expvar.Handler().ServeHTTP(w, r)
		}},
		{"/debug/gc", "run the garbage collector now", func(_ *server, w http.ResponseWriter, r *http.Request) {
			runtime.GC()
			w.Write([]byte("Done.\n"))
		}},
		{"/debug/pprof/", "Go's profiler: CPU, heap, goroutines (?debug=2), trace", func(_ *server, w http.ResponseWriter, r *http.Request) {
			pprof.Index(w, r)
		}},
		// pprof's index links these; they need no line of their own.
		{"/debug/pprof/cmdline", "", func(_ *server, w http.ResponseWriter, r *http.Request) { pprof.Cmdline(w, r) }},
		{"/debug/pprof/profile", "", func(_ *server, w http.ResponseWriter, r *http.Request) { pprof.Profile(w, r) }},
		{"/debug/pprof/symbol", "", func(_ *server, w http.ResponseWriter, r *http.Request) { pprof.Symbol(w, r) }},
		{"/debug/pprof/trace", "", func(_ *server, w http.ResponseWriter, r *http.Request) { pprof.Trace(w, r) }},
	} {
		registerDebugEndpoint(e)
	}
}

// serveVarz writes every metric in the Prometheus text format, with
// upstream's names for everything upstream has.
func (s *server) serveVarz(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
	// Collected first, so that withHelp can give every family its HELP
	// line (deferred: it must come after whatever is written below).
	var buf bytes.Buffer
	defer withHelp(w, &buf)
	s.sys.Stats.WritePrometheus(&buf)
	if s.stun != nil {
		s.stun.Counters.WritePrometheus(&buf)
	}
	p := actors.PromWriter{W: &buf}
	p.Gauge("goroutines", int64(runtime.NumGoroutine()))
	p.Gauge("process_start_unix_time", s.started.Unix())
	p.Gauge("uptime_sec", int64(time.Since(s.started).Seconds()))
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	p.Gauge("memstats_heap_alloc", int64(ms.HeapAlloc))
	p.Gauge("memstats_heap_inuse", int64(ms.HeapInuse))
	p.Gauge("memstats_sys", int64(ms.Sys))
	p.Gauge("memstats_stack_inuse", int64(ms.StackInuse))
	p.Counter("memstats_num_gc", int64(ms.NumGC))
	p.Header("version", "gauge")
	p.Sample("version", fmt.Sprintf(`version=%q,binary="derpd"`, version()), 1)
	p.Header("go_version", "gauge")
	p.Sample("go_version", fmt.Sprintf(`version=%q`, runtime.Version()), 1)
	// Upstream counts these for its TLS listener only; derpd counts its
	// main listener whatever it speaks, under the same names.
	p.Counter("tls_listener_accepted_connections", s.listener.accepted.Load())
	p.Counter("tls_listener_rejected_connections", s.listener.rejected.Load())
	if s.certs != nil {
		p.Header("derper_tls_request_version", "counter")
		for v, n := range s.tlsVersions.snapshot() {
			p.Sample("derper_tls_request_version", `version="`+v+`"`, float64(n))
		}
	}
	s.bootstrap.writePrometheus(p)
	s.writeMeshMetrics(p)
	if s.verify != nil {
		s.verify.verifier.Counters.WritePrometheus(p)
	}
	s.writeRateMetrics(p)
	s.sys.WritePrometheus(p)
}

// serveCheck cross-checks what the registry believes against the routing
// table readers use.
func (s *server) serveCheck(w http.ResponseWriter, r *http.Request) {
	res, err := s.sys.Root.RequestFuture(s.sys.Registry, &actors.CheckConsistency{}, 5*time.Second).Result()
	if err != nil {
		http.Error(w, "registry did not answer: "+err.Error(), http.StatusInternalServerError)
		return
	}
	problems := res.(*actors.ConsistencyReport).Problems
	if s.verify != nil {
		// As upstream: verification must work for the key of the
		// tailscaled beside us, or every client is being refused.
		ctx, cancel := context.WithTimeout(r.Context(), 5*time.Second)
		if err := s.verify.verifier.CheckSelf(ctx); err != nil {
			problems = append(problems, err.Error())
		}
		cancel()
	}
	if len(problems) > 0 {
		http.Error(w, strings.Join(problems, "\n"), http.StatusInternalServerError)
		return
	}
	w.Write([]byte("derp.Server ConsistencyCheck okay\n"))
}

// buildVersion is the version a packaging build stamps in with
// -ldflags "-X main.buildVersion=…" (make deb, make image): the Debian
// version of the checkout, which a build from a Git tree does not record
// by itself (with -buildvcs=false, or from a dirty tree).
var buildVersion string

// version is what -version prints and /debug/varz reports: the stamped
// version, else the module's version when built by go install
// module@version, else "devel".
func version() string {
	if buildVersion != "" {
		return buildVersion
	}
	if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
		return bi.Main.Version
	}
	return "devel"
}
