package main

import (
	"fmt"
	"math"
	"strings"

	"github.com/derpd/derpd/interop/harness"
)

type row struct {
	name           string
	derpd, derper  float64
	unit           string
	goal           string  // e.g. "≥ 3×"
	goalRatio      float64 // 0: no goal
	higherIsBetter bool
	derpdAtLeast   float64 // > 0: a goal on derpd's own figure, not the ratio
}

func (b *bench) table() string {
	var rows []row
	add := func(name, unit, goal string, goalRatio float64, higher bool, f func(k harness.Kind) float64) {
		rows = append(rows, row{name: name, derpd: f(harness.Derpd), derper: f(harness.Derper), unit: unit, goal: goal, goalRatio: goalRatio, higherIsBetter: higher})
	}
	mbps := func(pps float64) float64 { return pps * float64(b.size) * 8 / 1e6 }
	if b.hasScenario("capacity") {
		add("zero-loss capacity, 20 pairs", "packets/s", "≥ 3×", 3, true, func(k harness.Kind) float64 { return b.zeroLossCapacity("capacity", 20, k) })
		add("  same, as goodput", "Mbit/s", "", 0, true, func(k harness.Kind) float64 { return mbps(b.zeroLossCapacity("capacity", 20, k)) })
		add("server CPU at 100k packets/s", "cores", "≤ 0.5×", 0.5, false, func(k harness.Kind) float64 {
			return b.median("capacity", k, metrics{"pairs": 20, "rate": 100e3}, "server_cores")
		})
		add("delivered at 100k packets/s", "%", "", 0, true, func(k harness.Kind) float64 {
			return 100 * b.median("capacity", k, metrics{"pairs": 20, "rate": 100e3}, "delivered_ratio")
		})
	}
	if b.hasScenario("overload") {
		for _, n := range []float64{1, 4, 20, 100} {
			goal, gr := "", 0.0
			if n == 20 {
				goal, gr = "≥ 20×", 20
			}
			if !b.hasPoint("overload", metrics{"pairs": n}) {
				continue
			}
			add(fmt.Sprintf("overload goodput, %g unpaced pairs", n), "Mbit/s", goal, gr, true, func(k harness.Kind) float64 {
				return b.median("overload", k, metrics{"pairs": n}, "goodput_mbps")
			})
			add(fmt.Sprintf("  server CPU, %g unpaced pairs", n), "cores", "", 0, false, func(k harness.Kind) float64 {
				return b.median("overload", k, metrics{"pairs": n}, "server_cores")
			})
		}
		if b.hasScenario("capacity") {
			for _, n := range []float64{20, 100} {
				if !b.hasPoint("overload", metrics{"pairs": n}) {
					continue
				}
				add(fmt.Sprintf("overload goodput at %g pairs / own zero-loss capacity", n), "%", "derpd ≥ 70%", 0, true, func(k harness.Kind) float64 {
					c := mbps(b.zeroLossCapacity("capacity", 20, k))
					if c <= 0 {
						return -1
					}
					return 100 * b.median("overload", k, metrics{"pairs": n}, "goodput_mbps") / c
				})
			}
		}
	}
	if b.hasScenario("isolation") {
		add("isolation: healthy flows delivered (1 stalled receiver)", "%", "derpd ≥ 97%", 0, true, func(k harness.Kind) float64 {
			return 100 * b.median("isolation", k, metrics{"pairs": 20, "rate": 100e3}, "delivered_ratio")
		})
	}
	if b.hasScenario("latency") {
		for _, loaded := range []float64{0, 1, 2} {
			label := map[float64]string{0: "alone", 1: "same load (80% of the lower capacity)", 2: "80% of own capacity"}[loaded]
			if !b.hasPoint("latency", metrics{"pairs": 10, "loaded": loaded}) {
				continue
			}
			p := metrics{"pairs": 10, "loaded": loaded}
			add("round trip p50, "+label, "µs", "", 0, false, func(k harness.Kind) float64 { return b.median("latency", k, p, "rtt_p50_us") })
			goal, gr := "≤ 0.8×", 0.8
			if loaded == 2 {
				goal, gr = "", 0
			}
			add("round trip p99, "+label, "µs", goal, gr, false, func(k harness.Kind) float64 { return b.median("latency", k, p, "rtt_p99_us") })
			add("round trip max, "+label, "µs", "", 0, false, func(k harness.Kind) float64 { return b.median("latency", k, p, "rtt_max_us") })
		}
	}
	for _, sc := range []string{"memory", "scaling-memory", "memory-tls"} {
		for _, n := range []float64{1000, 5000, 10000, 15000} {
			if !b.hasPoint(sc, metrics{"conns": n}) {
				continue
			}
			goal, gr := "", 0.0
			if n == 10000 {
				goal, gr = "≤ 0.5×", 0.5
			}
			name := fmt.Sprintf("resident memory per idle connection, %g conns", n)
			switch sc {
			case "scaling-memory":
				name = fmt.Sprintf("  same, scaling run, %g conns", n)
			case "memory-tls":
				name = fmt.Sprintf("resident memory per idle TLS connection, %g conns", n)
				goal, gr = "", 0
			}
			add(name, "KiB", goal, gr, false, func(k harness.Kind) float64 {
				return b.median(sc, k, metrics{"conns": n}, "rss_per_conn_kib")
			})
		}
	}
	if b.hasScenario("stalled") {
		rows = append(rows, b.stalledRows()...)
	}
	if b.hasScenario("handshakes") {
		add("connection setup", "handshakes/s", "≥ 1.0×", 1, true, func(k harness.Kind) float64 {
			return b.median("handshakes", k, metrics{"workers": 8}, "handshakes_per_sec")
		})
	}
	rows = append(rows, b.meshRows()...)
	if b.hasScenario("scaling") {
		for _, n := range []int{1, 10, 100, 1000} {
			if !b.hasPairs("scaling", float64(n)) {
				continue
			}
			add(fmt.Sprintf("zero-loss capacity, %d pairs", n), "packets/s", "", 0, true, func(k harness.Kind) float64 { return b.zeroLossCapacity("scaling", n, k) })
			// With many pairs on two cores the load generator may not
			// manage to offer even the lowest rate, and zero-loss capacity
			// says nothing; the most either server delivered still does.
			add(fmt.Sprintf("  peak delivered, %d pairs", n), "packets/s", "", 0, true, func(k harness.Kind) float64 { return b.peak("scaling", n, k, "delivered_pps") })
		}
	}

	var sb strings.Builder
	if len(rows) > 0 {
		fmt.Fprintf(&sb, "| figure | unit | derpd | derper | derpd/derper | goal | met |\n|---|---|---:|---:|---:|---|---|\n")
	}
	for _, r := range rows {
		ratio := math.NaN()
		if r.derper > 0 && r.derpd >= 0 {
			ratio = r.derpd / r.derper
		}
		met := ""
		if r.goalRatio > 0 && !math.IsNaN(ratio) {
			ok := ratio >= r.goalRatio
			if !r.higherIsBetter {
				ok = ratio <= r.goalRatio
			}
			met = map[bool]string{true: "yes", false: "NO"}[ok]
		}
		if r.derpdAtLeast > 0 && r.derpd >= 0 {
			met = map[bool]string{true: "yes", false: "NO"}[r.derpd >= r.derpdAtLeast]
		}
		fmt.Fprintf(&sb, "| %s | %s | %s | %s | %s | %s | %s |\n", r.name, r.unit, num(r.derpd), num(r.derper), ratioStr(ratio), r.goal, met)
	}
	// The flows scenario compares derpd with itself, so it has a table
	// of its own.
	sb.WriteString(b.flowsTable())
	sb.WriteString(b.recordTable())
	return sb.String()
}

