package client

import (
	"bytes"
	"encoding/json"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/asynkron/protoactor-go/actor"
	"github.com/derpd/derpd/actors"
	"github.com/derpd/derpd/wire"
	"github.com/rs/zerolog"
)

// actorEnv runs one client actor on a step dispatcher, with a recorder in
// the registry's place and a real socket behind its outbox.
type actorEnv struct {
	*outboxEnv
	a   *clientActor
	pid *actor.PID
}

func newActorEnv(t *testing.T) *actorEnv {
	e := newOutboxEnv(t, OutboxConfig{})
	a := &clientActor{
		sys: e.sys, conn: e.ob.owner, netConn: e.ob.conn, outbox: e.ob,
		since: time.Now(), serverInfo: []byte("server-info"),
	}
	props, _ := e.sys.Props(actors.ActorClient, func() actor.Actor { return a })
	pid := e.sys.Root.Spawn(props)
	e.ob.owner.PID = pid
	e.d.RunUntilIdle()
	e.sys.Stats.CurrentConns.Add(1) // as Serve does
	return &actorEnv{outboxEnv: e, a: a, pid: pid}
}

func (e *actorEnv) tell(msg any) {
	e.sys.Send(e.pid, msg)
	e.d.RunUntilIdle()
}

// msgContext is just enough of an actor.Context to hand Receive a message
// that its mailbox would not deliver; any other method panics.
type msgContext struct {
	actor.Context
	msg any
}

func (c msgContext) Message() any { return c.msg }

func TestClientActorStartsWritingOnlyOnceRegistered(t *testing.T) {
	e := newActorEnv(t)
	e.ob.SendPacket(packet(testKey(1), []byte("early")), nil)
	if e.ob.started.Load() {
		t.Fatal("writer started before the registry confirmed")
	}
	e.tell(&actors.Registered{})
	typ, body := e.readFrame(t)
	if typ != wire.FrameServerInfo || string(body) != "server-info" {
		t.Fatalf("first frame %v %q, want ServerInfo", typ, body)
	}
	if typ, body := e.readFrame(t); typ != wire.FrameRecvPacket || string(body[32:]) != "early" {
		t.Fatalf("second frame %v %q, want the early packet", typ, body)
	}
}

func TestClientActorTurnsRegistryMessagesIntoFrames(t *testing.T) {
	e := newActorEnv(t)
	e.tell(&actors.Registered{})
	e.readFrame(t) // ServerInfo
	e.tell(&actors.SendPeerGone{Peer: testKey(5), Reason: wire.PeerGoneNotHere})
	if typ, body := e.readFrame(t); typ != wire.FramePeerGone || body[0] != 5 || body[32] != 1 {
		t.Fatalf("got %v %x, want PeerGone(5, not-here)", typ, body)
	}
	e.tell(&actors.SendPeerPresence{Updates: []actors.PeerPresence{{Peer: testKey(6), Present: true, Flags: wire.PeerPresentIsProber}}})
	if typ, body := e.readFrame(t); typ != wire.FramePeerPresent || body[0] != 6 || body[50] != 4 {
		t.Fatalf("got %v %x, want PeerPresent(6, prober)", typ, body)
	}
}

func TestClientActorCloseConnClosesTheSocket(t *testing.T) {
	e := newActorEnv(t)
	var logged bytes.Buffer
	e.sys.Log = zerolog.New(&logged) // the actor runs on this goroutine
	e.tell(&actors.CloseConn{Reason: "test"})
	e.far.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.ReadAll(e.far); err != nil {
		t.Fatalf("client side did not see a clean close: %v", err)
	}
	// The reader then fails on the closed socket; the line that reports
	// the end says why the server closed it.
	e.tell(&readerDone{err: net.ErrClosed})
	for line := range strings.Lines(logged.String()) {
		var ev struct {
			Message     string `json:"message"`
			CloseReason string `json:"close_reason"`
		}
		if json.Unmarshal([]byte(line), &ev) == nil && ev.Message == "client disconnected" {
			if ev.CloseReason != "test" {
				t.Fatalf("disconnect logged as %s, want close_reason test", strings.TrimSpace(line))
			}
			return
		}
	}
	t.Fatalf("no disconnect line in %q", logged.String())
}

func TestClientActorReaderDoneUnregistersAndStops(t *testing.T) {
	e := newActorEnv(t)
	e.tell(&notePreferred{preferred: true})
	if got := e.sys.Stats.HomeConns.Load(); got != 1 {
		t.Fatalf("home connections = %d, want 1", got)
	}
	if e.sys.Stats.HomeMovesIn.Load() != 0 {
		t.Fatal("choosing a home right after connecting counted as a move")
	}
	e.ob.SendPacket(packet(testKey(1), []byte("queued")), nil)
	// The registry's confirmation may be on its way when the reader ends:
	// deliver it right behind readerDone, in the same mailbox run.
	e.sys.Send(e.pid, &readerDone{err: io.EOF})
	e.sys.Send(e.pid, &actors.Registered{})
	e.d.RunUntilIdle()
	if e.ob.started.Load() {
		t.Fatal("a confirmation that came after the reader ended started the writer")
	}
	// Through the mailbox, the actor's stop keeps it from being received
	// at all; the done flag must hold without that help.
	e.a.Receive(msgContext{msg: &actors.Registered{}})
	if e.ob.started.Load() {
		t.Fatal("Registered received after readerDone started the writer")
	}
	if len(e.reg.got) != 1 {
		t.Fatalf("registry got %v, want one Unregister", e.reg.got)
	}
	if u, ok := e.reg.got[0].(*actors.Unregister); !ok || u.Conn != e.ob.owner {
		t.Fatalf("registry got %#v, want Unregister of this connection", e.reg.got[0])
	}
	stats := e.sys.Stats
	if stats.CurrentConns.Load() != 0 || stats.HomeConns.Load() != 0 {
		t.Fatalf("gauges conns=%d home=%d after leaving, want 0,0", stats.CurrentConns.Load(), stats.HomeConns.Load())
	}
	if got := stats.Dropped(actors.DropGoneDisconnected, actors.KindOther); got != 1 {
		t.Fatalf("gone_disconnected = %d, want the one queued packet", got)
	}
}

func TestClientActorCountsHomeMovesAfterSettling(t *testing.T) {
	e := newActorEnv(t)
	e.a.since = time.Now().Add(-time.Minute) // connected long ago
	e.tell(&notePreferred{preferred: true})
	e.tell(&notePreferred{preferred: true}) // no change, no count
	e.tell(&notePreferred{preferred: false})
	stats := e.sys.Stats
	if stats.HomeMovesIn.Load() != 1 || stats.HomeMovesOut.Load() != 1 || stats.HomeConns.Load() != 0 {
		t.Fatalf("moves in=%d out=%d home=%d, want 1,1,0", stats.HomeMovesIn.Load(), stats.HomeMovesOut.Load(), stats.HomeConns.Load())
	}
}
