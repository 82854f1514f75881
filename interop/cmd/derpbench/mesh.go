package main

import (
	"crypto/tls"
	"fmt"
	"log"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/derpd/derpd/interop/harness"
	"github.com/derpd/derpd/interop/internal/procstat"
)

// The mesh scenarios run on regions: nodes of one kind meshed over TLS on
// loopback, as harness.Region sets them up (each node with a certificate
// for a name of its own, every node listing every node in -mesh-with).
// A derpd region and a derper region run side by side and are measured
// alternately, like the single servers of the other scenarios. Every
// client speaks TLS too: with certificates configured, neither server
// serves DERP over plain HTTP.
//
//   - "mesh": cross-node capacity. Two nodes; every sender is on node 1
//     and its receiver on node 2, so every packet crosses the mesh link.
//   - "mesh-slow": slow peer isolation. Three nodes; senders on node 1
//     send most of their packets to a receiver on node 2 and a share to
//     one on node 3, and node 3 is made slow in one of two ways (below).
//     The figure is what the node 2 receivers get, with node 3 responsive
//     and with it slow.

// meshPairs is the capacity scenario's pair count, so that the mesh
// figures compare with the single-server ones.
const meshPairs = 20

// slowShare: every slowShare-th packet of each sender is for its receiver
// on node 3, the rest for the one on node 2, as in the isolation scenario
// (a client that mostly talks to one peer and some to another). Both
// kinds of flow share the senders' connections: that is where a link that
// makes its senders wait would hold up the healthy flows too.
const slowShare = 10

// slowRate is the total offered rate of the slow-peer scenario, node 2
// and node 3 receivers together. It must be a rate both servers carry
// across the mesh with no loss while node 3 is responsive, so that any
// loss with node 3 slow is the slow peer's doing (see meshCPURate).
const slowRate = meshCPURate

// The two ways node 3 is made slow, as the "slow" parameter of mesh-slow
// points: 0 is node 3 responsive, the baseline.
const (
	// slowPaused: node 3's process is stopped (SIGSTOP) for 80 ms of
	// every 100 ms. It keeps its connections and reads in bursts, like a
	// peer short of CPU. Each stop is far below the 15 s after which
	// derpd's links declare a silent peer dead (and both servers' 5 s
	// write timeouts), so the links stay up and the point measures a slow
	// peer, not a reconnect. On loopback the kernel buffers megabytes per
	// connection, so a node that catches up every 100 ms may never make
	// node 1's link wait; this point shows whether it does.
	slowPaused = 1
	// slowThrottled: node 3 reads its link from node 1 at 1 MiB/s (see
	// linkProxy), under half of the 2.7 MB/s node 1 is sent for it
	// (2,000 ForwardPackets a second of 1,349 bytes), so the link cannot
	// keep up for as long as it lasts: the case derpd's link outbox drops
	// for.
	slowThrottled = 2
)

var slowNode = dutySpec{period: 100 * time.Millisecond, stopped: 80 * time.Millisecond}

// slowLinkRate is the throttled link's rate, in bytes per second.
const slowLinkRate = 1 << 20

// dutySpec is a duty cycle: stopped for stopped of every period.
type dutySpec struct{ period, stopped time.Duration }

func (b *bench) meshRates() []float64 {
	if b.quick {
		return []float64{10e3, 20e3, 50e3, 100e3, 150e3, 200e3}
	}
	// Fine steps where the two servers' limits are on this machine
	// (upstream derper's between 20k and 50k, derpd's between 75k and
	// 150k), the low ones so that a derper run at its edge still has a
	// zero-loss point; higher rates in case a later build or machine
	// carries more.
	return []float64{10e3, 20e3, 30e3, 40e3, 50e3, 75e3, 100e3, 125e3, 150e3, 200e3, 300e3, 400e3, 600e3}
}

// meshCPURate is the offered rate at which the mesh table compares CPU,
// and slowRate the slow-peer scenario's: a rate upstream derper carries
// across the mesh with no loss on this machine even next to a busy
// neighbour (at 25k it sometimes loses 2-4%, at 50k a fifth or more), so
// that both servers do the same work.
const meshCPURate = 20e3

// mesh runs both mesh scenarios; -only mesh-capacity or mesh-slow picks
// one.
func (b *bench) mesh() {
	if b.want("mesh") || b.want("mesh-capacity") {
		b.withRegions(2, nil, func(regions map[harness.Kind]*harness.Region) {
			b.rateSweep("mesh", meshPairs, b.meshRates(), regionServers(regions), func(k harness.Kind, rate float64) (metrics, error) {
				r := regions[k]
				return measureMesh(r, loadSpec{pairs: meshPairs, rate: rate, size: b.size, dial: meshDial(r, 0, 1, -1)}, nil)
			})
		})
	}
	if b.want("mesh") || b.want("mesh-slow") {
		b.meshSlow()
	}
}

