package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/derpd/derpd/actors"
	"github.com/derpd/derpd/actors/leakcheck"
	"github.com/derpd/derpd/wire"
)

// The deadlines that cut hostile handshakes off, shortened for the test
// (derpd's are 30 s and client.HandshakeTimeout, see timeouts.go):
// net/http's header and read deadline on the main listener for a request
// that never ends, and the DERP handshake deadline for a handshake that
// never ends. Long enough for a loaded machine to dial and upgrade every
// abuser before the first are cut off.
const (
	abuseHTTPDeadline = 2 * time.Second
	abuseDERPDeadline = 2 * time.Second
)

// shortenHandshakeDeadlines gives the servers a test starts after it the
// abuse deadlines, until the test ends (and its servers have stopped).
func shortenHandshakeDeadlines(t *testing.T) {
	oldHTTP, oldDERP := httpReadTimeout, handshakeTimeout
	httpReadTimeout, handshakeTimeout = abuseHTTPDeadline, abuseDERPDeadline
	t.Cleanup(func() { httpReadTimeout, handshakeTimeout = oldHTTP, oldDERP })
}

// Connections that attack the handshake, a thousand at once, each kind a
// quarter of them:
//
//   - silent: connects and sends nothing;
//   - dribbling: sends an HTTP request one byte at a time, slower than
//     the request could ever end;
//   - upgraded: completes the upgrade, reads ServerKey, sends nothing;
//   - claiming: after ServerKey, a ClientInfo header that claims 256 KiB,
//     then nothing;
//
// and fifty more upgraded over WebSocket, silent after ServerKey.
//
// All are cut off by the server (each sees its connection closed, none
// a ServerInfo); together they cost bounded memory; a healthy pair keeps
// relaying meanwhile (round trips are reported, not asserted); and once
// they are gone the server's goroutines and actors are back to what they
// were.
func TestHandshakeAbuseIsCutOffAndCostsLittle(t *testing.T) {
	shortenHandshakeDeadlines(t)
	p := startInProcess(t)
	host := strings.TrimPrefix(p.base, "http://")
	a, b := abuseConnect(t, host), abuseConnect(t, host)
	// A first exchange, so both are registered and the path is warm.
	abuseRoundTrips(t, a, b, 50)
	quiet := abuseRoundTrips(t, a, b, 300)

	counts := func() (map[actors.ActorKind]int64, error) { return debugActorCounts(p.debugBase) }
	leaks := leakcheck.Take(t, leakcheck.Actors(counts))
	heapBefore := abuseHeap()
	handshakeErrors := abuseMetric(t, p.debugBase, "derpd_handshake_errors")

	const perKind = 250
	kinds := []string{"silent", "dribbling", "upgraded", "claiming"}
	var conns [][]net.Conn
	// Every abuser's connection, closed when the test ends, or before
	// the last memory figure: a cleanup per connection would hold them.
	var all []net.Conn
	t.Cleanup(func() {
		for _, c := range all {
			c.Close()
		}
	})
	conns = make([][]net.Conn, len(kinds))
	dial := func(k int) {
		for range perKind {
			c, err := net.Dial("tcp", host)
			if err != nil {
				t.Fatalf("dialling a %s connection: %v", kinds[k], err)
			}
			all = append(all, c)
			conns[k] = append(conns[k], c)
		}
	}
	started := time.Now()
	// The DERP abusers first, as upgrading them takes longest: each
	// upgrades and reads ServerKey, and the server is then in the
	// handshake for it. The others are dialled after, so that every
	// abuser is connected well within the shortened deadlines.
	dial(2)
	dial(3)
	for i, c := range slices.Concat(conns[2], conns[3]) {
		abuseUpgrade(t, c, host)
		if i >= perKind {
			c.Write(wire.AppendHeader(nil, wire.FrameClientInfo, wire.MaxClientInfoLen))
		}
	}
	dial(0)
	dial(1)
	// The dribblers: one goroutine, a byte to each every 100 ms, from a
	// request far longer than the deadline's worth of dribbling.
	request := "GET /derp HTTP/1.1\r\nHost: " + host + "\r\nUpgrade: DERP\r\nConnection: Upgrade\r\nX-Padding: " + strings.Repeat("x", 4096) + "\r\n\r\n"
	stopDribbling := make(chan struct{})
	dribbled := make(chan struct{})
	dribblers := conns[1]
	go func() {
		defer close(dribbled)
		tick := time.NewTicker(100 * time.Millisecond)
		defer tick.Stop()
		for i := 0; i < len(request); i++ {
			for _, c := range dribblers {
				c.SetWriteDeadline(time.Now().Add(time.Second))
				c.Write([]byte{request[i]}) // fails once the server has closed it
			}
			select {
			case <-stopDribbling:
				return
			case <-tick.C:
			}
		}
	}()
	stopDribbler := sync.OnceFunc(func() {
		close(stopDribbling)
		<-dribbled
	})
	defer stopDribbler()

	// Every abuser holds a goroutine on the server (net/http's, in which
	// the DERP handshake also runs) once it is accepted.
	want := leaks.Baseline() + len(kinds)*perKind
	abusePoll(t, "every abuser accepted", func() bool { return runtime.NumGoroutine() >= want })
	heapDuring := abuseHeap()
	measured := len(kinds) * perKind // the abusers the memory figure is of
	perConn := (heapDuring.total() - heapBefore.total()) / int64(measured)
	during := abuseRoundTrips(t, a, b, 300)

	// The same DERP handshake over WebSocket, silent after ServerKey: the
	// deadline must hold on that transport too. (Dialled after the memory
	// figure: a WebSocket client's own state would blur it.)
	const overWebSocket = 50
	var wsConns []net.Conn
	for range overWebSocket {
		ctx, cancel := context.WithTimeout(context.Background(), leakcheck.Wait)
		ws, _, err := websocket.Dial(ctx, "ws://"+host+"/derp", &websocket.DialOptions{Subprotocols: []string{"derp"}})
		cancel()
		if err != nil {
			t.Fatalf("WebSocket dial: %v", err)
		}
		c := websocket.NetConn(context.Background(), ws, websocket.MessageBinary)
		all = append(all, c)
		frame := make([]byte, wire.HeaderLen+40)
		c.SetReadDeadline(time.Now().Add(leakcheck.Wait))
		if _, err := io.ReadFull(c, frame); err != nil {
			t.Fatalf("WebSocket: reading ServerKey: %v", err)
		}
		if typ, _ := wire.ParseHeader(frame); typ != wire.FrameServerKey {
			t.Fatalf("WebSocket: first frame %v", typ)
		}
		wsConns = append(wsConns, c)
	}
	kinds = append(kinds, "websocket")
	conns = append(conns, wsConns)
	total := measured + overWebSocket

	// Each connection is closed by the server: its reader sees the end
	// (or a reset), never its own read deadline, and nothing after
	// ServerKey.
	type ending struct {
		kind  string
		after time.Duration
		extra int   // bytes read after what the connection asked for
		err   error // a reason the server did not end it
	}
	endings := make(chan ending, total)
	for k, cs := range conns {
		for _, c := range cs {
			go func() {
				c.SetReadDeadline(time.Now().Add(abuseHTTPDeadline + leakcheck.Wait))
				n, err := io.Copy(io.Discard, c)
				c.Close() // a WebSocket client's goroutines end with it
				e := ending{kind: kinds[k], after: time.Since(started), extra: int(n)}
				if errors.Is(err, os.ErrDeadlineExceeded) {
					e.err = fmt.Errorf("still open after %v", e.after)
				}
				endings <- e
			}()
		}
	}
	last := map[string]time.Duration{}
	for range total {
		e := <-endings
		if e.err != nil {
			t.Fatalf("a %s connection: %v", e.kind, e.err)
		}
		if e.kind != "silent" && e.kind != "dribbling" && e.extra > 0 {
			t.Errorf("a %s connection got %d more bytes after ServerKey before it was closed", e.kind, e.extra)
		}
		last[e.kind] = max(last[e.kind], e.after)
	}
	stopDribbler()
	leaks.Check(t)
	for _, c := range all {
		c.Close()
	}
	all, conns, wsConns = nil, nil, nil
	heapAfter := abuseHeap()
	if got := abuseMetric(t, p.debugBase, "derpd_handshake_errors") - handshakeErrors; got != 2*perKind+overWebSocket {
		t.Errorf("%v handshake errors counted, want %d (one per DERP abuser)", got, 2*perKind+overWebSocket)
	}
	after := abuseRoundTrips(t, a, b, 300)

	t.Logf("cut off (last of each kind, from the first dial): %v", last)
	t.Logf("heap+stacks: %.1f MiB before, %.1f MiB with %d abusers (%.1f KiB each, heap %.1f + stacks %.1f), %.1f MiB after",
		heapBefore.mib(), heapDuring.mib(), measured, float64(perConn)/1024,
		float64(heapDuring.heap-heapBefore.heap)/1024/float64(measured),
		float64(heapDuring.stacks-heapBefore.stacks)/1024/float64(measured), heapAfter.mib())
	t.Logf("healthy round trips: p50/p99 %v/%v alone, %v/%v among the abusers, %v/%v after",
		quiet.p(50), quiet.p(99), during.p(50), during.p(99), after.p(50), after.p(99))
	// A generous bound: an abuser holds a goroutine and a few small
	// buffers, never a read buffer or a 256 KiB ClientInfo.
	if perConn > 64<<10 {
		t.Errorf("each abusive connection costs %d KiB of heap and stack, want under 64", perConn>>10)
	}
}

