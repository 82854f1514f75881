// Package sim is a deterministic simulation of a whole region of derpd
// relays: two or three nodes, each a real registry on its own actor
// system, meshed together, with tens of simulated clients that connect,
// send bursts of packets to each other, stall, duplicate their
// connections and leave, while the seed injects faults (mesh links cut
// and restored, a node's registry restarting with empty tables, a whole
// node restarting). The run is a function of the seed alone: one
// scheduler picks which actor runs next, one fake clock is the only
// time, and invariants are checked after every step, so a failing seed
// is printed and reproduces exactly.
//
// What is real: the registry actor of every node, with its route table,
// its gauges and its panic recovery. What is simulated: the client
// connections (a client's reader is route below, the same decisions as
// client's reader.route; its outbox is conn.SendPacket, which records the
// packet and rings the registry's Delivered doorbell as the real outbox
// does), and the mesh links, which are modelled at the registry's
// boundary: a link session is a MeshLinkUp with a Forwarder that queues
// packets for the peer node's route table, a connection registered on the
// peer that sent WatchConns, and the peer's watcher updates turned into
// MeshUpdates, one batch at a time as the real link does. Driving the real
// mesh link would need its sockets and goroutines, and so its timing.
package sim

import (
	"encoding/binary"
	"fmt"
	"hash"
	"hash/fnv"
	"math/rand/v2"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/asynkron/protoactor-go/actor"
	"github.com/derpd/derpd/actors"
	"github.com/derpd/derpd/actors/actortest"
	"github.com/derpd/derpd/actors/registry"
	"github.com/derpd/derpd/wire"
	"github.com/rs/zerolog"
)

// Config sizes one run.
type Config struct {
	Seed    uint64
	Nodes   int // 2 or 3
	Clients int
	Steps   int // steps before the final drain
	// CheckEvery is how often (in steps) the run is brought to rest for
	// the checks that need it: registry consistency, live actors, PeerGone
	// owed, packets unaccounted.
	CheckEvery int
	// Trace, when set, is called with every line of the trace.
	Trace func(string)
}

// ConfigFor is the configuration the seed draws for itself: the seed
// decides the region's size too, so that a few hundred seeds cover small
// and large regions.
func ConfigFor(seed uint64) Config {
	r := rand.New(rand.NewPCG(seed, 0x51e0))
	return Config{
		Seed:       seed,
		Nodes:      2 + r.IntN(2),
		Clients:    20 + r.IntN(41),
		Steps:      800 + r.IntN(800),
		CheckEvery: 400,
	}
}

// Result is what a run did.
type Result struct {
	Seed                  uint64
	Nodes, Clients, Steps int
	Trace                 uint64 // hash of the whole trace: equal for equal runs
	Sent, Delivered       int64
	Dropped               map[string]int64
	PeerGone              int64
	Faults                map[string]int
	// Probation counts receivers that heard from a forwarded source the
	// registry did not know when it took the Delivered (the source had
	// just been withdrawn): the registry documents that such a receiver
	// gets no PeerGone, so those are not owed one.
	Probation int
}

func (r *Result) String() string {
	var drops []string
	for _, k := range sortedKeys(r.Dropped) {
		drops = append(drops, fmt.Sprintf("%s=%d", k, r.Dropped[k]))
	}
	var faults []string
	for _, k := range sortedKeys(r.Faults) {
		faults = append(faults, fmt.Sprintf("%s=%d", k, r.Faults[k]))
	}
	return fmt.Sprintf("seed %d: %d nodes, %d clients, %d steps, trace %016x: sent %d delivered %d dropped [%s] peergone %d probation %d faults [%s]",
		r.Seed, r.Nodes, r.Clients, r.Steps, r.Trace, r.Sent, r.Delivered, strings.Join(drops, " "), r.PeerGone, r.Probation, strings.Join(faults, " "))
}

// Failure is a broken invariant: where, and the trace leading to it.
type Failure struct {
	Seed    uint64
	Step    int
	Trace   uint64 // hash of the trace up to the failure
	Problem string
	Recent  []string // the last lines of the trace
}

func (f *Failure) Error() string {
	return fmt.Sprintf("sim: seed %d failed at step %d (trace %016x): %s\nlast steps:\n  %s\nrerun: go test ./actors/sim -run TestSim -seed=%d -v",
		f.Seed, f.Step, f.Trace, f.Problem, strings.Join(f.Recent, "\n  "), f.Seed)
}

const recentLines = 40

