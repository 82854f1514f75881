package client

// Fuzz targets for a server-side connection as a whole: Serve fed
// arbitrary bytes after it sent ServerKey (FuzzHandshake), and arbitrary
// frames after a correct handshake (FuzzClientFrames), over an
// in-memory connection with a real registry. The seed corpora are the
// files in testdata/fuzz/<target>, kept equal to clientSeeds by
// TestFuzzSeeds; see docs/testing.md.

import (
	"bytes"
	"encoding/json"
	"io"
	"net/netip"
	"sync"
	"testing"

	"github.com/derpd/derpd/actors"
	"github.com/derpd/derpd/actors/registry"
	"github.com/derpd/derpd/internal/fuzztest"
	"github.com/derpd/derpd/wire"
	"github.com/rs/zerolog"
	"golang.org/x/crypto/nacl/box"
)

var (
	fuzzClientAddr = netip.MustParseAddrPort("198.51.100.7:41641")
	fuzzServerAddr = netip.MustParseAddrPort("192.0.2.1:443")

	// Fixed keys, so that seeds holding sealed boxes stay valid.
	fuzzServerKey = wire.NodePrivate{1: 1, 31: 64}
	fuzzClientKey = wire.NodePrivate{2: 2, 31: 64}
	fuzzMeshKey   = wire.MeshKey{0: 0x6d, 31: 0x6b}
)

// sealFixed seals with NaCl directly and a nonce derived from the
// plaintext, so that a seed is the same bytes every time.
func sealFixed(plain []byte, from wire.NodePrivate, to wire.NodePublic) []byte {
	var nonce [24]byte
	copy(nonce[:], plain)
	return box.Seal(nonce[:], plain, &nonce, (*[32]byte)(&to), (*[32]byte)(&from))
}

// clientInfoFrame is a ClientInfo frame carrying plain, sealed by the
// fuzz client to the fuzz server.
func clientInfoFrame(plain []byte) []byte {
	pub := fuzzClientKey.Public()
	body := append(pub[:], sealFixed(plain, fuzzClientKey, fuzzServerKey.Public())...)
	return append(wire.AppendHeader(nil, wire.FrameClientInfo, uint32(len(body))), body...)
}

// fuzzServer is one server shared by every input of a fuzzing process:
// a system with a real registry, and Serve's configuration.
type fuzzServer struct {
	sys *actors.System
	cfg *Config
}

var (
	fuzzServerOnce sync.Once
	theFuzzServer  *fuzzServer
)

func getFuzzServer() *fuzzServer {
	fuzzServerOnce.Do(func() {
		sys := actors.NewSystem(zerolog.Nop())
		cfg := &Config{PrivateKey: fuzzServerKey, PublicKey: fuzzServerKey.Public(), MeshKey: fuzzMeshKey}
		registry.Spawn(sys, cfg.PublicKey)
		theFuzzServer = &fuzzServer{sys: sys, cfg: cfg}
	})
	return theFuzzServer
}

// clientExpect is what an independent reading of a client's stream says
// the server must do with it.
type clientExpect struct {
	accepted     bool // the first frame is a ClientInfo that opens and decodes
	infoNeedsEOF bool // the ClientInfo frame is incomplete: only the end of the stream ends the handshake
	mesh         bool

	// After the handshake, frames up to the first that breaks the
	// protocol, or the first the stream cuts short.
	violation bool // the server must close without waiting for the stream's end
	complete  bool // the stream ends at a frame boundary, breaking nothing
	mayClose  bool // a mesh ClosePeer of the client's own key: the server closes it at a time of its choosing, perhaps after answering what follows
	watches   bool
	pongs     [][wire.PingDataLen]byte
	discoTo   map[wire.NodePublic]bool
	toSelf    []recvd // packets addressed to the client itself, in order
}

type recvd struct {
	src     wire.NodePublic
	payload string
}

