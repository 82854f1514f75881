package wire

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"strings"
	"testing"
)

func TestHeaderRoundTrip(t *testing.T) {
	var b [HeaderLen]byte
	PutHeader(b[:], FrameSendPacket, 0x01020304)
	if want := []byte{0x04, 1, 2, 3, 4}; !bytes.Equal(b[:], want) {
		t.Fatalf("PutHeader = %x, want %x", b, want)
	}
	if got := AppendHeader(nil, FrameSendPacket, 0x01020304); !bytes.Equal(got, b[:]) {
		t.Fatalf("AppendHeader = %x", got)
	}
	typ, n := ParseHeader(b[:])
	if typ != FrameSendPacket || n != 0x01020304 {
		t.Fatalf("ParseHeader = %v %d", typ, n)
	}
	if FramePeerGone.String() != "PeerGone" || FrameType(0x0b).String() != "Unknown(0x0b)" {
		t.Fatalf("names: %q %q", FramePeerGone, FrameType(0x0b))
	}
}

func TestLooksLikeDisco(t *testing.T) {
	disco := append([]byte("TS\xf0\x9f\x92\xac"), make([]byte, 56)...)
	if !LooksLikeDisco(disco) {
		t.Fatal("62-byte disco not recognised")
	}
	if LooksLikeDisco(disco[:61]) {
		t.Fatal("61 bytes is too short for disco")
	}
	other := bytes.Clone(disco)
	other[5] ^= 1
	if LooksLikeDisco(other) {
		t.Fatal("wrong magic recognised as disco")
	}
}

// RFC 7748 §6.1: Alice's key pair.
const (
	rfcAlicePriv = "77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a"
	rfcAlicePub  = "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a"
)

func TestKeys(t *testing.T) {
	var priv NodePrivate
	hex.Decode(priv[:], []byte(rfcAlicePriv))
	if got := priv.Public().UntypedHexString(); got != rfcAlicePub {
		t.Fatalf("public key %s, want %s", got, rfcAlicePub)
	}
	g := GenerateNodePrivate()
	if g[0]&7 != 0 || g[31]&0x80 != 0 || g[31]&0x40 == 0 {
		t.Fatalf("generated key not clamped: %x", g)
	}
	pub := priv.Public()
	if s := pub.String(); s != "nodekey:"+rfcAlicePub {
		t.Fatalf("String = %s", s)
	}
	if k, err := ParseNodePublic("nodekey:" + strings.ToUpper(rfcAlicePub)); err != nil || k != pub {
		t.Fatalf("upper-case parse: %v %v", k, err)
	}
	text, _ := priv.MarshalText()
	if k, err := ParseNodePrivate(string(text)); err != nil || k != priv {
		t.Fatalf("privkey round trip: %v", err)
	}
	// Printing a secret by accident must not reveal it, and neither may
	// the error for a key that only lacks its prefix.
	var mesh MeshKey
	copy(mesh[:], priv[:])
	for _, s := range []string{priv.String(), fmt.Sprint(priv), fmt.Sprintf("%v", mesh)} {
		if strings.Contains(s, rfcAlicePriv[:16]) {
			t.Errorf("a secret key prints as %q", s)
		}
	}
	if _, err := ParseNodePrivate(rfcAlicePriv); err == nil || strings.Contains(err.Error(), rfcAlicePriv[:16]) {
		t.Errorf("ParseNodePrivate without the prefix: %v", err)
	}
	for _, bad := range []string{rfcAlicePub, "privkey:" + rfcAlicePub, "nodekey:" + rfcAlicePub[:62], "nodekey:" + strings.Repeat("zz", 32)} {
		if _, err := ParseNodePublic(bad); err == nil {
			t.Errorf("ParseNodePublic(%q) accepted", bad)
		}
	}
	js, _ := json.Marshal(struct{ K NodePublic }{pub})
	if string(js) != `{"K":"nodekey:`+rfcAlicePub+`"}` {
		t.Fatalf("JSON %s", js)
	}
	if k, err := ParseNodePublicUntyped(rfcAlicePub); err != nil || k != pub {
		t.Fatalf("untyped parse: %v", err)
	}
}

