package verify

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"runtime"
	"strings"
	"time"

	"github.com/derpd/derpd/wire"
)

// What derpd asks tailscaled, and how. The LocalAPI is tailscaled's HTTP
// API on a unix socket; no release promises it stable, so derpd uses only
// two calls, both of which upstream's own client calls "stable", and
// decodes only the fields it needs:
//
//	GET /localapi/v0/whois?addr=nodekey:<hex>
//	    200 with {"Node":{"Key":"nodekey:…"},…}: the key is a node of the
//	        tailnet (or tailscaled's own);
//	    404: it is not;
//	    400 "invalid 'addr' parameter": tailscaled predates whois by node
//	        key (added in 1.70, mid-2024; Tailscale issue 12617): older
//	        releases parse addr as an IP or IP:port only.
//	GET /localapi/v0/status[?peers=false]
//	    every release: {"BackendState":…, "Self":{"PublicKey":…},
//	    "Peer":{"nodekey:…":{…},…}}, the peers keyed by node key.
//
// tailscaled refuses a request whose Host is not "local-tailscaled.sock"
// (or empty), or that carries a Referer or an Origin: its guard against a
// browser being tricked into calling it. Go's client sends neither.
const (
	localAPIHost = "local-tailscaled.sock"

	// DefaultCallTimeout bounds one LocalAPI call. tailscaled answers
	// from memory in well under a millisecond; one that takes seconds is
	// wedged, and the handshake waiting on it (10 s in all) should learn
	// so while there is time left to apply -verify-clients-fail-open.
	DefaultCallTimeout = 3 * time.Second

	// maxWhoIsAnswer bounds a whois answer: one node and its user, a few
	// kilobytes, more with a large capability map.
	maxWhoIsAnswer = 1 << 20

	// maxStatusAnswer bounds a status answer. It holds every peer, 2 to 4
	// KiB each as tailscaled indents it, so 64 MiB is a tailnet of some
	// 20,000 nodes. It is read as a stream, one peer at a time, so what
	// derpd holds is the set of keys, not the answer.
	maxStatusAnswer = 64 << 20

	// maxErrorText is how much of an error answer is quoted in errors.
	maxErrorText = 200
)

// ErrWhoIsUnsupported is what WhoIsNodeKey returns when tailscaled is too
// old to look a node key up; Status still answers.
var ErrWhoIsUnsupported = errors.New("tailscaled predates whois by node key")

// errAnswerTooLarge ends the reading of an answer beyond its limit.
var errAnswerTooLarge = errors.New("answer too large")

// Tailscaled is what the verify actor asks: LocalAPI implements it over
// tailscaled's socket, tests with fakes.
type Tailscaled interface {
	// WhoIsNodeKey reports whether tailscaled knows key, or
	// ErrWhoIsUnsupported, or why it could not tell.
	WhoIsNodeKey(ctx context.Context, key wire.NodePublic) (known bool, err error)
	// Status returns tailscaled's own node key and, with peers, every
	// peer's.
	Status(ctx context.Context, peers bool) (*Status, error)
}

// Status is the part of tailscaled's status derpd reads.
type Status struct {
	BackendState string          // "Running", "NeedsLogin", …
	Self         wire.NodePublic // zero before tailscaled has a node key
	// Peers holds every peer's node key; nil when not asked for.
	Peers map[wire.NodePublic]struct{}
}

// Knows reports whether key is tailscaled's own or one of its peers'.
func (s *Status) Knows(key wire.NodePublic) bool {
	if !s.Self.IsZero() && key == s.Self {
		return true
	}
	_, ok := s.Peers[key]
	return ok
}

// LocalAPI talks to tailscaled over its unix socket.
type LocalAPI struct {
	socket  string
	timeout time.Duration
	http    *http.Client

	// The limits on answers; tests lower them.
	maxWhoIs, maxStatus int64
}

// NewLocalAPI returns a client of the tailscaled listening on socket,
// each call bounded by timeout (0: DefaultCallTimeout).
func NewLocalAPI(socket string, timeout time.Duration) *LocalAPI {
	if timeout <= 0 {
		timeout = DefaultCallTimeout
	}
	return &LocalAPI{
		socket:    socket,
		timeout:   timeout,
		maxWhoIs:  maxWhoIsAnswer,
		maxStatus: maxStatusAnswer,
		http: &http.Client{Transport: &http.Transport{
			// Whatever the URL says, the connection is to the socket.
			DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
				var d net.Dialer
				return d.DialContext(ctx, "unix", socket)
			},
			// One idle connection per concurrent call: no new
			// connection per lookup in a burst.
			MaxIdleConnsPerHost: DefaultMaxCalls,
			IdleConnTimeout:     30 * time.Second,
			DisableCompression:  true,
		}},
	}
}

