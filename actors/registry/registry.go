// Package registry is the registry actor: the single owner of which node
// keys are connected here, which of a key's connections receives its
// packets, which mesh links announce keys connected elsewhere in the
// region, who watches connection changes, and who must hear PeerGone when
// a key leaves the region. It is the only writer of the RouteTable that
// connection readers consult.
package registry

import (
	"cmp"
	"fmt"
	"maps"
	"slices"
	"time"

	"github.com/asynkron/protoactor-go/actor"
	"github.com/derpd/derpd/actors"
	"github.com/derpd/derpd/wire"
	"github.com/rs/zerolog"
)

// Registry is the actor. Create it with New and spawn it with Props.
type Registry struct {
	sys       *actors.System
	log       zerolog.Logger
	serverKey wire.NodePublic

	keys     map[wire.NodePublic]*keyState
	conns    map[*actors.Conn]*connState
	watchers map[*actors.Conn]struct{}

	// recipients lists, per source key, the connections that were sent at
	// least one packet from it: they get PeerGone(Disconnected) when the
	// source leaves the region.
	recipients map[wire.NodePublic]map[*actors.Conn]struct{}

	// seq orders registrations and activity, to pick the most recently
	// active duplicate when the active one leaves.
	seq uint64

	// The forwarder table. sessions are the mesh link sessions that are
	// up; forwarders lists, per key, the sessions announcing it in the
	// order they announced it: the first is the one packets go to (the
	// spec's preference rule), and when it withdraws, the earliest
	// remaining takes over.
	sessions   map[uint64]*session
	forwarders map[wire.NodePublic][]*session
	remoteOnly int // keys with forwarders and no local connection

	maxSessionKeys int
	postingOrder   bool // WithPostingOrder: a plain mailbox

	// unknownSources are sources of forwarded packets that the region did
	// not know when the packet was delivered, with when they were first
	// seen. Their announcement may simply be behind the packet (it comes
	// over another connection); if a sweep still finds one unknown, its
	// recipients forget it: nothing will ever say it left, and a mesh
	// peer could otherwise grow the tables with made-up sources for as
	// long as the receivers stay.
	unknownSources map[wire.NodePublic]time.Time
	sweepArmed     bool

	// restart is the graceful shutdown in progress, nil until RestartAll
	// (restart.go).
	restart *restartPlan

	mbox *actors.MailboxStats // its own mailbox's counts

	peaks mapPeaks // for shrinkMaps (shrink.go)
}

// session is one connected mesh link session: a peer server whose
// clients this server can reach through it.
type session struct {
	id      uint64
	peer    string
	peerKey wire.NodePublic
	fwd     actors.Forwarder
	owner   *actor.PID // the link actor

	// keys it announces, each with its announcement number, so that
	// withdrawing them all when the session ends goes in a defined order.
	keys       map[wire.NodePublic]uint64
	seq        uint64
	refused    int64 // announcements refused at the key limit
	warnedFull bool
	keysPeak   actors.MapPeak
}

// DefaultMaxSessionKeys bounds how many keys one mesh link session may
// announce. Each remote key costs the registry and the route table about
// 370 bytes (measured: 18 MiB of heap for 50,000 keys), so the bound caps
// what one peer, faulty or hostile, can make this server hold at about
// 75 MB per peer, while leaving room for the largest regions: a busy DERP
// node holds tens of thousands of clients.
const DefaultMaxSessionKeys = 200_000

// Option adjusts a registry.
type Option func(*Registry)

// WithPostingOrder gives the registry a plain mailbox, taking every
// message in the order posted, Delivered included, instead of Delivered
// last. For a replay of a journal: the journal holds the messages in the
// order the recorded registry took them, so feeding them to a registry
// that takes them as posted repeats that order, however many are fed
// before it runs.
func WithPostingOrder() Option { return func(r *Registry) { r.postingOrder = true } }

// WithMaxSessionKeys sets the per-session key limit; n ≤ 0 keeps the
// default.
func WithMaxSessionKeys(n int) Option {
	return func(r *Registry) {
		if n > 0 {
			r.maxSessionKeys = n
		}
	}
}

