package client

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"slices"
	"time"

	"github.com/asynkron/protoactor-go/actor"
	"github.com/derpd/derpd/actors"
	"github.com/derpd/derpd/wire"
	"github.com/rs/zerolog"
)

// Accepted describes a connection the HTTP layer has upgraded to DERP.
type Accepted struct {
	Conn      net.Conn
	Prefix    []byte         // bytes the client pipelined after its HTTP request
	Addr      netip.AddrPort // client address, for logs, watchers and admission
	FastStart bool           // no HTTP response was written
	NotIdeal  bool           // the client is not on its region's first node
	WebSocket bool
	MaxWrite  int // largest single write the transport accepts; 0 = unlimited
}

// Serve runs a connection's handshake on the calling goroutine, then hands
// the connection to a reader goroutine and its client actor and returns.
//
// The handshake (protocol order, see package wire):
//
//  1. write ServerKey and flush;
//  2. read ClientInfo, which must be the first frame;
//  3. decide admission: mesh-key holders skip it;
//  4. register with the registry (watchers hear of the client now); once
//     it confirms, the client actor starts the writer with ServerInfo as
//     its first frame, so a client never hears ServerInfo before it can
//     receive packets;
//  5. read frames until the connection ends.
//
// Steps 1–3 run under one deadline, cfg.HandshakeTimeout after the start.
func Serve(sys *actors.System, cfg *Config, a Accepted) {
	log := sys.Log.With().Str("addr", a.Addr.String()).Logger()
	conn := a.Conn
	// The handshake's deadline is on the wall clock, which is the only
	// time the socket (and the admission context below) knows; when the
	// connection began, for the actors, is on sys.Clock.
	start := time.Now()
	since := sys.Clock.Now()
	handshakeDeadline := start.Add(cfg.handshakeTimeout())
	conn.SetDeadline(handshakeDeadline)
	key, info, shared, rd, err := handshake(cfg, a)
	canMesh := err == nil && isMesh(cfg, info)
	if err == nil && !canMesh && !info.MeshKey.IsZero() {
		// As upstream, such a client is served as an ordinary one (a
		// prober with an old key keeps probing), and closed when it uses
		// a mesh privilege. For a mesh peer that is the WatchConns it
		// sends next, so say here what is wrong.
		sys.Stats.MeshKeyMismatch.Add(1)
		reject(sys, actors.RejectEvent{Dir: actors.RejectConnection, Reason: actors.RejectMeshKeyMismatch, Key: key, Addr: a.Addr,
			Detail: "served as an ordinary client"})
		log.Warn().Str("key", key.String()).Bool("server_has_mesh_key", !cfg.MeshKey.IsZero()).
			Msg("client presented a mesh key that is not this server's; serving it as an ordinary client")
	}
	if err == nil && cfg.Admit != nil && !canMesh {
		ctx, cancel := context.WithDeadline(context.Background(), handshakeDeadline)
		err = cfg.Admit(ctx, key, a.Addr)
		cancel()
		if err != nil {
			sys.Stats.Rejected.Add(1)
			reject(sys, actors.RejectEvent{Dir: actors.RejectConnection, Reason: actors.RejectAdmissionDenied, Key: key, Addr: a.Addr, Detail: err.Error()})
			log.Info().Str("key", key.String()).Err(err).Msg("client refused by admission control")
			conn.Close()
			rd.Release()
			return
		}
	}
	if err != nil {
		sys.Stats.HandshakeErrors.Add(1)
		// The key, if the ClientInfo got as far as naming one (a box that
		// does not open), else only the address.
		detail := err.Error()
		if !key.IsZero() {
			detail += " (the key is as claimed, not proven)"
		}
		reject(sys, actors.RejectEvent{Dir: actors.RejectConnection, Reason: actors.RejectBadHandshake, Key: key, Addr: a.Addr, Detail: detail})
		ev := log.Info()
		if !isBenign(err) {
			ev = log.Warn()
		}
		ev.Err(err).Msg("handshake failed; closing")
		conn.Close()
		if rd != nil {
			rd.Release()
		}
		return
	}
	conn.SetDeadline(time.Time{})
	rd.SetMaxFrame(maxFrameAfterHandshake)

	c := &actors.Conn{
		ID:      sys.NextConnID(),
		Key:     key,
		Addr:    a.Addr,
		Flags:   presentFlags(canMesh, info.IsProber, a.NotIdeal),
		CanMesh: canMesh,
		Since:   since,
	}
	writeTimeout := cfg.WriteTimeout
	if canMesh {
		writeTimeout = MeshWriteTimeout
	}
	ob := NewOutbox(sys, conn, OutboxConfig{
		QueueDepth:   cfg.QueueDepth,
		WriteTimeout: writeTimeout,
		KeepAlive:    cfg.keepAlive(),
		MaxWrite:     a.MaxWrite,
	})
	ob.owner = c
	c.Sink = ob
	si, err := wire.AppendServerInfoShared(nil, &shared, wire.ServerInfo{Version: wire.ProtocolVersion})
	if err != nil {
		panic("client: ServerInfo: " + err.Error()) // JSON of a fixed struct
	}

	ca := &clientActor{sys: sys, conn: c, netConn: conn, outbox: ob, since: since, serverInfo: si}
	props, mbox := sys.PropsFor(actors.ActorClient, c.ID, func() actor.Actor { return ca })
	c.Mailbox = mbox
	c.PID = sys.Root.SpawnPrefix(props, "client")

	stats := sys.Stats
	stats.Accepts.Add(1)
	stats.CurrentConns.Add(1)
	if a.NotIdeal {
		stats.NotIdealConns.Add(1)
	}
	if a.WebSocket {
		stats.WebSocketAccepts.Add(1)
	}
	// The client actor starts the writer, with ServerInfo first, once the
	// registry confirms the registration.
	sys.Send(sys.Registry, &actors.Register{Conn: c})
	connLog(sys, c).Info().Str("nodekey", key.String()).Bool("mesh", canMesh).Bool("prober", info.IsProber).
		Bool("fast_start", a.FastStart).Bool("websocket", a.WebSocket).Bool("not_ideal", a.NotIdeal).
		Str("app", info.AppName).Msg("client connected")

	// The read loop gets a goroutine of its own, started with a small
	// stack: the handshake (NaCl, JSON, logging) ran deep on this one,
	// and an idle connection's reader should not keep that stack.
	var tally *actors.FlowTally
	if sys.Flows != nil {
		size := actors.DefaultFlowTallySize
		if canMesh {
			size = actors.MeshFlowTallySize
		}
		tally = actors.NewFlowTally(c.ID, size)
		sys.Send(sys.Flows, &actors.FlowTallyStarted{Tally: tally})
		ca.flows = tally
	}
	r := newReader(sys, c, ob, rd, tally)
	r.greetWait = cfg.handshakeTimeout()
	go func() {
		err := r.run()
		rd.Release()
		sys.Send(c.PID, &readerDone{err: err, notIdeal: a.NotIdeal})
	}()
}

