package actors

import (
	"fmt"
	"io"
	"math"
	"sync/atomic"
)

// DropReason names why a packet was not delivered. The names are
// upstream's metric labels, so existing dashboards keep working.
type DropReason uint8

const (
	DropUnknownDest      DropReason = iota // no such key here or on the mesh
	DropUnknownDestOnFwd                   // forwarded to us for a key we do not have
	DropGoneDisconnected                   // destination left while the packet was queued
	DropQueueHead                          // oldest queued packet pushed out by a newer one
	DropQueueTail                          // new packet refused after repeated full queues
	DropWriteError                         // the destination's socket failed
	DropDupClient                          // key has connections but none may receive
	numDropReasons
)

var dropReasonNames = [numDropReasons]string{
	"unknown_dest", "unknown_dest_on_fwd", "gone_disconnected",
	"queue_head", "queue_tail", "write_error", "dup_client",
}

// String returns the reason's metric label.
func (r DropReason) String() string {
	if r < numDropReasons {
		return dropReasonNames[r]
	}
	return fmt.Sprintf("DropReason(%d)", r)
}

// PacketKind separates disco packets (path discovery, small, precious)
// from everything else in drop and receive counts.
type PacketKind uint8

const (
	KindDisco PacketKind = iota // a disco (path discovery) message
	KindOther                   // anything else: WireGuard data, mostly
	numPacketKinds
)

var packetKindNames = [numPacketKinds]string{"disco", "other"}

// String returns the kind's metric label.
func (k PacketKind) String() string {
	if k < numPacketKinds {
		return packetKindNames[k]
	}
	return fmt.Sprintf("PacketKind(%d)", k)
}

// KindOf classifies a packet.
func KindOf(disco bool) PacketKind {
	if disco {
		return KindDisco
	}
	return KindOther
}

// Stats are the server-wide counters and gauges. Hot paths do not touch
// them per packet: readers and writers count locally and fold their counts
// in here in batches (see ReceiveCounts and SendCounts), so cores do not
// fight over these cache lines.
type Stats struct {
	Accepts           atomic.Int64
	WebSocketAccepts  atomic.Int64
	CurrentConns      atomic.Int64
	HomeConns         atomic.Int64
	NotIdealConns     atomic.Int64
	ClientsLocal      atomic.Int64 // keys with a local connection; set by the registry
	ClientsRemote     atomic.Int64 // keys known only through mesh peers; stays 0 until derpd meshes (-mesh-with)
	DupClientKeys     atomic.Int64
	DupClientConns    atomic.Int64
	DupClientTotal    atomic.Int64
	Watchers          atomic.Int64
	HomeMovesIn       atomic.Int64
	HomeMovesOut      atomic.Int64
	GotPing           atomic.Int64
	SentPong          atomic.Int64
	PeerGoneDiscFrame atomic.Int64
	PeerGoneNotHere   atomic.Int64
	UnknownFrames     atomic.Int64
	WriteTimeouts     atomic.Int64
	ForwardedIn       atomic.Int64
	ForwardedOut      atomic.Int64
	HandshakeErrors   atomic.Int64
	Rejected          atomic.Int64 // refused by admission control

	QueueWaits          atomic.Int64 // a reader waited for room in a full queue
	QueueWaitTimeouts   atomic.Int64 // …and gave up, dropping the oldest instead
	PacketsReceived     atomic.Int64
	BytesReceived       atomic.Int64
	PacketsReceivedKind [numPacketKinds]atomic.Int64
	PacketsSent         atomic.Int64
	BytesSent           atomic.Int64

	packetsDropped [numDropReasons][numPacketKinds]atomic.Int64
	bytesDropped   [numDropReasons][numPacketKinds]atomic.Int64

	// Queue residence, an exponential moving average kept as float64 bits.
	avgQueueMillis atomic.Uint64

	// Frames per flush, bucketed as upstream's histogram.
	batchBuckets [len(batchBucketBounds) + 1]atomic.Int64
	batchSum     atomic.Int64
	batchCount   atomic.Int64
}

// Drop counts one dropped packet of n payload bytes.
func (s *Stats) Drop(reason DropReason, kind PacketKind, n int) {
	s.packetsDropped[reason][kind].Add(1)
	s.bytesDropped[reason][kind].Add(int64(n))
}

