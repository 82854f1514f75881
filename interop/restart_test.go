package interop

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/derpd/derpd/interop/harness"
	"tailscale.com/derp"
	"tailscale.com/derp/derphttp"
	"tailscale.com/net/netmon"
	"tailscale.com/types/key"
)

// The values the tests give derpd, unlike its defaults, so that a
// default sent by mistake shows.
const (
	restartReconnectIn = 1500 * time.Millisecond
	restartTryFor      = 8 * time.Second
	restartSpread      = time.Second
	// derpd exits within -shutdown-spread plus 2 s (cmd/derpd/shutdown.go).
	restartBound = restartSpread + 2*time.Second
	// exitSlack is a failure deadline beyond the bound for a busy
	// machine to schedule the process's exit; never a measured duration.
	exitSlack = 5 * time.Second
)

func restartArgs(kind harness.Kind, spread time.Duration) []string {
	if kind != harness.Derpd {
		return nil // derper has none of these flags
	}
	return []string{"-restart-reconnect-in=" + restartReconnectIn.String(),
		"-restart-try-for=" + restartTryFor.String(), "-shutdown-spread=" + spread.String()}
}

// seqClient is Tailscale's DERP client read on the test's goroutine, one
// message at a time, so that a message and the close right behind it are
// seen in their order. (harness.Client's pump hands messages and the
// connection's end over two channels, and a select may take the end
// first.)
type seqClient struct {
	*derphttp.Client
	pub key.NodePublic
}

func dialSeq(t *testing.T, srv *harness.Server) *seqClient {
	t.Helper()
	priv := key.NewNode()
	dc, err := derphttp.NewClient(priv, srv.URL(), func(string, ...any) {}, netmon.NewStatic())
	if err != nil {
		t.Fatal(err)
	}
	dc.SetCanAckPings(true)
	ctx, cancel := context.WithTimeout(context.Background(), harness.Wait)
	defer cancel()
	if err := dc.Connect(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { dc.Close() })
	c := &seqClient{Client: dc, pub: priv.Public()}
	if m, err := c.next(); err != nil {
		t.Fatal(err)
	} else if _, ok := m.(derp.ServerInfoMessage); !ok {
		t.Fatalf("first message %T, want ServerInfo", m)
	}
	return c
}

// next returns the next message other than a keepalive, or the
// connection's end, within harness.Wait.
func (c *seqClient) next() (derp.ReceivedMessage, error) {
	type result struct {
		m   derp.ReceivedMessage
		err error
	}
	got := make(chan result, 1)
	go func() {
		for {
			m, err := c.Recv()
			if _, ka := m.(derp.KeepAliveMessage); err == nil && ka {
				continue
			}
			got <- result{m, err}
			return
		}
	}()
	select {
	case r := <-got:
		return r.m, r.err
	case <-time.After(harness.Wait):
		c.Close() // ends the Recv above
		return nil, fmt.Errorf("nothing received within %v", harness.Wait)
	}
}

// expectRestarting requires the next message to be Restarting with the
// configured values, as Tailscale's client library surfaces it.
func (c *seqClient) expectRestarting(t *testing.T) {
	t.Helper()
	m, err := c.next()
	if err != nil {
		t.Fatalf("client %v: %v, want ServerRestartingMessage", c.pub.ShortString(), err)
	}
	r, ok := m.(derp.ServerRestartingMessage)
	if !ok {
		t.Fatalf("client %v got %T %+v, want ServerRestartingMessage", c.pub.ShortString(), m, m)
	}
	if r.ReconnectIn != restartReconnectIn || r.TryFor != restartTryFor {
		t.Fatalf("ServerRestartingMessage%+v, want ReconnectIn %v, TryFor %v", r, restartReconnectIn, restartTryFor)
	}
}

// expectClosed requires the server to close the connection next.
func (c *seqClient) expectClosed(t *testing.T) {
	t.Helper()
	m, err := c.next()
	if err == nil {
		t.Fatalf("client %v got %T %+v, want the connection closed", c.pub.ShortString(), m, m)
	}
	if strings.Contains(err.Error(), "nothing received") {
		t.Fatalf("client %v: the server did not close the connection: %v", c.pub.ShortString(), err)
	}
}

