// Package actorkit runs derpd's actors for deterministic tests: the
// registry, flows, client and mesh actors on a stepped system
// (actors.StepDispatcher and actors.FakeClock), with connections that are
// either probes (a fake client actor and packet sink that record what
// they are sent: no goroutines at all) or real client connections served
// by client.Serve over an in-memory pipe, whose frames the test writes
// and reads with the wire package. Several nodes of a region (Node) share
// one dispatcher and clock, and real mesh links join them (MeshWith).
// Nothing sleeps and nothing opens a socket.
//
// A test starts with New (message level: probes, forwarders, the
// registry, flows) or Run (also real connections: Dial), feeds messages
// and frames, calls Settle to let every actor and goroutine run until
// nothing moves, and asserts on what was produced. Advance moves the fake
// clock, firing due timers (keepalives, sweeps, stall detection), then
// settles.
//
// Delivery order is the order messages were scheduled, or, with Seed, an
// order drawn from the seed (actors.NewShuffledStepDispatcher): the same
// seed gives the same run. Goroutines (a real connection's reader and
// writer, the kit's own frame readers and writers) run inside a
// testing/synctest bubble, so Settle can wait until every one of them is
// blocked, and their time (socket deadlines, bounded waits) is the
// bubble's, which moves only when the test lets it. Feed one client at a
// time and settle in between: two clients' frames sent in one step race
// each other as they would on a real server.
package actorkit

import (
	"fmt"
	"net/netip"
	"slices"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/asynkron/protoactor-go/actor"
	"github.com/derpd/derpd/actors"
	"github.com/derpd/derpd/actors/client"
	"github.com/derpd/derpd/actors/flows"
	"github.com/derpd/derpd/actors/registry"
	"github.com/derpd/derpd/wire"
	"github.com/rs/zerolog"
)

// Start is the fake clock's reading when a kit starts: any fixed instant
// will do, and a fixed one keeps runs identical.
var Start = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

// Kit is one stepped actor system with its registry.
type Kit struct {
	T     testing.TB
	Sys   *actors.System
	Disp  *actors.StepDispatcher
	Clock *actors.FakeClock
	// Server is the client connections' server configuration (its key,
	// the mesh key, queue depth, write timeout, keepalive).
	Server *client.Config

	bubble bool    // inside synctest: Settle waits for goroutines too
	name   string  // the node's TLS name, for mesh links to it
	region *region // what the nodes of one run share
}

// region is what every node of a run shares (see Node).
type region struct {
	mu    sync.Mutex
	addrs uint64      // addresses handed to real connections
	conns []*Client   // to close at the end of Run
	nodes int         // nodes started after the first
	pki   *pki        // made on the first mesh link
	links []*MeshLink // to cut at the end of Run
}

// Option configures a kit.
type Option func(*config)

type config struct {
	seed    *uint64
	sysOpts []actors.Option
	server  client.Config
	regOpts []registry.Option
	flows   *flows.Config
}

// Seed delivers messages in an order drawn from seed instead of the order
// they were scheduled.
func Seed(seed uint64) Option { return func(c *config) { c.seed = &seed } }

// WithSystemOptions passes options to actors.NewSystem (middleware, say).
func WithSystemOptions(opts ...actors.Option) Option {
	return func(c *config) { c.sysOpts = append(c.sysOpts, opts...) }
}

// WithServer sets the client connections' server configuration; a zero
// private key is filled in (the same on every run), and a zero mesh key
// with the kit's own.
func WithServer(cfg client.Config) Option { return func(c *config) { c.server = cfg } }

// WithRegistryOptions passes options to the registry.
func WithRegistryOptions(opts ...registry.Option) Option {
	return func(c *config) { c.regOpts = append(c.regOpts, opts...) }
}

// WithFlows spawns a flows actor with cfg (sys.Flows is set, so real
// connections count their flows).
func WithFlows(cfg flows.Config) Option { return func(c *config) { c.flows = &cfg } }

// New starts a kit for message-level tests: the registry (and flows, if
// asked) on a stepped system, with no goroutine of its own. Dial needs
// Run instead.
func New(t testing.TB, opts ...Option) *Kit {
	t.Helper()
	return newKit(t, nil, nil, &region{}, opts)
}

// testMeshKey is every kit's mesh key unless WithServer gives one: only
// connections that present it (mesh links) are privileged.
var testMeshKey = wire.MeshKey{'a', 'c', 't', 'o', 'r', 'k', 'i', 't'}

// newKit starts a node on d and clock, or on new ones when nil.
func newKit(t testing.TB, d *actors.StepDispatcher, clock *actors.FakeClock, r *region, opts []Option) *Kit {
	var c config
	for _, o := range opts {
		o(&c)
	}
	if d == nil {
		d = actors.NewStepDispatcher()
		if c.seed != nil {
			d = actors.NewShuffledStepDispatcher(*c.seed)
		}
	}
	if clock == nil {
		clock = actors.NewFakeClock(Start)
	}
	sys := actors.NewSystem(zerolog.Nop(), append([]actors.Option{actors.WithDispatcher(d), actors.WithClock(clock)}, c.sysOpts...)...)
	server := c.server
	if server.PrivateKey.IsZero() {
		server.PrivateKey = PrivateKey(1 << 63)
	}
	server.PublicKey = server.PrivateKey.Public()
	if server.MeshKey.IsZero() {
		server.MeshKey = testMeshKey
	}
	k := &Kit{T: t, Sys: sys, Disp: d, Clock: clock, Server: &server, name: "node0.test", region: r}
	registry.Spawn(sys, server.PublicKey, c.regOpts...)
	if c.flows != nil {
		flows.Spawn(sys, *c.flows)
	}
	k.Settle()
	return k
}

