package mesh

// Fuzz targets for what a mesh peer sends a link: the reply to the
// /derp upgrade and the handshake (FuzzPeerHandshake), the frames of a
// session after it (FuzzLinkFrames), and the meta certificate's key
// (FuzzMetaCertKey). The seed corpora are the files in
// testdata/fuzz/<target>, kept equal to meshSeeds by TestFuzzSeeds; see
// docs/testing.md.

import (
	"bufio"
	"bytes"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/binary"
	"encoding/json"
	"errors"
	"io"
	"math/big"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/asynkron/protoactor-go/actor"
	"github.com/derpd/derpd/actors"
	"github.com/derpd/derpd/internal/fuzztest"
	"github.com/derpd/derpd/wire"
	"github.com/rs/zerolog"
	"golang.org/x/crypto/nacl/box"
)

var (
	fuzzOurAddr  = netip.MustParseAddrPort("192.0.2.10:40000")
	fuzzPeerAddr = netip.MustParseAddrPort("192.0.2.20:443")
	fuzzNow      = time.Unix(1_700_000_000, 0)

	// Fixed keys, so that seeds holding sealed boxes stay valid.
	fuzzOurs    = wire.NodePrivate{4: 4, 31: 64}
	fuzzPeer    = wire.NodePrivate{3: 3, 31: 64}
	fuzzMeshKey = testMeshKey(0x5a)
	fuzzTarget  = Target{Name: "peer", Host: "derp2.example.com", Port: DefaultPort}
)

// sealFixed seals with NaCl directly and a nonce derived from the
// plaintext, so that a seed is the same bytes every time.
func sealFixed(plain []byte, from wire.NodePrivate, to wire.NodePublic) []byte {
	var nonce [24]byte
	copy(nonce[:], plain)
	return box.Seal(nonce[:], plain, &nonce, (*[32]byte)(&to), (*[32]byte)(&from))
}

// openIndependently opens a box with NaCl directly.
func openIndependently(sealed []byte, from wire.NodePublic, to wire.NodePrivate) ([]byte, bool) {
	if len(sealed) < 24 {
		return nil, false
	}
	return box.Open(nil, sealed[24:], (*[24]byte)(sealed[:24]), (*[32]byte)(&from), (*[32]byte)(&to))
}

// linkExpect is what an independent decoding of a peer's stream says the
// session must make of it.
type linkExpect struct {
	updates  []actors.MeshPeerUpdate
	ending   error // io.EOF, io.ErrUnexpectedEOF or wire.ErrFrameTooLarge
	rtt      int64
	health   string
	complete bool // every update was followed by a point where the reader ran dry
}

func expectLink(stream []byte) linkExpect {
	var e linkExpect
	now := fuzzNow.UnixNano()
	pong := func(body []byte) {
		if sent := int64(binary.BigEndian.Uint64(body)); sent > 0 && now-sent >= 0 {
			e.rtt = now - sent
		}
	}
	for off := 0; ; {
		rest := stream[off:]
		if len(rest) == 0 {
			e.ending, e.complete = io.EOF, true
			return e
		}
		if len(rest) < wire.HeaderLen {
			e.ending = io.ErrUnexpectedEOF
			return e
		}
		typ, n := wire.ParseHeader(rest)
		if n > maxLinkFrame {
			e.ending = wire.ErrFrameTooLarge
			return e
		}
		body := rest[wire.HeaderLen:]
		if uint64(len(body)) < uint64(n) {
			// A cut Pong still counts once its 8 bytes are in.
			if typ == wire.FramePong && n >= wire.PingDataLen && len(body) >= wire.PingDataLen {
				pong(body)
			}
			e.ending = io.ErrUnexpectedEOF
			return e
		}
		body = body[:n]
		switch typ {
		case wire.FramePeerPresent, wire.FramePeerGone:
			if n >= wire.KeyLen {
				e.updates = append(e.updates, actors.MeshPeerUpdate{Key: wire.NodePublic(body[:wire.KeyLen]), Present: typ == wire.FramePeerPresent})
			}
		case wire.FramePong:
			if n >= wire.PingDataLen {
				pong(body)
			}
		case wire.FrameHealth:
			e.health = string(body[:min(len(body), 256)])
		}
		off += wire.HeaderLen + int(n)
	}
}

