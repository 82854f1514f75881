package client

import (
	"bytes"
	"errors"
	"io"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/derpd/derpd/actors"
	"github.com/derpd/derpd/actors/registry"
	"github.com/derpd/derpd/wire"
	"github.com/rs/zerolog"
)

// testServer runs Serve for every connection accepted on a loopback
// listener, with a real registry: the whole connection path without HTTP.
type testServer struct {
	sys  *actors.System
	cfg  *Config
	addr string
}

func startTestServer(t testing.TB, cfg Config, opts ...actors.Option) *testServer {
	t.Helper()
	sys := actors.NewSystem(zerolog.Nop(), opts...)
	if cfg.PrivateKey.IsZero() {
		cfg.PrivateKey = wire.GenerateNodePrivate()
	}
	cfg.PublicKey = cfg.PrivateKey.Public()
	registry.Spawn(sys, cfg.PublicKey)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	s := &testServer{sys: sys, cfg: &cfg, addr: ln.Addr().String()}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			ap := netip.MustParseAddrPort(c.RemoteAddr().String())
			go Serve(sys, s.cfg, Accepted{Conn: c, Addr: ap})
		}
	}()
	return s
}

// testClient speaks DERP by hand, with the wire package.
type testClient struct {
	t    testing.TB
	priv wire.NodePrivate
	pub  wire.NodePublic
	conn net.Conn
	rd   *wire.Reader
	w    *wire.Writer
}

func (s *testServer) dial(t testing.TB) *testClient {
	t.Helper()
	c, err := net.Dial("tcp", s.addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	priv := wire.GenerateNodePrivate()
	tc := &testClient{t: t, priv: priv, pub: priv.Public(), conn: c, rd: wire.NewReader(c, nil, 1<<20), w: wire.NewWriter(c, 0)}
	typ, body := tc.read()
	if typ != wire.FrameServerKey {
		t.Fatalf("first frame %v, want ServerKey", typ)
	}
	if k, err := wire.ParseServerKey(body); err != nil || k != s.cfg.PublicKey {
		t.Fatalf("ServerKey %v (%v), want %v", k, err, s.cfg.PublicKey)
	}
	return tc
}

// connect dials and completes the handshake with info.
func (s *testServer) connect(t testing.TB, info wire.ClientInfo) *testClient {
	t.Helper()
	tc := s.dial(t)
	tc.sendClientInfo(s.cfg.PublicKey, info)
	typ, body := tc.read()
	if typ != wire.FrameServerInfo {
		t.Fatalf("frame after ClientInfo is %v, want ServerInfo", typ)
	}
	si, err := wire.ParseServerInfo(body, s.cfg.PublicKey, tc.priv)
	if err != nil || si.Version != 2 {
		t.Fatalf("ServerInfo %+v, %v", si, err)
	}
	return tc
}

func (tc *testClient) sendClientInfo(server wire.NodePublic, info wire.ClientInfo) {
	body, err := wire.AppendClientInfo(nil, tc.priv, server, info)
	if err != nil {
		tc.t.Fatal(err)
	}
	tc.frame(wire.FrameClientInfo, body)
}

func (tc *testClient) frame(t wire.FrameType, body []byte) {
	tc.w.WriteFrame(t, body, nil)
	if err := tc.w.Flush(); err != nil {
		tc.t.Fatalf("writing %v: %v", t, err)
	}
}

func (tc *testClient) send(dst wire.NodePublic, payload []byte) {
	tc.w.WriteSendPacket(dst, payload)
	if err := tc.w.Flush(); err != nil {
		tc.t.Fatalf("send: %v", err)
	}
}

func (tc *testClient) read() (wire.FrameType, []byte) {
	tc.t.Helper()
	typ, body, err := tc.tryRead()
	if err != nil {
		tc.t.Fatalf("read: %v", err)
	}
	return typ, body
}

// readSkipping reads the next frame that is not a KeepAlive.
func (tc *testClient) readSkipping() (wire.FrameType, []byte) {
	tc.t.Helper()
	for {
		typ, body := tc.read()
		if typ != wire.FrameKeepAlive {
			return typ, body
		}
	}
}

func (tc *testClient) tryRead() (wire.FrameType, []byte, error) {
	tc.conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	typ, n, err := tc.rd.ReadHeader()
	if err != nil {
		return 0, nil, err
	}
	body := make([]byte, n)
	err = tc.rd.ReadFull(body)
	return typ, body, err
}

// expectClosed reads until the server closes the connection, failing if
// a ServerInfo or a frame of type unwanted shows up first.
func (tc *testClient) expectClosed(unwanted ...wire.FrameType) {
	tc.t.Helper()
	for {
		typ, _, err := tc.tryRead()
		if err != nil {
			if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, net.ErrClosed) || isReset(err) {
				return
			}
			tc.t.Fatalf("waiting for close: %v", err)
		}
		for _, u := range unwanted {
			if typ == u {
				tc.t.Fatalf("got %v before the connection closed", typ)
			}
		}
	}
}

