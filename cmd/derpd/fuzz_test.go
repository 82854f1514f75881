package main

// Fuzz targets for what derpd itself reads off the network above the
// DERP framing: HTTP requests to its routes as net/http hands them over,
// with the /derp upgrade and fast start (FuzzHTTPRequest); the WebSocket
// framing that carries DERP for browsers, through coder/websocket exactly
// as /derp accepts it (FuzzWebSocketFrames); the admission controller's
// answer (FuzzAdmissionResponse). And the files derpd reads its keys
// from (FuzzKeyFile, FuzzMeshKeyFile), which are not network bytes but
// are parsed from text. The seed corpora are the files in
// testdata/fuzz/<target>, kept equal to derpdSeeds by TestFuzzSeeds; see
// docs/testing.md.

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha1"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	stdlog "log"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"

	"github.com/derpd/derpd/actors"
	"github.com/derpd/derpd/actors/client"
	"github.com/derpd/derpd/actors/registry"
	"github.com/derpd/derpd/internal/fuzztest"
	"github.com/derpd/derpd/wire"
	"github.com/rs/zerolog"
	"golang.org/x/crypto/nacl/box"
)

var (
	// Not loopback, so the debug pages refuse it as they refuse the
	// Internet.
	fuzzClientAddr = netip.MustParseAddrPort("198.51.100.7:41641")
	fuzzServerAddr = netip.MustParseAddrPort("192.0.2.1:443")
	fuzzServerKey  = wire.NodePrivate{1: 1, 31: 64}
)

// panicLog is net/http's error log. net/http recovers a handler's panic
// and only logs it, so a target must look here to see one.
type panicLog struct {
	mu     sync.Mutex
	panics []string
}

func (l *panicLog) Write(p []byte) (int, error) {
	if bytes.Contains(p, []byte("panic")) {
		l.mu.Lock()
		l.panics = append(l.panics, string(p))
		l.mu.Unlock()
	}
	return len(p), nil
}

func (l *panicLog) check(t *testing.T) {
	t.Helper()
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.panics) > 0 {
		t.Fatalf("a handler panicked: %s", l.panics[0])
	}
}

// fuzzDerpd is one derpd shared by every input of a fuzzing process: its
// routes on an http.Server over in-memory connections, as run serves
// them, with a real registry behind /derp.
type fuzzDerpd struct {
	s      *server
	ln     *fuzztest.Listener
	panics *panicLog
	ws     *fuzztest.Listener // the WebSocket target's server
	wsDone chan wsResult
}

var (
	fuzzDerpdOnce sync.Once
	theFuzzDerpd  *fuzzDerpd
)

func getFuzzDerpd(t *testing.T) *fuzzDerpd {
	fuzzDerpdOnce.Do(func() {
		opts, err := parseFlags(nil)
		if err != nil {
			panic(err)
		}
		log := zerolog.Nop()
		sys := actors.NewSystem(log)
		pub := fuzzServerKey.Public()
		registry.Spawn(sys, pub)
		s := &server{
			opts:            opts,
			log:             log,
			sys:             sys,
			clientCfg:       &client.Config{PrivateKey: fuzzServerKey, PublicKey: pub},
			upgradeResponse: upgradeResponse(pub),
			bootstrap:       newBootstrapDNS("", "", &fakeResolver{}, log),
			stopping:        make(chan struct{}),
		}
		f := &fuzzDerpd{s: s, ln: fuzztest.NewListener(fuzzServerAddr), panics: &panicLog{},
			ws: fuzztest.NewListener(fuzzServerAddr), wsDone: make(chan wsResult, 1)}
		srv := &http.Server{Handler: s.routes(), ErrorLog: stdlog.New(f.panics, "", 0)}
		go srv.Serve(f.ln)
		// The WebSocket target's server: /derp accepts WebSockets as
		// serveWebSocket does, then reads DERP frames as the handshake
		// would, and reports them.
		wsSrv := &http.Server{ErrorLog: stdlog.New(f.panics, "", 0), Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			conn := acceptWebSocket(w, r, log)
			if conn == nil {
				f.wsDone <- wsResult{refused: true}
				return
			}
			var res wsResult
			rd := wire.NewReader(conn, nil, wire.MaxClientInfoLen)
			for {
				typ, n, err := rd.ReadHeader()
				if err != nil {
					res.err = err
					break
				}
				body := make([]byte, n)
				if err := rd.ReadFull(body); err != nil {
					res.err = err
					break
				}
				res.frames = append(res.frames, derpFrame{typ, body})
			}
			rd.Release()
			conn.Close()
			f.wsDone <- res
		})}
		go wsSrv.Serve(f.ws)
		theFuzzDerpd = f
	})
	return theFuzzDerpd
}

