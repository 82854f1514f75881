package registry

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/derpd/derpd/actors"
	"github.com/derpd/derpd/wire"
)

// fakeForwarder stands in for a mesh link's outbox.
type fakeForwarder struct{ name string }

func (*fakeForwarder) ForwardPacket(_ wire.NodePublic, p *wire.Packet, _ *actors.Waiter) {
	p.Release()
}

func (f *fakeForwarder) String() string { return f.name }

func (f *fakeForwarder) Name() string { return f.name }

// linkUp registers a mesh session with a forwarder of its own.
func (h *harness) linkUp(id uint64) *fakeForwarder {
	f := &fakeForwarder{name: fmt.Sprint("session", id)}
	h.send(&actors.MeshLinkUp{Link: id, Peer: f.name, PeerKey: key(byte(200 + id)), Forward: f})
	return f
}

// update sends a session's announcements and returns the registry's
// answer.
func (h *harness) update(id uint64, present bool, keys ...wire.NodePublic) *actors.MeshUpdateApplied {
	h.t.Helper()
	m := &actors.MeshUpdate{Link: id}
	for _, k := range keys {
		m.Updates = append(m.Updates, actors.MeshPeerUpdate{Key: k, Present: present})
	}
	f := h.sys.Root.RequestFuture(h.reg, m, time.Minute)
	h.d.RunUntilIdle()
	res, err := f.Result()
	if err != nil {
		h.t.Fatalf("MeshUpdate: %v", err)
	}
	return res.(*actors.MeshUpdateApplied)
}

func (h *harness) forwarder(k wire.NodePublic) actors.Forwarder {
	r := h.sys.Routes.Lookup(k)
	if r == nil {
		return nil
	}
	return r.Forward
}

func (h *harness) counters() string {
	st := h.sys.Stats
	return fmt.Sprintf("created=%d deleted=%d delete_other=%d remote=%d",
		st.MultiForwarderCreated.Load(), st.MultiForwarderDeleted.Load(),
		st.ForwarderDeleteOther.Load(), st.ClientsRemote.Load())
}

func (h *harness) wantCounters(want string) {
	h.t.Helper()
	if got := h.counters(); got != want {
		h.t.Fatalf("counters %s, want %s", got, want)
	}
}

func TestAnnouncedKeyIsForwardedThroughItsSession(t *testing.T) {
	h := newHarness(t)
	f1 := h.linkUp(1)
	if got := h.update(1, true, key(1), key(2)); got.Keys != 2 || got.Refused != 0 || got.Unknown {
		t.Fatalf("reply %+v, want 2 keys", got)
	}
	for _, k := range []wire.NodePublic{key(1), key(2)} {
		if got := h.forwarder(k); got != f1 {
			t.Fatalf("forwarder of %s = %v, want session 1", k.ShortString(), got)
		}
		if h.activeSink(k) != nil {
			t.Fatalf("remote key %s has a local route", k.ShortString())
		}
	}
	h.wantCounters("created=0 deleted=0 delete_other=0 remote=2")
	// Announcing again changes nothing.
	if got := h.update(1, true, key(1)); got.Keys != 2 {
		t.Fatalf("repeat announcement: reply %+v", got)
	}
	h.wantCounters("created=0 deleted=0 delete_other=0 remote=2")
	if st := h.state(); st.RemoteKeys != 2 || st.MeshSessions != 1 || st.Keys != 0 || st.Routes != 2 {
		t.Fatalf("state %+v", st)
	}
	h.mustBeConsistent()
}