func expectClient(stream []byte, serverCfg *Config) clientExpect {
	e := clientExpect{discoTo: map[wire.NodePublic]bool{}}
	frame := func(limit uint32) (typ wire.FrameType, n uint32, body []byte, headerOK, bodyOK bool) {
		if len(stream) < wire.HeaderLen {
			return 0, 0, nil, false, false
		}
		typ, n = wire.ParseHeader(stream)
		if n > limit {
			return typ, n, nil, true, false
		}
		if uint64(len(stream)-wire.HeaderLen) < uint64(n) {
			return typ, n, nil, true, false
		}
		body = stream[wire.HeaderLen : wire.HeaderLen+int(n)]
		return typ, n, body, true, true
	}
	consume := func(n uint32) { stream = stream[wire.HeaderLen+int(n):] }

	typ, n, body, headerOK, bodyOK := frame(wire.MaxClientInfoLen)
	switch {
	case !headerOK:
		e.infoNeedsEOF = true
		return e
	case n > wire.MaxClientInfoLen || typ != wire.FrameClientInfo || n < wire.MinClientInfoLen:
		return e
	case !bodyOK:
		e.infoNeedsEOF = true
		return e
	}
	client := wire.NodePublic(body[:wire.KeyLen])
	sealed := body[wire.KeyLen:]
	server := serverCfg.PrivateKey
	plain, ok := box.Open(nil, sealed[24:], (*[24]byte)(sealed[:24]), (*[32]byte)(&client), (*[32]byte)(&server))
	var ci wire.ClientInfo
	if client.IsZero() || !ok || json.Unmarshal(plain, &ci) != nil {
		return e
	}
	e.accepted = true
	e.mesh = !ci.MeshKey.IsZero() && ci.MeshKey == serverCfg.MeshKey
	consume(n)

	for {
		if len(stream) == 0 {
			e.complete = true
			return e
		}
		typ, n, body, headerOK, bodyOK := frame(maxFrameAfterHandshake)
		if !headerOK {
			return e
		}
		if n > maxFrameAfterHandshake || breaks(typ, n, e.mesh) {
			e.violation = true
			return e
		}
		if !bodyOK {
			return e
		}
		switch typ {
		case wire.FrameSendPacket:
			dst := wire.NodePublic(body[:wire.KeyLen])
			if wire.LooksLikeDisco(body[wire.KeyLen:]) {
				e.discoTo[dst] = true
			}
			if dst == client {
				e.toSelf = append(e.toSelf, recvd{client, string(body[wire.KeyLen:])})
			}
		case wire.FrameForwardPacket:
			src, dst := wire.NodePublic(body[:wire.KeyLen]), wire.NodePublic(body[wire.KeyLen:2*wire.KeyLen])
			if wire.LooksLikeDisco(body[2*wire.KeyLen:]) {
				e.discoTo[dst] = true
			}
			if dst == client {
				e.toSelf = append(e.toSelf, recvd{src, string(body[2*wire.KeyLen:])})
			}
		case wire.FramePing:
			e.pongs = append(e.pongs, [wire.PingDataLen]byte(body))
		case wire.FrameWatchConns:
			e.watches = true
		case wire.FrameClosePeer:
			if wire.NodePublic(body) == client {
				e.mayClose = true
			}
		}
		consume(n)
	}
}

// breaks reports whether a frame header alone breaks the protocol, by
// the rules of the reader's documentation: sizes fixed by the protocol,
// and mesh privileges.
func breaks(typ wire.FrameType, n uint32, mesh bool) bool {
	switch typ {
	case wire.FrameSendPacket:
		return n < wire.KeyLen || n > wire.KeyLen+wire.MaxPacketSize
	case wire.FrameForwardPacket:
		return !mesh || n < 2*wire.KeyLen || n > 2*wire.KeyLen+wire.MaxPacketSize
	case wire.FrameNotePreferred:
		return n != 1
	case wire.FramePing:
		return n < 8 || n > 1000
	case wire.FrameWatchConns:
		return !mesh || n != 0
	case wire.FrameClosePeer:
		return !mesh || n != wire.KeyLen
	}
	return false
}