func TestMeshKey(t *testing.T) {
	s := strings.Repeat("0a", 32)
	k, err := ParseMeshKey(strings.ToUpper(s))
	if err != nil || k.Hex() != s || k.IsZero() {
		t.Fatalf("ParseMeshKey: %v %v", k, err)
	}
	for _, bad := range []string{s[:63], s + "0", strings.Repeat("g", 64), ""} {
		if _, err := ParseMeshKey(bad); err == nil {
			t.Errorf("ParseMeshKey(%q) accepted", bad)
		}
	}
	other := k
	other[31] ^= 1
	if !k.Equal(k) || k.Equal(other) {
		t.Fatal("Equal")
	}
	if !(MeshKey{}).IsZero() {
		t.Fatal("zero key not zero")
	}
}

func TestBox(t *testing.T) {
	a, b := GenerateNodePrivate(), GenerateNodePrivate()
	sealed := Seal(nil, []byte("secret"), a, b.Public())
	if len(sealed) != len("secret")+BoxOverhead {
		t.Fatalf("sealed length %d", len(sealed))
	}
	plain, err := Open(nil, sealed, a.Public(), b)
	if err != nil || string(plain) != "secret" {
		t.Fatalf("Open: %q %v", plain, err)
	}
	for i := range sealed {
		bad := bytes.Clone(sealed)
		bad[i] ^= 0x40
		if _, err := Open(nil, bad, a.Public(), b); !errors.Is(err, ErrBoxOpen) {
			t.Fatalf("tampered byte %d: %v", i, err)
		}
	}
	if _, err := Open(nil, sealed, b.Public(), b); err == nil {
		t.Fatal("opened with the wrong sender key")
	}
	if _, err := Open(nil, sealed[:BoxOverhead-1], a.Public(), b); err == nil {
		t.Fatal("opened a too-short box")
	}
}

func clientInfoBody(_ testing.TB, client NodePrivate, server NodePublic, js string) []byte {
	pub := client.Public()
	return Seal(append([]byte(nil), pub[:]...), []byte(js), client, server)
}

func TestParseClientInfo(t *testing.T) {
	srv, cl := GenerateNodePrivate(), GenerateNodePrivate()
	mk := strings.Repeat("ab", 32)
	for _, c := range []struct {
		js   string
		ok   bool
		want ClientInfo
	}{
		{`{"version":2,"CanAckPings":true}`, true, ClientInfo{Version: 2, CanAckPings: true}},
		{`{"version":2,"canackpings":true,"isprober":true,"AppName":"x"}`, true, ClientInfo{Version: 2, CanAckPings: true, IsProber: true, AppName: "x"}},
		{`{"meshKey":"` + mk + `","version":2,"CanAckPings":false,"Unknown":1}`, true, ClientInfo{Version: 2, MeshKey: MeshKey{0: 0xab, 1: 0xab, 2: 0xab, 3: 0xab, 4: 0xab, 5: 0xab, 6: 0xab, 7: 0xab, 8: 0xab, 9: 0xab, 10: 0xab, 11: 0xab, 12: 0xab, 13: 0xab, 14: 0xab, 15: 0xab, 16: 0xab, 17: 0xab, 18: 0xab, 19: 0xab, 20: 0xab, 21: 0xab, 22: 0xab, 23: 0xab, 24: 0xab, 25: 0xab, 26: 0xab, 27: 0xab, 28: 0xab, 29: 0xab, 30: 0xab, 31: 0xab}}},
		{`{"version":2,"meshKey":""}`, false, ClientInfo{}},
		{`{"version":2,"meshKey":"abc"}`, false, ClientInfo{}},
		{`{"version":2`, false, ClientInfo{}},
	} {
		key, ci, err := ParseClientInfo(clientInfoBody(t, cl, srv.Public(), c.js), srv)
		if (err == nil) != c.ok {
			t.Errorf("%s: err = %v, want ok=%v", c.js, err, c.ok)
			continue
		}
		if c.ok && (key != cl.Public() || ci != c.want) {
			t.Errorf("%s: got %v %+v, want %+v", c.js, key, ci, c.want)
		}
	}
	good := clientInfoBody(t, cl, srv.Public(), `{"version":2}`)
	if _, _, err := ParseClientInfo(good, GenerateNodePrivate()); err == nil {
		t.Error("box for another server opened")
	}
	zero := bytes.Clone(good)
	clear(zero[:KeyLen])
	if _, _, err := ParseClientInfo(zero, srv); err == nil {
		t.Error("zero client key accepted")
	}
	// Each length case must be refused by its length check alone. Bodies
	// from 32 bytes up to the minimum are also refused by the box (too
	// short to open), so only a body without a whole key proves the
	// minimum is checked; without the check it does not even parse.
	if _, _, err := ParseClientInfo(good[:KeyLen-1], srv); err == nil {
		t.Error("short ClientInfo accepted")
	}
	// One byte too many, yet valid in every other way: whitespace is
	// legal JSON padding, the key is real and the box opens. The same
	// body one byte shorter must pass, or the limit is off by one.
	padded := func(size int) []byte {
		js := `{"version":2}` + strings.Repeat(" ", size-KeyLen-BoxOverhead-len(`{"version":2}`))
		return clientInfoBody(t, cl, srv.Public(), js)
	}
	if _, _, err := ParseClientInfo(padded(MaxClientInfoLen), srv); err != nil {
		t.Errorf("largest ClientInfo refused: %v", err)
	}
	if _, _, err := ParseClientInfo(padded(MaxClientInfoLen+1), srv); err == nil {
		t.Error("oversized ClientInfo accepted")
	}
}