type sim struct {
	cfg   Config
	rng   *rand.Rand
	sched *scheduler
	clock *actors.FakeClock

	nodes   []*node
	links   []*link
	clients []*client

	nextConn, nextSession, nextPacket uint64
	step                              int
	tick                              uint64 // orders deliveries and PeerGones within a step

	trace  hash.Hash64
	buf    []byte
	recent []string
	fail   *Failure

	packets map[uint64]*packet
	res     Result
}

type node struct {
	idx  int
	name string
	key  wire.NodePublic
	sys  *actors.System
	reg  *actor.PID
	m    *model
	out  []*link // links from this node: it forwards through them
	open map[uint64]*conn
	gen  int // of its actor system: a node restart starts a new one
	// knownAt is the tick at which each key last came into the node's
	// region (its registry's view: connected here or announced).
	knownAt map[wire.NodePublic]uint64
}

type client struct {
	idx      int
	key      wire.NodePublic
	conns    []*conn // open, oldest first
	leftStep int     // when its last connection closed
}

// conn is one simulated connection on a node: a client's, or a mesh
// peer's link connection (cl nil). It is the connection's outbox (its
// Conn's Sink) and owns the actor standing in for its client actor.
type conn struct {
	s       *sim
	id      uint64
	node    *node
	cl      *client
	link    *link // for a link's connection: the link
	c       *actors.Conn
	pid     *actor.PID
	open    bool
	stalled bool

	// The outbox's Delivered bookkeeping, as client.Outbox keeps it.
	seen    map[wire.NodePublic]struct{}
	pending []actors.DeliveredSource

	heard map[wire.NodePublic]*heard
}

// heard is what one connection was written from one source.
type heard struct {
	lastDeliv, lastGone uint64 // ticks; 0: never
	lastDelivStep       int
	// probationAt: the tick at which the registry last took a Delivered
	// for this source while it did not know the source (a forwarded
	// packet whose source had been withdrawn, or not yet announced). The
	// registry documents (registry.delivered) that such a receiver may
	// never hear PeerGone, so none is owed until the next PeerGone.
	probationAt uint64
	// writtenWhileKnown: since the probation began, a packet from the
	// source was written while the registry knew the source (it came
	// into the region after the probation began). That makes a PeerGone
	// owed again: if the sweep had forgotten the receiver meanwhile, it
	// told the receiver's sink so (ForgetSource), and the packet was
	// reported.
	writtenWhileKnown bool
}

// link is one node's mesh link to another: from forwards packets to to
// and learns to's clients.
type link struct {
	s        *sim
	from, to *node
	pid      *actor.PID // the link's actor, on from
	session  uint64     // 0: down
	fwd      *forwarder
	peerConn *conn // the link's connection on to
	queue    []actors.MeshPeerUpdate
	awaiting bool // a MeshUpdate is with the registry
	inflight []*wire.Packet
	inDst    []wire.NodePublic
}

type packet struct {
	id       uint64
	src      *client
	dst      wire.NodePublic
	outcome  string
	viaLink  bool
	sentTick uint64
}

// Run runs one simulation and returns what it did, or the first broken
// invariant.
func Run(cfg Config) (*Result, error) {
	s := &sim{
		cfg:     cfg,
		rng:     rand.New(rand.NewPCG(cfg.Seed, 0xde7d)),
		clock:   actors.NewFakeClock(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)),
		trace:   fnv.New64a(),
		packets: make(map[uint64]*packet),
		res: Result{
			Seed: cfg.Seed, Nodes: cfg.Nodes, Clients: cfg.Clients, Steps: cfg.Steps,
			Dropped: make(map[string]int64), Faults: make(map[string]int),
		},
	}
	s.sched = newScheduler(rand.New(rand.NewPCG(cfg.Seed, 0x5c4e)))
	s.build()
	s.run()
	s.res.Trace = s.trace.Sum64()
	if s.fail != nil {
		s.res.Trace = s.fail.Trace
		return &s.res, s.fail
	}
	return &s.res, nil
}

func (s *sim) build() {
	for i := range s.cfg.Nodes {
		n := &node{idx: i, name: fmt.Sprintf("n%d", i)}
		n.key[0], n.key[1] = 'n', byte(i)
		s.startNode(n)
		s.nodes = append(s.nodes, n)
	}
	for _, a := range s.nodes {
		for _, b := range s.nodes {
			if a != b {
				l := &link{s: s, from: a, to: b}
				a.out = append(a.out, l)
				s.links = append(s.links, l)
			}
		}
	}
	for _, a := range s.nodes {
		s.spawnLinks(a)
	}
	for _, l := range s.links {
		s.linkUp(l)
	}
	for i := range s.cfg.Clients {
		c := &client{idx: i}
		c.key[0] = 'c'
		binary.BigEndian.PutUint32(c.key[1:], uint32(i))
		s.clients = append(s.clients, c)
	}
	// Most clients are online from the start.
	for range s.cfg.Clients {
		s.connect()
	}
}

