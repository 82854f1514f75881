package main

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/derpd/derpd/actors"
	"github.com/derpd/derpd/actors/journal"
	"github.com/derpd/derpd/wire"
	"github.com/rs/zerolog"
)

// TestRecordJournalsARelaySession runs derpd with -record on loopback,
// relays packets between two clients, stops it as SIGTERM would, and
// reads the journal back: both registrations, every packet with its size
// and true source, and both departures.
func TestRecordJournalsARelaySession(t *testing.T) {
	t.Run("sizes", func(t *testing.T) { testRecordSession(t, false) })
	t.Run("payloads", func(t *testing.T) { testRecordSession(t, true) })
}

func testRecordSession(t *testing.T, payloads bool) {
	path := filepath.Join(t.TempDir(), "derpd.journal")
	p := startInProcess(t, "-record", path, "-shutdown-spread", "0s", fmt.Sprintf("-record-payloads=%v", payloads))
	host := strings.TrimPrefix(p.base, "http://")
	a := dialDERP(t, host, wire.ClientInfo{Version: 2})
	b := dialDERP(t, host, wire.ClientInfo{Version: 2})

	send := func(from, to *rawClient, size int) {
		t.Helper()
		payload := bytes.Repeat([]byte{byte(size)}, size)
		from.write(wire.FrameSendPacket, append(to.pub[:len(to.pub):len(to.pub)], payload...))
		typ, body := to.nextFrame(t)
		if typ != wire.FrameRecvPacket || len(body) != wire.KeyLen+size {
			t.Fatalf("got %v of %d bytes, want RecvPacket of %d", typ, len(body), wire.KeyLen+size)
		}
	}
	type sent struct {
		src, dst wire.NodePublic
		size     int
	}
	var want []sent
	for _, size := range []int{1, 100, 1200} {
		send(a, b, size)
		want = append(want, sent{a.pub, b.pub, size})
	}
	send(b, a, 64)
	want = append(want, sent{b.pub, a.pub, 64})

	p.cancel()
	p.cancel = nil
	a.expectRestarting(t, defaultRestartReconnectIn, defaultRestartTryFor)
	b.expectRestarting(t, defaultRestartReconnectIn, defaultRestartTryFor)
	if err := <-p.done; err != nil {
		t.Fatalf("run returned %v", err)
	}

	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	r, err := journal.Open(f)
	if err != nil {
		t.Fatal(err)
	}
	if r.Header().Payloads != payloads {
		t.Errorf("header says payloads %v, want %v", r.Header().Payloads, payloads)
	}
	registered := map[wire.NodePublic]uint64{}
	unregistered := map[wire.NodePublic]bool{}
	var packets []*journal.Record
	seen := map[string]int{} // records by target kind and type, for -v
	for {
		rec, err := r.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("reading the journal: %v", err)
		}
		name := fmt.Sprintf("%s %T", rec.Target.Kind, rec.Msg)
		if rec.Type == journal.TypeOpaque {
			name = fmt.Sprintf("%s opaque %s", rec.Target.Kind, rec.Note)
		}
		seen[name]++
		switch m := rec.Msg.(type) {
		case *actors.Register:
			registered[m.Conn.Key] = m.Conn.ID
		case *actors.Unregister:
			unregistered[m.Conn.Key] = true
		}
		if rec.Kind == journal.KindPacket {
			packets = append(packets, rec)
		}
	}
	t.Logf("records by target and type: %v", seen)
	for _, c := range []*rawClient{a, b} {
		if registered[c.pub] == 0 || !unregistered[c.pub] {
			t.Errorf("client %v: registered as %d, unregistered %v", c.pub.ShortString(), registered[c.pub], unregistered[c.pub])
		}
	}
	// One reader's packets are in the order it routed them; the two
	// readers' buffers may reach the file in either order.
	var got []sent
	for _, rec := range packets {
		pk := rec.Packet
		if pk.SrcConn != registered[pk.Src] || rec.Target.ID != pk.SrcConn {
			t.Errorf("packet record %+v: want from connection %d", rec, registered[pk.Src])
		}
		wantPayload := []byte(nil)
		if payloads {
			wantPayload = bytes.Repeat([]byte{byte(pk.Size)}, pk.Size)
		}
		if !bytes.Equal(pk.Payload, wantPayload) {
			t.Errorf("packet of %d bytes journaled with a payload of %d", pk.Size, len(pk.Payload))
		}
		got = append(got, sent{pk.Src, pk.Dst, pk.Size})
	}
	if len(got) != len(want) {
		t.Fatalf("%d packets journaled, want %d: %v", len(got), len(want), got)
	}
	for _, w := range want {
		found := false
		for i, g := range got {
			if g == w {
				got = append(got[:i], got[i+1:]...)
				found = true
				break
			}
		}
		if !found {
			t.Errorf("packet %v not journaled", w)
		}
	}
}

func TestRecordFlags(t *testing.T) {
	o, err := parseFlags(nil)
	if err != nil {
		t.Fatal(err)
	}
	if o.record != "" || o.recordMaxBytes != 1<<30 || o.recordPayloads {
		t.Errorf("defaults: -record %q, -record-max-bytes %d, -record-payloads %v; want off, 1 GiB, false", o.record, o.recordMaxBytes, o.recordPayloads)
	}
	expectRefused(t, []string{"-record", "x", "-record-max-bytes", "-1"}, "-record-max-bytes")
}

// A journal that cannot be created stops start-up, naming the flag.
func TestRecordUnwritableFile(t *testing.T) {
	o, err := parseFlags([]string{"-dev", "-record", filepath.Join(t.TempDir(), "missing", "dir", "j")})
	if err != nil {
		t.Fatal(err)
	}
	sys := actors.NewSystem(zerolog.Nop())
	if _, err := startRecording(o, sys, zerolog.Nop()); err == nil || !strings.HasPrefix(err.Error(), "-record: ") {
		t.Fatalf("err %v, want one naming -record", err)
	}
	if sys.Recorder != nil {
		t.Error("a recorder was set though the journal could not be made")
	}
}