func TestClientInfoJSONUsesTailscaleNames(t *testing.T) {
	js, _ := json.Marshal(ClientInfo{Version: 2, CanAckPings: true})
	if string(js) != `{"version":2,"CanAckPings":true}` {
		t.Fatalf("got %s", js)
	}
	var mk MeshKey
	mk[0] = 1
	js, _ = json.Marshal(ClientInfo{Version: 2, MeshKey: mk, IsProber: true, AppName: "a"})
	if !strings.Contains(string(js), `"meshKey":"01`) || !strings.Contains(string(js), `"IsProber":true`) || !strings.Contains(string(js), `"AppName":"a"`) {
		t.Fatalf("got %s", js)
	}
	js, _ = json.Marshal(ServerInfo{Version: 2})
	if string(js) != `{"version":2}` {
		t.Fatalf("ServerInfo JSON %s", js)
	}
	srv, cl := GenerateNodePrivate(), GenerateNodePrivate()
	body, _ := AppendServerInfo(nil, srv, cl.Public(), ServerInfo{Version: 2})
	if si, err := ParseServerInfo(body, srv.Public(), cl); err != nil || si.Version != 2 {
		t.Fatalf("ServerInfo round trip: %+v %v", si, err)
	}
}

func TestServerKey(t *testing.T) {
	pub := GenerateNodePrivate().Public()
	body := AppendServerKey(nil, pub)
	if len(body) != ServerKeyBodyLen || string(body[:8]) != "DERP\xf0\x9f\x94\x91" {
		t.Fatalf("body %x", body)
	}
	if k, err := ParseServerKey(append(body, "future"...)); err != nil || k != pub {
		t.Fatalf("with trailing bytes: %v %v", k, err)
	}
	if _, err := ParseServerKey(body[:39]); err == nil {
		t.Fatal("short ServerKey accepted")
	}
	bad := bytes.Clone(body)
	bad[0] = 'X'
	if _, err := ParseServerKey(bad); err == nil {
		t.Fatal("bad magic accepted")
	}
}

func TestPacketLayoutAndClasses(t *testing.T) {
	for _, c := range []struct{ n, class int }{{0, 0}, {2048 - 37, 0}, {2048 - 36, 1}, {16384 - 37, 1}, {MaxPacketSize, 2}} {
		p := NewPacket(c.n)
		if int(p.class) != c.class || p.Len() != c.n || len(p.Payload()) != c.n {
			t.Errorf("NewPacket(%d): class %d len %d, want class %d", c.n, p.class, p.Len(), c.class)
		}
		p.Release()
	}
	p := NewPacket(3)
	copy(p.Payload(), "abc")
	src := GenerateNodePrivate().Public()
	p.SetSource(src)
	want := append(append([]byte{0x05, 0, 0, 0, 35}, src[:]...), "abc"...)
	if !bytes.Equal(p.RecvFrame(), want) || p.Source() != src {
		t.Fatalf("RecvFrame %x, want %x", p.RecvFrame(), want)
	}
	p.Release()
}

// byteReader returns one byte per Read, to split frames everywhere.
type byteReader struct{ b []byte }

func (r *byteReader) Read(p []byte) (int, error) {
	if len(r.b) == 0 {
		return 0, io.EOF
	}
	if len(p) == 0 {
		return 0, nil
	}
	p[0] = r.b[0]
	r.b = r.b[1:]
	return 1, nil
}