// startNode gives n a fresh actor system and registry, with empty tables.
func (s *sim) startNode(n *node) {
	n.m, n.open, n.knownAt = newModel(), make(map[uint64]*conn), make(map[wire.NodePublic]uint64)
	n.gen++
	n.sys = actors.NewSystem(zerolog.Nop(),
		actors.WithDispatcher(s.sched.dispatcher(n.name+"/registry")),
		actors.WithClock(s.clock),
		actors.WithReceiverMiddleware(s.observe(n, n.gen)),
		actortest.WithBoom(),
	)
	n.reg = registry.Spawn(n.sys, n.key)
}

// spawnLinks starts the actors of n's links, on n's system.
func (s *sim) spawnLinks(n *node) {
	for _, l := range n.out {
		props, _ := n.sys.Props(actors.ActorMeshLink, func() actor.Actor { return &linkActor{l: l} })
		props.Configure(actor.WithDispatcher(s.sched.dispatcher(fmt.Sprintf("%s/link-%s", n.name, l.to.name))))
		l.pid = n.sys.Root.Spawn(props)
	}
}

// restartNode is a node's process ending and starting again: its
// connections and its links' connections on the peers end with it
// (the peers see their sockets close), the work its actors had left is
// gone, and it comes back with empty tables and its links down; they
// reconnect later, as the clients do.
func (s *sim) restartNode(n *node) {
	for _, id := range sortedIDs(n.open) {
		c := n.open[id]
		c.open = false
		if c.cl != nil {
			c.cl.conns = slices.DeleteFunc(c.cl.conns, func(x *conn) bool { return x == c })
			if len(c.cl.conns) == 0 {
				c.cl.leftStep = s.step
			}
		}
	}
	for _, l := range s.links {
		if l.session == 0 || (l.from != n && l.to != n) {
			continue
		}
		s.tracef("link %s->%s down with %s, session %d", l.from.name, l.to.name, n.name, l.session)
		if l.from != n {
			l.from.sys.Root.Send(l.from.reg, &actors.MeshLinkDown{Link: l.session})
		}
		if l.to != n {
			s.closeConn(l.peerConn)
		}
		s.dropInflight(l)
		l.session, l.fwd, l.peerConn = 0, nil, nil
		l.queue, l.awaiting = nil, false
	}
	s.sched.discard(n.name + "/")
	s.startNode(n)
	s.spawnLinks(n)
}

// observe is every node's receiver middleware: it writes each message an
// actor handles into the trace, and after each message the registry
// handles, brings the model along and checks the route table and the
// gauges against it.
func (s *sim) observe(n *node, gen int) actor.ReceiverMiddleware {
	return func(next actor.ReceiverFunc) actor.ReceiverFunc {
		return func(ctx actor.ReceiverContext, env *actor.MessageEnvelope) {
			if gen != n.gen {
				// An actor of a system the node restarted away from (a
				// timer it had set fired): it reaches nothing any more.
				next(ctx, env)
				return
			}
			self := ctx.Self()
			s.tracef("%s %s %s", n.name, self.Id, describe(env.Message))
			isReg := self.Equal(n.reg)
			if isReg {
				if _, boom := env.Message.(*actortest.Boom); boom {
					// The registry panics and recovers with empty tables
					// (the panic unwinds through here).
					n.m = newModel()
				}
			}
			next(ctx, env)
			if !isReg {
				return
			}
			if d, ok := env.Message.(*actors.Delivered); ok {
				s.deliveredTaken(n, d)
			}
			newKeys := s.arriving(n, env.Message)
			n.m.apply(env.Message, n.key)
			for _, k := range newKeys {
				if n.m.inRegion(k) {
					n.knownAt[k] = s.now()
				}
			}
			s.checkRoutes(n)
		}
	}
}

// arriving lists the keys msg may bring into n's region that are not in
// it yet.
func (s *sim) arriving(n *node, msg any) []wire.NodePublic {
	var out []wire.NodePublic
	switch m := msg.(type) {
	case *actors.Register:
		if !n.m.inRegion(m.Conn.Key) {
			out = append(out, m.Conn.Key)
		}
	case *actors.MeshUpdate:
		for _, u := range m.Updates {
			if u.Present && !n.m.inRegion(u.Key) {
				out = append(out, u.Key)
			}
		}
	}
	return out
}