// exchange sends input on a new connection, whose server end reads it in
// pieces of the sizes chunks gives, half-closes, and returns everything
// the server wrote until it closed the connection.
func exchange(t *testing.T, ln *fuzztest.Listener, input, chunks []byte) []byte {
	t.Helper()
	c, err := ln.Dial(fuzzClientAddr, fuzztest.ReadSizes(chunks))
	if err != nil {
		t.Fatal(err)
	}
	c.Write(input)
	c.CloseWrite()
	var out []byte
	fuzztest.Within(t, "the server", func() { out, _ = io.ReadAll(c) })
	c.Close()
	return out
}

// httpRequestKind is what derpd's routes should make of one request, by
// an independent reading of it.
type httpRequestKind int

const (
	plainRequest     httpRequestKind = iota // a page, an error, a redirect
	derpUpgrade                             // raw DERP: a 101 or, with Derp-Fast-Start: 1, straight to ServerKey
	websocketUpgrade                        // WebSocket with the derp subprotocol: a 101 if the handshake is right
)

func kindOf(r *http.Request) httpRequestKind {
	if r.Method == http.MethodConnect || r.URL.Path != "/derp" {
		return plainRequest
	}
	switch up := strings.ToLower(r.Header.Get("Upgrade")); {
	case up == "websocket" && strings.Contains(r.Header.Get("Sec-WebSocket-Protocol"), "derp"):
		return websocketUpgrade
	case up == "derp" || up == "websocket":
		return derpUpgrade
	}
	return plainRequest
}

