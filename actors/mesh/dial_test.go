package mesh

import (
	"context"
	"crypto/tls"
	"errors"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/derpd/derpd/wire"
)

// testConfig is a link configuration for a server with a fresh key,
// trusting the test CA.
func testConfig(pki *testPKI, meshKey wire.MeshKey) *Config {
	priv := wire.GenerateNodePrivate()
	return &Config{PrivateKey: priv, PublicKey: priv.Public(), MeshKey: meshKey, TLS: &tls.Config{RootCAs: pki.pool}, Seed: 1}
}

func testMeshKey(b byte) wire.MeshKey {
	var k wire.MeshKey
	for i := range k {
		k[i] = b
	}
	return k
}

// The handshake as upstream's mesh client does it: TLS verified for the
// entry's host, ClientInfo with our server key and the mesh key and no
// ping acks, WatchConns pipelined right behind it, fast start when the
// peer's meta certificate gives its key.
func TestDialHandshake(t *testing.T) {
	for _, meta := range []bool{true, false} {
		t.Run(map[bool]string{true: "fast start", false: "upgrade response"}[meta], func(t *testing.T) {
			pki, mk := newPKI(t), testMeshKey(1)
			peer := startPeer(t, pki, wire.GenerateNodePrivate(), mk, meta)
			cfg := testConfig(pki, mk)
			pc, err := dialPeer(context.Background(), cfg, peer.target())
			if err != nil {
				t.Fatal(err)
			}
			defer pc.conn.Close()
			ps := peer.next()
			if pc.serverKey != peer.pub || pc.fastStart != meta || ps.fastStart != meta {
				t.Fatalf("server key %v fast start %v (peer saw %v), want %v and %v", pc.serverKey.ShortString(), pc.fastStart, ps.fastStart, peer.pub.ShortString(), meta)
			}
			if ps.client != cfg.PublicKey || !ps.info.MeshKey.Equal(mk) || ps.info.Version != 2 || ps.info.CanAckPings {
				t.Fatalf("peer saw client %v info %+v", ps.client.ShortString(), ps.info)
			}
			if ps.firstAfterInfo != wire.FrameWatchConns {
				t.Fatalf("first frame after ClientInfo is %v, want WatchConns", ps.firstAfterInfo)
			}
			if want := peerName + ":" + portString(peer); ps.host != want {
				t.Fatalf("Host header %q, want %q", ps.host, want)
			}
		})
	}
}

func portString(p *fakePeer) string {
	_, port, _ := net.SplitHostPort(p.ln.Addr().String())
	return port
}

// A -mesh-with entry that is this server (by key) is recognised before
// anything of ours is sent when the certificate names the key, and right
// after ServerKey otherwise.
func TestDialSelf(t *testing.T) {
	for _, meta := range []bool{true, false} {
		pki, mk := newPKI(t), testMeshKey(1)
		cfg := testConfig(pki, mk)
		peer := startPeer(t, pki, cfg.PrivateKey, mk, meta)
		if _, err := dialPeer(context.Background(), cfg, peer.target()); !errors.Is(err, errSelf) {
			t.Fatalf("meta %v: dialing ourselves: %v, want errSelf", meta, err)
		}
		select {
		case ps := <-peer.sessions:
			t.Fatalf("meta %v: the link completed a handshake with itself: %+v", meta, ps)
		default:
		}
	}
}

func TestDialFailures(t *testing.T) {
	pki, mk := newPKI(t), testMeshKey(1)
	for _, c := range []struct {
		name  string
		setup func(p *fakePeer, tg *Target, cfg *Config)
		want  string
	}{
		{"refused before ServerInfo", func(p *fakePeer, _ *Target, _ *Config) { p.noServerInfo = true }, "refused this server"},
		{"ServerInfo that does not open", func(p *fakePeer, _ *Target, _ *Config) { p.badServerInfo = true }, "does not open"},
		{"certificate for another name", func(_ *fakePeer, tg *Target, _ *Config) { tg.Host = "other.test" }, "TLS"},
		{"untrusted certificate", func(_ *fakePeer, _ *Target, cfg *Config) { cfg.TLS = &tls.Config{} }, "TLS"},
	} {
		t.Run(c.name, func(t *testing.T) {
			peer := startPeer(t, pki, wire.GenerateNodePrivate(), mk, true)
			tg, cfg := peer.target(), testConfig(pki, mk)
			c.setup(peer, &tg, cfg)
			_, err := dialPeer(context.Background(), cfg, tg)
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("dial: %v, want an error saying %q", err, c.want)
			}
		})
	}
}

// A peer that accepts the TCP connection and then says nothing holds the
// dial only until it is cancelled.
func TestDialCancelAbortsAHungPeer(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, err := ln.Accept()
		if err == nil {
			accepted <- c // held open, silent, until the test ends
		}
	}()
	pki := newPKI(t)
	tg := Target{Name: "hung", Host: peerName, Port: ln.Addr().(*net.TCPAddr).Port, DialHost: "127.0.0.1"}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		_, err := dialPeer(ctx, testConfig(pki, testMeshKey(1)), tg)
		done <- err
	}()
	// Cancel once the dial waits on the silent peer (in the TLS
	// handshake).
	select {
	case c := <-accepted:
		defer c.Close()
	case <-time.After(connectTimeout):
		t.Fatal("the dial never reached the peer")
	}
	cancel()
	select {
	case err := <-done:
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("dial ended with %v, want it to say it was cancelled", err)
		}
	case <-time.After(connectTimeout / 2):
		t.Fatal("cancelling did not abort the dial")
	}
}

func TestKeyFromMetaCert(t *testing.T) {
	k := testKey(9)
	parse := func(der []byte) wire.NodePublic {
		c, err := x509ParseOne(der)
		if err != nil {
			t.Fatal(err)
		}
		return keyFromMetaCert(c)
	}
	if got := parse(metaCertDER(t, k, 2)); got != k {
		t.Fatalf("key %v, want %v", got.ShortString(), k.ShortString())
	}
	for _, v := range []int64{0, 256} {
		if got := parse(metaCertDER(t, k, v)); !got.IsZero() {
			t.Errorf("version %d accepted", v)
		}
	}
}
