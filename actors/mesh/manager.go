package mesh

import (
	"cmp"
	"context"
	"errors"
	"net/netip"
	"slices"
	"time"

	"github.com/asynkron/protoactor-go/actor"
	"github.com/derpd/derpd/actors"
	"github.com/rs/zerolog"
)

// DefaultDNSInterval is how often -mesh-dns looks its name up again.
const DefaultDNSInterval = 30 * time.Second

// lookupTimeout bounds one lookup of the -mesh-dns name.
const lookupTimeout = 10 * time.Second

// Resolver looks a name up; *net.Resolver is one. Tests pass their own.
type Resolver interface {
	LookupNetIP(ctx context.Context, network, host string) ([]netip.Addr, error)
}

// DNS is a -mesh-dns membership: one link per address Name resolves to,
// each verified for TLSName and dialled at its address on Port.
type DNS struct {
	Name     string // looked up
	TLSName  string // verified in the peers' certificates; Name if empty
	Port     int
	Interval time.Duration // 0 means DefaultDNSInterval
	Resolver Resolver

	// syncLookup makes the manager ask Resolver on its own goroutine, so
	// that a test's answer arrives in the same step.
	syncLookup bool
}

// Messages of the manager.
type (
	// GetLinks asks the manager which links it runs; it answers Links.
	GetLinks struct{}
	// Links lists the links by name, and the state of the DNS lookup.
	Links struct {
		Links   []LinkRef
		DNS     *DNSState // nil without -mesh-dns
		Mailbox actors.MailboxCounts
	}
	// LinkRef names one link actor.
	LinkRef struct {
		Name string
		PID  *actor.PID
	}
	// DNSState is how the -mesh-dns lookup is doing.
	DNSState struct {
		Name        string
		Port        int
		Interval    time.Duration
		Answer      []netip.Addr // of the last successful lookup
		AnsweredAt  time.Time
		LastError   string
		LastErrorAt time.Time
	}

	resolveTick struct{}
	resolved    struct {
		addrs []netip.Addr
		err   error
	}
)

// manager is the mesh actor: it owns the set of links. Its children are
// the link actors, so stopping it stops them all, and with them every
// session and every forwarder they registered.
type manager struct {
	sys    *actors.System
	cfg    *Config
	static []Target
	dns    *DNS
	log    zerolog.Logger

	self     *actor.PID
	mbox     *actors.MailboxStats
	links    map[string]*linkEntry
	timer    actors.Timer
	state    DNSState
	failing  bool      // the last lookup failed
	warnedAt time.Time // of the last failed lookup logged as a warning
	// linksMade numbers the links spawned, each link's id in the journal
	// (-record).
	linksMade uint64
}

type linkEntry struct {
	t   Target
	pid *actor.PID
}

// SpawnManager starts the mesh actor with links to static, and to every
// address of dns when dns is not nil. It returns nil when there is
// nothing to mesh with.
func SpawnManager(sys *actors.System, cfg *Config, static []Target, dns *DNS) *actor.PID {
	if len(static) == 0 && dns == nil {
		return nil
	}
	m := &manager{
		sys:    sys,
		cfg:    cfg,
		static: static,
		dns:    dns,
		log:    sys.Log.With().Str("actor", "mesh").Logger(),
		links:  make(map[string]*linkEntry),
	}
	if dns != nil {
		if dns.Interval <= 0 {
			dns.Interval = DefaultDNSInterval
		}
		if dns.TLSName == "" {
			dns.TLSName = dns.Name
		}
		m.state = DNSState{Name: dns.Name, Port: dns.Port, Interval: dns.Interval}
	}
	props, mbox := sys.Props(actors.ActorMesh, func() actor.Actor { return m })
	m.mbox = mbox
	pid, err := sys.Root.SpawnNamed(props, "mesh")
	if err != nil {
		panic("mesh: spawn: " + err.Error())
	}
	return pid
}

func (m *manager) Receive(ctx actor.Context) {
	switch msg := ctx.Message().(type) {
	case *actor.Started:
		m.self = ctx.Self()
		for _, t := range m.static { // in the order the operator wrote them
			m.add(ctx, t)
		}
		if m.dns != nil {
			m.lookup()
		}
	case *resolveTick:
		m.lookup()
	case *resolved:
		m.apply(ctx, msg)
		self, sys := m.self, m.sys
		m.timer = m.sys.Clock.AfterFunc(m.dns.Interval, func() { sys.Send(self, &resolveTick{}) })
	case *GetLinks:
		ctx.Respond(m.list())
	case *actor.Stopping:
		if m.timer != nil {
			m.timer.Stop()
		}
	}
}

