package interop

import (
	"encoding/json"
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
	p := connect(t, srv, harness.WithProber())
	w := connect(t, srv, harness.WithMeshKey(mk), harness.WithWatch())
	seen := map[key.NodePublic]derp.PeerPresentMessage{}
	for len(seen) < 3 {
		m := w.Next(t)
		pp, ok := m.(derp.PeerPresentMessage)
		if !ok {
			t.Fatalf("watcher got %T %+v, want PeerPresent", m, m)
		}
		seen[pp.Key] = pp
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
	w.Sync(t)

	b := connect(t, srv)
	if m, ok := w.Next(t).(derp.PeerPresentMessage); !ok || m.Key != b.Pub {
		t.Fatalf("no PeerPresent for the new client: %+v", m)
	}
	b2 := harness.Connect(t, srv, b.Priv) // duplicates are announced too
	if m, ok := w.Next(t).(derp.PeerPresentMessage); !ok || m.Key != b.Pub {
		t.Fatalf("no PeerPresent for the duplicate: %+v", m)
	}
	b2.Close()
	// One of two leaving sends no PeerGone. Once the server has dealt with
	// the departure, a new arrival is announced through the same channel
	// as a PeerGone would be, so a wrong PeerGone would show up first.
	srv.WaitMetric(t, "derp_current_dup_client_keys", 0)
	c := connect(t, srv)
	if m, ok := w.Next(t).(derp.PeerPresentMessage); !ok || m.Key != c.Pub {
		t.Fatalf("got %T %+v, want PeerPresent for the next client (and no PeerGone for a duplicate leaving)", m, m)
	}
	b.Close()
	w.ExpectPeerGone(t, b.Pub, derp.PeerGoneReasonDisconnected)
	w.Sync(t) // and only one
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
	if got := srv.Metric(t, "derp_packets_forwarded_in"); got != 4 {
		t.Fatalf("packets_forwarded_in = %v, want 4", got)
	}
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

// admissionController allows exactly the keys it is told to.
type admissionController struct {
	mu      sync.Mutex
	allow   map[key.NodePublic]bool
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
	ac.mu.Unlock()
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