func frames(t testing.TB, parts ...[]byte) []byte {
	t.Helper()
	var buf bytes.Buffer
	w := NewWriter(&buf, 0)
	for i, p := range parts {
		w.WriteFrame(FrameType(i%3+4), p, nil)
	}
	if err := w.Flush(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func TestReaderSplitsAndPrefix(t *testing.T) {
	bodies := [][]byte{[]byte("one"), {}, bytes.Repeat([]byte{7}, 70000), []byte("four")}
	stream := frames(t, bodies...)
	for _, split := range []int{0, 1, 4, 7, 100} {
		prefix, rest := stream[:split], stream[split:]
		rd := NewReader(&byteReader{b: rest}, prefix, 1<<20)
		for i, want := range bodies {
			typ, n, err := rd.ReadHeader()
			if err != nil || typ != FrameType(i%3+4) || int(n) != len(want) {
				t.Fatalf("split %d frame %d: %v %d %v", split, i, typ, n, err)
			}
			got := make([]byte, n)
			if err := rd.ReadFull(got); err != nil || !bytes.Equal(got, want) {
				t.Fatalf("split %d frame %d body: %v", split, i, err)
			}
		}
		if _, _, err := rd.ReadHeader(); err != io.EOF {
			t.Fatalf("split %d: at end got %v, want io.EOF", split, err)
		}
	}
}

// scriptReader plays back reads, some bringing bytes and an error
// together, and then serves KeepAlive frames forever without error: a
// source that reports an error once and does not repeat it, which
// io.Reader allows.
type scriptReader struct {
	steps []scriptStep
	after loopSource
}

type scriptStep struct {
	b   []byte
	err error
}

func (s *scriptReader) Read(p []byte) (int, error) {
	if len(s.steps) == 0 {
		return s.after.Read(p)
	}
	n := copy(p, s.steps[0].b)
	if n < len(s.steps[0].b) {
		s.steps[0].b = s.steps[0].b[n:]
		return n, nil
	}
	err := s.steps[0].err
	s.steps = s.steps[1:]
	return n, err
}

func TestReaderKeepsErrorThatCameWithData(t *testing.T) {
	boom := errors.New("boom")
	small := frames(t, []byte("hello world"))
	large := AppendHeader(nil, FrameSendPacket, 40000)
	for _, c := range []struct {
		name   string
		steps  []scriptStep
		want   error
		inBody bool // the error cuts the body short; else it follows the frame
	}{
		// The error arrives with the header, read while the reader waits
		// idle for a frame.
		{"with header", []scriptStep{{AppendHeader(nil, FrameKeepAlive, 0), boom}}, boom, false},
		// With the body, read into the buffer.
		{"with body", []scriptStep{{small[:HeaderLen], nil}, {small[HeaderLen:], boom}}, boom, false},
		{"EOF with body", []scriptStep{{small[:HeaderLen], nil}, {small[HeaderLen:], io.EOF}}, io.EOF, false},
		// With the start of a body large enough that the rest of it is
		// read directly into the destination.
		{"before direct read", []scriptStep{{large[:2], nil}, {append(large[2:], make([]byte, 10)...), boom}}, boom, true},
	} {
		rd := NewReader(&scriptReader{steps: c.steps, after: loopSource{b: AppendHeader(nil, FrameKeepAlive, 0)}}, nil, 1<<20)
		_, n, err := rd.ReadHeader()
		if err != nil {
			t.Errorf("%s: header: %v", c.name, err)
			continue
		}
		err = rd.ReadFull(make([]byte, n))
		if !c.inBody {
			if err != nil {
				t.Errorf("%s: body: %v", c.name, err)
				continue
			}
			_, _, err = rd.ReadHeader()
		}
		if err != c.want {
			t.Errorf("%s: after the bytes that came with it: %v, want %v", c.name, err, c.want)
		}
	}
}

func TestReaderDiscardAndLimits(t *testing.T) {
	stream := frames(t, []byte("skip me"), []byte("keep"))
	rd := NewReader(bytes.NewReader(stream), nil, 1<<20)
	_, n, _ := rd.ReadHeader()
	if err := rd.Discard(int(n)); err != nil {
		t.Fatal(err)
	}
	_, n, _ = rd.ReadHeader()
	got := make([]byte, n)
	rd.ReadFull(got)
	if string(got) != "keep" {
		t.Fatalf("after discard got %q", got)
	}

	huge := AppendHeader(nil, FrameClientInfo, 16<<20)
	rd = NewReader(bytes.NewReader(huge), nil, MaxClientInfoLen)
	if _, _, err := rd.ReadHeader(); !errors.Is(err, ErrFrameTooLarge) {
		t.Fatalf("16 MiB claim: %v", err)
	}
	if _, _, err := rd.ReadHeader(); !errors.Is(err, ErrFrameTooLarge) {
		t.Fatalf("error not sticky: %v", err)
	}
	rd = NewReader(bytes.NewReader(huge), nil, MaxClientInfoLen)
	rd.SetMaxFrame(32 << 20)
	if _, n, err := rd.ReadHeader(); err != nil || n != 16<<20 {
		t.Fatalf("raised limit: %d %v", n, err)
	}

	// Mid-frame end is unexpected; mid-header too.
	rd = NewReader(bytes.NewReader(stream[:len(stream)-2]), nil, 1<<20)
	rd.ReadHeader()
	rd.Discard(7)
	_, n, _ = rd.ReadHeader()
	if err := rd.ReadFull(make([]byte, n)); !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Fatalf("truncated body: %v", err)
	}
	rd = NewReader(bytes.NewReader(stream[:3]), nil, 1<<20)
	if _, _, err := rd.ReadHeader(); !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Fatalf("truncated header: %v", err)
	}
}