// serverFrames reads what the server writes, on a goroutine of its own,
// so the client side never blocks on it.
type serverFrames struct {
	frames chan fuzzFrame
}

type fuzzFrame struct {
	typ  wire.FrameType
	body []byte
	err  error // set on the last one: how the stream ended
}

func readServer(conn io.Reader) *serverFrames {
	s := &serverFrames{frames: make(chan fuzzFrame, 1<<16)}
	go func() {
		defer close(s.frames)
		rd := wire.NewReader(conn, nil, 1<<20)
		defer rd.Release()
		for {
			typ, n, err := rd.ReadHeader()
			if err != nil {
				s.frames <- fuzzFrame{err: err}
				return
			}
			body := make([]byte, n)
			if err := rd.ReadFull(body); err != nil {
				s.frames <- fuzzFrame{err: err}
				return
			}
			s.frames <- fuzzFrame{typ: typ, body: body}
		}
	}()
	return s
}

// runConn serves one client stream and checks the outcome against
// expectClient. split bytes of the stream are the HTTP server's
// look-ahead (a fast start), the rest arrives in reads of the sizes
// chunks picks.
func runConn(t *testing.T, stream []byte, split int, chunks []byte) {
	fs := getFuzzServer()
	want := expectClient(stream, fs.cfg)
	client, srv := fuzztest.Pipe(fuzzClientAddr, fuzzServerAddr)
	client.Write(stream[split:])
	srv.SetReadSizes(fuzztest.ReadSizes(chunks))
	if want.infoNeedsEOF {
		// The handshake waits for the rest of ClientInfo: without the
		// stream's end only its deadline would end it.
		client.CloseWrite()
	}
	out := readServer(client)
	stats := fs.sys.Stats
	accepts, handshakeErrors := stats.Accepts.Load(), stats.HandshakeErrors.Load()
	fuzztest.Within(t, "Serve's handshake", func() {
		Serve(fs.sys, fs.cfg, Accepted{Conn: srv, Prefix: stream[:split], Addr: fuzzClientAddr, FastStart: split > 0})
	})
	// Inputs run one at a time in a process, so the counters moved for
	// this connection only.
	if got := stats.Accepts.Load() - accepts; got != map[bool]int64{true: 1}[want.accepted] {
		t.Fatalf("%d connections accepted; the stream's ClientInfo is acceptable: %v", got, want.accepted)
	}
	if got := stats.HandshakeErrors.Load() - handshakeErrors; got != map[bool]int64{false: 1}[want.accepted] {
		t.Fatalf("%d handshake errors; the stream's ClientInfo is acceptable: %v", got, want.accepted)
	}

	var frames []fuzzFrame
	next := func() fuzzFrame {
		var f fuzzFrame
		fuzztest.Within(t, "the server's next frame", func() {
			var ok bool
			if f, ok = <-out.frames; !ok {
				f = fuzzFrame{err: io.EOF}
			}
		})
		if f.err == nil {
			frames = append(frames, f)
		}
		return f
	}
	first := next()
	if first.err != nil || first.typ != wire.FrameServerKey || !bytes.Equal(first.body, wire.AppendServerKey(nil, fs.cfg.PublicKey)) {
		t.Fatalf("first frame %v %x (%v), want ServerKey", first.typ, first.body, first.err)
	}
	ended := false // the server's stream has ended
	var sentinel [wire.PingDataLen]byte
	if want.accepted {
		// Wait for ServerInfo, or the end: the client actor sends it once
		// the registry confirms, unless the connection ended first.
		for {
			f := next()
			if f.err != nil {
				ended = true
				break
			}
			if f.typ == wire.FrameServerInfo {
				break
			}
		}
		if ended && !want.violation && !want.mayClose {
			t.Fatal("the server closed a connection that broke no rule before the stream ended")
		}
		switch {
		case want.violation:
			// The server must close on its own; the stream stays open.
		case want.complete && !want.mayClose && !ended:
			// A valid stream is never closed by the server: a ping after
			// it is answered, however long ago the other pings were.
			for i := 0; ; i++ {
				sentinel = [wire.PingDataLen]byte{'s', 'e', 'n', 't', byte(i >> 24), byte(i >> 16), byte(i >> 8), byte(i)}
				if !containsPing(want.pongs, sentinel) {
					break
				}
			}
			ping := append(wire.AppendHeader(nil, wire.FramePing, wire.PingDataLen), sentinel[:]...)
			client.Write(ping)
			for resent := 0; ; {
				f := next()
				if f.err != nil {
					t.Fatalf("the server closed a valid connection (%v)", f.err)
				}
				if f.typ != wire.FramePong {
					continue
				}
				got := [wire.PingDataLen]byte(f.body)
				if got == sentinel {
					break
				}
				if !containsPing(want.pongs, got) {
					t.Fatalf("Pong %x answers no ping of the stream", got)
				}
				// A pong was pending when the sentinel came, so it went
				// unanswered; now none is. Each resend follows a pong of
				// the stream's, so this ends.
				if resent++; resent > len(want.pongs) {
					t.Fatalf("%d pongs for %d pings of the stream before the sentinel's", resent, len(want.pongs))
				}
				client.Write(ping)
			}
			client.CloseWrite()
		default:
			client.CloseWrite()
		}
	}
	fuzztest.Within(t, "closing the connection", func() { <-srv.Closed() })
	for !ended {
		if f := next(); f.err != nil {
			ended = true
		}
	}
	checkServerFrames(t, frames, want, fs.cfg, sentinel)
}

