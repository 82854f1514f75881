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

// Delivered says Receiver was sent its first packet from Source. The
// registry remembers it so that Receiver hears PeerGone when Source leaves.
type Delivered struct {
	Receiver *Conn
	Source   wire.NodePublic
	// Forwarded: the packet came in from a mesh peer, so its source is
	// connected elsewhere in the region and being unknown here does not
	// mean it has left.
	Forwarded bool
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
type CloseConn struct{ Reason string }

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
}

// CloseAll asks the registry to close every registered connection, for a
// graceful shutdown.
type CloseAll struct{ Reason string }

// CheckConsistency asks the registry to cross-check its state against the
// RouteTable; it answers with a ConsistencyReport.
type CheckConsistency struct{}

// ConsistencyReport lists every disagreement found; empty means healthy.
type ConsistencyReport struct{ Problems []string }
