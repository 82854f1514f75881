package actorkit

import (
	"errors"
	"net"
	"os"
	"sync"
	"time"

	"github.com/derpd/derpd/actors/client"
	"github.com/derpd/derpd/wire"
)

// Client is a real client connection: client.Serve runs the server side
// of an in-memory pipe (net.Pipe: every write waits for its read, so a
// client that stops reading stalls the server's writer at once), and the
// kit speaks DERP on the other end with the wire package. Frames the
// server writes are decoded as they arrive and kept for Take; frames the
// test sends are written by a goroutine of the client's, so a test never
// blocks on a server that is waiting for an actor the test has yet to
// step.
//
// Only Run's kits can Dial: the goroutines involved (Serve's reader and
// writer, the client's own) must be in the synctest bubble for Settle to
// wait for them.
type Client struct {
	Key  wire.NodePublic
	Priv wire.NodePrivate
	k    *Kit
	conn net.Conn // the client's end

	out chan []byte // frames to write, in order

	mu      sync.Mutex
	frames  []Frame
	ended   error         // why reading ended, once it has
	resume  chan struct{} // non-nil while stalled
	hungUp  bool          // Close: out is closed
	readEnd chan struct{} // closed when the reading goroutine returns
}

// Frame is one frame the server wrote.
type Frame struct {
	Type wire.FrameType
	Body []byte
}

// PeerGone decodes a PeerGone frame.
func (f Frame) PeerGone() (wire.NodePublic, wire.PeerGoneReason, bool) {
	if f.Type != wire.FramePeerGone || len(f.Body) < wire.KeyLen {
		return wire.NodePublic{}, 0, false
	}
	reason := wire.PeerGoneDisconnected
	if len(f.Body) > wire.KeyLen {
		reason = wire.PeerGoneReason(f.Body[wire.KeyLen])
	}
	return wire.NodePublic(f.Body[:wire.KeyLen]), reason, true
}

// RecvPacket decodes a RecvPacket frame.
func (f Frame) RecvPacket() (src wire.NodePublic, payload []byte, ok bool) {
	if f.Type != wire.FrameRecvPacket || len(f.Body) < wire.KeyLen {
		return src, nil, false
	}
	return wire.NodePublic(f.Body[:wire.KeyLen]), f.Body[wire.KeyLen:], true
}

// DialOption configures a dialled client.
type DialOption func(*dialConfig)

type dialConfig struct {
	priv *wire.NodePrivate
	info wire.ClientInfo
}

// WithPrivateKey dials with priv instead of a fresh key (a duplicate
// connection, a client moving).
func WithPrivateKey(priv wire.NodePrivate) DialOption {
	return func(c *dialConfig) { c.priv = &priv }
}

// WithClientInfo sends info as the ClientInfo (the mesh key, prober).
func WithClientInfo(info wire.ClientInfo) DialOption { return func(c *dialConfig) { c.info = info } }

// PrivateKey returns a node private key made from n, the same on every
// run.
func PrivateKey(n uint64) wire.NodePrivate {
	var k wire.NodePrivate
	z := n
	for i := 0; i < wire.KeyLen; i += 8 {
		z += 0x9e3779b97f4a7c15 // splitmix64
		x := z
		x = (x ^ x>>30) * 0xbf58476d1ce4e5b9
		x = (x ^ x>>27) * 0x94d049bb133111eb
		x ^= x >> 31
		for j := range 8 {
			k[i+j] = byte(x >> (8 * j))
		}
	}
	k[0] &= 248 // clamped, as X25519 wants
	k[31] = k[31]&127 | 64
	return k
}

// Dial connects a client through client.Serve, completes the handshake
// and settles: when it returns the client is registered and has read
// ServerInfo (which Take does not return). Its key is made from its
// connection number unless WithPrivateKey says otherwise. A handshake
// that fails fails the test.
func (k *Kit) Dial(opts ...DialOption) *Client {
	k.T.Helper()
	if !k.bubble {
		k.T.Fatal("actorkit: Dial needs a kit from Run")
	}
	var dc dialConfig
	for _, o := range opts {
		o(&dc)
	}
	r := k.region
	r.mu.Lock()
	r.addrs++
	n := r.addrs
	r.mu.Unlock()
	priv := PrivateKey(n)
	if dc.priv != nil {
		priv = *dc.priv
	}
	ours, theirs := net.Pipe()
	c := &Client{Key: priv.Public(), Priv: priv, k: k, conn: ours, out: make(chan []byte, 1024), readEnd: make(chan struct{})}
	r.mu.Lock()
	r.conns = append(r.conns, c)
	r.mu.Unlock()
	go client.Serve(k.Sys, k.Server, client.Accepted{Conn: theirs, Addr: addr(n)})

	rd := wire.NewReader(stallable{c}, nil, 1<<20)
	typ, body, err := readFrame(rd)
	if err != nil || typ != wire.FrameServerKey {
		k.T.Fatalf("actorkit: first frame %v (%v), want ServerKey", typ, err)
	}
	if key, err := wire.ParseServerKey(body); err != nil || key != k.Server.PublicKey {
		k.T.Fatalf("actorkit: ServerKey %v (%v), want %v", key, err, k.Server.PublicKey)
	}
	info, err := wire.AppendClientInfo(nil, priv, k.Server.PublicKey, dc.info)
	if err != nil {
		k.T.Fatal(err)
	}
	go c.write()
	c.queue(wire.FrameClientInfo, info)
	go c.read(rd)
	k.Settle()
	frames := c.Take()
	if len(frames) == 0 || frames[0].Type != wire.FrameServerInfo {
		k.T.Fatalf("actorkit: after ClientInfo got %v, want ServerInfo", frames)
	}
	if _, err := wire.ParseServerInfo(frames[0].Body, k.Server.PublicKey, priv); err != nil {
		k.T.Fatalf("actorkit: ServerInfo: %v", err)
	}
	c.mu.Lock()
	c.frames = append(frames[1:], c.frames...)
	c.mu.Unlock()
	return c
}

