package main

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/derpd/derpd/wire"
)

// rawClient is a DERP connection made by hand, kept open for reading.
type rawClient struct {
	c   net.Conn
	rd  *wire.Reader
	pub wire.NodePublic
}

// dialDERP connects to a plain-HTTP derpd at host and completes the
// handshake, up to ServerInfo.
func dialDERP(t *testing.T, host string, info wire.ClientInfo) *rawClient {
	t.Helper()
	c, err := net.Dial("tcp", host)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	// A failure deadline: a healthy server answers at once.
	c.SetDeadline(time.Now().Add(30 * time.Second))
	fmt.Fprintf(c, "GET /derp HTTP/1.1\r\nHost: %s\r\nUpgrade: DERP\r\nConnection: Upgrade\r\n\r\n", host)
	br := bufio.NewReader(c)
	res, err := http.ReadResponse(br, nil)
	if err != nil || res.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("upgrade: %v %v", res, err)
	}
	rc := &rawClient{c: c, rd: wire.NewReader(br, nil, 1<<20)}
	typ, body, err := rc.read()
	if err != nil || typ != wire.FrameServerKey {
		t.Fatalf("first frame %v: %v", typ, err)
	}
	server, err := wire.ParseServerKey(body)
	if err != nil {
		t.Fatal(err)
	}
	priv := wire.GenerateNodePrivate()
	rc.pub = priv.Public()
	ci, err := wire.AppendClientInfo(nil, priv, server, info)
	if err != nil {
		t.Fatal(err)
	}
	rc.write(wire.FrameClientInfo, ci)
	if typ, _, err := rc.read(); err != nil || typ != wire.FrameServerInfo {
		t.Fatalf("after ClientInfo: %v, %v; want ServerInfo", typ, err)
	}
	return rc
}

func (rc *rawClient) read() (wire.FrameType, []byte, error) {
	typ, n, err := rc.rd.ReadHeader()
	if err != nil {
		return 0, nil, err
	}
	body := make([]byte, n)
	return typ, body, rc.rd.ReadFull(body)
}

func (rc *rawClient) write(typ wire.FrameType, body []byte) {
	w := wire.NewWriter(rc.c, 0)
	w.WriteFrame(typ, body, nil)
	w.Flush()
}

// nextFrame returns the next frame other than a KeepAlive.
func (rc *rawClient) nextFrame(t *testing.T) (wire.FrameType, []byte) {
	t.Helper()
	for {
		typ, body, err := rc.read()
		if err != nil {
			t.Fatalf("reading: %v", err)
		}
		if typ != wire.FrameKeepAlive {
			return typ, body
		}
	}
}

func (rc *rawClient) expectRestarting(t *testing.T, reconnectIn, tryFor time.Duration) {
	t.Helper()
	typ, body := rc.nextFrame(t)
	if typ != wire.FrameRestarting || len(body) != wire.RestartingLen {
		t.Fatalf("got %v %x, want Restarting", typ, body)
	}
	in := time.Duration(binary.BigEndian.Uint32(body[0:4])) * time.Millisecond
	tf := time.Duration(binary.BigEndian.Uint32(body[4:8])) * time.Millisecond
	if in != reconnectIn || tf != tryFor {
		t.Fatalf("Restarting(%v, %v), want (%v, %v)", in, tf, reconnectIn, tryFor)
	}
}

func (rc *rawClient) expectClosed(t *testing.T) {
	t.Helper()
	for {
		typ, _, err := rc.read()
		if errors.Is(err, io.EOF) {
			return
		}
		if err != nil {
			t.Fatalf("want a clean close, got %v", err)
		}
		if typ != wire.FrameKeepAlive {
			t.Fatalf("got %v before the close", typ)
		}
	}
}