// reject tells the rejects actor, if there is one, of one event.
func reject(sys *actors.System, ev actors.RejectEvent) {
	if sys.Rejects == nil {
		return
	}
	ev.Count = 1
	sys.Send(sys.Rejects, &actors.RejectBatch{Events: []actors.RejectEvent{ev}})
}

// connLog is the logger for one connection's events. It is built when a
// line is written rather than kept per connection: lines are rare, and a
// logger with context fields costs every idle connection memory.
func connLog(sys *actors.System, c *actors.Conn) *zerolog.Logger {
	l := sys.Log.With().Uint64("conn", c.ID).Str("key", c.Key.ShortString()).Str("addr", c.Addr.String()).Logger()
	return &l
}

// handshake writes ServerKey and reads and opens ClientInfo.
func handshake(cfg *Config, a Accepted) (wire.NodePublic, wire.ClientInfo, wire.SharedKey, *wire.Reader, error) {
	var info wire.ClientInfo
	var key wire.NodePublic
	var shared wire.SharedKey
	w := wire.NewWriter(a.Conn, a.MaxWrite)
	w.WriteServerKey(cfg.PublicKey)
	if err := w.Flush(); err != nil {
		return key, info, shared, nil, fmt.Errorf("writing ServerKey: %w", err)
	}
	w.Release()

	rd := wire.NewReader(a.Conn, a.Prefix, wire.MaxClientInfoLen)
	t, n, err := rd.ReadHeader()
	if err != nil {
		return key, info, shared, rd, fmt.Errorf("reading ClientInfo header: %w", err)
	}
	if t != wire.FrameClientInfo {
		return key, info, shared, rd, fmt.Errorf("first frame is %v, want ClientInfo", t)
	}
	if n < wire.MinClientInfoLen {
		return key, info, shared, rd, fmt.Errorf("ClientInfo of %d bytes is too short", n)
	}
	body, err := readGrowing(rd, int(n))
	if err != nil {
		return key, info, shared, rd, fmt.Errorf("reading ClientInfo: %w", err)
	}
	// One key derivation serves both opening ClientInfo and sealing
	// ServerInfo: it is most of a handshake's CPU.
	key, info, shared, err = wire.OpenClientInfo(body, cfg.PrivateKey)
	return key, info, shared, rd, err
}

