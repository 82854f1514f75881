package main

import (
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"time"
)

// -debug-addr and -debug-allow are derpd's own. Upstream serves /debug on
// the relay's port only, so a Prometheus host must reach the public
// listener (and be a Tailscale address or in TS_DEBUG_TRUSTED_CIDRS) to
// scrape it; with -debug-addr it scrapes a listener of its own, on an
// internal address, and the relay's port can stay closed to it.

// checkDebugFlags returns what is wrong with -debug-addr and -debug-allow,
// each naming its flag.
func (o *options) checkDebugFlags() []string {
	var problems []string
	if o.debugAddr != "" {
		_, port, err := net.SplitHostPort(o.debugAddr)
		if err != nil {
			problems = append(problems, fmt.Sprintf("-debug-addr %q: want host:port or :port: %v", o.debugAddr, err))
		} else if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
			problems = append(problems, fmt.Sprintf("-debug-addr %q: port %q is not a number from 1 to 65535", o.debugAddr, port))
		} else if o.debugAddr == o.addr {
			problems = append(problems, fmt.Sprintf("-debug-addr %q is the main listener's address (-a)", o.debugAddr))
		}
	}
	if _, err := parseDebugAllow(o.debugAllow); err != nil {
		problems = append(problems, err.Error())
	}
	return problems
}

// parseDebugAllow reads -debug-allow: CIDRs, or single addresses, comma
// separated; empty entries (a trailing comma) are ignored.
func parseDebugAllow(s string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	for _, f := range strings.Split(s, ",") {
		f = strings.TrimSpace(f)
		if f == "" {
			continue
		}
		if p, err := netip.ParsePrefix(f); err == nil {
			if p != p.Masked() {
				// 10.1.2.3/8 is most likely a typo for a host or for
				// 10.0.0.0/8; admitting the whole /8 on a guess would be
				// the wrong way to be lenient with debug access.
				return nil, fmt.Errorf("-debug-allow %q: host bits set (did you mean %v or %v?)", f, p.Masked(), p.Addr())
			}
			// Remote addresses are unmapped before they are compared, so
			// ::ffff:10.0.0.0/104 must become 10.0.0.0/8 to match.
			if a := p.Addr(); a.Is4In6() && p.Bits() >= 96 {
				p = netip.PrefixFrom(a.Unmap(), p.Bits()-96)
			}
			out = append(out, p)
			continue
		}
		a, err := netip.ParseAddr(f)
		if err != nil {
			return nil, fmt.Errorf("-debug-allow %q: not a CIDR or an IP address", f)
		}
		a = a.Unmap()
		out = append(out, netip.PrefixFrom(a, a.BitLen()))
	}
	return out, nil
}

// debugListenerHandler is what -debug-addr serves: /debug/ and nothing
// else, under the same access rule as the main listener's, except that
// the debug key is ignored (it would travel in clear text).
func (s *server) debugListenerHandler() http.Handler {
	debug := s.debugHandler()
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch {
		case strings.HasPrefix(r.URL.Path, "/debug/"):
			debug.ServeHTTP(w, viaClearText(r))
		case r.URL.Path == "/debug":
			http.Redirect(w, r, "/debug/", http.StatusFound)
		default:
			http.NotFound(w, r)
		}
	})
}

// startDebugListener listens on -debug-addr and serves it; the server it
// returns is shut down with the others.
func (s *server) startDebugListener(serveErr chan<- error) (*http.Server, error) {
	ln, err := net.Listen("tcp", s.opts.debugAddr)
	if err != nil {
		return nil, fmt.Errorf("-debug-addr: %w", err)
	}
	srv := &http.Server{
		Handler:           s.debugListenerHandler(),
		ReadHeaderTimeout: 30 * time.Second,
		ReadTimeout:       30 * time.Second,
		// Long enough for a 30-second CPU profile or trace; the
		// /debug/traffic stream extends its own deadline.
		WriteTimeout: 5 * time.Minute,
		ErrorLog:     newStdLogger(s.log),
	}
	go func() { serveErr <- fmt.Errorf("-debug-addr: %w", srv.Serve(ln)) }()
	s.log.Info().Str("addr", ln.Addr().String()).Msg("serving /debug/ over plain HTTP")
	return srv, nil
}