// TestSIGTERMRestartsGracefullyAndKeepsTheKey: on SIGTERM every client
// hears Restarting with the configured values, then its connection
// closes, and derpd exits with status 0 within its bound. Started again
// with the same -c key file, the server has the same key. Against derper
// only the last part applies: it never sends Restarting.
func TestSIGTERMRestartsGracefullyAndKeepsTheKey(t *testing.T) {
	kind := harness.TargetFromEnv()
	keyFile := filepath.Join(t.TempDir(), "derper.key")
	opts := harness.Options{KeyFile: keyFile, Args: restartArgs(kind, restartSpread)}
	first := start(t, opts)
	k1 := serverKey(t, first)
	var clients []*seqClient
	for range 3 {
		c := dialSeq(t, first)
		if c.ServerPublicKey() != k1 {
			t.Fatal("served key differs from the key file")
		}
		clients = append(clients, c)
	}

	if err := first.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	for _, c := range clients {
		if kind == harness.Derpd {
			c.expectRestarting(t)
		}
		c.expectClosed(t)
	}
	if kind != harness.Derpd {
		t.Log("derper sends no Restarting frame on SIGTERM (spec §3.11); checked only that it closes the clients and keeps its key across a restart")
	}
	select {
	case <-first.Exited():
	case <-time.After(restartBound + exitSlack):
		t.Fatalf("%s still running %v after SIGTERM; derpd's bound is %v", kind, restartBound+exitSlack, restartBound)
	}
	if kind == harness.Derpd {
		if err := first.ExitErr(); err != nil {
			t.Fatalf("derpd exited with %v after SIGTERM, want status 0", err)
		}
		if out := first.Output(); !strings.Contains(out, "shutdown complete") {
			t.Fatalf("no \"shutdown complete\" line:\n%s", out)
		}
	}

	second := start(t, opts)
	if k := serverKey(t, second); k != k1 {
		t.Fatalf("key file now holds %v, want %v", k.ShortString(), k1.ShortString())
	}
	if c := connect(t, second); c.ServerPublicKey() != k1 {
		t.Fatalf("restarted server serves key %v, want %v", c.ServerPublicKey().ShortString(), k1.ShortString())
	}
}

// TestSecondSIGTERMExitsAtOnce: with a minute's spread, the second of two
// clients would be closed 30 s in; a second SIGTERM during the spread
// ends derpd at once instead, with status 1.
func TestSecondSIGTERMExitsAtOnce(t *testing.T) {
	if harness.TargetFromEnv() != harness.Derpd {
		t.Skip("derpd only: derper exits on the first SIGTERM and has no spread to cut short")
	}
	// Launched by hand: the harness would count the exit status 1 this
	// test wants as a failure.
	srv, err := harness.Launch(harness.Options{Kind: harness.Derpd, Args: restartArgs(harness.Derpd, time.Minute)}, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		srv.Stop()
		if t.Failed() {
			t.Logf("derpd output:\n%s", srv.Output())
		}
	})
	a, b := dialSeq(t, srv), dialSeq(t, srv)
	if err := srv.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	a.expectRestarting(t)
	b.expectRestarting(t)
	// The first client goes at once; the second is 30 s away. Restarting
	// came after derpd began listening for the second signal.
	a.expectClosed(t)
	if err := srv.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case <-srv.Exited():
	case <-time.After(harness.Wait):
		t.Fatal("derpd still running after a second SIGTERM")
	}
	if err := srv.ExitErr(); err == nil || !strings.Contains(err.Error(), "exit status 1") {
		t.Fatalf("derpd exited with %v after a second SIGTERM, want status 1", err)
	}
	if out := srv.Output(); !strings.Contains(out, "second signal") {
		t.Fatalf("no line saying why derpd stopped early:\n%s", out)
	}
	b.expectClosed(t)
}