// Socket is the path the client dials.
func (c *LocalAPI) Socket() string { return c.socket }

// CloseIdleConnections closes the connections to tailscaled kept for the
// next call.
func (c *LocalAPI) CloseIdleConnections() { c.http.CloseIdleConnections() }

// DefaultSocket is where tailscaled listens unless told otherwise: the
// path upstream's client uses (tailscale.com/paths), without the special
// cases of NAS packages (Synology, QNAP) and gokrazy, whose operators pass
// -socket.
func DefaultSocket() string {
	if runtime.GOOS == "darwin" {
		return "/var/run/tailscaled.socket"
	}
	if fi, err := os.Stat("/var/run"); err == nil && fi.IsDir() {
		return "/var/run/tailscale/tailscaled.sock"
	}
	return "tailscaled.sock"
}

// WhoIsNodeKey implements Tailscaled.
func (c *LocalAPI) WhoIsNodeKey(ctx context.Context, key wire.NodePublic) (bool, error) {
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	res, err := c.get(ctx, "whois", "/localapi/v0/whois?addr="+url.QueryEscape(key.String()))
	if err != nil {
		return false, err
	}
	defer res.Body.Close()
	body := &cappedReader{r: res.Body, limit: c.maxWhoIs}
	switch res.StatusCode {
	case http.StatusOK:
	case http.StatusNotFound:
		return false, nil
	case http.StatusBadRequest:
		text := errorText(body)
		// The exact words of a tailscaled that parsed "nodekey:…" as an
		// IP:port and failed. A new one's complaint about a malformed
		// key, "invalid nodekey in 'addr' parameter", is not this.
		if strings.Contains(text, "invalid 'addr' parameter") {
			return false, ErrWhoIsUnsupported
		}
		return false, c.statusError("whois", res, text)
	default:
		return false, c.statusError("whois", res, errorText(body))
	}
	var who struct {
		Node *struct{ Key wire.NodePublic }
	}
	if err := json.NewDecoder(body).Decode(&who); err != nil {
		return false, c.answerError("whois", err)
	}
	if who.Node == nil {
		return false, c.answerError("whois", errors.New("no Node in the answer"))
	}
	if who.Node.Key != key {
		// Not an answer about this key: something other than tailscaled
		// is on the socket, or it is confused. Either way, not a yes.
		return false, c.answerError("whois", fmt.Errorf("asked about %s, answered about %s", key, who.Node.Key))
	}
	return true, nil
}

// Status implements Tailscaled.
func (c *LocalAPI) Status(ctx context.Context, peers bool) (*Status, error) {
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	path := "/localapi/v0/status"
	if !peers {
		path += "?peers=false"
	}
	res, err := c.get(ctx, "status", path)
	if err != nil {
		return nil, err
	}
	defer res.Body.Close()
	body := &cappedReader{r: res.Body, limit: c.maxStatus}
	if res.StatusCode != http.StatusOK {
		return nil, c.statusError("status", res, errorText(body))
	}
	st, err := decodeStatus(json.NewDecoder(body), peers)
	if err != nil {
		return nil, c.answerError("status", err)
	}
	return st, nil
}

// decodeStatus reads a status answer token by token: Self's key, the
// backend state, and with peers the keys of the Peer object, each peer's
// fields skipped as they stream past, so that a tailnet of thousands is
// never held whole.
func decodeStatus(dec *json.Decoder, peers bool) (*Status, error) {
	st := &Status{}
	if err := expectDelim(dec, '{'); err != nil {
		return nil, err
	}
	for dec.More() {
		name, err := dec.Token()
		if err != nil {
			return nil, err
		}
		switch name {
		case "BackendState":
			if err := dec.Decode(&st.BackendState); err != nil {
				return nil, fmt.Errorf("BackendState: %w", err)
			}
		case "Self":
			var self *struct{ PublicKey string }
			if err := dec.Decode(&self); err != nil {
				return nil, fmt.Errorf("Self: %w", err)
			}
			if self != nil && self.PublicKey != "" {
				if st.Self, err = wire.ParseNodePublic(self.PublicKey); err != nil {
					return nil, fmt.Errorf("Self.PublicKey: %w", err)
				}
			}
		case "Peer":
			if !peers {
				if err := skipValue(dec); err != nil {
					return nil, err
				}
				continue
			}
			if st.Peers, err = decodePeerKeys(dec); err != nil {
				return nil, fmt.Errorf("Peer: %w", err)
			}
		default:
			if err := skipValue(dec); err != nil {
				return nil, err
			}
		}
	}
	if err := expectDelim(dec, '}'); err != nil {
		return nil, err
	}
	if peers && st.Peers == nil {
		// "Peer": null, or absent: a tailnet of one.
		st.Peers = map[wire.NodePublic]struct{}{}
	}
	return st, nil
}

