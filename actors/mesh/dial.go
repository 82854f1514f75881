package mesh

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/derpd/derpd/wire"
)

// connectTimeout bounds a whole connection attempt: DNS, TCP, TLS, the
// HTTP upgrade and the DERP handshake up to ServerInfo. It is upstream's
// client bound.
const connectTimeout = 10 * time.Second

// maxLinkFrame is the largest frame a link accepts from its peer, as
// upstream's client: a peer sends only control frames on this connection,
// and a bigger claim is garbage.
const maxLinkFrame = 1 << 20

// Handshake limits from the protocol.
const (
	maxServerKeyLen  = 1 << 10
	maxServerInfoLen = 24 + 1<<20
)

// errSelf says the peer turned out to be this server.
var errSelf = errors.New("the peer is this server")

// peerConn is a link's connection after a completed handshake.
type peerConn struct {
	conn      net.Conn     // TLS
	sock      *stampedConn // the socket under it
	rd        *wire.Reader
	serverKey wire.NodePublic
	fastStart bool
}

// dialPeer connects to t as a mesh client: TLS verified for t.Host, the
// /derp upgrade (fast start when the peer's meta certificate gives its
// key), ClientInfo with the mesh key and WatchConns pipelined behind it,
// then ServerInfo, which proves the peer holds the key it claims. It
// returns errSelf, having sent nothing of ours, when the peer's key is our
// own. Cancelling ctx aborts it at any point.
func dialPeer(ctx context.Context, cfg *Config, t Target) (pc *peerConn, err error) {
	ctx, cancel := context.WithTimeout(ctx, connectTimeout)
	defer cancel()
	dial := cfg.Dial
	if dial == nil {
		dial = (&net.Dialer{}).DialContext
	}
	raw, err := dial(ctx, "tcp", t.DialAddr())
	if err != nil {
		return nil, err
	}
	// From here on a cancelled or expired ctx closes the socket, which
	// ends whatever read or write is under way.
	stop := context.AfterFunc(ctx, func() { raw.Close() })
	defer func() {
		if !stop() && err == nil {
			err = ctx.Err()
		}
		if err != nil {
			if pc != nil {
				pc.rd.Release()
				pc = nil
			}
			raw.Close()
			if ctx.Err() != nil && !errors.Is(err, ctx.Err()) {
				err = fmt.Errorf("%w (%v)", err, ctx.Err())
			}
		}
	}()
	if dl, ok := ctx.Deadline(); ok {
		raw.SetDeadline(dl)
	}

	sock := &stampedConn{Conn: raw}
	tc := tlsConfig(cfg.TLS, t.Host)
	conn := tls.Client(sock, tc)
	if err := conn.HandshakeContext(ctx); err != nil {
		return nil, fmt.Errorf("TLS: %w", err)
	}
	var metaKey wire.NodePublic
	if cs := conn.ConnectionState(); cs.Version >= tls.VersionTLS13 {
		// Only TLS 1.3 hides certificates from the path, so only then is
		// the meta certificate trusted to carry the key (as upstream).
		metaKey = keyFromMetaCert(cs.PeerCertificates)
	}
	fastStart := !metaKey.IsZero()
	if fastStart && metaKey == cfg.PublicKey {
		return nil, errSelf
	}
	rd, serverKey, err := upgradeAndHandshake(conn, cfg, t, metaKey)
	if err != nil {
		return nil, err
	}
	raw.SetDeadline(time.Time{})
	return &peerConn{conn: conn, sock: sock, rd: rd, serverKey: serverKey, fastStart: fastStart}, nil
}