// TestShutdownRestartsClientsThenTheMesh runs derpd in this process with
// three clients and a mesh peer watching, and cancels it as a signal
// would. Every connection hears Restarting with the flags' values; by
// then nobody can connect any more; the peer hears each client leave
// before its own connection is closed, last; run returns nil.
func TestShutdownRestartsClientsThenTheMesh(t *testing.T) {
	mk := wire.MeshKey{0: 7, 31: 7}
	psk := filepath.Join(t.TempDir(), "mesh.key")
	if err := os.WriteFile(psk, []byte(fmt.Sprintf("%x\n", mk[:])), 0o600); err != nil {
		t.Fatal(err)
	}
	p := startInProcess(t, "-mesh-psk-file", psk, "-shutdown-spread", "300ms",
		"-restart-reconnect-in", "1500ms", "-restart-try-for", "8s")
	host := strings.TrimPrefix(p.base, "http://")
	peer := dialDERP(t, host, wire.ClientInfo{Version: 2, MeshKey: mk})
	peer.write(wire.FrameWatchConns, nil)
	if typ, _ := peer.nextFrame(t); typ != wire.FramePeerPresent { // itself
		t.Fatalf("watcher got %v, want its own PeerPresent", typ)
	}
	var clients []*rawClient
	for range 3 {
		c := dialDERP(t, host, wire.ClientInfo{Version: 2, CanAckPings: true})
		clients = append(clients, c)
		if typ, body := peer.nextFrame(t); typ != wire.FramePeerPresent || wire.NodePublic(body[:wire.KeyLen]) != c.pub {
			t.Fatalf("watcher got %v, want PeerPresent of the new client", typ)
		}
	}

	p.cancel()
	p.cancel = nil // stopped here, not by the cleanup
	for _, c := range clients {
		c.expectRestarting(t, 1500*time.Millisecond, 8*time.Second)
	}
	peer.expectRestarting(t, 1500*time.Millisecond, 8*time.Second)
	// Restarting went out after the listener closed.
	if c, err := net.Dial("tcp", host); err == nil {
		c.Close()
		t.Fatal("a new connection was accepted after Restarting was sent")
	}
	gone := map[wire.NodePublic]bool{}
	for range clients {
		typ, body := peer.nextFrame(t)
		if typ != wire.FramePeerGone {
			t.Fatalf("watcher got %v, want PeerGone of a client", typ)
		}
		gone[wire.NodePublic(body[:wire.KeyLen])] = true
	}
	for _, c := range clients {
		if !gone[c.pub] {
			t.Fatalf("watcher never heard client %v leave", c.pub.ShortString())
		}
		c.expectClosed(t)
	}
	peer.expectClosed(t)
	if err := <-p.done; err != nil {
		t.Fatalf("run returned %v, want nil", err)
	}
}

func TestShutdownFlags(t *testing.T) {
	o, err := parseFlags(nil)
	if err != nil {
		t.Fatal(err)
	}
	if o.restartReconnectIn != time.Second || o.restartTryFor != 10*time.Second || o.shutdownSpread != 5*time.Second {
		t.Fatalf("defaults: reconnect-in %v, try-for %v, spread %v", o.restartReconnectIn, o.restartTryFor, o.shutdownSpread)
	}
	// Under Docker's 10 s stop timeout, and a client told to try for
	// try-for must still be trying when the replacement comes up.
	if b := o.shutdownBound(); b >= 10*time.Second || o.restartTryFor <= b {
		t.Fatalf("default bound %v: want under 10 s and below -restart-try-for %v", b, o.restartTryFor)
	}
	for _, f := range []string{"restart-reconnect-in", "restart-try-for", "shutdown-spread"} {
		expectRefused(t, []string{"-" + f + "=-1s"}, "-"+f)
	}
	if o, _ := parseFlags([]string{"-shutdown-spread=0"}); len(o.checkShutdownFlags()) != 0 {
		t.Fatal("-shutdown-spread=0 (close at once) refused")
	}
}

// TestSystemdStopTimeoutCoversTheShutdown: systemd kills a service that
// has not stopped within TimeoutStopSec (90 s when the unit does not
// say), which must leave room for a whole graceful shutdown with the
// default flags.
func TestSystemdStopTimeoutCoversTheShutdown(t *testing.T) {
	stop := 90 * time.Second
	if v := unitDirectives(t)["TimeoutStopSec"]; len(v) > 0 {
		d, err := time.ParseDuration(strings.ReplaceAll(v[len(v)-1], " ", ""))
		if err != nil {
			t.Fatalf("TimeoutStopSec=%s: %v", v[len(v)-1], err)
		}
		stop = d
	}
	o, _ := parseFlags(nil)
	if stop <= o.shutdownBound() {
		t.Fatalf("TimeoutStopSec %v does not cover a shutdown of up to %v", stop, o.shutdownBound())
	}
}