// deliveredTaken notes, for the sources of a Delivered the registry just
// took, those it did not know: their receivers are on probation.
func (s *sim) deliveredTaken(n *node, d *actors.Delivered) {
	var c *conn
	if d.Receiver != nil {
		c = n.open[d.Receiver.ID]
	}
	if c == nil {
		return
	}
	for _, src := range d.Sources {
		if src.Forwarded && !n.m.inRegion(src.Source) {
			if h := c.heard[src.Source]; h != nil {
				h.probationAt, h.writtenWhileKnown = s.now(), false
				s.res.Probation++
			}
		}
	}
}

func (s *sim) now() uint64 { s.tick++; return s.tick }

func (s *sim) tracef(format string, args ...any) {
	s.buf = strconv.AppendInt(s.buf[:0], int64(s.step), 10)
	s.buf = append(s.buf, ' ')
	s.buf = fmt.Appendf(s.buf, format, args...)
	s.buf = append(s.buf, '\n')
	s.trace.Write(s.buf)
	line := string(s.buf[:len(s.buf)-1])
	if len(s.recent) == recentLines {
		copy(s.recent, s.recent[1:])
		s.recent = s.recent[:recentLines-1]
	}
	s.recent = append(s.recent, line)
	if s.cfg.Trace != nil {
		s.cfg.Trace(line)
	}
}

func (s *sim) failf(format string, args ...any) {
	if s.fail != nil {
		return
	}
	s.fail = &Failure{Seed: s.cfg.Seed, Step: s.step, Problem: fmt.Sprintf(format, args...)}
	s.fail.Trace = s.trace.Sum64()
	s.fail.Recent = slices.Clone(s.recent)
}

// run is the main loop: each step either runs one actor's mailbox or
// makes one thing happen in the world, as the seed says.
func (s *sim) run() {
	for s.step = 1; s.step <= s.cfg.Steps && s.fail == nil; s.step++ {
		if s.sched.pending() && s.rng.IntN(100) < 55 {
			s.actorStep()
		} else {
			s.event()
		}
		if s.fail == nil && s.cfg.CheckEvery > 0 && s.step%s.cfg.CheckEvery == 0 {
			s.settle()
			s.checkAtRest()
		}
	}
	if s.fail != nil {
		return
	}
	// The end: heal the region, let every timer due fire (the registry
	// forgets unknown sources after their probation) and check
	// everything once more.
	for _, l := range s.links {
		if l.session == 0 {
			s.linkUp(l)
		}
	}
	s.settle()
	s.clock.Advance(time.Minute)
	s.settle()
	s.checkAtRest()
}

func (s *sim) actorStep() {
	s.sched.step()
}

// settle runs the region until nothing moves: no actor has work and no
// packet is on a mesh link.
func (s *sim) settle() {
	for s.fail == nil {
		moved := false
		for s.sched.pending() && s.fail == nil {
			s.actorStep()
			moved = true
		}
		for _, l := range s.links {
			for len(l.inflight) > 0 && s.fail == nil {
				s.arrive(l)
				moved = true
			}
		}
		if !moved {
			return
		}
	}
}

// event is one thing happening outside the actors.
func (s *sim) event() {
	switch r := s.rng.IntN(1000); {
	case r < 420:
		s.burst()
	case r < 580:
		s.connect()
	case r < 640:
		if c := s.pickConn(); c != nil {
			s.fault("leave")
			s.tracef("leave c%d", c.id)
			s.closeConn(c)
		}
	case r < 830:
		s.arriveAny()
	case r < 860:
		if c := s.pickConn(); c != nil {
			c.stalled = !c.stalled
			s.fault("stall")
			s.tracef("stall c%d %v", c.id, c.stalled)
		}
	case r < 880:
		l := s.links[s.rng.IntN(len(s.links))]
		if l.session != 0 {
			s.fault("link_cut")
			s.tracef("cut %s->%s", l.from.name, l.to.name)
			s.linkDown(l)
		}
	case r < 930:
		var down []*link
		for _, l := range s.links {
			if l.session == 0 {
				down = append(down, l)
			}
		}
		if len(down) > 0 {
			l := down[s.rng.IntN(len(down))]
			s.fault("link_restore")
			s.tracef("restore %s->%s", l.from.name, l.to.name)
			s.linkUp(l)
		}
	case r < 934:
		n := s.nodes[s.rng.IntN(len(s.nodes))]
		s.fault("registry_restart")
		s.tracef("boom %s", n.name)
		n.sys.Root.Send(n.reg, &actortest.Boom{})
	case r < 937:
		n := s.nodes[s.rng.IntN(len(s.nodes))]
		s.fault("node_restart")
		s.tracef("restart %s", n.name)
		s.restartNode(n)
	default:
		d := time.Duration(1+s.rng.IntN(5000)) * time.Millisecond
		if s.rng.IntN(20) == 0 {
			d = 31 * time.Second // past the registry's probation of unknown sources
		}
		s.tracef("advance %v", d)
		s.clock.Advance(d)
	}
}

