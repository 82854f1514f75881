package interop

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/derpd/derpd/interop/harness"
	"github.com/derpd/derpd/wire"
	"tailscale.com/types/key"
)

// The insight pages seen from outside: each JSON view checked against
// what the test did to the server, with Tailscale's client library and
// raw connections.

func debugJSON(t *testing.T, srv *harness.Server, path string, v any) {
	t.Helper()
	u := srv.BaseURL() + path
	if strings.Contains(path, "?") {
		u += "&format=json"
	} else {
		u += "?format=json"
	}
	res, err := srv.HTTPClient().Get(u)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	if res.StatusCode != 200 {
		t.Fatalf("%s: %s", path, res.Status)
	}
	if err := json.NewDecoder(res.Body).Decode(v); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
}

// eventually polls check (which reads a page) until it reports nil, for
// state the server reaches on its own time (the flows actor collects
// every second). The deadline is a failure bound, not a measurement.
func eventually(t *testing.T, what string, check func() error) {
	t.Helper()
	deadline := time.Now().Add(harness.Wait)
	for {
		err := check()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: %v", what, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

type actorsPage struct {
	Kinds []struct {
		Kind string `json:"kind"`
		Live int64  `json:"live"`
	} `json:"kinds"`
	Actors []struct {
		ID        string         `json:"id"`
		Kind      string         `json:"kind"`
		Answered  bool           `json:"answered"`
		Mailbox   int64          `json:"mailbox"`
		Processed int64          `json:"processed"`
		Holds     map[string]any `json:"holds"`
	} `json:"actors"`
	SnapshotMillis float64 `json:"registry_snapshot_ms"`
}

// Three clients are three client actors with their keys; the registry,
// the flows and the rejects actors are there and answer.
func TestDebugActors(t *testing.T) {
	if harness.TargetFromEnv() != harness.Derpd {
		t.Skip("/debug/actors is derpd's")
	}
	srv := start(t, harness.Options{})
	want := map[string]bool{}
	for range 3 {
		c := connect(t, srv)
		want[c.Pub.String()] = true
	}
	var p actorsPage
	eventually(t, "three client actors", func() error {
		debugJSON(t, srv, "/debug/actors", &p)
		got := map[string]bool{}
		kinds := map[string]int{}
		for _, a := range p.Actors {
			kinds[a.Kind]++
			if !a.Answered {
				return fmt.Errorf("%s %s did not answer", a.Kind, a.ID)
			}
			if a.Kind == "client" {
				got[fmt.Sprint(a.Holds["key"])] = true
			}
		}
		if fmt.Sprint(got) != fmt.Sprint(want) {
			return fmt.Errorf("client actors for %v, want %v", got, want)
		}
		if kinds["registry"] != 1 || kinds["flows"] != 1 || kinds["rejects"] != 1 {
			return fmt.Errorf("actors by kind %v", kinds)
		}
		return nil
	})
	for _, a := range p.Actors {
		if a.Kind == "registry" && (a.Processed < 3 || a.Holds["conns"] != float64(3)) {
			t.Errorf("registry processed %d messages holding %v conns", a.Processed, a.Holds["conns"])
		}
	}
	for _, k := range p.Kinds {
		if k.Kind == "client" && k.Live != 3 {
			t.Errorf("%d live client actors, want 3", k.Live)
		}
	}
}

type flowsPage struct {
	Flows []struct {
		Src         string  `json:"src"`
		Dst         string  `json:"dst"`
		Via         string  `json:"via"`
		Bytes       int64   `json:"bytes"`
		Packets     int64   `json:"packets"`
		BPS         float64 `json:"bps"`
		PPS         float64 `json:"pps"`
		LastActiveS float64 `json:"last_active_s"`
	} `json:"flows"`
	Tracked int   `json:"tracked"`
	Swept   int64 `json:"swept"`
}

// Traffic of a known count from A to B is a flow with at least that many
// packets and a rate while it runs, marked with the mesh peer when B is
// on another node, and gone after a (shortened) sweep once idle.
func TestDebugFlows(t *testing.T) {
	if harness.TargetFromEnv() != harness.Derpd {
		t.Skip("/debug/flows is derpd's")
	}
	r := newRegion(t, harness.Derpd, harness.Derpd)
	sweep := []string{"-flows-inactive", "1s", "-flows-sweep", "1s"}
	r.start(0, append([]string{"-mesh-with", r.MeshWith()}, sweep...)...)
	r.start(1, append([]string{"-mesh-with", r.MeshWith()}, sweep...)...)
	a, b, c := r.connect(0, key.NodePrivate{}), r.connect(0, key.NodePrivate{}), r.connect(1, key.NodePrivate{})
	awaitPath(t, a, c)
	const n = 200
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() { // traffic that lasts while the test looks
		defer close(done)
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			case <-time.After(5 * time.Millisecond):
			}
			a.Send(b.Pub, []byte("local"))
			a.Send(c.Pub, []byte("across"))
		}
	}()
	for range n {
		b.RecvPacket(t)
	}
	find := func(p *flowsPage, src, dst key.NodePublic) (int64, float64, string, bool) {
		for _, f := range p.Flows {
			if f.Src == src.String() && f.Dst == dst.String() {
				return f.Packets, f.PPS, f.Via, true
			}
		}
		return 0, 0, "", false
	}
	eventually(t, "flows A→B and A→C with rates", func() error {
		var p flowsPage
		debugJSON(t, r.Nodes[0].Server, "/debug/flows", &p)
		pk, pps, via, ok := find(&p, a.Pub, b.Pub)
		if !ok || pk < n || pps <= 0 || via != "" {
			return fmt.Errorf("A→B: packets %d pps %v via %q (found %v), want ≥ %d, a rate, no mesh peer", pk, pps, via, ok, n)
		}
		pk, pps, via, ok = find(&p, a.Pub, c.Pub)
		if !ok || pk <= 0 || pps <= 0 || !strings.HasPrefix(via, r.Nodes[1].Name) {
			return fmt.Errorf("A→C: packets %d pps %v via %q, want some, a rate, and node 2's link", pk, pps, via)
		}
		return nil
	})
	// On node 2, the flow came in from node 1.
	nodeOneKey := serverKey(t, r.Nodes[0].Server).String()
	eventually(t, "A→C on node 2, from node 1", func() error {
		var p flowsPage
		debugJSON(t, r.Nodes[1].Server, "/debug/flows", &p)
		if pk, _, via, ok := find(&p, a.Pub, c.Pub); !ok || pk <= 0 || via != nodeOneKey {
			return fmt.Errorf("A→C on node 2: packets %d via %q, want some, via %s", pk, via, nodeOneKey)
		}
		return nil
	})
	close(stop)
	<-done
	eventually(t, "idle flows swept", func() error {
		var p flowsPage
		debugJSON(t, r.Nodes[0].Server, "/debug/flows", &p)
		if _, _, _, ok := find(&p, a.Pub, b.Pub); ok || p.Swept == 0 {
			return fmt.Errorf("A→B still tracked (swept %d)", p.Swept)
		}
		return nil
	})
}

