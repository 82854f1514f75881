package sim

import (
	"fmt"
	"slices"
	"time"

	"github.com/derpd/derpd/actors"
	"github.com/derpd/derpd/wire"
)

// The invariants. Those that hold between any two steps are checked at
// every step: each packet as it is routed and as it is written, each
// PeerGone as it arrives, the route table and the gauges after every
// message the registry handles. Those that only hold once the region is
// at rest (no actor has work, no packet is on a link) are checked at
// rest, every CheckEvery steps and at the end.

// checkRoute compares a route read from n's table with the model.
func (s *sim) checkRoute(n *node, k wire.NodePublic, rt *actors.Route) {
	wantLocal, wantFwd := n.m.route(k)
	var gotLocal actors.PacketSink
	var gotFwd actors.Forwarder
	if rt != nil {
		gotLocal, gotFwd = rt.Local, rt.Forward
	}
	if gotLocal != wantLocal {
		s.failf("%s: packets for %s go to %s, but the key's receiving connection is %s",
			n.name, keyName(k), sinkName(gotLocal), sinkName(wantLocal))
		return
	}
	if gotFwd != wantFwd {
		s.failf("%s: packets for %s are forwarded through %s, but its first announcer is %s",
			n.name, keyName(k), fwdName(gotFwd), fwdName(wantFwd))
	}
}

// checkRoutes checks n's whole route table and its gauges against the
// model, after a message the registry handled.
func (s *sim) checkRoutes(n *node) {
	// Every route in the table is the model's; every key the model
	// routes has a route (a missing one would read as nil above).
	routes := 0
	n.sys.Routes.Range(func(rt *actors.Route) bool {
		routes++
		s.checkRoute(n, rt.Key, rt)
		return s.fail == nil
	})
	if s.fail != nil {
		return
	}
	want := len(n.m.keys)
	for k := range n.m.fwd {
		if n.m.keys[k] == nil {
			want++
		}
	}
	if routes != want {
		for k := range n.m.keys {
			s.checkRoute(n, k, n.sys.Routes.Lookup(k))
		}
		for k := range n.m.fwd {
			s.checkRoute(n, k, n.sys.Routes.Lookup(k))
		}
		s.failf("%s: %d routes in the table, the registry's connections and announcements make %d", n.name, routes, want)
		return
	}
	local, remote, dupKeys, dupConns, watchers := n.m.gauges()
	st := n.sys.Stats
	for _, g := range []struct {
		name      string
		got, want int64
	}{
		{"clients_local", st.ClientsLocal.Load(), local},
		{"clients_remote", st.ClientsRemote.Load(), remote},
		{"dup_client_keys", st.DupClientKeys.Load(), dupKeys},
		{"dup_client_conns", st.DupClientConns.Load(), dupConns},
		{"watchers", st.Watchers.Load(), watchers},
	} {
		if g.got != g.want {
			s.failf("%s: gauge %s is %d, but the registry's connections make it %d", n.name, g.name, g.got, g.want)
			return
		}
	}
}

// ask sends a query to n's registry and runs the region to rest for the
// answer.
func (s *sim) ask(n *node, msg any) any {
	f := n.sys.Root.RequestFuture(n.reg, msg, time.Minute)
	s.settle()
	if s.fail != nil {
		return nil
	}
	res, err := f.Result()
	if err != nil {
		s.failf("%s: the registry did not answer %T: %v", n.name, msg, err)
	}
	return res
}

// checkAtRest checks what holds once the region is at rest.
func (s *sim) checkAtRest() {
	for _, n := range s.nodes {
		if s.fail != nil {
			return
		}
		s.checkNodeAtRest(n)
	}
	if s.fail == nil {
		s.checkPeerGoneOwed()
	}
	if s.fail == nil {
		s.checkPackets()
	}
}

