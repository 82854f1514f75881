package main

import (
	"fmt"
	"io"
	"sort"
	"strings"
)

func count(v float64) string {
	if v < 0 {
		return "n/a"
	}
	return fmt.Sprintf("%.0f", v)
}

func mib(v float64) string {
	if v < 0 {
		return "n/a"
	}
	return fmt.Sprintf("%.1f MiB", v/(1<<20))
}

func ms(v float64) string {
	if v >= 1000 {
		return fmt.Sprintf("%.1f s", v/1000)
	}
	if v >= 10 {
		return fmt.Sprintf("%.0f ms", v)
	}
	return fmt.Sprintf("%.2f ms", v)
}

// short writes a count with k or M, for the report lines.
func short(v float64) string {
	switch {
	case v < 0:
		return "n/a"
	case v >= 10e6:
		return fmt.Sprintf("%.0fM", v/1e6)
	case v >= 1e6:
		return fmt.Sprintf("%.1fM", v/1e6)
	case v >= 10e3:
		return fmt.Sprintf("%.0fk", v/1e3)
	case v >= 1e3:
		return fmt.Sprintf("%.1fk", v/1e3)
	}
	return fmt.Sprintf("%.0f", v)
}

// gauges is a look in one line.
func gauges(l look) string {
	s := fmt.Sprintf("conns %s goroutines %s", count(l.Conns), count(l.Goroutines))
	if l.Actors >= 0 {
		s += fmt.Sprintf(" actors %s (clients %s)", count(l.Actors), count(l.ClientActors))
	}
	if l.Flows >= 0 {
		s += fmt.Sprintf(" flows %s", short(l.Flows))
	}
	if l.RegistryMailbox >= 0 {
		s += fmt.Sprintf(" registry mailbox %s", short(l.RegistryMailbox))
	}
	return s + fmt.Sprintf(" heap %s rss %s", mib(l.HeapBytes), mib(l.RSSBytes))
}

// drops lists the server's drops by reason, biggest first, leaving out
// reasons with none.
func drops(server map[string]float64) string {
	type rd struct {
		reason string
		n      float64
	}
	var ds []rd
	for k, v := range server {
		if r, ok := strings.CutPrefix(k, "drop:"); ok && v > 0 {
			ds = append(ds, rd{r, v})
		}
	}
	if len(ds) == 0 {
		return "none"
	}
	sort.Slice(ds, func(i, j int) bool { return ds[i].n > ds[j].n || ds[i].n == ds[j].n && ds[i].reason < ds[j].reason })
	var parts []string
	for _, d := range ds {
		parts = append(parts, fmt.Sprintf("%s %s", d.reason, short(d.n)))
	}
	return strings.Join(parts, ", ")
}

// intervalLine is one report line: what happened since the previous one
// (connects, leaves, packets, drops) and the state now.
func intervalLine(label string, rec intervalRecord, prev counts, prevServer map[string]float64) string {
	c := rec.Counts
	d := map[string]float64{}
	for k, v := range rec.Server {
		d[k] = v - prevServer[k]
	}
	left := (c.LeftByLifetime + c.CutOffStalled + c.DupClosed + c.Unexpected) - (prev.LeftByLifetime + prev.CutOffStalled + prev.DupClosed + prev.Unexpected)
	return fmt.Sprintf("%-6s %4.0fs clients %d (+%d -%d, %d not reading, %d moving) | sent %s delivered %s, to departed %s | drops %s | errors %d | latency p99 %s max %s | %s | cores server %.2f soak %.2f machine %.2f load %.1f",
		label, rec.T, c.Live, c.Connects-prev.Connects, left, c.Stalled, c.Moving,
		short(float64(c.Sent-prev.Sent)), short(float64(c.Delivered-prev.Delivered)), short(float64(c.SentDeparted-prev.SentDeparted)),
		drops(d), c.Errors()-prev.Errors(), ms(rec.Latency.P99Ms), ms(rec.Latency.MaxMs), gauges(rec.Look), rec.Cores.Server, rec.Cores.Soak, rec.Cores.Machine, rec.Cores.Load1)
}