func num(v float64) string {
	switch {
	case v < 0:
		return "n/a"
	case v == 0:
		return "0"
	case v >= 10000:
		return fmt.Sprintf("%.0f", v)
	case v >= 100:
		return fmt.Sprintf("%.0f", v)
	case v >= 1:
		return fmt.Sprintf("%.2f", v)
	default:
		return fmt.Sprintf("%.3f", v)
	}
}

func ratioStr(r float64) string {
	if math.IsNaN(r) || math.IsInf(r, 0) {
		return "n/a"
	}
	return fmt.Sprintf("%.2f×", r)
}

func (b *bench) hasScenario(s string) bool {
	for _, r := range b.runs {
		if r.Scenario == s {
			return true
		}
	}
	return false
}

func (b *bench) hasPoint(s string, p metrics) bool {
	for _, r := range b.runs {
		if r.Scenario == s && sameParams(r.Params, p) {
			return true
		}
	}
	return false
}

func (b *bench) hasPairs(s string, n float64) bool {
	for _, r := range b.runs {
		if r.Scenario == s && r.Params["pairs"] == n {
			return true
		}
	}
	return false
}

// meshRows are the mesh scenarios' figures.
func (b *bench) meshRows() []row {
	var rows []row
	add := func(name, unit, goal string, goalRatio float64, higher bool, f func(k harness.Kind) float64) *row {
		rows = append(rows, row{name: name, derpd: f(harness.Derpd), derper: f(harness.Derper), unit: unit, goal: goal, goalRatio: goalRatio, higherIsBetter: higher})
		return &rows[len(rows)-1]
	}
	mbps := func(pps float64) float64 { return pps * float64(b.size) * 8 / 1e6 }
	if b.hasScenario("mesh") {
		zl := func(k harness.Kind) float64 { return b.zeroLossCapacity("mesh", meshPairs, k) }
		add(fmt.Sprintf("mesh: cross-node zero-loss capacity, %d pairs, node 1 → node 2", meshPairs), "packets/s", "≥ 5×", 5, true, zl)
		add("  same, as goodput", "Mbit/s", "", 0, true, func(k harness.Kind) float64 { return mbps(zl(k)) })
		add("  peak delivered cross-node", "packets/s", "", 0, true, func(k harness.Kind) float64 { return b.peak("mesh", meshPairs, k, "delivered_pps") })
		p := metrics{"pairs": meshPairs, "rate": meshCPURate}
		if b.hasPoint("mesh", p) {
			at := fmt.Sprintf("%gk packets/s cross-node", meshCPURate/1e3)
			add("mesh: server CPU at "+at+", both nodes", "cores", "", 0, false, func(k harness.Kind) float64 { return b.median("mesh", k, p, "server_cores") })
			add("  node 1 (senders' node)", "cores", "", 0, false, func(k harness.Kind) float64 { return b.median("mesh", k, p, "node1_cores") })
			add("  node 2 (receivers' node)", "cores", "", 0, false, func(k harness.Kind) float64 { return b.median("mesh", k, p, "node2_cores") })
			add("  delivered at "+at, "%", "", 0, true, func(k harness.Kind) float64 { return 100 * b.median("mesh", k, p, "delivered_ratio") })
		}
		// The machine is not the benchmark's alone: CPU that went to
		// other processes during the windows, median over the sweep's
		// measurements of each server.
		add("  other work on the machine during the sweep, median", "cores", "", 0, false, func(k harness.Kind) float64 {
			// /proc's tick-based counts make it a few hundredths
			// negative on a quiet machine; that means none.
			return max(0, b.scenarioMedian("mesh", k, "other_cores"))
		})
	}
	if b.hasScenario("mesh-slow") {
		point := func(slow float64) metrics { return metrics{"pairs": meshPairs, "rate": slowRate, "slow": slow} }
		labels := map[float64]string{
			0:             "node 3 responsive",
			slowPaused:    fmt.Sprintf("node 3 paused %v of every %v", slowNode.stopped, slowNode.period),
			slowThrottled: fmt.Sprintf("node 3 reads node 1's link at %g MiB/s", float64(slowLinkRate)/(1<<20)),
		}
		for _, slow := range []float64{0, slowPaused, slowThrottled} {
			p := point(slow)
			if !b.hasPoint("mesh-slow", p) {
				continue
			}
			add(fmt.Sprintf("mesh: healthy flows node 1 → node 2 delivered, %s", labels[slow]), "%", "", 0, true, func(k harness.Kind) float64 {
				return 100 * b.median("mesh-slow", k, p, "delivered_ratio")
			})
			if slow == 0 {
				continue
			}
			add("  same, slow / responsive", "%", "derpd ≥ 99%", 0, true, func(k harness.Kind) float64 {
				fast := b.median("mesh-slow", k, point(0), "delivered_ratio")
				if fast <= 0 {
					return -1
				}
				return 100 * b.median("mesh-slow", k, p, "delivered_ratio") / fast
			}).derpdAtLeast = 99
			add("  flows to node 3 delivered", "%", "", 0, true, func(k harness.Kind) float64 {
				return 100 * b.median("mesh-slow", k, p, "side_delivered_ratio")
			})
			add("  dropped by node 1's link to node 3 (only derpd counts)", "packets/s", "", 0, false, func(k harness.Kind) float64 {
				return b.median("mesh-slow", k, p, "link_dropped_pps")
			})
			add("  server CPU, all three nodes", "cores", "", 0, false, func(k harness.Kind) float64 {
				return b.median("mesh-slow", k, p, "server_cores")
			})
		}
	}
	return rows
}

// scenarioMedian is the median of metric over every measurement of a
// scenario and server, whatever its parameters.
func (b *bench) scenarioMedian(scenario string, k harness.Kind, metric string) float64 {
	return b.medianOf(metric, func(r *run) bool { return r.Scenario == scenario && r.Server == k })
}
