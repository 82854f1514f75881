// Package replay feeds a journal (actors/journal) to fresh actors with
// simulated connections and reports what they did: a load simulation of
// the control plane and the routing without a single socket.
//
// A replay builds a new System with a registry, a rejects actor and, if
// the journal counted flows, a flows actor. Every recorded Register
// becomes a simulated client (an actor that counts the frames the registry
// asks it to write) with a simulated outbox (a PacketSink that counts and
// releases). The journal's inputs (what the registry and the flows actor
// received from outside them) are fed in recorded order; its packets are
// routed through the fresh RouteTable as a connection's reader routes
// them. What the recording shows actors sending to client actors is not
// fed: the fresh registry produces it, and the report puts the two side by
// side.
//
// Time inside the replay is the recording's: a FakeClock moves to each
// record's time before the record is fed, so the actors' timers (sweeps,
// the restart spread, flow collection) fire where they fired live. Pacing
// only decides how fast wall time goes by meanwhile.
package replay

import (
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"runtime"
	"strings"
	"sync"
	"time"

	"github.com/asynkron/protoactor-go/actor"
	"github.com/derpd/derpd/actors"
	"github.com/derpd/derpd/actors/flows"
	"github.com/derpd/derpd/actors/journal"
	"github.com/derpd/derpd/actors/registry"
	"github.com/derpd/derpd/actors/rejects"
	"github.com/derpd/derpd/wire"
	"github.com/rs/zerolog"
)

// Dispatchers a -max replay can run its actors on.
const (
	// DispatchStep runs the actors on a StepDispatcher, to idle at
	// defined points of the journal: two replays give identical counts.
	DispatchStep = "step"
	// DispatchDefault runs them on protoactor's own dispatcher, a
	// goroutine per busy mailbox, as derpd does live.
	DispatchDefault = "default"
)

// DefaultBatch is how many messages a step replay feeds before it runs
// the actors, unless a packet comes first: large enough that mailboxes
// fill as they do under load, small enough that a journal of millions of
// messages never queues more than this.
const DefaultBatch = 1024

// Options says how to replay.
type Options struct {
	// Max feeds as fast as the actors take it; otherwise records are fed
	// at their recorded pace times Speed (0 means 1).
	Max   bool
	Speed float64
	// Scale clones every recorded client connection this many times
	// (0 means 1), each clone with a key of its own; clone i sends to
	// clone i of its peers, so the packets scale too. Connections that
	// presented the mesh key (other servers of the region) are not
	// cloned: their packets and ClosePeers reach every clone.
	Scale int
	// Dispatcher is DispatchStep (the default with Max) or
	// DispatchDefault (always, when paced).
	Dispatcher string
	// Batch overrides DefaultBatch.
	Batch int
	// Log receives the fresh actors' logs (zerolog.Nop() if unset).
	Log *zerolog.Logger
	// AtEnd, if set, is called once the actors are idle after the last
	// record, before they are stopped (a heap profile, say).
	AtEnd func()
}

// Run replays the journal r reads and reports. A journal that is cut
// short or corrupt fails the replay with the Reader's error, which names
// the offset; the report then covers the records before it.
func Run(r *journal.Reader, opts Options) (*Report, error) {
	e := newEngine(r.Header(), opts)
	defer e.sys.Actors.Shutdown()
	started := time.Now()
	e.wallStart = started
	var err error
	order := newOrderer()
	for {
		var rec *journal.Record
		rec, err = r.Next()
		if err != nil {
			break
		}
		order.push(rec, e.record)
		if e.err != nil {
			break
		}
	}
	if errors.Is(err, io.EOF) {
		err = nil
	}
	if e.err == nil {
		order.flush(e.record)
	}
	if err == nil {
		err = e.err
	}
	e.rep.Late = order.late
	e.settle(true)
	elapsed := time.Since(started)
	if opts.AtEnd != nil {
		opts.AtEnd()
	}
	return e.report(elapsed), err
}

