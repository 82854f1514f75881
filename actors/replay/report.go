package replay

import (
	"fmt"
	"math"
	"math/bits"
	"sort"
	"strings"
	"time"

	"github.com/derpd/derpd/actors"
)

// Report is what a replay found. Its counts (see Counts) are the same on
// every -max replay of one journal with the step dispatcher; the rates,
// latencies and elapsed time are measurements of this machine.
type Report struct {
	Mode       string  `json:"mode"`       // "max" or "paced"
	Speed      float64 `json:"speed"`      // pace multiplier (paced mode)
	Dispatcher string  `json:"dispatcher"` // "step" or "default"
	Scale      int     `json:"scale"`

	Records   int64    `json:"records"`         // journal records read
	Inputs    int64    `json:"inputs"`          // message records fed (before scaling)
	Messages  int64    `json:"messages"`        // messages fed to the fresh actors (after scaling)
	Outputs   int64    `json:"outputs"`         // message records the recording shows actors sending to clients (compared, not fed)
	Skipped   int64    `json:"skipped"`         // message records neither fed nor compared (queries, timers, opaque)
	Unknown   int64    `json:"unknown"`         // inputs naming a connection the journal never registered (registered before recording began)
	Notes     int64    `json:"notes"`           // recorder notes
	Late      int64    `json:"late"`            // records that reached the file too far out of Seq order to be put back in it
	Stuck     int64    `json:"stuck,omitempty"` // waits for mailboxes given up because nothing drained them (default dispatcher)
	NoteTexts []string `json:"note_texts,omitempty"`

	PacketRecords    int64            `json:"packet_records"`
	PacketsDelivered int64            `json:"packets_delivered"` // to simulated clients
	Receivers        int64            `json:"receivers"`         // simulated connections that were delivered at least one packet
	BytesDelivered   int64            `json:"bytes_delivered"`
	PacketsForwarded int64            `json:"packets_forwarded"` // to simulated mesh links
	PacketsDropped   int64            `json:"packets_dropped"`
	DroppedByReason  map[string]int64 `json:"dropped_by_reason"`

	// PerKind: per actor kind, messages processed (lifecycle messages
	// included), their rate over Elapsed, and the deepest mailbox.
	PerKind         map[string]KindReport `json:"per_kind"`
	MaxMailboxDepth int64                 `json:"max_mailbox_depth"`

	// Latency: time from feeding an input to its actor taking it.
	Latency Latency `json:"latency"`

	// Recorded counts the frames the journal shows the live registry
	// asking client actors to write; Produced what the fresh one asked of
	// the simulated clients. With Scale K, Produced should be K× Recorded.
	Recorded ClientFrames `json:"recorded"`
	Produced ClientFrames `json:"produced"`

	Journal  time.Duration `json:"-"`          // the recording's own length (last record's At)
	JournalS float64       `json:"journal_s"`  // the same, in seconds
	Elapsed  time.Duration `json:"-"`          // wall time of the replay
	ElapsedS float64       `json:"elapsed_s"`  // the same, in seconds
	MsgsPerS float64       `json:"msgs_per_s"` // Messages / Elapsed
	// PacketsPerS: packets routed (delivered, forwarded or dropped) per
	// second of Elapsed.
	PacketsPerS float64 `json:"packets_per_s"`
}

// KindReport is one actor kind's share of a replay.
type KindReport struct {
	Processed int64   `json:"processed"`
	MsgsPerS  float64 `json:"msgs_per_s"`
	MaxDepth  int64   `json:"max_depth"` // the deepest one actor's mailbox of the kind was seen
}

// ClientFrames counts what client actors are asked to write.
type ClientFrames struct {
	Registered int64            `json:"registered"`
	PeerGone   map[string]int64 `json:"peer_gone"` // by reason
	Presence   int64            `json:"presence"`  // SendPeerPresence entries
	CloseConn  int64            `json:"close_conn"`
	Restarting int64            `json:"restarting"`
}

// Latency holds percentiles of mailbox latency, in microseconds.
type Latency struct {
	Samples int64   `json:"samples"`
	P50     float64 `json:"p50_us"`
	P90     float64 `json:"p90_us"`
	P99     float64 `json:"p99_us"`
	Max     float64 `json:"max_us"`
}

// Counts is the part of a report that does not depend on the machine:
// what two -max replays of one journal must agree on.
type Counts struct {
	Records, Inputs, Messages, Outputs, Skipped, Unknown, Late int64
	PacketRecords, PacketsDelivered, BytesDelivered            int64
	Receivers, PacketsForwarded, PacketsDropped                int64
	DroppedByReason                                            map[string]int64
	Processed                                                  map[string]int64
	MaxMailboxDepth                                            int64
	Recorded, Produced                                         ClientFrames
}

// Counts returns the report's machine-independent part.
func (r *Report) Counts() Counts {
	processed := make(map[string]int64, len(r.PerKind))
	for k, v := range r.PerKind {
		processed[k] = v.Processed
	}
	return Counts{
		Records: r.Records, Inputs: r.Inputs, Messages: r.Messages, Outputs: r.Outputs,
		Skipped: r.Skipped, Unknown: r.Unknown, Late: r.Late,
		PacketRecords: r.PacketRecords, PacketsDelivered: r.PacketsDelivered, BytesDelivered: r.BytesDelivered,
		Receivers:        r.Receivers,
		PacketsForwarded: r.PacketsForwarded, PacketsDropped: r.PacketsDropped,
		DroppedByReason: r.DroppedByReason, Processed: processed, MaxMailboxDepth: r.MaxMailboxDepth,
		Recorded: r.Recorded, Produced: r.Produced,
	}
}