type keyState struct {
	conns  []*connState // in registration order
	active *connState
}

type connState struct {
	conn      *actors.Conn
	key       *keyState // its key's, so a snapshot need not look keys up
	seq       uint64
	heardFrom map[wire.NodePublic]struct{}
	// heardFromPeak is the most heardFrom has held since it was made: a
	// receiver that outlives a burst of sources (made-up forwarded ones
	// above all) gives their buckets back (actors.Shrink).
	heardFromPeak actors.MapPeak
}

// New returns a registry for a server whose own key is serverKey (a mesh
// link that reaches itself must not become its own watcher).
func New(sys *actors.System, serverKey wire.NodePublic, opts ...Option) *Registry {
	r := &Registry{
		sys:            sys,
		log:            sys.Log.With().Str("actor", "registry").Logger(),
		serverKey:      serverKey,
		keys:           make(map[wire.NodePublic]*keyState),
		conns:          make(map[*actors.Conn]*connState),
		watchers:       make(map[*actors.Conn]struct{}),
		recipients:     make(map[wire.NodePublic]map[*actors.Conn]struct{}),
		sessions:       make(map[uint64]*session),
		forwarders:     make(map[wire.NodePublic][]*session),
		maxSessionKeys: DefaultMaxSessionKeys,
		unknownSources: make(map[wire.NodePublic]time.Time),
	}
	for _, o := range opts {
		o(r)
	}
	return r
}

// Recover implements actors.Recoverer. After a panic nothing in the
// tables can be trusted, and every route, PeerGone and watcher update
// depends on them, so the registry starts over: every connection it knew
// is closed (clients reconnect and register afresh within seconds), every
// mesh link is told to reconnect and announce again, the route table is
// emptied and the gauges it keeps are zeroed. Connections registering
// meanwhile are simply the first entries of the new tables.
func (r *Registry) Recover(ctx actor.Context, reason any) {
	// In connection and session order, as every fan-out: a run on a
	// stepped system is then the same every time.
	for _, c := range sortedConns(r.conns) {
		if c != nil && c.PID != nil {
			ctx.Send(c.PID, &actors.CloseConn{Reason: "the registry recovered from an internal error"})
		}
	}
	for _, id := range slices.Sorted(maps.Keys(r.sessions)) {
		if s := r.sessions[id]; s != nil && s.owner != nil {
			ctx.Send(s.owner, &actors.RegistryRestarted{})
		}
	}
	var keys []wire.NodePublic
	r.sys.Routes.Range(func(rt *actors.Route) bool {
		keys = append(keys, rt.Key)
		return true
	})
	for _, k := range keys {
		r.sys.Routes.Delete(k)
	}
	fresh := New(r.sys, r.serverKey, WithMaxSessionKeys(r.maxSessionKeys))
	fresh.mbox, fresh.postingOrder = r.mbox, r.postingOrder
	*r = *fresh
	stats := r.sys.Stats
	stats.ClientsLocal.Store(0)
	stats.ClientsRemote.Store(0)
	stats.DupClientKeys.Store(0)
	stats.DupClientConns.Store(0)
	stats.Watchers.Store(0)
	r.log.Error().Int("routes_dropped", len(keys)).Msg("registry restarted with empty tables after a panic; every connection was closed")
}

// Props returns the props that spawn r.
func (r *Registry) Props() *actor.Props {
	// A priority mailbox, with Delivered below everything else: under
	// load the bookkeeping for PeerGone waits, not new connections (see
	// delivered for what that reorders).
	props := r.sys.PriorityProps
	if r.postingOrder {
		props = r.sys.Props
	}
	p, mbox := props(actors.ActorRegistry, func() actor.Actor { return r })
	r.mbox = mbox
	return p
}

// Spawn starts a registry and records its PID in the system.
func Spawn(sys *actors.System, serverKey wire.NodePublic, opts ...Option) *actor.PID {
	pid, err := sys.Root.SpawnNamed(New(sys, serverKey, opts...).Props(), "registry")
	if err != nil {
		panic("registry: spawn: " + err.Error())
	}
	sys.Registry = pid
	return pid
}

