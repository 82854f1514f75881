package actors

import (
	"net/netip"
	"sync/atomic"
	"time"

	"github.com/asynkron/protoactor-go/actor"
	"github.com/derpd/derpd/wire"
)

// Conn is the registry's handle on one client connection. The fields above
// the line are fixed before the connection is registered; the atomic flag
// is the registry's one-bit channel back to the connection's reader.
type Conn struct {
	ID      uint64 // unique per process, for logs and debug views
	Key     wire.NodePublic
	PID     *actor.PID // the connection's client actor
	Sink    PacketSink // its outbox
	Addr    netip.AddrPort
	Flags   wire.PeerPresentFlags
	CanMesh bool // presented the mesh key
	Since   time.Time
	Mailbox *MailboxStats // of its client actor

	// ForwardedIn counts the ForwardPacket frames this connection (a mesh
	// peer's link to us) delivered; its reader adds to it in batches.
	ForwardedIn atomic.Int64

	// The connection's own counts, for the debug pages (/debug/traffic,
	// /debug/actors, /debug/peer): payload bytes and packets it sent us
	// (SendPacket; its reader adds them in batches) and we wrote to it
	// (its writer, per flush), how many distinct sources it was sent
	// packets from, the packets meant for it that were dropped, by
	// reason, and the client's home flag (its client actor keeps it).
	BytesRecv, PacketsRecv atomic.Int64
	BytesSent, PacketsSent atomic.Int64
	UniqueSenders          atomic.Int64
	Dropped                [numDropReasons]atomic.Int64
	Preferred              atomic.Bool

	// NoteActivity is set by the registry while this connection is one of
	// several for its key and is not the one receiving packets. The reader
	// checks it on every frame (one atomic load) and, when set, tells the
	// registry that this connection just spoke, which makes it the active
	// one: the last writer receives.
	NoteActivity atomic.Bool
}

// Messages to the registry.

// Register announces a connection that finished its handshake.
type Register struct{ Conn *Conn }

// Unregister announces a connection that ended.
type Unregister struct{ Conn *Conn }

// Activity says a non-active duplicate connection sent a frame.
type Activity struct{ Conn *Conn }

// WatchConns subscribes a mesh-key connection to connection changes.
type WatchConns struct{ Conn *Conn }

// ClosePeer asks (from a mesh-key connection) to close every local
// connection of Target.
type ClosePeer struct {
	From   *Conn
	Target wire.NodePublic
}

// Delivered says Receiver was written its first packets from the sources
// it lists, so that the registry can make Receiver hear PeerGone when one
// of them leaves. It is a doorbell, not one report per source: a
// connection's outbox collects first deliveries in a list of its own and
// sends a Delivered with no Sources only when that list was empty, so
// however fast packets from new sources come, one Delivered per receiver
// waits in the registry's mailbox. The registry calls Take, which moves
// the whole list into Sources (and so lets the next first delivery ring
// again).
//
// A sender may also fill Sources itself (a test, or a replay with no
// outbox behind Receiver); Take then leaves them as they are. Sources is
// plain values, so once Take has run the message is Receiver's connection
// id plus a list of keys and bits: a recorder of delivered messages calls
// Take before it encodes one.
//
// Delivered has a lower priority than every other message to the registry
// (GetPriority): it is bookkeeping for a later PeerGone, and must not
// delay registrations behind it. The reorderings that allows are handled
// in the registry (see registry.delivered).
type Delivered struct {
	Receiver *Conn
	Sources  []DeliveredSource
}

// DeliveredSource is one source of a Delivered.
type DeliveredSource struct {
	Source wire.NodePublic
	// Forwarded: the packet came in from a mesh peer, so its source is
	// connected elsewhere in the region and being unknown here does not
	// mean it has left.
	Forwarded bool
}

// DeliveredPriority is Delivered's place in a priority mailbox: below
// protoactor's default, which every other registry message has.
const DeliveredPriority = actor.DefaultPriority - 1

// GetPriority implements actor.PriorityMessage.
func (*Delivered) GetPriority() int8 { return DeliveredPriority }

// DeliveredTaker is a receiver's sink that keeps the first deliveries a
// Delivered rings for (the client outbox does).
type DeliveredTaker interface {
	// TakeDelivered returns every first delivery collected since the last
	// call, in the order written, and empties the list: the next one
	// rings the doorbell again. The caller owns the slice.
	TakeDelivered() []DeliveredSource
}

