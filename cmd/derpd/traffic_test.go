package main

import (
	"bufio"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"
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
