package main

import (
	"bufio"
	"bytes"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/derpd/derpd/actors/journal"
	"github.com/derpd/derpd/actors/replay"
	"github.com/derpd/derpd/wire"
)

// varz returns one series of the live server's /debug/varz.
func varz(t *testing.T, p *inProcess, series string) int64 {
	t.Helper()
	res, err := http.Get(p.debugBase + "/debug/varz")
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	sc := bufio.NewScanner(res.Body)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), series+" "); ok {
			n, err := strconv.ParseFloat(v, 64)
			if err != nil {
				t.Fatal(err)
			}
			return int64(n)
		}
	}
	t.Fatalf("/debug/varz has no %s", series)
	return 0
}

// TestReplayOfLiveRecording records a relay session of derpd with
// -record (packets both ways, packets to a key nobody has, a client
// leaving before its peer, the shutdown), replays the journal with -max,
// and finds what the live server did: the packets the clients received,
// the unknown_dest drops it counted, and the frames its registry asked
// of the clients.
func TestReplayOfLiveRecording(t *testing.T) {
	path := filepath.Join(t.TempDir(), "live.journal")
	p := startInProcess(t, "-record", path, "-shutdown-spread", "0s")
	host := strings.TrimPrefix(p.base, "http://")
	a := dialDERP(t, host, wire.ClientInfo{Version: 2})
	b := dialDERP(t, host, wire.ClientInfo{Version: 2})

	send := func(from *rawClient, to wire.NodePublic, size int) {
		from.write(wire.FrameSendPacket, append(to[:len(to):len(to)], bytes.Repeat([]byte{'x'}, size)...))
	}
	received := 0
	expectPacket := func(c *rawClient) {
		t.Helper()
		if typ, _ := c.nextFrame(t); typ != wire.FrameRecvPacket {
			t.Fatalf("got %v, want RecvPacket", typ)
		}
		received++
	}
	for i := range 5 {
		send(a, b.pub, 100+i)
		expectPacket(b)
	}
	for range 2 {
		send(b, a.pub, 50)
		expectPacket(a)
	}
	nobody := wire.GenerateNodePrivate().Public()
	for range 3 {
		send(a, nobody, 40) // not disco: no PeerGone(NotHere) for it
	}
	// A Pong comes after a's reader handled every frame before the Ping.
	a.write(wire.FramePing, make([]byte, wire.PingDataLen))
	if typ, _ := a.nextFrame(t); typ != wire.FramePong {
		t.Fatalf("got %v, want Pong", typ)
	}
	liveUnknown := varz(t, p, `derp_packets_dropped{kind="other",reason="unknown_dest"}`)

	a.c.Close() // b heard from a: it is told a is gone
	typ, body := b.nextFrame(t)
	if typ != wire.FramePeerGone || !bytes.Equal(body[:wire.KeyLen], a.pub[:]) {
		t.Fatalf("got %v %x, want PeerGone for a", typ, body)
	}
	p.cancel()
	p.cancel = nil
	b.expectRestarting(t, defaultRestartReconnectIn, defaultRestartTryFor)
	if err := <-p.done; err != nil {
		t.Fatalf("run returned %v", err)
	}

	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	jr, err := journal.Open(f)
	if err != nil {
		t.Fatal(err)
	}
	rep, err := replay.Run(jr, replay.Options{Max: true})
	if err != nil {
		t.Fatal(err)
	}
	if rep.Unknown != 0 || rep.Late != 0 {
		t.Errorf("%d inputs named unknown connections, %d records late; want none", rep.Unknown, rep.Late)
	}
	if rep.PacketsDelivered != int64(received) {
		t.Errorf("replay delivered %d packets; the clients received %d", rep.PacketsDelivered, received)
	}
	if got := rep.DroppedByReason["unknown_dest"]; got != liveUnknown || got != 3 {
		t.Errorf("replay dropped %d as unknown_dest; the live server counted %d (3 sent)", got, liveUnknown)
	}
	gone := wire.PeerGoneDisconnected.String()
	if rep.Recorded.Registered != 2 || rep.Recorded.PeerGone[gone] != 1 || rep.Recorded.Restarting != 1 {
		t.Errorf("recorded frames %+v; want 2 Registered, 1 PeerGone, 1 Restarting", rep.Recorded)
	}
	if rep.Produced.Registered != rep.Recorded.Registered || rep.Produced.PeerGone[gone] != rep.Recorded.PeerGone[gone] ||
		rep.Produced.Restarting != rep.Recorded.Restarting || rep.Produced.CloseConn != rep.Recorded.CloseConn {
		t.Errorf("produced frames %+v, recorded %+v", rep.Produced, rep.Recorded)
	}
	t.Logf("replay of the live journal:\n%s", rep)

	// Ten times the clients: ten times what they did.
	if _, err := f.Seek(0, 0); err != nil {
		t.Fatal(err)
	}
	jr, err = journal.Open(f)
	if err != nil {
		t.Fatal(err)
	}
	ten, err := replay.Run(jr, replay.Options{Max: true, Scale: 10})
	if err != nil {
		t.Fatal(err)
	}
	if ten.PacketsDelivered != 10*rep.PacketsDelivered || ten.DroppedByReason["unknown_dest"] != 30 ||
		ten.Produced.PeerGone[gone] != 10 || ten.Produced.Registered != 20 {
		t.Errorf("-scale 10: delivered %d, dropped %v, produced %+v; want 10x the replay at scale 1", ten.PacketsDelivered, ten.DroppedByReason, ten.Produced)
	}
}
