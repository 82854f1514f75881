package client

import (
	"io"
	"testing"

	"github.com/asynkron/protoactor-go/actor"
	"github.com/derpd/derpd/actors"
	"github.com/derpd/derpd/wire"
	"github.com/rs/zerolog"
)

// discardRegistry stands in for the registry in benchmarks: it takes what
// a Delivered reports and forgets it.
type discardRegistry struct{}

func (discardRegistry) Receive(ctx actor.Context) {
	if m, ok := ctx.Message().(*actors.Delivered); ok {
		m.Take()
	}
}

// BenchmarkOutboxNewSources is BenchmarkOutboxHandoff with every packet
// from a source the receiver has not heard from (the sources outnumber
// what the outbox remembers): the worst case of the Delivered
// bookkeeping, which random traffic to a busy receiver approaches.
// registry-msgs/op is the messages it posts to the registry per packet.
func BenchmarkOutboxNewSources(b *testing.B) {
	sys := actors.NewSystem(zerolog.Nop())
	props, mbox := sys.Props(actors.ActorRegistry, func() actor.Actor { return discardRegistry{} })
	sys.Registry = sys.Root.Spawn(props)
	near, far := tcpPair(b)
	go io.Copy(io.Discard, far)
	ob := NewOutbox(sys, near, OutboxConfig{KeepAlive: 3600e9})
	ob.owner = &actors.Conn{ID: 1, Key: testKey(0xaa), Sink: ob}
	defer ob.Close()
	ob.Start()
	sources := make([]wire.NodePublic, 2*maxSeenSources+1)
	for i := range sources {
		sources[i][0], sources[i][1], sources[i][2] = byte(i), byte(i>>8), 1
	}
	payload := make([]byte, 1280)
	var w actors.Waiter
	b.SetBytes(int64(len(payload)))
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		p := wire.NewPacket(len(payload))
		copy(p.Payload(), payload)
		p.SetSource(sources[i])
		if i++; i == len(sources) {
			i = 0
		}
		ob.SendPacket(p, &w)
	}
	// Posted rather than processed: the registry may still be behind.
	b.ReportMetric(float64(mbox.Depth()+mbox.Processed())/float64(b.N), "registry-msgs/op")
}

// BenchmarkNoteSource is the writer's bookkeeping of one packet from a new
// source alone, with a registry taking the reports on its own goroutine.
func BenchmarkNoteSource(b *testing.B) {
	sys := actors.NewSystem(zerolog.Nop())
	props, mbox := sys.Props(actors.ActorRegistry, func() actor.Actor { return discardRegistry{} })
	sys.Registry = sys.Root.Spawn(props)
	near, _ := tcpPair(b)
	ob := NewOutbox(sys, near, OutboxConfig{KeepAlive: 3600e9})
	ob.owner = &actors.Conn{ID: 1, Key: testKey(0xaa), Sink: ob}
	defer ob.Close()
	sources := make([]wire.NodePublic, 2*maxSeenSources+1)
	for i := range sources {
		sources[i][0], sources[i][1], sources[i][2] = byte(i), byte(i>>8), 1
	}
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		// Not started: the benchmark holds the writer's slot.
		ob.noteSource(sources[i], false)
		if i++; i == len(sources) {
			i = 0
		}
	}
	b.ReportMetric(float64(mbox.Depth()+mbox.Processed())/float64(b.N), "registry-msgs/op")
}