// The spec's preference rule: the first session to announce a key gets
// its packets; when it withdraws, the earliest remaining takes over.
func TestFirstAnnouncerWinsAndEarliestRemainingTakesOver(t *testing.T) {
	h := newHarness(t)
	f1, f2, f3 := h.linkUp(1), h.linkUp(2), h.linkUp(3)
	h.update(2, true, key(1))
	h.update(1, true, key(1))
	h.update(3, true, key(1))
	if got := h.forwarder(key(1)); got != f2 {
		t.Fatalf("forwarder = %v, want session 2 (first to announce)", got)
	}
	h.wantCounters("created=1 deleted=0 delete_other=0 remote=1")
	h.update(2, false, key(1))
	if got := h.forwarder(key(1)); got != f1 {
		t.Fatalf("after session 2 withdrew: forwarder = %v, want session 1 (earliest remaining)", got)
	}
	h.wantCounters("created=1 deleted=0 delete_other=0 remote=1")
	h.update(3, false, key(1)) // not the preferred one: no change
	if got := h.forwarder(key(1)); got != f1 {
		t.Fatalf("forwarder = %v, want session 1", got)
	}
	h.wantCounters("created=1 deleted=1 delete_other=0 remote=1")
	h.update(3, true, key(1)) // back, now behind session 1
	if got := h.forwarder(key(1)); got != f1 {
		t.Fatalf("forwarder = %v, want session 1", got)
	}
	h.update(1, false, key(1))
	if got := h.forwarder(key(1)); got != f3 {
		t.Fatalf("forwarder = %v, want session 3", got)
	}
	h.wantCounters("created=2 deleted=2 delete_other=0 remote=1")
	h.mustBeConsistent()
}

func TestWithdrawingAKeyNeverAnnouncedIsCountedAndIgnored(t *testing.T) {
	h := newHarness(t)
	f1 := h.linkUp(1)
	h.linkUp(2)
	h.update(1, true, key(1))
	h.update(2, false, key(1), key(7)) // session 2 announced neither
	if got := h.forwarder(key(1)); got != f1 {
		t.Fatalf("forwarder = %v, want session 1 still", got)
	}
	h.wantCounters("created=0 deleted=0 delete_other=2 remote=1")
	h.mustBeConsistent()
}

func TestKeyLeavingTheRegionSendsPeerGoneOnlyToItsReceivers(t *testing.T) {
	h := newHarness(t)
	h.linkUp(1)
	h.linkUp(2)
	h.update(1, true, key(1), key(2))
	h.update(2, true, key(2))
	b := h.connect(key(10), false)
	c := h.connect(key(11), false)
	// b received from both remote keys; c from nobody.
	h.send(delivered(b.conn, key(1), true))
	h.send(delivered(b.conn, key(2), true))

	h.update(1, false, key(1)) // gone from the region
	if got := peerGones(b.take()); fmt.Sprint(got) != fmt.Sprint([]actors.SendPeerGone{{Peer: key(1), Reason: wire.PeerGoneDisconnected}}) {
		t.Fatalf("B got %v, want PeerGone(key 1)", got)
	}
	h.update(1, false, key(2)) // still announced by session 2: not gone
	if got := b.take(); len(got) != 0 {
		t.Fatalf("key 2 is still in the region, but B got %v", got)
	}
	if got := c.take(); len(got) != 0 {
		t.Fatalf("C heard from nobody but got %v", got)
	}
	h.mustBeConsistent()
}

func TestSessionGoingDownWithdrawsAllItsKeysAtOnce(t *testing.T) {
	h := newHarness(t)
	h.linkUp(1)
	f2 := h.linkUp(2)
	h.update(1, true, key(1), key(2), key(3))
	h.update(2, true, key(2))
	local := h.connect(key(3), false) // key 3 is also connected here
	b := h.connect(key(10), false)
	for _, k := range []wire.NodePublic{key(1), key(2), key(3)} {
		h.send(delivered(b.conn, k, true))
	}
	h.wantCounters("created=1 deleted=0 delete_other=0 remote=2")

	h.send(&actors.MeshLinkDown{Link: 1})
	// Only key 1 left the region: key 2 is on session 2, key 3 is local.
	if got := peerGones(b.take()); fmt.Sprint(got) != fmt.Sprint([]actors.SendPeerGone{{Peer: key(1), Reason: wire.PeerGoneDisconnected}}) {
		t.Fatalf("B got %v, want only PeerGone(key 1)", got)
	}
	if h.sys.Routes.Lookup(key(1)) != nil {
		t.Fatal("key 1 still has a route")
	}
	if got := h.forwarder(key(2)); got != f2 {
		t.Fatalf("key 2 forwarder = %v, want session 2", got)
	}
	if r := h.sys.Routes.Lookup(key(3)); r == nil || r.Local != local.sink || r.Forward != nil {
		t.Fatalf("key 3 route %+v, want local only", r)
	}
	h.wantCounters("created=1 deleted=1 delete_other=0 remote=1")
	// A late update from the session that went down does nothing.
	if got := h.update(1, true, key(1)); !got.Unknown {
		t.Fatalf("update for a session that went down: reply %+v, want Unknown", got)
	}
	if h.sys.Routes.Lookup(key(1)) != nil {
		t.Fatal("a stale update brought key 1 back")
	}
	h.mustBeConsistent()
}