func (s *sim) fault(kind string) { s.res.Faults[kind]++ }

// pickConn returns a random open client connection, or nil.
func (s *sim) pickConn() *conn {
	var all []*conn
	for _, cl := range s.clients {
		all = append(all, cl.conns...)
	}
	if len(all) == 0 {
		return nil
	}
	return all[s.rng.IntN(len(all))]
}

// connect makes a client that is offline connect, or one that is online
// open a duplicate connection, on a node of the seed's choosing.
func (s *sim) connect() {
	cl := s.clients[s.rng.IntN(len(s.clients))]
	if len(cl.conns) > 0 && s.rng.IntN(4) != 0 {
		return // mostly, duplicates are rare
	}
	if len(cl.conns) > 0 {
		s.fault("duplicate")
	}
	n := s.nodes[s.rng.IntN(len(s.nodes))]
	c := s.newConn(n, cl.key, false)
	c.cl = cl
	cl.conns = append(cl.conns, c)
	s.tracef("connect c%d key %d on %s (%d conns)", c.id, cl.idx, n.name, len(cl.conns))
	n.sys.Root.Send(n.reg, &actors.Register{Conn: c.c})
}

func (s *sim) newConn(n *node, key wire.NodePublic, mesh bool) *conn {
	s.nextConn++
	c := &conn{s: s, id: s.nextConn, node: n, open: true, heard: make(map[wire.NodePublic]*heard)}
	c.c = &actors.Conn{ID: c.id, Key: key, Sink: c, CanMesh: mesh, Since: s.clock.Now()}
	props, mbox := n.sys.Props(actors.ActorClient, func() actor.Actor { return &connActor{c: c} })
	props.Configure(actor.WithDispatcher(s.sched.dispatcher(fmt.Sprintf("%s/c%05d", n.name, c.id))))
	c.c.Mailbox = mbox
	c.pid = n.sys.Root.Spawn(props)
	c.c.PID = c.pid
	n.open[c.id] = c
	return c
}

// closeConn ends a connection as the client's reader does when its
// socket ends: Unregister, and the client actor stops.
func (s *sim) closeConn(c *conn) {
	if !c.open {
		return
	}
	c.open = false
	delete(c.node.open, c.id)
	if c.cl != nil {
		c.cl.conns = slices.DeleteFunc(c.cl.conns, func(x *conn) bool { return x == c })
		if len(c.cl.conns) == 0 {
			c.cl.leftStep = s.step
		}
	}
	c.node.sys.Root.Send(c.node.reg, &actors.Unregister{Conn: c.c})
	c.node.sys.Root.Stop(c.pid)
}

// burst makes one client send a few packets to one key (online or not);
// sometimes the receiver or the sender leaves in the middle.
func (s *sim) burst() {
	from := s.pickConn()
	if from == nil {
		return
	}
	// Mostly to a key that is online somewhere, sometimes to any.
	dst := s.clients[s.rng.IntN(len(s.clients))]
	if other := s.pickConn(); other != nil && s.rng.IntN(8) != 0 {
		dst = other.cl
	}
	n := 1 + s.rng.IntN(4)
	leaveAt, leaver := -1, (*conn)(nil)
	if s.rng.IntN(10) == 0 {
		leaveAt = s.rng.IntN(n)
		if s.rng.IntN(2) == 0 {
			leaver = from
		} else if len(dst.conns) > 0 {
			leaver = dst.conns[s.rng.IntN(len(dst.conns))]
		}
	}
	s.tracef("burst c%d -> key %d x%d", from.id, dst.idx, n)
	for i := range n {
		if i == leaveAt && leaver != nil {
			s.fault("leave_mid_burst")
			s.tracef("leave mid-burst c%d", leaver.id)
			s.closeConn(leaver)
		}
		if !from.open || s.fail != nil {
			return
		}
		s.send(from, dst.key)
	}
}