// engine is one replay. Everything but the latency table and the actors
// themselves belongs to the goroutine that runs Run.
type engine struct {
	opts  Options
	k     int
	batch int
	sys   *actors.System
	step  *actors.StepDispatcher // nil on protoactor's dispatcher
	clock *actors.FakeClock
	start time.Time // the journal's

	wallStart time.Time

	conns   connIndex // by recorded connection id: its clones
	all     []*simConn
	links   []*simForwarder
	cloned  map[wire.NodePublic][]wire.NodePublic // clone keys, computed once per key
	waiter  actors.Waiter
	rejects actors.RejectTally // unroutable packets since the last settle
	// tallyFirst: connections whose FlowTallyStarted came before their
	// Register (a connection hands its tally to the flows actor first).
	tallyFirst map[uint64]bool

	pending  int                        // messages fed since the actors last caught up
	maxDepth map[actors.ActorKind]int64 // the singletons' deepest mailboxes seen

	// fed maps each message in flight to when it was fed; the latency
	// middleware takes it out when its actor receives it.
	mu   sync.Mutex
	fed  map[any]time.Time
	hist histogram

	rep Report
	err error  // a record no live server could have made: the replay stops
	seq uint64 // of the record being fed, for errors
}

func newEngine(h journal.Header, opts Options) *engine {
	if opts.Scale <= 0 {
		opts.Scale = 1
	}
	if opts.Speed <= 0 {
		opts.Speed = 1
	}
	if opts.Batch <= 0 {
		opts.Batch = DefaultBatch
	}
	if !opts.Max || opts.Dispatcher == "" {
		if opts.Max {
			opts.Dispatcher = DispatchStep
		} else {
			opts.Dispatcher = DispatchDefault
		}
	}
	log := zerolog.Nop()
	if opts.Log != nil {
		log = *opts.Log
	}
	e := &engine{
		opts:     opts,
		k:        opts.Scale,
		batch:    opts.Batch,
		clock:    actors.NewFakeClock(h.Start),
		start:    h.Start,
		maxDepth: make(map[actors.ActorKind]int64),
		fed:      make(map[any]time.Time),

		tallyFirst: make(map[uint64]bool),
	}
	if e.k > 1 {
		e.cloned = make(map[wire.NodePublic][]wire.NodePublic)
	}
	sysOpts := []actors.Option{actors.WithClock(e.clock), actors.WithReceiverMiddleware(e.latencyMiddleware)}
	if opts.Dispatcher == DispatchStep {
		e.step = actors.NewStepDispatcher()
		sysOpts = append(sysOpts, actors.WithDispatcher(e.step))
	}
	e.sys = actors.NewSystem(log, sysOpts...)
	// The journal holds the registry's messages in the order it took
	// them; a plain mailbox takes them in that order however many are
	// fed before it runs.
	registry.Spawn(e.sys, wire.NodePublic{}, registry.WithPostingOrder())
	rejects.Spawn(e.sys, 0)
	e.rep = Report{Scale: e.k, Dispatcher: opts.Dispatcher, Mode: "paced", Speed: opts.Speed}
	if opts.Max {
		e.rep.Mode, e.rep.Speed = "max", 0
	}
	return e
}

// record feeds one journal record.
func (e *engine) record(rec *journal.Record) {
	if e.err != nil {
		return
	}
	e.rep.Records++
	e.seq = rec.Seq
	e.rep.Journal = max(e.rep.Journal, rec.At)
	e.pace(rec.At)
	switch rec.Kind {
	case journal.KindMessage:
		e.message(rec)
	case journal.KindPacket:
		e.packet(&rec.Packet)
	case journal.KindNote:
		e.rep.Notes++
		if len(e.rep.NoteTexts) < 10 {
			e.rep.NoteTexts = append(e.rep.NoteTexts, rec.Note)
		}
	}
}

// pace moves the replay's clock to the record's time and, when paced,
// waits for the wall clock to catch up with it.
func (e *engine) pace(at time.Duration) {
	if d := e.start.Add(at).Sub(e.clock.Now()); d > 0 {
		e.clock.Advance(d)
	}
	if e.opts.Max {
		return
	}
	due := e.wallStart.Add(time.Duration(float64(at) / e.opts.Speed))
	if wait := time.Until(due); wait > time.Millisecond {
		time.Sleep(wait) // pacing a live replay, not waiting for an actor
	}
}