type rejectsPage struct {
	Rejects []struct {
		Direction string `json:"direction"`
		Peer      string `json:"peer"`
		Reason    string `json:"reason"`
		Detail    string `json:"detail"`
		Count     int64  `json:"count"`
	} `json:"rejects"`
	Evicted map[string]int64 `json:"evicted"`
	Max     int              `json:"max"`
}

type peerPage struct {
	Key         string `json:"key"`
	Local       bool   `json:"local"`
	Disconnects []struct {
		Reason string `json:"reason"`
		Close  string `json:"close_reason"`
		Error  string `json:"error"`
	} `json:"disconnects"`
	Rejects []struct {
		Reason string `json:"reason"`
		Count  int64  `json:"count"`
	} `json:"rejects"`
}

// A packet to an unknown key, a handshake whose box does not open, an
// admission denial and a ForwardPacket without the mesh key each show on
// /debug/rejects with their reason and peer, and on that peer's page,
// with the close reason among its recent disconnects where it was cut.
func TestDebugRejects(t *testing.T) {
	if harness.TargetFromEnv() != harness.Derpd {
		t.Skip("/debug/rejects is derpd's")
	}
	denied := key.NewNode()
	ac := &admissionController{allow: map[key.NodePublic]bool{}}
	hs := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ac.mu.Lock()
		ac.allow = map[key.NodePublic]bool{}
		ac.mu.Unlock()
		ac.ServeHTTP(w, r)
	}))
	defer hs.Close()
	srv := start(t, harness.Options{VerifyURL: hs.URL, MeshKey: harness.MeshKeyHex()})

	// Admission denied.
	if _, err := harness.Dial(srv.URL(), denied); err == nil {
		t.Fatal("a denied key was admitted")
	}
	// A box that does not open (admission control is never reached).
	bad := harness.DialRaw(t, srv, false)
	bad.ReadServerKey()
	info := bad.ClientInfoFrame(`{"version":2}`)
	info[len(info)-1] ^= 0xff // the box no longer opens
	bad.Write(info)
	bad.ExpectClosed()

	// A server without admission control, for what admitted clients do.
	open := start(t, harness.Options{MeshKey: harness.MeshKeyHex()})
	sender := harness.DialRaw(t, open, false)
	sender.Handshake(`{"version":2}`)
	nowhere := key.NewNode().Public()
	dst := toWire(nowhere)
	sender.Frame(wire.FrameSendPacket, append(dst[:], "to nobody"...))
	sender.Sync()
	forger := harness.DialRaw(t, open, false)
	forger.Handshake(`{"version":2}`)
	forger.Frame(wire.FrameForwardPacket, make([]byte, 70))
	forger.ExpectClosed()

	has := func(p *rejectsPage, dir, peer, reason string) bool {
		for _, r := range p.Rejects {
			if r.Direction == dir && r.Peer == peer && r.Reason == reason && r.Count > 0 {
				return true
			}
		}
		return false
	}
	eventually(t, "rejects on the admission-controlled server", func() error {
		var p rejectsPage
		debugJSON(t, srv, "/debug/rejects", &p)
		if !has(&p, "inbound-connection", denied.Public().String(), "admission_denied") {
			return fmt.Errorf("no admission denial for the denied key: %+v", p.Rejects)
		}
		if !has(&p, "inbound-connection", fromWire(bad.Pub).String(), "bad_handshake") {
			return fmt.Errorf("no bad handshake for the raw client: %+v", p.Rejects)
		}
		return nil
	})
	eventually(t, "rejects on the open server", func() error {
		var p rejectsPage
		debugJSON(t, open, "/debug/rejects", &p)
		if !has(&p, "inbound-packet", fromWire(sender.Pub).String(), "unknown_destination") {
			return fmt.Errorf("no unknown destination for the sender: %+v", p.Rejects)
		}
		if !has(&p, "inbound-connection", fromWire(forger.Pub).String(), "non_mesh_privilege") {
			return fmt.Errorf("no non-mesh privilege for the forger: %+v", p.Rejects)
		}
		return nil
	})
	// The forger's page: the reject, and its disconnect with the reason.
	var pp peerPage
	debugJSON(t, open, "/debug/peer?key="+url.QueryEscape(fromWire(forger.Pub).String()), &pp)
	if pp.Local || len(pp.Rejects) != 1 || pp.Rejects[0].Reason != "non_mesh_privilege" {
		t.Fatalf("forger's page: local %v rejects %+v", pp.Local, pp.Rejects)
	}
	if len(pp.Disconnects) != 1 || pp.Disconnects[0].Reason != "protocol violation" || !strings.Contains(pp.Disconnects[0].Error, "without the mesh key") {
		t.Fatalf("forger's disconnects %+v, want one protocol violation for the missing mesh key", pp.Disconnects)
	}
	// The sender's page: still connected, with its reject.
	debugJSON(t, open, "/debug/peer?key="+url.QueryEscape(fromWire(sender.Pub).String()), &pp)
	if !pp.Local || len(pp.Rejects) != 1 || pp.Rejects[0].Reason != "unknown_destination" {
		t.Fatalf("sender's page: local %v rejects %+v", pp.Local, pp.Rejects)
	}
}

// A flood of distinct peers never grows the rejects table past its bound.
func TestDebugRejectsBounded(t *testing.T) {
	if harness.TargetFromEnv() != harness.Derpd {
		t.Skip("/debug/rejects is derpd's")
	}
	const max = 8
	srv := start(t, harness.Options{Args: []string{"-rejects-max", fmt.Sprint(max)}})
	const peers = 40
	for range peers {
		rc := harness.DialRaw(t, srv, false)
		rc.ReadServerKey()
		rc.Write(wire.AppendHeader(nil, wire.FrameSendPacket, 0)) // not a ClientInfo
		rc.ExpectClosed()
	}
	eventually(t, "the bound held", func() error {
		var p rejectsPage
		debugJSON(t, srv, "/debug/rejects", &p)
		conn := 0
		for _, r := range p.Rejects {
			if r.Direction == "inbound-connection" {
				conn++
			}
		}
		if p.Max != max || conn != max || p.Evicted["inbound-connection"] != peers-max {
			return fmt.Errorf("%d entries (max %d), %d evicted, want %d and %d", conn, p.Max, p.Evicted["inbound-connection"], max, peers-max)
		}
		return nil
	})
}