// histogram keeps latencies in logarithmic buckets, eight per doubling
// (about 9% wide), so a replay of millions of messages holds a few
// kilobytes of them rather than a sample each.
type histogram struct {
	counts [64 * 8]int64
	n      int64
	max    int64
}

func bucketOf(ns int64) int {
	if ns < 8 {
		return int(max(ns, 0))
	}
	e := bits.Len64(uint64(ns)) - 1 // 2^e ≤ ns
	frac := int((uint64(ns) >> (e - 3)) & 7)
	return e*8 + frac
}

// bucketValue is the lower bound of bucket b.
func bucketValue(b int) int64 {
	if b < 8 {
		return int64(b)
	}
	e, frac := b/8, b%8
	return (8 + int64(frac)) << (e - 3)
}

func (h *histogram) observe(d time.Duration) {
	ns := int64(d)
	h.counts[bucketOf(ns)]++
	h.n++
	h.max = max(h.max, ns)
}

func (h *histogram) quantile(q float64) float64 {
	if h.n == 0 {
		return 0
	}
	rank := int64(math.Ceil(q * float64(h.n)))
	var seen int64
	for b, c := range h.counts {
		seen += c
		if seen >= rank {
			return float64(bucketValue(b)) / 1e3
		}
	}
	return float64(h.max) / 1e3
}

func (h *histogram) latency() Latency {
	return Latency{Samples: h.n, P50: h.quantile(0.5), P90: h.quantile(0.9), P99: h.quantile(0.99), Max: float64(h.max) / 1e3}
}

// sortedKeys returns m's keys in order, for text output.
func sortedKeys[V any](m map[string]V) []string {
	ks := make([]string, 0, len(m))
	for k := range m {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	return ks
}

// String renders the report for a terminal.
func (r *Report) String() string {
	var b strings.Builder
	speed := ""
	if r.Mode == "paced" {
		speed = fmt.Sprintf(" ×%g", r.Speed)
	}
	fmt.Fprintf(&b, "replay: %s%s, %s dispatcher, scale %d\n", r.Mode, speed, r.Dispatcher, r.Scale)
	fmt.Fprintf(&b, "journal: %d records over %.3fs: %d inputs, %d outputs, %d skipped, %d unknown connections, %d packets, %d notes, %d late\n",
		r.Records, r.JournalS, r.Inputs, r.Outputs, r.Skipped, r.Unknown, r.PacketRecords, r.Notes, r.Late)
	for _, n := range r.NoteTexts {
		fmt.Fprintf(&b, "  note: %s\n", n)
	}
	fmt.Fprintf(&b, "elapsed: %.3fs; messages fed: %d (%.0f/s)\n", r.ElapsedS, r.Messages, r.MsgsPerS)
	if r.Stuck > 0 {
		fmt.Fprintf(&b, "  %d times mailboxes stopped draining and the replay went on without them\n", r.Stuck)
	}
	fmt.Fprintf(&b, "packets: %d delivered (%d bytes) to %d connections, %d forwarded to mesh links, %d dropped (%.0f/s)\n",
		r.PacketsDelivered, r.BytesDelivered, r.Receivers, r.PacketsForwarded, r.PacketsDropped, r.PacketsPerS)
	for _, k := range sortedKeys(r.DroppedByReason) {
		if n := r.DroppedByReason[k]; n > 0 {
			fmt.Fprintf(&b, "  dropped %s: %d\n", k, n)
		}
	}
	fmt.Fprintf(&b, "actors (processed, per second, deepest mailbox):\n")
	for _, k := range actors.ActorKinds {
		if kr, ok := r.PerKind[string(k)]; ok {
			fmt.Fprintf(&b, "  %-9s %10d %12.0f/s %8d\n", k, kr.Processed, kr.MsgsPerS, kr.MaxDepth)
		}
	}
	fmt.Fprintf(&b, "max mailbox depth: %d\n", r.MaxMailboxDepth)
	l := r.Latency
	fmt.Fprintf(&b, "mailbox latency of %d inputs: p50 %.1fµs p90 %.1fµs p99 %.1fµs max %.1fµs\n", l.Samples, l.P50, l.P90, l.P99, l.Max)
	fmt.Fprintf(&b, "frames to clients          recorded   produced\n")
	row := func(name string, rec, prod int64) { fmt.Fprintf(&b, "  %-22s %10d %10d\n", name, rec, prod) }
	row("Registered", r.Recorded.Registered, r.Produced.Registered)
	reasons := map[string]bool{}
	for k := range r.Recorded.PeerGone {
		reasons[k] = true
	}
	for k := range r.Produced.PeerGone {
		reasons[k] = true
	}
	for _, k := range sortedKeys(reasons) {
		row("PeerGone "+k, r.Recorded.PeerGone[k], r.Produced.PeerGone[k])
	}
	row("presence entries", r.Recorded.Presence, r.Produced.Presence)
	row("CloseConn", r.Recorded.CloseConn, r.Produced.CloseConn)
	row("Restarting", r.Recorded.Restarting, r.Produced.Restarting)
	return b.String()
}