// message feeds an input, counts an output, or skips anything else.
func (e *engine) message(rec *journal.Record) {
	if rec.Target.Kind == actors.ActorClient && e.countRecorded(rec.Msg) {
		e.rep.Outputs++
		return
	}
	if rec.Target.Kind == actors.ActorClient && clientEnding(rec) {
		e.rep.Skipped++
		e.clientStopped(rec.Target.ID)
		return
	}
	reg := e.sys.Registry
	switch m := rec.Msg.(type) {
	case *actors.Register:
		e.rep.Inputs++
		e.register(m.Conn)
	case *actors.Unregister:
		e.perConn(m.Conn, func(c *actors.Conn) any { return &actors.Unregister{Conn: c} })
	case *actors.Activity:
		e.perConn(m.Conn, func(c *actors.Conn) any { return &actors.Activity{Conn: c} })
	case *actors.WatchConns:
		e.perConn(m.Conn, func(c *actors.Conn) any { return &actors.WatchConns{Conn: c} })
	case *actors.ClosePeer:
		e.perClone(m.From, func(sc *simConn, i int) any {
			return &actors.ClosePeer{From: sc.conn, Target: e.cloneKey(m.Target, i)}
		})
	case *actors.Delivered:
		e.perClone(deliveredReceiver(m), func(sc *simConn, i int) any {
			return cloneDelivered(m, sc.conn, func(k wire.NodePublic) wire.NodePublic { return e.cloneKey(k, i) })
		})
	case *actors.MeshLinkUp:
		e.rep.Inputs++
		fwd := &simForwarder{name: m.Peer}
		e.links = append(e.links, fwd)
		// No owner: the replay's registry never needs to tell the link
		// anything (it would only be RegistryRestarted after a panic).
		e.send(reg, &actors.MeshLinkUp{Link: m.Link, Peer: m.Peer, PeerKey: m.PeerKey, Forward: fwd})
	case *actors.MeshUpdate:
		e.rep.Inputs++
		up := &actors.MeshUpdate{Link: m.Link, Updates: make([]actors.MeshPeerUpdate, 0, len(m.Updates)*e.k)}
		for _, u := range m.Updates {
			for i := range e.k {
				up.Updates = append(up.Updates, actors.MeshPeerUpdate{Key: e.cloneKey(u.Key, i), Present: u.Present})
			}
		}
		e.send(reg, up) // the registry's MeshUpdateApplied goes to dead letters: no link waits for it
	case *actors.MeshLinkDown:
		e.rep.Inputs++
		e.send(reg, &actors.MeshLinkDown{Link: m.Link})
	case *actors.CloseAll:
		e.rep.Inputs++
		e.send(reg, &actors.CloseAll{Reason: m.Reason, Flush: m.Flush})
	case *actors.RestartAll:
		e.rep.Inputs++
		cp := *m
		e.send(reg, &cp)
	case *actors.FlowTallyStarted:
		e.flowTally(m.Tally, true)
	case *actors.FlowTallyEnded:
		e.flowTally(m.Tally, false)
	default:
		// Queries, timer ticks, opaque messages, and what actors send
		// each other: the fresh actors make their own.
		e.rep.Skipped++
	}
}

// ClientReaderDone is the journal's name for the message a connection's
// reader sends its client actor when the connection ends (an opaque
// record: the type is actors/client's own). The actor takes no message
// after it: it unregisters and stops itself. actors/client's tests pin
// the name, so renaming the type fails there rather than quietly here.
const ClientReaderDone = "*client.readerDone"

// clientEnding reports whether rec, a message a client actor took, shows
// the actor ending: its reader's last word or, should that type be
// renamed, protoactor's Stopping and Stopped, a little later.
func clientEnding(rec *journal.Record) bool {
	switch rec.Msg.(type) {
	case *actor.Stopping, *actor.Stopped:
		return true
	case nil:
		return rec.Note == ClientReaderDone
	}
	return false
}