// A key both local and announced by a peer is delivered locally; when it
// leaves here it is still in the region, so its receivers hear nothing
// until the peer withdraws it too.
func TestLocalWinsAndLocalDepartureFallsBackToTheMesh(t *testing.T) {
	h := newHarness(t)
	f1 := h.linkUp(1)
	a := h.connect(key(1), false)
	h.update(1, true, key(1))
	b := h.connect(key(10), false)
	h.send(delivered(b.conn, key(1), false))
	if r := h.sys.Routes.Lookup(key(1)); r == nil || r.Local != a.sink || r.Forward != f1 {
		t.Fatalf("route %+v, want local A and session 1", r)
	}
	h.wantCounters("created=0 deleted=0 delete_other=0 remote=0")

	h.send(&actors.Unregister{Conn: a.conn})
	if got := b.take(); len(got) != 0 {
		t.Fatalf("key 1 moved to a peer, but B got %v", got)
	}
	if r := h.sys.Routes.Lookup(key(1)); r == nil || r.Local != nil || r.Forward != f1 {
		t.Fatalf("route %+v, want session 1 only", r)
	}
	h.wantCounters("created=0 deleted=0 delete_other=0 remote=1")
	h.mustBeConsistent()

	h.update(1, false, key(1))
	if got := peerGones(b.take()); len(got) != 1 || got[0].Peer != key(1) {
		t.Fatalf("B got %v, want PeerGone(key 1)", got)
	}
	h.wantCounters("created=0 deleted=0 delete_other=0 remote=0")
	h.mustBeConsistent()
}

// A client that moves from this server to a peer is followed within one
// update, in either order of the two events.
func TestClientMovingToAPeerIsFollowed(t *testing.T) {
	for _, announceFirst := range []bool{true, false} {
		t.Run(fmt.Sprint("announce first ", announceFirst), func(t *testing.T) {
			h := newHarness(t)
			f1 := h.linkUp(1)
			a := h.connect(key(1), false)
			b := h.connect(key(10), false)
			h.send(delivered(b.conn, key(1), false))
			if announceFirst {
				h.update(1, true, key(1))
				h.send(&actors.Unregister{Conn: a.conn})
			} else {
				h.send(&actors.Unregister{Conn: a.conn})
				h.update(1, true, key(1))
			}
			if got := h.forwarder(key(1)); got != f1 {
				t.Fatalf("forwarder = %v, want session 1", got)
			}
			// Leaving before the peer announced it means it was gone
			// from the region for a moment, as upstream.
			if got := peerGones(b.take()); len(got) != map[bool]int{true: 0, false: 1}[announceFirst] {
				t.Fatalf("B got %v", got)
			}
			h.mustBeConsistent()
		})
	}
}

