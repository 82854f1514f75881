package interop

import (
	"bufio"
	"crypto/rand"
	"crypto/tls"
	"io"
	"net"
	"net/http"
	"net/netip"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/derpd/derpd/interop/harness"
	"github.com/derpd/derpd/wire"
	"tailscale.com/types/key"
)

// hostilePeer is a "DERP server" a derpd node meshes with that does what
// no honest one does. It completes the handshake the way a server must
// (so derpd's link takes it for a peer) and then hands each session to
// the test.
type hostilePeer struct {
	ln       net.Listener
	priv     wire.NodePrivate
	sessions chan *hostileSession
}

type hostileSession struct {
	conn net.Conn
	w    *wire.Writer
}

func startHostilePeer(t *testing.T, r *harness.Region, name string) *hostilePeer {
	t.Helper()
	r.CA.Issue(t, r.CertDir, name, 77)
	cert, err := tls.LoadX509KeyPair(filepath.Join(r.CertDir, name+".crt"), filepath.Join(r.CertDir, name+".key"))
	if err != nil {
		t.Fatal(err)
	}
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{cert}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	p := &hostilePeer{ln: ln, priv: wire.GenerateNodePrivate(), sessions: make(chan *hostileSession, 8)}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go p.handshake(c)
		}
	}()
	return p
}

func (p *hostilePeer) port() string { return strconv.Itoa(p.ln.Addr().(*net.TCPAddr).Port) }

func (p *hostilePeer) handshake(c net.Conn) {
	br := bufio.NewReader(c)
	if _, err := http.ReadRequest(br); err != nil {
		c.Close()
		return
	}
	c.Write([]byte("HTTP/1.1 101 Switching Protocols\r\nUpgrade: DERP\r\nConnection: Upgrade\r\n\r\n"))
	w := wire.NewWriter(c, 0)
	w.WriteServerKey(p.priv.Public())
	w.Flush()
	rd := wire.NewReader(br, nil, 1<<20)
	typ, n, err := rd.ReadHeader()
	if err != nil || typ != wire.FrameClientInfo {
		c.Close()
		return
	}
	body := make([]byte, n)
	if rd.ReadFull(body) != nil {
		c.Close()
		return
	}
	_, _, shared, err := wire.OpenClientInfo(body, p.priv)
	if err != nil {
		c.Close()
		return
	}
	si, _ := wire.AppendServerInfoShared(nil, &shared, wire.ServerInfo{Version: 2})
	w.WriteFrame(wire.FrameServerInfo, si, nil)
	w.Flush()
	// Whatever the link sends from here on (WatchConns, pings) is read
	// and ignored.
	go func() {
		for {
			if _, n, err := rd.ReadHeader(); err != nil || rd.Discard(int(n)) != nil {
				return
			}
		}
	}()
	p.sessions <- &hostileSession{conn: c, w: w}
}

func (p *hostilePeer) next(t *testing.T) *hostileSession {
	t.Helper()
	select {
	case s := <-p.sessions:
		t.Cleanup(func() { s.conn.Close() })
		return s
	case <-time.After(harness.Wait):
		t.Fatal("derpd's link did not connect to the peer")
		return nil
	}
}

// A mesh peer that floods keys, sends garbage, or vanishes in the middle
// of a frame costs bounded memory and never harms the node's clients;
// each broken session takes its keys with it and leaks nothing.
func TestMeshHostilePeer(t *testing.T) {
	if harness.TargetFromEnv() != harness.Derpd {
		t.Skip("checks derpd's key limit and its mesh counters; derper has neither")
	}
	r := newRegion(t, harness.Derpd)
	const evil = "evil.derp.test"
	peer := startHostilePeer(t, r.Region, evil)
	const limit = 50_000
	n := r.start(0, "-mesh-with", evil+":"+peer.port()+"/127.0.0.1", "-mesh-max-peer-keys", strconv.Itoa(limit))
	s := peer.next(t)
	n.WaitMetric(t, "derpd_mesh_link_up{peer=\""+evil+":"+peer.port()+"/127.0.0.1\"}", 1)
	baseline := n.Metric(t, "goroutines")
	heapBefore := n.Metric(t, "memstats_heap_inuse")

	// 100,000 keys, twice the limit, as fast as TCP takes them.
	var k wire.NodePublic
	for range 2 * limit {
		rand.Read(k[:])
		s.w.WritePeerPresent(k, netipAddrPort("192.0.2.1:1"), wire.PeerPresentIsRegular)
	}
	if err := s.w.Flush(); err != nil {
		t.Fatal(err)
	}
	n.WaitMetric(t, "derpd_mesh_keys_refused", limit)
	n.WaitMetric(t, "derp_clients_remote", limit)
	grew := (n.Metric(t, "memstats_heap_inuse") - heapBefore) / (1 << 20)
	t.Logf("heap grew %.1f MiB for %d remote keys", grew, limit)
	if grew > 100 {
		t.Errorf("heap grew %.1f MiB for %d keys; the per-key cost is out of bounds", grew, limit)
	}
	// The node's own clients are unharmed.
	a, b := r.connect(0, key.NodePrivate{}), r.connect(0, key.NodePrivate{})
	exchange(t, a, b, "during the flood")

	// Garbage: a frame that claims 16 MiB. The session ends, its keys go,
	// and the link reconnects.
	s.conn.Write(wire.AppendHeader(nil, wire.FramePeerPresent, 16<<20))
	s2 := peer.next(t)
	n.WaitMetric(t, "derp_clients_remote", 0)

	// A few keys, then half a frame, then gone.
	for range 10 {
		rand.Read(k[:])
		s2.w.WritePeerPresent(k, netipAddrPort("192.0.2.1:1"), wire.PeerPresentIsRegular)
	}
	s2.w.Flush()
	n.WaitMetric(t, "derp_clients_remote", 10)
	s2.conn.Write(append(wire.AppendHeader(nil, wire.FramePeerPresent, 51), k[:20]...))
	s2.conn.Close()
	peer.next(t)
	n.WaitMetric(t, "derp_clients_remote", 0)
	n.WaitMetric(t, "derpd_mesh_link_up{peer=\""+evil+":"+peer.port()+"/127.0.0.1\"}", 1)

	// Two clients and three sessions later, only the clients' goroutines
	// are new.
	a.Close()
	b.Close()
	n.WaitMetric(t, "derp_current_connections", 0)
	deadline := time.Now().Add(harness.Wait)
	for g := n.Metric(t, "goroutines"); g > baseline+2; g = n.Metric(t, "goroutines") {
		if time.Now().After(deadline) {
			if res, err := n.HTTPClient().Get(n.BaseURL() + "/debug/pprof/goroutine?debug=1"); err == nil {
				var sb strings.Builder
				io.Copy(&sb, res.Body)
				res.Body.Close()
				t.Logf("goroutines:\n%s", sb.String())
			}
			t.Fatalf("%v goroutines, %v before the hostile sessions", g, baseline)
		}
		time.Sleep(20 * time.Millisecond)
	}
	exchangeAfter := r.connect(0, key.NodePrivate{})
	exchange(t, exchangeAfter, r.connect(0, key.NodePrivate{}), "after")
}

func netipAddrPort(s string) netip.AddrPort { return netip.MustParseAddrPort(s) }