// send is the sender's reader handling one SendPacket frame.
func (s *sim) send(from *conn, dst wire.NodePublic) {
	if from.c.NoteActivity.CompareAndSwap(true, false) {
		// A duplicate that is not receiving just spoke: it claims the
		// key's packets (client's reader.claimReceiver, not waiting for
		// the answer, as in a duplicate fight).
		from.node.sys.Root.Send(from.node.reg, &actors.Activity{Conn: from.c})
	}
	s.nextPacket++
	pk := &packet{id: s.nextPacket, src: from.cl, dst: dst, sentTick: s.now()}
	s.packets[pk.id] = pk
	s.res.Sent++
	p := wire.NewPacket(8 + s.rng.IntN(24))
	binary.BigEndian.PutUint64(p.Payload(), pk.id)
	p.SetSource(from.cl.key)
	s.route(from.node, dst, p, false)
}

func (s *sim) packetOf(p *wire.Packet) *packet {
	return s.packets[binary.BigEndian.Uint64(p.Payload())]
}

// route is client's reader.route: the destination's local connection if
// it has one here, else the mesh link that announces it (a packet a mesh
// peer forwarded is never forwarded again), else a drop. Before it acts,
// the route must be the one the model says.
func (s *sim) route(n *node, dst wire.NodePublic, p *wire.Packet, forwarded bool) {
	rt := n.sys.Routes.Lookup(dst)
	s.checkRoute(n, dst, rt)
	if rt != nil {
		if rt.Local != nil {
			rt.Local.SendPacket(p, nil)
			return
		}
		if rt.Forward != nil && !forwarded {
			rt.Forward.ForwardPacket(dst, p, nil)
			return
		}
	}
	reason := actors.DropUnknownDest
	if forwarded {
		reason = actors.DropUnknownDestOnFwd
	}
	n.sys.Stats.Drop(reason, actors.KindOf(p.IsDisco()), p.Len())
	s.outcome(s.packetOf(p), reason.String())
	p.Release()
}

// outcome records what became of a packet: it has exactly one.
func (s *sim) outcome(pk *packet, what string) {
	if pk == nil {
		s.failf("a packet the simulation never sent reached an outcome (%s)", what)
		return
	}
	if pk.outcome != "" {
		s.failf("packet %d from key %d had two outcomes: %s, then %s", pk.id, pk.src.idx, pk.outcome, what)
		return
	}
	pk.outcome = what
	if what == "delivered" {
		s.res.Delivered++
	} else {
		s.res.Dropped[what]++
	}
}

// SendPacket implements actors.PacketSink: the connection's outbox. A
// closed connection drops (its queue died with it), a stalled one drops
// (its queue is full), anything else is written at once.
func (c *conn) SendPacket(p *wire.Packet, _ *actors.Waiter) {
	s := c.s
	pk := s.packetOf(p)
	defer p.Release()
	switch {
	case !c.open:
		c.node.sys.Stats.DropFor(c.c, actors.DropGoneDisconnected, actors.KindOf(p.IsDisco()), p.Len())
		s.outcome(pk, actors.DropGoneDisconnected.String())
		return
	case c.stalled:
		c.node.sys.Stats.DropFor(c.c, actors.DropQueueTail, actors.KindOf(p.IsDisco()), p.Len())
		s.outcome(pk, "stalled_receiver")
		return
	}
	src := p.Source()
	switch {
	case pk == nil:
		s.failf("conn %d was written a packet the simulation never sent", c.id)
		return
	case c.cl == nil:
		s.failf("packet %d for %s reached a mesh link's connection c%d", pk.id, keyName(pk.dst), c.id)
		return
	case pk.dst != c.cl.key:
		s.failf("packet %d for %s reached c%d of key %d", pk.id, keyName(pk.dst), c.id, c.cl.idx)
		return
	case src != pk.src.key:
		s.failf("packet %d from key %d reached c%d stamped with source %s", pk.id, pk.src.idx, c.id, keyName(src))
		return
	case p.Forwarded != pk.viaLink:
		s.failf("packet %d reached c%d with Forwarded=%v, but it crossed a mesh link: %v", pk.id, c.id, p.Forwarded, pk.viaLink)
		return
	}
	s.outcome(pk, "delivered")
	s.tracef("write packet %d from key %d to c%d", pk.id, pk.src.idx, c.id)
	h := c.heard[src]
	if h == nil {
		h = &heard{}
		c.heard[src] = h
	}
	if h.probationAt > h.lastGone && c.node.knownAt[src] > h.probationAt && c.node.m.inRegion(src) {
		h.writtenWhileKnown = true
	}
	h.lastDeliv, h.lastDelivStep = s.now(), s.step
	c.noteSource(src, p.Forwarded)
}

