package wire

import (
	"encoding/json"
	"errors"
	"fmt"
)

// ClientInfo is the JSON a client seals to the server in its first frame.
// Field names follow Tailscale's client byte for byte; decoding follows Go's
// JSON rules (keys match case-insensitively, unknown keys are ignored) so
// that "CanAckPings" and "canackpings" both work, as with upstream.
type ClientInfo struct {
	// Version is the protocol version the client speaks. The server frames
	// everything as version 2 regardless.
	Version int `json:"version,omitempty"`

	// MeshKey, when present, must be 64 hex digits. Present-but-malformed
	// (including empty) rejects the whole ClientInfo: a mesh peer with a
	// broken key must fail loudly, not silently connect unprivileged.
	MeshKey MeshKey `json:"-"`

	CanAckPings bool   `json:"CanAckPings"`
	IsProber    bool   `json:"IsProber,omitempty"`
	AppName     string `json:"AppName,omitempty"`
}

// clientInfoJSON carries the mesh key as an optional string so decoding can
// tell "absent" from "empty".
type clientInfoJSON struct {
	Version     int     `json:"version,omitempty"`
	MeshKey     *string `json:"meshKey,omitempty"`
	CanAckPings bool    `json:"CanAckPings"`
	IsProber    bool    `json:"IsProber,omitempty"`
	AppName     string  `json:"AppName,omitempty"`
}

// MarshalJSON writes the fields Tailscale's client writes, omitting the
// mesh key when it is unset.
func (ci ClientInfo) MarshalJSON() ([]byte, error) {
	j := clientInfoJSON{
		Version:     ci.Version,
		CanAckPings: ci.CanAckPings,
		IsProber:    ci.IsProber,
		AppName:     ci.AppName,
	}
	if !ci.MeshKey.IsZero() {
		s := ci.MeshKey.Hex()
		j.MeshKey = &s
	}
	return json.Marshal(j)
}

// UnmarshalJSON decodes with Go's case-insensitive key matching.
func (ci *ClientInfo) UnmarshalJSON(b []byte) error {
	var j clientInfoJSON
	if err := json.Unmarshal(b, &j); err != nil {
		return err
	}
	*ci = ClientInfo{
		Version:     j.Version,
		CanAckPings: j.CanAckPings,
		IsProber:    j.IsProber,
		AppName:     j.AppName,
	}
	if j.MeshKey != nil {
		k, err := ParseMeshKey(*j.MeshKey)
		if err != nil {
			return fmt.Errorf("meshKey: %w", err)
		}
		ci.MeshKey = k
	}
	return nil
}

// ServerInfo is the JSON the server seals to the client after admitting it.
// The token-bucket fields ask the client to pace its own sends; upstream
// never sets them and neither does derpd today.
type ServerInfo struct {
	Version                   int `json:"version,omitempty"`
	TokenBucketBytesPerSecond int `json:",omitempty"`
	TokenBucketBytesBurst     int `json:",omitempty"`
}

// ErrClientInfo describes every way a ClientInfo body can be unacceptable;
// the wrapped error says which.
var ErrClientInfo = errors.New("bad ClientInfo")

// ParseClientInfo checks a ClientInfo frame body and opens its box with
// the server's private key. It returns the client's key and what it said.
// Bodies outside [MinClientInfoLen, MaxClientInfoLen] are refused.
func ParseClientInfo(body []byte, server NodePrivate) (NodePublic, ClientInfo, error) {
	client, ci, _, err := OpenClientInfo(body, server)
	return client, ci, err
}

// OpenClientInfo is ParseClientInfo that also returns the shared key of
// server and client, for sealing the ServerInfo reply without deriving it
// a second time.
func OpenClientInfo(body []byte, server NodePrivate) (NodePublic, ClientInfo, SharedKey, error) {
	var ci ClientInfo
	var shared SharedKey
	if len(body) < MinClientInfoLen {
		return NodePublic{}, ci, shared, fmt.Errorf("%w: %d bytes is too short", ErrClientInfo, len(body))
	}
	if len(body) > MaxClientInfoLen {
		return NodePublic{}, ci, shared, fmt.Errorf("%w: %d bytes is too long", ErrClientInfo, len(body))
	}
	client := NodePublic(body[:KeyLen])
	if client.IsZero() {
		return client, ci, shared, fmt.Errorf("%w: zero client key", ErrClientInfo)
	}
	shared = Precompute(server, client)
	plain, err := OpenShared(nil, body[KeyLen:], &shared)
	if err != nil {
		return client, ci, shared, fmt.Errorf("%w: %w", ErrClientInfo, err)
	}
	if err := json.Unmarshal(plain, &ci); err != nil {
		return client, ci, shared, fmt.Errorf("%w: %w", ErrClientInfo, err)
	}
	return client, ci, shared, nil
}

// AppendClientInfo builds a ClientInfo frame body (not the header): the
// client's public key and the sealed JSON.
func AppendClientInfo(dst []byte, client NodePrivate, server NodePublic, ci ClientInfo) ([]byte, error) {
	js, err := json.Marshal(ci)
	if err != nil {
		return dst, err
	}
	pub := client.Public()
	dst = append(dst, pub[:]...)
	return Seal(dst, js, client, server), nil
}

// AppendServerInfo builds a ServerInfo frame body: the sealed JSON.
func AppendServerInfo(dst []byte, server NodePrivate, client NodePublic, si ServerInfo) ([]byte, error) {
	k := Precompute(server, client)
	return AppendServerInfoShared(dst, &k, si)
}

// AppendServerInfoShared is AppendServerInfo with the precomputed key
// from OpenClientInfo.
func AppendServerInfoShared(dst []byte, shared *SharedKey, si ServerInfo) ([]byte, error) {
	js, err := json.Marshal(si)
	if err != nil {
		return dst, err
	}
	return SealShared(dst, js, shared), nil
}

// ParseServerInfo opens a ServerInfo body (the client's side of the
// handshake: how it proves it reached the server whose key it knows).
func ParseServerInfo(body []byte, server NodePublic, client NodePrivate) (ServerInfo, error) {
	var si ServerInfo
	plain, err := Open(nil, body, server, client)
	if err != nil {
		return si, err
	}
	err = json.Unmarshal(plain, &si)
	return si, err
}

// AppendServerKey builds the ServerKey frame body.
func AppendServerKey(dst []byte, server NodePublic) []byte {
	dst = append(dst, serverKeyMagic[:]...)
	return append(dst, server[:]...)
}

// ParseServerKey checks a ServerKey body and returns the key. Bytes after
// the key are reserved for future use and ignored.
func ParseServerKey(body []byte) (NodePublic, error) {
	if len(body) < ServerKeyBodyLen {
		return NodePublic{}, fmt.Errorf("ServerKey body is %d bytes, want at least %d", len(body), ServerKeyBodyLen)
	}
	if [8]byte(body[:8]) != serverKeyMagic {
		return NodePublic{}, errors.New("ServerKey magic mismatch")
	}
	return NodePublic(body[8:ServerKeyBodyLen]), nil
}
