package interop

import (
	"bytes"
	"fmt"
	"io"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/derpd/derpd/interop/harness"
	"github.com/derpd/derpd/wire"
	"tailscale.com/derp"
	"tailscale.com/types/key"
)

// Hostile clients, against derpd and (where the behaviour is shared)
// upstream derper: privileges only the mesh key grants, sources a client
// cannot forge, receivers that stop reading.

// WatchConns, ClosePeer and ForwardPacket are the mesh's: a client
// without the mesh key, or with a key that is not the server's, that
// sends one is closed before it takes effect (no watcher update, no peer
// closed, no packet forwarded), and derpd records the attempt on
// /debug/rejects. Nothing of the attackers outlives them.
func TestMeshPrivilegesNeedTheMeshKey(t *testing.T) {
	srv := start(t, harness.Options{MeshKey: harness.MeshKeyHex()})
	victim, target, sender := connect(t, srv), connect(t, srv), connect(t, srv)
	harness.VerifyNoLeaks(t, srv, 1)
	wrongKey := `,"meshKey":"` + harness.MeshKeyHex() + `"`
	var attackers []wire.NodePublic
	for _, presented := range []string{"", wrongKey} {
		name := map[string]string{"": "no mesh key", wrongKey: "a wrong mesh key"}[presented]
		t.Run(name, func(t *testing.T) {
			attacker := func() *harness.RawConn {
				rc := harness.DialRaw(t, srv, false)
				rc.Handshake(`{"version":2` + presented + `}`)
				attackers = append(attackers, rc.Pub)
				return rc
			}

			rc := attacker()
			rc.Frame(wire.FrameWatchConns, nil)
			rc.ExpectClosed(wire.FramePeerPresent, wire.FramePeerGone)

			rc = attacker()
			rc.Frame(wire.FrameClosePeer, keyBytes(victim.Pub))
			rc.ExpectClosed()
			if err := sender.Send(victim.Pub, []byte("still connected")); err != nil {
				t.Fatal(err)
			}
			victim.ExpectPacket(t, sender.Pub, []byte("still connected"))

			rc = attacker()
			body := append(append(keyBytes(victim.Pub), keyBytes(target.Pub)...), "forged"...)
			rc.Frame(wire.FrameForwardPacket, body)
			rc.ExpectClosed()
			// Had the forged packet been routed, it would be queued ahead
			// of this one, sent after the attacker was closed.
			if err := sender.Send(target.Pub, []byte("marker")); err != nil {
				t.Fatal(err)
			}
			target.ExpectPacket(t, sender.Pub, []byte("marker"))
		})
	}
	if srv.Kind != harness.Derpd {
		return
	}
	eventually(t, "every attempt on /debug/rejects", func() error {
		var p rejectsPage
		debugJSON(t, srv, "/debug/rejects", &p)
		for _, a := range attackers {
			found := false
			for _, r := range p.Rejects {
				found = found || (r.Peer == fromWire(a).String() && r.Reason == "non_mesh_privilege" && r.Count == 1)
			}
			if !found {
				return fmt.Errorf("no non_mesh_privilege for %v: %+v", fromWire(a).ShortString(), p.Rejects)
			}
		}
		return nil
	})
}

// No client can make another receive a packet from a source it is not:
// SendPacket's source is always the sender's own key, whatever the
// payload says; a ClientInfo that names someone else's key cannot be
// sealed without their private key, and is closed; a ForwardPacket,
// which does carry a source, is refused without the mesh key (above).
func TestSourcesCannotBeSpoofed(t *testing.T) {
	srv := start(t, harness.Options{MeshKey: harness.MeshKeyHex()})
	victim, target := connect(t, srv), connect(t, srv)
	harness.VerifyNoLeaks(t, srv, 1)

	// A payload shaped like a RecvPacket body from the victim.
	rc := harness.DialRaw(t, srv, false)
	rc.Handshake(`{"version":2}`)
	forged := append(keyBytes(victim.Pub), "from the victim, honest"...)
	rc.Frame(wire.FrameSendPacket, append(keyBytes(target.Pub), forged...))
	p := target.RecvPacket(t)
	if p.Source != fromWire(rc.Pub) || !bytes.Equal(p.Data, forged) {
		t.Fatalf("target got a packet from %v of %q, want the attacker %v as source and the payload verbatim",
			p.Source.ShortString(), p.Data, fromWire(rc.Pub).ShortString())
	}

	// A ClientInfo that claims the victim's key, sealed with the
	// attacker's own.
	imp := harness.DialRaw(t, srv, false)
	imp.ReadServerKey()
	body := wire.Seal(keyBytes(victim.Pub), []byte(`{"version":2}`), imp.Priv, imp.Server)
	imp.Frame(wire.FrameClientInfo, body)
	imp.ExpectClosed(wire.FrameServerInfo)
	// The victim still receives: it was not displaced by the impostor.
	if err := target.Send(victim.Pub, []byte("to the real victim")); err != nil {
		t.Fatal(err)
	}
	victim.ExpectPacket(t, target.Pub, []byte("to the real victim"))
}