// noteSource is client.Outbox's: the first packet from a source goes on
// the delivered list, and the registry's doorbell rings when the list
// was empty.
func (c *conn) noteSource(src wire.NodePublic, forwarded bool) {
	if _, ok := c.seen[src]; ok {
		return
	}
	if c.seen == nil {
		c.seen = make(map[wire.NodePublic]struct{})
	}
	c.seen[src] = struct{}{}
	c.pending = append(c.pending, actors.DeliveredSource{Source: src, Forwarded: forwarded})
	if len(c.pending) == 1 {
		c.node.sys.Root.Send(c.node.reg, &actors.Delivered{Receiver: c.c})
	}
}

// ForgetSource implements actors.SourceForgetter, as client.Outbox does:
// the source's next packet is reported again.
func (c *conn) ForgetSource(src wire.NodePublic) {
	c.s.tracef("c%d forgets having reported key %s", c.id, keyName(src))
	delete(c.seen, src)
}

// TakeDelivered implements actors.DeliveredTaker.
func (c *conn) TakeDelivered() []actors.DeliveredSource {
	taken := c.pending
	c.pending = nil
	return taken
}

// connActor stands in for a connection's client actor: it checks and
// records what the registry asks the connection to write.
type connActor struct{ c *conn }

func (a *connActor) Receive(ctx actor.Context) {
	c := a.c
	s := c.s
	switch m := ctx.Message().(type) {
	case *actors.SendPeerGone:
		s.peerGone(c, m)
	case *actors.SendPeerPresence:
		if c.link == nil {
			s.failf("client connection c%d was sent watcher updates", c.id)
			return
		}
		c.link.presence(c, m.Updates)
	case *actors.CloseConn:
		s.tracef("registry closes c%d: %s", c.id, m.Reason)
		if c.link != nil {
			if c.link.peerConn == c {
				s.linkDown(c.link)
			}
			return
		}
		s.closeConn(c)
	}
}

// peerGone checks a PeerGone against what the connection was written: it
// must have heard from the key since its last PeerGone for it.
func (s *sim) peerGone(c *conn, m *actors.SendPeerGone) {
	if !c.open {
		return // written to a closed socket: nobody reads it
	}
	if m.Reason != wire.PeerGoneDisconnected {
		s.failf("c%d was sent PeerGone with reason %v, which the registry never sends", c.id, m.Reason)
		return
	}
	h := c.heard[m.Peer]
	if h == nil || h.lastDeliv <= h.lastGone {
		s.failf("c%d was sent PeerGone(%s) but heard nothing from it since its last PeerGone", c.id, keyName(m.Peer))
		return
	}
	h.lastGone, h.writtenWhileKnown = s.now(), false
	s.res.PeerGone++
	// The outbox forgets the source when it writes PeerGone: a later
	// packet from it starts a new relationship.
	delete(c.seen, m.Peer)
}

// Mesh links.

// linkActor is a link's actor: it hands the peer's updates to its
// registry one batch at a time, the next only once the registry has
// answered the last, as mesh's link actor does.
type linkActor struct{ l *link }

// linkUpdates carries a batch of the peer's announcements to the link.
type linkUpdates struct {
	session uint64
	updates []actors.MeshPeerUpdate
}

func (a *linkActor) Receive(ctx actor.Context) {
	l := a.l
	switch m := ctx.Message().(type) {
	case *linkUpdates:
		if m.session == l.session {
			l.queue = append(l.queue, m.updates...)
			l.flush(ctx)
		}
	case *actors.MeshUpdateApplied:
		if m.Link != l.session {
			return
		}
		l.awaiting = false
		if m.Unknown {
			l.s.tracef("%s->%s: the registry lost session %d", l.from.name, l.to.name, m.Link)
			l.s.linkDown(l)
			return
		}
		l.flush(ctx)
	case *actors.RegistryRestarted:
		if l.session != 0 {
			l.s.linkDown(l)
		}
	}
}

func (l *link) flush(ctx actor.Context) {
	if l.awaiting || len(l.queue) == 0 {
		return
	}
	ctx.Request(l.from.reg, &actors.MeshUpdate{Link: l.session, Updates: l.queue})
	l.queue, l.awaiting = nil, true
}

// presence is the link's connection on the peer being sent watcher
// updates: they travel to the link.
func (l *link) presence(c *conn, updates []actors.PeerPresence) {
	if c != l.peerConn || !c.open {
		return
	}
	batch := make([]actors.MeshPeerUpdate, 0, len(updates))
	for _, u := range updates {
		batch = append(batch, actors.MeshPeerUpdate{Key: u.Peer, Present: u.Present})
	}
	l.from.sys.Root.Send(l.pid, &linkUpdates{session: l.session, updates: batch})
}

