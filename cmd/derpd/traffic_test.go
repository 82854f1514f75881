package main

import (
	"bufio"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/derpd/derpd/actors"
	"github.com/derpd/derpd/actors/registry"
	"github.com/derpd/derpd/wire"
	"github.com/rs/zerolog"
)

// /debug/traffic streams rounds until the client leaves or the server
// stops; a stream open at shutdown must end, not hold the server's
// shutdown for its grace period.
func TestTrafficStreamEndsAtShutdown(t *testing.T) {
	p := startInProcess(t)
	// The bound turns a stream that never ends into a failure instead of
	// a hung test; it is far above the shutdown's own grace period.
	c := &http.Client{Timeout: time.Minute}
	res, err := c.Get(p.debugBase + "/debug/traffic")
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	br := bufio.NewReader(res.Body)
	// An idle server has no connection whose counts moved: a round is a
	// blank line alone.
	line, err := br.ReadString('\n')
	if err != nil || line != "\n" {
		t.Fatalf("first round %q, %v; want a blank line", line, err)
	}
	stopped := make(chan struct{})
	go func() { p.stop(t); close(stopped) }()
	rest, err := io.ReadAll(br)
	if err != nil {
		t.Fatalf("stream ended with %v after shutdown began, want a clean end", err)
	}
	if strings.Trim(string(rest), "\n") != "" {
		t.Errorf("idle stream wrote %q", rest)
	}
	<-stopped
}

// The listeners' write timeouts (30 s on the main one) are meant for one
// response: a stream must outlive them, round after round. Here the
// timeout is a twentieth of a round, and the second round must still
// arrive.
func TestTrafficStreamOutlivesTheWriteTimeout(t *testing.T) {
	sys := actors.NewSystem(zerolog.Nop())
	registry.Spawn(sys, wire.GenerateNodePrivate().Public())
	s := &server{sys: sys}
	ts := httptest.NewUnstartedServer(http.HandlerFunc(s.serveTraffic))
	ts.Config.WriteTimeout = trafficInterval / 20
	ts.Start()
	defer ts.Close()
	c := &http.Client{Timeout: time.Minute} // a bound on a hang, not a measurement
	res, err := c.Get(ts.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	br := bufio.NewReader(res.Body)
	for round := 1; round <= 2; round++ {
		if line, err := br.ReadString('\n'); err != nil || line != "\n" {
			t.Fatalf("round %d: %q, %v; want a blank line (an idle server)", round, line, err)
		}
	}
}