// clientStopped replays a client actor ending. Live, a connection's actor
// stops before the registry takes its Unregister, and in a shutdown every
// client actor may stop before the registry takes the first of the
// Unregisters: the PeerGone it then sends the departed's peers goes to
// dead letters, and the journal shows none. The clones stop counting
// frames here, after the actors have taken what was fed before (the
// registry's frames to them sent by then are still counted), so that
// produced and recorded frames compare like with like. Only the first of
// a connection's ending records counts.
func (e *engine) clientStopped(id uint64) {
	clones := e.conns.get(id)
	if clones == nil || clones[0].ended {
		return // ended before it registered (a handshake that failed), or already
	}
	e.settle(false)
	for _, sc := range clones {
		sc.ended = true
		e.sys.Send(sc.conn.PID, &simStopped{})
	}
}

// countRecorded counts a frame the recording shows the registry asking a
// client actor for; false if msg is not one of them.
func (e *engine) countRecorded(msg any) bool {
	f := &e.rep.Recorded
	switch m := msg.(type) {
	case *actors.Registered:
		f.Registered++
	case *actors.SendPeerGone:
		if f.PeerGone == nil {
			f.PeerGone = make(map[string]int64)
		}
		f.PeerGone[goneSlotName(goneSlot(m.Reason))]++
	case *actors.SendPeerPresence:
		f.Presence += int64(len(m.Updates))
	case *actors.CloseConn:
		f.CloseConn++
	case *actors.SendRestarting:
		f.Restarting++
	default:
		return false
	}
	return true
}

// register makes the simulated clones of a recorded connection and
// registers them.
func (e *engine) register(orig *actors.Conn) {
	if orig == nil {
		e.rep.Unknown++
		return
	}
	clones := e.conns.get(orig.ID)
	if clones == nil {
		n := e.k
		if orig.CanMesh {
			n = 1
		}
		clones = make([]*simConn, n)
		for i := range clones {
			clones[i] = e.newSimConn(orig, i)
		}
		e.conns.set(orig.ID, clones)
	}
	for _, sc := range clones {
		e.send(e.sys.Registry, &actors.Register{Conn: sc.conn})
	}
	if e.tallyFirst[orig.ID] {
		delete(e.tallyFirst, orig.ID)
		e.startTallies(clones, true)
	}
}

func (e *engine) newSimConn(orig *actors.Conn, i int) *simConn {
	c := &actors.Conn{
		ID:      orig.ID*uint64(e.k) + uint64(i),
		Key:     e.cloneKey(orig.Key, i),
		Addr:    orig.Addr,
		Flags:   orig.Flags,
		CanMesh: orig.CanMesh,
		Since:   orig.Since,
	}
	sc := &simConn{conn: c, client: new(simClient), sink: new(simSink)}
	props, mbox := e.sys.Props(actors.ActorClient, func() actor.Actor { return sc.client })
	sc.client.mbox = mbox
	c.PID = e.sys.Root.Spawn(props)
	c.Sink = sc.sink
	c.Mailbox = mbox
	e.all = append(e.all, sc)
	return sc
}

// perConn feeds one message per clone of the connection c names.
func (e *engine) perConn(c *actors.Conn, msg func(*actors.Conn) any) {
	e.rep.Inputs++
	clones := e.clonesOf(c)
	for _, sc := range clones {
		e.send(e.sys.Registry, msg(sc.conn))
	}
}

// perClone feeds one message per clone index, for messages that name
// keys as well as a connection: clone i's message names clone i's keys,
// even when the connection (a mesh peer's) has a single clone.
func (e *engine) perClone(c *actors.Conn, msg func(*simConn, int) any) {
	e.rep.Inputs++
	clones := e.clonesOf(c)
	if clones == nil {
		return
	}
	for i := range e.k {
		e.send(e.sys.Registry, msg(pick(clones, i), i))
	}
}