func isReset(err error) bool {
	var ne *net.OpError
	return errors.As(err, &ne) && !ne.Timeout()
}

var clientInfo = wire.ClientInfo{Version: 2, CanAckPings: true}

func TestServeRelaysBothWays(t *testing.T) {
	s := startTestServer(t, Config{})
	a := s.connect(t, clientInfo)
	b := s.connect(t, clientInfo)
	for _, size := range []int{0, 1, 1280, 16 << 10, wire.MaxPacketSize} {
		payload := bytes.Repeat([]byte{byte(size)}, size)
		for _, dir := range [][2]*testClient{{a, b}, {b, a}} {
			from, to := dir[0], dir[1]
			// The receiver may not be registered yet on the first send;
			// retry until it is, then require exact delivery.
			var typ wire.FrameType
			var body []byte
			from.send(to.pub, payload)
			typ, body = to.readSkipping()
			if typ != wire.FrameRecvPacket {
				t.Fatalf("size %d: got %v, want RecvPacket", size, typ)
			}
			if wire.NodePublic(body[:32]) != from.pub || !bytes.Equal(body[32:], payload) {
				t.Fatalf("size %d: wrong source or payload", size)
			}
		}
	}
}

func TestServePingPongAndBadPing(t *testing.T) {
	s := startTestServer(t, Config{})
	a := s.connect(t, clientInfo)
	ping := []byte("12345678extra bytes are ignored")
	a.frame(wire.FramePing, ping)
	if typ, body := a.readSkipping(); typ != wire.FramePong || string(body) != "12345678" {
		t.Fatalf("got %v %q, want Pong 12345678", typ, body)
	}
	a.frame(wire.FramePing, []byte("1234567"))
	a.expectClosed(wire.FramePong)
}

func TestServeRejectsBadHandshakes(t *testing.T) {
	s := startTestServer(t, Config{})
	other := wire.GenerateNodePrivate().Public()
	cases := map[string]func(tc *testClient){
		"box for another server": func(tc *testClient) { tc.sendClientInfo(other, clientInfo) },
		"wrong first frame":      func(tc *testClient) { tc.frame(wire.FrameSendPacket, make([]byte, 40)) },
		"too short":              func(tc *testClient) { tc.frame(wire.FrameClientInfo, make([]byte, 55)) },
		"16 MiB claim": func(tc *testClient) {
			var hdr [5]byte
			wire.PutHeader(hdr[:], wire.FrameClientInfo, 16<<20)
			tc.conn.Write(hdr[:])
		},
		"empty mesh key": func(tc *testClient) {
			body := append([]byte(nil), tc.pub[:]...)
			body = wire.Seal(body, []byte(`{"version":2,"meshKey":""}`), tc.priv, s.cfg.PublicKey)
			tc.frame(wire.FrameClientInfo, body)
		},
	}
	for name, f := range cases {
		t.Run(name, func(t *testing.T) {
			tc := s.dial(t)
			f(tc)
			tc.expectClosed(wire.FrameServerInfo)
		})
	}
	// The server still relays afterwards.
	a := s.connect(t, clientInfo)
	b := s.connect(t, clientInfo)
	a.send(b.pub, []byte("still here"))
	if typ, body := b.readSkipping(); typ != wire.FrameRecvPacket || string(body[32:]) != "still here" {
		t.Fatalf("got %v %q", typ, body)
	}
	if got := s.sys.Stats.HandshakeErrors.Load(); got != int64(len(cases)) {
		t.Fatalf("handshake errors = %d, want %d", got, len(cases))
	}
}

