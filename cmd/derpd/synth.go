package main

import (
	"bufio"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/netip"
	"os"
	"time"

	"github.com/derpd/derpd/actors"
	"github.com/derpd/derpd/actors/journal"
	"github.com/derpd/derpd/wire"
)

// derpd synth writes the journal of a workload nobody recorded, for
// derpd replay: clients connect, pairs of them exchange packets at a
// steady rate, and everyone leaves. The file holds what a recording of
// that workload would hold (Register, the Delivered bookkeeping an outbox
// sends on a receiver's first packet from a sender, the packets,
// Unregister) plus what a live registry would have asked the clients to
// write (Registered, PeerGone when a sender leaves before its receiver),
// so that a replay's comparison of recorded and produced frames is a check
// of the registry.

// synthConfig is a synthetic workload.
type synthConfig struct {
	Clients  int           // connections
	Pairs    int           // sender/receiver pairs among them (2·Pairs ≤ Clients)
	PPS      float64       // packets per second, all pairs together
	Size     int           // payload bytes per packet
	Duration time.Duration // of the traffic
	Ramp     time.Duration // over which the clients connect, before the traffic, and leave, after it
	Start    time.Time     // the journal's start
}

// synthStart is the start every synthesized journal records, so that one
// workload always gives the same file.
var synthStart = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

// synthStats says what a synthesized journal holds.
type synthStats struct {
	Records, Messages, Packets int64
}

func runSynth(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("derpd synth", flag.ContinueOnError)
	fs.SetOutput(stderr)
	cfg := synthConfig{Start: synthStart}
	fs.IntVar(&cfg.Clients, "clients", 1000, "connections")
	fs.IntVar(&cfg.Pairs, "pairs", -1, "sender/receiver pairs among the clients (default: clients/2)")
	fs.Float64Var(&cfg.PPS, "pps", 1000, "packets per second, all pairs together")
	fs.IntVar(&cfg.Size, "size", 1200, "payload bytes per packet")
	fs.DurationVar(&cfg.Duration, "duration", 10*time.Second, "how long the pairs send")
	fs.DurationVar(&cfg.Ramp, "ramp", time.Second, "how long the clients take to connect (before the traffic) and to leave (after it)")
	out := fs.String("o", "", "journal file to write (required)")
	fs.Usage = func() {
		fmt.Fprintln(stderr, "usage: derpd synth -clients N -pairs P -pps R -size S -duration D -o FILE")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if cfg.Pairs < 0 {
		cfg.Pairs = cfg.Clients / 2
	}
	if *out == "" || fs.NArg() > 0 {
		fs.Usage()
		return 2
	}
	if err := cfg.check(); err != nil {
		fmt.Fprintln(stderr, "derpd synth:", err)
		return 2
	}
	f, err := os.Create(*out)
	if err != nil {
		fmt.Fprintln(stderr, "derpd synth:", err)
		return 1
	}
	st, err := synthesize(f, cfg)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		fmt.Fprintln(stderr, "derpd synth:", err)
		return 1
	}
	fmt.Fprintf(stdout, "%s: %d records (%d messages, %d packets)\n", *out, st.Records, st.Messages, st.Packets)
	return 0
}

func (c *synthConfig) check() error {
	switch {
	case c.Clients < 1:
		return fmt.Errorf("-clients %d: want at least 1", c.Clients)
	case c.Pairs < 0 || 2*c.Pairs > c.Clients:
		return fmt.Errorf("-pairs %d: want 0 to clients/2 (%d)", c.Pairs, c.Clients/2)
	case c.PPS < 0:
		return fmt.Errorf("-pps %g: want 0 or more", c.PPS)
	case c.Size < 0 || c.Size > wire.MaxPacketSize:
		return fmt.Errorf("-size %d: want 0 to %d", c.Size, wire.MaxPacketSize)
	case c.Duration < 0 || c.Ramp < 0:
		return fmt.Errorf("-duration and -ramp must not be negative")
	}
	return nil
}

// synthKey is client i's node key: the same for every run.
func synthKey(i int) wire.NodePublic {
	var b [8]byte
	binary.LittleEndian.PutUint64(b[:], uint64(i))
	return wire.NodePublic(sha256.Sum256(append([]byte("derpd synth client\x00"), b[:]...)))
}