// clonesOf returns the clones of the recorded connection c, nil (and
// counted) for one the journal never registered.
func (e *engine) clonesOf(c *actors.Conn) []*simConn {
	if c == nil {
		e.rep.Unknown++
		return nil
	}
	clones := e.conns.get(c.ID)
	if clones == nil {
		e.rep.Unknown++
	}
	return clones
}

// pick returns clone i, or the only one of a connection not cloned.
func pick(clones []*simConn, i int) *simConn { return clones[min(i, len(clones)-1)] }

// flowTally replays a reader handing its tally to the flows actor (or
// letting it go): each clone gets a tally of its own, which the replay
// counts packets into as the clone's reader would. The flows actor is
// started on the first one, so a journal recorded with -flows off
// replays without it.
func (e *engine) flowTally(t *actors.FlowTally, started bool) {
	e.rep.Inputs++
	if t == nil {
		e.rep.Unknown++
		return
	}
	if e.sys.Flows == nil {
		flows.Spawn(e.sys, flows.Config{})
	}
	clones := e.conns.get(t.Conn)
	if clones == nil {
		// A connection hands its tally over just before it registers:
		// start the clones' tallies once they exist.
		switch {
		case started:
			e.tallyFirst[t.Conn] = true
		case e.tallyFirst[t.Conn]:
			delete(e.tallyFirst, t.Conn) // it never registered
		default:
			e.rep.Unknown++
		}
		return
	}
	e.startTallies(clones, started)
}

// startTallies gives each clone a tally of its own (started) or lets
// the clones' tallies go.
func (e *engine) startTallies(clones []*simConn, started bool) {
	for _, sc := range clones {
		switch {
		case started && sc.tally == nil:
			size := actors.DefaultFlowTallySize
			if sc.conn.CanMesh {
				size = actors.MeshFlowTallySize
			}
			sc.tally = actors.NewFlowTally(sc.conn.ID, size)
			e.send(e.sys.Flows, &actors.FlowTallyStarted{Tally: sc.tally})
		case !started && sc.tally != nil:
			e.send(e.sys.Flows, &actors.FlowTallyEnded{Tally: sc.tally})
			sc.tally = nil
		}
	}
}

// send feeds msg to pid, noting when for the latency figures.
func (e *engine) send(pid *actor.PID, msg any) {
	e.mu.Lock()
	e.fed[msg] = time.Now()
	e.mu.Unlock()
	e.sys.Send(pid, msg)
	e.rep.Messages++
	e.pending++
	if e.step == nil {
		e.sampleDepths()
	} else if e.pending >= e.batch {
		e.settle(false)
	}
}

// latencyMiddleware measures each fed message's wait in its mailbox.
func (e *engine) latencyMiddleware(next actor.ReceiverFunc) actor.ReceiverFunc {
	return func(ctx actor.ReceiverContext, env *actor.MessageEnvelope) {
		if isInput(env.Message) {
			now := time.Now()
			e.mu.Lock()
			if t, ok := e.fed[env.Message]; ok {
				delete(e.fed, env.Message)
				e.hist.observe(now.Sub(t))
			}
			e.mu.Unlock()
		}
		next(ctx, env)
	}
}

// isInput reports whether msg is of a type the replay feeds, so that the
// latency table is consulted for those only.
func isInput(msg any) bool {
	switch msg.(type) {
	case *actors.Register, *actors.Unregister, *actors.Activity, *actors.WatchConns,
		*actors.ClosePeer, *actors.Delivered, *actors.MeshLinkUp, *actors.MeshUpdate,
		*actors.MeshLinkDown, *actors.CloseAll, *actors.RestartAll,
		*actors.FlowTallyStarted, *actors.FlowTallyEnded:
		return true
	}
	return false
}