// FuzzLinkFrames runs a session's real reader (session.read, batching,
// credit and all) over whatever a hostile or broken peer sends after the
// handshake, split into reads where the fuzzer says. An independent
// decoding of the stream fixes the outcome: the updates are exactly the
// PeerPresent and PeerGone frames of at least a key's length, in order
// (for a stream that breaks off mid-frame, a prefix of them: the last
// batch dies with the link), in batches of 1 to maxUpdateBatch; the
// session ends with io.EOF at a frame boundary, io.ErrUnexpectedEOF
// inside a frame and ErrFrameTooLarge on a claim over maxLinkFrame; the
// round trip is the last Pong's, the health text the last Health's.
func FuzzLinkFrames(f *testing.F) {
	sys := actors.NewSystem(zerolog.Nop())
	clock := actors.NewFakeClock(fuzzNow)
	f.Fuzz(func(t *testing.T, stream, chunks []byte) {
		ours, peer := fuzztest.Pipe(fuzzOurAddr, fuzzPeerAddr)
		peer.Write(stream)
		peer.CloseWrite()
		ours.SetReadSizes(fuzztest.ReadSizes(chunks))

		var mu sync.Mutex
		var batches [][]actors.MeshPeerUpdate
		ended := make(chan error, 1)
		var s *session
		link := sys.Root.Spawn(actor.PropsFromFunc(func(ctx actor.Context) {
			switch m := ctx.Message().(type) {
			case *sessionUpdates:
				mu.Lock()
				batches = append(batches, m.updates)
				mu.Unlock()
				s.returnCredit()
			case *sessionEnded:
				ended <- m.err
			}
		}))
		defer sys.Root.Stop(link)
		pc := &peerConn{conn: ours, sock: &stampedConn{Conn: ours}, rd: wire.NewReader(ours, nil, maxLinkFrame)}
		s = newSession(sys, link, "peer", pc, 1, zerolog.Nop())
		s.clock = clock
		defer s.close()
		var err error
		fuzztest.Within(t, "the session's reader", func() {
			s.read()
			err = <-ended
		})

		want := expectLink(stream)
		if !errors.Is(err, want.ending) {
			t.Fatalf("session ended with %v, want %v", err, want.ending)
		}
		mu.Lock()
		var got []actors.MeshPeerUpdate
		for _, b := range batches {
			if len(b) == 0 || len(b) > maxUpdateBatch {
				t.Fatalf("a batch of %d updates", len(b))
			}
			got = append(got, b...)
		}
		mu.Unlock()
		if len(got) > len(want.updates) || (want.complete && len(got) != len(want.updates)) {
			t.Fatalf("%d updates delivered, the stream holds %d (complete: %v)", len(got), len(want.updates), want.complete)
		}
		for i := range got {
			if got[i] != want.updates[i] {
				t.Fatalf("update %d is %+v, the stream says %+v", i, got[i], want.updates[i])
			}
		}
		if rtt := s.rtt.Load(); rtt != want.rtt {
			t.Fatalf("round trip %d ns, the last Pong says %d", rtt, want.rtt)
		}
		if s.health != want.health {
			t.Fatalf("health %q, the last Health says %q", s.health, want.health)
		}
	})
}

// handshakeExpect is what an independent reading of a peer's reply says
// upgradeAndHandshake must do.
type handshakeExpect struct {
	ok        bool
	serverKey wire.NodePublic
	hello     bool   // we send ClientInfo and WatchConns after ServerKey
	rest      []byte // the stream after ServerInfo
}

func expectHandshake(reply []byte, metaKey wire.NodePublic) handshakeExpect {
	var e handshakeExpect
	stream := reply
	if metaKey.IsZero() {
		src := bytes.NewReader(reply)
		br := bufio.NewReaderSize(src, 4096)
		res, err := http.ReadResponse(br, nil)
		if err != nil || res.StatusCode != http.StatusSwitchingProtocols {
			return e
		}
		stream = reply[len(reply)-br.Buffered()-src.Len():]
	}
	frame := func() (wire.FrameType, []byte, bool) {
		if len(stream) < wire.HeaderLen {
			return 0, nil, false
		}
		typ, n := wire.ParseHeader(stream)
		if n > maxLinkFrame || uint64(len(stream)-wire.HeaderLen) < uint64(n) {
			return typ, nil, false
		}
		body := stream[wire.HeaderLen : wire.HeaderLen+int(n)]
		stream = stream[wire.HeaderLen+int(n):]
		return typ, body, true
	}
	typ, body, ok := frame()
	if !ok || typ != wire.FrameServerKey || len(body) < 40 || len(body) > maxServerKeyLen || string(body[:8]) != "DERP\xf0\x9f\x94\x91" {
		return e
	}
	e.serverKey = wire.NodePublic(body[8:40])
	if !metaKey.IsZero() && e.serverKey != metaKey || e.serverKey == fuzzOurs.Public() {
		return e
	}
	e.hello = metaKey.IsZero()
	typ, body, ok = frame()
	if !ok || typ != wire.FrameServerInfo || len(body) > maxServerInfoLen {
		return e
	}
	plain, ok := openIndependently(body, e.serverKey, fuzzOurs)
	var si wire.ServerInfo
	if !ok || json.Unmarshal(plain, &si) != nil {
		return e
	}
	e.ok, e.rest = true, stream
	return e
}