// Dropped returns the packet count for one reason and kind.
func (s *Stats) Dropped(reason DropReason, kind PacketKind) int64 {
	return s.packetsDropped[reason][kind].Load()
}

// ReceiveCounts is a reader's local tally, folded into Stats in batches.
type ReceiveCounts struct {
	Packets, Bytes int64
	Disco          int64
}

// AddWaits folds a reader's wait counts in and resets them.
func (s *Stats) AddWaits(w *Waiter) {
	if w.Waits == 0 {
		return
	}
	s.QueueWaits.Add(w.Waits)
	s.QueueWaitTimeouts.Add(w.Timeouts)
	w.Waits, w.Timeouts = 0, 0
}

// AddReceived folds a reader's tally in and resets it.
func (s *Stats) AddReceived(c *ReceiveCounts) {
	if c.Packets == 0 {
		return
	}
	s.PacketsReceived.Add(c.Packets)
	s.BytesReceived.Add(c.Bytes)
	s.PacketsReceivedKind[KindDisco].Add(c.Disco)
	s.PacketsReceivedKind[KindOther].Add(c.Packets - c.Disco)
	*c = ReceiveCounts{}
}

// SendCounts is a writer's local tally, folded into Stats after each flush.
// The disco share is kept so that a batch lost to a failed flush can be
// counted as dropped by kind (see DropUnsent).
type SendCounts struct {
	Packets, Bytes    int64
	Disco, DiscoBytes int64
}

// AddSent folds a writer's tally in and resets it.
func (s *Stats) AddSent(c *SendCounts) {
	if c.Packets == 0 {
		return
	}
	s.PacketsSent.Add(c.Packets)
	s.BytesSent.Add(c.Bytes)
	*c = SendCounts{}
}

// DropUnsent counts a writer's tally as dropped for reason instead of
// sent, and resets it: a flush failed, so the packets it held were
// buffered but not delivered.
func (s *Stats) DropUnsent(reason DropReason, c *SendCounts) {
	if c.Packets == 0 {
		return
	}
	s.packetsDropped[reason][KindDisco].Add(c.Disco)
	s.bytesDropped[reason][KindDisco].Add(c.DiscoBytes)
	s.packetsDropped[reason][KindOther].Add(c.Packets - c.Disco)
	s.bytesDropped[reason][KindOther].Add(c.Bytes - c.DiscoBytes)
	*c = SendCounts{}
}

// NoteQueueDelay updates the average queue residence (α = 0.1, as
// upstream). Called once per flush with the batch's oldest packet, not per
// packet: the average is a health signal, not an accounting.
func (s *Stats) NoteQueueDelay(ms float64) {
	for {
		old := s.avgQueueMillis.Load()
		next := math.Float64bits(0.9*math.Float64frombits(old) + 0.1*ms)
		if s.avgQueueMillis.CompareAndSwap(old, next) {
			return
		}
	}
}

var batchBucketBounds = [...]int64{0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 15, 20, 25, 50, 100}

// NoteBatch records how many frames one flush wrote.
func (s *Stats) NoteBatch(frames int) {
	i := 0
	for i < len(batchBucketBounds) && int64(frames) > batchBucketBounds[i] {
		i++
	}
	s.batchBuckets[i].Add(1)
	s.batchSum.Add(int64(frames))
	s.batchCount.Add(1)
}