func (s *sim) checkNodeAtRest(n *node) {
	rep, _ := s.ask(n, &actors.CheckConsistency{}).(*actors.ConsistencyReport)
	if rep == nil || s.fail != nil {
		return
	}
	if len(rep.Problems) > 0 {
		s.failf("%s: registry inconsistent: %v", n.name, rep.Problems)
		return
	}

	// Every connection the registry holds is open, and every open one
	// is held: no table entry outlives its connection.
	for c := range n.m.conns {
		if n.open[c.ID] == nil {
			s.failf("%s: the registry still holds c%d, which is closed", n.name, c.ID)
			return
		}
	}
	keys := make(map[wire.NodePublic]bool)
	meshConns := 0
	for _, c := range n.open {
		if n.m.conns[c.c] == nil {
			s.failf("%s: open connection c%d is not registered", n.name, c.id)
			return
		}
		keys[c.c.Key] = true
		if c.link != nil {
			meshConns++
			if !n.m.watchers[c.c] {
				s.failf("%s: the link connection c%d from %s is not a watcher", n.name, c.id, c.link.from.name)
				return
			}
		}
	}
	if len(n.m.watchers) != meshConns {
		s.failf("%s: %d watchers, %d open link connections", n.name, len(n.m.watchers), meshConns)
		return
	}

	// The keys announced to n are exactly those connected on the peers
	// its links reach, each through every link that reaches it.
	want := make(map[wire.NodePublic][]actors.Forwarder)
	up := 0
	for _, l := range n.out {
		if l.session == 0 {
			continue
		}
		up++
		for _, c := range l.to.open {
			if !slices.Contains(want[c.c.Key], actors.Forwarder(l.fwd)) {
				want[c.c.Key] = append(want[c.c.Key], l.fwd)
			}
		}
	}
	if len(n.m.sessions) != up {
		s.failf("%s: the registry has %d mesh sessions, %d links are up", n.name, len(n.m.sessions), up)
		return
	}
	for k, fwds := range want {
		var got []actors.Forwarder
		for _, ms := range n.m.fwd[k] {
			got = append(got, ms.fwd)
		}
		if len(got) != len(fwds) {
			s.failf("%s: %s is announced by %d sessions, but %d links reach it", n.name, keyName(k), len(got), len(fwds))
			return
		}
		for _, f := range fwds {
			if !slices.Contains(got, f) {
				s.failf("%s: %s is not announced through %s, which reaches it", n.name, keyName(k), fwdName(f))
				return
			}
		}
	}
	for k := range n.m.fwd {
		if want[k] == nil {
			s.failf("%s: %s is still announced, but no link reaches it", n.name, keyName(k))
			return
		}
	}

	// The registry's own account, and the live actors, agree.
	st, _ := s.ask(n, &actors.GetRegistryState{}).(*actors.RegistryState)
	if st == nil || s.fail != nil {
		return
	}
	remote := 0
	for k := range want {
		if !keys[k] {
			remote++
		}
	}
	routes := len(keys) + remote
	for _, c := range []struct {
		name      string
		got, want int
	}{
		{"connections", st.Conns, len(n.open)},
		{"keys", st.Keys, len(keys)},
		{"remote keys", st.RemoteKeys, remote},
		{"mesh sessions", st.MeshSessions, up},
		{"routes", st.Routes, routes},
		{"live client actors", int(n.sys.Kind(actors.ActorClient).Live()), len(n.open)},
		{"live link actors", int(n.sys.Kind(actors.ActorMeshLink).Live()), len(n.out)},
		{"live registries", int(n.sys.Kind(actors.ActorRegistry).Live()), 1},
	} {
		if c.got != c.want {
			s.failf("%s: %s: %d, but the simulation has %d", n.name, c.name, c.got, c.want)
			return
		}
	}
}

// checkPeerGoneOwed: a connection that was written packets from a key
// that has since left the whole region was sent PeerGone for it, unless
// the registry documents that it is not owed one: the key was on
// probation (unknown when the registry took the Delivered) and was not
// written to the connection again once it had come into the region.
func (s *sim) checkPeerGoneOwed() {
	for _, n := range s.nodes {
		for _, id := range sortedIDs(n.open) {
			c := n.open[id]
			if c.cl == nil {
				continue
			}
			for _, src := range s.clients {
				h := c.heard[src.key]
				if h == nil || len(src.conns) > 0 {
					continue
				}
				onProbation := h.probationAt > h.lastGone && !h.writtenWhileKnown
				if h.lastDeliv > h.lastGone && !onProbation {
					s.failf("%s: c%d (key %d) heard from key %d (last at step %d), which left the region at step %d, and was not sent PeerGone",
						n.name, c.id, c.cl.idx, src.idx, h.lastDelivStep, src.leftStep)
					return
				}
			}
		}
	}
}

// checkPackets: at rest, every packet sent has exactly one outcome.
func (s *sim) checkPackets() {
	for id := uint64(1); id <= s.nextPacket; id++ {
		if pk := s.packets[id]; pk.outcome == "" {
			s.failf("packet %d from key %d to %s was neither delivered nor dropped", id, pk.src.idx, keyName(pk.dst))
			return
		}
	}
	var dropped int64
	for _, v := range s.res.Dropped {
		dropped += v
	}
	if s.res.Sent != s.res.Delivered+dropped {
		s.failf("sent %d, delivered %d, dropped %d", s.res.Sent, s.res.Delivered, dropped)
	}
}

func sortedIDs(m map[uint64]*conn) []uint64 {
	out := make([]uint64, 0, len(m))
	for id := range m {
		out = append(out, id)
	}
	slices.Sort(out)
	return out
}

func keyName(k wire.NodePublic) string {
	switch k[0] {
	case 'c':
		return fmt.Sprintf("key %d", int(k[1])<<24|int(k[2])<<16|int(k[3])<<8|int(k[4]))
	case 'n':
		return fmt.Sprintf("node n%d's key", k[1])
	}
	return "key " + k.ShortString()
}

func sinkName(p actors.PacketSink) string {
	if c, ok := p.(*conn); ok && c != nil {
		return fmt.Sprintf("c%d", c.id)
	}
	if p == nil {
		return "nowhere"
	}
	return fmt.Sprintf("%T", p)
}

func fwdName(f actors.Forwarder) string {
	if fw, ok := f.(*forwarder); ok && fw != nil {
		return fmt.Sprintf("%s->%s session %d", fw.l.from.name, fw.l.to.name, fw.session)
	}
	if f == nil {
		return "no link"
	}
	return fmt.Sprintf("%T", f)
}
