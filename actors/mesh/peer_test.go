package mesh

import (
	"bufio"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"math/big"
	"net"
	"net/http"
	"net/netip"
	"testing"
	"time"

	"github.com/derpd/derpd/wire"
)

// The fake peer: a DERP server written for these tests with the wire
// package, speaking TLS on loopback, that hands each connection to the
// test once the handshake is done so the test can play the peer's part
// frame by frame.

const peerName = "peer.test"

// testPKI is a CA and a leaf certificate for peerName.
type testPKI struct {
	pool *x509.CertPool
	leaf tls.Certificate
}

func newPKI(t testing.TB) *testPKI {
	t.Helper()
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	caTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "mesh test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(caDER)
	leafKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	leafTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: peerName}, DNSNames: []string{peerName},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}, KeyUsage: x509.KeyUsageDigitalSignature,
	}
	leafDER, err := x509.CreateCertificate(rand.Reader, leafTmpl, ca, &leafKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca)
	return &testPKI{pool: pool, leaf: tls.Certificate{Certificate: [][]byte{leafDER}, PrivateKey: leafKey}}
}

// metaCertDER is a DERP meta certificate for k with protocol version v
// as its serial number.
func metaCertDER(t testing.TB, k wire.NodePublic, v int64) []byte {
	t.Helper()
	_, priv, _ := ed25519.GenerateKey(rand.Reader)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(v), Subject: pkix.Name{CommonName: metaCertPrefix + k.UntypedHexString()},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), BasicConstraintsValid: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, priv.Public(), priv)
	if err != nil {
		t.Fatal(err)
	}
	return der
}

type fakePeer struct {
	t        testing.TB
	ln       net.Listener
	priv     wire.NodePrivate
	pub      wire.NodePublic
	meshKey  wire.MeshKey
	pki      *testPKI
	sessions chan *peerSide

	// How it behaves; set before the link connects.
	noServerInfo  bool // close after ClientInfo, as a server refusing us would
	badServerInfo bool // seal ServerInfo with a key other than its own
}

// peerSide is one accepted, handshaken connection, seen from the peer.
type peerSide struct {
	conn           net.Conn
	rd             *wire.Reader
	w              *wire.Writer
	client         wire.NodePublic
	info           wire.ClientInfo
	fastStart      bool
	host           string // the request's Host header
	firstAfterInfo wire.FrameType
}

// startPeer listens on loopback. With meta, its chain carries the meta
// certificate and TLS 1.3 is used, so links take the fast start.
func startPeer(t testing.TB, pki *testPKI, priv wire.NodePrivate, meshKey wire.MeshKey, meta bool) *fakePeer {
	t.Helper()
	cert := pki.leaf
	if meta {
		cert.Certificate = append(append([][]byte{}, cert.Certificate...), metaCertDER(t, priv.Public(), wire.ProtocolVersion))
	}
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12})
	if err != nil {
		t.Fatal(err)
	}
	p := &fakePeer{t: t, ln: ln, priv: priv, pub: priv.Public(), meshKey: meshKey, pki: pki, sessions: make(chan *peerSide, 16)}
	t.Cleanup(func() { ln.Close() })
	go p.accept()
	return p
}

func (p *fakePeer) target() Target {
	port := p.ln.Addr().(*net.TCPAddr).Port
	return Target{Name: "peer", Host: peerName, Port: port, DialHost: "127.0.0.1"}
}

func (p *fakePeer) accept() {
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		go func() {
			if ps := p.handshake(c); ps != nil {
				p.sessions <- ps
			} else {
				c.Close()
			}
		}()
	}
}

