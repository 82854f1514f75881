package actors

import (
	"fmt"
	"net/netip"
	"time"

	"github.com/derpd/derpd/wire"
)

// Rejections and drops, for /debug/rejects and /debug/peer: what the
// server refused or could not deliver, and to whom. Connection-level
// events (a handshake that failed, an admission denied) are sent to the
// rejects actor one by one, as they are rare; packet-level ones are
// tallied by the reader that meets them and sent in one batch when it
// next waits on its socket, so a flood of them costs a map update each,
// and the successful path costs nothing.

// RejectDirection says which way the refused thing was going.
type RejectDirection uint8

const (
	RejectConnection RejectDirection = iota // a connection coming in: handshake, admission, protocol
	RejectPacket                            // a packet coming in that could not be routed
	RejectDelivery                          // a packet going out that could not be delivered
	NumRejectDirections
)

var rejectDirectionNames = [NumRejectDirections]string{"inbound-connection", "inbound-packet", "outbound-delivery"}

func (d RejectDirection) String() string {
	if d < NumRejectDirections {
		return rejectDirectionNames[d]
	}
	return fmt.Sprintf("RejectDirection(%d)", d)
}

// RejectReason says why.
type RejectReason uint8

const (
	RejectBadHandshake      RejectReason = iota // ServerKey, ClientInfo or the upgrade failed
	RejectAdmissionDenied                       // -verify-clients or -verify-client-url said no
	RejectAcceptLimit                           // over -accept-connection-limit
	RejectMeshKeyMismatch                       // presented a mesh key that is not ours
	RejectOversizeFrame                         // a frame longer than the protocol allows
	RejectNonMeshPrivilege                      // WatchConns, ForwardPacket or ClosePeer without the mesh key
	RejectProtocolViolation                     // any other breach of the protocol
	RejectUnknownDest                           // no such key here or through the mesh
	RejectQueueFull                             // the receiver's queue was full
	RejectReceiverGone                          // the receiver left with the packet queued
	RejectWriteTimeout                          // a write to the receiver hit its deadline
	RejectWriteError                            // a write to the receiver failed
	RejectMeshQueueFull                         // the mesh link to the receiver's node could not keep up
	RejectMeshLinkDown                          // the mesh link to the receiver's node was down
	NumRejectReasons
)

var rejectReasonNames = [NumRejectReasons]string{
	"bad_handshake", "admission_denied", "accept_limit", "mesh_key_mismatch",
	"oversize_frame", "non_mesh_privilege", "protocol_violation", "unknown_destination",
	"queue_full", "receiver_gone", "write_timeout", "write_error",
	"mesh_queue_full", "mesh_link_down",
}

func (r RejectReason) String() string {
	if r < NumRejectReasons {
		return rejectReasonNames[r]
	}
	return fmt.Sprintf("RejectReason(%d)", r)
}

// RejectEvent is one kind of rejection, Count times over.
type RejectEvent struct {
	Dir    RejectDirection
	Reason RejectReason
	// The peer: its key when known, else its address (a handshake that
	// failed before the key was read).
	Key  wire.NodePublic
	Addr netip.AddrPort
	// DetailKey and Detail say more: the destination that was unknown,
	// the link that was down, the error.
	DetailKey wire.NodePublic
	Detail    string
	Count     int64
}

// RejectBatch carries events to the rejects actor.
type RejectBatch struct{ Events []RejectEvent }

// RejectTally gathers a reader's packet-level events until it sends them.
// It belongs to one goroutine.
type RejectTally struct {
	m     map[rejectTallyKey]int
	batch []RejectEvent
}

type rejectTallyKey struct {
	dir       RejectDirection
	reason    RejectReason
	key, with wire.NodePublic
	detail    string
}

// Note counts one event about key (DetailKey with, Detail detail).
func (t *RejectTally) Note(dir RejectDirection, reason RejectReason, key, with wire.NodePublic, detail string) {
	k := rejectTallyKey{dir, reason, key, with, detail}
	if i, ok := t.m[k]; ok {
		t.batch[i].Count++
		return
	}
	if t.m == nil {
		t.m = make(map[rejectTallyKey]int)
	}
	t.m[k] = len(t.batch)
	t.batch = append(t.batch, RejectEvent{Dir: dir, Reason: reason, Key: key, DetailKey: with, Detail: detail, Count: 1})
}

// Take returns the events gathered so far, in the order first met, and
// starts over; nil if there were none.
func (t *RejectTally) Take() []RejectEvent {
	if len(t.batch) == 0 {
		return nil
	}
	b := t.batch
	t.batch = nil
	clear(t.m)
	return b
}

// Disconnected tells the rejects actor that a connection ended and why,
// for the ring of recent disconnects /debug/peer shows.
type Disconnected struct {
	Conn   uint64
	Key    wire.NodePublic
	Addr   netip.AddrPort
	Since  time.Time
	Mesh   bool
	Reason string // how it ended: "client hung up", "protocol violation", …
	Close  string // why the server closed it, if it did
	Error  string // the error that ended it, if any
}

// GetRejects asks the rejects actor for its aggregate and the recent
// disconnects; it answers RejectsSnapshot.
type GetRejects struct {
	Key wire.NodePublic // non-zero: only what names this key
}

// RejectsSnapshot is the answer to GetRejects, most recent first.
type RejectsSnapshot struct {
	Rejects     []RejectInfo
	Disconnects []DisconnectInfo
	Evicted     [NumRejectDirections]int64 // entries forgotten to stay within the bound
	Max         int                        // entries kept per direction
	Mailbox     MailboxCounts              // the rejects actor's own
}

// RejectInfo is one aggregated entry.
type RejectInfo struct {
	Dir         RejectDirection
	Peer        string // nodekey:… or an address
	Key         wire.NodePublic
	Reason      RejectReason
	Detail      string // the latest detail
	Count       int64
	First, Last time.Time
}

// DisconnectInfo is one recent disconnect.
type DisconnectInfo struct {
	Disconnected
	Ended time.Time
}
