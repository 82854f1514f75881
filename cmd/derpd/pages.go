package main

import (
	"net/http"
	"regexp"
	"strings"
)

// contentSecurityPolicy lets a page load nothing at all: no scripts, no
// styles, no frames.
const contentSecurityPolicy = "default-src 'none'; frame-ancestors 'none'; form-action 'none'; base-uri 'self'; block-all-mixed-content; plugin-types 'none'"

// Headers for pages a browser may render: nothing on a DERP server should
// ever be framed, sniffed or loaded over plain HTTP once seen over HTTPS.
func setBrowserHeaders(h http.Header) {
	h.Set("Strict-Transport-Security", "max-age=63072000; includeSubDomains")
	h.Set("Content-Security-Policy", contentSecurityPolicy)
	h.Set("X-Frame-Options", "DENY")
	h.Set("X-Content-Type-Options", "nosniff")
}

// serveProbe answers the HTTPS latency probes clients use when UDP is
// blocked; any origin may ask, since browsers measure latency too.
func serveProbe(w http.ResponseWriter, r *http.Request) {
	switch r.Method {
	case http.MethodHead, http.MethodGet:
		w.Header().Set("Access-Control-Allow-Origin", "*")
	default:
		http.Error(w, "bogus probe method", http.StatusMethodNotAllowed)
	}
}

// serveNoContent is the captive-portal check. A client proves it reached
// the real server, not a portal that answers 204 to everything, by having
// us echo its challenge.
func serveNoContent(w http.ResponseWriter, r *http.Request) {
	if ch := r.Header.Get("X-Tailscale-Challenge"); ch != "" && validChallenge(ch) {
		w.Header().Set("X-Tailscale-Response", "response "+ch)
	}
	w.Header().Set("Cache-Control", "no-cache, no-store, must-revalidate, no-transform, max-age=0")
	w.WriteHeader(http.StatusNoContent)
}

func validChallenge(s string) bool {
	if len(s) > 64 {
		return false
	}
	for _, c := range []byte(s) {
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9',
			c == '.', c == '-', c == '_', c == ':':
		default:
			return false
		}
	}
	return true
}

func serveRobots(w http.ResponseWriter, r *http.Request) {
	setBrowserHeaders(w.Header())
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Write([]byte("User-agent: *\nDisallow: /\n"))
}

var tailscaleHostname = regexp.MustCompile(`^derp([^.]*)\.tailscale\.com\.?$`)

// serveHome is / and every path nobody else claims.
func (s *server) serveHome(w http.ResponseWriter, r *http.Request) {
	switch home := s.opts.home; {
	case home == "blank":
		// Scanners looking for open relays find nothing to fingerprint.
		setBrowserHeaders(w.Header())
		w.WriteHeader(http.StatusOK)
		return
	case strings.HasPrefix(home, "http://") || strings.HasPrefix(home, "https://"):
		http.Redirect(w, r, home, http.StatusFound)
		return
	}
	setBrowserHeaders(w.Header())
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	var b strings.Builder
	b.WriteString(`<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>DERP relay</title></head><body>
<h1>DERP</h1>
<p>This is a <a href="https://tailscale.com/kb/1232/derp-servers">Tailscale DERP</a> relay, run by derpd.
It forwards end-to-end encrypted packets between devices of a tailnet when they cannot reach each other directly.
It cannot read them.</p>
`)
	if !s.opts.runDERP {
		b.WriteString("<p>Relaying is disabled on this server: it answers STUN and latency probes only.</p>\n")
	}
	if tailscaleHostname.MatchString(s.opts.hostname) {
		b.WriteString(`<p>To report abuse, see <a href="https://tailscale.com/security">tailscale.com/security</a>.</p>` + "\n")
	}
	if s.debugAllowed(r) {
		b.WriteString(`<p><a href="/debug/">Debug</a></p>` + "\n")
	}
	b.WriteString("</body></html>\n")
	w.Write([]byte(b.String()))
}

func serveConnect(w http.ResponseWriter, r *http.Request) {
	http.Error(w, "CONNECT not enabled", http.StatusForbidden)
}
