package main

import (
	"encoding/json"
	"fmt"
	"net/http"
	"time"

	"github.com/derpd/derpd/actors"
	"github.com/derpd/derpd/wire"
)

// trafficInterval is how often /debug/traffic writes a round, upstream's
// two seconds.
const trafficInterval = 2 * time.Second

// trafficLine is one line of /debug/traffic, field for field upstream's:
// a connection's bytes so far, each way, as seen from the server (Sent:
// written to the client; Recv: sent by it), and how many distinct
// sources it has been sent packets from.
type trafficLine struct {
	Sent          int64
	Recv          int64
	Key           wire.NodePublic
	UniqueSenders int64 `json:",omitzero"`
}

func init() {
	registerDebugEndpoint(debugEndpoint{
		Path:        "/debug/traffic",
		Description: "a stream of JSON lines, a round every 2 s: each connection whose byte counts moved, as upstream's",
		Handler:     (*server).serveTraffic,
	})
}

// serveTraffic streams, as upstream does, one JSON line per connection
// whose byte counters moved since the last round and a blank line after
// each round, until the client goes away or the server stops. Upstream
// reads the counters from the kernel with ss(8), which costs a process
// per round and sees only TCP sockets; derpd reads its own per-connection
// counters, the relayed payload bytes, which is what an operator asks
// about ("who is moving traffic through here").
func (s *server) serveTraffic(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	rc := http.NewResponseController(w)
	enc := json.NewEncoder(w)
	type counts struct{ sent, recv int64 }
	prev := map[*actors.Conn]counts{}
	tick := time.NewTicker(trafficInterval)
	defer tick.Stop()
	for {
		// The stream outlives the listener's write timeout, meant for
		// one response; each round gets time of its own.
		rc.SetWriteDeadline(time.Now().Add(trafficInterval + 10*time.Second))
		res, err := s.sys.Root.RequestFuture(s.sys.Registry, &actors.GetConns{}, debugAskTimeout).Result()
		if err != nil {
			fmt.Fprintf(w, "registry did not answer: %v\n", err)
			return
		}
		next := make(map[*actors.Conn]counts, len(prev))
		for _, e := range res.(*actors.Conns).List {
			c := e.Conn
			now := counts{c.BytesSent.Load(), c.BytesRecv.Load()}
			next[c] = now
			if was := prev[c]; was.sent < now.sent || was.recv < now.recv {
				if err := enc.Encode(trafficLine{Sent: now.sent, Recv: now.recv, Key: c.Key, UniqueSenders: c.UniqueSenders.Load()}); err != nil {
					return
				}
			}
		}
		prev = next
		if _, err := fmt.Fprintln(w); err != nil {
			return
		}
		if rc.Flush() != nil {
			return
		}
		select {
		case <-r.Context().Done():
			return
		case <-s.stopping:
			// Shutdown waits for responses in progress; a stream never
			// finishes on its own.
			return
		case <-tick.C:
		}
	}
}
