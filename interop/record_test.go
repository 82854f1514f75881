package interop

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"regexp"
	"strconv"
	"syscall"
	"testing"

	"github.com/derpd/derpd/actors/replay"
	"github.com/derpd/derpd/interop/harness"
	"github.com/derpd/derpd/wire"
	"tailscale.com/derp"
	"tailscale.com/types/key"
)

// TestRecordReplayOfTailscaleClients records a session of Tailscale's own
// DERP clients with derpd -record, replays the journal with derpd replay
// -max, and requires the replay to find what the live server counted:
// every packet the clients received delivered, every packet to a key
// nobody held dropped as unknown_dest, the same frames asked of the
// clients. Two -max replays must agree on every count, and -scale 10 must
// deliver ten times the packets. This is issue 12's proof with real
// clients; cmd/derpd's TestReplayOfLiveRecording is the same with ours.
func TestRecordReplayOfTailscaleClients(t *testing.T) {
	if harness.TargetFromEnv() != harness.Derpd {
		t.Skip("-record and derpd replay are derpd's")
	}
	journalPath := filepath.Join(t.TempDir(), "interop.journal")
	srv := start(t, harness.Options{Kind: harness.Derpd, Args: []string{"-record", journalPath}})

	const clients = 6
	cs := make([]*harness.Client, clients)
	for i := range cs {
		cs[i] = connect(t, srv)
	}
	received := make([]int, clients) // packets each client really got
	// expect receives len(payloads) packets at to, each from from and
	// one of payloads. Not in order: derpd queues disco packets apart
	// from the others, so that bulk data cannot hold path discovery up.
	expect := func(to, from int, payloads [][]byte) {
		t.Helper()
		want := map[string]int{}
		for _, p := range payloads {
			want[string(p)]++
		}
		for range payloads {
			p := cs[to].RecvPacket(t)
			if p.Source != cs[from].Pub || want[string(p.Data)] == 0 {
				t.Fatalf("client %d got %d bytes from %v; want one of client %d's %d packets", to, len(p.Data), p.Source.ShortString(), from, len(payloads))
			}
			want[string(p.Data)]--
			received[to]++
		}
	}
	send := func(from int, dst key.NodePublic, payload []byte) {
		t.Helper()
		if err := cs[from].Send(dst, payload); err != nil {
			t.Fatal(err)
		}
	}

	// Pairs (0,1), (2,3), (4,5), both ways, a different number of packets
	// each way and pair so that a count landing on the wrong side shows;
	// every third packet is disco-shaped, the rest plain.
	payload := func(pair, dir, i int) []byte {
		if i%3 == 0 {
			return disco(byte(i))
		}
		return []byte(fmt.Sprintf("pair %d dir %d packet %d", pair, dir, i))
	}
	for pair := range clients / 2 {
		a, b := 2*pair, 2*pair+1
		ab, ba := 4+pair, 2+2*pair
		var toB, toA [][]byte
		for i := range ab {
			toB = append(toB, payload(pair, 0, i))
			send(a, cs[b].Pub, toB[i])
		}
		expect(b, a, toB)
		for i := range ba {
			toA = append(toA, payload(pair, 1, i))
			send(b, cs[a].Pub, toA[i])
		}
		expect(a, b, toA)
	}

	// Packets to a key nobody holds: plain ones are dropped silently; a
	// disco one is also answered with PeerGone(NotHere), the only way to
	// see that the server is done with them.
	nobody := harness.NewKey()
	unknownSent := 0
	for i := range clients {
		for range i + 1 {
			send(i, nobody, []byte("to nobody"))
			unknownSent++
		}
	}
	send(2, nobody, disco(0xee))
	unknownSent++
	cs[2].ExpectPeerGone(t, nobody, derp.PeerGoneReasonNotHere)
	for i := range cs {
		cs[i].Sync(t) // its reader handled every frame it sent before the ping
	}

	// One of each pair leaves before its peer, in turn: the peer heard
	// from it, so it is told. Every pair is apart before the shutdown, so
	// that the shutdown sends no PeerGone: one it sent would reach a peer
	// or not by a race of the two clients' actors that the journal
	// cannot decide (see docs/replay.md), and the counts compared below
	// would vary from run to run.
	for pair := range clients / 2 {
		leaver, peer := 2*pair, 2*pair+1
		cs[leaver].Close()
		cs[peer].ExpectPeerGone(t, cs[leaver].Pub, derp.PeerGoneReasonDisconnected)
	}
	// What 1 sends to 0 now has no destination: unknown_dest as well,
	// and in the journal after 0's Unregister.
	for range 2 {
		send(1, cs[0].Pub, []byte("to the departed"))
		unknownSent++
	}
	cs[1].Sync(t)

	totalReceived := 0
	for _, n := range received {
		totalReceived += n
	}
	// The sent counter is folded in after the writer's flush, which may
	// be a moment after the client read the packets: wait for it.
	srv.WaitMetric(t, "derp_packets_sent", float64(totalReceived))
	live := liveCounts(t, srv)
	if live.unknownDest != int64(unknownSent) {
		t.Fatalf("the live server counted %d unknown_dest drops; %d packets went to keys nobody held", live.unknownDest, unknownSent)
	}
	if live.received != int64(totalReceived+unknownSent) {
		t.Fatalf("the live server received %d packets; the clients sent %d", live.received, totalReceived+unknownSent)
	}
	t.Logf("live: %d packets received, %d sent, %d dropped as unknown_dest; clients received %v", live.received, live.sent, live.unknownDest, received)

	// SIGTERM: derpd closes the connections, then flushes and closes the
	// journal with its end record.
	if err := srv.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	<-srv.Exited()
	if err := srv.ExitErr(); err != nil {
		t.Fatalf("derpd exited with %v on SIGTERM\n%s", err, srv.Output())
	}

	rep, raw := runReplay(t, journalPath)
	t.Logf("replay -max -json:\n%s", raw)
	if rep.Unknown != 0 || rep.Late != 0 || rep.Notes != 0 {
		t.Errorf("%d inputs named unknown connections, %d records late, %d notes; want none", rep.Unknown, rep.Late, rep.Notes)
	}
	if rep.PacketsDelivered != int64(totalReceived) || rep.PacketsDelivered != live.sent {
		t.Errorf("replay delivered %d packets; the clients received %d, the live server sent %d", rep.PacketsDelivered, totalReceived, live.sent)
	}
	if got := rep.DroppedByReason["unknown_dest"]; got != live.unknownDest {
		t.Errorf("replay dropped %d as unknown_dest; the live server counted %d", got, live.unknownDest)
	}
	if rep.PacketsDropped != live.unknownDest || rep.PacketsForwarded != 0 {
		t.Errorf("replay dropped %d packets (%v) and forwarded %d; want only the %d unknown_dest", rep.PacketsDropped, rep.DroppedByReason, rep.PacketsForwarded, live.unknownDest)
	}
	if rep.PacketRecords != live.received {
		t.Errorf("the journal holds %d packets; the live server received %d", rep.PacketRecords, live.received)
	}
	// Every client sent and was sent packets: all six were receivers.
	if rep.Receivers != clients {
		t.Errorf("replay delivered to %d connections, want %d", rep.Receivers, clients)
	}
	goneKey := wire.PeerGoneDisconnected.String()
	// Each peer was told its pair left; the three still connected at
	// SIGTERM were told the server restarts, and closed.
	if want := (replay.ClientFrames{Registered: clients, PeerGone: map[string]int64{goneKey: clients / 2},
		CloseConn: clients / 2, Restarting: clients / 2}); !reflect.DeepEqual(rep.Recorded, want) {
		t.Errorf("recorded frames %+v; want %+v", rep.Recorded, want)
	}
	if !reflect.DeepEqual(rep.Produced, rep.Recorded) {
		t.Errorf("the fresh registry asked for frames %+v; the live one %+v", rep.Produced, rep.Recorded)
	}

	// A second -max replay agrees on every count.
	again, _ := runReplay(t, journalPath)
	if a, b := rep.Counts(), again.Counts(); !reflect.DeepEqual(a, b) {
		t.Errorf("two -max replays differ:\n%+v\n%+v", a, b)
	}

	// Ten clones of every client do ten times what it did.
	ten, _ := runReplay(t, journalPath, "-scale", "10")
	if ten.PacketsDelivered != 10*rep.PacketsDelivered || ten.DroppedByReason["unknown_dest"] != 10*live.unknownDest {
		t.Errorf("-scale 10: delivered %d, dropped %v; want %d delivered, %d unknown_dest", ten.PacketsDelivered, ten.DroppedByReason, 10*rep.PacketsDelivered, 10*live.unknownDest)
	}
	if p, r := ten.Produced, rep.Recorded; p.Registered != 10*r.Registered || p.PeerGone[goneKey] != 10*r.PeerGone[goneKey] ||
		p.Restarting != 10*r.Restarting || p.CloseConn != 10*r.CloseConn {
		t.Errorf("-scale 10: produced frames %+v; want ten times %+v", p, r)
	}

	// A journal cut short (a crash, a copy in progress) is replayed up to
	// the cut, and the error names where it stops.
	full, err := os.ReadFile(journalPath)
	if err != nil {
		t.Fatal(err)
	}
	cutPath := filepath.Join(t.TempDir(), "cut.journal")
	cut := len(full) / 2
	if err := os.WriteFile(cutPath, full[:cut], 0o600); err != nil {
		t.Fatal(err)
	}
	stdout, stderr, err := replayCommand(t, cutPath)
	var exit *exec.ExitError
	if !errors.As(err, &exit) || exit.ExitCode() != 1 {
		t.Fatalf("replay of a journal cut at %d of %d bytes: %v, want exit status 1\n%s", cut, len(full), err, stderr)
	}
	m := regexp.MustCompile(`journal: offset (\d+): `).FindSubmatch(stderr)
	if m == nil {
		t.Fatalf("replay of a cut journal says %q; want the offset named", stderr)
	}
	if off, _ := strconv.Atoi(string(m[1])); off > cut {
		t.Errorf("error names offset %d, past the cut at %d: %s", off, cut, stderr)
	}
	var partial replay.Report
	if err := json.Unmarshal(stdout, &partial); err != nil {
		t.Fatalf("replay of a cut journal printed no report: %v\n%s", err, stdout)
	}
	if partial.Records == 0 || partial.Records >= rep.Records {
		t.Errorf("the cut journal replayed %d records of %d; want some, not all", partial.Records, rep.Records)
	}
	t.Logf("cut at %d of %d bytes: %d of %d records, then %s", cut, len(full), partial.Records, rep.Records, bytes.TrimSpace(stderr))
}

