package actors

import (
	"github.com/asynkron/protoactor-go/actor"
	"github.com/derpd/derpd/wire"
)

// Recorder journals what actors receive and what readers route (derpd
// -record); actors/journal implements it. The System asks it for one
// middleware per actor, at Props, so that every actor records into a
// buffer of its own.
type Recorder interface {
	// Middleware returns the receiver middleware of the one actor of kind
	// spawned from the Props being made; id names it in the journal (the
	// connection id of a client actor, 0 for a singleton).
	Middleware(kind ActorKind, id uint64) actor.ReceiverMiddleware
	// Packets returns where the reader of connection conn records the
	// packets it routes.
	Packets(conn uint64) PacketRecorder
}

// PacketRecorder records one connection's routed packets. Its reader
// alone calls it.
type PacketRecorder interface {
	// RecordPacket records a packet read from connection conn with source
	// src toward dst, before it is routed. at is when it was read, in unix
	// nanoseconds on the System's clock: the reader's stamp of its last
	// socket read, which spares a clock read per packet. payload is only
	// read, during the call.
	RecordPacket(at int64, conn uint64, src, dst wire.NodePublic, payload []byte, disco, forwarded bool)
	// Close hands over what is still buffered: the reader has ended.
	Close()
}

// WithRecorder journals every derpd actor's messages with r (and lets the
// readers record packets through System.Recorder).
func WithRecorder(r Recorder) Option { return func(s *System) { s.Recorder = r } }