func readFrame(rd *wire.Reader) (wire.FrameType, []byte, error) {
	typ, n, err := rd.ReadHeader()
	if err != nil {
		return 0, nil, err
	}
	body := make([]byte, n)
	return typ, body, rd.ReadFull(body)
}

// stallable reads the client's end of the pipe, but not while the
// client is stalled: Stall cuts short a read under way (with a deadline
// in the past, which takes no data), and the read starts again on Resume.
type stallable struct{ c *Client }

func (s stallable) Read(p []byte) (int, error) {
	c := s.c
	for {
		c.mu.Lock()
		resume := c.resume
		c.mu.Unlock()
		if resume != nil {
			<-resume
			continue
		}
		n, err := c.conn.Read(p)
		if n == 0 && errors.Is(err, os.ErrDeadlineExceeded) {
			continue // Stall interrupted the read; look again
		}
		return n, err
	}
}

// read decodes what the server writes until the connection ends.
func (c *Client) read(rd *wire.Reader) {
	defer close(c.readEnd)
	defer rd.Release()
	for {
		typ, body, err := readFrame(rd)
		c.mu.Lock()
		if err != nil {
			c.ended = err
			c.mu.Unlock()
			return
		}
		c.frames = append(c.frames, Frame{Type: typ, Body: body})
		c.mu.Unlock()
	}
}

// write writes queued frames in order until the connection ends.
func (c *Client) write() {
	for b := range c.out {
		if _, err := c.conn.Write(b); err != nil {
			for range c.out { // drain: later frames cannot go either
			}
			return
		}
	}
}

func (c *Client) queue(t wire.FrameType, body []byte) {
	f := append(wire.AppendHeader(nil, t, uint32(len(body))), body...)
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.hungUp {
		return // a frame after Close goes nowhere, as on a closed socket
	}
	c.out <- f
}

// hangUp closes the socket and ends the writing goroutine, once.
func (c *Client) hangUp() {
	c.mu.Lock()
	if !c.hungUp {
		c.hungUp = true
		close(c.out)
	}
	c.mu.Unlock()
	c.conn.Close()
}

// Frame sends a raw frame; it goes out in order after everything sent
// before. It does not settle: call Settle (or a method that does).
func (c *Client) Frame(t wire.FrameType, body []byte) { c.queue(t, body) }

// SendPacket sends payload to dst and settles.
func (c *Client) SendPacket(dst wire.NodePublic, payload []byte) {
	c.queue(wire.FrameSendPacket, append(dst[:len(dst):len(dst)], payload...))
	c.k.Settle()
}

// Ping sends a Ping carrying data and settles.
func (c *Client) Ping(data [wire.PingDataLen]byte) {
	c.queue(wire.FramePing, data[:])
	c.k.Settle()
}

// WatchConns sends WatchConns (a mesh peer) and settles.
func (c *Client) WatchConns() {
	c.queue(wire.FrameWatchConns, nil)
	c.k.Settle()
}

// Take returns the frames the server wrote since the last Take.
func (c *Client) Take() []Frame {
	c.mu.Lock()
	defer c.mu.Unlock()
	f := c.frames
	c.frames = nil
	return f
}

// Stall stops reading, and settles: the server's next write to this
// client blocks, as with a receiver whose TCP window is full.
func (c *Client) Stall() {
	c.mu.Lock()
	if c.resume == nil {
		c.resume = make(chan struct{})
	}
	c.mu.Unlock()
	c.conn.SetReadDeadline(time.Unix(1, 0))
	c.k.Settle()
}

// Resume reads again after Stall, and settles.
func (c *Client) Resume() {
	c.mu.Lock()
	r := c.resume
	c.resume = nil
	c.mu.Unlock()
	if r != nil {
		c.conn.SetReadDeadline(time.Time{})
		close(r)
		c.k.Settle()
	}
}

// Close hangs up, as a client closing its socket, and settles: the
// server's reader ends and the client actor unregisters.
func (c *Client) Close() {
	c.hangUp()
	c.Resume()
	c.k.Settle()
}

// Ended reports why reading ended (the server closed the connection, or
// Close), nil while it goes on.
func (c *Client) Ended() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.ended
}

// Closed reports whether reading has ended: the server closed the
// connection, or Close was called.
func (c *Client) Closed() bool { return c.Ended() != nil }
