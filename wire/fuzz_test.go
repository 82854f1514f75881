package wire

// Fuzz targets for every parser in this package that reads bytes from
// the network: the frame reader, ClientInfo (the server side of the
// handshake), ServerKey and ServerInfo (a mesh link's side), the key
// text forms (debug URLs, key files). Their seed corpora are the files
// in testdata/fuzz/<target>, which TestFuzzSeeds keeps equal to
// fuzzSeeds below; docs/testing.md says how to run them for longer.

import (
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"maps"
	"net/netip"
	"regexp"
	"runtime"
	"slices"
	"strings"
	"testing"

	"github.com/derpd/derpd/internal/fuzztest"
	"golang.org/x/crypto/nacl/box"
)

// Fixed keys, so that seeds holding sealed boxes stay valid.
var (
	fuzzServer = NodePrivate{1: 1, 31: 64}
	fuzzClient = NodePrivate{2: 2, 31: 64}
)

// sealFixed seals plain from one key to another with a nonce derived
// from the plaintext, using NaCl directly rather than this package, so a
// seed is the same bytes every time it is generated and a box the
// targets accept is checked against an independent implementation.
func sealFixed(dst, plain []byte, from NodePrivate, to NodePublic) []byte {
	var nonce [24]byte
	copy(nonce[:], plain)
	nonce[23] ^= byte(len(plain))
	dst = append(dst, nonce[:]...)
	return box.Seal(dst, plain, &nonce, (*[32]byte)(&to), (*[32]byte)(&from))
}

// openIndependently opens a box with NaCl directly.
func openIndependently(sealed []byte, from NodePublic, to NodePrivate) ([]byte, bool) {
	if len(sealed) < 24 {
		return nil, false
	}
	return box.Open(nil, sealed[24:], (*[24]byte)(sealed[:24]), (*[32]byte)(&from), (*[32]byte)(&to))
}

// chunkReader hands out a stream in pieces of the sizes the fuzzer picked
// (each byte of sizes plus one, cycling), and with eofWithData returns
// io.EOF together with the last bytes, as some readers do.
type chunkReader struct {
	b           []byte
	sizes       []byte
	i           int
	eofWithData bool
}

func (r *chunkReader) Read(p []byte) (int, error) {
	if len(r.b) == 0 {
		return 0, io.EOF
	}
	n := len(p)
	if len(r.sizes) > 0 {
		n = min(n, int(r.sizes[r.i%len(r.sizes)])+1)
		r.i++
	}
	n = copy(p[:n], r.b)
	r.b = r.b[n:]
	if len(r.b) == 0 && r.eofWithData {
		return n, io.EOF
	}
	return n, nil
}

// Ways the reader's callers consume a body; FuzzReader picks one per frame.
const (
	bodyReadFull = iota // the handshake's ClientInfo
	bodyDiscard         // frames nobody handles
	bodyNext            // keys, ping data: Next, then the rest
	bodyPacket          // SendPacket: key, then the payload into a pooled Packet
	bodyWays
)

