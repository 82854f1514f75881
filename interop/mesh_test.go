package interop

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"sync"
	"testing"

	"github.com/derpd/derpd/interop/harness"
	"github.com/derpd/derpd/wire"
	"tailscale.com/derp"
	"tailscale.com/types/key"
)

// §9.14: WatchConns, ForwardPacket and ClosePeer from a client without
// the mesh key close that client.
func TestMeshFramesNeedTheMeshKey(t *testing.T) {
	srv := start(t, harness.Options{MeshKey: harness.MeshKeyHex()})
	victim := connect(t, srv)
	for name, f := range map[string]struct {
		typ  wire.FrameType
		body []byte
	}{
		"WatchConns":    {wire.FrameWatchConns, nil},
		"ClosePeer":     {wire.FrameClosePeer, make([]byte, 32)},
		"ForwardPacket": {wire.FrameForwardPacket, make([]byte, 70)},
	} {
		t.Run(name, func(t *testing.T) {
			rc := harness.DialRaw(t, srv, false)
			rc.Handshake(`{"version":2}`)
			body := f.body
			if f.typ == wire.FrameClosePeer {
				vk := toWire(victim.Pub)
				body = vk[:]
			}
			rc.Frame(f.typ, body)
			rc.ExpectClosed(wire.FramePeerPresent)
		})
	}
	victim.Sync(t) // ClosePeer without the key closed nobody else
}

// §9.13 (mesh part): wrong lengths close even a mesh peer.
func TestMeshFrameLengths(t *testing.T) {
	mk := harness.MeshKeyHex()
	srv := start(t, harness.Options{MeshKey: mk})
	for name, f := range map[string]struct {
		typ  wire.FrameType
		body []byte
	}{
		"WatchConns 1": {wire.FrameWatchConns, []byte{0}},
		"ClosePeer 31": {wire.FrameClosePeer, make([]byte, 31)},
		"Forward 63":   {wire.FrameForwardPacket, make([]byte, 63)},
	} {
		t.Run(name, func(t *testing.T) {
			rc := harness.DialRaw(t, srv, false)
			rc.Handshake(`{"version":2,"meshKey":"` + mk + `"}`)
			rc.Frame(f.typ, f.body)
			rc.ExpectClosed()
		})
	}
}

// §9.19: a watcher hears one PeerPresent per connected key with address
// and flags, then every arrival and the last departure of a key.
func TestWatchers(t *testing.T) {
	mk := harness.MeshKeyHex()
	srv := start(t, harness.Options{MeshKey: mk})
	a := connect(t, srv)
	// A key with two connections is listed once, at its active (newest)
	// connection's address.
	a2 := harness.Connect(t, srv, a.Priv)
	p := connect(t, srv, harness.WithProber())
	w := connect(t, srv, harness.WithMeshKey(mk), harness.WithWatch())
	// Exactly three messages, whatever they hold: a key announced twice
	// leaves another unannounced, and the Sync proves there is no fourth.
	seen := map[key.NodePublic]derp.PeerPresentMessage{}
	for range 3 {
		m := w.Next(t)
		pp, ok := m.(derp.PeerPresentMessage)
		if !ok {
			t.Fatalf("watcher got %T %+v, want PeerPresent", m, m)
		}
		if _, dup := seen[pp.Key]; dup {
			t.Fatalf("second PeerPresent for %v in the initial list", pp.Key.ShortString())
		}
		seen[pp.Key] = pp
	}
	w.Sync(t)
	for name, c := range map[string]*harness.Client{"regular": a2, "prober": p, "watcher": w} {
		pp, ok := seen[c.Pub]
		if !ok {
			t.Fatalf("no PeerPresent for the %s client", name)
		}
		expectAnnouncedPort(t, c, pp)
	}
	if f := seen[a.Pub].Flags; f != derp.PeerPresentIsRegular {
		t.Errorf("regular client flags %v", f)
	}
	if f := seen[p.Pub].Flags; f != derp.PeerPresentIsProber {
		t.Errorf("prober flags %v", f)
	}
	if f := seen[w.Pub].Flags; f != derp.PeerPresentIsMeshPeer {
		t.Errorf("watcher's own flags %v", f)
	}
	if ip := seen[a.Pub].IPPort.Addr(); ip != netip.MustParseAddr("127.0.0.1") {
		t.Errorf("address %v, want 127.0.0.1 (un-mapped)", seen[a.Pub].IPPort)
	}

	b := connect(t, srv)
	m, ok := w.Next(t).(derp.PeerPresentMessage)
	if !ok || m.Key != b.Pub {
		t.Fatalf("no PeerPresent for the new client: %+v", m)
	}
	expectAnnouncedPort(t, b, m)
	b2 := harness.Connect(t, srv, b.Priv) // duplicates are announced too
	m, ok = w.Next(t).(derp.PeerPresentMessage)
	if !ok || m.Key != b.Pub {
		t.Fatalf("no PeerPresent for the duplicate: %+v", m)
	}
	expectAnnouncedPort(t, b2, m) // the new connection's address, not the first's
	b2.Close()
	// One of two leaving sends no PeerGone. Once the server has dealt with
	// the departure (a's key is then the only one duplicated), a new
	// arrival is announced through the same channel as a PeerGone would
	// be, so a wrong PeerGone would show up first.
	srv.WaitMetric(t, "derp_current_dup_client_keys", 1)
	c := connect(t, srv)
	if m, ok := w.Next(t).(derp.PeerPresentMessage); !ok || m.Key != c.Pub {
		t.Fatalf("got %T %+v, want PeerPresent for the next client (and no PeerGone for a duplicate leaving)", m, m)
	}
	b.Close()
	w.ExpectPeerGone(t, b.Pub, derp.PeerGoneReasonDisconnected)
	w.Sync(t) // and only one
}