// meshSlow is the slow-peer scenario.
func (b *bench) meshSlow() {
	// Node 1 reaches node 3 through a linkProxy, in every point of the
	// scenario alike, so that the throttle is the only difference.
	proxies := map[harness.Kind]*linkProxy{}
	defer func() {
		for _, p := range proxies {
			p.Close()
		}
	}()
	viaProxy := func(k harness.Kind, r *harness.Region) error {
		// Node 3 is not running yet; its port is chosen.
		p, err := newLinkProxy(fmt.Sprintf("127.0.0.1:%d", r.Nodes[2].Port))
		if err != nil {
			return err
		}
		proxies[k] = p
		var entries []string
		for i, n := range r.Nodes {
			port := n.Port
			if i == 2 {
				port = p.Port()
			}
			entries = append(entries, fmt.Sprintf("%s:%d/127.0.0.1", n.Name, port))
		}
		r.Nodes[0].Args = []string{"-mesh-with", strings.Join(entries, ",")}
		return nil
	}
	b.withRegions(3, viaProxy, func(regions map[harness.Kind]*harness.Region) {
		for _, slow := range []float64{0, slowPaused, slowThrottled} {
			b.measureNodes("mesh-slow", metrics{"pairs": meshPairs, "rate": slowRate, "slow": slow}, regionServers(regions), func(k harness.Kind) (metrics, error) {
				r := regions[k]
				var sd slowdown
				switch slow {
				case slowPaused:
					sd = &pause{srv: r.Nodes[2].Server, duty: slowNode}
				case slowThrottled:
					sd = &throttle{p: proxies[k], rate: slowLinkRate}
				}
				return measureMesh(r, loadSpec{pairs: meshPairs, rate: slowRate, size: b.size, sidePer: slowShare, dial: meshDial(r, 0, 1, 2)}, sd)
			})
		}
	})
}

// withRegions starts a region of n nodes for each server kind, waits until
// every node reaches every other through the mesh, runs f and stops the
// nodes. Fresh regions per scenario, as withServers does for single
// servers. prepare, if set, may change a region's nodes (their Args)
// before they start.
func (b *bench) withRegions(n int, prepare func(harness.Kind, *harness.Region) error, f func(map[harness.Kind]*harness.Region)) {
	dir, err := os.MkdirTemp("", "derpbench-mesh")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)
	regions := map[harness.Kind]*harness.Region{}
	defer func() {
		for _, r := range regions {
			for _, node := range r.Nodes {
				if node.Server != nil {
					node.Server.Signal(syscall.SIGCONT) // in case a panic left it stopped
					node.Server.Stop()
				}
			}
		}
	}()
	for _, k := range b.servers {
		kinds := make([]harness.Kind, n)
		for i := range kinds {
			kinds[i] = k
		}
		rdir := filepath.Join(dir, string(k))
		r, err := harness.NewRegion(rdir, kinds...)
		if err != nil {
			log.Panic(err)
		}
		regions[k] = r
		if prepare != nil {
			if err := prepare(k, r); err != nil {
				log.Panic(err)
			}
		}
		for i, node := range r.Nodes {
			s, err := harness.Launch(r.Options(i, nil), filepath.Join(rdir, fmt.Sprintf("node%d", i+1)))
			if err != nil {
				log.Panic(err) // unlike Fatal, runs the deferred Stop of the other nodes
			}
			node.Server = s
		}
		start := time.Now()
		if err := awaitRegion(r); err != nil {
			log.Panic(err)
		}
		log.Printf("%s region of %d nodes meshed in %v", k, n, time.Since(start).Round(time.Millisecond))
	}
	f(regions)
}

// regionServers lists each region's node processes, for measureNodes.
func regionServers(regions map[harness.Kind]*harness.Region) map[harness.Kind][]*harness.Server {
	out := map[harness.Kind][]*harness.Server{}
	for k, r := range regions {
		for _, n := range r.Nodes {
			out[k] = append(out[k], n.Server)
		}
	}
	return out
}

// dialNode connects a raw load client to node i of r over TLS, with the
// node's name as SNI, verifying its certificate against the region's CA
// as a Tailscale client would (it costs the handshake only, the same for
// both servers).
func dialNode(r *harness.Region, i int) (*rawClient, error) {
	n := r.Nodes[i]
	return dialRawConfig(n.Addr(), &tls.Config{ServerName: n.Name, RootCAs: r.CA.Pool})
}