// Recover implements actors.Recoverer: the set of links is rebuilt from
// the configuration. Every link is stopped (its session ends, its keys
// leave the forwarder table), the static entries are linked anew and the
// DNS name is looked up again at once. The region sees each link blink.
func (m *manager) Recover(ctx actor.Context, reason any) {
	for _, c := range ctx.Children() {
		ctx.Stop(c)
	}
	if m.timer != nil {
		m.timer.Stop()
		m.timer = nil
	}
	m.links = make(map[string]*linkEntry)
	m.failing = false
	for _, t := range m.static {
		m.add(ctx, t)
	}
	if m.dns != nil {
		m.lookup()
	}
	m.log.Error().Int("links", len(m.links)).Msg("mesh links rebuilt from the configuration after a panic")
}

func (m *manager) add(ctx actor.Context, t Target) {
	if _, ok := m.links[t.Name]; ok {
		return
	}
	sys, cfg := m.sys, m.cfg
	// The link reports its mailbox's counts with its state; the producer
	// runs at spawn, after Props has made them.
	var mbox *actors.MailboxStats
	var props *actor.Props
	m.linksMade++
	props, mbox = sys.PropsFor(actors.ActorMeshLink, m.linksMade, func() actor.Actor {
		l := newLink(sys, cfg, t)
		l.mbox = mbox
		return l
	})
	pid := ctx.SpawnPrefix(props, "mesh-link")
	m.links[t.Name] = &linkEntry{t: t, pid: pid}
}

// lookup resolves the -mesh-dns name on a goroutine of its own.
func (m *manager) lookup() {
	self, sys, dns := m.self, m.sys, m.dns
	ask := func() {
		ctx, cancel := context.WithTimeout(context.Background(), lookupTimeout)
		addrs, err := dns.Resolver.LookupNetIP(ctx, "ip", dns.Name)
		cancel()
		sys.Send(self, &resolved{addrs: addrs, err: err})
	}
	if dns.syncLookup {
		ask()
		return
	}
	go ask()
}

// apply makes the DNS links match an answer: one per address, added and
// removed in address order. A failed lookup or an empty answer changes
// nothing: a region must not tear itself apart over a DNS outage.
func (m *manager) apply(ctx actor.Context, r *resolved) {
	now := m.sys.Clock.Now()
	if r.err == nil && len(r.addrs) == 0 {
		r.err = errNoAddresses
	}
	if r.err != nil {
		// A name that stays broken fails every interval: say so when the
		// reason changes, and once a minute while it does not.
		ev := m.log.Debug()
		if msg := r.err.Error(); !m.failing || msg != m.state.LastError || now.Sub(m.warnedAt) >= time.Minute {
			ev, m.warnedAt = m.log.Warn(), now
		}
		m.failing = true
		m.state.LastError, m.state.LastErrorAt = r.err.Error(), now
		ev.Err(r.err).Str("name", m.dns.Name).Int("links", len(m.links)).
			Msg("mesh DNS lookup failed; keeping the links we have")
		return
	}
	if m.failing {
		m.failing = false
		m.log.Info().Str("name", m.dns.Name).Msg("mesh DNS lookup answers again")
	}
	var addrs []netip.Addr
	for _, a := range r.addrs {
		addrs = append(addrs, a.Unmap())
	}
	slices.SortFunc(addrs, func(a, b netip.Addr) int { return a.Compare(b) })
	addrs = slices.Compact(addrs)
	m.state.Answer, m.state.AnsweredAt = addrs, now

	want := map[string]Target{}
	for _, a := range addrs {
		t := m.dns.target(a)
		want[t.Name] = t
	}
	for _, name := range m.sortedNames() {
		e := m.links[name]
		if _, keep := want[name]; keep || !e.t.FromDNS {
			continue
		}
		m.log.Info().Str("peer", name).Msg("mesh peer left the DNS answer; removing its link")
		ctx.Stop(e.pid)
		delete(m.links, name)
	}
	for _, a := range addrs {
		t := m.dns.target(a)
		if _, ok := m.links[t.Name]; ok {
			continue
		}
		m.log.Info().Str("peer", t.Name).Msg("mesh peer found by DNS; linking to it")
		m.add(ctx, t)
	}
}

func (m *manager) sortedNames() []string {
	names := make([]string, 0, len(m.links))
	for n := range m.links {
		names = append(names, n)
	}
	slices.Sort(names)
	return names
}

func (m *manager) list() *Links {
	out := &Links{Mailbox: m.mbox.CountsInHandler()}
	for _, name := range m.sortedNames() {
		out.Links = append(out.Links, LinkRef{Name: name, PID: m.links[name].pid})
	}
	slices.SortFunc(out.Links, func(a, b LinkRef) int { return cmp.Compare(a.Name, b.Name) })
	if m.dns != nil {
		st := m.state
		st.Answer = slices.Clone(st.Answer)
		out.DNS = &st
	}
	return out
}

// errNoAddresses is a lookup that answered nothing.
var errNoAddresses = errors.New("the name has no addresses")
