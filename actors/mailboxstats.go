package actors

import (
	"sync/atomic"

	"github.com/asynkron/protoactor-go/actor"
)

// ActorKind says what an actor is, on /debug/actors and in the per-kind
// metrics.
type ActorKind string

// The kinds of derpd's actors.
const (
	ActorRegistry ActorKind = "registry"
	ActorClient   ActorKind = "client"
	ActorMesh     ActorKind = "mesh"
	ActorMeshLink ActorKind = "mesh-link"
	ActorFlows    ActorKind = "flows"
	ActorRejects  ActorKind = "rejects"
	ActorVerify   ActorKind = "verify"
)

// ActorKinds lists every kind, in the order pages show them.
var ActorKinds = []ActorKind{ActorRegistry, ActorMesh, ActorMeshLink, ActorFlows, ActorRejects, ActorVerify, ActorClient}

// MailboxStats counts one actor's messages as its mailbox sees them:
// posted and processed, system messages included. Their difference is
// the mailbox's depth.
type MailboxStats struct {
	Kind      ActorKind
	posted    atomic.Int64
	processed atomic.Int64
	kind      *KindStats
}

// Depth is how many messages wait.
func (m *MailboxStats) Depth() int64 { return m.posted.Load() - m.processed.Load() }

// Processed is how many messages the actor has handled.
func (m *MailboxStats) Processed() int64 { return m.processed.Load() }

// KindStats sums MailboxStats over every actor of one kind, the live ones
// and those that have stopped.
type KindStats struct {
	posted, processed atomic.Int64
	live              atomic.Int64 // actors of the kind started and not yet stopped
	panics            atomic.Int64 // panics caught in the kind's actors (see panicGuard)
}

// Panics is how many times an actor of the kind has panicked.
func (k *KindStats) Panics() int64 { return k.panics.Load() }

// Depth is how many messages wait in the mailboxes of the kind's actors.
func (k *KindStats) Depth() int64 { return k.posted.Load() - k.processed.Load() }

// Processed is how many messages actors of the kind have handled.
func (k *KindStats) Processed() int64 { return k.processed.Load() }

// Live is how many actors of the kind are running.
func (k *KindStats) Live() int64 { return k.live.Load() }

// mailboxCounter is the mailbox middleware that keeps MailboxStats: two
// atomic additions per message, on control traffic only (packets never
// pass through mailboxes).
type mailboxCounter struct{ s *MailboxStats }

func (c mailboxCounter) MailboxStarted() {}

func (c mailboxCounter) MessagePosted(msg any) {
	c.s.posted.Add(1)
	c.s.kind.posted.Add(1)
}

func (c mailboxCounter) MessageReceived(msg any) {
	c.s.processed.Add(1)
	c.s.kind.processed.Add(1)
}

// liveCounter is the receiver middleware that counts the kind's live
// actors: Started and Stopped reach the actor's Receive, though Stopped
// does not pass through its mailbox.
func liveCounter(k *KindStats) actor.ReceiverMiddleware {
	return func(next actor.ReceiverFunc) actor.ReceiverFunc {
		return func(ctx actor.ReceiverContext, env *actor.MessageEnvelope) {
			switch env.Message.(type) {
			case *actor.Started:
				k.live.Add(1)
			case *actor.Stopped:
				k.live.Add(-1)
			}
			next(ctx, env)
		}
	}
}

func (c mailboxCounter) MailboxEmpty() {}

// MailboxCounts is a copy of an actor's counts, for answers to queries.
type MailboxCounts struct {
	Depth     int64
	Processed int64
}

// Counts returns a copy; the zero counts for a nil m.
func (m *MailboxStats) Counts() MailboxCounts {
	if m == nil {
		return MailboxCounts{}
	}
	return MailboxCounts{Depth: m.Depth(), Processed: m.Processed()}
}

// CountsInHandler is Counts as the actor itself reports them while
// handling a message: that message does not wait, and is not processed
// yet either.
func (m *MailboxStats) CountsInHandler() MailboxCounts {
	c := m.Counts()
	c.Depth = max(c.Depth-1, 0)
	return c
}

// QueueDepther is a PacketSink that can say how much waits in it.
type QueueDepther interface {
	QueueDepths() (data, disco int)
}
