// Package actors holds what derpd's actors share: the actor system and its
// logging, the message types they exchange, the routing table the registry
// publishes for readers, and the server-wide counters. The actors
// themselves live in the packages below (client, registry, …), which import
// this one and never each other, so the message types are the only
// coupling between them.
//
// # Who owns what
//
//	registry actor   key → connections, the active connection per key,
//	                 watchers, who heard from whom (for PeerGone), and the
//	                 RouteTable (the only writer).
//	client actor     one per connection: the connection's outbox (bounded
//	                 packet queues, control frames, the writer goroutine),
//	                 its preferred flag, and its lifecycle.
//	reader goroutine one per connection, beside its client actor: decodes
//	                 frames, routes packets straight into destination
//	                 outboxes through the RouteTable, and sends control
//	                 frames to its actor as messages.
//
// Packets never travel through actor mailboxes: a mailbox hop costs
// microseconds and an unbounded mailbox never shrinks after a burst.
// Everything else (registration, duplicates, watchers, PeerGone, ClosePeer)
// does, so that state has exactly one owner and needs no locks.
//
// # Message flow
//
//	Serve ──Register─────────────────────────────────────────────▶ registry
//	reader ──WatchConns/ClosePeer/Activity───────────────────────▶ registry
//	client actor ──Unregister (once its reader has ended)─────────▶ registry
//	writer ──Delivered (first packet from a source)──────────────▶ registry
//	registry ──Registered/SendPeerGone/SendPeerPresence/CloseConn─▶ client
package actors