// FuzzReader decodes an arbitrary stream, delivered in pieces the fuzzer
// picks and partly as a prefix (an HTTP server's look-ahead), and checks
// the reader against an independent decoding of the same bytes: every
// header as written, bodies byte for byte whichever way they are read,
// io.EOF only at a frame boundary and io.ErrUnexpectedEOF inside one,
// ErrFrameTooLarge for every claim above the limit (and sticky), never a
// frame longer than the limit, and never more memory than one pooled
// buffer (plus the caller's prefix) whatever length a header claims.
func FuzzReader(f *testing.F) {
	f.Fuzz(func(t *testing.T, stream []byte, prefixLen uint16, chunks []byte, limit uint32) {
		limit %= 1<<20 + 1 // derpd never accepts frames over 1 MiB
		split := int(prefixLen) % (len(stream) + 1)
		src := &chunkReader{b: stream[split:], sizes: chunks, eofWithData: len(chunks) > 0 && chunks[0]&0x80 != 0}
		rd := NewReader(src, stream[:split:split], limit)
		defer rd.Release()
		off := 0
		for i := 0; ; i++ {
			checkReaderMemory(t, rd, split)
			typ, n, err := rd.ReadHeader()
			checkReaderMemory(t, rd, split)
			switch rest := len(stream) - off; {
			case rest == 0:
				if err != io.EOF {
					t.Fatalf("frame %d: at the end of the stream ReadHeader = %v, %d, %v; want io.EOF", i, typ, n, err)
				}
				return
			case rest < HeaderLen:
				if !errors.Is(err, io.ErrUnexpectedEOF) {
					t.Fatalf("frame %d: %d bytes of a header: ReadHeader = %v, %d, %v; want io.ErrUnexpectedEOF", i, rest, typ, n, err)
				}
				return
			}
			wantType, wantLen := FrameType(stream[off]), binary.BigEndian.Uint32(stream[off+1:])
			if typ != wantType || n != wantLen {
				t.Fatalf("frame %d at %d: header %v %d, the bytes say %v %d", i, off, typ, n, wantType, wantLen)
			}
			if wantLen > limit {
				if !errors.Is(err, ErrFrameTooLarge) {
					t.Fatalf("frame %d claims %d bytes over the limit %d: %v, want ErrFrameTooLarge", i, n, limit, err)
				}
				if _, _, err := rd.ReadHeader(); !errors.Is(err, ErrFrameTooLarge) {
					t.Fatalf("after an oversize claim: %v, want ErrFrameTooLarge again", err)
				}
				return
			}
			if err != nil {
				t.Fatalf("frame %d: header %v %d: %v", i, typ, n, err)
			}
			off += HeaderLen
			want := stream[off:min(len(stream), off+int(n))]
			truncated := len(want) < int(n)
			way := i % bodyWays
			if len(chunks) > 0 {
				way = int(chunks[i%len(chunks)]) % bodyWays
			}
			got, err := readBody(rd, way, int(n))
			checkReaderMemory(t, rd, split)
			if truncated {
				if !errors.Is(err, io.ErrUnexpectedEOF) {
					t.Fatalf("frame %d: body of %d bytes cut at %d: %v, want io.ErrUnexpectedEOF", i, n, len(want), err)
				}
				return
			}
			if err != nil {
				t.Fatalf("frame %d: reading a whole body of %d bytes (way %d): %v", i, n, way, err)
			}
			if way != bodyDiscard && !bytes.Equal(got, want) {
				t.Fatalf("frame %d: body read (way %d) differs from the stream's bytes", i, way)
			}
			off += int(n)
		}
	})
}

// readBody reads an n-byte body one of the ways derpd does and returns
// it (nil for a discard).
func readBody(rd *Reader, way, n int) ([]byte, error) {
	switch way {
	case bodyDiscard:
		return nil, rd.Discard(n)
	case bodyNext:
		head, err := rd.Next(min(n, readBufSize))
		if err != nil {
			return nil, err
		}
		got := append([]byte(nil), head...)
		rest := make([]byte, n-len(got))
		err = rd.ReadFull(rest)
		return append(got, rest...), err
	case bodyPacket:
		if n < KeyLen || n-KeyLen > MaxPacketSize {
			break
		}
		key, err := rd.ReadKey()
		if err != nil {
			return nil, err
		}
		p := NewPacket(n - KeyLen)
		defer p.Release()
		if err := rd.ReadFull(p.Payload()); err != nil {
			return nil, err
		}
		p.SetSource(key)
		frame := p.RecvFrame()
		if typ, m := ParseHeader(frame); typ != FrameRecvPacket || int(m) != n || len(frame) != HeaderLen+n || len(frame) > HeaderLen+MaxRecvFrameBody {
			return nil, errors.New("packet is not a well-formed RecvPacket frame of the body's length")
		}
		return append([]byte(nil), frame[HeaderLen:]...), nil
	}
	body := make([]byte, n)
	return body, rd.ReadFull(body)
}

// checkReaderMemory: the reader holds at most one pooled buffer of
// readBufSize, or the caller's prefix, or its own few bytes for waiting,
// whatever the frames it has seen claim.
func checkReaderMemory(t *testing.T, rd *Reader, prefixLen int) {
	t.Helper()
	if rd.bufp != nil {
		if len(*rd.bufp) != readBufSize || cap(rd.buf) > readBufSize {
			t.Fatalf("reader holds a buffer of %d bytes (cap %d), want the pooled %d", len(*rd.bufp), cap(rd.buf), readBufSize)
		}
		return
	}
	if c := cap(rd.buf); c > max(prefixLen, smallLen) {
		t.Fatalf("reader without a pooled buffer holds %d bytes", c)
	}
}

