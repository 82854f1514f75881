package main

import (
	"net"
	"net/http"
	"strings"
)

// port80Handler serves the plain-HTTP listener that runs beside a TLS
// main listener: the captive-portal check Tailscale clients make on port
// 80, ACME HTTP-01 challenges (wrapped around this by the cert source),
// debug pages for permitted clients, and a redirect to HTTPS for
// everything else. DERP itself is never served in plain text here.
func (s *server) port80Handler(main http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// Whatever this listener passes on, the debug key sent over it
		// unlocks nothing (see viaClearText).
		r = viaClearText(r)
		switch {
		case r.URL.Path == "/generate_204":
			serveNoContent(w, r)
			return
		case strings.HasPrefix(r.URL.Path, "/debug"):
			main.ServeHTTP(w, r)
			return
		case r.Method != http.MethodGet && r.Method != http.MethodHead:
			http.Error(w, "Use HTTPS", http.StatusBadRequest)
			return
		}
		host := r.Host
		if h, _, err := net.SplitHostPort(host); err == nil {
			host = h
		}
		if host == "" {
			host = s.opts.hostname
		}
		if strings.Contains(host, ":") && !strings.HasPrefix(host, "[") {
			host = "[" + host + "]" // an IPv6 literal, its brackets lost with the port
		}
		if r.URL.Path == "/" && s.debugAllowed(r) {
			http.Redirect(w, r, "https://"+host+"/debug/", http.StatusFound)
			return
		}
		http.Redirect(w, r, "https://"+host+r.RequestURI, http.StatusFound)
	})
}