// SourceForgetter is a receiver's sink that can be told to forget having
// reported a source (the client outbox can): the registry no longer
// counts the receiver among the source's recipients although the source
// never left (the probation of an unknown forwarded source ran out, or
// there was no room to start one), so no PeerGone will come for what
// was written so far, and the source's next packet must be reported
// again. Without it the sink, which reports a source only the first
// time, would stay silent when the source later came into the region
// and wrote again, and the receiver would never hear it leave.
//
// The registry calls it directly, in its receive path, as it calls
// TakeDelivered, and not by a message to the receiver's client actor:
// that hop would leave a window in which the source could come into
// the region (the registry handling its Register or announcement next)
// and be written to the receiver, unreported. Safe from any goroutine.
type SourceForgetter interface {
	ForgetSource(src wire.NodePublic)
}

// Take fills Sources, unless the sender did, from Receiver's sink, and
// returns them. Only the registry's goroutine (or a recorder running in
// its receive path) calls it. Calling it twice is harmless: a second call
// that finds Sources still empty takes whatever was rung for since, and
// the Delivered rung for those then finds nothing.
func (m *Delivered) Take() []DeliveredSource {
	if len(m.Sources) == 0 && m.Receiver != nil {
		if t, ok := m.Receiver.Sink.(DeliveredTaker); ok {
			m.Sources = t.TakeDelivered()
		}
	}
	return m.Sources
}

// Messages to a client actor.

// SendPeerGone asks the connection to write a PeerGone frame.
type SendPeerGone struct {
	Peer   wire.NodePublic
	Reason wire.PeerGoneReason
}

// PeerPresence is one entry of a watcher update.
type PeerPresence struct {
	Peer    wire.NodePublic
	Present bool // false: the key's last local connection left
	Addr    netip.AddrPort
	Flags   wire.PeerPresentFlags
}

// SendPeerPresence asks a watcher connection to write PeerPresent or
// PeerGone frames, in order.
type SendPeerPresence struct{ Updates []PeerPresence }

// Registered tells a client actor that its connection is in the routing
// table: only now may it send ServerInfo, because a client that has seen
// ServerInfo tells its peers to send to it here.
type Registered struct{}

// CloseConn asks a client actor to close its connection.
type CloseConn struct {
	Reason string
	// Flush: close only once what is already queued for the connection
	// has been written (a Restarting frame before a graceful close);
	// packets queued meanwhile may go too. Otherwise the socket is closed
	// at once and whatever was queued is dropped.
	Flush bool
}

// SendRestarting asks the connection to write a Restarting frame: the
// server is going away, and the client may come back after ReconnectIn,
// trying for TryFor (both advisory).
type SendRestarting struct{ ReconnectIn, TryFor time.Duration }

// Mesh messages. A mesh link is this server's connection to one peer
// server of the region: it watches the peer's clients and forwards packets
// for them. Every connection a link makes is a session with an id of its
// own, so a late message about a session that has ended cannot touch the
// one after it.

// MeshLinkUp tells the registry that a link session is connected: packets
// for the keys it announces go through Forward.
type MeshLinkUp struct {
	Link    uint64          // session id, unique in the process
	Peer    string          // the link's name (its -mesh-with or -mesh-dns entry)
	PeerKey wire.NodePublic // the peer server's key
	Forward Forwarder
	Owner   *actor.PID // the link actor, told if the registry loses the session
}

// RegistryRestarted tells a mesh link that the registry recovered from a
// fault with empty tables: the link's session is unknown to it, so the
// link reconnects and announces its peer's keys afresh.
type RegistryRestarted struct{}

// MeshUpdate carries what a link session's peer announced, in the order
// it sent it. The link sends the next only once the registry has answered
// this one (MeshUpdateApplied), so a peer announcing keys faster than the
// registry takes them cannot fill the registry's mailbox.
type MeshUpdate struct {
	Link    uint64
	Updates []MeshPeerUpdate
}

// MeshPeerUpdate is one PeerPresent or PeerGone from a peer.
type MeshPeerUpdate struct {
	Key     wire.NodePublic
	Present bool // false: the key's last connection on the peer left
}

// MeshUpdateApplied is the registry's answer to a MeshUpdate.
type MeshUpdateApplied struct {
	Link    uint64
	Keys    int  // keys the session announces now
	Refused int  // announcements of new keys refused: the session is at its limit
	Unknown bool // the registry has no such session (it ended meanwhile)
}

// MeshLinkDown says a session ended: every key it announced is withdrawn
// at once, and receivers of keys that leave the region with it hear
// PeerGone.
type MeshLinkDown struct{ Link uint64 }