// A header's claim costs no memory until the bytes come: a reader given
// a 256 KiB ClientInfo claim and then nothing allocates what a reader
// given a tiny claim does, far less than the claim.
func TestReaderClaimAllocatesNothing(t *testing.T) {
	if raceEnabled {
		t.Skip("allocation counts are meaningless under the race detector; `make test` runs this without it")
	}
	perRun := func(claim uint32) uint64 {
		stream := append(AppendHeader(nil, FrameClientInfo, claim), "short"...)
		run := func() {
			rd := NewReader(bytes.NewReader(stream), nil, MaxClientInfoLen)
			if _, _, err := rd.ReadHeader(); err != nil {
				t.Fatal(err)
			}
			if err := rd.Discard(int(claim)); !errors.Is(err, io.ErrUnexpectedEOF) && claim > 5 {
				t.Fatalf("discarding a cut body: %v", err)
			}
			rd.Release()
		}
		for range 10 {
			run() // the pool holds a buffer from here on
		}
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		const runs = 100
		for range runs {
			run()
		}
		runtime.ReadMemStats(&after)
		return (after.TotalAlloc - before.TotalAlloc) / runs
	}
	small, large := perRun(16), perRun(MaxClientInfoLen)
	// A GC during the runs may empty the pool once: allow one buffer
	// spread over the runs, far below the claim either way.
	if large > small+readBufSize/50 || large > MaxClientInfoLen/16 {
		t.Fatalf("a %d-byte claim costs %d bytes per reader, a 16-byte one %d", MaxClientInfoLen, large, small)
	}
}

// fuzzFrame is one frame FuzzWriterRoundTrip writes: what the reader must
// see.
type fuzzFrame struct {
	typ  FrameType
	body []byte
}

// FuzzWriterRoundTrip writes frames the script asks for with every
// writer method (helpers, WriteFrame in two parts, WriteRaw, bodies past
// the buffer), flushing where the script says, and reads them back: the
// reader must return exactly the frames, with the layouts frame.go
// documents, and no Write may exceed maxWrite (WebSocket's message cap).
func FuzzWriterRoundTrip(f *testing.F) {
	f.Fuzz(func(t *testing.T, script []byte, maxWrite uint16) {
		dst := &countingWriter{}
		limit := int(maxWrite)
		w := NewWriter(dst, limit)
		var want []fuzzFrame
		take := func(n int) []byte {
			n = min(n, len(script))
			b := script[:n]
			script = script[n:]
			return b
		}
		// cat copies: appending to a slice of the script would overwrite
		// the script's next bytes.
		key := func() NodePublic { return NodePublic(cat(take(KeyLen), make([]byte, KeyLen))[:KeyLen]) }
		for len(script) > 0 && len(want) < 64 {
			op := take(1)[0]
			switch op % 12 {
			case 0:
				k, payload := key(), take(int(op>>4)*97)
				w.WriteSendPacket(k, payload)
				want = append(want, fuzzFrame{FrameSendPacket, cat(k[:], payload)})
			case 1:
				k, payload := key(), take(int(op>>4)*97)
				w.WriteRecvPacket(k, payload)
				want = append(want, fuzzFrame{FrameRecvPacket, cat(k[:], payload)})
			case 2:
				src, dstKey := key(), key()
				payload := take(int(op>>4) * 97)
				w.WriteForwardPacket(src, dstKey, payload)
				want = append(want, fuzzFrame{FrameForwardPacket, cat(src[:], dstKey[:], payload)})
			case 3:
				k := key()
				reason := PeerGoneReason(op >> 4)
				w.WritePeerGone(k, reason)
				want = append(want, fuzzFrame{FramePeerGone, cat(k[:], []byte{byte(reason)})})
			case 4:
				k := key()
				raw := cat(take(18), make([]byte, 18))
				ip := netip.AddrFrom16([16]byte(raw[:16]))
				if op&0x10 != 0 {
					ip = netip.AddrFrom4([4]byte(raw[:4]))
				}
				port := binary.BigEndian.Uint16(raw[16:])
				flags := PeerPresentFlags(op >> 4)
				w.WritePeerPresent(k, netip.AddrPortFrom(ip, port), flags)
				ip16 := ip.As16()
				want = append(want, fuzzFrame{FramePeerPresent, cat(k[:], ip16[:], raw[16:18], []byte{byte(flags)})})
			case 5:
				var data [PingDataLen]byte
				copy(data[:], take(PingDataLen))
				if op&0x10 != 0 {
					w.WritePong(data)
					want = append(want, fuzzFrame{FramePong, data[:]})
				} else {
					w.WritePing(data)
					want = append(want, fuzzFrame{FramePing, data[:]})
				}
			case 6:
				w.WriteNotePreferred(op&0x10 != 0)
				want = append(want, fuzzFrame{FrameNotePreferred, []byte{op >> 4 & 1}})
			case 7:
				k := key()
				w.WriteClosePeer(k)
				want = append(want, fuzzFrame{FrameClosePeer, k[:]})
			case 8:
				k := key()
				w.WriteServerKey(k)
				want = append(want, fuzzFrame{FrameServerKey, cat([]byte("DERP\xf0\x9f\x94\x91"), k[:])})
			case 9:
				typ := FrameType(cat(take(1), []byte{0})[0])
				if op&0x10 != 0 {
					w.WriteKeepAlive()
					want = append(want, fuzzFrame{FrameKeepAlive, nil})
					break
				}
				part1, part2 := take(int(op>>5)*13), take(int(op>>5)*29)
				w.WriteFrame(typ, part1, part2)
				want = append(want, fuzzFrame{typ, cat(part1, part2)})
			case 10:
				// Bodies either side of the write buffer's size, as a
				// 64 KiB packet forwarded to a mesh peer makes: the
				// larger are written through.
				fill := cat(take(1), []byte{0})[:1]
				k := key()
				payload := bytes.Repeat(fill, MaxPacketSize-8+int(op>>4))
				w.WriteFrame(FrameForwardPacket, cat(k[:], k[:]), payload)
				want = append(want, fuzzFrame{FrameForwardPacket, cat(k[:], k[:], payload)})
			case 11:
				// Frames already laid out (Packet.RecvFrame).
				body := take(int(op>>4) * 11)
				frame := append(AppendHeader(nil, FrameRecvPacket, uint32(len(body))), body...)
				w.WriteRaw(frame)
				want = append(want, fuzzFrame{FrameRecvPacket, body})
			}
			if op&0x80 != 0 {
				if err := w.Flush(); err != nil {
					t.Fatal(err)
				}
			}
		}
		if err := w.Flush(); err != nil {
			t.Fatal(err)
		}
		w.Release()
		if limit > 0 && dst.max > limit {
			t.Fatalf("a Write of %d bytes with maxWrite %d", dst.max, limit)
		}
		rd := NewReader(&dst.Buffer, nil, 1<<20)
		defer rd.Release()
		for i, fr := range want {
			typ, n, err := rd.ReadHeader()
			if err != nil {
				t.Fatalf("frame %d (%v): %v", i, fr.typ, err)
			}
			body := make([]byte, n)
			if err := rd.ReadFull(body); err != nil {
				t.Fatalf("frame %d (%v): body: %v", i, fr.typ, err)
			}
			if typ != fr.typ || !bytes.Equal(body, fr.body) {
				t.Fatalf("frame %d: read %v of %d bytes, wrote %v of %d", i, typ, len(body), fr.typ, len(fr.body))
			}
		}
		if _, _, err := rd.ReadHeader(); err != io.EOF {
			t.Fatalf("after the frames written: %v, want io.EOF", err)
		}
	})
}

