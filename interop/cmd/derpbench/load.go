package main

import (
	"bufio"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/derpd/derpd/wire"
)

// rawClient is a lean DERP client: the handshake, then either a sender
// writing prebuilt SendPacket frames or a receiver counting RecvPacket
// frames. It exists so that the load generator costs far less CPU than
// the server it loads (Tailscale's client library would be the bottleneck).
type rawClient struct {
	conn net.Conn
	br   *bufio.Reader
	priv wire.NodePrivate
	pub  wire.NodePublic
	got  atomic.Int64 // RecvPackets this client has read, for path probes
}

// dialRaw connects to addr over plain TCP and completes the DERP
// handshake.
func dialRaw(addr string) (*rawClient, error) { return dialRawTLS(addr, "") }

// dialRawTLS is dialRaw over TLS when serverName is set (the chain is not
// verified: the benchmark's certificate is its own).
func dialRawTLS(addr, serverName string) (*rawClient, error) {
	if serverName == "" {
		return dialRawConfig(addr, nil)
	}
	return dialRawConfig(addr, &tls.Config{ServerName: serverName, InsecureSkipVerify: true})
}

// dialRawConfig is dialRaw over TLS with config, or plain TCP if it is
// nil.
func dialRawConfig(addr string, config *tls.Config) (*rawClient, error) {
	c, err := net.DialTimeout("tcp", addr, 10*time.Second)
	if err != nil {
		return nil, err
	}
	c.SetDeadline(time.Now().Add(20 * time.Second))
	if config != nil {
		tc := tls.Client(c, config)
		if err := tc.Handshake(); err != nil {
			c.Close()
			return nil, err
		}
		c = tc
	}
	priv := wire.GenerateNodePrivate()
	rc := &rawClient{conn: c, br: bufio.NewReaderSize(c, 64<<10), priv: priv, pub: priv.Public()}
	if err := rc.handshake(addr); err != nil {
		c.Close()
		return nil, err
	}
	c.SetDeadline(time.Time{})
	return rc, nil
}

func (rc *rawClient) handshake(addr string) error {
	if _, err := io.WriteString(rc.conn, "GET /derp HTTP/1.1\r\nHost: "+addr+"\r\nUpgrade: DERP\r\nConnection: Upgrade\r\n\r\n"); err != nil {
		return err
	}
	res, err := http.ReadResponse(rc.br, nil)
	if err != nil {
		return err
	}
	if res.StatusCode != http.StatusSwitchingProtocols {
		return fmt.Errorf("upgrade: %s", res.Status)
	}
	typ, body, err := rc.readFrame()
	if err != nil {
		return err
	}
	if typ != wire.FrameServerKey {
		return fmt.Errorf("first frame %v", typ)
	}
	server, err := wire.ParseServerKey(body)
	if err != nil {
		return err
	}
	ci, err := wire.AppendClientInfo(nil, rc.priv, server, wire.ClientInfo{Version: 2, CanAckPings: true})
	if err != nil {
		return err
	}
	if _, err := rc.conn.Write(append(wire.AppendHeader(nil, wire.FrameClientInfo, uint32(len(ci))), ci...)); err != nil {
		return err
	}
	for {
		typ, body, err := rc.readFrame()
		if err != nil {
			return err
		}
		if typ == wire.FrameServerInfo {
			_, err := wire.ParseServerInfo(body, server, rc.priv)
			return err
		}
	}
}

func (rc *rawClient) readFrame() (wire.FrameType, []byte, error) {
	var hdr [wire.HeaderLen]byte
	if _, err := io.ReadFull(rc.br, hdr[:]); err != nil {
		return 0, nil, err
	}
	typ, n := wire.ParseHeader(hdr[:])
	if n > 1<<20 {
		return 0, nil, errors.New("frame too large")
	}
	body := make([]byte, n)
	_, err := io.ReadFull(rc.br, body)
	return typ, body, err
}

func (rc *rawClient) Close() { rc.conn.Close() }

// receive counts RecvPacket frames until the connection ends, skipping
// their bodies without copying them out of the read buffer.
func (rc *rawClient) receive(packets, bytes *atomic.Int64) {
	var hdr [wire.HeaderLen]byte
	for {
		if _, err := io.ReadFull(rc.br, hdr[:]); err != nil {
			return
		}
		typ, n := wire.ParseHeader(hdr[:])
		if _, err := rc.br.Discard(int(n)); err != nil {
			return
		}
		if typ == wire.FrameRecvPacket {
			packets.Add(1)
			bytes.Add(int64(n) - wire.KeyLen)
			rc.got.Add(1)
		}
	}
}

