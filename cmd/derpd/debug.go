package main

import (
	"crypto/subtle"
	"expvar"
	"fmt"
	"html"
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

// debugAllowed applies upstream's access rule for /debug.
func debugAllowed(r *http.Request) bool {
	if key := debugKey(); key != "" && r.Method == http.MethodGet {
		if got := r.URL.Query().Get("debugkey"); got != "" &&
			subtle.ConstantTimeCompare([]byte(got), []byte(key)) == 1 {
			return true
		}
	}
	// Behind a proxy every request looks local; only the key will do.
	if r.Header.Get("X-Forwarded-For") != "" {
		return false
	}
	ap, err := netip.ParseAddrPort(r.RemoteAddr)
	if err != nil {
		return false
	}
	ip := ap.Addr().Unmap()
	if ip.IsLoopback() {
		return true
	}
	if (tailscaleCGNAT.Contains(ip) && !tailscaleChromeOSVM.Contains(ip)) || tailscaleULA.Contains(ip) {
		return true
	}
	if s := os.Getenv("TS_ALLOW_DEBUG_IP"); s != "" {
		if allowed, err := netip.ParseAddr(s); err == nil && allowed.Unmap() == ip {
			return true
		}
	}
	for _, s := range strings.Split(os.Getenv("TS_DEBUG_TRUSTED_CIDRS"), ",") {
		if p, err := netip.ParsePrefix(strings.TrimSpace(s)); err == nil && p.Contains(ip) {
			return true
		}
	}
	return false
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

func (s *server) debugHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/{$}", s.serveDebugIndex)
	mux.HandleFunc("/debug/varz", s.serveVarz)
	mux.HandleFunc("/debug/check", s.serveCheck)
	mux.HandleFunc("/debug/mesh", s.serveMeshDebug)
	mux.HandleFunc("/debug/gc", func(w http.ResponseWriter, r *http.Request) {
		runtime.GC()
		w.Write([]byte("Done.\n"))
	})
	mux.Handle("/debug/vars", expvar.Handler())
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !debugAllowed(r) {
			http.Error(w, "debug access denied", http.StatusForbidden)
			return
		}
		mux.ServeHTTP(w, r)
	})
}

func (s *server) serveDebugIndex(w http.ResponseWriter, r *http.Request) {
	setBrowserHeaders(w.Header())
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	host, _ := os.Hostname()
	fmt.Fprintf(w, "<html><body><h1>derpd debug</h1><ul>\n")
	fmt.Fprintf(w, "<li><b>Uptime:</b> %v</li>\n", time.Since(s.started).Round(time.Second))
	fmt.Fprintf(w, "<li><b>Version:</b> %s</li>\n", html.EscapeString(version()))
	fmt.Fprintf(w, "<li><b>Machine:</b> %s</li>\n", html.EscapeString(host))
	fmt.Fprintf(w, "<li><b>TLS hostname:</b> %s</li>\n", html.EscapeString(s.opts.hostname))
	fmt.Fprintf(w, "<li><b>Mesh key:</b> %v</li>\n", !s.clientCfg.MeshKey.IsZero())
	fmt.Fprintf(w, "<li><b>Server key:</b> %s</li>\n", s.clientCfg.PublicKey)
	fmt.Fprintf(w, "</ul><ul>\n")
	for _, l := range []string{"varz", "check", "mesh", "pprof/", "gc"} {
		fmt.Fprintf(w, "<li><a href=\"/debug/%s\">/debug/%s</a></li>\n", l, l)
	}
	fmt.Fprintf(w, "</ul></body></html>\n")
}

// serveVarz writes every metric in the Prometheus text format, with
// upstream's names for everything upstream has.
func (s *server) serveVarz(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
	s.sys.Stats.WritePrometheus(w)
	if s.stun != nil {
		s.stun.Counters.WritePrometheus(w)
	}
	p := actors.PromWriter{W: w}
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
	if len(problems) > 0 {
		http.Error(w, strings.Join(problems, "\n"), http.StatusInternalServerError)
		return
	}
	w.Write([]byte("derp.Server ConsistencyCheck okay\n"))
}

func version() string {
	if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
		return bi.Main.Version
	}
	return "devel"
}
