package actorkit

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"math/big"
	"net"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/derpd/derpd/actors/client"
	"github.com/derpd/derpd/actors/mesh"
)

// Node starts another node of the region in the same bubble: an actor
// system of its own, with its own registry (and flows, if asked) and
// server key, on this kit's dispatcher and clock, so that one Settle or
// Advance runs every node. Its server has this kit's mesh key unless opts
// set another. Only Run's kits have nodes.
func (k *Kit) Node(opts ...Option) *Kit {
	k.T.Helper()
	if !k.bubble {
		k.T.Fatal("actorkit: Node needs a kit from Run")
	}
	k.region.mu.Lock()
	k.region.nodes++
	n := k.region.nodes
	k.region.mu.Unlock()
	base := []Option{func(c *config) {
		c.server.PrivateKey = PrivateKey(1<<63 + uint64(n))
		c.server.MeshKey = k.Server.MeshKey
	}}
	node := newKit(k.T, k.Disp, k.Clock, k.region, append(base, opts...))
	node.bubble = true
	node.name = fmt.Sprintf("node%d.test", n)
	return node
}

// MeshLink is one mesh link of a kit's mesh manager: the real link actor
// (actors/mesh), dialling its peer kit's server in memory. The TLS is
// real, with a certificate made for the run; the peer answers the /derp
// upgrade and serves the connection with client.Serve, as derpd does.
type MeshLink struct {
	From, To *Kit
	Target   mesh.Target

	mu      sync.Mutex
	conns   []net.Conn // the peer's ends of every connection dialled
	refused bool
}

// MeshWith starts this kit's mesh manager with one link to each of
// peers, and settles: each link is up and watching when it returns (or
// has failed, as a refused dial does). A system has one mesh manager, so
// MeshWith is called once per kit.
func (k *Kit) MeshWith(peers ...*Kit) []*MeshLink {
	k.T.Helper()
	pki := k.region.certs(k.T)
	var links []*MeshLink
	var targets []mesh.Target
	for _, p := range peers {
		l := &MeshLink{From: k, To: p, Target: mesh.Target{Name: p.name, Host: p.name, Port: mesh.DefaultPort}}
		links = append(links, l)
		targets = append(targets, l.Target)
	}
	k.region.mu.Lock()
	k.region.links = append(k.region.links, links...)
	k.region.mu.Unlock()
	cfg := &mesh.Config{
		PrivateKey: k.Server.PrivateKey,
		PublicKey:  k.Server.PublicKey,
		MeshKey:    k.Server.MeshKey,
		TLS:        &tls.Config{RootCAs: pki.pool},
		Seed:       1,
		Dial: func(ctx context.Context, _, addr string) (net.Conn, error) {
			for _, l := range links {
				if l.Target.DialAddr() == addr {
					return l.dial()
				}
			}
			return nil, fmt.Errorf("actorkit: no node at %s", addr)
		},
	}
	mesh.SpawnManager(k.Sys, cfg, targets, nil)
	k.Settle()
	return links
}

// dial makes one connection to the peer, whose server side runs on a
// goroutine of the bubble.
func (l *MeshLink) dial() (net.Conn, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.refused {
		return nil, errors.New("actorkit: connection refused")
	}
	ours, theirs := net.Pipe()
	l.conns = append(l.conns, theirs)
	go l.To.serveMesh(theirs)
	return ours, nil
}

// serveMesh is the peer's side of a dialled link: TLS, the HTTP upgrade
// to DERP, then client.Serve like any connection.
func (k *Kit) serveMesh(conn net.Conn) {
	pki := k.region.certs(k.T)
	tc := tls.Server(conn, &tls.Config{Certificates: []tls.Certificate{pki.leaf}})
	if err := tc.Handshake(); err != nil {
		conn.Close()
		return
	}
	br := bufio.NewReader(tc)
	req, err := http.ReadRequest(br)
	if err != nil || req.URL.Path != "/derp" || req.Header.Get("Upgrade") != "DERP" {
		conn.Close()
		return
	}
	if _, err := tc.Write([]byte("HTTP/1.1 101 Switching Protocols\r\nUpgrade: DERP\r\nConnection: Upgrade\r\n\r\n")); err != nil {
		conn.Close()
		return
	}
	var prefix []byte
	if n := br.Buffered(); n > 0 {
		b, _ := br.Peek(n)
		prefix = append([]byte(nil), b...)
	}
	k.region.mu.Lock()
	k.region.addrs++
	a := addr(k.region.addrs)
	k.region.mu.Unlock()
	client.Serve(k.Sys, k.Server, client.Accepted{Conn: tc, Prefix: prefix, Addr: a})
}

// Cut closes the link's connections from the peer's side, as a network
// failure would, and settles: the link's session ends and its keys leave
// the forwarder table. The link redials when its backoff is up (Advance),
// unless Refuse.
func (l *MeshLink) Cut() {
	l.cut()
	l.From.Settle()
}

func (l *MeshLink) cut() {
	l.mu.Lock()
	conns := l.conns
	l.conns = nil
	l.mu.Unlock()
	for _, c := range conns {
		c.Close()
	}
}

// Refuse makes the link's next dials fail (refused), or succeed again.
func (l *MeshLink) Refuse(refuse bool) {
	l.mu.Lock()
	l.refused = refuse
	l.mu.Unlock()
}

// pki is a CA and one certificate for every node name of a region (the
// TLS names node1.test, node2.test, ...).
type pki struct {
	pool *x509.CertPool
	leaf tls.Certificate
}

// certs makes the region's certificates on first use, inside the bubble,
// so that they are valid at the bubble's time.
func (r *region) certs(t testing.TB) *pki {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.pki != nil {
		return r.pki
	}
	now := time.Now()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	caTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "actorkit CA"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(1000 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, err := x509.ParseCertificate(caDER)
	if err != nil {
		t.Fatal(err)
	}
	leafKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for i := range 16 {
		names = append(names, fmt.Sprintf("node%d.test", i))
	}
	leafTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: names[0]}, DNSNames: names,
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(1000 * time.Hour),
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}, KeyUsage: x509.KeyUsageDigitalSignature,
	}
	leafDER, err := x509.CreateCertificate(rand.Reader, leafTmpl, ca, &leafKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca)
	r.pki = &pki{pool: pool, leaf: tls.Certificate{Certificate: [][]byte{leafDER}, PrivateKey: leafKey}}
	return r.pki
}