func containsPing(pings [][wire.PingDataLen]byte, p [wire.PingDataLen]byte) bool {
	for _, q := range pings {
		if q == p {
			return true
		}
	}
	return false
}

// checkServerFrames checks everything the server wrote against what the
// client's stream allows: ServerInfo second and only for an accepted
// client, sealed to it; Pongs for its pings, in order (one pending at a
// time, so some may be skipped); PeerGone(NotHere) only for keys it sent
// disco to; PeerPresent only to a mesh watcher; RecvPacket only what was
// sent to its own key, in order; and no frame type a server never sends.
func checkServerFrames(t *testing.T, frames []fuzzFrame, want clientExpect, cfg *Config, sentinel [wire.PingDataLen]byte) {
	t.Helper()
	pongs, toSelf := want.pongs, want.toSelf
	for i, f := range frames[1:] {
		switch f.typ {
		case wire.FrameServerInfo:
			if i != 0 || !want.accepted {
				t.Fatalf("ServerInfo as frame %d; accepted: %v", i+1, want.accepted)
			}
			si, err := wire.ParseServerInfo(f.body, cfg.PublicKey, fuzzClientKey)
			if err != nil || si.Version != wire.ProtocolVersion {
				t.Fatalf("ServerInfo %+v, %v", si, err)
			}
		case wire.FramePong:
			got := [wire.PingDataLen]byte(f.body)
			if sentinel[0] == 's' && got == sentinel {
				pongs = nil // every ping of the stream came before it
				break
			}
			for len(pongs) > 0 && pongs[0] != got {
				pongs = pongs[1:]
			}
			if len(pongs) == 0 {
				t.Fatalf("Pong %x answers no ping of the stream, in order", f.body)
			}
			pongs = pongs[1:]
		case wire.FramePeerGone:
			if len(f.body) != wire.PeerGoneLen {
				t.Fatalf("PeerGone of %d bytes", len(f.body))
			}
			k := wire.NodePublic(f.body[:wire.KeyLen])
			if wire.PeerGoneReason(f.body[wire.KeyLen]) == wire.PeerGoneNotHere && !want.discoTo[k] {
				t.Fatalf("PeerGone(NotHere) for %v, which the client sent no disco to", k.ShortString())
			}
		case wire.FramePeerPresent:
			if !want.mesh || !want.watches || len(f.body) != wire.PeerPresentLen {
				t.Fatalf("PeerPresent of %d bytes to a client with mesh %v that watches: %v", len(f.body), want.mesh, want.watches)
			}
		case wire.FrameRecvPacket:
			got := recvd{wire.NodePublic(f.body[:wire.KeyLen]), string(f.body[wire.KeyLen:])}
			for len(toSelf) > 0 && toSelf[0] != got {
				toSelf = toSelf[1:]
			}
			if len(toSelf) == 0 {
				t.Fatalf("RecvPacket from %v of %d bytes that the client did not send itself, in order", got.src.ShortString(), len(got.payload))
			}
			toSelf = toSelf[1:]
		case wire.FrameKeepAlive:
		default:
			t.Fatalf("the server sent %v", f.typ)
		}
	}
}