// Keys learned from the mesh are never announced to watchers: that is
// what keeps forwarding to one hop.
func TestRemoteKeysAreNeverAnnouncedToWatchers(t *testing.T) {
	h := newHarness(t)
	w := h.connect(key(9), true)
	h.send(&actors.WatchConns{Conn: w.conn})
	w.take()
	h.linkUp(1)
	h.update(1, true, key(1), key(2))
	h.update(1, false, key(1))
	h.send(&actors.MeshLinkDown{Link: 1})
	if got := w.take(); len(got) != 0 {
		t.Fatalf("watcher was told about remote keys: %v", got)
	}
	// And a later watcher's initial list holds only local keys.
	h.linkUp(2)
	h.update(2, true, key(3))
	w2 := h.connect(key(8), true)
	h.send(&actors.WatchConns{Conn: w2.conn})
	for _, p := range presences(w2.take()) {
		if p.Peer == key(3) {
			t.Fatalf("initial list announced remote key 3: %+v", p)
		}
	}
}

func TestSessionKeyLimit(t *testing.T) {
	h := newHarness(t)
	h.r.maxSessionKeys = 2
	h.linkUp(1)
	got := h.update(1, true, key(1), key(2), key(3), key(1))
	if got.Keys != 2 || got.Refused != 1 {
		t.Fatalf("reply %+v, want 2 keys and 1 refused", got)
	}
	if h.sys.Routes.Lookup(key(3)) != nil {
		t.Fatal("a refused key got a route")
	}
	if n := h.sys.Stats.MeshKeysRefused.Load(); n != 1 {
		t.Fatalf("mesh_keys_refused = %d", n)
	}
	// Room again after a withdrawal.
	h.update(1, false, key(1))
	if got := h.update(1, true, key(3)); got.Keys != 2 || got.Refused != 0 {
		t.Fatalf("reply %+v, want key 3 taken", got)
	}
	h.mustBeConsistent()
}

// Each kind of damage to the forwarder table must be reported, or the
// churn test below proves nothing.
func TestCheckReportsCorruptForwarderTable(t *testing.T) {
	for _, tc := range []struct {
		name    string
		corrupt func(h *harness)
		want    string
	}{
		{"route to the wrong session", func(h *harness) {
			h.sys.Routes.Set(&actors.Route{Key: key(1), Forward: &fakeForwarder{name: "stray"}})
		}, "does not forward through its first announcer"},
		{"stray forwarding route", func(h *harness) {
			h.sys.Routes.Set(&actors.Route{Key: key(5), Forward: &fakeForwarder{name: "stray"}})
		}, "forwards through a session the registry does not have"},
		{"session forgot a key", func(h *harness) {
			delete(h.r.sessions[1].keys, key(1))
		}, "which does not announce it"},
		{"list forgot a session", func(h *harness) {
			h.r.forwarders[key(2)] = h.r.forwarders[key(2)][:1]
		}, "is not among its forwarders"},
		{"remote gauge", func(h *harness) {
			h.sys.Stats.ClientsRemote.Add(1)
		}, "gauge clients_remote"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t)
			h.linkUp(1)
			h.linkUp(2)
			h.update(1, true, key(1), key(2))
			h.update(2, true, key(2))
			h.mustBeConsistent()
			tc.corrupt(h)
			problems := h.problems()
			for _, p := range problems {
				if strings.Contains(p, tc.want) {
					return
				}
			}
			t.Fatalf("problems %q, want one saying %q", problems, tc.want)
		})
	}
}