// Run runs f with a kit inside a testing/synctest bubble, where real
// connections (Dial) may be made: their goroutines are the bubble's, so
// Settle waits for them as for actors. Every connection still open when f
// returns is closed and its actors allowed to finish.
func Run(t *testing.T, f func(k *Kit), opts ...Option) {
	t.Helper()
	synctest.Test(t, func(t *testing.T) {
		k := New(t, opts...)
		k.bubble = true
		defer k.shutdown()
		f(k)
	})
}

func (k *Kit) shutdown() {
	r := k.region
	r.mu.Lock()
	conns, links := slices.Clone(r.conns), slices.Clone(r.links)
	r.mu.Unlock()
	for _, l := range links {
		l.Refuse(true)
		l.cut()
	}
	for _, c := range conns {
		c.hangUp()
		c.Resume()
	}
	k.Settle()
	// protoactor counts dead letters (a message to a connection that just
	// closed) on a goroutine that waits out a ticker: let the bubble's
	// virtual time run on so that it ends before the bubble does.
	time.Sleep(k.Sys.Actors.Config.DeadLetterThrottleInterval + time.Second)
	k.Settle()
}

// Settle runs every actor until no work is scheduled and, inside Run,
// until every goroutine of the bubble is blocked too, and reports how
// many mailbox runs it took.
func (k *Kit) Settle() int {
	n := 0
	for {
		if k.bubble {
			synctest.Wait()
		}
		m := k.Disp.RunUntilIdle()
		n += m
		if m == 0 {
			return n
		}
	}
}

// Advance moves the fake clock by d, one due timer at a time: the clock
// stops at each timer's instant, the timer fires, and everything settles
// before the clock moves on, so that what a timer sets off (a writer
// goroutine re-arming a keepalive, say) reads the time it fired at.
func (k *Kit) Advance(d time.Duration) {
	k.Settle()
	end := k.Clock.Now().Add(d)
	for {
		next, ok := k.Clock.NextIn()
		left := end.Sub(k.Clock.Now())
		if !ok || next > left {
			k.Clock.Advance(left)
			k.Settle()
			return
		}
		k.Clock.Advance(max(next, 0))
		k.Settle()
	}
}

// Send delivers msg to pid and settles.
func (k *Kit) Send(pid *actor.PID, msg any) {
	k.Sys.Send(pid, msg)
	k.Settle()
}

// Ask sends msg to pid as a request, settles, and returns the answer.
func (k *Kit) Ask(pid *actor.PID, msg any) any {
	k.T.Helper()
	f := k.Sys.Root.RequestFuture(pid, msg, time.Hour)
	k.Settle()
	res, err := f.Result()
	if err != nil {
		k.T.Fatalf("actorkit: asking %v for %T: %v", pid, msg, err)
	}
	return res
}

// RegistryState is the registry's GetRegistryState answer.
func (k *Kit) RegistryState() *actors.RegistryState {
	return k.Ask(k.Sys.Registry, &actors.GetRegistryState{}).(*actors.RegistryState)
}

// Peer is the registry's GetPeer answer for key.
func (k *Kit) Peer(key wire.NodePublic) *actors.Peer {
	return k.Ask(k.Sys.Registry, &actors.GetPeer{Key: key}).(*actors.Peer)
}

// Check asks the registry for its consistency report and fails the test
// on any problem.
func (k *Kit) Check() {
	k.T.Helper()
	rep := k.Ask(k.Sys.Registry, &actors.CheckConsistency{}).(*actors.ConsistencyReport)
	if len(rep.Problems) > 0 {
		k.T.Fatalf("actorkit: registry inconsistent: %v", rep.Problems)
	}
}

// Flows is the flows actor's GetFlows answer (WithFlows).
func (k *Kit) Flows() *actors.FlowsSnapshot {
	return k.Ask(k.Sys.Flows, &actors.GetFlows{}).(*actors.FlowsSnapshot)
}

// Route is the routing table's entry for key, nil for none.
func (k *Kit) Route(key wire.NodePublic) *actors.Route { return k.Sys.Routes.Lookup(key) }

// Key returns a node key made from n: distinct n give distinct keys, the
// same n the same key, and keys sort as their n do.
func Key(n uint64) wire.NodePublic {
	var k wire.NodePublic
	for i := range 8 {
		k[i] = byte(n >> (56 - 8*i))
	}
	k[31] = 1
	return k
}

// addr is a made-up client address for the n-th connection.
func addr(n uint64) netip.AddrPort {
	return netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, byte(n >> 16), byte(n >> 8), byte(n)}), 41641)
}

func (k *Kit) String() string { return fmt.Sprintf("actorkit.Kit(%d pending)", k.Disp.Pending()) }
