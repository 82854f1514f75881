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
	ClientsRemote     atomic.Int64 // keys known only through mesh peers; set by the registry
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

	// The forwarder table, with upstream's meanings: a key announced by a
	// second mesh session (created) and back to one (deleted); a
	// withdrawal of a key the session never announced (delete_other).
	MultiForwarderCreated atomic.Int64
	MultiForwarderDeleted atomic.Int64
	ForwarderDeleteOther  atomic.Int64
	MeshKeysRefused       atomic.Int64 // announcements beyond a session's key limit
	MeshKeyMismatch       atomic.Int64 // clients that presented a mesh key other than ours
	// UnknownSourcesIgnored counts forwarded packets whose source the
	// region did not know and that were not recorded for PeerGone,
	// because too many such sources were already on probation.
	UnknownSourcesIgnored atomic.Int64
	// DupFightClaims counts claims of the receiving role made while
	// fighting another connection with the same key (not waited for).
	DupFightClaims atomic.Int64
	// RateLimitWaits counts the frames a reader had to wait for under
	// the receive rate limit (upstream's rate_limit_per_client_waited).
	RateLimitWaits atomic.Int64
	// PresenceBacklogCloses counts watchers closed for letting too many
	// connection updates pile up (see client.maxPresenceBacklog).
	PresenceBacklogCloses atomic.Int64

	FlowsTracked atomic.Int64 // set by the flows actor
	FlowsEvicted atomic.Int64 // forgotten to stay within -flows-max
	FlowsSwept   atomic.Int64 // forgotten for being inactive

	RejectsTracked atomic.Int64 // entries of the rejects aggregate; set by its actor
	RejectsEvicted atomic.Int64 // entries forgotten to stay within -rejects-max

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
	batchFrames histogram

	// Watcher updates written per batch, and batches per writer wake-up:
	// upstream's mesh_update_batch_size and mesh_update_loop_count.
	meshUpdateBatch histogram
	meshUpdateLoops histogram
}

// DropFor counts one dropped packet of n payload bytes that was meant for
// c (nil: no connection, such as an unknown destination).
func (s *Stats) DropFor(c *Conn, reason DropReason, kind PacketKind, n int) {
	s.Drop(reason, kind, n)
	if c != nil {
		c.Dropped[reason].Add(1)
	}
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
// Packets, Bytes and Disco count SendPacket payloads only, as upstream's
// received counters do; forwarded packets have counters of their own.
type ReceiveCounts struct {
	Packets, Bytes int64
	Disco          int64

	ForwardedIn  int64 // ForwardPacket frames read (from a mesh peer)
	ForwardedOut int64 // packets handed to a mesh link
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
	if *c == (ReceiveCounts{}) {
		return
	}
	if c.Packets != 0 {
		s.PacketsReceived.Add(c.Packets)
		s.BytesReceived.Add(c.Bytes)
		s.PacketsReceivedKind[KindDisco].Add(c.Disco)
		s.PacketsReceivedKind[KindOther].Add(c.Packets - c.Disco)
	}
	if c.ForwardedIn != 0 {
		s.ForwardedIn.Add(c.ForwardedIn)
	}
	if c.ForwardedOut != 0 {
		s.ForwardedOut.Add(c.ForwardedOut)
	}
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

// Histogram bucket bounds, upstream's.
var (
	batchBucketBounds     = []int64{0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 15, 20, 25, 50, 100}
	meshUpdateBatchBounds = []int64{0, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000}
	meshUpdateLoopsBounds = []int64{0, 1, 2, 5, 10, 20, 50, 100}
)

// histogram counts observations into buckets whose bounds the caller
// passes (so that a zero Stats is ready to use).
type histogram struct {
	buckets    [maxHistogramBuckets + 1]atomic.Int64 // the last one is +Inf
	sum, count atomic.Int64
}

const maxHistogramBuckets = 16

func (h *histogram) observe(bounds []int64, v int64) {
	i := 0
	for i < len(bounds) && v > bounds[i] {
		i++
	}
	if i == len(bounds) {
		i = maxHistogramBuckets
	}
	h.buckets[i].Add(1)
	h.sum.Add(v)
	h.count.Add(1)
}

// write exports the histogram with cumulative buckets, as Prometheus
// wants and upstream writes.
func (h *histogram) write(p PromWriter, name string, bounds []int64) {
	p.Header(name, "histogram")
	var cum int64
	for i, b := range bounds {
		cum += h.buckets[i].Load()
		p.Sample(name+"_bucket", fmt.Sprintf(`le="%d"`, b), float64(cum))
	}
	cum += h.buckets[maxHistogramBuckets].Load()
	p.Sample(name+"_bucket", `le="+Inf"`, float64(cum))
	p.Sample(name+"_sum", "", float64(h.sum.Load()))
	p.Sample(name+"_count", "", float64(h.count.Load()))
}

// NoteBatch records how many frames one flush wrote.
func (s *Stats) NoteBatch(frames int) { s.batchFrames.observe(batchBucketBounds, int64(frames)) }

// NoteMeshUpdateBatch records how many watcher updates one batch wrote.
func (s *Stats) NoteMeshUpdateBatch(n int) {
	s.meshUpdateBatch.observe(meshUpdateBatchBounds, int64(n))
}

// NoteMeshUpdateLoops records how many batches of watcher updates a
// writer wrote before it found no more.
func (s *Stats) NoteMeshUpdateLoops(n int) {
	s.meshUpdateLoops.observe(meshUpdateLoopsBounds, int64(n))
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
	p.Counter("derp_multiforwarder_created", s.MultiForwarderCreated.Load())
	p.Counter("derp_multiforwarder_deleted", s.MultiForwarderDeleted.Load())
	p.Counter("derp_packet_forwarder_delete_other_value", s.ForwarderDeleteOther.Load())
	p.Counter("derpd_mesh_keys_refused", s.MeshKeysRefused.Load())
	p.Counter("derpd_mesh_unknown_sources_ignored", s.UnknownSourcesIgnored.Load())
	p.Counter("derpd_dup_client_fight_claims", s.DupFightClaims.Load())
	p.Counter("derpd_watcher_backlog_closes", s.PresenceBacklogCloses.Load())
	p.Counter("derpd_mesh_key_mismatch", s.MeshKeyMismatch.Load())
	p.Gauge("derpd_flows_tracked", s.FlowsTracked.Load())
	p.Counter("derpd_flows_evicted", s.FlowsEvicted.Load())
	p.Counter("derpd_flows_swept", s.FlowsSwept.Load())
	p.Gauge("derpd_rejects_tracked", s.RejectsTracked.Load())
	p.Counter("derpd_rejects_evicted", s.RejectsEvicted.Load())
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
	s.batchFrames.write(p, "derp_buffered_write_frames", batchBucketBounds)
	s.meshUpdateBatch.write(p, "derp_mesh_update_batch_size", meshUpdateBatchBounds)
	s.meshUpdateLoops.write(p, "derp_mesh_update_loop_count", meshUpdateLoopsBounds)
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