// FuzzPeerHandshake is a mesh link's handshake after TLS against a peer
// that replies with arbitrary bytes (with fast start or without, split
// into reads where the fuzzer says). An independent reading of the reply
// fixes the outcome: success exactly for a 101 (or fast start), a
// well-formed ServerKey that is not ours and matches the certificate's,
// and a ServerInfo that opens from that key; then the reader stands
// right after ServerInfo. What the link sent must be the upgrade request
// and, only once a ServerKey allows it (at once with fast start), our
// ClientInfo with the mesh key, sealed to that key, and WatchConns.
func FuzzPeerHandshake(f *testing.F) {
	cfg := &Config{PrivateKey: fuzzOurs, PublicKey: fuzzOurs.Public(), MeshKey: fuzzMeshKey}
	f.Fuzz(func(t *testing.T, reply []byte, fastStart bool, chunks []byte) {
		ours, peer := fuzztest.Pipe(fuzzOurAddr, fuzzPeerAddr)
		peer.Write(reply)
		peer.CloseWrite()
		ours.SetReadSizes(fuzztest.ReadSizes(chunks))
		var metaKey wire.NodePublic
		if fastStart {
			metaKey = fuzzPeer.Public()
		}
		var rd *wire.Reader
		var key wire.NodePublic
		var err error
		fuzztest.Within(t, "the handshake", func() { rd, key, err = upgradeAndHandshake(ours, cfg, fuzzTarget, metaKey) })
		ours.CloseWrite()
		sent, _ := io.ReadAll(peer)

		want := expectHandshake(reply, metaKey)
		if (err == nil) != want.ok {
			t.Fatalf("handshake: %v; the reply is acceptable: %v", err, want.ok)
		}
		if err == nil {
			if key != want.serverKey {
				t.Fatalf("server key %v, the reply says %v", key, want.serverKey)
			}
			rest := make([]byte, len(want.rest))
			if err := rd.ReadFull(rest); err != nil || !bytes.Equal(rest, want.rest) {
				t.Fatalf("after ServerInfo the reader gives %d bytes (%v) other than the reply's %d", len(rest), err, len(want.rest))
			}
			if _, _, err := rd.ReadHeader(); err != io.EOF {
				t.Fatalf("after the reply: %v, want io.EOF", err)
			}
			rd.Release()
		}
		helloTo := metaKey
		if want.hello {
			helloTo = want.serverKey
		}
		checkSent(t, sent, fastStart, helloTo)
	})
}