// Queries answered by actors for the debug views and tests. The actor
// replies to the sender of a RequestFuture.

// GetRegistryState asks the registry for a snapshot.
type GetRegistryState struct{}

// RegistryState is the registry's answer to GetRegistryState.
type RegistryState struct {
	Keys     int
	Conns    int
	Watchers int
	DupKeys  int
	Routes   int

	RemoteKeys   int // keys known only through mesh links
	MeshSessions int // mesh link sessions that are up
	MultiLinked  int // keys announced by more than one session

	Mailbox MailboxCounts // the registry's own
}

// GetConns asks the registry for every connection; it answers Conns.
// The answer is a list of handles, not a rendering: the registry spends a
// pointer copy per connection on it, and whoever asked reads the
// connections' own counters on its own time.
type GetConns struct{}

// Conns is the answer to GetConns, in no particular order.
type Conns struct{ List []ConnEntry }

// ConnEntry is one connection and what only the registry knows of it.
type ConnEntry struct {
	Conn     *Conn
	Active   bool // it receives its key's packets (false: an idle duplicate)
	Watching bool // it sent WatchConns
}

// GetPeer asks the registry what it knows of one key; it answers Peer.
type GetPeer struct{ Key wire.NodePublic }

// Peer is the answer to GetPeer.
type Peer struct {
	Key   wire.NodePublic
	Conns []ConnEntry // its local connections, oldest first
	// ForwardedBy names the mesh links that announce the key, the one
	// its packets go to first.
	ForwardedBy []string
	// HeardFrom is how many of this server's connections were sent
	// packets from the key (they will hear PeerGone when it leaves).
	HeardFrom int
}

// GetMeshConns asks the registry for the connections that presented the
// mesh key: the peers' links to this server.
type GetMeshConns struct{}

// MeshConns is the answer to GetMeshConns, in connection order.
type MeshConns struct{ Conns []MeshConnInfo }

// MeshConnInfo describes one connection that presented the mesh key.
type MeshConnInfo struct {
	ID          uint64
	Key         wire.NodePublic
	Addr        netip.AddrPort
	Since       time.Time
	Watching    bool  // it sent WatchConns
	ForwardedIn int64 // ForwardPacket frames it delivered
}

// CloseAll asks the registry to close every registered connection: the
// end of a shutdown. Flush as in CloseConn.
type CloseAll struct {
	Reason string
	Flush  bool
}

// RestartAll asks the registry to start a graceful shutdown: every
// registered connection is sent Restarting at once, then the client
// connections are closed one by one, in connection order, evenly over
// Spread, each after its Restarting frame is out, so that they do not all
// reconnect at the same instant. Connections that presented the mesh key
// are sent Restarting but left open, so that forwarding within the region
// keeps working while clients leave; a CloseAll ends them. Connections
// that register meanwhile are sent Restarting too. The registry answers
// the sender with RestartSpreadDone once every client connection it
// closed is gone, so the mesh peers have heard each departure.
type RestartAll struct {
	ReconnectIn, TryFor time.Duration // the Restarting frame's fields
	Spread              time.Duration // 0: close every client at once
	Reason              string        // for the connections' close log lines
}

// RestartSpreadDone is the answer to RestartAll.
type RestartSpreadDone struct {
	Closed int // client connections asked to close
	Mesh   int // mesh-key connections left open
}

// CheckConsistency asks the registry to cross-check its state against the
// RouteTable; it answers with a ConsistencyReport.
type CheckConsistency struct{}

// ConsistencyReport lists every disagreement found; empty means healthy.
type ConsistencyReport struct{ Problems []string }

// GetFlows asks the flows actor for the flows it tracks, busiest first;
// it answers FlowsSnapshot.
type GetFlows struct {
	Key   wire.NodePublic // non-zero: only flows from or to this key
	Limit int             // at most this many (0: all)
}

// FlowsSnapshot is the answer to GetFlows.
type FlowsSnapshot struct {
	Flows   []FlowInfo
	Tracked int   // flows tracked in all
	Evicted int64 // flows forgotten to stay within the bound
	Swept   int64 // flows forgotten for being inactive
	Tallies int   // connections whose flows are counted
	Window  time.Duration
	Mailbox MailboxCounts // the flows actor's own
}

// FlowInfo is one flow: totals since it was first seen, and its rates over
// the last Window.
type FlowInfo struct {
	Src, Dst   wire.NodePublic
	Via        string // the mesh peer it came from or went to; "" when local
	Bytes      int64
	Packets    int64
	BPS, PPS   float64
	First      time.Time
	LastActive time.Time
}