type countingWriter struct {
	bytes.Buffer
	writes int
	max    int
	fail   error
}

func (c *countingWriter) Write(p []byte) (int, error) {
	if c.fail != nil {
		return 0, c.fail
	}
	c.writes++
	c.max = max(c.max, len(p))
	return c.Buffer.Write(p)
}

func TestWriterBatchesAndChunks(t *testing.T) {
	var cw countingWriter
	w := NewWriter(&cw, 0)
	for range 30 {
		w.WriteSendPacket(NodePublic{}, make([]byte, 1280))
	}
	if cw.writes != 0 || w.Frames() != 30 {
		t.Fatalf("wrote %d times before Flush, frames=%d", cw.writes, w.Frames())
	}
	w.Flush()
	if cw.writes != 1 || cw.Len() != 30*(5+32+1280) || w.Frames() != 0 {
		t.Fatalf("flush: %d writes, %d bytes", cw.writes, cw.Len())
	}
	w.Release()
	if w.bufp != nil {
		t.Fatal("Release kept the buffer")
	}

	cw = countingWriter{}
	w = NewWriter(&cw, 32<<10)
	payload := bytes.Repeat([]byte{9}, MaxPacketSize)
	w.WriteRecvPacket(NodePublic{1}, payload)
	w.Flush()
	if cw.max > 32<<10 || cw.writes != 3 {
		t.Fatalf("chunked: %d writes, largest %d", cw.writes, cw.max)
	}
	rd := NewReader(&cw.Buffer, nil, 1<<20)
	typ, n, _ := rd.ReadHeader()
	body := make([]byte, n)
	rd.ReadFull(body)
	if typ != FrameRecvPacket || body[0] != 1 || !bytes.Equal(body[32:], payload) {
		t.Fatal("chunked frame did not reassemble")
	}

	cw = countingWriter{fail: errors.New("boom")}
	w = NewWriter(&cw, 0)
	w.WriteKeepAlive()
	if err := w.Flush(); err == nil || w.WriteKeepAlive() == nil {
		t.Fatal("write error not sticky")
	}
}

// TestWriterOversizeFrames covers frames larger than the buffer, which no
// protocol frame is but WriteFrame must still get right: part1 goes
// through the buffer (in pieces if it has to), part2 straight to dst.
func TestWriterOversizeFrames(t *testing.T) {
	big := bytes.Repeat([]byte{7}, writeBufSize+100)
	for _, c := range []struct {
		name         string
		part1, part2 []byte
		writes       int
	}{
		{"small part1", []byte("key"), big, 2},
		{"large part1", big, []byte("tail"), 4},
	} {
		var cw countingWriter
		w := NewWriter(&cw, 0)
		w.WriteKeepAlive()
		w.WriteFrame(FrameHealth, c.part1, c.part2)
		if err := w.Flush(); err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		want := AppendHeader(nil, FrameKeepAlive, 0)
		want = AppendHeader(want, FrameHealth, uint32(len(c.part1)+len(c.part2)))
		want = append(append(want, c.part1...), c.part2...)
		if !bytes.Equal(cw.Bytes(), want) || cw.writes != c.writes {
			t.Errorf("%s: %d bytes in %d writes, want %d bytes in %d", c.name, cw.Len(), cw.writes, len(want), c.writes)
		}
	}
}