// Receivers that stop reading, flooded by several senders at once: each
// costs its queue and no more (the server's heap never grows beyond
// receivers × queue depth × packet size, plus a write buffer each and a
// fixed slack), each is cut off by the write deadline (-tcp-write-timeout,
// 2 s), and a healthy pair meanwhile gets every one of its packets, in
// order. (How the pair's round trips fare is derpbench's -only stalled;
// here only what is certain is asserted.)
func TestStalledReceiversCostTheirQueuesAndAreCutOff(t *testing.T) {
	const (
		stalled   = 40
		senders   = 4
		payload   = 16000    // just under derpd's 16 KiB packet class
		packetMem = 16 << 10 // what one such queued packet holds, at most
		depth     = 32       // both servers' per-client queue
		// Per receiver besides its queue: a write buffer (derpd's is one
		// largest frame, 64 KiB) and its connection's state.
		perReceiver = 96 << 10
		slack       = 12 << 20
	)
	srv := start(t, harness.Options{})
	a, b := connect(t, srv), connect(t, srv)
	exchange(t, a, b, "before the flood")
	leaks := harness.VerifyNoLeaks(t, srv, 1)
	heap0 := heapInUse(t, srv)

	var dsts []wire.NodePublic
	var stalls []*harness.RawConn
	for range stalled {
		rc := harness.DialRaw(t, srv, false)
		rc.Conn.(*net.TCPConn).SetReadBuffer(4096)
		rc.Handshake(`{"version":2}`)
		stalls = append(stalls, rc)
		dsts = append(dsts, rc.Pub)
	}
	var floods []*harness.RawConn
	for range senders {
		rc := harness.DialRaw(t, srv, false)
		rc.Handshake(`{"version":2}`)
		floods = append(floods, rc)
	}
	want := float64(2 + senders)
	if srv.Metric(t, "derp_current_connections") != want+stalled {
		t.Fatalf("%v connections, want %v", srv.Metric(t, "derp_current_connections"), want+stalled)
	}

	// The flood: every sender, round robin over every stalled receiver,
	// until they are all gone.
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var flooded atomic.Int64
	for i, rc := range floods {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var batch []byte
			pl := bytes.Repeat([]byte{byte(i)}, payload)
			for _, d := range dsts {
				batch = wire.AppendHeader(batch, wire.FrameSendPacket, uint32(wire.KeyLen+payload))
				batch = append(append(batch, d[:]...), pl...)
			}
			for {
				select {
				case <-stop:
					return
				default:
				}
				rc.Conn.SetWriteDeadline(time.Now().Add(harness.Wait))
				if _, err := rc.Conn.Write(batch); err != nil {
					t.Errorf("sender %d: %v", i, err)
					return
				}
				flooded.Add(int64(len(dsts)))
			}
		}()
	}

	// Meanwhile the healthy pair, packet after packet, each of which must
	// be the next to arrive.
	var healthy atomic.Int64
	healthyErr := make(chan error, 1)
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 0; ; i++ {
			select {
			case <-stop:
				healthyErr <- nil
				return
			default:
			}
			msg := []byte("healthy " + strconv.Itoa(i))
			if err := a.Send(b.Pub, msg); err != nil {
				healthyErr <- err
				return
			}
			m, err := b.NextErr()
			if p, ok := m.(derp.ReceivedPacket); err != nil || !ok || p.Source != a.Pub || !bytes.Equal(p.Data, msg) {
				healthyErr <- fmt.Errorf("healthy packet %d: got %T %+v, %v", i, m, m, err)
				return
			}
			healthy.Add(1)
		}
	}()
	// And the heap, at its highest, until the stalled receivers are cut
	// off.
	maxHeap := heap0
	floodStart := time.Now()
	deadline := floodStart.Add(harness.Wait)
	for srv.Metric(t, "derp_current_connections") > want {
		maxHeap = max(maxHeap, heapInUse(t, srv))
		if time.Now().After(deadline) {
			t.Fatal("stalled receivers still connected")
		}
	}
	cutOff := time.Since(floodStart)
	close(stop)
	wg.Wait()
	if err := <-healthyErr; err != nil {
		t.Fatal(err)
	}

	bound := float64(stalled*(depth*packetMem+perReceiver) + slack)
	grew := maxHeap - heap0
	t.Logf("%s: %d packets of %d bytes flooded at %d stalled receivers; heap grew at most %.1f MiB (bound %.1f MiB, queues alone %.1f MiB); the healthy pair exchanged %d packets meanwhile; all cut off %v after the flood began",
		srv.Kind, flooded.Load(), payload, stalled, grew/(1<<20), bound/(1<<20), float64(stalled*depth*packetMem)/(1<<20), healthy.Load(), cutOff.Round(time.Millisecond))
	// The bound is derpd's: derper keeps more per stalled receiver
	// (about 1.4 MiB each here), which the log line shows.
	if srv.Kind == harness.Derpd && grew > bound {
		t.Errorf("heap grew %.1f MiB with %d stalled receivers, bound %.1f MiB", grew/(1<<20), stalled, bound/(1<<20))
	}
	if srv.Kind == harness.Derpd {
		if n := srv.Metric(t, "derp_sclient_write_timeouts"); n != stalled {
			t.Errorf("%v write timeouts, want one per stalled receiver (%d)", n, stalled)
		}
	}
	for _, rc := range append(stalls, floods...) {
		rc.Conn.Close()
	}
	exchange(t, a, b, "after the flood")
	srv.WaitMetric(t, "derp_current_connections", 2)
	leaks.Check(t, 1)
}

// heapInUse is the server's live heap: it asks for a collection first
// (both servers serve /debug/gc to loopback), so that garbage the flood
// has not yet had collected does not count, then reads Go's memstats.
func heapInUse(t *testing.T, srv *harness.Server) float64 {
	t.Helper()
	res, err := srv.HTTPClient().Get(srv.BaseURL() + "/debug/gc")
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, res.Body)
	res.Body.Close()
	if srv.Kind == harness.Derper {
		return srv.Metric(t, "go_memstats_heap_inuse_bytes")
	}
	return srv.Metric(t, "memstats_heap_inuse")
}

// keyBytes is a key's 32 bytes, as frames carry it.
func keyBytes(k key.NodePublic) []byte {
	w := toWire(k)
	return w[:]
}
