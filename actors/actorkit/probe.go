package actorkit

import (
	"sync"

	"github.com/asynkron/protoactor-go/actor"
	"github.com/derpd/derpd/actors"
	"github.com/derpd/derpd/wire"
)

// Probe is a connection at the message level: a registered actors.Conn
// whose client actor records every message the registry sends it, and
// whose packet sink records every packet routed to it. It has no socket
// and no goroutine.
type Probe struct {
	Conn *actors.Conn
	k    *Kit

	mu         sync.Mutex
	msgs       []any
	packets    []Packet
	registered int
}

// Packet is a packet a probe's sink (or a Forwarder) was handed.
type Packet struct {
	Src, Dst  wire.NodePublic // Dst: only for a forwarded packet
	Payload   []byte
	Forwarded bool
}

// ProbeOption configures a probe.
type ProbeOption func(*actors.Conn)

// AsMeshPeer makes the probe a connection that presented the mesh key.
func AsMeshPeer() ProbeOption {
	return func(c *actors.Conn) { c.CanMesh, c.Flags = true, wire.PeerPresentIsMeshPeer }
}

// NewProbe makes a probe for key without registering it.
func (k *Kit) NewProbe(key wire.NodePublic, opts ...ProbeOption) *Probe {
	p := &Probe{k: k}
	id := k.Sys.NextConnID()
	p.Conn = &actors.Conn{ID: id, Key: key, Sink: (*probeSink)(p), Addr: addr(id), Flags: wire.PeerPresentIsRegular, Since: k.Clock.Now()}
	for _, o := range opts {
		o(p.Conn)
	}
	props, mbox := k.Sys.Props(actors.ActorClient, func() actor.Actor { return (*probeActor)(p) })
	p.Conn.Mailbox = mbox
	p.Conn.PID = k.Sys.Root.Spawn(props)
	return p
}

// Connect makes a probe for key, registers it and settles.
func (k *Kit) Connect(key wire.NodePublic, opts ...ProbeOption) *Probe {
	p := k.NewProbe(key, opts...)
	k.Send(k.Sys.Registry, &actors.Register{Conn: p.Conn})
	return p
}

// Disconnect unregisters the probe, as its reader ending would, stops its
// actor and settles.
func (p *Probe) Disconnect() {
	p.k.Sys.Send(p.k.Sys.Registry, &actors.Unregister{Conn: p.Conn})
	p.k.Sys.Root.Stop(p.Conn.PID)
	p.k.Settle()
}

// Speak says the probe sent a frame: if the registry flagged it as an
// idle duplicate (NoteActivity), it claims its key's packets, as a real
// reader does.
func (p *Probe) Speak() {
	if p.Conn.NoteActivity.CompareAndSwap(true, false) {
		p.k.Send(p.k.Sys.Registry, &actors.Activity{Conn: p.Conn})
	}
}

// Delivered tells the registry the probe was written its first packet
// from each of srcs, as a real outbox does, and settles.
func (p *Probe) Delivered(srcs ...wire.NodePublic) {
	m := &actors.Delivered{Receiver: p.Conn}
	for _, s := range srcs {
		m.Sources = append(m.Sources, actors.DeliveredSource{Source: s})
	}
	p.k.Send(p.k.Sys.Registry, m)
}

// Watch sends WatchConns for the probe (a mesh peer) and settles.
func (p *Probe) Watch() { p.k.Send(p.k.Sys.Registry, &actors.WatchConns{Conn: p.Conn}) }

// Take returns the messages the probe's actor received since the last
// Take (lifecycle messages and Registered left out), in order.
func (p *Probe) Take() []any {
	p.mu.Lock()
	defer p.mu.Unlock()
	m := p.msgs
	p.msgs = nil
	return m
}

// TakePackets returns the packets routed to the probe since the last call.
func (p *Probe) TakePackets() []Packet {
	p.mu.Lock()
	defer p.mu.Unlock()
	m := p.packets
	p.packets = nil
	return m
}

// Registered reports how many Registered confirmations the probe had.
func (p *Probe) Registered() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.registered
}