func TestTryFlush(t *testing.T) {
	w := NewWriter(io.Discard, 100)
	w.WriteSendPacket(NodePublic{1}, bytes.Repeat([]byte{5}, 1280))
	want := bytes.Clone(w.buf)
	var got []byte
	calls := 0
	// Takes half of what it is offered, and blocks on every third call.
	write := func(p []byte) (int, error) {
		if len(p) > 100 {
			t.Fatalf("TryFlush offered %d bytes, maxWrite is 100", len(p))
		}
		if calls++; calls%3 == 0 {
			return 0, ErrWouldBlock
		}
		n := (len(p) + 1) / 2
		got = append(got, p[:n]...)
		return n, nil
	}
	for done := false; !done; {
		var err error
		if done, err = w.TryFlush(write); err != nil {
			t.Fatal(err)
		}
	}
	if !bytes.Equal(got, want) || w.Buffered() != 0 || w.Frames() != 0 {
		t.Fatalf("TryFlush delivered %d of %d bytes", len(got), len(want))
	}
}

func TestWriterFrameLayouts(t *testing.T) {
	k := NodePublic{0: 0xaa, 31: 0xbb}
	k2 := NodePublic{0: 0xcc}
	addr := netip.MustParseAddrPort("1.2.3.4:5678")
	cases := []struct {
		name string
		do   func(w *Writer)
		typ  FrameType
		body []byte
	}{
		{"PeerGone", func(w *Writer) { w.WritePeerGone(k, PeerGoneNotHere) }, FramePeerGone, append(k[:], 1)},
		{"PeerPresent", func(w *Writer) { w.WritePeerPresent(k, addr, PeerPresentIsProber) }, FramePeerPresent,
			append(append(append([]byte{}, k[:]...), 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 1, 2, 3, 4), 0x16, 0x2e, 4)},
		{"ForwardPacket", func(w *Writer) { w.WriteForwardPacket(k, k2, []byte("p")) }, FrameForwardPacket, append(append(append([]byte{}, k[:]...), k2[:]...), 'p')},
		{"ClosePeer", func(w *Writer) { w.WriteClosePeer(k) }, FrameClosePeer, k[:]},
		{"NotePreferred", func(w *Writer) { w.WriteNotePreferred(true) }, FrameNotePreferred, []byte{1}},
		{"WatchConns", func(w *Writer) { w.WriteWatchConns() }, FrameWatchConns, nil},
		{"Ping", func(w *Writer) { w.WritePing([8]byte{1, 2, 3, 4, 5, 6, 7, 8}) }, FramePing, []byte{1, 2, 3, 4, 5, 6, 7, 8}},
		{"Pong", func(w *Writer) { w.WritePong([8]byte{8}) }, FramePong, []byte{8, 0, 0, 0, 0, 0, 0, 0}},
		{"KeepAlive", func(w *Writer) { w.WriteKeepAlive() }, FrameKeepAlive, nil},
		{"ServerKey", func(w *Writer) { w.WriteServerKey(k) }, FrameServerKey, AppendServerKey(nil, k)},
	}
	for _, c := range cases {
		var buf bytes.Buffer
		w := NewWriter(&buf, 0)
		c.do(w)
		w.Flush()
		want := append(AppendHeader(nil, c.typ, uint32(len(c.body))), c.body...)
		if !bytes.Equal(buf.Bytes(), want) {
			t.Errorf("%s: %x, want %x", c.name, buf.Bytes(), want)
		}
	}
}

// relayOne is the server's per-packet path on the byte level.
func relayOne(rd *Reader, w *Writer, src NodePublic) error {
	_, n, err := rd.ReadHeader()
	if err != nil {
		return err
	}
	if _, err := rd.ReadKey(); err != nil {
		return err
	}
	p := NewPacket(int(n) - KeyLen)
	if err := rd.ReadFull(p.Payload()); err != nil {
		return err
	}
	p.SetSource(src)
	err = w.WriteRaw(p.RecvFrame())
	p.Release()
	return err
}