// Receive implements actor.Actor.
func (r *Registry) Receive(ctx actor.Context) {
	switch m := ctx.Message().(type) {
	case *actors.Register:
		r.register(ctx, m.Conn)
	case *actors.Unregister:
		r.unregister(ctx, m.Conn)
	case *actors.Activity:
		r.activity(m.Conn)
		if ctx.Sender() != nil {
			ctx.Respond(m) // the reader waits for this, see client.reader
		}
	case *actors.WatchConns:
		r.watch(ctx, m.Conn)
	case *actors.ClosePeer:
		r.closePeer(ctx, m)
	case *actors.Delivered:
		r.delivered(ctx, m)
	case *actors.MeshLinkUp:
		r.linkUp(m)
	case *actors.MeshUpdate:
		ctx.Respond(r.meshUpdate(ctx, m))
	case *actors.MeshLinkDown:
		r.linkDown(ctx, m.Link)
	case *actors.CloseAll:
		for _, c := range sortedConns(r.conns) {
			ctx.Send(c.PID, &actors.CloseConn{Reason: m.Reason, Flush: m.Flush})
		}
	case *actors.RestartAll:
		r.restartAll(ctx, m)
	case *restartTick:
		r.restartStep(ctx)
	case *actors.GetRegistryState:
		ctx.Respond(r.state())
	case *actors.GetMeshConns:
		ctx.Respond(r.meshConns())
	case *actors.GetConns:
		ctx.Respond(r.connList())
	case *actors.GetPeer:
		ctx.Respond(r.peer(m.Key))
	case *sweepUnknownSources:
		r.sweepUnknown(ctx)
	case *actors.CheckConsistency:
		ctx.Respond(&actors.ConsistencyReport{Problems: r.check()})
	}
	r.shrinkMaps()
}

func (r *Registry) register(ctx actor.Context, c *actors.Conn) {
	if _, dup := r.conns[c]; dup {
		r.log.Error().Uint64("conn", c.ID).Msg("connection registered twice; ignoring")
		return
	}
	r.seq++
	cs := &connState{conn: c, seq: r.seq}
	r.conns[c] = cs
	ks := r.keys[c.Key]
	if ks == nil {
		ks = &keyState{}
		r.keys[c.Key] = ks
		r.known(c.Key)
		if len(r.forwarders[c.Key]) > 0 {
			// Known through the mesh until now; local from here on.
			r.setRemoteOnly(r.remoteOnly - 1)
		}
	}
	ks.conns = append(ks.conns, cs)
	cs.key = ks
	stats := r.sys.Stats
	switch n := len(ks.conns); {
	case n == 2:
		stats.DupClientKeys.Add(1)
		stats.DupClientConns.Add(2)
	case n > 2:
		stats.DupClientConns.Add(1)
	}
	if len(ks.conns) > 1 {
		stats.DupClientTotal.Add(1)
		r.log.Debug().Uint64("conn", c.ID).Str("key", c.Key.ShortString()).
			Int("conns", len(ks.conns)).Msg("duplicate connection for key; newest receives")
	}
	// The newest connection receives until another of the key's
	// connections speaks.
	r.setActive(ks, cs)
	stats.ClientsLocal.Store(int64(len(r.keys)))
	ctx.Send(c.PID, &actors.Registered{})
	if r.restart != nil {
		// Its handshake was under way when the shutdown began; the
		// shutdown's final CloseAll ends it.
		ctx.Send(c.PID, r.restart.frame)
	}
	r.broadcast(ctx, present(c))
}