// forwarder is one link session's Forwarder: packets wait on the link
// until the simulation has them arrive at the peer.
type forwarder struct {
	l       *link
	session uint64
}

func (f *forwarder) ForwardPacket(dst wire.NodePublic, p *wire.Packet, _ *actors.Waiter) {
	l := f.l
	if l.session != f.session {
		// The session's outbox is closed; the registry has not taken
		// its MeshLinkDown yet.
		l.s.outcome(l.s.packetOf(p), "mesh_link_down")
		p.Release()
		return
	}
	l.inflight = append(l.inflight, p)
	l.inDst = append(l.inDst, dst)
}

func (f *forwarder) Name() string { return f.l.to.name }

func (s *sim) linkUp(l *link) {
	s.nextSession++
	l.session = s.nextSession
	l.fwd = &forwarder{l: l, session: l.session}
	s.tracef("link %s->%s up, session %d", l.from.name, l.to.name, l.session)
	l.from.sys.Root.Send(l.from.reg, &actors.MeshLinkUp{
		Link: l.session, Peer: l.to.name, PeerKey: l.to.key, Forward: l.fwd, Owner: l.pid,
	})
	pc := s.newConn(l.to, l.from.key, true)
	pc.link = l
	l.peerConn = pc
	l.to.sys.Root.Send(l.to.reg, &actors.Register{Conn: pc.c})
	l.to.sys.Root.Send(l.to.reg, &actors.WatchConns{Conn: pc.c})
}

// linkDown ends a link's session: its registry withdraws the peer's keys,
// its connection on the peer ends, and the packets on it are lost.
func (s *sim) linkDown(l *link) {
	if l.session == 0 {
		return
	}
	s.tracef("link %s->%s down, session %d", l.from.name, l.to.name, l.session)
	l.from.sys.Root.Send(l.from.reg, &actors.MeshLinkDown{Link: l.session})
	s.closeConn(l.peerConn)
	s.dropInflight(l)
	l.session, l.fwd, l.peerConn = 0, nil, nil
	l.queue, l.awaiting = nil, false
}

func (s *sim) dropInflight(l *link) {
	for _, p := range l.inflight {
		s.outcome(s.packetOf(p), "mesh_link_down")
		p.Release()
	}
	l.inflight, l.inDst = nil, nil
}

// arrive delivers the first packet on l at the peer: its reader of the
// link's connection routes it, as a ForwardPacket.
func (s *sim) arrive(l *link) {
	p, dst := l.inflight[0], l.inDst[0]
	l.inflight, l.inDst = l.inflight[1:], l.inDst[1:]
	if pk := s.packetOf(p); pk != nil {
		pk.viaLink = true
		s.tracef("arrive %s->%s packet %d", l.from.name, l.to.name, pk.id)
	}
	p.Forwarded = true
	s.route(l.to, dst, p, true)
}

func (s *sim) arriveAny() {
	var busy []*link
	for _, l := range s.links {
		if len(l.inflight) > 0 {
			busy = append(busy, l)
		}
	}
	if len(busy) > 0 {
		s.arrive(busy[s.rng.IntN(len(busy))])
	}
}

func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

// describe names a message for the trace, with the connection or session
// it is about.
func describe(msg any) string {
	switch m := msg.(type) {
	case *actors.Register:
		return fmt.Sprintf("Register c%d", m.Conn.ID)
	case *actors.Unregister:
		return fmt.Sprintf("Unregister c%d", m.Conn.ID)
	case *actors.Activity:
		return fmt.Sprintf("Activity c%d", m.Conn.ID)
	case *actors.WatchConns:
		return fmt.Sprintf("WatchConns c%d", m.Conn.ID)
	case *actors.Delivered:
		return fmt.Sprintf("Delivered c%d", m.Receiver.ID)
	case *actors.MeshLinkUp:
		return fmt.Sprintf("MeshLinkUp session %d", m.Link)
	case *actors.MeshLinkDown:
		return fmt.Sprintf("MeshLinkDown session %d", m.Link)
	case *actors.MeshUpdate:
		return fmt.Sprintf("MeshUpdate session %d, %d updates", m.Link, len(m.Updates))
	case *actors.SendPeerGone:
		return "SendPeerGone " + keyName(m.Peer)
	case *actors.SendPeerPresence:
		return fmt.Sprintf("SendPeerPresence %d updates", len(m.Updates))
	}
	return fmt.Sprintf("%T", msg)
}