// FuzzHandshake is a connection that sends arbitrary bytes once the
// server has sent ServerKey: info, when not empty, is sealed correctly
// into a ClientInfo frame in front of them, so the fuzzer reaches the
// JSON (version, mesh key) behind the box. Part of the stream may come
// as the HTTP server's look-ahead, the rest in reads the fuzzer sizes.
// The server must accept exactly a ClientInfo that an independent
// reading accepts, close everything else on its own (or at the stream's
// end when ClientInfo is cut short) with a counted handshake error,
// never hang or panic, and then serve what follows as FuzzClientFrames
// describes.
func FuzzHandshake(f *testing.F) {
	f.Fuzz(func(t *testing.T, info, rest []byte, prefixLen uint16, chunks []byte) {
		var stream []byte
		if len(info) > 0 {
			stream = clientInfoFrame(info)
		}
		stream = append(stream, rest...)
		runConn(t, stream, int(prefixLen)%(len(stream)+1), chunks)
	})
}

// FuzzClientFrames is a client (a mesh peer with mesh) that completed
// the handshake and then sends arbitrary frames. A frame that breaks the
// protocol (a size the protocol fixes, a mesh privilege without the
// mesh key, a claim over 1 MiB) must make the server close the
// connection on its own; a stream of valid frames must leave it open
// (a ping sent after it is answered); and everything the server writes
// must follow from what the client sent (checkServerFrames).
func FuzzClientFrames(f *testing.F) {
	f.Fuzz(func(t *testing.T, frames []byte, mesh bool, chunks []byte) {
		info := `{"version":2,"CanAckPings":true}`
		if mesh {
			info = `{"version":2,"meshKey":"` + fuzzMeshKey.Hex() + `"}`
		}
		runConn(t, append(clientInfoFrame([]byte(info)), frames...), 0, chunks)
	})
}