func cat(parts ...[]byte) []byte {
	var b []byte
	for _, p := range parts {
		b = append(b, p...)
	}
	return b
}

// FuzzParseClientInfo gives the server arbitrary ClientInfo bodies. An
// accepted one must open with NaCl directly (not through this package)
// from the key it names, which is not zero, and decode to a ClientInfo
// that survives its own JSON encoding; a refused one says ErrClientInfo.
func FuzzParseClientInfo(f *testing.F) {
	f.Fuzz(func(t *testing.T, body []byte) {
		key, ci, err := ParseClientInfo(body, fuzzServer)
		if err != nil {
			if !errors.Is(err, ErrClientInfo) {
				t.Fatalf("refused without ErrClientInfo: %v", err)
			}
			return
		}
		if len(body) < MinClientInfoLen || len(body) > MaxClientInfoLen || key.IsZero() || key != NodePublic(body[:KeyLen]) {
			t.Fatalf("accepted a body of %d bytes naming %v as %v", len(body), NodePublic(body[:min(len(body), KeyLen)]), key)
		}
		if _, ok := openIndependently(body[KeyLen:], key, fuzzServer); !ok {
			t.Fatal("accepted a ClientInfo that NaCl does not open")
		}
		checkClientInfoRoundTrip(t, ci)
	})
}

// FuzzClientInfoJSON seals arbitrary JSON in a correct box, so the
// fuzzer reaches the decoding a box would otherwise guard: invalid JSON
// is refused; an accepted ClientInfo survives its own encoding and, sent
// again by a client, parses the same; a mesh key comes from the input.
func FuzzClientInfoJSON(f *testing.F) {
	client := fuzzClient.Public()
	f.Fuzz(func(t *testing.T, plain []byte) {
		body := sealFixed(append([]byte(nil), client[:]...), plain, fuzzClient, fuzzServer.Public())
		key, ci, err := ParseClientInfo(body, fuzzServer)
		if err != nil {
			if !errors.Is(err, ErrClientInfo) {
				t.Fatalf("refused without ErrClientInfo: %v", err)
			}
			return
		}
		if mk, ok := soleMeshKey(plain); ok && !bareHexForm.MatchString(mk) {
			t.Fatalf("accepted the malformed mesh key %q (a mesh peer with a broken key must fail loudly)", mk)
		}
		if len(body) > MaxClientInfoLen {
			t.Fatalf("accepted %d bytes", len(body))
		}
		if !json.Valid(plain) {
			t.Fatalf("accepted invalid JSON %q", plain)
		}
		if key != client {
			t.Fatalf("key %v, sealed by %v", key, client)
		}
		if !ci.MeshKey.IsZero() && !meshKeyIn(plain, ci.MeshKey) {
			t.Fatalf("mesh key %s is not in %q", ci.MeshKey.Hex(), plain)
		}
		checkClientInfoRoundTrip(t, ci)
		again, err := AppendClientInfo(nil, fuzzClient, fuzzServer.Public(), ci)
		if err != nil {
			t.Fatal(err)
		}
		if _, ci2, err := ParseClientInfo(again, fuzzServer); err != nil || ci2 != ci {
			t.Fatalf("%+v sent again parses as %+v, %v", ci, ci2, err)
		}
	})
}