func TestServeMeshPrivileges(t *testing.T) {
	var mk wire.MeshKey
	mk[0] = 7
	for _, ft := range []wire.FrameType{wire.FrameWatchConns, wire.FrameClosePeer, wire.FrameForwardPacket} {
		t.Run("non-mesh "+ft.String(), func(t *testing.T) {
			// A server of its own: the closed connection's departure is
			// the registry's to process in its own time, and must not
			// show in the watcher's list below.
			s := startTestServer(t, Config{MeshKey: mk})
			c := s.connect(t, clientInfo)
			var body []byte
			switch ft {
			case wire.FrameClosePeer:
				body = make([]byte, 32)
			case wire.FrameForwardPacket:
				body = make([]byte, 70)
			}
			c.frame(ft, body)
			c.expectClosed()
		})
	}

	s := startTestServer(t, Config{MeshKey: mk})
	a := s.connect(t, clientInfo)
	m := s.connect(t, wire.ClientInfo{Version: 2, MeshKey: mk})
	// Forward a packet from an unknown (remote) source to local A.
	src := wire.GenerateNodePrivate().Public()
	body := append(append(append([]byte(nil), src[:]...), a.pub[:]...), "via mesh"...)
	m.frame(wire.FrameForwardPacket, body)
	if typ, got := a.readSkipping(); typ != wire.FrameRecvPacket || wire.NodePublic(got[:32]) != src || string(got[32:]) != "via mesh" {
		t.Fatalf("A got %v %q, want RecvPacket from the forwarded source", typ, got)
	}

	// Watch: one PeerPresent per connected key (A and the watcher).
	m.frame(wire.FrameWatchConns, nil)
	present := map[wire.NodePublic]byte{}
	for len(present) < 2 {
		typ, got := m.readSkipping()
		if typ != wire.FramePeerPresent || len(got) != wire.PeerPresentLen {
			t.Fatalf("watcher got %v %x", typ, got)
		}
		present[wire.NodePublic(got[:32])] = got[50]
	}
	if present[a.pub] != byte(wire.PeerPresentIsRegular) || present[m.pub] != byte(wire.PeerPresentIsMeshPeer) {
		t.Fatalf("flags %v", present)
	}

	// ClosePeer from the mesh closes A.
	m.frame(wire.FrameClosePeer, a.pub[:])
	a.expectClosed()
	typ, got := m.readSkipping()
	if typ != wire.FramePeerGone || wire.NodePublic(got[:32]) != a.pub {
		t.Fatalf("watcher got %v %x, want PeerGone for A", typ, got)
	}
}

func TestServePeerGoneNotHereIsRateLimited(t *testing.T) {
	s := startTestServer(t, Config{})
	a := s.connect(t, clientInfo)
	unknown := wire.GenerateNodePrivate().Public()
	a.send(unknown, []byte("not disco, no reply"))
	for i := range 5 {
		a.send(unknown, discoPayload(byte(i)))
	}
	// Pong is written after every control frame queued before it, so it
	// marks the end of the replies.
	a.frame(wire.FramePing, []byte("sentinel"))
	notHere := 0
	for {
		typ, body := a.readSkipping()
		if typ == wire.FramePong {
			break
		}
		if typ != wire.FramePeerGone || wire.NodePublic(body[:32]) != unknown || body[32] != byte(wire.PeerGoneNotHere) {
			t.Fatalf("got %v %x", typ, body)
		}
		notHere++
	}
	if notHere != 3 {
		t.Fatalf("got %d PeerGone(NotHere) for a burst of 5, want 3", notHere)
	}
	if got := s.sys.Stats.Dropped(actors.DropUnknownDest, actors.KindDisco); got != 5 {
		t.Fatalf("unknown_dest disco drops = %d, want 5", got)
	}
}

