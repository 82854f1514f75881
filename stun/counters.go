package stun

import (
	"fmt"
	"io"
	"sync/atomic"
)

// Counters tally what the server did with each datagram. They are
// exported under upstream's Prometheus names because operators' existing
// dashboards and alerts are written against those.
type Counters struct {
	// One of these is bumped per datagram read, or per failed read.
	Success    atomic.Int64 // answered
	NotSTUN    atomic.Int64 // not a Tailscale Binding Request; ignored
	ReadError  atomic.Int64
	WriteError atomic.Int64 // parsed, but the answer could not be sent

	// The requester's address family, for every request that parsed. An
	// IPv4 peer on a dual-stack socket counts as IPv4.
	IPv4 atomic.Int64
	IPv6 atomic.Int64
}

// WritePrometheus writes the counters in the Prometheus text exposition
// format. Every series is written even at zero, so that rate() and
// absent() queries behave from the first scrape on.
func (c *Counters) WritePrometheus(w io.Writer) {
	fmt.Fprintf(w, "# TYPE stun_requests counter\n"+
		"stun_requests{disposition=\"success\"} %d\n"+
		"stun_requests{disposition=\"not_stun\"} %d\n"+
		"stun_requests{disposition=\"read_error\"} %d\n"+
		"stun_requests{disposition=\"write_error\"} %d\n",
		c.Success.Load(), c.NotSTUN.Load(), c.ReadError.Load(), c.WriteError.Load())
	fmt.Fprintf(w, "# TYPE stun_addrfamily counter\n"+
		"stun_addrfamily{family=\"ipv4\"} %d\n"+
		"stun_addrfamily{family=\"ipv6\"} %d\n",
		c.IPv4.Load(), c.IPv6.Load())
}