// sendPattern builds one batch of frames: for each destination in
// pattern, a SendPacket with size bytes of payload.
func sendPattern(pattern []wire.NodePublic, size int) []byte {
	payload := make([]byte, size)
	for i := range payload {
		payload[i] = byte(i)
	}
	var out []byte
	for _, dst := range pattern {
		out = wire.AppendHeader(out, wire.FrameSendPacket, uint32(wire.KeyLen+size))
		out = append(out, dst[:]...)
		out = append(out, payload...)
	}
	return out
}

// sender writes a repeating pattern of frames at a target rate (packets
// per second; 0 means as fast as the socket takes them) until stop.
type sender struct {
	rc      *rawClient
	pattern []byte // frames for perPattern packets
	per     int    // packets in pattern
	rate    float64
	sent    atomic.Int64 // packets written
}

// maxBacklog bounds how far a paced sender catches up after being held
// back: a relay that pushed back for a second does not get a second's
// worth of packets in one burst.
const maxBacklog = 20 * time.Millisecond

func (s *sender) run(stop <-chan struct{}, wg *sync.WaitGroup) {
	defer wg.Done()
	if s.rate <= 0 {
		// Unpaced: several patterns per write, as fast as possible.
		batch := make([]byte, 0, 64<<10)
		n := 0
		for len(batch)+len(s.pattern) <= cap(batch) || n == 0 {
			batch = append(batch, s.pattern...)
			n += s.per
		}
		for {
			select {
			case <-stop:
				return
			default:
			}
			if _, err := s.rc.conn.Write(batch); err != nil {
				return
			}
			s.sent.Add(int64(n))
		}
	}
	// One buffer big enough for the largest catch-up, sliced per tick.
	// The backlog is at least one pattern, or slow senders never send.
	backlog := max(s.rate*maxBacklog.Seconds(), float64(s.per))
	maxReps := int(backlog/float64(s.per)) + 2
	big := make([]byte, 0, maxReps*len(s.pattern))
	for range maxReps {
		big = append(big, s.pattern...)
	}
	// Tick every millisecond for fast senders; slow ones (1,000 pairs
	// share the rate) tick about once per packet, up to every 10 ms, so
	// the load generator does not spend its CPU on timers.
	interval := min(max(time.Millisecond, time.Duration(float64(s.per)/s.rate*float64(time.Second))), 10*time.Millisecond)
	tick := time.NewTicker(interval)
	defer tick.Stop()
	start := time.Now()
	var done float64 // packets written so far, in pattern units of per
	for {
		select {
		case <-stop:
			return
		case now := <-tick.C:
			elapsed := now.Sub(start)
			due := s.rate * elapsed.Seconds()
			if behind := due - done; behind > backlog {
				done = due - backlog
			}
			reps := min(int((due-done)/float64(s.per)), maxReps)
			if reps <= 0 {
				continue
			}
			// A relay that pushes back blocks this write; the time lost
			// shows up as packets never offered, counted undelivered.
			if _, err := s.rc.conn.Write(big[:reps*len(s.pattern)]); err != nil {
				return
			}
			done += float64(reps * s.per)
			s.sent.Add(int64(reps * s.per))
		}
	}
}

// loadSpec describes a relay load: pairs of sender → receiver, plus
// optionally one stalled receiver every sender sends a share to, or a
// side receiver per pair that gets a share of its sender's packets.
type loadSpec struct {
	pairs      int
	rate       float64 // total packets per second over all senders; 0 = unpaced
	size       int
	stalledPer int // if > 0, every stalledPer-th packet goes to a receiver that never reads
	sidePer    int // if > 0, every sidePer-th packet goes to the pair's side receiver

	// dial connects one party of the load; nil dials the server startLoad
	// is given, over plain TCP. The mesh scenarios put each party on a
	// node of its own, over TLS. A load with its own dial also waits
	// until a packet from every sender has reached each of its receivers
	// before it starts: across a mesh a new key takes a moment to be
	// announced to the other nodes.
	dial func(party) (*rawClient, error)
}

// party is a role in a load.
type party int

const (
	partySender party = iota
	partyReceiver
	partySide
	partyStalled
)

// load is a running loadSpec.
type load struct {
	spec        loadSpec
	senders     []*sender
	receivers   []*rawClient
	sides       []*rawClient // side receivers, one per pair, if sidePer > 0
	stalled     *rawClient
	packets     atomic.Int64 // delivered to healthy receivers
	bytes       atomic.Int64
	sidePackets atomic.Int64 // delivered to side receivers
	sideBytes   atomic.Int64
	stop        chan struct{}
	wg          sync.WaitGroup
	rwg         sync.WaitGroup
}