// abuseConn is a DERP client made by hand, for the healthy pair.
type abuseConn struct {
	c   net.Conn
	rd  *wire.Reader
	w   *wire.Writer
	pub wire.NodePublic
}

// abuseConnect dials host and completes the handshake.
func abuseConnect(t *testing.T, host string) *abuseConn {
	t.Helper()
	c, err := net.Dial("tcp", host)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	br, server := abuseUpgrade(t, c, host)
	priv := wire.GenerateNodePrivate()
	ac := &abuseConn{c: c, rd: wire.NewReader(br, nil, 1<<20), w: wire.NewWriter(c, 0), pub: priv.Public()}
	ci, err := wire.AppendClientInfo(nil, priv, server, wire.ClientInfo{Version: 2})
	if err != nil {
		t.Fatal(err)
	}
	ac.w.WriteFrame(wire.FrameClientInfo, ci, nil)
	if err := ac.w.Flush(); err != nil {
		t.Fatal(err)
	}
	if typ, _ := ac.next(t); typ != wire.FrameServerInfo {
		t.Fatalf("after ClientInfo: %v, want ServerInfo", typ)
	}
	return ac
}

// abuseUpgrade sends the upgrade request and reads the 101 and the
// ServerKey frame; it returns the reader holding whatever follows, and
// the server's key.
func abuseUpgrade(t *testing.T, c net.Conn, host string) (*bufio.Reader, wire.NodePublic) {
	t.Helper()
	c.SetDeadline(time.Now().Add(leakcheck.Wait)) // a failure deadline
	defer c.SetDeadline(time.Time{})
	fmt.Fprintf(c, "GET /derp HTTP/1.1\r\nHost: %s\r\nUpgrade: DERP\r\nConnection: Upgrade\r\n\r\n", host)
	br := bufio.NewReader(c)
	res, err := http.ReadResponse(br, nil)
	if err != nil || res.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("upgrade: %v %v", res, err)
	}
	frame := make([]byte, wire.HeaderLen+40)
	if _, err := io.ReadFull(br, frame); err != nil {
		t.Fatalf("reading ServerKey: %v", err)
	}
	if typ, _ := wire.ParseHeader(frame); typ != wire.FrameServerKey {
		t.Fatalf("first frame %v, want ServerKey", typ)
	}
	key, err := wire.ParseServerKey(frame[wire.HeaderLen:])
	if err != nil {
		t.Fatal(err)
	}
	return br, key
}