// meshKeyIn reports whether some member of the JSON object plain named
// meshKey in any case is a string spelling k.
func meshKeyIn(plain []byte, k MeshKey) bool {
	var members map[string]json.RawMessage
	if json.Unmarshal(plain, &members) != nil {
		return false
	}
	for name, v := range members {
		var s string
		if strings.EqualFold(name, "meshKey") && json.Unmarshal(v, &s) == nil && strings.ToLower(s) == k.Hex() {
			return true
		}
	}
	return false
}

// soleMeshKey returns the string value of the one member of the JSON
// object plain named meshKey in any case, if there is exactly one and it
// is a string.
func soleMeshKey(plain []byte) (string, bool) {
	var members map[string]json.RawMessage
	if json.Unmarshal(plain, &members) != nil {
		return "", false
	}
	var found []json.RawMessage
	for name, v := range members {
		if strings.EqualFold(name, "meshKey") {
			found = append(found, v)
		}
	}
	var s string
	if len(found) != 1 || string(found[0]) == "null" || json.Unmarshal(found[0], &s) != nil {
		return "", false // null is JSON's absence, as for the client
	}
	return s, true
}

func checkClientInfoRoundTrip(t *testing.T, ci ClientInfo) {
	t.Helper()
	js, err := json.Marshal(ci)
	if err != nil {
		t.Fatalf("%+v does not encode: %v", ci, err)
	}
	var back ClientInfo
	if err := json.Unmarshal(js, &back); err != nil || back != ci {
		t.Fatalf("%+v encodes as %s, which decodes as %+v, %v", ci, js, back, err)
	}
}

// FuzzParseServerKey is a mesh link reading its peer's first frame:
// accepted exactly when the body is at least the magic and a key, with
// the magic, and the key is the bytes after it.
func FuzzParseServerKey(f *testing.F) {
	f.Fuzz(func(t *testing.T, body []byte) {
		k, err := ParseServerKey(body)
		valid := len(body) >= 40 && string(body[:8]) == "DERP\xf0\x9f\x94\x91"
		if (err == nil) != valid {
			t.Fatalf("ParseServerKey(%x) = %v, %v; valid by the layout: %v", body, k, err, valid)
		}
		if valid && k != NodePublic(body[8:40]) {
			t.Fatalf("key %x, the bytes say %x", k, body[8:40])
		}
	})
}

// FuzzParseServerInfo is a mesh link reading the peer's ServerInfo, both
// as arbitrary bytes (accepted only if NaCl opens them from the peer's
// key) and as arbitrary JSON in a correct box (accepted only if valid,
// and then it survives being sealed and parsed again).
func FuzzParseServerInfo(f *testing.F) {
	srv, cl := fuzzServer.Public(), fuzzClient
	f.Fuzz(func(t *testing.T, body, plain []byte) {
		if _, err := ParseServerInfo(body, srv, cl); err == nil {
			if _, ok := openIndependently(body, srv, cl); !ok {
				t.Fatal("accepted a ServerInfo that NaCl does not open")
			}
		}
		si, err := ParseServerInfo(sealFixed(nil, plain, fuzzServer, cl.Public()), srv, cl)
		if err != nil {
			return
		}
		if !json.Valid(plain) {
			t.Fatalf("accepted invalid JSON %q", plain)
		}
		again, err := AppendServerInfo(nil, fuzzServer, cl.Public(), si)
		if err != nil {
			t.Fatal(err)
		}
		if si2, err := ParseServerInfo(again, srv, cl); err != nil || si2 != si {
			t.Fatalf("%+v sealed again parses as %+v, %v", si, si2, err)
		}
	})
}