// checkSent reads what the link sent: the upgrade request, then our hello
// sealed to helloTo, or nothing when helloTo is zero.
func checkSent(t *testing.T, sent []byte, fastStart bool, helloTo wire.NodePublic) {
	t.Helper()
	br := bufio.NewReader(bytes.NewReader(sent))
	req, err := http.ReadRequest(br)
	if err != nil || req.Method != http.MethodGet || req.URL.Path != "/derp" || req.Host != fuzzTarget.Host ||
		req.Header.Get("Upgrade") != "DERP" || (req.Header.Get("Derp-Fast-Start") == "1") != fastStart {
		t.Fatalf("the link's request %q (%v) is not the upgrade", sent, err)
	}
	after, _ := io.ReadAll(br)
	if helloTo.IsZero() {
		if len(after) != 0 {
			t.Fatalf("the link sent %d bytes after its request with no ServerKey to send them to", len(after))
		}
		return
	}
	rd := wire.NewReader(bytes.NewReader(after), nil, 1<<20)
	typ, n, err := rd.ReadHeader()
	if err != nil || typ != wire.FrameClientInfo {
		t.Fatalf("the link's first frame %v (%v), want ClientInfo", typ, err)
	}
	body := make([]byte, n)
	if err := rd.ReadFull(body); err != nil || len(body) < wire.KeyLen || wire.NodePublic(body[:wire.KeyLen]) != fuzzOurs.Public() {
		t.Fatalf("the link's ClientInfo of %d bytes does not name its key (%v)", n, err)
	}
	// The box key is symmetric: what we sealed to helloTo opens with
	// helloTo's public key and our private one.
	plain, ok := openIndependently(body[wire.KeyLen:], helloTo, fuzzOurs)
	var ci wire.ClientInfo
	if !ok || json.Unmarshal(plain, &ci) != nil || !ci.MeshKey.Equal(fuzzMeshKey) || ci.Version != wire.ProtocolVersion || ci.CanAckPings {
		t.Fatalf("the link's ClientInfo is not %+v with the mesh key sealed to the ServerKey it got (%q, %v)", ci, plain, ok)
	}
	if typ, n, err := rd.ReadHeader(); err != nil || typ != wire.FrameWatchConns || n != 0 {
		t.Fatalf("after ClientInfo: %v of %d (%v), want WatchConns", typ, n, err)
	}
	if _, _, err := rd.ReadHeader(); err != io.EOF {
		t.Fatalf("the link sent more after WatchConns: %v", err)
	}
}

// FuzzMetaCertKey reads the server key out of two certificates with the
// common names and serial numbers the fuzzer picks: a key comes out
// exactly when one of them is "derpkey" and 64 hex digits with a serial
// from 1 to 255, and it is the first such certificate's.
func FuzzMetaCertKey(f *testing.F) {
	f.Fuzz(func(t *testing.T, cn1 string, serial1 int64, cn2 string, serial2 int64) {
		certs := []*x509.Certificate{
			{Subject: pkix.Name{CommonName: cn1}, SerialNumber: big.NewInt(serial1)},
			{Subject: pkix.Name{CommonName: cn2}, SerialNumber: big.NewInt(serial2)},
		}
		var want wire.NodePublic
		for _, c := range certs {
			hexKey, ok := strings.CutPrefix(c.Subject.CommonName, "derpkey")
			k, err := wire.ParseNodePublicUntyped(hexKey)
			if ok && err == nil && c.SerialNumber.Int64() >= 1 && c.SerialNumber.Int64() <= 255 {
				want = k
				break
			}
		}
		if got := keyFromMetaCert(certs); got != want {
			t.Fatalf("key %v from %q/%d and %q/%d, want %v", got, cn1, serial1, cn2, serial2, want)
		}
	})
}

