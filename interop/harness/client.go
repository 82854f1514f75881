package harness

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"strconv"
	"testing"
	"time"

	"tailscale.com/derp"
	"tailscale.com/derp/derphttp"
	"tailscale.com/net/netmon"
	"tailscale.com/tailcfg"
	"tailscale.com/types/key"
)

// Wait bounds every wait in the interop tests. It is a failure deadline,
// never a measured duration: a healthy server answers in microseconds.
const Wait = 15 * time.Second

// Client is Tailscale's DERP client connected to a test server, with a
// goroutine that pumps everything it receives onto a channel.
type Client struct {
	*derphttp.Client
	Priv key.NodePrivate
	Pub  key.NodePublic

	msgs chan derp.ReceivedMessage
	errs chan error
}

// ClientOption adjusts the client before it connects.
type ClientOption func(*derphttp.Client)

// WithMeshKey presents the region's mesh key.
func WithMeshKey(hexKey string) ClientOption {
	return func(c *derphttp.Client) {
		k, err := key.ParseDERPMesh(hexKey)
		if err != nil {
			panic(err)
		}
		c.MeshKey = k
	}
}

// WithWatch subscribes to connection changes (needs the mesh key).
func WithWatch() ClientOption {
	return func(c *derphttp.Client) { c.WatchConnectionChanges = true }
}

// WithProber marks the client as a prober.
func WithProber() ClientOption { return func(c *derphttp.Client) { c.IsProber = true } }

// Connect dials srv as priv (a fresh key if zero) and waits for the
// server's ServerInfo, which must be the first message.
func Connect(tb testing.TB, srv *Server, priv key.NodePrivate, opts ...ClientOption) *Client {
	tb.Helper()
	c, err := Dial(srv.URL(), priv, opts...)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { c.Close() })
	return c
}

// Dial is Connect without a testing.TB, for tools.
func Dial(url string, priv key.NodePrivate, opts ...ClientOption) (*Client, error) {
	if priv.IsZero() {
		priv = key.NewNode()
	}
	dc, err := derphttp.NewClient(priv, url, func(string, ...any) {}, netmon.NewStatic())
	if err != nil {
		return nil, err
	}
	return start(dc, priv, opts)
}

// DialRegion connects as Tailscale clients really do: through a DERP map
// node (HostName for TLS, an IP to dial, a port), over TLS trusting roots
// (nil: the system's), optionally pinning the certificate with certName
// ("sha256-raw:<hex>").
func DialRegion(srv *Server, priv key.NodePrivate, roots *x509.CertPool, certName string, opts ...ClientOption) (*Client, error) {
	if priv.IsZero() {
		priv = key.NewNode()
	}
	host, port, _ := net.SplitHostPort(srv.Addr())
	p, _ := strconv.Atoi(port)
	region := &tailcfg.DERPRegion{RegionID: 900, RegionCode: "test", Nodes: []*tailcfg.DERPNode{{
		Name: "900a", RegionID: 900, HostName: srv.Opts.Hostname, IPv4: host, IPv6: "none",
		DERPPort: p, STUNPort: -1, CertName: certName,
	}}}
	dc := derphttp.NewRegionClient(priv, func(string, ...any) {}, netmon.NewStatic(), func() *tailcfg.DERPRegion { return region })
	if roots != nil {
		dc.TLSConfig = &tls.Config{RootCAs: roots}
	}
	return start(dc, priv, opts)
}

func start(dc *derphttp.Client, priv key.NodePrivate, opts []ClientOption) (*Client, error) {
	dc.SetCanAckPings(true)
	for _, o := range opts {
		o(dc)
	}
	ctx, cancel := context.WithTimeout(context.Background(), Wait)
	defer cancel()
	if err := dc.Connect(ctx); err != nil {
		dc.Close()
		return nil, fmt.Errorf("connect: %w", err)
	}
	c := &Client{Client: dc, Priv: priv, Pub: priv.Public(), msgs: make(chan derp.ReceivedMessage, 4096), errs: make(chan error, 1)}
	go c.pump()
	select {
	case m := <-c.msgs:
		if _, ok := m.(derp.ServerInfoMessage); !ok {
			dc.Close()
			return nil, fmt.Errorf("first message is %T, want ServerInfo", m)
		}
	case err := <-c.errs:
		dc.Close()
		return nil, fmt.Errorf("before ServerInfo: %w", err)
	case <-time.After(Wait):
		dc.Close()
		return nil, errors.New("no ServerInfo")
	}
	return c, nil
}

// pump receives until the connection fails. derphttp reconnects on the
// next Recv after an error; stopping here keeps a closed connection closed.
func (c *Client) pump() {
	for {
		m, err := c.Recv()
		if err != nil {
			c.errs <- err
			return
		}
		if p, ok := m.(derp.ReceivedPacket); ok {
			// Data aliases the client's read buffer until the next Recv.
			p.Data = append([]byte(nil), p.Data...)
			m = p
		}
		c.msgs <- m
	}
}

// Next returns the next message other than a KeepAlive.
func (c *Client) Next(tb testing.TB) derp.ReceivedMessage {
	tb.Helper()
	m, err := c.NextErr()
	if err != nil {
		tb.Fatalf("client %v: %v", c.Pub.ShortString(), err)
	}
	return m
}