// clientInfoChunk is how much of a ClientInfo body is read (and held) at a
// time. A real one is a few hundred bytes; a header may claim up to
// wire.MaxClientInfoLen, and memory is committed only as the bytes
// arrive, so a connection that claims much and sends little (thousands of
// them, in an attack) costs little.
const clientInfoChunk = 4 << 10

// readGrowing reads an n-byte body, growing its buffer as bytes arrive.
func readGrowing(rd *wire.Reader, n int) ([]byte, error) {
	body := make([]byte, 0, min(n, clientInfoChunk))
	for len(body) < n {
		k := min(n-len(body), clientInfoChunk)
		body = slices.Grow(body, k)[:len(body)+k]
		if err := rd.ReadFull(body[len(body)-k:]); err != nil {
			return nil, err
		}
	}
	return body, nil
}

func isMesh(cfg *Config, info wire.ClientInfo) bool {
	return !cfg.MeshKey.IsZero() && !info.MeshKey.IsZero() && info.MeshKey.Equal(cfg.MeshKey)
}

func presentFlags(mesh, prober, notIdeal bool) wire.PeerPresentFlags {
	var f wire.PeerPresentFlags
	if mesh {
		f |= wire.PeerPresentIsMeshPeer
	}
	if prober {
		f |= wire.PeerPresentIsProber
	}
	if notIdeal {
		f |= wire.PeerPresentNotIdeal
	}
	if f == 0 {
		f = wire.PeerPresentIsRegular
	}
	return f
}

// isBenign tells ordinary endings (the peer hung up, we closed) from
// errors an operator may want to look at.
func isBenign(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed) ||
		errors.Is(err, os.ErrDeadlineExceeded) || errors.Is(err, io.ErrUnexpectedEOF)
}

// logDisconnect writes the one line an operator sees when a client leaves.
// closeReason is why the server closed the connection, if it did: the
// reader's error then only says that the socket was closed.
func logDisconnect(log *zerolog.Logger, err error, closeReason string, lasted time.Duration) string {
	ev := log.Info()
	reason := "closed"
	switch {
	case err == nil:
	case errors.Is(err, io.EOF):
		reason = "client hung up"
	case errors.Is(err, net.ErrClosed):
		reason = "closed by server"
	case isProtocolError(err):
		ev = log.Warn()
		reason = "protocol violation"
	default:
		reason = "read error"
	}
	if err != nil {
		ev = ev.AnErr("error", err)
	}
	if closeReason != "" {
		ev = ev.Str("close_reason", closeReason)
	}
	ev.Str("reason", reason).Dur("duration", lasted).Msg("client disconnected")
	return reason
}