// decodePeerKeys reads the Peer object's keys, skipping each value.
func decodePeerKeys(dec *json.Decoder) (map[wire.NodePublic]struct{}, error) {
	tok, err := dec.Token()
	if err != nil {
		return nil, err
	}
	if tok == nil {
		return map[wire.NodePublic]struct{}{}, nil
	}
	if d, ok := tok.(json.Delim); !ok || d != '{' {
		return nil, fmt.Errorf("want an object, got %v", tok)
	}
	keys := map[wire.NodePublic]struct{}{}
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return nil, err
		}
		k, err := wire.ParseNodePublic(tok.(string)) // object keys are strings
		if err != nil {
			return nil, err
		}
		// One peer at a time in the decoder's buffer; an empty struct
		// keeps none of it.
		var skip struct{}
		if err := dec.Decode(&skip); err != nil {
			return nil, fmt.Errorf("%s: %w", k, err)
		}
		keys[k] = struct{}{}
	}
	return keys, expectDelim(dec, '}')
}

// skipValue reads past one value, holding at most one token of it.
func skipValue(dec *json.Decoder) error {
	depth := 0
	for {
		tok, err := dec.Token()
		if err != nil {
			return err
		}
		switch tok {
		case json.Delim('{'), json.Delim('['):
			depth++
		case json.Delim('}'), json.Delim(']'):
			depth--
		}
		if depth == 0 {
			return nil
		}
	}
}

func expectDelim(dec *json.Decoder, want json.Delim) error {
	tok, err := dec.Token()
	if err != nil {
		return err
	}
	if d, ok := tok.(json.Delim); !ok || d != want {
		return fmt.Errorf("want %v, got %v", want, tok)
	}
	return nil
}

// get makes one call. The error of a call that got no answer names the
// socket and, for a timeout, the bound, not the URL: the URL's host is a
// placeholder that would only mislead.
func (c *LocalAPI) get(ctx context.Context, call, path string) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+localAPIHost+path, nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("User-Agent", "derpd")
	res, err := c.http.Do(req)
	if err != nil {
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err
		}
		if errors.Is(err, context.DeadlineExceeded) {
			return nil, fmt.Errorf("tailscaled at %s: %s: no answer within %v: %w", c.socket, call, c.timeout, err)
		}
		return nil, fmt.Errorf("tailscaled at %s: %s: %w", c.socket, call, err)
	}
	return res, nil
}

func (c *LocalAPI) statusError(call string, res *http.Response, text string) error {
	return fmt.Errorf("tailscaled at %s: %s: answered %s: %q", c.socket, call, res.Status, text)
}

func (c *LocalAPI) answerError(call string, err error) error {
	if errors.Is(err, errAnswerTooLarge) {
		return fmt.Errorf("tailscaled at %s: %s: %w", c.socket, call, err)
	}
	return fmt.Errorf("tailscaled at %s: %s: unreadable answer: %w", c.socket, call, err)
}

// errorText is the start of an error answer, for the error message:
// tailscaled writes them as one line of plain text.
func errorText(r io.Reader) string {
	b, _ := io.ReadAll(io.LimitReader(r, maxErrorText))
	return strings.TrimSpace(string(b))
}

// cappedReader reads at most limit bytes, then fails with
// errAnswerTooLarge if there is more.
type cappedReader struct {
	r     io.Reader
	limit int64
	read  int64
}

func (c *cappedReader) Read(p []byte) (int, error) {
	if c.read >= c.limit {
		var one [1]byte
		n, err := c.r.Read(one[:])
		if n > 0 {
			return 0, fmt.Errorf("%w: over %d bytes", errAnswerTooLarge, c.limit)
		}
		return 0, err
	}
	if left := c.limit - c.read; int64(len(p)) > left {
		p = p[:left]
	}
	n, err := c.r.Read(p)
	c.read += int64(n)
	return n, err
}
