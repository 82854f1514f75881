package registry

import (
	"cmp"
	"fmt"
	"slices"

	"github.com/asynkron/protoactor-go/actor"
	"github.com/derpd/derpd/actors"
	"github.com/derpd/derpd/wire"
)

// The forwarder table: which mesh link sessions announce which keys.
//
// A key may be announced by several sessions at once (a client briefly
// connected to two peers while it moves, or two links to one peer during a
// reconnect). Packets go to the session that announced it first; when that
// one withdraws, the earliest remaining takes over, as upstream's
// multiForwarder does, so a key's packets do not hop between peers. Keys
// learned from the mesh are never announced to watchers: only local
// connections are, which is what keeps forwarding to one hop and free of
// loops.

func (r *Registry) linkUp(m *actors.MeshLinkUp) {
	if _, dup := r.sessions[m.Link]; dup {
		r.log.Error().Uint64("session", m.Link).Str("peer", m.Peer).Msg("mesh session registered twice; ignoring")
		return
	}
	r.sessions[m.Link] = &session{
		id: m.Link, peer: m.Peer, peerKey: m.PeerKey, fwd: m.Forward, owner: m.Owner,
		keys: make(map[wire.NodePublic]uint64),
	}
}

// meshUpdate applies a batch of a session's announcements in order.
func (r *Registry) meshUpdate(ctx actor.Context, m *actors.MeshUpdate) *actors.MeshUpdateApplied {
	s := r.sessions[m.Link]
	if s == nil {
		// The session went down after sending this; its keys are gone
		// already and must not come back.
		return &actors.MeshUpdateApplied{Link: m.Link, Unknown: true}
	}
	refused := 0
	for _, u := range m.Updates {
		if u.Present {
			if !r.announce(s, u.Key) {
				refused++
			}
		} else {
			r.withdraw(ctx, s, u.Key)
		}
	}
	if refused > 0 {
		s.refused += int64(refused)
		r.sys.Stats.MeshKeysRefused.Add(int64(refused))
		if !s.warnedFull {
			s.warnedFull = true
			r.log.Warn().Str("peer", s.peer).Uint64("session", s.id).Int("limit", r.maxSessionKeys).
				Msg("mesh peer announces more keys than the per-peer limit; ignoring the rest (see -mesh-max-peer-keys)")
		}
	}
	return &actors.MeshUpdateApplied{Link: m.Link, Keys: len(s.keys), Refused: refused}
}

// announce records that s can reach k. It reports false if s is at its key
// limit and k is new to it.
func (r *Registry) announce(s *session, k wire.NodePublic) bool {
	if _, ok := s.keys[k]; ok {
		return true // a repeated announcement changes nothing
	}
	if len(s.keys) >= r.maxSessionKeys {
		return false
	}
	s.seq++
	s.keys[k] = s.seq
	s.keys = actors.Shrink(s.keys, &s.keysPeak)
	r.known(k)
	list := append(r.forwarders[k], s)
	r.forwarders[k] = list
	switch len(list) {
	case 1:
		if _, local := r.keys[k]; !local {
			r.setRemoteOnly(r.remoteOnly + 1)
		}
		r.publishRoute(k)
	case 2:
		// The preferred forwarder stays the first: no route change.
		r.sys.Stats.MultiForwarderCreated.Add(1)
	}
	return true
}

// withdraw records that s no longer reaches k. A withdrawal of a key s
// never announced (a peer's duplicate PeerGone, or one for a client that
// moved) is counted and otherwise ignored.
func (r *Registry) withdraw(ctx actor.Context, s *session, k wire.NodePublic) {
	if _, ok := s.keys[k]; !ok {
		r.sys.Stats.ForwarderDeleteOther.Add(1)
		return
	}
	delete(s.keys, k)
	s.keys = actors.Shrink(s.keys, &s.keysPeak)
	r.dropForwarder(ctx, s, k)
}

