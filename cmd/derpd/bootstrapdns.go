package main

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"math/rand/v2"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/derpd/derpd/actors"
	"github.com/rs/zerolog"
)

// Bootstrap DNS lets Tailscale clients find their control server when
// their own DNS is broken: DERP servers publish the addresses of a few
// names. Names are re-resolved on a timer, never per request.
const (
	bootstrapRefresh = 10 * time.Minute
	bootstrapTimeout = time.Minute
	// bootstrapMaxQueried bounds the set of distinct ?q= names counted,
	// so clients cannot grow it without limit.
	bootstrapMaxQueried = 500
)

// resolver is what bootstrap DNS needs from DNS; tests substitute one.
type resolver interface {
	LookupNetIP(ctx context.Context, network, host string) ([]netip.Addr, error)
	LookupTXT(ctx context.Context, name string) ([]string, error)
}

// unpublishedName is an -unpublished-bootstrap-dns-names entry:
// "name" (always answered) or "name/txtname" (answered to the share of
// clients the TXT record of txtname gives, 0–100).
type unpublishedName struct {
	name, txtName string
}

type bootstrapDNS struct {
	published   []string
	unpublished []unpublishedName
	res         resolver
	log         zerolog.Logger

	// Replaced as a whole on each refresh; read without locks.
	publishedJSON atomic.Pointer[[]byte]
	unpubAddrs    atomic.Pointer[map[string][]string]
	unpubPercent  atomic.Pointer[map[string]int]

	requests, pubHits, pubMisses, unpubHits, unpubMisses, unpubPercentMisses atomic.Int64
	queriedMu                                                                sync.Mutex
	queried                                                                  map[string]bool
}

func newBootstrapDNS(published, unpublished string, res resolver, log zerolog.Logger) *bootstrapDNS {
	b := &bootstrapDNS{res: res, log: log, queried: map[string]bool{}}
	for _, n := range splitList(published) {
		b.published = append(b.published, n)
	}
	for _, n := range splitList(unpublished) {
		name, txt, _ := strings.Cut(n, "/")
		b.unpublished = append(b.unpublished, unpublishedName{name: name, txtName: txt})
	}
	empty := []byte{}
	b.publishedJSON.Store(&empty)
	b.unpubAddrs.Store(&map[string][]string{})
	b.unpubPercent.Store(&map[string]int{})
	return b
}

func splitList(s string) []string {
	var out []string
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}

func (b *bootstrapDNS) configured() bool { return len(b.published)+len(b.unpublished) > 0 }