// recordLiveCounts are the live server's packet counters.
type recordLiveCounts struct {
	received, sent, unknownDest int64
}

func liveCounts(t *testing.T, srv *harness.Server) recordLiveCounts {
	t.Helper()
	m, err := srv.Metrics()
	if err != nil {
		t.Fatal(err)
	}
	get := func(series string) int64 {
		v, ok := m[harness.NormalizeSeries(series)]
		if !ok {
			t.Fatalf("derpd exports no %s", series)
		}
		return int64(v)
	}
	return recordLiveCounts{
		received: get("derp_packets_received"),
		sent:     get("derp_packets_sent"),
		unknownDest: get(`derp_packets_dropped{kind="other",reason="unknown_dest"}`) +
			get(`derp_packets_dropped{kind="disco",reason="unknown_dest"}`),
	}
}

// runReplay runs derpd replay -max -json on path and decodes its report.
func runReplay(t *testing.T, path string, args ...string) (*replay.Report, []byte) {
	t.Helper()
	stdout, stderr, err := replayCommand(t, path, args...)
	if err != nil {
		t.Fatalf("derpd replay %v: %v\n%s", args, err, stderr)
	}
	var rep replay.Report
	if err := json.Unmarshal(stdout, &rep); err != nil {
		t.Fatalf("derpd replay -json: %v\n%s", err, stdout)
	}
	return &rep, stdout
}

// replayCommand runs the derpd binary the harness built as derpd replay
// -max -json [args] path.
func replayCommand(t *testing.T, path string, args ...string) (stdout, stderr []byte, err error) {
	t.Helper()
	bin, err := harness.Binary(harness.Derpd)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, append(append([]string{"replay", "-max", "-json"}, args...), path)...)
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err = cmd.Run()
	return out.Bytes(), errOut.Bytes(), err
}