// dropForwarder takes s off k's list; s has already forgotten k.
func (r *Registry) dropForwarder(ctx actor.Context, s *session, k wire.NodePublic) {
	list := r.forwarders[k]
	i := slices.Index(list, s)
	if i < 0 {
		r.log.Error().Str("key", k.ShortString()).Uint64("session", s.id).Msg("forwarder table out of step; repairing")
		return
	}
	list = slices.Delete(list, i, i+1)
	if len(list) == 0 {
		delete(r.forwarders, k)
		r.publishRoute(k)
		if _, local := r.keys[k]; !local {
			r.setRemoteOnly(r.remoteOnly - 1)
			r.goneFromRegion(ctx, k)
		}
		return
	}
	r.forwarders[k] = list
	if len(list) == 1 {
		r.sys.Stats.MultiForwarderDeleted.Add(1)
	}
	if i == 0 {
		r.publishRoute(k) // the earliest remaining takes over
	}
}

// linkDown withdraws everything a session announced, in the order it
// announced it.
func (r *Registry) linkDown(ctx actor.Context, id uint64) {
	s := r.sessions[id]
	if s == nil {
		return
	}
	delete(r.sessions, id)
	type announced struct {
		key wire.NodePublic
		seq uint64
	}
	keys := make([]announced, 0, len(s.keys))
	for k, seq := range s.keys {
		keys = append(keys, announced{k, seq})
	}
	slices.SortFunc(keys, func(a, b announced) int { return cmp.Compare(a.seq, b.seq) })
	clear(s.keys)
	for _, a := range keys {
		r.dropForwarder(ctx, s, a.key)
	}
}

func (r *Registry) setRemoteOnly(n int) {
	r.remoteOnly = n
	r.sys.Stats.ClientsRemote.Store(int64(n))
}

// checkMesh cross-checks the forwarder table against the sessions, the
// local keys, the RouteTable and the clients_remote gauge.
func (r *Registry) checkMesh() []string {
	var problems []string
	remote := 0
	for k, list := range r.forwarders {
		if len(list) == 0 {
			problems = append(problems, fmt.Sprintf("key %s has an empty forwarder list", k.ShortString()))
			continue
		}
		for i, s := range list {
			if r.sessions[s.id] != s {
				problems = append(problems, fmt.Sprintf("key %s is forwarded through session %d, which is not up", k.ShortString(), s.id))
			}
			if _, ok := s.keys[k]; !ok {
				problems = append(problems, fmt.Sprintf("key %s lists session %d, which does not announce it", k.ShortString(), s.id))
			}
			if slices.Index(list, s) != i {
				problems = append(problems, fmt.Sprintf("key %s lists session %d twice", k.ShortString(), s.id))
			}
		}
		if _, local := r.keys[k]; !local {
			remote++
		}
		route := r.sys.Routes.Lookup(k)
		if route == nil || route.Forward != list[0].fwd {
			problems = append(problems, fmt.Sprintf("key %s: route does not forward through its first announcer", k.ShortString()))
		}
	}
	for id, s := range r.sessions {
		for k := range s.keys {
			if !slices.Contains(r.forwarders[k], s) {
				problems = append(problems, fmt.Sprintf("session %d announces %s but is not among its forwarders", id, k.ShortString()))
			}
		}
	}
	r.sys.Routes.Range(func(route *actors.Route) bool {
		if route.Forward != nil && len(r.forwarders[route.Key]) == 0 {
			problems = append(problems, fmt.Sprintf("route for %s forwards through a session the registry does not have", route.Key.ShortString()))
		}
		if route.Local == nil && route.Forward == nil {
			problems = append(problems, fmt.Sprintf("route for %s goes nowhere", route.Key.ShortString()))
		}
		return true
	})
	if remote != r.remoteOnly {
		problems = append(problems, fmt.Sprintf("%d keys are only remote but the registry counts %d", remote, r.remoteOnly))
	}
	if got := r.sys.Stats.ClientsRemote.Load(); got != int64(remote) {
		problems = append(problems, fmt.Sprintf("gauge clients_remote is %d but %d keys are only remote", got, remote))
	}
	return problems
}