// expectAnnouncedPort requires a PeerPresent to carry the port of c's own
// end of its connection (the server's view of its remote port).
func expectAnnouncedPort(t *testing.T, c *harness.Client, pp derp.PeerPresentMessage) {
	t.Helper()
	la, err := c.LocalAddr()
	if err != nil {
		t.Fatal(err)
	}
	if pp.IPPort.Port() != la.Port() {
		t.Errorf("%v announced at %v, but its socket is %v", c.Pub.ShortString(), pp.IPPort, la)
	}
}

// §9.19 and §2.4.9 byte by byte. Tailscale's client un-maps the address
// and takes a body of any length from 32 up, so a raw watcher checks the
// 51-byte layout itself; raw clients also send the Ideal-Node header
// that marks a connection not ideal (flag 0x08, which excludes 0x01).
func TestWatcherPeerPresentLayout(t *testing.T) {
	mk := harness.MeshKeyHex()
	srv := start(t, harness.Options{MeshKey: mk})
	regular := harness.DialRaw(t, srv, false)
	regular.Handshake(`{"version":2}`)
	notIdeal := harness.DialRawHeaders(t, srv, false, "Ideal-Node: 900a")
	notIdeal.Handshake(`{"version":2}`)
	w := harness.DialRaw(t, srv, false)
	w.Handshake(`{"version":2,"meshKey":"` + mk + `"}`)
	w.Frame(wire.FrameWatchConns, nil)

	flags := map[*harness.RawConn]byte{regular: 0x01, notIdeal: 0x08, w: 0x02}
	count := map[*harness.RawConn]int{}
	for range len(flags) {
		c, f := readPeerPresent(t, w, flags)
		count[c]++
		if f != flags[c] {
			t.Errorf("%v announced with flags 0x%02x, want 0x%02x", c.Pub.ShortString(), f, flags[c])
		}
	}
	for c := range flags {
		if count[c] != 1 {
			t.Errorf("%v announced %d times in the initial list, want once", c.Pub.ShortString(), count[c])
		}
	}
	w.Sync()

	// Arrivals after the initial list: flags combine.
	prober := harness.DialRawHeaders(t, srv, false, "Ideal-Node: 900a")
	prober.Handshake(`{"version":2,"IsProber":true}`)
	flags = map[*harness.RawConn]byte{prober: 0x04 | 0x08}
	if c, f := readPeerPresent(t, w, flags); f != flags[c] {
		t.Errorf("not-ideal prober announced with flags 0x%02x, want 0x0c", f)
	}
	w.Sync()
}

// readPeerPresent reads one frame from the raw watcher w, which must be a
// 51-byte PeerPresent for one of conns, at that connection's address and
// port (127.0.0.1 encoded as ::ffff:127.0.0.1, port big-endian). It
// returns the connection and the flags byte.
func readPeerPresent(t *testing.T, w *harness.RawConn, conns map[*harness.RawConn]byte) (*harness.RawConn, byte) {
	t.Helper()
	typ, body := w.ReadFrame()
	if typ != wire.FramePeerPresent {
		t.Fatalf("watcher got %v, want PeerPresent", typ)
	}
	if len(body) != 51 {
		t.Fatalf("PeerPresent body of %d bytes %x, want 51", len(body), body)
	}
	var c *harness.RawConn
	for rc := range conns {
		if bytes.Equal(body[:32], rc.Pub[:]) {
			c = rc
		}
	}
	if c == nil {
		t.Fatalf("PeerPresent for an unexpected key %x", body[:32])
	}
	mapped := []byte{0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 127, 0, 0, 1}
	if !bytes.Equal(body[32:48], mapped) {
		t.Errorf("address bytes %x, want %x", body[32:48], mapped)
	}
	if port, want := binary.BigEndian.Uint16(body[48:50]), c.Conn.LocalAddr().(*net.TCPAddr).Port; int(port) != want {
		t.Errorf("port %d (bytes %x), want the client's port %d", port, body[48:50], want)
	}
	return c, body[50]
}

