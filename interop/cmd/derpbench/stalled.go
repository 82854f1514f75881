package main

import (
	"fmt"
	"net"
	"sync"
	"time"

	"github.com/derpd/derpd/interop/harness"
	"github.com/derpd/derpd/interop/internal/procstat"
	"github.com/derpd/derpd/wire"
)

// The stalled scenario: what receivers that have stopped reading, and
// are flooded all the while, cost everyone else. Healthy pairs measure
// their round trips (as the latency scenario does) alone, then with
// stalledReceivers receivers that never read, to which flooders send a
// steady stalledFloodPPS. Both servers run with -tcp-write-timeout=0, so
// that the stalled receivers stay connected (and their queues full) for
// the whole window instead of being cut off after 2 s: the figure is the
// steady state of a stall, which the write deadline only shortens.
const (
	stalledReceivers = 50
	stalledFlooders  = 4
	stalledFloodPPS  = 20e3
)

func (b *bench) stalledScenario() {
	d := 3 * time.Second
	if b.quick {
		d = time.Second
	}
	b.withServers(harness.Options{Args: []string{"-tcp-write-timeout=0"}}, func(srvs map[harness.Kind]*harness.Server) {
		for _, n := range []int{0, stalledReceivers} {
			b.measure("stalled", metrics{"stalled": float64(n)}, srvs, func(s *harness.Server) (metrics, error) {
				return stalledLatency(s, n, b.size, d)
			})
		}
	})
}

// stalledLatency floods n stalled receivers (none: no flood) and
// measures healthy round trips meanwhile.
func stalledLatency(srv *harness.Server, n, size int, d time.Duration) (metrics, error) {
	var stalled, flooders []*rawClient
	defer func() {
		for _, c := range append(stalled, flooders...) {
			c.Close()
		}
	}()
	var dsts []wire.NodePublic
	for range n {
		c, err := dialRaw(srv.Addr())
		if err != nil {
			return nil, err
		}
		c.conn.(*net.TCPConn).SetReadBuffer(4096)
		stalled = append(stalled, c)
		dsts = append(dsts, c.pub)
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var senders []*sender
	if n > 0 {
		for range stalledFlooders {
			c, err := dialRaw(srv.Addr())
			if err != nil {
				return nil, err
			}
			flooders = append(flooders, c)
			s := &sender{rc: c, pattern: sendPattern(dsts, size), per: len(dsts), rate: stalledFloodPPS / stalledFlooders}
			senders = append(senders, s)
			wg.Add(1)
			go s.run(stop, &wg)
		}
	}
	defer func() {
		close(stop)
		for _, c := range flooders {
			c.Close() // a flooder blocked in a write must not hold wg
		}
		wg.Wait()
	}()
	// Long enough for every stalled receiver's socket buffers and queue
	// to fill.
	time.Sleep(warmup)
	var flooded0 int64
	for _, s := range senders {
		flooded0 += s.sent.Load()
	}
	cpu := procstat.StartCPU(srv.Process().Pid)
	t0 := time.Now()
	m, err := latency(srv, 10, d)
	if err != nil {
		return nil, err
	}
	var flooded int64
	for _, s := range senders {
		flooded += s.sent.Load()
	}
	m["flood_pps"] = float64(flooded-flooded0) / time.Since(t0).Seconds()
	m["server_cores"] = cpu.Cores()
	if n > 0 {
		mm, err := srv.Metrics()
		if err != nil {
			return nil, err
		}
		// Every stalled receiver still there, or the window measured less
		// than it says. (The latency pairs, just closed, may still count.)
		if got, want := mm["derp_current_connections"], float64(n+stalledFlooders); got < want {
			return m, fmt.Errorf("%v connections at the end of the window, want at least %v", got, want)
		}
	}
	return m, nil
}

// stalledRows are the stalled scenario's lines of the table: healthy
// round trips alone and beside the flooded stalled receivers, and how
// much the stall made them grow (the figure to hold within a small
// factor).
func (b *bench) stalledRows() []row {
	alone, flooded := metrics{"stalled": 0}, metrics{"stalled": stalledReceivers}
	var rows []row
	add := func(name, unit string, f func(k harness.Kind) float64) {
		rows = append(rows, row{name: name, derpd: f(harness.Derpd), derper: f(harness.Derper), unit: unit})
	}
	for _, q := range []string{"p50", "p99"} {
		metric := "rtt_" + q + "_us"
		add(fmt.Sprintf("round trip %s, %d stalled receivers flooded", q, stalledReceivers), "µs", func(k harness.Kind) float64 {
			return b.median("stalled", k, flooded, metric)
		})
		add("  same, over the figure without them", "×", func(k harness.Kind) float64 {
			base := b.median("stalled", k, alone, metric)
			if base <= 0 {
				return -1
			}
			return b.median("stalled", k, flooded, metric) / base
		})
	}
	return rows
}