func (r *Registry) unregister(ctx actor.Context, c *actors.Conn) {
	cs, ok := r.conns[c]
	if !ok {
		return
	}
	delete(r.conns, c)
	defer r.restartLeft(ctx, c)
	if _, ok := r.watchers[c]; ok {
		delete(r.watchers, c)
		r.sys.Stats.Watchers.Add(-1)
	}
	for src := range cs.heardFrom {
		if set := r.recipients[src]; set != nil {
			delete(set, c)
			if len(set) == 0 {
				delete(r.recipients, src)
			}
		}
	}

	ks := r.keys[c.Key]
	ks.conns = slices.DeleteFunc(ks.conns, func(x *connState) bool { return x == cs })
	stats := r.sys.Stats
	switch len(ks.conns) {
	case 0:
		delete(r.keys, c.Key)
		stats.ClientsLocal.Store(int64(len(r.keys)))
		r.publishRoute(c.Key)
		r.broadcast(ctx, actors.PeerPresence{Peer: c.Key, Present: false})
		if len(r.forwarders[c.Key]) > 0 {
			// Still connected elsewhere in the region: its packets go
			// there now, and nobody hears PeerGone.
			r.setRemoteOnly(r.remoteOnly + 1)
		} else {
			r.goneFromRegion(ctx, c.Key)
		}
	case 1:
		// Back to a single connection: it receives and need not report
		// its activity any more.
		stats.DupClientKeys.Add(-1)
		stats.DupClientConns.Add(-2)
		r.setActive(ks, ks.conns[0])
	default:
		stats.DupClientConns.Add(-1)
		if ks.active == cs {
			latest := ks.conns[0]
			for _, x := range ks.conns[1:] {
				if x.seq > latest.seq {
					latest = x
				}
			}
			r.setActive(ks, latest)
		}
	}
}

// activity makes a duplicate connection that just sent a frame the one
// that receives.
func (r *Registry) activity(c *actors.Conn) {
	cs, ok := r.conns[c]
	if !ok {
		return
	}
	r.seq++
	cs.seq = r.seq
	ks := r.keys[c.Key]
	if len(ks.conns) > 1 && ks.active != cs {
		r.setActive(ks, cs)
	}
}

// setActive makes cs the key's receiving connection, raises the activity
// flag on the others, and publishes the route.
func (r *Registry) setActive(ks *keyState, cs *connState) {
	ks.active = cs
	dup := len(ks.conns) > 1
	for _, x := range ks.conns {
		x.conn.NoteActivity.Store(dup && x != cs)
	}
	r.publishRoute(cs.conn.Key)
}

// publishRoute writes the key's route as the registry's state has it: the
// active local connection, if any, and the preferred mesh forwarder, if
// any; no route when there is neither.
func (r *Registry) publishRoute(k wire.NodePublic) {
	var local actors.PacketSink
	if ks := r.keys[k]; ks != nil && ks.active != nil {
		local = ks.active.conn.Sink
	}
	var fwd actors.Forwarder
	if list := r.forwarders[k]; len(list) > 0 {
		fwd = list[0].fwd
	}
	if local == nil && fwd == nil {
		r.sys.Routes.Delete(k)
		return
	}
	r.sys.Routes.Set(&actors.Route{Key: k, Local: local, Forward: fwd})
}

// goneFromRegion tells every connection that heard from k that k is gone,
// in connection order.
func (r *Registry) goneFromRegion(ctx actor.Context, k wire.NodePublic) {
	for _, c := range sortedConns(r.recipients[k]) {
		ctx.Send(c.PID, &actors.SendPeerGone{Peer: k, Reason: wire.PeerGoneDisconnected})
		if cs := r.conns[c]; cs != nil {
			delete(cs.heardFrom, k)
			cs.heardFrom = actors.Shrink(cs.heardFrom, &cs.heardFromPeak)
		}
	}
	delete(r.recipients, k)
}

// sortedConns returns a map's connections by connection id, so that a
// fan-out goes in the same order on every run.
func sortedConns[V any](set map[*actors.Conn]V) []*actors.Conn {
	out := make([]*actors.Conn, 0, len(set))
	for c := range set {
		if c != nil { // never there; Recover must not panic on one
			out = append(out, c)
		}
	}
	slices.SortFunc(out, func(a, b *actors.Conn) int { return cmp.Compare(a.ID, b.ID) })
	return out
}