// next reads the next frame that is not a KeepAlive.
func (ac *abuseConn) next(t *testing.T) (wire.FrameType, []byte) {
	t.Helper()
	for {
		ac.c.SetReadDeadline(time.Now().Add(leakcheck.Wait))
		typ, n, err := ac.rd.ReadHeader()
		if err != nil {
			t.Fatalf("reading: %v", err)
		}
		body := make([]byte, n)
		if err := ac.rd.ReadFull(body); err != nil {
			t.Fatalf("reading %v: %v", typ, err)
		}
		if typ != wire.FrameKeepAlive {
			return typ, body
		}
	}
}

func (ac *abuseConn) send(t *testing.T, dst wire.NodePublic, payload []byte) {
	t.Helper()
	ac.w.WriteSendPacket(dst, payload)
	if err := ac.w.Flush(); err != nil {
		t.Fatal(err)
	}
}

// roundTrips are measured times, sorted.
type roundTrips []time.Duration

func (r roundTrips) p(pct int) time.Duration {
	return r[min(len(r)-1, pct*len(r)/100)].Round(time.Microsecond)
}

// abuseRoundTrips times n round trips: a sends to b, b sends it back.
// Every packet must arrive: they are few, and the receivers read.
func abuseRoundTrips(t *testing.T, a, b *abuseConn, n int) roundTrips {
	t.Helper()
	var rtts roundTrips
	payload := make([]byte, 64)
	for i := range n {
		payload[0], payload[1] = byte(i), byte(i>>8)
		t0 := time.Now()
		a.send(t, b.pub, payload)
		typ, body := b.next(t)
		if typ != wire.FrameRecvPacket || wire.NodePublic(body[:wire.KeyLen]) != a.pub || string(body[wire.KeyLen:]) != string(payload) {
			t.Fatalf("round trip %d: b got %v %x", i, typ, body)
		}
		b.send(t, a.pub, body[wire.KeyLen:])
		if typ, body := a.next(t); typ != wire.FrameRecvPacket || string(body[wire.KeyLen:]) != string(payload) {
			t.Fatalf("round trip %d: a got %v %x", i, typ, body)
		}
		rtts = append(rtts, time.Since(t0))
	}
	slices.Sort(rtts)
	return rtts
}