// run refreshes now and then every bootstrapRefresh until ctx ends.
func (b *bootstrapDNS) run(ctx context.Context) {
	if !b.configured() {
		return
	}
	t := time.NewTicker(bootstrapRefresh)
	defer t.Stop()
	for {
		b.refresh(ctx)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// refresh resolves every name. A name that fails keeps its old addresses:
// a DNS hiccup must not empty the answer clients depend on when their own
// DNS is failing.
func (b *bootstrapDNS) refresh(ctx context.Context) {
	ctx, cancel := context.WithTimeout(ctx, bootstrapTimeout)
	defer cancel()
	var old map[string][]string
	if prev := *b.publishedJSON.Load(); len(prev) > 0 {
		json.Unmarshal(prev, &old)
	}
	pub := map[string][]string{}
	for _, name := range b.published {
		if addrs, err := b.lookup(ctx, name); err == nil {
			pub[name] = addrs
		} else if prev, ok := old[name]; ok {
			pub[name] = prev
		}
	}
	js, _ := json.MarshalIndent(pub, "", "\t")
	if len(b.published) == 0 {
		js = []byte{}
	}
	b.publishedJSON.Store(&js)

	oldUnpub := *b.unpubAddrs.Load()
	unpub := map[string][]string{}
	percent := map[string]int{}
	for _, u := range b.unpublished {
		if addrs, err := b.lookup(ctx, u.name); err == nil {
			unpub[u.name] = addrs
		} else if prev, ok := oldUnpub[u.name]; ok {
			unpub[u.name] = prev
		}
		percent[u.name] = 100
		if u.txtName != "" {
			percent[u.name] = b.rolloutPercent(ctx, u.txtName)
		}
	}
	b.unpubAddrs.Store(&unpub)
	b.unpubPercent.Store(&percent)
}

func (b *bootstrapDNS) lookup(ctx context.Context, name string) ([]string, error) {
	ips, err := b.res.LookupNetIP(ctx, "ip", name)
	if err != nil {
		b.log.Warn().Err(err).Str("name", name).Msg("bootstrap DNS: lookup failed")
		return nil, err
	}
	out := make([]string, len(ips))
	for i, ip := range ips {
		out[i] = ip.Unmap().String()
	}
	// Shuffled once per refresh, so clients spread over the addresses.
	rand.Shuffle(len(out), func(i, j int) { out[i], out[j] = out[j], out[i] })
	return out, nil
}

// rolloutPercent reads a TXT record holding 0–100, as upstream does: of
// several strings the last that parses wins; anything else, or no record,
// means 0, so a rollout that cannot be read is off.
func (b *bootstrapDNS) rolloutPercent(ctx context.Context, txtName string) int {
	txts, err := b.res.LookupTXT(ctx, txtName)
	if err != nil {
		return 0
	}
	p := 0
	for _, txt := range txts {
		if v, err := strconv.Atoi(txt); err == nil && v >= 0 && v <= 100 {
			p = v
		}
	}
	return p
}

// inRollout decides whether a client is in a percent rollout. It draws
// exactly as upstream derper does, so that in a region mixing derpd and
// derper a client gets the same answer from every node: the client's
// address as 16 bytes (IPv4 mapped) seeds a PCG generator with its two
// little-endian halves, and the client is in when percent/100 exceeds the
// generator's first Float64. The draw is stable per address, so a client
// does not flip between answers. Loopback clients (tests, a local proxy)
// draw afresh each time against the percent (upstream answers them yes
// half the time whatever the percent; there is no address to agree on).
func inRollout(client netip.Addr, percent int) bool {
	if percent >= 100 {
		return true
	}
	if percent <= 0 || !client.IsValid() {
		return false
	}
	if client.IsLoopback() {
		return rand.IntN(100) < percent
	}
	a := client.As16()
	draw := rand.New(rand.NewPCG(binary.LittleEndian.Uint64(a[:8]), binary.LittleEndian.Uint64(a[8:]))).Float64()
	return float64(percent)/100 > draw
}

func (b *bootstrapDNS) serveHTTP(w http.ResponseWriter, r *http.Request) {
	b.requests.Add(1)
	setBrowserHeaders(w.Header())
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Connection", "close")
	if q := r.URL.Query().Get("q"); q != "" {
		b.noteQueried(q)
		addrs, ok := (*b.unpubAddrs.Load())[q]
		if ok && len(addrs) > 0 {
			client := remoteAddrPort(r).Addr()
			if inRollout(client, (*b.unpubPercent.Load())[q]) {
				b.unpubHits.Add(1)
				js, _ := json.MarshalIndent(map[string][]string{q: addrs}, "", "\t")
				w.Write(js)
				return
			}
			b.unpubPercentMisses.Add(1)
		} else {
			b.unpubMisses.Add(1)
		}
		if _, pub := b.publishedSet()[q]; pub {
			b.pubHits.Add(1)
		} else {
			b.pubMisses.Add(1)
		}
	}
	w.Write(*b.publishedJSON.Load())
}

func (b *bootstrapDNS) publishedSet() map[string]struct{} {
	m := make(map[string]struct{}, len(b.published))
	for _, n := range b.published {
		m[n] = struct{}{}
	}
	return m
}

func (b *bootstrapDNS) noteQueried(q string) {
	b.queriedMu.Lock()
	defer b.queriedMu.Unlock()
	if len(b.queried) >= bootstrapMaxQueried {
		clear(b.queried)
	}
	b.queried[q] = true
}

func (b *bootstrapDNS) writePrometheus(p actors.PromWriter) {
	p.Counter("bootstrap_dns_requests", b.requests.Load())
	p.Counter("bootstrap_dns_published_hits", b.pubHits.Load())
	p.Counter("bootstrap_dns_published_misses", b.pubMisses.Load())
	p.Counter("bootstrap_dns_unpublished_hits", b.unpubHits.Load())
	p.Counter("bootstrap_dns_unpublished_misses", b.unpubMisses.Load())
	p.Counter("bootstrap_dns_unpublished_percent_misses", b.unpubPercentMisses.Load())
	b.queriedMu.Lock()
	n := len(b.queried)
	b.queriedMu.Unlock()
	p.Gauge("bootstrap_dns_queried_domains", int64(n))
}