// delivered records that m.Receiver was sent packets from m's sources.
//
// Delivered is a doorbell: it takes the receiver's whole list of first
// deliveries at once (m.Take), so one message stands for every source
// reported since the last one. It also has the lowest priority in the
// registry's mailbox (see Props), so it may be handled after messages
// posted after it. The reorderings that allows, and what comes of each:
//   - after the receiver's Unregister: the receiver is unknown, and its
//     sources are dropped, as the Unregister would have dropped them;
//   - after the source's Unregister (its last connection, and no mesh
//     link announces it): the source is not here, so the receiver, which
//     goneFromRegion could not know of, is sent PeerGone at once;
//   - after the source's Unregister and its Register again: the receiver
//     is recorded as hearing from the new connection and hears PeerGone
//     when that one leaves. The PeerGone for the brief absence is not
//     sent; it would only have said that the key was gone from a server
//     where it is back. (In posting order this happened already, to a
//     packet written after the key came back from a connection's queue.)
//   - after a mesh link withdrew a forwarded source: the source goes on
//     probation as any forwarded source unknown to the region, and is
//     forgotten by the sweep without PeerGone (the receiver's sink is told
//     to forget it too, ForgetSource, so that it reports the source again
//     should it come back and write); a later packet to it is answered
//     PeerGone(not here).
//   - after a registry Recover: no connection is known, as above.
//
// Registrations (and every other message) are never held up by this
// bookkeeping, which is the point: a backlog of Delivered once held new
// clients' ServerInfo for over 15 s. The other side of it is that a
// steady flood of other messages holds Delivered back; what that costs
// is bounded, as each connection's list is (maxPendingDelivered), and
// one Delivered per connection waits in the mailbox.
func (r *Registry) delivered(ctx actor.Context, m *actors.Delivered) {
	sources := m.Take() // first: the receiver's next first delivery rings again
	cs, ok := r.conns[m.Receiver]
	if !ok {
		return
	}
	for _, s := range sources {
		r.deliveredFrom(ctx, cs, s)
	}
}

func (r *Registry) deliveredFrom(ctx actor.Context, cs *connState, s actors.DeliveredSource) {
	if _, here := r.keys[s.Source]; !here && !s.Forwarded && len(r.forwarders[s.Source]) == 0 {
		// The source left while its packet was queued: the receiver has
		// already missed the PeerGone it would have had. (A packet a mesh
		// peer forwarded comes from a key connected elsewhere; it is only
		// recorded, and PeerGone follows if the key ever leaves here.)
		ctx.Send(cs.conn.PID, &actors.SendPeerGone{Peer: s.Source, Reason: wire.PeerGoneDisconnected})
		return
	}
	if s.Forwarded && !r.inRegion(s.Source) {
		if _, ok := r.unknownSources[s.Source]; !ok {
			if len(r.unknownSources) >= maxUnknownSources {
				// Not recorded, so the receiver must not count it as
				// reported either (see sweepUnknown).
				r.sys.Stats.UnknownSourcesIgnored.Add(1)
				forgetSource(cs.conn, s.Source)
				return
			}
			r.unknownSources[s.Source] = r.sys.Clock.Now()
			r.armSweep(ctx)
		}
	}
	set := r.recipients[s.Source]
	if set == nil {
		set = make(map[*actors.Conn]struct{})
		r.recipients[s.Source] = set
	}
	set[cs.conn] = struct{}{}
	if cs.heardFrom == nil {
		cs.heardFrom = make(map[wire.NodePublic]struct{})
	}
	cs.heardFrom[s.Source] = struct{}{}
	cs.heardFrom = actors.Shrink(cs.heardFrom, &cs.heardFromPeak)
}

// Unknown forwarded sources are forgotten once unknown for
// unknownSourceProbation; at most maxUnknownSources are on probation at
// once (more are not recorded, and counted).
const (
	unknownSourceProbation = 30 * time.Second
	maxUnknownSources      = 65536
)

type sweepUnknownSources struct{}

func (r *Registry) inRegion(k wire.NodePublic) bool {
	_, here := r.keys[k]
	return here || len(r.forwarders[k]) > 0
}