type heapFigure struct{ heap, stacks int64 }

func (h heapFigure) total() int64 { return h.heap + h.stacks }
func (h heapFigure) mib() float64 { return float64(h.total()) / (1 << 20) }

// abuseHeap is the live heap and goroutine stacks after a collection
// (two, so that pooled buffers no one holds are gone too).
func abuseHeap() heapFigure {
	runtime.GC()
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return heapFigure{heap: int64(ms.HeapInuse), stacks: int64(ms.StackInuse)}
}

// noKeepAlive fetches debug pages without keeping connections open
// between fetches: an idle one would hold a goroutine on each side,
// which the leak check would count.
var noKeepAlive = &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: leakcheck.Wait}

// debugActorCounts reads the live actors by kind from /debug/actors.
func debugActorCounts(base string) (map[actors.ActorKind]int64, error) {
	res, err := noKeepAlive.Get(base + "/debug/actors?format=json")
	if err != nil {
		return nil, err
	}
	defer res.Body.Close()
	var v actorsView
	if err := json.NewDecoder(res.Body).Decode(&v); err != nil {
		return nil, fmt.Errorf("/debug/actors: %w", err)
	}
	m := map[actors.ActorKind]int64{}
	for _, k := range v.Kinds {
		m[actors.ActorKind(k.Kind)] = k.Live
	}
	return m, nil
}

// abuseMetric reads one series from /debug/varz.
func abuseMetric(t *testing.T, base, name string) float64 {
	t.Helper()
	res, err := noKeepAlive.Get(base + "/debug/varz")
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	sc := bufio.NewScanner(res.Body)
	for sc.Scan() {
		var v float64
		if line := sc.Text(); strings.HasPrefix(line, name+" ") {
			if _, err := fmt.Sscan(line[len(name)+1:], &v); err != nil {
				t.Fatalf("%s: %v", line, err)
			}
			return v
		}
	}
	t.Fatalf("/debug/varz has no %s", name)
	return 0
}

// abusePoll waits for cond, failing after leakcheck.Wait.
func abusePoll(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(leakcheck.Wait)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %v", what, leakcheck.Wait)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