// packet routes a recorded packet, once per clone index.
func (e *engine) packet(p *journal.PacketRecord) {
	if p.Size < 0 || p.Size > wire.MaxPacketSize {
		// The Reader checks the framing, not what a reader could have
		// read off a connection.
		e.err = fmt.Errorf("journal: record %d: a packet of %d bytes, more than DERP carries (%d)", e.seq, p.Size, wire.MaxPacketSize)
		return
	}
	e.rep.PacketRecords++
	if e.pending > 0 {
		// A reader routes with the table the registry has published by
		// then: let it take in what was fed before this packet.
		e.settle(false)
	}
	clones := e.conns.get(p.SrcConn)
	for i := range e.k {
		var sc *simConn
		if clones != nil {
			sc = pick(clones, i)
		}
		e.route(sc, e.cloneKey(p.Src, i), e.cloneKey(p.Dst, i), p)
	}
}

// route is a connection reader's route (actors/client/reader.go) for a
// simulated packet: to the destination's local sink, else to the mesh
// link announcing it unless the packet came in from the mesh, else
// dropped as unknown_dest (unknown_dest_on_fwd for a forwarded packet),
// counted in the system's Stats and noted for the rejects actor.
func (e *engine) route(sc *simConn, src, dst wire.NodePublic, p *journal.PacketRecord) {
	pk := wire.NewPacket(p.Size)
	if len(p.Payload) == p.Size {
		copy(pk.Payload(), p.Payload)
	}
	pk.SetSource(src)
	pk.Forwarded = p.Forwarded
	var tally *actors.FlowTally
	if sc != nil {
		tally = sc.tally
	}
	if rt := e.sys.Routes.Lookup(dst); rt != nil {
		if rt.Local != nil {
			if tally != nil {
				via := ""
				if p.Forwarded && sc.conn.CanMesh {
					via = sc.conn.Key.String()
				}
				tally.Count(src, dst, via, p.Size)
			}
			rt.Local.SendPacket(pk, &e.waiter)
			return
		}
		if rt.Forward != nil && !p.Forwarded {
			if tally != nil {
				tally.Count(src, dst, rt.Forward.Name(), p.Size)
			}
			rt.Forward.ForwardPacket(dst, pk, &e.waiter)
			return
		}
	}
	reason, detail := actors.DropUnknownDest, ""
	if p.Forwarded {
		reason, detail = actors.DropUnknownDestOnFwd, "forwarded by a mesh peer"
	}
	e.sys.Stats.Drop(reason, actors.KindOf(p.Disco), p.Size)
	e.rejects.Note(actors.RejectPacket, actors.RejectUnknownDest, src, dst, detail)
	pk.Release()
}

// cloneKey is clone i's key for k: k itself for clone 0, otherwise a
// hash of k and i, so every replay (and every connection naming k) gets
// the same clone keys.
func (e *engine) cloneKey(k wire.NodePublic, i int) wire.NodePublic {
	if i == 0 {
		return k
	}
	keys := e.cloned[k]
	if keys == nil {
		keys = make([]wire.NodePublic, e.k)
		keys[0] = k
		for j := 1; j < e.k; j++ {
			keys[j] = CloneKey(k, j)
		}
		e.cloned[k] = keys
	}
	return keys[i]
}

// CloneKey derives clone i's key from a recorded key (i > 0).
func CloneKey(k wire.NodePublic, i int) wire.NodePublic {
	h := sha256.New()
	h.Write([]byte("derpd replay clone\x00"))
	h.Write(k[:])
	var n [8]byte
	binary.LittleEndian.PutUint64(n[:], uint64(i))
	h.Write(n[:])
	return wire.NodePublic(h.Sum(nil))
}