// summary writes one server's result for people.
func summary(w io.Writer, r *result) {
	c := r.Counts
	fmt.Fprintf(w, "\n== %s: %.0fs of %d clients, %.0f packets/s offered, after a warm-up of %.0fs ==\n", r.Target, r.Duration, r.Clients, r.Rate, r.Warmup)
	fmt.Fprintf(w, "clients: %d connects (%d of them a second connection with a key already connected), peak %d connected at once\n",
		c.Connects, c.DupConnects, r.PeakLive)
	fmt.Fprintf(w, "         left: %d at the end of their life, %d cut off by the relay after they stopped reading (%d stalls), %d older duplicates closed by the relay, %d closed for no reason\n",
		c.LeftByLifetime, c.CutOffStalled, c.Stalls, c.DupClosed, c.Unexpected)
	fmt.Fprintf(w, "packets: %d sent (%d to departed keys, %d to clients not reading, %d disco-shaped); %d delivered (%d disco); %d not delivered (%.2f%%)\n",
		c.Sent, c.SentDeparted, c.SentStalled, c.SentDisco, c.Delivered, c.DeliveredDisc, c.Sent-c.Delivered, pct(c.Sent-c.Delivered, c.Sent))
	fmt.Fprintf(w, "         to healthy clients (live, never stopped reading): %d sent, %d delivered (%.3f%%); to clients not reading: %d sent, %d delivered; to departed keys: %d delivered while leaving\n",
		c.SentHealthy(), c.DeliveredHealthy(), 100-pct(c.SentHealthy()-c.DeliveredHealthy(), c.SentHealthy()), c.SentStalled, c.DeliveredStal, c.DeliveredDept)
	fmt.Fprintf(w, "         %d sends failed on connections already closing or cut off (not counted sent); PeerGone: %d disconnected, %d not here\n",
		c.SendFailed, c.PeerGoneGone, c.PeerGoneNot)
	fmt.Fprintf(w, "latency: to healthy clients, p50 ≤ %s, p99 ≤ %s, p99.9 ≤ %s, max %s; %d packets took a second or more\n",
		ms(r.Latency.P50Ms), ms(r.Latency.P99Ms), ms(r.Latency.P999Ms), ms(r.Latency.MaxMs), r.Latency.OverSecond)
	fmt.Fprintf(w, "server:  received %s, sent %s; drops %s\n", count(get(r.Server, "derp_packets_received")), count(get(r.Server, "derp_packets_sent")), drops(r.Server))
	fmt.Fprintf(w, "         write timeouts %s, duplicate connections %s, handshake errors %s, unknown frames %s\n",
		count(get(r.Server, "derp_sclient_write_timeouts")), count(get(r.Server, "derp_total_dup_client_conns")),
		count(get(r.Server, "derpd_handshake_errors")), count(get(r.Server, "derp_unknown_frames")))
	fmt.Fprintf(w, "errors:  %d\n", c.Errors())
	fmt.Fprintf(w, "cores:   server %.2f, soak %.2f, whole machine %.2f (of 2), on average over the load; load average %.1f\n", r.ServerCores, r.SoakCores, r.MachineCore, r.LoadAverage)
	fmt.Fprintf(w, "%-12s %12s %12s %12s %12s %12s\n", "", "cold", "warm-up peak", "baseline", "peak", "final")
	row := func(name string, f func(float64) string, g func(look) float64) {
		fmt.Fprintf(w, "%-12s %12s %12s %12s %12s %12s\n", name, f(g(r.Cold)), f(g(r.WarmPeak)), f(g(r.Baseline)), f(g(r.Peak)), f(g(r.Final)))
	}
	row("connections", count, func(l look) float64 { return l.Conns })
	row("goroutines", count, func(l look) float64 { return l.Goroutines })
	row("actors", count, func(l look) float64 { return l.Actors })
	row("flows", count, func(l look) float64 { return l.Flows })
	row("heap", mib, func(l look) float64 { return l.HeapBytes })
	row("rss", mib, func(l look) float64 { return l.RSSBytes })
	row("registry mbox", count, func(l look) float64 { return l.RegistryMailbox })
	if r.SettledIn >= 0 {
		fmt.Fprintf(w, "back to baseline %.0fs after the load stopped\n", r.SettledIn)
	} else {
		fmt.Fprintf(w, "NOT back to baseline when the settle time ran out\n")
	}
	if len(r.TopStacks) > 0 {
		fmt.Fprintf(w, "goroutines at the end, by stack:\n")
		for _, g := range r.TopStacks {
			fmt.Fprintf(w, "  %5d  %s\n", g.Count, g.where())
		}
	}
	for _, ch := range r.Checks {
		verdict := "PASS"
		switch {
		case ch.Skip:
			verdict = "SKIP"
		case !ch.Pass:
			verdict = "FAIL"
		}
		fmt.Fprintf(w, "%s %s %s: %s\n", verdict, r.Target, ch.Name, ch.Detail)
	}
}

func pct(a, b int64) float64 {
	if b == 0 {
		return 0
	}
	return 100 * float64(a) / float64(b)
}