// known ends a key's probation: from here on its departure is what prunes
// its recipients.
func (r *Registry) known(k wire.NodePublic) {
	if len(r.unknownSources) > 0 {
		delete(r.unknownSources, k)
	}
}

func (r *Registry) armSweep(ctx actor.Context) {
	if r.sweepArmed {
		return
	}
	r.sweepArmed = true
	self, sys := ctx.Self(), r.sys
	sys.Clock.AfterFunc(unknownSourceProbation, func() { sys.Send(self, &sweepUnknownSources{}) })
}

// sweepUnknown forgets the sources whose probation is over and that the
// region still does not know, without PeerGone: none was ever due.
//
// Each recipient's sink is told to forget the source (forgetSource): the
// outbox reports a source only the first time, so without it a source
// that later came into the region and wrote to the recipient again would
// go unreported, and its departure would send the recipient no PeerGone.
// The sink is told here, in the sweep, not by a message to the client
// actor: the registry may handle the source's Register or announcement
// right after the sweep, and a packet the source then wrote must find
// the forget already there. How the forget meets what is in flight:
//   - a report of the source the outbox made before the forget (a
//     Delivered still in this mailbox, which its low priority lets a
//     sweep overtake, or a list not yet taken): the registry records the
//     recipient again when it takes it, on a new probation if the
//     source is still unknown, and the outbox, having forgotten, reports
//     the source once more with its next packet: recorded once;
//   - a packet the writer is writing at the very moment of the sweep
//     may miss the forget (the writer looks once per packet, see
//     client.Outbox.ForgetSource); the source is unknown to the region
//     then, so that packet is not one a PeerGone is owed for, and the
//     next one is reported.
func (r *Registry) sweepUnknown(ctx actor.Context) {
	r.sweepArmed = false
	cutoff := r.sys.Clock.Now().Add(-unknownSourceProbation)
	for src, since := range r.unknownSources {
		if since.After(cutoff) {
			continue
		}
		delete(r.unknownSources, src)
		if r.inRegion(src) {
			continue
		}
		for _, c := range sortedConns(r.recipients[src]) {
			if cs := r.conns[c]; cs != nil {
				delete(cs.heardFrom, src)
				cs.heardFrom = actors.Shrink(cs.heardFrom, &cs.heardFromPeak)
			}
			forgetSource(c, src)
		}
		delete(r.recipients, src)
	}
	if len(r.unknownSources) > 0 {
		r.armSweep(ctx)
	}
}

// forgetSource tells c's sink that c is no longer among src's
// recipients (see actors.SourceForgetter), if it keeps such a record.
func forgetSource(c *actors.Conn, src wire.NodePublic) {
	if f, ok := c.Sink.(actors.SourceForgetter); ok {
		f.ForgetSource(src)
	}
}

func (r *Registry) watch(ctx actor.Context, c *actors.Conn) {
	if _, ok := r.conns[c]; !ok {
		return
	}
	if c.Key == r.serverKey {
		// Our own mesh link reached us: watching ourselves would only
		// echo our clients back to us.
		return
	}
	if _, ok := r.watchers[c]; !ok {
		r.watchers[c] = struct{}{}
		r.sys.Stats.Watchers.Add(1)
	}
	// The snapshot lists the keys in the order of the connections that
	// announce them, not the map's, so a watcher's frames are the same
	// on every run.
	active := make([]*actors.Conn, 0, len(r.keys))
	for _, ks := range r.keys {
		active = append(active, ks.active.conn)
	}
	slices.SortFunc(active, func(a, b *actors.Conn) int { return cmp.Compare(a.ID, b.ID) })
	updates := make([]actors.PeerPresence, 0, len(active))
	for _, c := range active {
		updates = append(updates, present(c))
	}
	ctx.Send(c.PID, &actors.SendPeerPresence{Updates: updates})
}

// present is the watcher entry that announces c: its key, and the address
// and flags of this connection.
func present(c *actors.Conn) actors.PeerPresence {
	return actors.PeerPresence{Peer: c.Key, Present: true, Addr: c.Addr, Flags: c.Flags}
}