func (p *fakePeer) handshake(c net.Conn) *peerSide {
	c.SetDeadline(time.Now().Add(10 * time.Second))
	br := bufio.NewReader(c)
	req, err := http.ReadRequest(br)
	if err != nil || req.URL.Path != "/derp" || req.Header.Get("Upgrade") != "DERP" {
		return nil
	}
	ps := &peerSide{conn: c, w: wire.NewWriter(c, 0), fastStart: req.Header.Get("Derp-Fast-Start") == "1", host: req.Host}
	if !ps.fastStart {
		c.Write([]byte("HTTP/1.1 101 Switching Protocols\r\nUpgrade: DERP\r\nConnection: Upgrade\r\n\r\n"))
	}
	var prefix []byte
	if n := br.Buffered(); n > 0 {
		b, _ := br.Peek(n)
		prefix = append([]byte(nil), b...)
	}
	ps.rd = wire.NewReader(c, prefix, 1<<20)
	ps.w.WriteServerKey(p.pub)
	if ps.w.Flush() != nil {
		return nil
	}
	typ, n, err := ps.rd.ReadHeader()
	if err != nil || typ != wire.FrameClientInfo {
		return nil
	}
	body := make([]byte, n)
	if ps.rd.ReadFull(body) != nil {
		return nil
	}
	client, info, shared, err := wire.OpenClientInfo(body, p.priv)
	if err != nil {
		return nil
	}
	ps.client, ps.info = client, info
	if p.noServerInfo {
		return nil
	}
	if p.badServerInfo {
		shared = wire.Precompute(wire.GenerateNodePrivate(), client)
	}
	si, _ := wire.AppendServerInfoShared(nil, &shared, wire.ServerInfo{Version: 2})
	ps.w.WriteFrame(wire.FrameServerInfo, si, nil)
	if ps.w.Flush() != nil {
		return nil
	}
	typ, n, err = ps.rd.ReadHeader()
	if err != nil {
		return nil
	}
	ps.firstAfterInfo = typ
	ps.rd.Discard(int(n))
	c.SetDeadline(time.Time{})
	return ps
}

// next waits for the next handshaken connection.
func (p *fakePeer) next() *peerSide {
	p.t.Helper()
	select {
	case ps := <-p.sessions:
		p.t.Cleanup(func() { ps.conn.Close() })
		return ps
	case <-time.After(10 * time.Second):
		p.t.Fatal("the link did not connect")
		return nil
	}
}

func (ps *peerSide) present(t testing.TB, keys ...wire.NodePublic) {
	t.Helper()
	for _, k := range keys {
		ps.w.WritePeerPresent(k, netip.MustParseAddrPort("192.0.2.1:1"), wire.PeerPresentIsRegular)
	}
	if err := ps.w.Flush(); err != nil {
		t.Fatal(err)
	}
}

func (ps *peerSide) gone(t testing.TB, reason wire.PeerGoneReason, keys ...wire.NodePublic) {
	t.Helper()
	for _, k := range keys {
		ps.w.WritePeerGone(k, reason)
	}
	if err := ps.w.Flush(); err != nil {
		t.Fatal(err)
	}
}

func (ps *peerSide) raw(t testing.TB, b []byte) {
	t.Helper()
	if _, err := ps.conn.Write(b); err != nil {
		t.Fatal(err)
	}
}

// readForward reads the next frame, which must be a ForwardPacket.
func (ps *peerSide) readForward(t testing.TB) (src, dst wire.NodePublic, payload []byte) {
	t.Helper()
	ps.conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	for {
		typ, n, err := ps.rd.ReadHeader()
		if err != nil {
			t.Fatalf("peer reading: %v", err)
		}
		if typ == wire.FramePing {
			ps.rd.Discard(int(n))
			continue
		}
		if typ != wire.FrameForwardPacket {
			t.Fatalf("peer got %v, want ForwardPacket", typ)
		}
		body := make([]byte, n)
		if err := ps.rd.ReadFull(body); err != nil {
			t.Fatal(err)
		}
		return wire.NodePublic(body[:32]), wire.NodePublic(body[32:64]), body[64:]
	}
}

func testKey(b byte) wire.NodePublic {
	var k wire.NodePublic
	k[0], k[31] = b, 7
	return k
}

func x509ParseOne(der []byte) ([]*x509.Certificate, error) {
	c, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	return []*x509.Certificate{c}, nil
}