func startLoad(addr string, spec loadSpec) (*load, error) {
	if spec.stalledPer > 0 && spec.sidePer > 0 {
		return nil, errors.New("a load has a stalled receiver or side receivers, not both")
	}
	l := &load{spec: spec, stop: make(chan struct{})}
	dial := spec.dial
	if dial == nil {
		dial = func(party) (*rawClient, error) { return dialRaw(addr) }
	}
	var err error
	if spec.stalledPer > 0 {
		if l.stalled, err = dial(partyStalled); err != nil {
			return nil, err
		}
		if tc, ok := l.stalled.conn.(*net.TCPConn); ok {
			tc.SetReadBuffer(4096)
		}
	}
	for range spec.pairs {
		snd, err := dial(partySender)
		if err != nil {
			l.close()
			return nil, err
		}
		// The sender is in l before its receivers are dialled, so that a
		// failed dial closes it too.
		s := &sender{rc: snd}
		l.senders = append(l.senders, s)
		rcv, err := dial(partyReceiver)
		if err != nil {
			l.close()
			return nil, err
		}
		l.receivers = append(l.receivers, rcv)
		pattern := []wire.NodePublic{rcv.pub}
		if every, other := max(spec.stalledPer, spec.sidePer), l.stalled; every > 0 {
			if spec.sidePer > 0 {
				side, err := dial(partySide)
				if err != nil {
					l.close()
					return nil, err
				}
				l.sides = append(l.sides, side)
				other = side
			}
			pattern = nil
			for i := range every {
				if i == every-1 {
					pattern = append(pattern, other.pub)
				} else {
					pattern = append(pattern, rcv.pub)
				}
			}
		}
		s.pattern, s.per = sendPattern(pattern, spec.size), len(pattern)
		if spec.rate > 0 {
			s.rate = spec.rate / float64(spec.pairs)
		}
	}
	for _, r := range l.receivers {
		l.rwg.Add(1)
		go func() {
			defer l.rwg.Done()
			r.receive(&l.packets, &l.bytes)
		}()
	}
	for _, r := range l.sides {
		l.rwg.Add(1)
		go func() {
			defer l.rwg.Done()
			r.receive(&l.sidePackets, &l.sideBytes)
		}()
	}
	if spec.dial != nil {
		if err := l.awaitPaths(15 * time.Second); err != nil {
			l.close()
			return nil, err
		}
	} else {
		// Let every receiver's registration settle before traffic starts.
		time.Sleep(100 * time.Millisecond)
	}
	for _, s := range l.senders {
		l.wg.Add(1)
		go s.run(l.stop, &l.wg)
	}
	return l, nil
}

// awaitPaths probes until every receiver (and side receiver) has got a
// packet from its sender. The probes are counted as delivered, but they
// arrive before any measured window starts.
func (l *load) awaitPaths(limit time.Duration) error {
	probe := func(to *rawClient) []byte { return sendPattern([]wire.NodePublic{to.pub}, 8) }
	deadline := time.Now().Add(limit)
	for {
		waiting := 0
		for i, s := range l.senders {
			for _, to := range []*rawClient{l.receivers[i], l.sideOf(i)} {
				if to == nil || to.got.Load() > 0 {
					continue
				}
				waiting++
				s.rc.conn.SetWriteDeadline(time.Now().Add(time.Second))
				_, err := s.rc.conn.Write(probe(to))
				s.rc.conn.SetWriteDeadline(time.Time{})
				if err != nil {
					return fmt.Errorf("probing pair %d: %w", i, err)
				}
			}
		}
		if waiting == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%d receivers got no packet from their senders within %v: no path across the mesh", waiting, limit)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (l *load) sideOf(i int) *rawClient {
	if i < len(l.sides) {
		return l.sides[i]
	}
	return nil
}

func (l *load) sent() int64 {
	var n int64
	for _, s := range l.senders {
		n += s.sent.Load()
	}
	return n
}

func (l *load) close() {
	select {
	case <-l.stop:
	default:
		close(l.stop)
	}
	for _, s := range l.senders {
		s.rc.Close()
	}
	l.wg.Wait()
	for _, r := range l.receivers {
		r.Close()
	}
	for _, r := range l.sides {
		r.Close()
	}
	if l.stalled != nil {
		l.stalled.Close()
	}
	l.rwg.Wait()
}
