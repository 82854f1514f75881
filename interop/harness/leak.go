package harness

import (
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"
)

// LeakBaseline is what a server process ran when it was taken: its
// goroutines, and for derpd its live actors by kind. Check proves that
// the connections a test made since then left nothing behind: a leak of
// one goroutine or actor per connection is invisible to every functional
// test, and costs a relay memory for ever.
//
// The count of goroutines comes from /debug/varz (both servers export
// it), polled over connections that are not kept alive, so that the
// polling itself holds no goroutine on the server between polls.
type LeakBaseline struct {
	srv        *Server
	goroutines float64
	actors     map[string]int64 // derpd only; nil for derper
}

// TakeLeakBaseline records what srv runs now.
func TakeLeakBaseline(tb testing.TB, srv *Server) *LeakBaseline {
	tb.Helper()
	b := &LeakBaseline{srv: srv}
	var err error
	if b.goroutines, err = b.metric("goroutines"); err != nil {
		tb.Fatalf("leak baseline: %v", err)
	}
	if srv.Kind == Derpd {
		if b.actors, err = b.liveActors(); err != nil {
			tb.Fatalf("leak baseline: %v", err)
		}
	}
	return b
}

// VerifyNoLeaks takes a baseline now and checks it when the test ends,
// after the cleanups registered later (the test's connections) have run.
func VerifyNoLeaks(tb testing.TB, srv *Server, slack int) *LeakBaseline {
	tb.Helper()
	b := TakeLeakBaseline(tb, srv)
	tb.Cleanup(func() {
		if !tb.Failed() {
			b.Check(tb, slack)
		}
	})
	return b
}

// Goroutines is the server's goroutine count at the baseline.
func (b *LeakBaseline) Goroutines() float64 { return b.goroutines }

// Check waits, up to Wait, until the server runs at most slack goroutines
// more than at the baseline (slack absorbs the server's own coming and
// going: a scrape being served, a timer's goroutine) and, for derpd,
// exactly the actors it ran then. It fails the test with the server's
// goroutine dump otherwise.
func (b *LeakBaseline) Check(tb testing.TB, slack int) {
	tb.Helper()
	deadline := time.Now().Add(Wait)
	pause := 5 * time.Millisecond
	for {
		g, err := b.metric("goroutines")
		if err != nil {
			tb.Fatalf("leak check: %v", err)
		}
		diff := ""
		if b.actors != nil {
			now, err := b.liveActors()
			if err != nil {
				tb.Fatalf("leak check: %v", err)
			}
			diff = actorDiff(b.actors, now)
		}
		if g <= b.goroutines+float64(slack) && diff == "" {
			return
		}
		if time.Now().After(deadline) {
			msg := fmt.Sprintf("%s runs %v goroutines after %v, %v at the baseline (slack %d)", b.srv.Kind, g, Wait, b.goroutines, slack)
			if diff != "" {
				msg += "; live actors differ: " + diff
			}
			if dump, err := b.get("/debug/pprof/goroutine?debug=1"); err == nil {
				msg += "\n" + dump
			}
			tb.Fatal(msg)
		}
		time.Sleep(pause)
		pause = min(2*pause, 100*time.Millisecond)
	}
}

func actorDiff(was, now map[string]int64) string {
	kinds := map[string]bool{}
	for k := range was {
		kinds[k] = true
	}
	for k := range now {
		kinds[k] = true
	}
	var out []string
	for _, k := range slices.Sorted(maps.Keys(kinds)) {
		if was[k] != now[k] {
			out = append(out, fmt.Sprintf("%s %d (was %d)", k, now[k], was[k]))
		}
	}
	return strings.Join(out, ", ")
}

// liveActors reads derpd's /debug/actors: live actors by kind.
func (b *LeakBaseline) liveActors() (map[string]int64, error) {
	body, err := b.get("/debug/actors?format=json")
	if err != nil {
		return nil, err
	}
	var v struct {
		Kinds []struct {
			Kind string `json:"kind"`
			Live int64  `json:"live"`
		} `json:"kinds"`
	}
	if err := json.Unmarshal([]byte(body), &v); err != nil {
		return nil, fmt.Errorf("/debug/actors: %w", err)
	}
	m := map[string]int64{}
	for _, k := range v.Kinds {
		m[k.Kind] = k.Live
	}
	return m, nil
}

func (b *LeakBaseline) metric(name string) (float64, error) {
	body, err := b.get("/debug/varz")
	if err != nil {
		return 0, err
	}
	m, err := ParseMetrics(strings.NewReader(body))
	if err != nil {
		return 0, err
	}
	v, ok := m[name]
	if !ok {
		return 0, fmt.Errorf("%s exports no %s", b.srv.Kind, name)
	}
	return v, nil
}

func (b *LeakBaseline) get(path string) (string, error) {
	tr := &http.Transport{DisableKeepAlives: true}
	if b.srv.TLS() {
		tr.TLSClientConfig = &tls.Config{ServerName: b.srv.Opts.Hostname, InsecureSkipVerify: true}
	}
	c := &http.Client{Transport: tr, Timeout: Wait}
	res, err := c.Get(b.srv.BaseURL() + path)
	if err != nil {
		return "", err
	}
	defer res.Body.Close()
	if res.StatusCode != http.StatusOK {
		return "", fmt.Errorf("%s: %s", path, res.Status)
	}
	body, err := io.ReadAll(res.Body)
	return string(body), err
}