// WritePrometheus writes the counters in the Prometheus text format with
// upstream derper's names.
func (s *Stats) WritePrometheus(w io.Writer) {
	p := PromWriter{W: w}
	p.Counter("derp_accepts", s.Accepts.Load())
	p.Counter("derp_websocket_accepts", s.WebSocketAccepts.Load())
	p.Gauge("derp_current_connections", s.CurrentConns.Load())
	p.Gauge("derp_current_home_connections", s.HomeConns.Load())
	p.Gauge("derp_current_notideal_connections", s.NotIdealConns.Load())
	local, remote := s.ClientsLocal.Load(), s.ClientsRemote.Load()
	p.Gauge("derp_clients_total", local+remote)
	p.Gauge("derp_clients_local", local)
	p.Gauge("derp_clients_remote", remote)
	p.Gauge("derp_current_dup_client_keys", s.DupClientKeys.Load())
	p.Gauge("derp_current_dup_client_conns", s.DupClientConns.Load())
	p.Counter("derp_total_dup_client_conns", s.DupClientTotal.Load())
	p.Gauge("derp_watchers", s.Watchers.Load())
	p.Counter("derp_home_moves_in", s.HomeMovesIn.Load())
	p.Counter("derp_home_moves_out", s.HomeMovesOut.Load())
	p.Counter("derp_got_ping", s.GotPing.Load())
	p.Counter("derp_sent_pong", s.SentPong.Load())
	p.Counter("derp_peer_gone_disconnected_frames", s.PeerGoneDiscFrame.Load())
	p.Counter("derp_peer_gone_not_here_frames", s.PeerGoneNotHere.Load())
	p.Counter("derp_unknown_frames", s.UnknownFrames.Load())
	p.Counter("derp_sclient_write_timeouts", s.WriteTimeouts.Load())
	p.Counter("derp_packets_forwarded_in", s.ForwardedIn.Load())
	p.Counter("derp_packets_forwarded_out", s.ForwardedOut.Load())
	p.Counter("derpd_handshake_errors", s.HandshakeErrors.Load())
	p.Counter("derpd_admission_rejected", s.Rejected.Load())
	p.Counter("derpd_queue_waits", s.QueueWaits.Load())
	p.Counter("derpd_queue_wait_timeouts", s.QueueWaitTimeouts.Load())
	p.Counter("derp_packets_received", s.PacketsReceived.Load())
	p.Counter("derp_bytes_received", s.BytesReceived.Load())
	p.Counter("derp_packets_sent", s.PacketsSent.Load())
	p.Counter("derp_bytes_sent", s.BytesSent.Load())
	p.Header("derp_packets_received_kind", "counter")
	for k := range numPacketKinds {
		p.Sample("derp_packets_received_kind", `kind="`+k.String()+`"`, float64(s.PacketsReceivedKind[k].Load()))
	}
	for _, m := range []struct {
		name string
		v    *[numDropReasons][numPacketKinds]atomic.Int64
	}{{"derp_packets_dropped", &s.packetsDropped}, {"derp_bytes_dropped", &s.bytesDropped}} {
		p.Header(m.name, "counter")
		for r := range numDropReasons {
			for k := range numPacketKinds {
				p.Sample(m.name, `kind="`+k.String()+`",reason="`+r.String()+`"`, float64(m.v[r][k].Load()))
			}
		}
	}
	p.Header("derp_average_queue_duration_ms", "untyped")
	p.Sample("derp_average_queue_duration_ms", "", math.Float64frombits(s.avgQueueMillis.Load()))
	p.Header("derp_buffered_write_frames", "histogram")
	var cum int64
	for i, b := range batchBucketBounds {
		cum += s.batchBuckets[i].Load()
		p.Sample("derp_buffered_write_frames_bucket", fmt.Sprintf(`le="%d"`, b), float64(cum))
	}
	cum += s.batchBuckets[len(batchBucketBounds)].Load()
	p.Sample("derp_buffered_write_frames_bucket", `le="+Inf"`, float64(cum))
	p.Sample("derp_buffered_write_frames_sum", "", float64(s.batchSum.Load()))
	p.Sample("derp_buffered_write_frames_count", "", float64(s.batchCount.Load()))
}

// PromWriter writes Prometheus text exposition lines.
type PromWriter struct{ W io.Writer }

// Header writes the TYPE line of a metric family.
func (p PromWriter) Header(name, typ string) { fmt.Fprintf(p.W, "# TYPE %s %s\n", name, typ) }

// Sample writes one series; labels is the text between the braces.
func (p PromWriter) Sample(name, labels string, v float64) {
	if labels != "" {
		fmt.Fprintf(p.W, "%s{%s} %v\n", name, labels, v)
	} else {
		fmt.Fprintf(p.W, "%s %v\n", name, v)
	}
}

// Counter writes a label-less counter.
func (p PromWriter) Counter(name string, v int64) {
	p.Header(name, "counter")
	p.Sample(name, "", float64(v))
}

// Gauge writes a label-less gauge.
func (p PromWriter) Gauge(name string, v int64) {
	p.Header(name, "gauge")
	p.Sample(name, "", float64(v))
}