// clientSeeds is the seed corpus of the targets above.
func clientSeeds(t *testing.T) map[string]map[string][]any {
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
	self := fuzzClientKey.Public()
	other := wire.NodePublic{0: 0x0e, 31: 0x0e}
	disco := append([]byte("TS\xf0\x9f\x92\xac"), bytes.Repeat([]byte("d"), 80)...)
	ping := func(s string) []byte { return frames(func(w *wire.Writer) { w.WritePing([8]byte([]byte(s))) }) }
	everyClientFrame := frames(func(w *wire.Writer) {
		w.WriteNotePreferred(true)
		w.WriteSendPacket(self, []byte("to myself"))
		w.WriteSendPacket(other, []byte("to nobody"))
		w.WriteSendPacket(other, disco)
		w.WritePing([8]byte([]byte("ping0001")))
		w.WriteKeepAlive()
		w.WriteFrame(wire.FrameClientInfo, []byte("a second ClientInfo is skipped"), nil)
		w.WriteFrame(0x0f, []byte("future frame type"), nil)
		w.WriteNotePreferred(false)
		w.WritePing([8]byte([]byte("ping0002")))
	})
	meshFrames := frames(func(w *wire.Writer) {
		w.WriteWatchConns()
		w.WriteForwardPacket(other, self, []byte("forwarded to me"))
		w.WriteForwardPacket(other, other, disco)
		w.WriteClosePeer(other)
		w.WritePing([8]byte([]byte("meshping")))
	})
	plain := func(js string) []byte { return []byte(js) }
	valid := plain(`{"version":2,"CanAckPings":true}`)
	handshake := map[string][]any{
		"valid":                {valid, []byte{}, uint16(0), []byte{}},
		"valid-then-frames":    {valid, everyClientFrame, uint16(0), []byte{}},
		"valid-fast-start":     {valid, everyClientFrame, uint16(200), []byte{3, 0}},
		"valid-bytewise":       {valid, ping("bytewise"), uint16(0), []byte{0}},
		"mesh":                 {plain(`{"version":2,"meshKey":"` + fuzzMeshKey.Hex() + `"}`), meshFrames, uint16(0), []byte{}},
		"other-mesh-key":       {plain(`{"version":2,"meshKey":"` + wire.MeshKey{1: 1}.Hex() + `"}`), frames(func(w *wire.Writer) { w.WriteWatchConns() }), uint16(0), []byte{}},
		"empty-mesh-key":       {plain(`{"meshKey":""}`), []byte{}, uint16(0), []byte{}},
		"bad-mesh-key":         {plain(`{"meshKey":"xyz"}`), []byte{}, uint16(0), []byte{}},
		"old-version":          {plain(`{"version":1}`), ping("version1"), uint16(0), []byte{}},
		"not-json":             {plain(`hello`), []byte{}, uint16(0), []byte{}},
		"raw-valid":            {[]byte{}, clientInfoFrame(valid), uint16(0), []byte{}},
		"raw-prober":           {[]byte{}, cat(clientInfoFrame(plain(`{"version":2,"IsProber":true}`)), ping("prober01")), uint16(7), []byte{}},
		"raw-tampered":         {[]byte{}, func() []byte { b := clientInfoFrame(valid); b[len(b)-1] ^= 1; return b }(), uint16(0), []byte{}},
		"raw-zero-key":         {[]byte{}, func() []byte { b := clientInfoFrame(valid); copy(b[wire.HeaderLen:], make([]byte, 32)); return b }(), uint16(0), []byte{}},
		"raw-for-other-server": {[]byte{}, cat(wire.AppendHeader(nil, wire.FrameClientInfo, 32+24+16+2), self[:], sealFixed([]byte("{}"), fuzzClientKey, other)), uint16(0), []byte{}},
		"raw-wrong-first":      {[]byte{}, frames(func(w *wire.Writer) { w.WriteSendPacket(other, []byte("hi")) }), uint16(0), []byte{}},
		"raw-too-short":        {[]byte{}, append(wire.AppendHeader(nil, wire.FrameClientInfo, 55), make([]byte, 55)...), uint16(0), []byte{}},
		"raw-claim-16mib":      {[]byte{}, wire.AppendHeader(nil, wire.FrameClientInfo, 16<<20), uint16(0), []byte{}},
		"raw-claim-max-cut":    {[]byte{}, append(wire.AppendHeader(nil, wire.FrameClientInfo, wire.MaxClientInfoLen), self[:]...), uint16(0), []byte{}},
		"raw-cut-header":       {[]byte{}, []byte{0x02, 0, 0}, uint16(0), []byte{}},
		"raw-http":             {[]byte{}, []byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n"), uint16(0), []byte{}},
		"raw-empty":            {[]byte{}, []byte{}, uint16(0), []byte{}},
	}
	clientFrames := map[string][]any{
		"every-client-frame": {everyClientFrame, false, []byte{}},
		"every-bytewise":     {everyClientFrame, false, []byte{0}},
		"mesh":               {meshFrames, true, []byte{}},
		"mesh-close-self":    {frames(func(w *wire.Writer) { w.WriteClosePeer(self); w.WritePing([8]byte{}) }), true, []byte{}},
		"many-pings":         {bytes.Repeat(ping("repeated"), 50), false, []byte{}},
		"many-disco":         {bytes.Repeat(frames(func(w *wire.Writer) { w.WriteSendPacket(other, disco) }), 10), false, []byte{}},
		"largest-packet":     {frames(func(w *wire.Writer) { w.WriteSendPacket(self, bytes.Repeat([]byte("p"), wire.MaxPacketSize)) }), false, []byte{}},
		"packet-too-large":   {wire.AppendHeader(nil, wire.FrameSendPacket, wire.KeyLen+wire.MaxPacketSize+1), false, []byte{}},
		"packet-too-short":   {append(wire.AppendHeader(nil, wire.FrameSendPacket, 31), make([]byte, 31)...), false, []byte{}},
		"claim-over-1mib":    {wire.AppendHeader(nil, 0x0f, 1<<20+1), false, []byte{}},
		"skip-1mib-cut":      {append(wire.AppendHeader(nil, 0x0f, 1<<20), "cut"...), false, []byte{}},
		"ping-short":         {append(wire.AppendHeader(nil, wire.FramePing, 7), "1234567"...), false, []byte{}},
		"ping-long":          {append(wire.AppendHeader(nil, wire.FramePing, 1000), bytes.Repeat([]byte("x"), 1000)...), false, []byte{}},
		"ping-too-long":      {wire.AppendHeader(nil, wire.FramePing, 1001), false, []byte{}},
		"notepreferred-2":    {append(wire.AppendHeader(nil, wire.FrameNotePreferred, 2), 1, 1), false, []byte{}},
		"watch-not-mesh":     {frames(func(w *wire.Writer) { w.WriteWatchConns() }), false, []byte{}},
		"forward-not-mesh":   {frames(func(w *wire.Writer) { w.WriteForwardPacket(other, self, []byte("x")) }), false, []byte{}},
		"closepeer-not-mesh": {frames(func(w *wire.Writer) { w.WriteClosePeer(other) }), false, []byte{}},
		"watch-with-body":    {append(wire.AppendHeader(nil, wire.FrameWatchConns, 1), 0), true, []byte{}},
		"closepeer-short":    {append(wire.AppendHeader(nil, wire.FrameClosePeer, 31), self[:31]...), true, []byte{}},
		"forward-short":      {append(wire.AppendHeader(nil, wire.FrameForwardPacket, 63), make([]byte, 63)...), true, []byte{}},
		"cut-packet":         {append(wire.AppendHeader(nil, wire.FrameSendPacket, 100), self[:]...), false, []byte{}},
		"cut-header":         {[]byte{0x04, 0}, false, []byte{}},
		"none":               {[]byte{}, false, []byte{}},
	}
	// Were the valid seeds refused by the oracle, every run would compare
	// failures with failures and prove nothing.
	cfg := &Config{PrivateKey: fuzzServerKey, PublicKey: fuzzServerKey.Public(), MeshKey: fuzzMeshKey}
	if e := expectClient(append(clientInfoFrame(valid), everyClientFrame...), cfg); !e.accepted || !e.complete || len(e.pongs) != 2 || len(e.toSelf) != 1 {
		t.Fatalf("the independent reading of a valid stream: %+v", e)
	}
	if e := expectClient(append(clientInfoFrame([]byte(`{"meshKey":"`+fuzzMeshKey.Hex()+`"}`)), meshFrames...), cfg); !e.mesh || !e.complete || !e.watches {
		t.Fatalf("the independent reading of a mesh stream: %+v", e)
	}
	return map[string]map[string][]any{"FuzzHandshake": handshake, "FuzzClientFrames": clientFrames}
}

func cat(parts ...[]byte) []byte {
	var b []byte
	for _, p := range parts {
		b = append(b, p...)
	}
	return b
}

// TestFuzzSeeds keeps the committed corpus files equal to clientSeeds;
// DERPD_WRITE_CORPUS=1 writes them.
func TestFuzzSeeds(t *testing.T) {
	for target, seeds := range clientSeeds(t) {
		fuzztest.CheckSeeds(t, target, seeds)
	}
}