// meshSeeds is the seed corpus of the targets above.
func meshSeeds(t *testing.T) map[string]map[string][]any {
	t.Helper()
	frames := func(write func(w *wire.Writer)) []byte {
		var buf bytes.Buffer
		w := wire.NewWriter(&buf, 0)
		write(w)
		if err := w.Flush(); err != nil {
			t.Fatal(err)
		}
		return buf.Bytes()
	}
	addr := netip.MustParseAddrPort("203.0.113.5:41641")
	k1, k2 := testKey(1), testKey(2)
	var sent [wire.PingDataLen]byte
	binary.BigEndian.PutUint64(sent[:], uint64(fuzzNow.Add(-30*time.Millisecond).UnixNano()))
	var future [wire.PingDataLen]byte
	binary.BigEndian.PutUint64(future[:], uint64(fuzzNow.Add(time.Hour).UnixNano()))
	mixed := frames(func(w *wire.Writer) {
		w.WritePeerPresent(k1, addr, wire.PeerPresentIsRegular)
		w.WritePeerPresent(k2, netip.AddrPort{}, 0)
		w.WriteKeepAlive()
		w.WritePeerGone(k1, wire.PeerGoneDisconnected)
		w.WritePeerGone(k2, wire.PeerGoneNotHere)
		w.WritePong(sent)
		w.WriteFrame(wire.FrameHealth, []byte("overloaded"), nil)
		w.WriteFrame(wire.FrameHealth, []byte("overloaded"), nil)
		w.WriteFrame(wire.FrameHealth, nil, nil)
		w.WritePing(sent)
		w.WriteRecvPacket(k1, []byte("not for a link"))
		w.WriteForwardPacket(k1, k2, []byte("nor this"))
		w.WriteFrame(0x0e, []byte("future type"), nil)
	})
	// One more than a batch, with printable bodies to keep the file small.
	many := frames(func(w *wire.Writer) {
		for i := range maxUpdateBatch + 1 {
			body := bytes.Repeat([]byte{'A' + byte(i%26)}, wire.PeerPresentLen)
			body[0] = 'a' + byte(i/26)
			w.WriteFrame(wire.FramePeerPresent, body, nil)
		}
	})
	link := map[string][]any{
		"mixed":               {mixed, []byte{}},
		"mixed-bytewise":      {mixed, []byte{0}},
		"mixed-cut":           {mixed[:len(mixed)-3], []byte{17, 3}},
		"more-than-a-batch":   {many, []byte{}},
		"peergone-no-reason":  {append(wire.AppendHeader(nil, wire.FramePeerGone, 32), k1[:]...), []byte{}},
		"peerpresent-old":     {append(wire.AppendHeader(nil, wire.FramePeerPresent, 32), k1[:]...), []byte{}},
		"peerpresent-short":   {append(wire.AppendHeader(nil, wire.FramePeerPresent, 31), k1[:31]...), []byte{}},
		"peerpresent-longer":  {append(append(wire.AppendHeader(nil, wire.FramePeerPresent, 80), k1[:]...), make([]byte, 48)...), []byte{}},
		"peergone-cut-key":    {append(wire.AppendHeader(nil, wire.FramePeerGone, 33), k1[:20]...), []byte{}},
		"pong-from-future":    {frames(func(w *wire.Writer) { w.WritePong(future) }), []byte{}},
		"pong-short":          {append(wire.AppendHeader(nil, wire.FramePong, 4), 1, 2, 3, 4), []byte{}},
		"pong-long-cut":       {append(append(wire.AppendHeader(nil, wire.FramePong, 20), sent[:]...), 1), []byte{}},
		"health-long":         {frames(func(w *wire.Writer) { w.WriteFrame(wire.FrameHealth, bytes.Repeat([]byte("x"), 300), nil) }), []byte{}},
		"claim-over-1mib":     {wire.AppendHeader(nil, wire.FramePeerPresent, maxLinkFrame+1), []byte{}},
		"claim-4gib":          {wire.AppendHeader(nil, wire.FrameHealth, 0xffffffff), []byte{}},
		"claim-at-limit-cut":  {append(wire.AppendHeader(nil, wire.FrameKeepAlive, maxLinkFrame), 1, 2), []byte{}},
		"truncated-header":    {[]byte{0x09, 0, 0}, []byte{}},
		"immediate-end":       {[]byte{}, []byte{}},
		"updates-then-a-cut":  {append(bytes.Clone(many[:56*10]), wire.AppendHeader(nil, wire.FramePeerGone, 33)...), []byte{}},
		"updates-then-a-lie":  {append(bytes.Clone(many[:56*10]), wire.AppendHeader(nil, wire.FramePeerGone, 1<<30)...), []byte{200}},
		"peergone-mixed-read": {frames(func(w *wire.Writer) { w.WritePeerGone(k2, 0x7f) }), []byte{4, 31, 0}},
	}

	serverInfo := func(from wire.NodePrivate, js string) []byte {
		return frames(func(w *wire.Writer) {
			w.WriteFrame(wire.FrameServerInfo, sealFixed([]byte(js), from, fuzzOurs.Public()), nil)
		})
	}
	serverKey := func(k wire.NodePublic) []byte { return frames(func(w *wire.Writer) { w.WriteServerKey(k) }) }
	const switching = "HTTP/1.1 101 Switching Protocols\r\nUpgrade: DERP\r\nConnection: Upgrade\r\nDerp-Version: 2\r\n\r\n"
	good := cat(serverKey(fuzzPeer.Public()), serverInfo(fuzzPeer, `{"version":2}`))
	presence := frames(func(w *wire.Writer) { w.WritePeerPresent(k1, addr, wire.PeerPresentIsRegular) })
	other := wire.NodePrivate{9: 9, 31: 64}
	peerKey := fuzzPeer.Public()
	handshake := map[string][]any{
		"upgrade":                {cat([]byte(switching), good), false, []byte{}},
		"upgrade-then-frames":    {cat([]byte(switching), good, presence), false, []byte{}},
		"upgrade-bytewise":       {cat([]byte(switching), good, presence), false, []byte{0}},
		"fast-start":             {good, true, []byte{}},
		"fast-start-then-frames": {cat(good, presence), true, []byte{40, 3}},
		"other-key":              {cat([]byte(switching), serverKey(other.Public()), serverInfo(other, `{}`)), false, []byte{}},
		"fast-start-other-key":   {cat(serverKey(other.Public()), serverInfo(other, `{}`)), true, []byte{}},
		"self":                   {cat([]byte(switching), serverKey(fuzzOurs.Public()), serverInfo(fuzzOurs, `{}`)), false, []byte{}},
		"refused":                {[]byte("HTTP/1.1 403 Forbidden\r\nContent-Length: 9\r\n\r\nforbidden"), false, []byte{}},
		"not-http":               {[]byte("SSH-2.0-OpenSSH_9.6\r\n"), false, []byte{}},
		"no-serverinfo":          {cat([]byte(switching), serverKey(fuzzPeer.Public())), false, []byte{}},
		"serverinfo-wrong-key":   {cat([]byte(switching), serverKey(fuzzPeer.Public()), serverInfo(other, `{"version":2}`)), false, []byte{}},
		"serverinfo-not-json":    {cat([]byte(switching), serverKey(fuzzPeer.Public()), serverInfo(fuzzPeer, `version 2`)), false, []byte{}},
		"serverkey-bad-magic":    {cat([]byte(switching), []byte("\x01\x00\x00\x00\x28DERP\xf0\x9f\x94\x90"), peerKey[:]), false, []byte{}},
		"serverkey-short":        {cat([]byte(switching), serverKey(fuzzPeer.Public())[:30]), false, []byte{}},
		"serverkey-claim-huge":   {cat([]byte(switching), wire.AppendHeader(nil, wire.FrameServerKey, 2000)), true, []byte{}},
		"serverinfo-claim-huge":  {cat(serverKey(fuzzPeer.Public()), wire.AppendHeader(nil, wire.FrameServerInfo, maxServerInfoLen)), true, []byte{}},
		"keepalive-first":        {cat([]byte(switching), frames(func(w *wire.Writer) { w.WriteKeepAlive() }), good), false, []byte{}},
		"serverkey-future-bytes": {cat([]byte(switching), frames(func(w *wire.Writer) {
			w.WriteFrame(wire.FrameServerKey, cat(wire.AppendServerKey(nil, fuzzPeer.Public()), []byte("v3")), nil)
		}), serverInfo(fuzzPeer, `{}`)), false, []byte{}},
		"empty": {[]byte{}, false, []byte{}},
	}
	// Were the valid seeds refused by the oracle, every run would
	// compare failures with failures and prove nothing.
	if !expectHandshake(handshake["upgrade-then-frames"][0].([]byte), wire.NodePublic{}).ok || !expectHandshake(good, peerKey).ok {
		t.Fatal("the valid handshake seeds do not pass the independent reading")
	}
	if e := expectLink(mixed); len(e.updates) != 4 || !e.complete || e.health != "" || e.rtt != int64(30*time.Millisecond) {
		t.Fatalf("the independent reading of the mixed seed: %+v", e)
	}
	hexKey := k1.UntypedHexString()
	meta := map[string][]any{
		"meta-first":      {"derpkey" + hexKey, int64(2), "derp.example.com", int64(77)},
		"meta-second":     {"derp.example.com", int64(1), "derpkey" + hexKey, int64(255)},
		"serial-zero":     {"derpkey" + hexKey, int64(0), "", int64(0)},
		"serial-256":      {"derpkey" + hexKey, int64(256), "", int64(0)},
		"serial-negative": {"derpkey" + hexKey, int64(-2), "", int64(0)},
		"short-hex":       {"derpkey" + hexKey[:63], int64(2), "", int64(0)},
		"upper-hex":       {"derpkey" + strings.ToUpper(hexKey), int64(2), "", int64(0)},
		"prefix-case":     {"DERPKEY" + hexKey, int64(2), "", int64(0)},
	}
	return map[string]map[string][]any{"FuzzLinkFrames": link, "FuzzPeerHandshake": handshake, "FuzzMetaCertKey": meta}
}

func cat(parts ...[]byte) []byte {
	var b []byte
	for _, p := range parts {
		b = append(b, p...)
	}
	return b
}

// TestFuzzSeeds keeps the committed corpus files equal to meshSeeds;
// DERPD_WRITE_CORPUS=1 writes them.
func TestFuzzSeeds(t *testing.T) {
	for target, seeds := range meshSeeds(t) {
		fuzztest.CheckSeeds(t, target, seeds)
	}
}