// §9.24 and ForwardPacket privilege: a mesh peer's ForwardPacket reaches
// a local key with the forwarded source; to a key that is not here it is
// dropped, never forwarded again.
func TestForwardPacket(t *testing.T) {
	mk := harness.MeshKeyHex()
	srv := start(t, harness.Options{MeshKey: mk})
	a := connect(t, srv)
	m := connect(t, srv, harness.WithMeshKey(mk))
	remote := harness.NewKey()
	// The source is connected to another server of the region: unknown
	// here, but not gone, so the receiver must hear no PeerGone for it,
	// however many packets come (a PeerGone arriving late would show up
	// in place of the next packet or pong).
	for range 3 {
		if err := m.ForwardPacket(remote, a.Pub, []byte("from the mesh")); err != nil {
			t.Fatal(err)
		}
		a.ExpectPacket(t, remote, []byte("from the mesh"))
		a.Sync(t)
	}
	before := srv.Metric(t, `derp_packets_dropped{reason="unknown_dest_on_fwd",kind="other"}`)
	if err := m.ForwardPacket(remote, harness.NewKey(), []byte("nowhere")); err != nil {
		t.Fatal(err)
	}
	m.Sync(t)
	if after := srv.Metric(t, `derp_packets_dropped{reason="unknown_dest_on_fwd",kind="other"}`); after != before+1 {
		t.Fatalf("unknown_dest_on_fwd went from %v to %v", before, after)
	}
	// Readers count locally and publish when they next wait on the socket.
	srv.WaitMetric(t, "derp_packets_forwarded_in", 4)
}

// ClosePeer from a mesh peer closes every connection of the target.
func TestClosePeer(t *testing.T) {
	mk := harness.MeshKeyHex()
	srv := start(t, harness.Options{MeshKey: mk})
	a := connect(t, srv)
	a2 := harness.Connect(t, srv, a.Priv)
	bystander := connect(t, srv)
	m := connect(t, srv, harness.WithMeshKey(mk))
	a2.Sync(t)
	if err := m.ClosePeer(a.Pub); err != nil {
		t.Fatal(err)
	}
	a.ExpectClosed(t)
	a2.ExpectClosed(t)
	bystander.Sync(t)
	m.Sync(t)
}

// admissionController allows exactly the keys it is told to, unless
// status is set: then it answers with that status (and still says Allow).
type admissionController struct {
	mu      sync.Mutex
	allow   map[key.NodePublic]bool
	status  int
	sources []string
}

func (ac *admissionController) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	var req struct {
		NodePublic key.NodePublic
		Source     string
	}
	if r.Method != http.MethodPost || json.NewDecoder(r.Body).Decode(&req) != nil {
		http.Error(w, "bad request", 400)
		return
	}
	ac.mu.Lock()
	ok := ac.allow[req.NodePublic]
	ac.sources = append(ac.sources, req.Source)
	status := ac.status
	ac.mu.Unlock()
	if status != 0 {
		w.WriteHeader(status)
	}
	json.NewEncoder(w).Encode(map[string]bool{"Allow": ok})
}

// §9.20 and §9.21: the admission controller admits and refuses by key,
// mesh-key holders skip it, and fail-open decides what an unreachable
// controller means.
func TestAdmissionControl(t *testing.T) {
	mk := harness.MeshKeyHex()
	good, bad := key.NewNode(), key.NewNode()
	ac := &admissionController{allow: map[key.NodePublic]bool{good.Public(): true}}
	hs := httptest.NewServer(ac)
	defer hs.Close()
	srv := start(t, harness.Options{MeshKey: mk, VerifyURL: hs.URL})

	harness.Connect(t, srv, good)
	if _, err := harness.Dial(srv.URL(), bad); err == nil {
		t.Fatal("denied key was admitted")
	}
	harness.Connect(t, srv, bad, harness.WithMeshKey(mk)) // mesh key: no questions
	ac.mu.Lock()
	if len(ac.sources) != 2 || ac.sources[0] != "127.0.0.1" {
		t.Fatalf("controller saw sources %q, want two requests from 127.0.0.1", ac.sources)
	}
	ac.mu.Unlock()

	// A controller that fails (500) refuses, even a key it would allow
	// and with {"Allow":true} in the body: only a 200 answer counts.
	// The server did ask it (so fail-open, which would admit, is not
	// what decided), and the same key is admitted once it answers 200.
	ac.mu.Lock()
	ac.status = http.StatusInternalServerError
	ac.mu.Unlock()
	if _, err := harness.Dial(srv.URL(), good); err == nil {
		t.Fatal("admitted although the controller answered 500")
	}
	ac.mu.Lock()
	asked := len(ac.sources)
	ac.status = 0
	ac.mu.Unlock()
	if asked != 3 {
		t.Fatalf("controller asked %d times, want 3", asked)
	}
	harness.Connect(t, srv, good)

	// Controller unreachable: fail-open (the default) admits, fail-closed
	// refuses.
	hs.Close()
	open := start(t, harness.Options{VerifyURL: hs.URL})
	harness.Connect(t, open, bad)
	closed := start(t, harness.Options{VerifyURL: hs.URL, Args: []string{"-verify-client-url-fail-open=false"}})
	if _, err := harness.Dial(closed.URL(), bad); err == nil {
		t.Fatal("fail-closed server admitted a client with the controller down")
	}
}