// Relay hands a packet from src to whatever the routing table says for
// dst, as a reader does, and reports whether there was a route. The kit's
// own sinks and forwarders record it.
func (k *Kit) Relay(src, dst wire.NodePublic, payload []byte) bool {
	rt := k.Sys.Routes.Lookup(dst)
	if rt == nil {
		return false
	}
	pk := wire.NewPacket(len(payload))
	copy(pk.Payload(), payload)
	pk.SetSource(src)
	switch {
	case rt.Local != nil:
		rt.Local.SendPacket(pk, nil)
	case rt.Forward != nil:
		rt.Forward.ForwardPacket(dst, pk, nil)
	default:
		pk.Release()
		return false
	}
	return true
}

type probeActor Probe

func (a *probeActor) Receive(ctx actor.Context) {
	p := (*Probe)(a)
	switch m := ctx.Message().(type) {
	case actor.SystemMessage, actor.AutoReceiveMessage:
		return
	case *actors.Registered:
		p.mu.Lock()
		p.registered++
		p.mu.Unlock()
	default:
		p.mu.Lock()
		p.msgs = append(p.msgs, m)
		p.mu.Unlock()
	}
}

type probeSink Probe

var _ actors.PacketSink = (*probeSink)(nil)

// SendPacket implements actors.PacketSink.
func (s *probeSink) SendPacket(pk *wire.Packet, _ *actors.Waiter) {
	p := (*Probe)(s)
	p.mu.Lock()
	p.packets = append(p.packets, Packet{Src: pk.Source(), Payload: append([]byte(nil), pk.Payload()...), Forwarded: pk.Forwarded})
	p.mu.Unlock()
	pk.Release()
}

// Forwarder is a mesh link session as the registry sees it: announced with
// LinkUp, fed the peer's PeerPresent and PeerGone with Announce and
// Withdraw, ended with Down. Packets routed to it are recorded.
type Forwarder struct {
	ID   uint64
	Peer string          // the link's name
	Key  wire.NodePublic // the peer server's
	k    *Kit

	mu      sync.Mutex
	packets []Packet
}

// LinkUp tells the registry a mesh link session to the peer called name
// is up, and settles.
func (k *Kit) LinkUp(name string, peerKey wire.NodePublic) *Forwarder {
	f := &Forwarder{ID: k.Sys.NextConnID(), Peer: name, Key: peerKey, k: k}
	k.Send(k.Sys.Registry, &actors.MeshLinkUp{Link: f.ID, Peer: name, PeerKey: peerKey, Forward: (*forwardSink)(f)})
	return f
}

// Announce tells the registry the peer has keys connected (PeerPresent)
// and returns its answer.
func (f *Forwarder) Announce(keys ...wire.NodePublic) *actors.MeshUpdateApplied {
	return f.update(true, keys)
}

// Withdraw tells the registry keys left the peer (PeerGone).
func (f *Forwarder) Withdraw(keys ...wire.NodePublic) *actors.MeshUpdateApplied {
	return f.update(false, keys)
}

func (f *Forwarder) update(present bool, keys []wire.NodePublic) *actors.MeshUpdateApplied {
	m := &actors.MeshUpdate{Link: f.ID}
	for _, key := range keys {
		m.Updates = append(m.Updates, actors.MeshPeerUpdate{Key: key, Present: present})
	}
	return f.k.Ask(f.k.Sys.Registry, m).(*actors.MeshUpdateApplied)
}

// Down tells the registry the session ended (the link was lost), and
// settles.
func (f *Forwarder) Down() { f.k.Send(f.k.Sys.Registry, &actors.MeshLinkDown{Link: f.ID}) }

// TakePackets returns the packets forwarded through the session since the
// last call.
func (f *Forwarder) TakePackets() []Packet {
	f.mu.Lock()
	defer f.mu.Unlock()
	m := f.packets
	f.packets = nil
	return m
}

type forwardSink Forwarder

func (s *forwardSink) ForwardPacket(dst wire.NodePublic, pk *wire.Packet, _ *actors.Waiter) {
	f := (*Forwarder)(s)
	f.mu.Lock()
	f.packets = append(f.packets, Packet{Src: pk.Source(), Dst: dst, Payload: append([]byte(nil), pk.Payload()...), Forwarded: true})
	f.mu.Unlock()
	pk.Release()
}

func (s *forwardSink) Name() string { return s.Peer }
