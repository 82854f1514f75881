package main

import (
	"bytes"
	"errors"
	"io"
	"testing"
	"time"

	"github.com/derpd/derpd/actors"
	"github.com/derpd/derpd/actors/journal"
)

func TestSynthJournal(t *testing.T) {
	cfg := synthConfig{Clients: 11, Pairs: 4, PPS: 100, Size: 33, Duration: 2 * time.Second, Ramp: time.Second, Start: synthStart}
	var buf bytes.Buffer
	st, err := synthesize(&buf, cfg)
	if err != nil {
		t.Fatal(err)
	}
	jr, err := journal.Open(&buf)
	if err != nil {
		t.Fatal(err)
	}
	counts := map[string]int{}
	var lastSeq uint64
	var lastAt time.Duration
	for {
		r, err := jr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if r.Seq != lastSeq+1 || r.At < lastAt {
			t.Fatalf("record %d at %v after %d at %v: want consecutive numbers and time that never goes back", r.Seq, r.At, lastSeq, lastAt)
		}
		lastSeq, lastAt = r.Seq, r.At
		switch m := r.Msg.(type) {
		case *actors.Register:
			counts["register"]++
		case *actors.Registered:
			counts["registered"]++
		case *actors.Delivered:
			counts["delivered"]++
			if len(m.Sources) != 1 {
				t.Errorf("Delivered with %d sources; want 1", len(m.Sources))
			}
		case *actors.Unregister:
			counts["unregister"]++
		case *actors.SendPeerGone:
			counts["peergone"]++
		case nil:
			if r.Kind == journal.KindPacket {
				counts["packet"]++
				if r.Packet.Size != 33 {
					t.Errorf("packet of %d bytes; want 33", r.Packet.Size)
				}
			}
		}
	}
	want := map[string]int{"register": 11, "registered": 11, "delivered": 4, "unregister": 11, "peergone": 4, "packet": 200}
	for k, n := range want {
		if counts[k] != n {
			t.Errorf("%s: %d records; want %d", k, counts[k], n)
		}
	}
	if st.Packets != 200 || st.Records != int64(lastSeq) {
		t.Errorf("stats %+v; want 200 packets, %d records", st, lastSeq)
	}
}

func TestSynthDeterministic(t *testing.T) {
	cfg := synthConfig{Clients: 50, Pairs: 20, PPS: 500, Size: 10, Duration: time.Second, Ramp: time.Second, Start: synthStart}
	var a, b bytes.Buffer
	if _, err := synthesize(&a, cfg); err != nil {
		t.Fatal(err)
	}
	if _, err := synthesize(&b, cfg); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(a.Bytes(), b.Bytes()) {
		t.Error("one workload gave two different journals")
	}
}

func TestSynthFlags(t *testing.T) {
	for _, args := range [][]string{
		{"-clients", "10", "-pairs", "6", "-o", "x"}, // 12 clients needed
		{"-clients", "0", "-o", "x"},
		{"-size", "70000", "-o", "x"},
		{"-clients", "10"}, // no -o
	} {
		var out, errs bytes.Buffer
		if code := runSynth(args, &out, &errs); code != 2 {
			t.Errorf("synth %q: exit %d; want 2", args, code)
		}
	}
}
