package interop

import (
	"bufio"
	"bytes"
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/derpd/derpd/interop/harness"
	"tailscale.com/types/key"
)

// trafficLine is one line of /debug/traffic, as upstream's
// derpserver.BytesSentRecv encodes it.
type trafficLine struct {
	Sent, Recv    uint64
	Key           key.NodePublic
	UniqueSenders uint64
}

// trafficStream reads /debug/traffic round by round.
type trafficStream struct {
	t  *testing.T
	br *bufio.Reader
}

func openTraffic(t *testing.T, srv *harness.Server) *trafficStream {
	t.Helper()
	// The bound ends a stream that stalls; rounds come every 2 s.
	c := &http.Client{Timeout: 4 * harness.Wait}
	res, err := c.Get(srv.BaseURL() + "/debug/traffic")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { res.Body.Close() })
	if res.StatusCode != 200 {
		t.Fatalf("/debug/traffic: %s", res.Status)
	}
	return &trafficStream{t: t, br: bufio.NewReader(res.Body)}
}

// round reads one round: the lines up to the blank line that ends it.
func (s *trafficStream) round() map[key.NodePublic]trafficLine {
	s.t.Helper()
	out := map[key.NodePublic]trafficLine{}
	for {
		line, err := s.br.ReadBytes('\n')
		if err != nil {
			s.t.Fatalf("/debug/traffic ended: %v", err)
		}
		if len(bytes.TrimSpace(line)) == 0 {
			return out
		}
		var l trafficLine
		dec := json.NewDecoder(bytes.NewReader(line))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&l); err != nil {
			s.t.Fatalf("/debug/traffic line %q: %v", line, err)
		}
		if _, dup := out[l.Key]; dup {
			s.t.Errorf("%v twice in one round", l.Key.ShortString())
		}
		out[l.Key] = l
	}
}

// /debug/traffic streams, every round, the connections whose byte counts
// moved since the last: what each was sent and sent us, and from how many
// sources. A quiet connection is left out.
func TestDebugTraffic(t *testing.T) {
	if harness.TargetFromEnv() != harness.Derpd {
		// Upstream reads the kernel's TCP counters with ss(8): whole
		// frames, keepalives and handshakes included, so its numbers are
		// not the payload counts checked here.
		t.Skip("derpd's /debug/traffic counts relayed payload bytes")
	}
	srv := start(t, harness.Options{})
	a, b, c, quiet := connect(t, srv), connect(t, srv), connect(t, srv), connect(t, srv)
	for i := range 3 {
		msg := bytes.Repeat([]byte{byte(i)}, 100)
		if err := a.Send(b.Pub, msg); err != nil {
			t.Fatal(err)
		}
		b.ExpectPacket(t, a.Pub, msg)
	}
	s := openTraffic(t, srv)
	first := s.round()
	if got, want := first[a.Pub], (trafficLine{Key: a.Pub, Recv: 300}); got != want {
		t.Errorf("a in the first round: %+v, want %+v", got, want)
	}
	if got, want := first[b.Pub], (trafficLine{Key: b.Pub, Sent: 300, UniqueSenders: 1}); got != want {
		t.Errorf("b in the first round: %+v, want %+v", got, want)
	}
	for _, k := range []key.NodePublic{c.Pub, quiet.Pub} {
		if l, ok := first[k]; ok {
			t.Errorf("a connection that moved nothing is listed: %+v", l)
		}
	}

	// c sends b 50 bytes: the next rounds list c and b, never a, whose
	// counts stand still.
	if err := c.Send(b.Pub, []byte(strings.Repeat("c", 50))); err != nil {
		t.Fatal(err)
	}
	b.ExpectPacket(t, c.Pub, []byte(strings.Repeat("c", 50)))
	var sawB, sawC bool
	deadline := time.Now().Add(harness.Wait)
	for !(sawB && sawC) {
		if time.Now().After(deadline) {
			t.Fatalf("no round listed b and c within %v", harness.Wait)
		}
		r := s.round()
		for k, l := range r {
			switch k {
			case b.Pub:
				if want := (trafficLine{Key: b.Pub, Sent: 350, UniqueSenders: 2}); l != want {
					t.Errorf("b: %+v, want %+v", l, want)
				}
				sawB = true
			case c.Pub:
				if want := (trafficLine{Key: c.Pub, Recv: 50}); l != want {
					t.Errorf("c: %+v, want %+v", l, want)
				}
				sawC = true
			default:
				t.Errorf("a connection whose counts did not move is listed: %+v", l)
			}
		}
	}
}
