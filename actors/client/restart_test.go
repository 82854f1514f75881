package client

import (
	"encoding/binary"
	"io"
	"testing"
	"time"

	"github.com/derpd/derpd/actors"
	"github.com/derpd/derpd/wire"
)

// expectRestarting reads the next frame, which must be Restarting with
// these durations.
func (e *outboxEnv) expectRestarting(t *testing.T, reconnectIn, tryFor time.Duration) {
	t.Helper()
	typ, body := e.readFrame(t)
	if typ != wire.FrameRestarting || len(body) != wire.RestartingLen {
		t.Fatalf("got %v %x, want Restarting", typ, body)
	}
	in := time.Duration(binary.BigEndian.Uint32(body[0:4])) * time.Millisecond
	tf := time.Duration(binary.BigEndian.Uint32(body[4:8])) * time.Millisecond
	if in != reconnectIn || tf != tryFor {
		t.Fatalf("Restarting(%v, %v), want (%v, %v)", in, tf, reconnectIn, tryFor)
	}
}

// expectEOF requires the server to have closed the connection cleanly
// after what was read so far: nothing more, then end of stream.
func (e *outboxEnv) expectEOF(t *testing.T) {
	t.Helper()
	e.far.SetReadDeadline(time.Now().Add(10 * time.Second))
	if typ, n, err := e.rd.ReadHeader(); err != io.EOF {
		t.Fatalf("after the last frame: %v (%d bytes), %v; want a clean close", typ, n, err)
	}
}

// TestOutboxRestartingThenGracefulClose: a Restarting frame and a
// graceful close queued back to back, with no wait between them (as the
// registry's first close of a spread follows its Restarting), reach the
// client in that order: the frame, then the end of the stream.
func TestOutboxRestartingThenGracefulClose(t *testing.T) {
	e := newOutboxEnv(t, OutboxConfig{})
	e.ob.queueServerInfo([]byte("sealed"))
	e.ob.Start()
	if typ, _ := e.readFrame(t); typ != wire.FrameServerInfo {
		t.Fatalf("first frame %v, want ServerInfo", typ)
	}
	e.ob.QueueRestarting(2*time.Second, 10*time.Second)
	if !e.ob.CloseWhenWritten() {
		t.Fatal("a started outbox refused a graceful close")
	}
	e.expectRestarting(t, 2*time.Second, 10*time.Second)
	e.expectEOF(t)
	select {
	case <-e.ob.Finished():
	case <-time.After(10 * time.Second):
		t.Fatal("the outbox did not finish after closing the connection")
	}
	if e.ob.CloseWhenWritten() {
		t.Fatal("a finished outbox accepted a graceful close")
	}
}

// TestOutboxGracefulCloseNeedsAWriter: before Start there is no writer to
// close the connection, and the caller must be told so.
func TestOutboxGracefulCloseNeedsAWriter(t *testing.T) {
	e := newOutboxEnv(t, OutboxConfig{})
	if e.ob.CloseWhenWritten() {
		t.Fatal("an outbox that was never started accepted a graceful close")
	}
}

// TestClientActorRestartingThenFlushingClose: the registry's two
// messages of a graceful shutdown become the Restarting frame and then a
// close that waits for it.
func TestClientActorRestartingThenFlushingClose(t *testing.T) {
	e := newActorEnv(t)
	e.tell(&actors.Registered{})
	e.readFrame(t) // ServerInfo
	e.sys.Send(e.pid, &actors.SendRestarting{ReconnectIn: time.Second, TryFor: 7 * time.Second})
	e.sys.Send(e.pid, &actors.CloseConn{Reason: "server restarting", Flush: true})
	e.d.RunUntilIdle()
	e.expectRestarting(t, time.Second, 7*time.Second)
	e.expectEOF(t)
	if e.a.closeReason != "server restarting" {
		t.Fatalf("close reason %q", e.a.closeReason)
	}
}

// TestClientActorFlushingCloseBeforeRegistration: a connection not yet
// registered has no writer; a flushing close closes it at once.
func TestClientActorFlushingCloseBeforeRegistration(t *testing.T) {
	e := newActorEnv(t)
	e.tell(&actors.CloseConn{Reason: "server restarting", Flush: true})
	e.expectEOF(t)
}
