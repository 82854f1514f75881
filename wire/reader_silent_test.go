package wire

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"io"
	"math/big"
	"net"
	"sync"
	"testing"
	"time"
	"unsafe"
)

// watchedConn reports, when its reader starts a read after consuming every
// byte the client will send, what the reader holds while it waits there,
// which is for as long as the client stays silent.
type watchedConn struct {
	io.Reader
	rd        *Reader
	want      int // bytes the client sends before falling silent
	delivered int
	silent    chan<- silentRead
}

type silentRead struct {
	heldPooled bool // the reader holds a pooled buffer while waiting
	room       int  // the size of the read it waits in
	// intoCaller: the read fills the caller's destination directly (a
	// large payload), memory the packet needs anyway.
	intoCaller bool
}

func (c *watchedConn) Read(p []byte) (int, error) {
	if c.delivered == c.want && c.silent != nil {
		inSmall := len(p) > 0 && uintptr(unsafe.Pointer(&p[0]))-uintptr(unsafe.Pointer(&c.rd.small)) < smallLen
		c.silent <- silentRead{heldPooled: c.rd.bufp != nil, room: len(p), intoCaller: !inSmall && c.rd.bufp == nil}
		c.silent = nil
	}
	n, err := c.Reader.Read(p)
	c.delivered += n
	return n, err
}

// consumeFrames reads frames the way derpd's readers do (a SendPacket's
// key with ReadKey, its payload with ReadFull; anything else skipped)
// until the stream fails.
func consumeFrames(rd *Reader) {
	for {
		t, n, err := rd.ReadHeader()
		if err != nil {
			return
		}
		if t == FrameSendPacket && n >= KeyLen {
			if _, err := rd.ReadKey(); err != nil {
				return
			}
			if err := rd.ReadFull(make([]byte, n-KeyLen)); err != nil {
				return
			}
			continue
		}
		if err := rd.Discard(int(n)); err != nil {
			return
		}
	}
}

func testTLSConfigs(t *testing.T) (server, client *tls.Config) {
	t.Helper()
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), DNSNames: []string{"derp.test"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, pub, priv)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	server = &tls.Config{Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: priv}}}
	client = &tls.Config{RootCAs: pool, ServerName: "derp.test"}
	return server, client
}

// Connections without a raw socket (TLS, WebSocket) that fall silent must
// not hold a pooled 64 KiB buffer while they do, wherever they stop:
// between frames, or inside a header, a key or a payload (a TLS record,
// or the client's write, ending there). Ten thousand such clients would
// otherwise hold 640 MiB of buffers doing nothing.
func TestSilentReadersWithoutRawSourceHoldNoPooledBuffer(t *testing.T) {
	packet := func(payload int) []byte {
		var b bytes.Buffer
		w := NewWriter(&b, 0)
		w.WriteSendPacket(NodePublic{1}, bytes.Repeat([]byte{7}, payload))
		w.Flush()
		return b.Bytes()
	}
	small, big := packet(1280), packet(40<<10)
	ping := AppendHeader(nil, FramePing, PingDataLen)
	ping = append(ping, "pingdata"...)
	claim := append(AppendHeader(nil, FrameClientInfo, MaxClientInfoLen), make([]byte, 5000)...)
	// Each stall is a list of the client's writes (over TLS, each at least
	// one record), then silence.
	stalls := []struct {
		name   string
		writes [][]byte
	}{
		{"between frames", [][]byte{small, ping}},
		{"between frames, one write", [][]byte{append(append([]byte{}, small...), ping...)}},
		{"after a header alone", [][]byte{small, small[:HeaderLen]}},
		{"after a large claim's header alone", [][]byte{claim[:HeaderLen]}},
		{"mid-header", [][]byte{small, ping[:3]}},
		{"mid-header after a whole record", [][]byte{append(append([]byte{}, small...), ping[:3]...)}},
		{"mid-key", [][]byte{small[:HeaderLen+20]}},
		{"mid-key, split", [][]byte{small[:HeaderLen], small[HeaderLen : HeaderLen+20]}},
		{"mid-payload", [][]byte{small[:HeaderLen+KeyLen+100]}},
		{"mid-payload after a whole frame", [][]byte{append(append([]byte{}, small...), small[:700]...)}},
		{"mid-payload of a large packet", [][]byte{big[:12<<10]}},
		{"a large claim, partly sent", [][]byte{claim}},
	}
	serverTLS, clientTLS := testTLSConfigs(t)
	transports := []struct {
		name string
		wrap func(server, client net.Conn) (net.Conn, net.Conn)
	}{
		{"pipe", func(s, c net.Conn) (net.Conn, net.Conn) { return s, c }},
		{"tls", func(s, c net.Conn) (net.Conn, net.Conn) { return tls.Server(s, serverTLS), tls.Client(c, clientTLS) }},
	}
	const copies = 5 // of each stall on each transport
	type silent struct {
		name string
		ch   chan silentRead
	}
	var all []silent
	var readers, writers sync.WaitGroup
	var closers []io.Closer
	for _, tr := range transports {
		for _, st := range stalls {
			for range copies {
				s, c := net.Pipe()
				server, client := tr.wrap(s, c)
				closers = append(closers, s, c)
				want := 0
				for _, w := range st.writes {
					want += len(w)
				}
				ch := make(chan silentRead, 1)
				all = append(all, silent{tr.name + ": " + st.name, ch})
				wc := &watchedConn{Reader: server, want: want, silent: ch}
				wc.rd = NewReader(wc, nil, 1<<20)
				readers.Add(1)
				go func() {
					defer readers.Done()
					consumeFrames(wc.rd)
					wc.rd.Release()
				}()
				writers.Add(1)
				go func() {
					defer writers.Done()
					for _, w := range st.writes {
						if _, err := client.Write(w); err != nil {
							t.Errorf("%s: client write: %v", st.name, err)
							return
						}
					}
				}()
			}
		}
	}
	for _, s := range all {
		got := <-s.ch
		if got.heldPooled {
			t.Errorf("%s: a silent reader holds a pooled %d-byte buffer", s.name, readBufSize)
		}
		if got.room > smallLen && !got.intoCaller {
			t.Errorf("%s: a silent reader waits in a %d-byte read", s.name, got.room)
		}
	}
	writers.Wait()
	for _, c := range closers {
		c.Close()
	}
	readers.Wait()
}
