package main

import (
	"context"
	"net"
	"net/http"
	"net/netip"
	"strings"

	"github.com/coder/websocket"
	"github.com/derpd/derpd/actors/client"
	"github.com/derpd/derpd/wire"
	"github.com/rs/zerolog"
)

// wsMaxMessage is the largest WebSocket message we send: the reference
// server and browsers read at most 32 KiB per message by default.
const wsMaxMessage = 32 << 10

// serveDERP upgrades /derp to the DERP frame stream, over a hijacked
// HTTP/1.1 connection or over WebSocket.
func (s *server) serveDERP(w http.ResponseWriter, r *http.Request) {
	if !s.opts.runDERP {
		http.Error(w, "derp server disabled", http.StatusNotFound)
		return
	}
	upgrade := strings.ToLower(r.Header.Get("Upgrade"))
	if upgrade == "websocket" && strings.Contains(r.Header.Get("Sec-WebSocket-Protocol"), "derp") {
		s.serveWebSocket(w, r)
		return
	}
	// "Upgrade: websocket" without the derp subprotocol is what old
	// clients sent while speaking raw DERP, so it counts as DERP.
	if upgrade != "derp" && upgrade != "websocket" {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.WriteHeader(http.StatusUpgradeRequired)
		w.Write([]byte("DERP requires connection upgrade\n"))
		return
	}
	fastStart := r.Header.Get("Derp-Fast-Start") == "1"
	hj, ok := w.(http.Hijacker)
	if !ok {
		// HTTP/2 cannot hand over its connection.
		http.Error(w, "HTTP does not support general purpose upgrade", http.StatusInternalServerError)
		return
	}
	netConn, brw, err := hj.Hijack()
	if err != nil {
		s.log.Warn().Err(err).Str("addr", r.RemoteAddr).Msg("hijacking /derp connection failed")
		return
	}
	if !fastStart {
		if _, err := netConn.Write(s.upgradeResponse); err != nil {
			netConn.Close()
			return
		}
	}
	// Bytes the client pipelined after its request (a fast-start client's
	// ClientInfo, say) sit in the HTTP server's read buffer: keep them.
	var prefix []byte
	if n := brw.Reader.Buffered(); n > 0 {
		peeked, _ := brw.Reader.Peek(n)
		prefix = append([]byte(nil), peeked...)
	}
	a := client.Accepted{
		Conn:      netConn,
		Prefix:    prefix,
		Addr:      remoteAddrPort(r),
		FastStart: fastStart,
		NotIdeal:  r.Header.Get("Ideal-Node") != "",
	}
	// The handshake runs here; Serve then moves the connection to a fresh,
	// small-stacked goroutine and this one, with net/http's deep stack,
	// ends: per idle connection that is memory saved.
	client.Serve(s.sys, s.clientCfg, a)
}

// upgradeResponse is the exact 101 upstream writes; clients only check the
// status, but probes and debugging tools read the key headers.
func upgradeResponse(pub wire.NodePublic) []byte {
	return []byte("HTTP/1.1 101 Switching Protocols\r\n" +
		"Upgrade: DERP\r\n" +
		"Connection: Upgrade\r\n" +
		"Derp-Version: 2\r\n" +
		"Derp-Public-Key: " + pub.UntypedHexString() + "\r\n\r\n")
}

func (s *server) serveWebSocket(w http.ResponseWriter, r *http.Request) {
	netConn := acceptWebSocket(w, r, s.log)
	if netConn == nil {
		return
	}
	a := client.Accepted{
		Conn:      netConn,
		Addr:      remoteAddrPort(r),
		WebSocket: true,
		MaxWrite:  wsMaxMessage,
	}
	client.Serve(s.sys, s.clientCfg, a)
}

// acceptWebSocket completes the WebSocket handshake of a /derp request
// and returns the DERP byte stream its binary messages carry, or nil when
// the handshake failed or the client does not speak the derp
// subprotocol (it has been answered or closed then). Everything a
// WebSocket client sends after its request goes through here.
func acceptWebSocket(w http.ResponseWriter, r *http.Request, log zerolog.Logger) net.Conn {
	c, err := websocket.Accept(w, r, &websocket.AcceptOptions{
		Subprotocols: []string{"derp"},
		// Browsers on any origin may use a DERP server; it has no cookies
		// or ambient authority to protect.
		InsecureSkipVerify: true,
		CompressionMode:    websocket.CompressionDisabled,
	})
	if err != nil {
		log.Info().Err(err).Str("addr", r.RemoteAddr).Msg("WebSocket handshake failed")
		return nil
	}
	if c.Subprotocol() != "derp" {
		c.Close(websocket.StatusPolicyViolation, "client must speak the derp subprotocol")
		return nil
	}
	ctx, cancel := context.WithCancel(context.Background())
	return &cancelOnClose{Conn: websocket.NetConn(ctx, c, websocket.MessageBinary), cancel: cancel}
}

// cancelOnClose ends the WebSocket's context with the connection.
type cancelOnClose struct {
	net.Conn
	cancel context.CancelFunc
}

func (c *cancelOnClose) Close() error {
	err := c.Conn.Close()
	c.cancel()
	return err
}

func remoteAddrPort(r *http.Request) netip.AddrPort {
	ap, err := netip.ParseAddrPort(r.RemoteAddr)
	if err != nil {
		return netip.AddrPort{}
	}
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
}