// NextErr is Next for tools: it returns the connection's error instead
// of failing.
func (c *Client) NextErr() (derp.ReceivedMessage, error) {
	return c.await(Wait, func(m derp.ReceivedMessage) bool {
		_, keepAlive := m.(derp.KeepAliveMessage)
		return !keepAlive
	})
}

// await returns the first message within d that want accepts, skipping
// the others, or the connection's error, or an error once d has passed.
func (c *Client) await(d time.Duration, want func(derp.ReceivedMessage) bool) (derp.ReceivedMessage, error) {
	deadline := time.After(d)
	for {
		select {
		case m := <-c.msgs:
			if want(m) {
				return m, nil
			}
		case err := <-c.errs:
			c.errs <- err // stay failed
			// pump queued every message before its error, but select
			// picks among ready cases at random: what arrived before the
			// connection ended comes first.
			for {
				select {
				case m := <-c.msgs:
					if want(m) {
						return m, nil
					}
					continue
				default:
				}
				return nil, err
			}
		case <-deadline:
			return nil, fmt.Errorf("nothing received within %v", d)
		}
	}
}

// AwaitPacketFrom waits up to d for a packet from src, skipping anything
// else that arrives meanwhile.
func (c *Client) AwaitPacketFrom(src key.NodePublic, d time.Duration) (derp.ReceivedPacket, error) {
	m, err := c.await(d, func(m derp.ReceivedMessage) bool {
		p, ok := m.(derp.ReceivedPacket)
		return ok && p.Source == src
	})
	if err != nil {
		return derp.ReceivedPacket{}, err
	}
	return m.(derp.ReceivedPacket), nil
}

// RecvPacket returns the next message, which must be a packet.
func (c *Client) RecvPacket(tb testing.TB) derp.ReceivedPacket {
	tb.Helper()
	m := c.Next(tb)
	p, ok := m.(derp.ReceivedPacket)
	if !ok {
		tb.Fatalf("client %v got %T %+v, want a packet", c.Pub.ShortString(), m, m)
	}
	return p
}

// ExpectPacket requires the next message to be payload from src.
func (c *Client) ExpectPacket(tb testing.TB, src key.NodePublic, payload []byte) {
	tb.Helper()
	p := c.RecvPacket(tb)
	if p.Source != src {
		tb.Fatalf("packet from %v, want %v", p.Source.ShortString(), src.ShortString())
	}
	if string(p.Data) != string(payload) {
		tb.Fatalf("packet of %d bytes differs from the %d sent", len(p.Data), len(payload))
	}
}

// ExpectPeerGone requires the next message to be PeerGone(peer, reason).
func (c *Client) ExpectPeerGone(tb testing.TB, peer key.NodePublic, reason derp.PeerGoneReasonType) {
	tb.Helper()
	m := c.Next(tb)
	pg, ok := m.(derp.PeerGoneMessage)
	if !ok || pg.Peer != peer || pg.Reason != reason {
		tb.Fatalf("got %T %+v, want PeerGone(%v, %v)", m, m, peer.ShortString(), reason)
	}
}

// Sync proves that no control frame (PeerGone, PeerPresent) is pending:
// it pings the server and requires the pong to be the next message.
// Anything the server queued for this client's control queue before
// answering the ping arrives first and fails the test, which is how
// absence is tested without waiting. It proves nothing about data
// packets: a server may write its control frames ahead of queued
// packets (derpd does). For those, see SyncPackets.
func (c *Client) Sync(tb testing.TB) {
	tb.Helper()
	var data [8]byte
	copy(data[:], "sync-pin")
	if err := c.SendPing(data); err != nil {
		tb.Fatal(err)
	}
	m := c.Next(tb)
	if pong, ok := m.(derp.PongMessage); !ok || pong != derp.PongMessage(data) {
		tb.Fatalf("client %v got %T %+v before its pong", c.Pub.ShortString(), m, m)
	}
}

// SyncPackets proves that no data packet is pending for this client: a
// marker packet sent now by from must be the next packet it receives (a
// destination's packets keep their order). Control frames met on the way
// fail the test too.
func (c *Client) SyncPackets(tb testing.TB, from *Client) {
	tb.Helper()
	marker := []byte("sync-packets-marker")
	if err := from.Send(c.Pub, marker); err != nil {
		tb.Fatal(err)
	}
	c.ExpectPacket(tb, from.Pub, marker)
}

// ExpectKeepAlive waits up to d for a KeepAlive; other messages are
// skipped.
func (c *Client) ExpectKeepAlive(tb testing.TB, d time.Duration) {
	tb.Helper()
	_, err := c.await(d, func(m derp.ReceivedMessage) bool {
		_, keepAlive := m.(derp.KeepAliveMessage)
		return keepAlive
	})
	if err != nil {
		tb.Fatalf("client %v: no keepalive: %v", c.Pub.ShortString(), err)
	}
}

// ExpectClosed waits for the server to close the connection.
func (c *Client) ExpectClosed(tb testing.TB) {
	tb.Helper()
	deadline := time.After(Wait)
	for {
		select {
		case <-c.msgs:
		case err := <-c.errs:
			c.errs <- err
			return
		case <-deadline:
			tb.Fatalf("client %v: server did not close the connection", c.Pub.ShortString())
		}
	}
}

// NewKey returns a public key nobody holds the private half of.
func NewKey() key.NodePublic { return key.NewNode().Public() }