func (r *Registry) broadcast(ctx actor.Context, u actors.PeerPresence) {
	if len(r.watchers) == 0 {
		return
	}
	msg := &actors.SendPeerPresence{Updates: []actors.PeerPresence{u}}
	for _, w := range sortedConns(r.watchers) {
		ctx.Send(w.PID, msg)
	}
}

func (r *Registry) closePeer(ctx actor.Context, m *actors.ClosePeer) {
	ks := r.keys[m.Target]
	if ks == nil {
		r.log.Info().Str("target", m.Target.String()).Uint64("from_conn", m.From.ID).
			Msg("ClosePeer for a key that is not connected")
		return
	}
	r.log.Info().Str("target", m.Target.String()).Uint64("from_conn", m.From.ID).
		Int("conns", len(ks.conns)).Msg("closing connections at a mesh peer's request")
	for _, cs := range ks.conns {
		ctx.Send(cs.conn.PID, &actors.CloseConn{Reason: "ClosePeer from mesh peer"})
	}
}

func (r *Registry) state() *actors.RegistryState {
	st := &actors.RegistryState{
		Keys:     len(r.keys),
		Conns:    len(r.conns),
		Watchers: len(r.watchers),
		Routes:   r.sys.Routes.Len(),
	}
	for _, ks := range r.keys {
		if len(ks.conns) > 1 {
			st.DupKeys++
		}
	}
	st.Mailbox = r.mbox.CountsInHandler()
	st.RemoteKeys = r.remoteOnly
	st.MeshSessions = len(r.sessions)
	for _, list := range r.forwarders {
		if len(list) > 1 {
			st.MultiLinked++
		}
	}
	return st
}

// connList hands out every connection. It is one pointer copy per
// connection, with no sorting and no rendering, so that even a registry of
// tens of thousands holds its mailbox for a moment only; the page that
// asked does the rest on its own goroutine.
func (r *Registry) connList() *actors.Conns {
	out := &actors.Conns{List: make([]actors.ConnEntry, 0, len(r.conns))}
	for c, cs := range r.conns {
		watching := false
		if len(r.watchers) > 0 {
			_, watching = r.watchers[c]
		}
		out.List = append(out.List, actors.ConnEntry{Conn: c, Active: cs.key.active == cs, Watching: watching})
	}
	return out
}

func (r *Registry) peer(k wire.NodePublic) *actors.Peer {
	out := &actors.Peer{Key: k, HeardFrom: len(r.recipients[k])}
	if ks := r.keys[k]; ks != nil {
		for _, cs := range ks.conns {
			_, watching := r.watchers[cs.conn]
			out.Conns = append(out.Conns, actors.ConnEntry{Conn: cs.conn, Active: cs == ks.active, Watching: watching})
		}
	}
	for _, s := range r.forwarders[k] {
		out.ForwardedBy = append(out.ForwardedBy, s.peer)
	}
	return out
}

func (r *Registry) meshConns() *actors.MeshConns {
	out := &actors.MeshConns{}
	for c := range r.conns {
		if !c.CanMesh {
			continue
		}
		_, watching := r.watchers[c]
		out.Conns = append(out.Conns, actors.MeshConnInfo{
			ID: c.ID, Key: c.Key, Addr: c.Addr, Since: c.Since,
			Watching: watching, ForwardedIn: c.ForwardedIn.Load(),
		})
	}
	slices.SortFunc(out.Conns, func(a, b actors.MeshConnInfo) int { return cmp.Compare(a.ID, b.ID) })
	return out
}