// sideBySide is the results as one Markdown table, a column per server.
func sideBySide(rs []*result) string {
	var b strings.Builder
	b.WriteString("| figure |")
	for _, r := range rs {
		fmt.Fprintf(&b, " %s |", r.Target)
	}
	b.WriteString("\n|---|")
	for range rs {
		b.WriteString("---:|")
	}
	b.WriteString("\n")
	row := func(name string, f func(*result) string) {
		fmt.Fprintf(&b, "| %s |", name)
		for _, r := range rs {
			fmt.Fprintf(&b, " %s |", f(r))
		}
		b.WriteString("\n")
	}
	i := func(f func(*result) int64) func(*result) string {
		return func(r *result) string { return fmt.Sprint(f(r)) }
	}
	srv := func(name string) func(*result) string {
		return func(r *result) string { return count(get(r.Server, name)) }
	}
	four := func(f func(look) float64, fm func(float64) string) func(*result) string {
		return func(r *result) string {
			return fmt.Sprintf("%s / %s / %s / %s", fm(f(r.Cold)), fm(f(r.Baseline)), fm(f(r.Peak)), fm(f(r.Final)))
		}
	}
	row("load", func(r *result) string {
		return fmt.Sprintf("%.0f s (after %.0f s of warm-up), %d clients, %.0f packets/s", r.Duration, r.Warmup, r.Clients, r.Rate)
	})
	row("peak clients connected", i(func(r *result) int64 { return r.PeakLive }))
	row("connects (of them same-key moves)", func(r *result) string {
		return fmt.Sprintf("%d (%d)", r.Counts.Connects, r.Counts.DupConnects)
	})
	row("left at end of life", i(func(r *result) int64 { return r.Counts.LeftByLifetime }))
	row("cut off after not reading (stalls)", func(r *result) string {
		return fmt.Sprintf("%d (%d)", r.Counts.CutOffStalled, r.Counts.Stalls)
	})
	row("older duplicate closed by the relay", i(func(r *result) int64 { return r.Counts.DupClosed }))
	row("packets sent", i(func(r *result) int64 { return r.Counts.Sent }))
	row("  disco-shaped", i(func(r *result) int64 { return r.Counts.SentDisco }))
	row("packets delivered", func(r *result) string {
		return fmt.Sprintf("%d (%.2f%%)", r.Counts.Delivered, 100-pct(r.Counts.Sent-r.Counts.Delivered, r.Counts.Sent))
	})
	row("not delivered", i(func(r *result) int64 { return r.Counts.Sent - r.Counts.Delivered }))
	row("to healthy clients (live, never stopped reading): sent, delivered", func(r *result) string {
		c := r.Counts
		return fmt.Sprintf("%d, %d (%.3f%%)", c.SentHealthy(), c.DeliveredHealthy(), 100-pct(c.SentHealthy()-c.DeliveredHealthy(), c.SentHealthy()))
	})
	row("to clients not reading: sent, delivered", func(r *result) string {
		return fmt.Sprintf("%d, %d", r.Counts.SentStalled, r.Counts.DeliveredStal)
	})
	row("to departed keys: sent, delivered while leaving", func(r *result) string {
		return fmt.Sprintf("%d, %d", r.Counts.SentDeparted, r.Counts.DeliveredDept)
	})
	row("latency to healthy clients: p50 / p99 / p99.9 (bucket tops) / max", func(r *result) string {
		l := r.Latency
		return fmt.Sprintf("%s / %s / %s / %s", ms(l.P50Ms), ms(l.P99Ms), ms(l.P999Ms), ms(l.MaxMs))
	})
	row("packets delivered after a second or more", i(func(r *result) int64 { return r.Latency.OverSecond }))
	row("server drops, by reason", func(r *result) string { return drops(r.Server) })
	row("server write timeouts", srv("derp_sclient_write_timeouts"))
	row("errors (connect, unexpected close, misdelivered)", func(r *result) string {
		c := r.Counts
		return fmt.Sprintf("%d (%d, %d, %d)", c.Errors(), c.ConnectErrors, c.Unexpected, c.Misdelivered)
	})
	row("server cores, average", func(r *result) string { return fmt.Sprintf("%.2f", r.ServerCores) })
	row("soak cores, average", func(r *result) string { return fmt.Sprintf("%.2f", r.SoakCores) })
	row("machine cores, average (of 2)", func(r *result) string { return fmt.Sprintf("%.2f", r.MachineCore) })
	row("machine load average, average", func(r *result) string { return fmt.Sprintf("%.1f", r.LoadAverage) })
	row("RSS cold / baseline / peak / final", four(func(l look) float64 { return l.RSSBytes }, mib))
	row("heap cold / baseline / peak / final", four(func(l look) float64 { return l.HeapBytes }, mib))
	row("goroutines cold / baseline / peak / final", four(func(l look) float64 { return l.Goroutines }, count))
	row("actors cold / baseline / peak / final", four(func(l look) float64 { return l.Actors }, count))
	row("registry mailbox peak (messages waiting)", func(r *result) string { return count(r.Peak.RegistryMailbox) })
	row("connections cold / baseline / peak / final", four(func(l look) float64 { return l.Conns }, count))
	row("back to baseline after", func(r *result) string {
		if r.SettledIn < 0 {
			return "not within the settle time"
		}
		return fmt.Sprintf("%.0f s", r.SettledIn)
	})
	row("leaks and failures", func(r *result) string {
		var bad []string
		for _, c := range r.Checks {
			if !c.Pass && !c.Skip {
				bad = append(bad, c.Name)
			}
		}
		if len(bad) == 0 {
			return "none"
		}
		return "FAIL: " + strings.Join(bad, ", ")
	})
	return b.String()
}