// TestRandomMeshChurnStaysConsistent mixes local connections with mesh
// sessions coming and going and announcing and withdrawing keys. After
// every step it runs the registry's consistency check and compares the
// PeerGone frames the fake clients were asked to send with a model: a
// receiver hears PeerGone(K) when K leaves the region (no local
// connection, no session announcing it) after the receiver heard from K,
// or at once when it is told of a local packet from a K already gone.
func TestRandomMeshChurnStaysConsistent(t *testing.T) {
	for seed := uint64(1); seed <= 20; seed++ {
		t.Run(fmt.Sprint("seed", seed), func(t *testing.T) {
			h := newHarnessWith(t, actors.NewShuffledStepDispatcher(seed), nil)
			rng := rand.New(rand.NewPCG(seed, 1))
			m := newRegionModel()
			var live []*fakeClient
			nextSession := uint64(1)
			randKey := func() wire.NodePublic { return key(byte(rng.IntN(5) + 1)) }
			pickSession := func() (uint64, bool) {
				ids := m.sessionIDs()
				if len(ids) == 0 {
					return 0, false
				}
				return ids[rng.IntN(len(ids))], true
			}
			for step := 0; step < 400; step++ {
				before := m.inRegion()
				expect := map[*fakeClient][]wire.NodePublic{}
				switch op := rng.IntN(12); {
				case op < 2 || len(live) == 0:
					f := h.connect(randKey(), false)
					live = append(live, f)
					m.local[f] = f.conn.Key
				case op < 3:
					i := rng.IntN(len(live))
					f := live[i]
					h.send(&actors.Unregister{Conn: f.conn})
					live = append(live[:i], live[i+1:]...)
					delete(m.local, f)
					delete(m.heard, f)
				case op < 5:
					f := live[rng.IntN(len(live))]
					src, fwd := randKey(), rng.IntN(2) == 0
					h.send(delivered(f.conn, src, fwd))
					if !fwd && !before[src] {
						expect[f] = append(expect[f], src)
					} else {
						m.hear(f, src)
					}
				case op < 6:
					h.linkUp(nextSession)
					m.sessions[nextSession] = map[wire.NodePublic]bool{}
					nextSession++
				case op < 7:
					if id, ok := pickSession(); ok {
						h.send(&actors.MeshLinkDown{Link: id})
						delete(m.sessions, id)
					}
				default:
					if id, ok := pickSession(); ok {
						present, k1, k2 := rng.IntN(3) > 0, randKey(), randKey()
						h.update(id, present, k1, k2)
						m.sessions[id][k1], m.sessions[id][k2] = present, present
					}
				}
				after := m.inRegion()
				for k := range before {
					if after[k] {
						continue
					}
					for f, heard := range m.heard {
						if heard[k] {
							expect[f] = append(expect[f], k)
							delete(heard, k)
						}
					}
				}
				for _, f := range live {
					got := peerGones(f.take())
					var gotKeys []wire.NodePublic
					for _, pg := range got {
						gotKeys = append(gotKeys, pg.Peer)
					}
					// Order among several keys leaving at once is the
					// registry's (announcement order), not the model's.
					slices.SortFunc(gotKeys, compareKeys)
					slices.SortFunc(expect[f], compareKeys)
					if fmt.Sprint(gotKeys) != fmt.Sprint(expect[f]) {
						t.Fatalf("step %d: conn %d got PeerGone for %v, want %v", step, f.conn.ID, gotKeys, expect[f])
					}
				}
				h.mustBeConsistent()
			}
		})
	}
}

func compareKeys(a, b wire.NodePublic) int { return bytes.Compare(a[:], b[:]) }

// regionModel is what the registry should believe, kept the simple way.
type regionModel struct {
	local    map[*fakeClient]wire.NodePublic
	sessions map[uint64]map[wire.NodePublic]bool
	heard    map[*fakeClient]map[wire.NodePublic]bool
}

func newRegionModel() *regionModel {
	return &regionModel{
		local:    map[*fakeClient]wire.NodePublic{},
		sessions: map[uint64]map[wire.NodePublic]bool{},
		heard:    map[*fakeClient]map[wire.NodePublic]bool{},
	}
}

func (m *regionModel) inRegion() map[wire.NodePublic]bool {
	in := map[wire.NodePublic]bool{}
	for _, k := range m.local {
		in[k] = true
	}
	for _, keys := range m.sessions {
		for k, present := range keys {
			if present {
				in[k] = true
			}
		}
	}
	return in
}

func (m *regionModel) hear(f *fakeClient, src wire.NodePublic) {
	if m.heard[f] == nil {
		m.heard[f] = map[wire.NodePublic]bool{}
	}
	m.heard[f][src] = true
}

func (m *regionModel) sessionIDs() []uint64 {
	var ids []uint64
	for id := range m.sessions {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	return ids
}