// upgradeAndHandshake is dialPeer's part after TLS, the first to read what
// the peer sends: the /derp upgrade (with fast start when metaKey, the key
// in the peer's meta certificate, is not zero), ServerKey, our ClientInfo
// and WatchConns, ServerInfo. On success the reader stands after
// ServerInfo. The caller bounds it with a deadline.
func upgradeAndHandshake(conn net.Conn, cfg *Config, t Target, metaKey wire.NodePublic) (*wire.Reader, wire.NodePublic, error) {
	fastStart := !metaKey.IsZero()
	req := "GET /derp HTTP/1.1\r\nHost: " + t.HostHeader() + "\r\nUpgrade: DERP\r\nConnection: Upgrade\r\n"
	if fastStart {
		req += "Derp-Fast-Start: 1\r\n"
	}
	req += "\r\n"
	var rd *wire.Reader
	if fastStart {
		// Request, ClientInfo and WatchConns leave in one write: the
		// link is watching after one round trip.
		msg, err := appendHello([]byte(req), cfg, metaKey)
		if err != nil {
			return nil, wire.NodePublic{}, err
		}
		if _, err := conn.Write(msg); err != nil {
			return nil, wire.NodePublic{}, fmt.Errorf("writing the upgrade request: %w", err)
		}
		rd = wire.NewReader(conn, nil, maxLinkFrame)
	} else {
		if _, err := io.WriteString(conn, req); err != nil {
			return nil, wire.NodePublic{}, fmt.Errorf("writing the upgrade request: %w", err)
		}
		br := bufio.NewReaderSize(conn, 4096)
		res, err := http.ReadResponse(br, nil)
		if err != nil {
			return nil, wire.NodePublic{}, fmt.Errorf("reading the upgrade response: %w", err)
		}
		if res.StatusCode != http.StatusSwitchingProtocols {
			body, _ := io.ReadAll(io.LimitReader(res.Body, 200))
			res.Body.Close()
			return nil, wire.NodePublic{}, fmt.Errorf("upgrade refused: %s: %q", res.Status, strings.TrimSpace(string(body)))
		}
		// Frames that came with the response are the stream's start.
		var prefix []byte
		if n := br.Buffered(); n > 0 {
			b, _ := br.Peek(n)
			prefix = append([]byte(nil), b...)
		}
		rd = wire.NewReader(conn, prefix, maxLinkFrame)
	}
	fail := func(err error) (*wire.Reader, wire.NodePublic, error) {
		rd.Release()
		return nil, wire.NodePublic{}, err
	}

	// ServerKey comes first, fast start or not.
	typ, n, err := rd.ReadHeader()
	if err != nil {
		return fail(fmt.Errorf("reading ServerKey: %w", err))
	}
	if typ != wire.FrameServerKey || n < uint32(wire.ServerKeyBodyLen) || n > maxServerKeyLen {
		return fail(fmt.Errorf("peer's first frame is %v of %d bytes, want ServerKey", typ, n))
	}
	body, err := rd.Next(int(n))
	if err != nil {
		return fail(fmt.Errorf("reading ServerKey: %w", err))
	}
	serverKey, err := wire.ParseServerKey(body)
	if err != nil {
		return fail(err)
	}
	switch {
	case fastStart && serverKey != metaKey:
		return fail(fmt.Errorf("ServerKey %s differs from the key in the peer's certificate %s", serverKey.ShortString(), metaKey.ShortString()))
	case serverKey == cfg.PublicKey:
		return fail(errSelf)
	case !fastStart:
		msg, err := appendHello(nil, cfg, serverKey)
		if err != nil {
			return fail(err)
		}
		if _, err := conn.Write(msg); err != nil {
			return fail(fmt.Errorf("writing ClientInfo: %w", err))
		}
	}

	// ServerInfo must follow: a peer that refuses us (admission, or a
	// mesh key check of its own) closes the connection instead.
	typ, n, err = rd.ReadHeader()
	if err != nil {
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			// A server refuses a client by closing before ServerInfo:
			// its admission control did, or it took our WatchConns for
			// an ordinary client's because its mesh key is not ours.
			err = errors.New("the peer closed the connection before ServerInfo: it refused this server (admission control, or a mesh key other than ours)")
		}
		return fail(fmt.Errorf("reading ServerInfo: %w", err))
	}
	if typ != wire.FrameServerInfo || n > maxServerInfoLen {
		return fail(fmt.Errorf("peer sent %v of %d bytes after ServerKey, want ServerInfo", typ, n))
	}
	sealed := make([]byte, n)
	if err := rd.ReadFull(sealed); err != nil {
		return fail(fmt.Errorf("reading ServerInfo: %w", err))
	}
	if _, err := wire.ParseServerInfo(sealed, serverKey, cfg.PrivateKey); err != nil {
		return fail(fmt.Errorf("ServerInfo does not open with the peer's key: %w", err))
	}
	return rd, serverKey, nil
}

// appendHello appends our ClientInfo frame (the server's own key, the mesh
// key, no ping acks, as upstream's mesh client) and WatchConns.
func appendHello(dst []byte, cfg *Config, server wire.NodePublic) ([]byte, error) {
	body, err := wire.AppendClientInfo(nil, cfg.PrivateKey, server, wire.ClientInfo{
		Version: wire.ProtocolVersion,
		MeshKey: cfg.MeshKey,
	})
	if err != nil {
		return nil, err
	}
	dst = wire.AppendHeader(dst, wire.FrameClientInfo, uint32(len(body)))
	dst = append(dst, body...)
	return wire.AppendHeader(dst, wire.FrameWatchConns, 0), nil
}

func tlsConfig(base *tls.Config, host string) *tls.Config {
	var c *tls.Config
	if base != nil {
		c = base.Clone()
	} else {
		c = &tls.Config{}
	}
	c.ServerName = host
	if c.MinVersion < tls.VersionTLS12 {
		c.MinVersion = tls.VersionTLS12
	}
	return c
}

// metaCertPrefix opens the common name of a DERP server's meta
// certificate; the rest is its key in hex.
const metaCertPrefix = "derpkey"

// keyFromMetaCert finds the server key in a DERP meta certificate: a CN of
// "derpkey" and 64 hex digits, and a serial number, the protocol version,
// that fits in a byte and is not zero. The zero key means none.
func keyFromMetaCert(certs []*x509.Certificate) wire.NodePublic {
	for _, c := range certs {
		hexKey, ok := strings.CutPrefix(c.Subject.CommonName, metaCertPrefix)
		if !ok {
			continue
		}
		k, err := wire.ParseNodePublicUntyped(hexKey)
		if err != nil || c.SerialNumber == nil || !c.SerialNumber.IsInt64() {
			continue
		}
		if v := c.SerialNumber.Int64(); v <= 0 || v > 255 {
			continue
		}
		return k
	}
	return wire.NodePublic{}
}