// synthesize writes cfg's journal to w. Client i (0-based) is connection
// i+1; pair j is client 2j sending to client 2j+1. Packets go round-robin
// over the pairs, evenly spaced at PPS.
func synthesize(w io.Writer, cfg synthConfig) (synthStats, error) {
	var st synthStats
	bw := bufio.NewWriterSize(w, 1<<20)
	jw, err := journal.NewWriter(bw, journal.Header{Start: cfg.Start})
	if err != nil {
		return st, err
	}
	var seq uint64
	write := func(r *journal.Record) error {
		seq++
		r.Seq = seq
		st.Records++
		switch r.Kind {
		case journal.KindMessage:
			st.Messages++
		case journal.KindPacket:
			st.Packets++
		}
		return jw.Write(r)
	}
	registry := journal.Target{Kind: actors.ActorRegistry}
	client := func(c *actors.Conn) journal.Target { return journal.Target{Kind: actors.ActorClient, ID: c.ID} }
	spread := func(i, n int) time.Duration { // i's moment in a ramp of n
		if n <= 1 {
			return 0
		}
		return time.Duration(int64(cfg.Ramp) * int64(i) / int64(n))
	}

	conns := make([]*actors.Conn, cfg.Clients)
	for i := range conns {
		at := spread(i, cfg.Clients)
		c := &actors.Conn{
			ID:    uint64(i + 1),
			Key:   synthKey(i),
			Addr:  netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)}), 41641),
			Since: cfg.Start.Add(at),
		}
		conns[i] = c
		if err := write(&journal.Record{Kind: journal.KindMessage, At: at, Target: registry, Msg: &actors.Register{Conn: c}}); err != nil {
			return st, err
		}
		if err := write(&journal.Record{Kind: journal.KindMessage, At: at, Target: client(c), Msg: &actors.Registered{}}); err != nil {
			return st, err
		}
	}

	traffic := cfg.Ramp
	var total int64 // packets
	if cfg.Pairs > 0 && cfg.PPS > 0 {
		total = int64(cfg.PPS * cfg.Duration.Seconds())
	}
	if total > 0 {
		heard := make([]bool, cfg.Pairs) // the receiver has had its first packet from its sender
		for k := range total {
			j := int(k % int64(cfg.Pairs))
			src, dst := conns[2*j], conns[2*j+1]
			at := traffic + time.Duration(float64(k)/cfg.PPS*float64(time.Second))
			err := write(&journal.Record{Kind: journal.KindPacket, At: at, Target: client(src), Packet: journal.PacketRecord{
				SrcConn: src.ID, Src: src.Key, Dst: dst.Key, Size: cfg.Size,
			}})
			if err != nil {
				return st, err
			}
			if !heard[j] {
				// The receiver's outbox rings once it has written its
				// first packet from a new source.
				heard[j] = true
				err := write(&journal.Record{Kind: journal.KindMessage, At: at, Target: registry, Msg: &actors.Delivered{
					Receiver: dst, Sources: []actors.DeliveredSource{{Source: src.Key}},
				}})
				if err != nil {
					return st, err
				}
			}
		}
	}

	// Senders leave first, so each receiver that heard from its sender
	// is told PeerGone; then everyone else.
	leave := traffic + cfg.Duration
	order := make([]int, 0, cfg.Clients)
	for j := range cfg.Pairs {
		order = append(order, 2*j)
	}
	for j := range cfg.Pairs {
		order = append(order, 2*j+1)
	}
	for i := 2 * cfg.Pairs; i < cfg.Clients; i++ {
		order = append(order, i)
	}
	for n, i := range order {
		at := leave + spread(n, len(order))
		c := conns[i]
		if err := write(&journal.Record{Kind: journal.KindMessage, At: at, Target: registry, Msg: &actors.Unregister{Conn: c}}); err != nil {
			return st, err
		}
		if j := i / 2; i%2 == 0 && j < cfg.Pairs && total > int64(j) { // a sender whose receiver heard from it
			rcv := conns[i+1]
			err := write(&journal.Record{Kind: journal.KindMessage, At: at, Target: client(rcv), Msg: &actors.SendPeerGone{
				Peer: c.Key, Reason: wire.PeerGoneDisconnected,
			}})
			if err != nil {
				return st, err
			}
		}
	}
	if err := jw.Close(); err != nil {
		return st, err
	}
	return st, bw.Flush()
}
