// Package client runs one DERP client connection: the handshake, the read
// loop that routes the client's packets, and the client actor that owns
// the connection's outbox and lifecycle.
package client

import (
	"context"
	"errors"
	"net/netip"
	"time"

	"github.com/derpd/derpd/wire"
)

// Tuning constants, each a compatibility or safety fact rather than a knob
// to turn for speed.
const (
	// HandshakeTimeout bounds sending ServerKey, reading ClientInfo and
	// admission together. Without it a client that connects and says
	// nothing would hold its socket and goroutine forever. It is the
	// default of Config.HandshakeTimeout.
	HandshakeTimeout = 10 * time.Second

	// DefaultWriteTimeout is how long a write to an ordinary client may
	// block before the client is considered stalled and disconnected.
	DefaultWriteTimeout = 2 * time.Second

	// MeshWriteTimeout is the same for mesh peers, which carry a whole
	// region's traffic and deserve more patience than one phone.
	MeshWriteTimeout = 30 * time.Second

	// KeepAliveInterval is the nominal keepalive period; clients consider
	// a link dead after twice this without any frame.
	KeepAliveInterval = 60 * time.Second

	// maxFrameAfterHandshake is the largest frame a client may announce
	// once connected: the reference client accepts nothing bigger, so
	// nothing legitimate is; bigger claims are closed rather than
	// skipped so that a client cannot make the server read megabytes of
	// padding.
	maxFrameAfterHandshake = 1 << 20

	// notHereRate and notHereBurst limit PeerGone(NotHere) replies per
	// connection, as upstream: a client sending disco to stale keys gets
	// a few hints, not a reply per packet.
	notHereRate  = time.Second
	notHereBurst = 3

	// activityWait bounds how long a duplicate connection's reader waits
	// for the registry to make it the active one.
	activityWait = 5 * time.Second

	// homeMoveGrace: NotePreferred changes within this long of connecting
	// are the client settling on its home, not moving it.
	homeMoveGrace = 5 * time.Second
)

// ErrRejected is returned by an Admit function to refuse a client.
var ErrRejected = errors.New("client not admitted")

// Config is what every connection of a server shares.
type Config struct {
	PrivateKey wire.NodePrivate
	PublicKey  wire.NodePublic
	MeshKey    wire.MeshKey // zero: no connection is privileged

	// WriteTimeout applies to ordinary clients; 0 disables it. Mesh peers
	// always get MeshWriteTimeout.
	WriteTimeout time.Duration
	KeepAlive    time.Duration // 0 means KeepAliveInterval
	QueueDepth   int           // per queue; 0 means 32

	// HandshakeTimeout is the handshake deadline; 0 means
	// HandshakeTimeout. derpd always uses the default; tests of hostile
	// handshakes shorten it so as not to wait ten seconds for each cut.
	HandshakeTimeout time.Duration

	// Admit, if set, decides whether a non-mesh client may connect. It
	// runs inside the handshake deadline (ctx carries it).
	Admit func(ctx context.Context, key wire.NodePublic, addr netip.AddrPort) error
}

func (c *Config) handshakeTimeout() time.Duration {
	if c.HandshakeTimeout > 0 {
		return c.HandshakeTimeout
	}
	return HandshakeTimeout
}

func (c *Config) keepAlive() time.Duration {
	if c.KeepAlive > 0 {
		return c.KeepAlive
	}
	return KeepAliveInterval
}
