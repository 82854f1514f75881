package cluster

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net/netip"
	"sort"
	"strings"
	"sync"
	"time"

	"tailscale.com/derp"
	"tailscale.com/derp/derphttp"
	"tailscale.com/net/netmon"
	"tailscale.com/tailcfg"
	"tailscale.com/types/key"
)

// client is Tailscale's DERP client connected to one node, dialled as a
// tailnet device dials a region's node: through a DERP map entry whose
// HostName is the region's shared TLS name and whose IPv4 is the node's
// own address, verified against the test CA.
//
// Unlike harness.Client it keeps a record of everything it received
// instead of handing messages out one by one: a step of the cluster
// test asks afterwards whether a packet came and from whom, and counts
// the PeerGone messages, without having to know in which order the
// region's nodes got round to sending them.
type client struct {
	name string
	node *node
	priv key.NodePrivate
	pub  key.NodePublic
	dc   *derphttp.Client

	mu      sync.Mutex
	packets map[string][]key.NodePublic // payload → the sources it came from (once, unless duplicated)
	heard   map[key.NodePublic]bool     // sources a packet came from since their last PeerGone
	gone    map[key.NodePublic]int      // PeerGone(Disconnected) messages, by peer
	odd     []string                    // messages a plain client should never get
	err     error                       // why the connection ended; nil while it lasts
	closed  bool                        // closed by the test
	done    chan struct{}
}

// dialClient connects to the node at ip as priv (a fresh key if zero)
// and waits for ServerInfo, which must come first.
func dialClient(name string, n *node, ip netip.Addr, roots *x509.CertPool, priv key.NodePrivate) (*client, error) {
	if priv.IsZero() {
		priv = key.NewNode()
	}
	region := &tailcfg.DERPRegion{RegionID: 900, RegionCode: "cluster", Nodes: []*tailcfg.DERPNode{{
		Name: "900" + name, RegionID: 900, HostName: sharedName, IPv4: ip.String(), IPv6: "none",
		DERPPort: 443, STUNPort: -1,
	}}}
	dc := derphttp.NewRegionClient(priv, func(string, ...any) {}, netmon.NewStatic(), func() *tailcfg.DERPRegion { return region })
	dc.TLSConfig = &tls.Config{RootCAs: roots}
	dc.SetCanAckPings(true)
	ctx, cancel := context.WithTimeout(context.Background(), connectWait)
	defer cancel()
	if err := dc.Connect(ctx); err != nil {
		dc.Close()
		return nil, fmt.Errorf("client %s connecting to %s: %w", name, n.name, err)
	}
	// The first message must be ServerInfo; read it here, before the pump
	// takes over, so that a server which sends something else first fails
	// the connect.
	type first struct {
		m   derp.ReceivedMessage
		err error
	}
	ch := make(chan first, 1)
	go func() {
		m, err := dc.Recv()
		ch <- first{m, err}
	}()
	select {
	case f := <-ch:
		if f.err != nil {
			dc.Close()
			return nil, fmt.Errorf("client %s on %s, before ServerInfo: %w", name, n.name, f.err)
		}
		if _, ok := f.m.(derp.ServerInfoMessage); !ok {
			dc.Close()
			return nil, fmt.Errorf("client %s on %s: first message is %T, want ServerInfo", name, n.name, f.m)
		}
	case <-time.After(connectWait):
		dc.Close()
		return nil, fmt.Errorf("client %s on %s: no ServerInfo within %v", name, n.name, connectWait)
	}
	c := &client{
		name: name, node: n, priv: priv, pub: priv.Public(), dc: dc,
		packets: map[string][]key.NodePublic{}, heard: map[key.NodePublic]bool{},
		gone: map[key.NodePublic]int{}, done: make(chan struct{}),
	}
	go c.pump()
	return c, nil
}

// pump records what arrives until the connection fails. derphttp would
// reconnect on the next Recv after an error; stopping keeps a broken
// connection broken, so a test sees it.
func (c *client) pump() {
	defer close(c.done)
	for {
		m, err := c.dc.Recv()
		c.mu.Lock()
		if err != nil {
			c.err = err
			c.mu.Unlock()
			return
		}
		switch m := m.(type) {
		case derp.ReceivedPacket:
			p := string(m.Data) // copies: Data aliases the read buffer
			c.packets[p] = append(c.packets[p], m.Source)
			c.heard[m.Source] = true
		case derp.PeerGoneMessage:
			if m.Reason != derp.PeerGoneReasonDisconnected {
				c.odd = append(c.odd, fmt.Sprintf("PeerGone(%s) with reason %d", m.Peer.ShortString(), m.Reason))
				break
			}
			c.gone[m.Peer]++
			delete(c.heard, m.Peer)
		case derp.KeepAliveMessage, derp.PongMessage, derp.HealthMessage, derp.ServerRestartingMessage:
		case derp.PingMessage:
			c.dc.SendPong(m) // as tailscaled does
		default:
			c.odd = append(c.odd, fmt.Sprintf("%T %+v", m, m))
		}
		c.mu.Unlock()
	}
}

func (c *client) String() string { return c.name + "@" + c.node.name }

// send sends payload to dst.
func (c *client) send(dst *client, payload string) error {
	return c.dc.Send(dst.pub, []byte(payload))
}

// sources is who payload came from, one entry per copy received.
func (c *client) sources(payload string) []key.NodePublic {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]key.NodePublic(nil), c.packets[payload]...)
}

// broken returns why the connection ended, or nil.
func (c *client) broken() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.err == nil {
		return nil
	}
	if c.closed {
		return fmt.Errorf("closed by the test (%v)", c.err)
	}
	return c.err
}

// goneCount is how many PeerGone(Disconnected) c got about peer.
func (c *client) goneCount(peer key.NodePublic) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.gone[peer]
}

// hasHeard reports whether a packet from p came since p's last PeerGone:
// the server owes c a PeerGone when p leaves the region.
func (c *client) hasHeard(p *client) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.heard[p.pub]
}

// oddities are the messages a plain client should never get.
func (c *client) oddities() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]string(nil), c.odd...)
}

// close ends the connection and waits for the pump to stop.
func (c *client) close() {
	c.mu.Lock()
	c.closed = true
	c.mu.Unlock()
	c.dc.Close()
	<-c.done
}

// awaitBroken waits until the server has ended the connection.
func (c *client) awaitBroken(d time.Duration) error {
	select {
	case <-c.done:
		return nil
	case <-time.After(d):
		return errors.New("connection still up")
	}
}

// goneSummary lists c's PeerGone counts by peer name, for failure
// messages.
func goneSummary(c *client, everyone []*client) string {
	c.mu.Lock()
	defer c.mu.Unlock()
	name := map[key.NodePublic]string{}
	for _, p := range everyone {
		name[p.pub] = p.name
	}
	var parts []string
	for k, n := range c.gone {
		who := name[k]
		if who == "" {
			who = k.ShortString()
		}
		parts = append(parts, fmt.Sprintf("%s:%d", who, n))
	}
	sort.Strings(parts)
	return "{" + strings.Join(parts, " ") + "}"
}