var (
	hex64        = `[0-9a-fA-F]{64}`
	nodePubForm  = regexp.MustCompile(`^nodekey:` + hex64 + `$`)
	nodePrivForm = regexp.MustCompile(`^privkey:` + hex64 + `$`)
	bareHexForm  = regexp.MustCompile(`^` + hex64 + `$`)
)

// FuzzParseKeys feeds every key text parser the same string (keys come
// from debug URLs, key files and ClientInfo's meshKey): each accepts
// exactly its form, as a regular expression states it, and what it
// accepts prints back as the input in lower case.
func FuzzParseKeys(f *testing.F) {
	f.Fuzz(func(t *testing.T, s string) {
		lower := strings.ToLower(s)
		check := func(what string, err error, form *regexp.Regexp, printed string) {
			t.Helper()
			if ok := form.MatchString(s); (err == nil) != ok {
				t.Fatalf("%s(%q): error %v, but the form matches: %v", what, s, err, ok)
			}
			if err == nil && printed != lower {
				t.Fatalf("%s(%q) prints as %q", what, s, printed)
			}
		}
		pub, err := ParseNodePublic(s)
		check("ParseNodePublic", err, nodePubForm, pub.String())
		pub, err = ParseNodePublicUntyped(s)
		check("ParseNodePublicUntyped", err, bareHexForm, pub.UntypedHexString())
		mk, err := ParseMeshKey(s)
		check("ParseMeshKey", err, bareHexForm, mk.Hex())
		if err != nil && mk != (MeshKey{}) {
			t.Fatalf("ParseMeshKey(%q) failed but returned a key", s)
		}
		var priv NodePrivate
		err = priv.UnmarshalText([]byte(s))
		text, _ := priv.MarshalText()
		check("NodePrivate.UnmarshalText", err, nodePrivForm, string(text))
		if strings.Contains(priv.String(), hex.EncodeToString(priv[:])) {
			t.Fatal("a private key's String shows the key")
		}
	})
}