// settle lets the actors take in everything fed so far: on the step
// dispatcher by running them to idle, on protoactor's by waiting for the
// registry's and flows actor's mailboxes (and at the end every mailbox)
// to empty. Unroutable packets are handed to the rejects actor first, as
// a reader does when it next waits on its socket.
func (e *engine) settle(final bool) {
	if ev := e.rejects.Take(); ev != nil {
		e.sys.Send(e.sys.Rejects, &actors.RejectBatch{Events: ev})
	}
	e.sampleDepths()
	e.pending = 0
	if e.step != nil {
		e.step.RunUntilIdle()
		return
	}
	kinds := []actors.ActorKind{actors.ActorRegistry, actors.ActorFlows}
	if final {
		kinds = actors.ActorKinds
	}
	var lastProcessed int64
	lastProgress := time.Now()
	for {
		busy := false
		var processed int64
		for _, k := range kinds {
			ks := e.sys.Kind(k)
			processed += ks.Processed()
			if ks.Depth() > 0 {
				busy = true
			}
		}
		if !busy {
			return
		}
		if processed != lastProcessed {
			lastProcessed, lastProgress = processed, time.Now()
		} else if time.Since(lastProgress) > stuckAfter {
			// Messages wait that nobody takes (an actor stopped with
			// its mailbox full): waiting longer changes nothing.
			e.rep.Stuck++
			return
		}
		e.sampleDepths()
		runtime.Gosched() // the actors run on other goroutines; this one only waits
	}
}

// stuckAfter is how long a replay on protoactor's dispatcher waits for
// mailboxes that have stopped draining before it goes on.
const stuckAfter = 2 * time.Second

// sampleDepths notes how deep the singletons' mailboxes are (the client
// actors note their own).
func (e *engine) sampleDepths() {
	for _, k := range []actors.ActorKind{actors.ActorRegistry, actors.ActorFlows, actors.ActorRejects} {
		if d := e.sys.Kind(k).Depth(); d > e.maxDepth[k] {
			e.maxDepth[k] = d
		}
	}
}

// report gathers the counts once the actors are idle.
func (e *engine) report(elapsed time.Duration) *Report {
	rep := e.rep
	rep.Elapsed, rep.ElapsedS = elapsed, elapsed.Seconds()
	rep.JournalS = rep.Journal.Seconds()
	if s := elapsed.Seconds(); s > 0 {
		rep.MsgsPerS = float64(rep.Messages) / s
	}
	prod := ClientFrames{PeerGone: make(map[string]int64)}
	var clientDepth int64
	for _, sc := range e.all {
		if n := sc.sink.packets.Load(); n > 0 {
			rep.PacketsDelivered += n
			rep.Receivers++
		}
		rep.BytesDelivered += sc.sink.bytes.Load()
		cl := sc.client
		prod.Registered += cl.registered.Load()
		prod.Presence += cl.presence.Load()
		prod.CloseConn += cl.closes.Load()
		prod.Restarting += cl.restarting.Load()
		for r := range cl.peerGone {
			if n := cl.peerGone[r].Load(); n > 0 {
				prod.PeerGone[goneSlotName(r)] += n
			}
		}
		clientDepth = max(clientDepth, cl.maxDepth.Load())
	}
	if rep.Recorded.PeerGone == nil {
		rep.Recorded.PeerGone = make(map[string]int64)
	}
	rep.Produced = prod
	for _, f := range e.links {
		rep.PacketsForwarded += f.packets.Load()
	}
	rep.DroppedByReason = make(map[string]int64)
	for r := actors.DropReason(0); !strings.HasPrefix(r.String(), "DropReason("); r++ {
		n := e.sys.Stats.Dropped(r, actors.KindDisco) + e.sys.Stats.Dropped(r, actors.KindOther)
		rep.DroppedByReason[r.String()] = n
		rep.PacketsDropped += n
	}
	if s := elapsed.Seconds(); s > 0 {
		rep.PacketsPerS = float64(rep.PacketsDelivered+rep.PacketsForwarded+rep.PacketsDropped) / s
	}
	e.maxDepth[actors.ActorClient] = clientDepth
	rep.PerKind = make(map[string]KindReport)
	for _, k := range actors.ActorKinds {
		n := e.sys.Kind(k).Processed()
		if n == 0 {
			continue
		}
		kr := KindReport{Processed: n, MaxDepth: e.maxDepth[k]}
		if s := elapsed.Seconds(); s > 0 {
			kr.MsgsPerS = float64(n) / s
		}
		rep.PerKind[string(k)] = kr
		rep.MaxMailboxDepth = max(rep.MaxMailboxDepth, kr.MaxDepth)
	}
	e.mu.Lock()
	rep.Latency = e.hist.latency()
	e.mu.Unlock()
	return &rep
}
