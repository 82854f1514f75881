package main

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/derpd/derpd/actors"
	"github.com/derpd/derpd/actors/journal"
	"github.com/derpd/derpd/actors/replay"
)

// synthFile writes a small synthesized journal and returns its path.
func synthFile(t *testing.T, args ...string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "synth.jnl")
	var out, errs bytes.Buffer
	if code := runSynth(append(args, "-o", path), &out, &errs); code != 0 {
		t.Fatalf("synth exited %d: %s", code, errs.String())
	}
	return path
}

// replayJSON runs derpd replay -json and decodes its report.
func replayJSON(t *testing.T, args ...string) *replay.Report {
	t.Helper()
	var out, errs bytes.Buffer
	if code := runReplay(append([]string{"-json"}, args...), &out, &errs); code != 0 {
		t.Fatalf("replay %v exited %d: %s", args, code, errs.String())
	}
	var rep replay.Report
	if err := json.Unmarshal(out.Bytes(), &rep); err != nil {
		t.Fatalf("replay -json printed %q: %v", out.String(), err)
	}
	return &rep
}

var smallWorkload = []string{"-clients", "300", "-pairs", "100", "-pps", "3000", "-size", "200", "-duration", "1s"}

func TestReplayMaxTwiceIdentical(t *testing.T) {
	path := synthFile(t, smallWorkload...)
	first := replayJSON(t, "-max", path)
	second := replayJSON(t, "-max", path)
	if !reflect.DeepEqual(first.Counts(), second.Counts()) {
		t.Errorf("two -max replays differ:\n%+v\n%+v", first.Counts(), second.Counts())
	}
	if first.PacketsDelivered != 3000 || first.PacketsDropped != 0 {
		t.Errorf("delivered %d, dropped %d; want 3000, 0", first.PacketsDelivered, first.PacketsDropped)
	}
	// The synthesized expectations of the registry's frames hold.
	if !reflect.DeepEqual(first.Recorded, first.Produced) {
		t.Errorf("recorded frames %+v, produced %+v", first.Recorded, first.Produced)
	}
}

func TestReplayJSONFields(t *testing.T) {
	path := synthFile(t, smallWorkload...)
	var out, errs bytes.Buffer
	if code := runReplay([]string{"-max", "-json", path}, &out, &errs); code != 0 {
		t.Fatalf("exit %d: %s", code, errs.String())
	}
	var obj map[string]any
	if err := json.Unmarshal(out.Bytes(), &obj); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"messages", "packets_delivered", "packets_dropped", "elapsed_s", "msgs_per_s",
		"dropped_by_reason", "per_kind", "max_mailbox_depth", "latency"} {
		if _, ok := obj[f]; !ok {
			t.Errorf("-json object lacks %q", f)
		}
	}
}

func TestReplayScale10(t *testing.T) {
	path := synthFile(t, smallWorkload...)
	one := replayJSON(t, "-max", path)
	ten := replayJSON(t, "-max", "-scale", "10", path)
	if ten.PacketsDelivered != 10*one.PacketsDelivered || one.PacketsDelivered == 0 {
		t.Errorf("delivered %d at -scale 10, %d at 1; want exactly ten times", ten.PacketsDelivered, one.PacketsDelivered)
	}
	if ten.Receivers != 10*one.Receivers {
		t.Errorf("%d receivers at -scale 10, %d at 1; want ten times", ten.Receivers, one.Receivers)
	}
}

func TestReplayUnknownDest(t *testing.T) {
	path := filepath.Join(t.TempDir(), "unknown.jnl")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	w, err := journal.NewWriter(f, journal.Header{Start: synthStart})
	if err != nil {
		t.Fatal(err)
	}
	c := &actors.Conn{ID: 1, Key: synthKey(0), Since: synthStart}
	for i, r := range []*journal.Record{
		{Kind: journal.KindMessage, Target: journal.Target{Kind: actors.ActorRegistry}, Msg: &actors.Register{Conn: c}},
		{Kind: journal.KindPacket, Target: journal.Target{Kind: actors.ActorClient, ID: 1},
			Packet: journal.PacketRecord{SrcConn: 1, Src: c.Key, Dst: synthKey(1), Size: 40}}, // synthKey(1) never registers
	} {
		r.Seq = uint64(i + 1)
		if err := w.Write(r); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	f.Close()
	rep := replayJSON(t, "-max", path)
	if rep.DroppedByReason["unknown_dest"] != 1 || rep.PacketsDropped != 1 {
		t.Errorf("dropped %v (%d in all); want one unknown_dest", rep.DroppedByReason, rep.PacketsDropped)
	}
}

func TestReplayTruncated(t *testing.T) {
	path := synthFile(t, smallWorkload...)
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	for _, cut := range []int{len(data) / 2, len(data) - 1, 5} {
		short := filepath.Join(t.TempDir(), "short.jnl")
		if err := os.WriteFile(short, data[:cut], 0o644); err != nil {
			t.Fatal(err)
		}
		var out, errs bytes.Buffer
		code := runReplay([]string{"-max", short}, &out, &errs)
		msg := errs.String()
		if code == 0 || !strings.Contains(msg, "offset") || !strings.Contains(msg, short) {
			t.Errorf("cut at %d of %d: exit %d, stderr %q; want non-zero and a message naming the file and the offset", cut, len(data), code, msg)
		}
	}
}

func TestReplayFlags(t *testing.T) {
	for _, args := range [][]string{{}, {"-scale", "0", "x"}, {"-speed", "0", "x"}, {"-dispatcher", "step", "x"}, {"-max", "-dispatcher", "other", "x"}} {
		var out, errs bytes.Buffer
		if code := runReplay(args, &out, &errs); code != 2 {
			t.Errorf("replay %q: exit %d; want 2 (usage)", args, code)
		}
	}
}

func TestSubcommandSwitch(t *testing.T) {
	var out, errs bytes.Buffer
	if _, ok := subcommand([]string{"-dev"}, &out, &errs); ok {
		t.Error("-dev was taken for a subcommand; derper's flags must reach the server")
	}
	if _, ok := subcommand(nil, &out, &errs); ok {
		t.Error("no arguments were taken for a subcommand")
	}
	if code, ok := subcommand([]string{"replay"}, &out, &errs); !ok || code != 2 {
		t.Errorf("replay without a file: ok %v, exit %d; want a usage error", ok, code)
	}
}