// fuzzSeeds is the seed corpus of every target above: valid input of
// every kind, and the ways it goes wrong at the edges.
func fuzzSeeds(t *testing.T) map[string]map[string][]any {
	t.Helper()
	k1, k2 := NodePublic{1: 1, 31: 0xaa}, NodePublic{2: 2, 31: 0xbb}
	var data [PingDataLen]byte
	copy(data[:], "pingdata")
	one := func(write func(w *Writer)) []byte {
		var buf bytes.Buffer
		w := NewWriter(&buf, 0)
		write(w)
		if err := w.Flush(); err != nil {
			t.Fatal(err)
		}
		return buf.Bytes()
	}
	info := func(js string) []byte {
		pub := fuzzClient.Public()
		return sealFixed(append([]byte(nil), pub[:]...), []byte(js), fuzzClient, fuzzServer.Public())
	}
	goodInfo := info(`{"version":2,"CanAckPings":true}`)
	every := map[string][]byte{
		"serverkey":  one(func(w *Writer) { w.WriteServerKey(k1) }),
		"clientinfo": one(func(w *Writer) { w.WriteFrame(FrameClientInfo, goodInfo, nil) }),
		"serverinfo": one(func(w *Writer) {
			w.WriteFrame(FrameServerInfo, sealFixed(nil, []byte(`{"version":2}`), fuzzServer, fuzzClient.Public()), nil)
		}),
		"sendpacket":    one(func(w *Writer) { w.WriteSendPacket(k1, []byte("hello")) }),
		"recvpacket":    one(func(w *Writer) { w.WriteRecvPacket(k1, []byte("hello")) }),
		"keepalive":     one(func(w *Writer) { w.WriteKeepAlive() }),
		"notepreferred": one(func(w *Writer) { w.WriteNotePreferred(true) }),
		"peergone":      one(func(w *Writer) { w.WritePeerGone(k1, PeerGoneNotHere) }),
		"peerpresent": one(func(w *Writer) {
			w.WritePeerPresent(k1, netip.MustParseAddrPort("[2001:db8::1]:41641"), PeerPresentIsMeshPeer)
		}),
		"forwardpacket": one(func(w *Writer) { w.WriteForwardPacket(k1, k2, []byte("hi")) }),
		"watchconns":    one(func(w *Writer) { w.WriteWatchConns() }),
		"closepeer":     one(func(w *Writer) { w.WriteClosePeer(k2) }),
		"ping":          one(func(w *Writer) { w.WritePing(data) }),
		"pong":          one(func(w *Writer) { w.WritePong(data) }),
		"health":        one(func(w *Writer) { w.WriteFrame(FrameHealth, []byte("disk full"), nil) }),
		"restarting":    one(func(w *Writer) { w.WriteFrame(FrameRestarting, []byte{0, 0, 3, 0xe8, 0, 0, 0x75, 0x30}, nil) }),
		"unknown-0x0c":  one(func(w *Writer) { w.WriteFrame(0x0c, []byte("future"), nil) }),
	}
	var all []byte
	reader := map[string][]any{}
	for _, name := range slices.Sorted(maps.Keys(every)) {
		b := every[name]
		all = append(all, b...)
		reader[name] = []any{b, uint16(0), []byte{}, uint32(MaxClientInfoLen)}
	}
	// A stream of every type, split across reads and after a prefix.
	reader["every-type"] = []any{all, uint16(0), []byte{}, uint32(1 << 20)}
	reader["every-type-bytewise"] = []any{all, uint16(0), []byte{0}, uint32(1 << 20)}
	reader["every-type-prefix"] = []any{all, uint16(61), []byte{2, 200, 7, 0x81}, uint32(1 << 20)}
	reader["truncated-header"] = []any{every["sendpacket"][:3], uint16(0), []byte{}, uint32(1 << 20)}
	reader["truncated-body"] = []any{every["sendpacket"][:20], uint16(0), []byte{3}, uint32(1 << 20)}
	reader["truncated-key"] = []any{every["sendpacket"][:HeaderLen+31], uint16(0), []byte{3}, uint32(1 << 20)}
	reader["eof-with-data"] = []any{all, uint16(0), []byte{0x80, 30}, uint32(1 << 20)}
	reader["claim-16mib"] = []any{AppendHeader(nil, FrameClientInfo, 16<<20), uint16(0), []byte{}, uint32(MaxClientInfoLen)}
	reader["claim-4gib"] = []any{AppendHeader(nil, FrameSendPacket, 0xffffffff), uint16(0), []byte{}, uint32(1 << 20)}
	reader["claim-one-over"] = []any{append(AppendHeader(nil, FrameClientInfo, MaxClientInfoLen+1), 0), uint16(0), []byte{}, uint32(MaxClientInfoLen)}
	reader["claim-at-limit-cut"] = []any{append(AppendHeader(nil, FrameClientInfo, MaxClientInfoLen), 1, 2, 3), uint16(0), []byte{}, uint32(MaxClientInfoLen)}
	big := one(func(w *Writer) { w.WriteSendPacket(k1, bytes.Repeat([]byte("a"), 40000)) }) // read past the buffer
	reader["large-packet"] = []any{big, uint16(0), []byte{bodyPacket}, uint32(1 << 20)}
	reader["large-packet-readfull"] = []any{big, uint16(9), []byte{bodyReadFull + 4*bodyWays, 0x7f}, uint32(1 << 20)}
	reader["empty"] = []any{[]byte{}, uint16(0), []byte{}, uint32(0)}

	writer := map[string][]any{
		"every-helper":  {[]byte("\x00k1k1k1k1k1k1k1k1k1k1k1k1k1k1k1k1hello\x01k2k2k2k2k2k2k2k2k2k2k2k2k2k2k2k2\x12k1k1k1k1k1k1k1k1k1k1k1k1k1k1k1k1k2k2k2k2k2k2k2k2k2k2k2k2k2k2k2k2\x13abcdefghijklmnopqrstuvwxyz012345\x14abcdefghijklmnopqrstuvwxyz012345\x20\x01\x0d\xb8\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x01\xa2\xa9\x05pingdata\x15pongdata\x16\x87abcdefghijklmnopqrstuvwxyz012345\x08abcdefghijklmnopqrstuvwxyz012345\x19\x09\x29\x0bpart1part2part2\x8b"), uint16(0)},
		"large-forward": {[]byte("\x1a\xffabcdefghijklmnopqrstuvwxyz012345\x00"), uint16(0)},
		"websocket-cap": {[]byte("\x1a\xffabcdefghijklmnopqrstuvwxyz012345\xf0abcdefghijklmnopqrstuvwxyz012345"), uint16(32 << 10)},
		"tiny-writes":   {[]byte("\xf0abcdefghijklmnopqrstuvwxyz012345payload\x85ping1234"), uint16(3)},
	}

	clientInfo := map[string][]any{
		"valid":             {goodInfo},
		"valid-mesh":        {info(`{"version":2,"meshKey":"` + strings.Repeat("ab", 32) + `"}`)},
		"empty-mesh":        {info(`{"meshKey":""}`)},
		"zero-key":          {append(make([]byte, KeyLen), goodInfo[KeyLen:]...)},
		"other-server":      {sealFixed(append([]byte(nil), goodInfo[:KeyLen]...), []byte(`{}`), fuzzClient, k1)},
		"tampered":          {append(append([]byte(nil), goodInfo[:len(goodInfo)-1]...), goodInfo[len(goodInfo)-1]^1)},
		"truncated":         {goodInfo[:60]},
		"box-too-short":     {goodInfo[:MinClientInfoLen-1]},
		"not-json":          {info(`version=2`)},
		"empty-box":         {info(``)},
		"prober-and-app":    {info(`{"version":2,"IsProber":true,"AppName":"derpprobe"}`)},
		"lowercase-fields":  {info(`{"VERSION":2,"canackpings":true}`)},
		"wrong-field-types": {info(`{"version":"2"}`)},
	}
	clientJSON := map[string][]any{}
	for name, js := range map[string]string{
		"valid":          `{"version":2,"CanAckPings":true}`,
		"mesh":           `{"version":2,"meshKey":"` + strings.Repeat("AB", 32) + `"}`,
		"mesh-empty":     `{"meshKey":""}`,
		"mesh-null":      `{"meshKey":null}`,
		"mesh-short":     `{"meshKey":"abcd"}`,
		"mesh-not-hex":   `{"meshKey":"` + strings.Repeat("zz", 32) + `"}`,
		"mesh-number":    `{"meshKey":7}`,
		"duplicate-keys": `{"version":1,"version":2,"meshKey":"` + strings.Repeat("01", 32) + `","meshKey":""}`,
		"unknown-fields": `{"version":2,"Future":{"a":[1,2,3]}}`,
		"array":          `[1,2]`,
		"string":         `"x"`,
		"null":           `null`,
		"huge-version":   `{"version":1e400}`,
		"trailing":       `{"version":2} x`,
		"unicode-app":    `{"AppName":"tailscale\u2603","IsProber":true}`,
		"empty":          ``,
	} {
		clientJSON[name] = []any{[]byte(js)}
	}
	serverKey := map[string][]any{
		"valid":        {AppendServerKey(nil, k1)},
		"future-bytes": {append(AppendServerKey(nil, k1), "more"...)},
		"short":        {AppendServerKey(nil, k1)[:39]},
		"bad-magic":    {append([]byte("DERP\xf0\x9f\x94\x92"), k1[:]...)},
		"empty":        {[]byte{}},
	}
	serverInfo := map[string][]any{
		"valid":         {sealFixed(nil, []byte(`{"version":2}`), fuzzServer, fuzzClient.Public()), []byte(`{"version":2}`)},
		"token-bucket":  {sealFixed(nil, []byte(`{"TokenBucketBytesPerSecond":1000,"TokenBucketBytesBurst":2000}`), fuzzServer, fuzzClient.Public()), []byte(`{"tokenbucketbytesburst":5}`)},
		"wrong-sender":  {sealFixed(nil, []byte(`{}`), fuzzClient, fuzzClient.Public()), []byte(`{"version":"x"}`)},
		"short":         {make([]byte, 39), []byte{}},
		"invalid-json":  {sealFixed(nil, []byte(`{`), fuzzServer, fuzzClient.Public()), []byte(`{`)},
		"nested-arrays": {[]byte{}, []byte(strings.Repeat("[", 1000) + strings.Repeat("]", 1000))},
	}
	keys := map[string][]any{}
	for name, s := range map[string]string{
		"nodekey":         k1.String(),
		"nodekey-upper":   "nodekey:" + strings.ToUpper(k1.UntypedHexString()),
		"bare-hex":        k2.UntypedHexString(),
		"privkey":         "privkey:" + strings.Repeat("0f", 32),
		"mesh-mixed-case": strings.Repeat("aB", 32),
		"short":           "nodekey:" + strings.Repeat("a", 63),
		"long":            strings.Repeat("a", 65),
		"not-hex":         "nodekey:" + strings.Repeat("g", 64),
		"prefix-only":     "nodekey:",
		"wrong-prefix":    "discokey:" + k1.UntypedHexString(),
		"space":           " " + k2.UntypedHexString(),
		"empty":           "",
	} {
		keys[name] = []any{s}
	}
	return map[string]map[string][]any{
		"FuzzReader":          reader,
		"FuzzWriterRoundTrip": writer,
		"FuzzParseClientInfo": clientInfo,
		"FuzzClientInfoJSON":  clientJSON,
		"FuzzParseServerKey":  serverKey,
		"FuzzParseServerInfo": serverInfo,
		"FuzzParseKeys":       keys,
	}
}

// TestFuzzSeeds keeps the committed corpus files equal to fuzzSeeds;
// DERPD_WRITE_CORPUS=1 writes them.
func TestFuzzSeeds(t *testing.T) {
	for target, seeds := range fuzzSeeds(t) {
		fuzztest.CheckSeeds(t, target, seeds)
	}
}