// loopSource replays the same bytes forever.
type loopSource struct {
	b   []byte
	off int
}

func (l *loopSource) Read(p []byte) (int, error) {
	n := copy(p, l.b[l.off:])
	l.off = (l.off + n) % len(l.b)
	return n, nil
}

func TestRelayPathDoesNotAllocate(t *testing.T) {
	if raceEnabled {
		t.Skip("allocation counts are meaningless under the race detector; `make test` runs this without it")
	}
	var one bytes.Buffer
	w0 := NewWriter(&one, 0)
	w0.WriteSendPacket(NodePublic{1}, make([]byte, 1280))
	w0.Flush()
	rd := NewReader(&loopSource{b: one.Bytes()}, nil, 1<<20)
	w := NewWriter(io.Discard, 0)
	src := NodePublic{2}
	for range 100 { // warm the pools
		relayOne(rd, w, src)
	}
	allocs := testing.AllocsPerRun(1000, func() {
		if err := relayOne(rd, w, src); err != nil {
			t.Fatal(err)
		}
		if w.Buffered() > 48<<10 {
			w.Flush()
		}
	})
	if allocs != 0 {
		t.Fatalf("%v allocations per relayed packet, want 0", allocs)
	}
}

// TestWriteHelpersDoNotAllocate guards the helpers that assemble a small
// first part on the stack (keys, ping data, PeerGone body): should
// WriteFrame ever hand that part to the destination's Write, the array
// escapes and every control frame costs an allocation.
func TestWriteHelpersDoNotAllocate(t *testing.T) {
	if raceEnabled {
		t.Skip("allocation counts are meaningless under the race detector; `make test` runs this without it")
	}
	w := NewWriter(io.Discard, 0)
	src, dst := NodePublic{1}, NodePublic{2}
	payload := make([]byte, 1280)
	for _, c := range []struct {
		name  string
		write func() error
	}{
		{"ForwardPacket", func() error { return w.WriteForwardPacket(src, dst, payload) }},
		{"Pong", func() error { return w.WritePong([PingDataLen]byte{1}) }},
		{"PeerGone", func() error { return w.WritePeerGone(src, PeerGoneNotHere) }},
	} {
		allocs := testing.AllocsPerRun(1000, func() {
			if err := c.write(); err != nil {
				t.Fatal(err)
			}
			if w.Buffered() > 48<<10 {
				w.Flush()
			}
		})
		if allocs != 0 {
			t.Errorf("Write%s: %v allocations per frame, want 0", c.name, allocs)
		}
	}
}

func BenchmarkRelayPacket(b *testing.B) {
	var one bytes.Buffer
	w0 := NewWriter(&one, 0)
	w0.WriteSendPacket(NodePublic{1}, make([]byte, 1280))
	w0.Flush()
	rd := NewReader(&loopSource{b: one.Bytes()}, nil, 1<<20)
	w := NewWriter(io.Discard, 0)
	b.ReportAllocs()
	b.SetBytes(1280)
	for b.Loop() {
		relayOne(rd, w, NodePublic{2})
		if w.Buffered() > 48<<10 {
			w.Flush()
		}
	}
}

func BenchmarkLooksLikeDisco(b *testing.B) {
	p := append([]byte("TS\xf0\x9f\x92\xac"), make([]byte, 100)...)
	for b.Loop() {
		if !LooksLikeDisco(p) {
			b.Fatal()
		}
	}
}

func TestSharedKeyMatchesBox(t *testing.T) {
	a, b := GenerateNodePrivate(), GenerateNodePrivate()
	ka := Precompute(a, b.Public())
	kb := Precompute(b, a.Public())
	if ka != kb {
		t.Fatal("the two sides derive different keys")
	}
	sealed := SealShared(nil, []byte("x"), &ka)
	if plain, err := Open(nil, sealed, a.Public(), b); err != nil || string(plain) != "x" {
		t.Fatalf("SealShared output does not open with Open: %v", err)
	}
	if plain, err := OpenShared(nil, Seal(nil, []byte("y"), a, b.Public()), &kb); err != nil || string(plain) != "y" {
		t.Fatalf("Seal output does not open with OpenShared: %v", err)
	}
	if _, err := OpenShared(nil, sealed[:10], &kb); err == nil {
		t.Fatal("short box opened")
	}
}