// meshDial puts a load's senders on node from, its receivers on node to
// and its side receivers on node side (if side >= 0).
func meshDial(r *harness.Region, from, to, side int) func(party) (*rawClient, error) {
	return func(p party) (*rawClient, error) {
		switch p {
		case partySender:
			return dialNode(r, from)
		case partyReceiver:
			return dialNode(r, to)
		case partySide:
			if side >= 0 {
				return dialNode(r, side)
			}
		}
		return nil, fmt.Errorf("mesh load has no node for party %d", p)
	}
}

// awaitRegion waits until a packet sent on every node reaches a client on
// every other: the links are up and their peers' keys announced.
func awaitRegion(r *harness.Region) error {
	for i := range r.Nodes {
		for j := range r.Nodes {
			if i == j {
				continue
			}
			l, err := startLoad("", loadSpec{pairs: 1, dial: meshDial(r, i, j, -1), rate: 1, size: 8})
			if err != nil {
				return fmt.Errorf("%s region, node %d to node %d: %w", r.Nodes[i].Kind, i+1, j+1, err)
			}
			l.close()
		}
	}
	return nil
}

// measureMesh runs spec on region r and returns the load's figures over
// the window, the CPU of each node and their sum, and the counters the
// nodes keep on drops and waits over the same window. With slow, node 3
// turns slow once the load flows, and the warm-up is the slowdown's own.
func measureMesh(r *harness.Region, spec loadSpec, slow slowdown) (metrics, error) {
	l, err := startLoad("", spec)
	if err != nil {
		return nil, err
	}
	defer l.close()
	wait := warmup
	if slow != nil {
		wait = slow.begin()
		defer slow.end()
	}
	time.Sleep(wait)
	windowStarts(window)
	v0, err := nodeCounters(r)
	if err != nil {
		return nil, err
	}
	var cpus []*procstat.CPUMeter
	for _, n := range r.Nodes {
		cpus = append(cpus, procstat.StartCPU(n.Process().Pid))
	}
	self := procstat.StartCPU(selfPID)
	machine := procstat.StartMachine()
	if slow != nil {
		slow.mark()
	}
	c0 := l.counts()
	time.Sleep(window)
	c1 := l.counts()
	m := l.figures(c0, c1)
	dt := c1.at.Sub(c0.at).Seconds()
	total := 0.0
	for i, c := range cpus {
		v := c.Cores()
		m[fmt.Sprintf("node%d_cores", i+1)] = v
		total += v
	}
	m["server_cores"] = total
	m["loadgen_cores"] = self.Cores()
	// What else the machine did during the window: other processes, and
	// any interrupt time not charged to one. A figure measured next to a
	// busy neighbour says so here.
	m["machine_cores"] = machine.Cores()
	m["other_cores"] = m["machine_cores"] - total - m["loadgen_cores"]
	// The counters before the slowdown ends: a throttled link that opens
	// up delivers its backlog at once.
	v1, err := nodeCounters(r)
	if err != nil {
		return nil, err
	}
	if slow != nil {
		for k, v := range slow.report() {
			m[k] = v
		}
		slow.end()
	}
	for k, v := range v1 {
		m[k] = v - v0[k]
	}
	m["window_s"] = dt
	if _, ok := v1["node1_derpd_mesh_link_dropped_queue_full"]; ok {
		// Only derpd counts what its links drop; upstream's senders wait
		// instead, and what they could not send shows in written_pps.
		m["link_dropped_pps"] = (m["node1_derpd_mesh_link_dropped_queue_full"] + m["node1_derpd_mesh_link_dropped_link_down"] + m["node1_derpd_mesh_link_dropped_write_error"]) / dt
	}
	return m, nil
}

// nodeCounters reads the counters measureMesh reports from every node's
// /debug/varz, summed over their labels: packets dropped (both servers),
// and derpd's own mesh link drops by reason, queue waits and link
// sessions (a session more during a window is a link that reconnected).
// Counters a server does not have are left out.
func nodeCounters(r *harness.Region) (metrics, error) {
	out := metrics{}
	for i, n := range r.Nodes {
		vs, err := n.Metrics()
		if err != nil {
			return nil, fmt.Errorf("node %d: %w", i+1, err)
		}
		for series, v := range vs {
			name, labels, _ := strings.Cut(series, "{")
			key := ""
			switch name {
			case "derp_packets_dropped", "derpd_queue_waits", "derpd_queue_wait_timeouts", "derpd_mesh_link_sessions", "derp_packets_forwarded_out", "derp_packets_forwarded_in":
				key = name
			case "derpd_mesh_link_dropped":
				_, reason, _ := strings.Cut(labels, `reason="`)
				reason, _, _ = strings.Cut(reason, `"`)
				key = name + "_" + reason
			default:
				continue
			}
			out[fmt.Sprintf("node%d_%s", i+1, key)] += v
		}
	}
	return out, nil
}