// check cross-checks the registry's maps against each other, the
// RouteTable and the gauges the registry keeps, for /debug/check and for
// tests.
func (r *Registry) check() []string {
	var problems []string
	for k, ks := range r.keys {
		if len(ks.conns) == 0 {
			problems = append(problems, fmt.Sprintf("key %s has no connections", k.ShortString()))
			continue
		}
		if ks.active == nil || !slices.Contains(ks.conns, ks.active) {
			problems = append(problems, fmt.Sprintf("key %s has no valid active connection", k.ShortString()))
			continue
		}
		route := r.sys.Routes.Lookup(k)
		if route == nil || route.Local != ks.active.conn.Sink {
			problems = append(problems, fmt.Sprintf("key %s: route does not point at its active connection", k.ShortString()))
		}
		for _, cs := range ks.conns {
			if r.conns[cs.conn] != cs {
				problems = append(problems, fmt.Sprintf("conn %d of key %s is not registered", cs.conn.ID, k.ShortString()))
			}
			// Only the registry raises the flag and it never raises it on
			// the active connection. (A raised flag may be cleared by the
			// reader before its Activity message arrives, so a lowered flag
			// on an inactive duplicate is not a fault.)
			if cs == ks.active && cs.conn.NoteActivity.Load() {
				problems = append(problems, fmt.Sprintf("conn %d of key %s is active but asked to report activity", cs.conn.ID, k.ShortString()))
			}
		}
	}
	r.sys.Routes.Range(func(route *actors.Route) bool {
		if route.Local != nil {
			if _, ok := r.keys[route.Key]; !ok {
				problems = append(problems, fmt.Sprintf("route for %s points at a connection the registry does not have", route.Key.ShortString()))
			}
		}
		return true
	})
	n, dupKeys, dupConns := 0, 0, 0
	for _, ks := range r.keys {
		n += len(ks.conns)
		if len(ks.conns) > 1 {
			dupKeys++
			dupConns += len(ks.conns)
		}
	}
	if n != len(r.conns) {
		problems = append(problems, fmt.Sprintf("%d connections by key but %d registered", n, len(r.conns)))
	}
	for c, cs := range r.conns {
		if ks := r.keys[c.Key]; ks == nil || !slices.Contains(ks.conns, cs) {
			problems = append(problems, fmt.Sprintf("conn %d is registered but not listed under key %s", c.ID, c.Key.ShortString()))
		} else if cs.key != ks {
			problems = append(problems, fmt.Sprintf("conn %d points at another key's state", c.ID))
		}
	}
	for w := range r.watchers {
		if _, ok := r.conns[w]; !ok {
			problems = append(problems, fmt.Sprintf("watcher conn %d is not registered", w.ID))
		}
	}

	// recipients and the heardFrom sets are two indexes of one relation,
	// "this connection was sent a packet from that key": each must hold
	// exactly what the other does, or a PeerGone goes missing or goes to
	// a connection that never heard from the peer.
	for src, set := range r.recipients {
		if len(set) == 0 {
			problems = append(problems, fmt.Sprintf("key %s has an empty recipients set", src.ShortString()))
		}
		for c := range set {
			cs := r.conns[c]
			if cs == nil {
				problems = append(problems, fmt.Sprintf("conn %d is a recipient of %s but not registered", c.ID, src.ShortString()))
				continue
			}
			if _, ok := cs.heardFrom[src]; !ok {
				problems = append(problems, fmt.Sprintf("conn %d is a recipient of %s but did not hear from it", c.ID, src.ShortString()))
			}
		}
	}
	for c, cs := range r.conns {
		for src := range cs.heardFrom {
			if _, ok := r.recipients[src][c]; !ok {
				problems = append(problems, fmt.Sprintf("conn %d heard from %s but is not among its recipients", c.ID, src.ShortString()))
			}
		}
	}

	problems = append(problems, r.checkMesh()...)

	// The gauges the registry alone keeps must match its maps.
	stats := r.sys.Stats
	for _, g := range []struct {
		name      string
		got, want int64
	}{
		{"clients_local", stats.ClientsLocal.Load(), int64(len(r.keys))},
		{"dup_client_keys", stats.DupClientKeys.Load(), int64(dupKeys)},
		{"dup_client_conns", stats.DupClientConns.Load(), int64(dupConns)},
		{"watchers", stats.Watchers.Load(), int64(len(r.watchers))},
	} {
		if g.got != g.want {
			problems = append(problems, fmt.Sprintf("gauge %s is %d but the registry holds %d", g.name, g.got, g.want))
		}
	}
	// Found walking maps: sorted, so a failing simulation seed prints
	// the same report every time.
	slices.Sort(problems)
	return problems
}