func TestServePeerGoneWhenSenderLeaves(t *testing.T) {
	s := startTestServer(t, Config{})
	a := s.connect(t, clientInfo)
	b := s.connect(t, clientInfo)
	c := s.connect(t, clientInfo)
	d := s.connect(t, clientInfo)
	a.send(b.pub, []byte("hi"))
	if typ, _ := b.readSkipping(); typ != wire.FrameRecvPacket {
		t.Fatalf("B got %v", typ)
	}
	// C hears from D only. Its writer reported that to the registry
	// before writing the packet, so ahead of anything sent after this.
	d.send(c.pub, []byte("hi"))
	if typ, _ := c.readSkipping(); typ != wire.FrameRecvPacket {
		t.Fatalf("C got %v", typ)
	}
	a.conn.Close()
	typ, body := b.readSkipping()
	if typ != wire.FramePeerGone || len(body) != 33 || wire.NodePublic(body[:32]) != a.pub || body[32] != 0 {
		t.Fatalf("B got %v %x, want PeerGone(A, disconnected)", typ, body)
	}
	// The registry has handled A's departure: had it sent C a PeerGone
	// for A, that would already be on its way, ahead of the one D's
	// departure causes on the same path (registry, C's actor, C's outbox).
	// So C's next frame must be PeerGone for D.
	d.conn.Close()
	typ, body = c.readSkipping()
	if typ != wire.FramePeerGone || len(body) != 33 || wire.NodePublic(body[:32]) != d.pub || body[32] != 0 {
		t.Fatalf("C got %v %x, want PeerGone(D) and nothing about A", typ, body)
	}
}

func TestServeDuplicateKeysLastWriterReceives(t *testing.T) {
	s := startTestServer(t, Config{})
	a1 := s.connect(t, clientInfo)
	// A second connection with the same key.
	a2 := s.dial(t)
	a2.priv, a2.pub = a1.priv, a1.pub
	a2.sendClientInfo(s.cfg.PublicKey, clientInfo)
	if typ, _ := a2.read(); typ != wire.FrameServerInfo {
		t.Fatalf("a2 got %v", typ)
	}
	b := s.connect(t, clientInfo)
	// a2's pong proves its reader ran after it sent Register; a registry
	// round trip after that proves the registry has processed it.
	a2.frame(wire.FramePing, []byte("sync0000"))
	if typ, _ := a2.readSkipping(); typ != wire.FramePong {
		t.Fatal("no pong")
	}
	s.syncRegistry(t)
	b.send(a1.pub, []byte("to newest"))
	if typ, body := a2.readSkipping(); typ != wire.FrameRecvPacket || string(body[32:]) != "to newest" {
		t.Fatalf("a2 got %v %q", typ, body)
	}
	// a1 speaks (any frame): it becomes the receiver.
	a1.frame(wire.FramePing, []byte("i am a1!"))
	if typ, _ := a1.readSkipping(); typ != wire.FramePong {
		t.Fatal("no pong for a1")
	}
	s.syncRegistry(t)
	b.send(a1.pub, []byte("to a1"))
	if typ, body := a1.readSkipping(); typ != wire.FrameRecvPacket || string(body[32:]) != "to a1" {
		t.Fatalf("a1 got %v %q", typ, body)
	}
	if got := s.sys.Stats.DupClientKeys.Load(); got != 1 {
		t.Fatalf("dup keys = %d, want 1", got)
	}
}

// syncRegistry waits until the registry has processed every message sent
// to it before this call: its mailbox is first in, first out.
func (s *testServer) syncRegistry(t *testing.T) {
	t.Helper()
	if _, err := s.sys.Root.RequestFuture(s.sys.Registry, &actors.GetRegistryState{}, 10*time.Second).Result(); err != nil {
		t.Fatal(err)
	}
}

// A connection that was idle for longer than the write timeout must still
// get its next packet: the deadline of its last write must not linger.
// (The sleep is the scenario, idleness, not a wait for an actor.)
func TestServeDeliversAfterIdleLongerThanWriteTimeout(t *testing.T) {
	s := startTestServer(t, Config{WriteTimeout: 20 * time.Millisecond})
	a := s.connect(t, clientInfo)
	b := s.connect(t, clientInfo)
	for i := range 3 {
		a.send(b.pub, []byte{byte(i)})
		if typ, body := b.readSkipping(); typ != wire.FrameRecvPacket || body[32] != byte(i) {
			t.Fatalf("packet %d: got %v %x", i, typ, body)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