// FuzzHTTPRequest is a connection to derpd's HTTP server that sends
// arbitrary bytes. Reading the same bytes as a sequence of requests with
// net/http's own parser (derpd parses nothing of the request line or
// headers itself) tells what each response must be: the server writes
// well-formed responses, one per request in order (interim 1xx aside),
// and after a request it cannot parse at most an error; a /derp upgrade
// is answered only for a request that asks for one, with the exact 101
// upstream writes and then ServerKey, or with ServerKey at once for fast
// start, and such a request is never served as a page; a WebSocket
// upgrade's 101 carries the right Sec-WebSocket-Accept and the derp
// subprotocol. No handler panics, and the connection always ends.
func FuzzHTTPRequest(f *testing.F) {
	f.Fuzz(func(t *testing.T, input, chunks []byte) {
		d := getFuzzDerpd(t)
		out := exchange(t, d.ln, input, chunks)
		d.panics.check(t)

		var reqs []*http.Request
		rbr := bufio.NewReader(bytes.NewReader(input))
		for {
			r, err := http.ReadRequest(rbr)
			if err != nil {
				break
			}
			reqs = append(reqs, r)
			if kindOf(r) != plainRequest {
				break // what follows is the upgraded stream
			}
			if _, err := io.Copy(io.Discard, r.Body); err != nil {
				break
			}
		}
		pub := d.s.clientCfg.PublicKey
		keyFrame := append(wire.AppendHeader(nil, wire.FrameServerKey, uint32(wire.ServerKeyBodyLen)), wire.AppendServerKey(nil, pub)...)
		// Upstream's exact 101, written out here rather than taken from
		// upgradeResponse, which it checks.
		switching := []byte("HTTP/1.1 101 Switching Protocols\r\nUpgrade: DERP\r\nConnection: Upgrade\r\nDerp-Version: 2\r\n" +
			"Derp-Public-Key: " + hex.EncodeToString(pub[:]) + "\r\n\r\n")
		br := bufio.NewReader(bytes.NewReader(out))
		for i := 0; ; {
			var req *http.Request
			if i < len(reqs) {
				req = reqs[i]
			}
			head, _ := br.Peek(len(switching) + len(keyFrame))
			if len(head) == 0 {
				return
			}
			if bytes.HasPrefix(keyFrame, head[:min(len(head), len(keyFrame))]) {
				if req == nil || kindOf(req) != derpUpgrade || req.Header.Get("Derp-Fast-Start") != "1" {
					t.Fatalf("response %d is DERP's ServerKey, to a request that is no fast-start upgrade: %+v", i, req)
				}
				if !bytes.HasPrefix(head, keyFrame) {
					t.Fatalf("fast start: %q is cut short", head)
				}
				return
			}
			if bytes.HasPrefix(head, []byte("HTTP/1.1 101 ")) && req != nil && kindOf(req) == derpUpgrade {
				if !bytes.Equal(head, append(append([]byte(nil), switching...), keyFrame...)) {
					t.Fatalf("DERP upgrade of request %d answered %q, want the exact 101 and ServerKey", i, head)
				}
				return
			}
			res, err := http.ReadResponse(br, req)
			if err != nil {
				t.Fatalf("response %d does not parse: %v (%q)", i, err, head)
			}
			if res.StatusCode == http.StatusSwitchingProtocols {
				if req == nil || kindOf(req) != websocketUpgrade {
					t.Fatalf("a 101 for request %d, which asked for no WebSocket upgrade: %+v", i, req)
				}
				key := req.Header.Get("Sec-WebSocket-Key")
				sum := sha1.Sum([]byte(key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"))
				if res.Header.Get("Sec-WebSocket-Accept") != base64.StdEncoding.EncodeToString(sum[:]) || !strings.EqualFold(res.Header.Get("Upgrade"), "websocket") {
					t.Fatalf("WebSocket 101 with headers %v for key %q", res.Header, key)
				}
				switch proto := res.Header.Get("Sec-WebSocket-Protocol"); proto {
				case "derp":
				case "":
					// The client offered no "derp" of its own (only a
					// name containing it): closed at once as a policy
					// violation (1008).
					if closing, _ := br.Peek(4); len(closing) < 4 || closing[0] != 0x88 || binary.BigEndian.Uint16(closing[2:]) != 1008 {
						t.Fatalf("a WebSocket without the derp subprotocol goes on with %x, want a close frame with 1008", closing)
					}
				default:
					t.Fatalf("WebSocket subprotocol %q agreed", proto)
				}
				return
			}
			if res.StatusCode/100 == 1 {
				continue // interim (100 Continue): the final response follows
			}
			if _, err := io.Copy(io.Discard, res.Body); err != nil {
				t.Fatalf("response %d (%s): body: %v", i, res.Status, err)
			}
			switch {
			case req == nil && res.StatusCode < 400:
				t.Fatalf("response %d (%s) to bytes that are not a request", i, res.Status)
			case req != nil && kindOf(req) == derpUpgrade && res.StatusCode < 400:
				t.Fatalf("the DERP upgrade request %d was answered %s", i, res.Status)
			}
			i++
		}
	})
}

// derpFrame is one frame the WebSocket target's server read.
type derpFrame struct {
	typ  wire.FrameType
	body []byte
}

type wsResult struct {
	refused bool
	frames  []derpFrame
	err     error
}

// wsUpgrade is a browser's request for DERP over WebSocket (the key is
// RFC 6455's example).
const wsUpgrade = "GET /derp HTTP/1.1\r\nHost: derp.example.com\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
	"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: derp\r\n\r\n"

// wsFrame builds one client frame (clients always mask).
func wsFrame(fin bool, opcode byte, payload []byte, mask [4]byte) []byte {
	b0 := opcode & 0x0f
	if fin {
		b0 |= 0x80
	}
	b := []byte{b0}
	switch n := len(payload); {
	case n < 126:
		b = append(b, 0x80|byte(n))
	case n <= 0xffff:
		b = append(b, 0x80|126, byte(n>>8), byte(n))
	default:
		b = append(b, 0x80|127)
		b = binary.BigEndian.AppendUint64(b, uint64(n))
	}
	b = append(b, mask[:]...)
	for i, c := range payload {
		b = append(b, c^mask[i%4])
	}
	return b
}

// wsFrames carries derp in binary messages the way split says: each byte
// gives the next fragment's size (low 6 bits, in steps of 61 bytes), ends
// the message there (0x40), or puts a ping before it (0x80).
func wsFrames(derp, split []byte) []byte {
	var out []byte
	inMessage := false
	for i := 0; len(derp) > 0; i++ {
		s := byte(0x40)
		n := len(derp)
		if len(split) > 0 {
			s = split[i%len(split)]
			n = min(n, int(s&0x3f)*61+1)
		}
		if s&0x80 != 0 {
			out = append(out, wsFrame(true, 0x9, []byte("ping"), [4]byte{9, 8, 7, byte(i)})...)
		}
		fin := s&0x40 != 0 || n == len(derp)
		op := byte(0x2)
		if inMessage {
			op = 0x0
		}
		out = append(out, wsFrame(fin, op, derp[:n], [4]byte{byte(i), 0x5a, byte(n), 0xa5})...)
		derp, inMessage = derp[n:], !fin
	}
	return out
}

// decodeWebSocket reads client frames by RFC 6455 and returns the
// payload of the binary messages up to the first frame that breaks a
// rule or is cut short, and whether there was none (the stream ends at a
// frame boundary or with a close frame).
func decodeWebSocket(b []byte) (data []byte, valid bool) {
	inMessage := false
	for len(b) > 0 {
		if len(b) < 2 {
			return data, false
		}
		fin, rsv, op := b[0]&0x80 != 0, b[0]&0x70, b[0]&0x0f
		masked, n, hdr := b[1]&0x80 != 0, uint64(b[1]&0x7f), 2
		switch n {
		case 126:
			if len(b) < 4 {
				return data, false
			}
			n, hdr = uint64(binary.BigEndian.Uint16(b[2:])), 4
		case 127:
			if len(b) < 10 {
				return data, false
			}
			n, hdr = binary.BigEndian.Uint64(b[2:]), 10
		}
		if !masked || rsv != 0 || n >= 1<<63 {
			return data, false
		}
		if len(b) < hdr+4 || n > uint64(len(b)-hdr-4) {
			return data, false
		}
		mask := b[hdr : hdr+4]
		payload := bytes.Clone(b[hdr+4 : hdr+4+int(n)])
		for i := range payload {
			payload[i] ^= mask[i%4]
		}
		b = b[hdr+4+int(n):]
		switch op {
		case 0x0, 0x2:
			if (op == 0x0) != inMessage {
				return data, false // a continuation with no message, or a message inside one
			}
			data = append(data, payload...)
			inMessage = !fin
		case 0x8, 0x9, 0xa:
			if !fin || n > 125 {
				return data, false
			}
			if op == 0x8 {
				return data, true
			}
		default: // text (DERP is binary), reserved opcodes
			return data, false
		}
	}
	return data, true
}

// FuzzWebSocketFrames is a WebSocket DERP client that, after a correct
// upgrade, sends derp carried in binary messages fragmented (and pinged)
// as split says, then raw bytes of its own framing, all arriving in
// reads the fuzzer sizes. It runs through acceptWebSocket, the path
// /derp takes, into the DERP reader the handshake uses. An independent
// RFC 6455 decoding of the same bytes fixes the outcome: every DERP
// frame read is the frame at the same place in the messages' payload,
// and when no WebSocket rule is broken and nothing is cut short, every
// frame is read.
func FuzzWebSocketFrames(f *testing.F) {
	f.Fuzz(func(t *testing.T, derp, split, raw, chunks []byte) {
		d := getFuzzDerpd(t)
		stream := append(wsFrames(derp, split), raw...)
		c, err := d.ws.Dial(fuzzClientAddr, fuzztest.ReadSizes(chunks))
		if err != nil {
			t.Fatal(err)
		}
		c.Write([]byte(wsUpgrade))
		c.Write(stream)
		c.CloseWrite()
		var res wsResult
		fuzztest.Within(t, "the WebSocket connection", func() {
			io.ReadAll(c)
			res = <-d.wsDone
		})
		c.Close()
		d.panics.check(t)
		if res.refused {
			t.Fatal("a correct WebSocket upgrade was refused")
		}

		data, valid := decodeWebSocket(stream)
		// The frames in data, as the DERP reader would see them.
		var want []derpFrame
		for off := 0; len(data)-off >= wire.HeaderLen; {
			typ, n := wire.ParseHeader(data[off:])
			if n > wire.MaxClientInfoLen || uint64(len(data)-off-wire.HeaderLen) < uint64(n) {
				break
			}
			want = append(want, derpFrame{typ, data[off+wire.HeaderLen : off+wire.HeaderLen+int(n)]})
			off += wire.HeaderLen + int(n)
		}
		for i, got := range res.frames {
			if i >= len(want) {
				// Bytes past data: only the part of a frame cut short
				// (coder/websocket hands over what it read, still masked,
				// with its error).
				if valid {
					t.Fatalf("frame %d read from a valid stream holding %d", i, len(want))
				}
				break
			}
			if got.typ != want[i].typ || !bytes.Equal(got.body, want[i].body) {
				if !valid && i == len(want)-1 {
					break // the same, for the last frame before the cut
				}
				t.Fatalf("frame %d read as %v of %d bytes, the messages carry %v of %d", i, got.typ, len(got.body), want[i].typ, len(want[i].body))
			}
		}
		if valid && len(res.frames) != len(want) {
			t.Fatalf("%d of the %d DERP frames of a valid WebSocket stream read (%v)", len(res.frames), len(want), res.err)
		}
	})
}

// roundTripFunc is an http.RoundTripper of a function.
type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

// expectAdmit reads an admission controller's answer independently of
// encoding/json's struct decoding: admitted exactly for a 200 whose
// first JSON value (within the 4 KiB derpd reads) is an object whose
// members named allow, in any case, are booleans or null, the last
// boolean of them true.
func expectAdmit(status int, body []byte) bool {
	if status != http.StatusOK {
		return false
	}
	dec := json.NewDecoder(bytes.NewReader(body[:min(len(body), 4<<10)]))
	var first json.RawMessage
	if dec.Decode(&first) != nil {
		return false
	}
	obj := json.NewDecoder(bytes.NewReader(first))
	if tok, err := obj.Token(); err != nil || tok != json.Delim('{') {
		return false // null decodes to a refusal, anything else fails
	}
	allow := false
	for obj.More() {
		tok, err := obj.Token()
		if err != nil {
			return false
		}
		var v any
		if err := obj.Decode(&v); err != nil {
			return false
		}
		if name, _ := tok.(string); strings.EqualFold(name, "allow") {
			switch v := v.(type) {
			case bool:
				allow = v
			case nil:
			default:
				return false
			}
		}
	}
	return allow
}

// FuzzAdmissionResponse is the admission controller (-verify-client-url)
// answering with any status and body: a client is admitted exactly when
// an independent reading says the controller allowed it, and a refusal
// always says client.ErrRejected.
func FuzzAdmissionResponse(f *testing.F) {
	key := fuzzServerKey.Public()
	f.Fuzz(func(t *testing.T, status uint16, body []byte) {
		code := int(status)%900 + 100
		a := &urlAdmitter{url: "http://admission.example/verify", log: zerolog.Nop(), http: &http.Client{
			Transport: roundTripFunc(func(r *http.Request) (*http.Response, error) {
				return &http.Response{StatusCode: code, Status: http.StatusText(code), Body: io.NopCloser(bytes.NewReader(body)), Header: http.Header{}, Request: r}, nil
			}),
		}}
		err := a.admit(context.Background(), key, fuzzClientAddr)
		if want := expectAdmit(code, body); (err == nil) != want {
			t.Fatalf("status %d body %q: admit = %v, but the controller allowed it: %v", code, body, err, want)
		}
		if err != nil && !errors.Is(err, client.ErrRejected) {
			t.Fatalf("a refusal without ErrRejected: %v", err)
		}
	})
}

var meshKeyForm = regexp.MustCompile(`^[0-9a-fA-F]{64}$`)

// FuzzKeyFile is a key file (-c) with any content: derpd either refuses
// it, leaving the file as it was (a server that replaced its key would
// strand its clients), or loads a key that is not zero, that the file
// spells, and that survives being written and read again.
func FuzzKeyFile(f *testing.F) {
	f.Fuzz(func(t *testing.T, content []byte) {
		path := filepath.Join(t.TempDir(), "derper.key")
		if err := os.WriteFile(path, content, 0o600); err != nil {
			t.Fatal(err)
		}
		k, created, err := loadOrCreateKey(path)
		if created {
			t.Fatal("made a new key although the file exists")
		}
		if err != nil {
			if after, _ := os.ReadFile(path); !bytes.Equal(after, content) {
				t.Fatalf("a refused key file was changed: %v", err)
			}
			return
		}
		text, _ := k.MarshalText()
		if k.IsZero() || !jsonMemberSpells(content, "PrivateKey", string(text)) {
			t.Fatalf("loaded %v, which the file %q does not spell", k, content)
		}
		again := filepath.Join(t.TempDir(), "again.key")
		if err := writeKeyFile(again, k); err != nil {
			t.Fatal(err)
		}
		if k2, _, err := loadOrCreateKey(again); err != nil || k2 != k {
			t.Fatalf("written and read again: %v, %v", k2, err)
		}
	})
}

// jsonMemberSpells reports whether some member of the JSON object doc
// named name, in any case, is a string equal to want, in any case.
func jsonMemberSpells(doc []byte, name, want string) bool {
	var members map[string]json.RawMessage
	if json.Unmarshal(doc, &members) != nil {
		return false
	}
	for k, v := range members {
		var s string
		if strings.EqualFold(k, name) && json.Unmarshal(v, &s) == nil && strings.EqualFold(s, want) {
			return true
		}
	}
	return false
}

// FuzzMeshKeyFile is a mesh key file (-mesh-psk-file) with any content:
// empty after trimming white space means no mesh key; otherwise it loads
// exactly when the rest is 64 hex digits, and then as those digits.
func FuzzMeshKeyFile(f *testing.F) {
	f.Fuzz(func(t *testing.T, content []byte) {
		path := filepath.Join(t.TempDir(), "derp-mesh.key")
		if err := os.WriteFile(path, content, 0o600); err != nil {
			t.Fatal(err)
		}
		k, err := loadMeshKey(path, true)
		trimmed := strings.TrimSpace(string(content))
		switch {
		case trimmed == "":
			if err != nil || !k.IsZero() {
				t.Fatalf("a blank file gave %v, %v; want no mesh key", k.Hex(), err)
			}
		case meshKeyForm.MatchString(trimmed):
			if err != nil || k.Hex() != strings.ToLower(trimmed) {
				t.Fatalf("%q gave %s, %v", trimmed, k.Hex(), err)
			}
		default:
			if err == nil {
				t.Fatalf("%q accepted as %s", trimmed, k.Hex())
			}
		}
	})
}

// derpdSeeds is the seed corpus of the targets above.
func derpdSeeds(t *testing.T) map[string]map[string][]any {
	t.Helper()
	pub := fuzzServerKey.Public()
	clientPriv := wire.NodePrivate{2: 2, 31: 64}
	clientPub := clientPriv.Public()
	// A ClientInfo sealed with NaCl directly and a fixed nonce, so that
	// the seed is the same bytes every time.
	var nonce [24]byte
	copy(nonce[:], "derpd fuzz seed nonce")
	infoBody := append(append([]byte(nil), clientPub[:]...), nonce[:]...)
	infoBody = box.Seal(infoBody, []byte(`{"version":2}`), &nonce, (*[32]byte)(&pub), (*[32]byte)(&clientPriv))
	clientInfo := append(wire.AppendHeader(nil, wire.FrameClientInfo, uint32(len(infoBody))), infoBody...)
	derpReq := "GET /derp HTTP/1.1\r\nHost: derp.example.com\r\nUpgrade: DERP\r\nConnection: Upgrade\r\n"
	httpSeeds := map[string]string{
		"derp-upgrade":            derpReq + "\r\n",
		"derp-fast-start":         derpReq + "Derp-Fast-Start: 1\r\n\r\n",
		"derp-fast-start-0":       derpReq + "Derp-Fast-Start: 0\r\n\r\n",
		"derp-upgrade-pipelined":  derpReq + "\r\n\x02\x00\x00\x00\x05short",
		"derp-websocket-old":      "GET /derp HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
		"derp-no-upgrade":         "GET /derp HTTP/1.1\r\nHost: h\r\n\r\n",
		"derp-ideal-node":         derpReq + "Ideal-Node: derp9\r\n\r\n",
		"derp-http10":             "GET /derp HTTP/1.0\r\nUpgrade: derp\r\n\r\n",
		"derp-no-host":            "GET /derp HTTP/1.1\r\nUpgrade: DERP\r\n\r\n",
		"derp-unclean-path":       "GET /x/../derp HTTP/1.1\r\nHost: h\r\nUpgrade: DERP\r\n\r\n",
		"derp-absolute-form":      "GET http://derp.example.com/derp HTTP/1.1\r\nHost: derp.example.com\r\nUpgrade: DERP\r\n\r\n",
		"derp-post-with-body":     "POST /derp HTTP/1.1\r\nHost: h\r\nUpgrade: DERP\r\nContent-Length: 5\r\n\r\nhello",
		"websocket":               wsUpgrade,
		"websocket-no-key":        "GET /derp HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: derp\r\n\r\n",
		"websocket-other-proto":   "GET /derp HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: derpx, chat\r\n\r\n",
		"probe":                   "GET /derp/probe HTTP/1.1\r\nHost: h\r\n\r\nHEAD /derp/latency-check HTTP/1.1\r\nHost: h\r\n\r\nPOST /derp/probe HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\n\r\n",
		"generate-204":            "GET /generate_204 HTTP/1.1\r\nHost: h\r\nX-Tailscale-Challenge: abc-123.xyz\r\n\r\nGET /generate_204 HTTP/1.1\r\nHost: h\r\nX-Tailscale-Challenge: bad<challenge>\r\n\r\n",
		"bootstrap-dns":           "GET /bootstrap-dns?q=controlplane.tailscale.com HTTP/1.1\r\nHost: h\r\n\r\n",
		"home-robots-and-missing": "GET / HTTP/1.1\r\nHost: h\r\n\r\nGET /robots.txt HTTP/1.1\r\nHost: h\r\n\r\nGET /nothing HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
		"debug-refused":           "GET /debug/ HTTP/1.1\r\nHost: h\r\n\r\nGET /debug/peer?key=nodekey:" + strings.Repeat("ab", 32) + " HTTP/1.1\r\nHost: h\r\n\r\n",
		"connect":                 "CONNECT derp.example.com:443 HTTP/1.1\r\nHost: derp.example.com:443\r\n\r\n",
		"expect-continue":         "POST /derp/probe HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\nabc",
		"chunked-body":            "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
		"garbage":                 "\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03",
		"header-too-long":         "GET / HTTP/1.1\r\nHost: h\r\nX: " + strings.Repeat("a", 5000) + "\r\n\r\n",
		"cut-request":             "GET /derp HTTP/1.1\r\nHost: h\r\nUpg",
	}
	httpReq := map[string][]any{}
	for name, s := range httpSeeds {
		httpReq[name] = []any{[]byte(s), []byte{}}
	}
	httpReq["derp-fast-start-clientinfo"] = []any{append([]byte(derpReq+"Derp-Fast-Start: 1\r\n\r\n"), clientInfo...), []byte{}}
	httpReq["derp-upgrade-clientinfo-split"] = []any{append([]byte(derpReq+"\r\n"), clientInfo...), []byte{30, 0, 200}}

	frames := func(write func(w *wire.Writer)) []byte {
		var buf bytes.Buffer
		w := wire.NewWriter(&buf, 0)
		write(w)
		w.Flush()
		return buf.Bytes()
	}
	ping := frames(func(w *wire.Writer) { w.WritePing([8]byte([]byte("pingping"))) })
	many := frames(func(w *wire.Writer) {
		w.WriteFrame(wire.FrameClientInfo, bytes.Repeat([]byte("c"), 100), nil)
		w.WriteNotePreferred(true)
		w.WriteSendPacket(wire.NodePublic{1: 1}, bytes.Repeat([]byte("p"), 1400))
		w.WritePing([8]byte([]byte("pingping")))
	})
	mask := [4]byte{1, 2, 3, 4}
	ws := map[string][]any{
		"one-message":          {many, []byte{}, []byte{}, []byte{}},
		"fragmented":           {many, []byte{1, 0x05, 0x83, 0x40}, []byte{}, []byte{}},
		"message-per-byte":     {ping, []byte{0x40}, []byte{}, []byte{}},
		"bytewise-reads":       {many, []byte{0x02, 0x41}, []byte{}, []byte{0}},
		"then-close":           {ping, []byte{}, wsFrame(true, 0x8, []byte{0x03, 0xe8}, mask), []byte{}},
		"then-close-1002":      {ping, []byte{}, wsFrame(true, 0x8, []byte{0x03, 0xea, 'x'}, mask), []byte{}},
		"then-bad-close":       {ping, []byte{}, wsFrame(true, 0x8, []byte{0x03}, mask), []byte{}},
		"then-text":            {ping, []byte{}, wsFrame(true, 0x1, []byte("hello"), mask), []byte{}},
		"then-unmasked":        {ping, []byte{}, []byte{0x82, 0x05, 'h', 'e', 'l', 'l', 'o'}, []byte{}},
		"then-rsv1":            {ping, []byte{}, append([]byte{0xc2}, wsFrame(true, 0x2, ping, mask)[1:]...), []byte{}},
		"then-reserved-op":     {ping, []byte{}, wsFrame(true, 0x3, ping, mask), []byte{}},
		"then-stray-cont":      {ping, []byte{}, wsFrame(true, 0x0, ping, mask), []byte{}},
		"message-in-message":   {[]byte{}, []byte{}, cat(wsFrame(false, 0x2, ping[:3], mask), wsFrame(true, 0x2, ping[3:], mask)), []byte{}},
		"long-ping":            {ping, []byte{}, wsFrame(true, 0x9, bytes.Repeat([]byte("p"), 126), mask), []byte{}},
		"fragmented-ping":      {ping, []byte{}, wsFrame(false, 0x9, []byte("p"), mask), []byte{}},
		"pong-between":         {[]byte{}, []byte{}, cat(wsFrame(false, 0x2, ping[:4], mask), wsFrame(true, 0xa, []byte("unsolicited"), mask), wsFrame(true, 0x0, ping[4:], mask)), []byte{}},
		"cut-payload":          {[]byte{}, []byte{}, wsFrame(true, 0x2, ping, mask)[:10], []byte{}},
		"cut-header":           {ping, []byte{}, []byte{0x82, 0xfe, 0x01}, []byte{}},
		"length-64-bit":        {[]byte{}, []byte{}, cat([]byte{0x82, 0xff, 0, 0, 0, 0, 0, 0, 0, byte(len(ping))}, mask[:], wsFrame(true, 0x2, ping, [4]byte{})[6:]), []byte{}},
		"length-negative":      {[]byte{}, []byte{}, []byte{0x82, 0xff, 0x80, 0, 0, 0, 0, 0, 0, 1, 1, 2, 3, 4}, []byte{}},
		"length-huge-claim":    {[]byte{}, []byte{}, []byte{0x82, 0xff, 0, 0, 0, 1, 0, 0, 0, 0, 1, 2, 3, 4}, []byte{}},
		"derp-oversize-claim":  {wire.AppendHeader(nil, wire.FrameClientInfo, 16<<20), []byte{}, []byte{}, []byte{}},
		"empty-messages":       {[]byte{}, []byte{}, cat(wsFrame(true, 0x2, nil, mask), wsFrame(true, 0x2, ping, mask), wsFrame(true, 0x2, nil, mask)), []byte{}},
		"large-message-16bit":  {bytes.Repeat(ping, 20), []byte{}, []byte{}, []byte{}},
		"large-message-64bit":  {frames(func(w *wire.Writer) { w.WriteSendPacket(wire.NodePublic{1: 1}, bytes.Repeat([]byte("q"), 70000)) }), []byte{}, []byte{}, []byte{}},
		"nothing-after-accept": {[]byte{}, []byte{}, []byte{}, []byte{}},
	}
	admission := map[string][]any{
		"allow":           {uint16(100), []byte(`{"Allow":true}`)},
		"deny":            {uint16(100), []byte(`{"Allow":false}`)},
		"lowercase":       {uint16(100), []byte(`{"allow":true}`)},
		"last-wins":       {uint16(100), []byte(`{"Allow":true,"allow":false}`)},
		"null":            {uint16(100), []byte(`{"Allow":null}`)},
		"string-true":     {uint16(100), []byte(`{"Allow":"true"}`)},
		"trailing":        {uint16(100), []byte(`{"Allow":true} trailing garbage`)},
		"other-members":   {uint16(100), []byte(`{"Reason":"ok","Allow":true,"Extra":[1,{"a":null}]}`)},
		"array":           {uint16(100), []byte(`[{"Allow":true}]`)},
		"empty":           {uint16(100), []byte{}},
		"status-403":      {uint16(303), []byte(`{"Allow":true}`)},
		"status-500":      {uint16(400), []byte(`{"Allow":true}`)},
		"past-4k":         {uint16(100), []byte(`{"Pad":"` + strings.Repeat("x", 4100) + `","Allow":true}`)},
		"whitespace-lead": {uint16(100), []byte(" \n\t{\"Allow\":true}")},
	}
	hex64 := strings.Repeat("0f", 32)
	keyFile := map[string][]any{
		"derper":         {[]byte("{\n\t\"PrivateKey\": \"privkey:" + hex64 + "\"\n}\n")},
		"extra-keys":     {[]byte(`{"PrivateKey":"privkey:` + hex64 + `","Other":1}`)},
		"lowercase-name": {[]byte(`{"privatekey":"privkey:` + hex64 + `"}`)},
		"upper-hex":      {[]byte(`{"PrivateKey":"privkey:` + strings.ToUpper(strings.Repeat("af", 32)) + `"}`)},
		"zero":           {[]byte(`{"PrivateKey":"privkey:` + strings.Repeat("00", 32) + `"}`)},
		"no-prefix":      {[]byte(`{"PrivateKey":"` + hex64 + `"}`)},
		"nodekey":        {[]byte(`{"PrivateKey":"nodekey:` + hex64 + `"}`)},
		"short":          {[]byte(`{"PrivateKey":"privkey:abcd"}`)},
		"missing":        {[]byte(`{}`)},
		"null":           {[]byte(`null`)},
		"empty":          {[]byte{}},
		"blank":          {[]byte(" \n")},
		"truncated":      {[]byte(`{"PrivateKey":"privkey:` + hex64)},
		"number":         {[]byte(`{"PrivateKey":7}`)},
	}
	meshKey := map[string][]any{
		"plain":      {[]byte(hex64)},
		"newline":    {[]byte(hex64 + "\n")},
		"crlf-space": {[]byte("  " + strings.ToUpper(hex64) + "\r\n")},
		"empty":      {[]byte{}},
		"blank":      {[]byte(" \t\n")},
		"short":      {[]byte(hex64[:63])},
		"long":       {[]byte(hex64 + "0")},
		"not-hex":    {[]byte(strings.Repeat("zz", 32))},
		"two-lines":  {[]byte(hex64 + "\n" + hex64)},
		"nbsp":       {[]byte("\u00a0" + hex64 + "\u00a0")},
	}
	return map[string]map[string][]any{
		"FuzzHTTPRequest":       httpReq,
		"FuzzWebSocketFrames":   ws,
		"FuzzAdmissionResponse": admission,
		"FuzzKeyFile":           keyFile,
		"FuzzMeshKeyFile":       meshKey,
	}
}

func cat(parts ...[]byte) []byte {
	var b []byte
	for _, p := range parts {
		b = append(b, p...)
	}
	return b
}

// TestFuzzSeeds keeps the committed corpus files equal to derpdSeeds;
// DERPD_WRITE_CORPUS=1 writes them.
func TestFuzzSeeds(t *testing.T) {
	for target, seeds := range derpdSeeds(t) {
		fuzztest.CheckSeeds(t, target, seeds)
	}
}