// slowdown makes node 3 slow for one measurement.
type slowdown interface {
	// begin makes node 3 slow and returns how long to wait before the
	// window, for the slow state to settle (queues and buffers full).
	begin() time.Duration
	mark()           // the window starts
	report() metrics // what the slowdown did since mark
	end()            // node 3 is itself again; may be called twice
}

// pause is the slowPaused slowdown: a duty cycle of SIGSTOP and SIGCONT.
type pause struct {
	srv  *harness.Server
	duty dutySpec

	done     chan struct{}
	finished chan struct{}
	statsCh  chan chan pauseStats
	at       pauseStats // at mark
	ended    bool
}

// pauseStats is how long the process has been stopped so far.
type pauseStats struct {
	at      time.Time
	stopped time.Duration // in total, counting a stop in progress up to at
	longest time.Duration // the longest single stop
}

func (p *pause) begin() time.Duration {
	p.done, p.finished, p.statsCh = make(chan struct{}), make(chan struct{}), make(chan chan pauseStats)
	go p.run()
	return warmup
}

func (p *pause) run() {
	defer close(p.finished)
	var st pauseStats
	var stopAt time.Time // zero while running
	timer := time.NewTimer(0)
	defer timer.Stop()
	cont := func() {
		p.srv.Signal(syscall.SIGCONT)
		s := time.Since(stopAt)
		st.stopped += s
		st.longest = max(st.longest, s)
		stopAt = time.Time{}
	}
	next := time.Now()
	for {
		select {
		case <-p.done:
			if !stopAt.IsZero() {
				cont()
			}
			return
		case reply := <-p.statsCh:
			s := st
			s.at = time.Now()
			if !stopAt.IsZero() {
				s.stopped += s.at.Sub(stopAt)
			}
			reply <- s
		case <-timer.C:
			// Each phase is scheduled from the previous one's planned end,
			// so a late timer shortens the next phase instead of
			// stretching the period.
			if stopAt.IsZero() {
				stopAt = time.Now()
				p.srv.Signal(syscall.SIGSTOP)
				next = next.Add(p.duty.stopped)
			} else {
				cont()
				next = next.Add(p.duty.period - p.duty.stopped)
			}
			timer.Reset(time.Until(next))
		}
	}
}

func (p *pause) stats() pauseStats {
	reply := make(chan pauseStats)
	p.statsCh <- reply
	return <-reply
}

func (p *pause) mark() { p.at = p.stats() }

// report gives the fraction of the window node 3 was stopped, measured
// rather than assumed (on two busy cores the timers run late), and its
// longest stop.
func (p *pause) report() metrics {
	s := p.stats()
	return metrics{
		"slow_stopped_fraction": (s.stopped - p.at.stopped).Seconds() / s.at.Sub(p.at.at).Seconds(),
		"slow_longest_stop_ms":  float64(s.longest.Milliseconds()),
	}
}

func (p *pause) end() {
	if p.ended || p.done == nil {
		return
	}
	p.ended = true
	close(p.done)
	<-p.finished
}

// throttle is the slowThrottled slowdown: node 1's link to node 3 passes
// at most rate bytes a second.
type throttle struct {
	p     *linkProxy
	rate  int64
	at    time.Time
	bytes int64
}

// begin throttles the link and waits for it to back up: node 1's socket
// buffer to the proxy (about a megabyte on loopback) and, in derpd, the
// link's 1024-packet queue must fill before the link sheds or its
// senders wait.
func (t *throttle) begin() time.Duration {
	t.p.throttle(t.rate)
	return 2500 * time.Millisecond
}

func (t *throttle) mark() { t.at, t.bytes = time.Now(), t.p.relayed.Load() }

// report gives the bytes per second the link passed to node 3 over the
// window: the throttle's rate if it held.
func (t *throttle) report() metrics {
	return metrics{"slow_link_bytes_per_s": float64(t.p.relayed.Load()-t.bytes) / time.Since(t.at).Seconds()}
}

func (t *throttle) end() { t.p.throttle(0) }
