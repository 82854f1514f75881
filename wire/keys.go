package wire

import (
	"crypto/rand"
	"crypto/subtle"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"

	"golang.org/x/crypto/curve25519"
)

// Text prefixes of node keys, as Tailscale writes them in config files,
// logs and admission-controller requests.
const (
	nodePublicPrefix  = "nodekey:"
	nodePrivatePrefix = "privkey:"
)

// NodePublic is a node's (or the server's) Curve25519 public key: the
// address DERP routes by.
type NodePublic [KeyLen]byte

// NodePrivate is a Curve25519 private key.
type NodePrivate [KeyLen]byte

// GenerateNodePrivate makes a fresh private key from the system's random
// source, clamped as X25519 requires.
func GenerateNodePrivate() NodePrivate {
	var k NodePrivate
	if _, err := rand.Read(k[:]); err != nil {
		// crypto/rand does not fail on supported platforms; a server
		// without randomness must not invent keys.
		panic("wire: no randomness for a private key: " + err.Error())
	}
	k[0] &= 248
	k[31] = (k[31] & 127) | 64
	return k
}

// IsZero reports whether the key is all zeros, which never names a node.
func (k NodePrivate) IsZero() bool { return k == NodePrivate{} }

// Public derives the public key.
func (k NodePrivate) Public() NodePublic {
	var pub NodePublic
	curve25519.ScalarBaseMult((*[32]byte)(&pub), (*[32]byte)(&k))
	return pub
}

// String hides the key: a private key that reaches a log line through a
// stray %v must not be readable there. MarshalText is the one way to write
// the key itself (the key file does it through encoding/json).
func (k NodePrivate) String() string { return nodePrivatePrefix + "<redacted>" }

// MarshalText implements encoding.TextMarshaler with the "privkey:<hex>"
// form.
func (k NodePrivate) MarshalText() ([]byte, error) {
	return []byte(nodePrivatePrefix + hex.EncodeToString(k[:])), nil
}

// UnmarshalText implements encoding.TextUnmarshaler.
func (k *NodePrivate) UnmarshalText(b []byte) error {
	return parsePrefixedHex(string(b), nodePrivatePrefix, (*[KeyLen]byte)(k))
}

// IsZero reports whether the key is all zeros. The server rejects clients
// claiming the zero key: it would collide with "no key" everywhere.
func (k NodePublic) IsZero() bool { return k == NodePublic{} }

// String returns the "nodekey:<hex>" form.
func (k NodePublic) String() string { return nodePublicPrefix + hex.EncodeToString(k[:]) }

// ShortString is an abbreviated form for log lines, as Tailscale prints keys:
// "[" + first five base64 characters is theirs; ours is the first 8 hex
// digits, enough to tell peers apart in a log and to grep the full key.
func (k NodePublic) ShortString() string { return hex.EncodeToString(k[:4]) }

// UntypedHexString is the 64 hex digits without prefix, as used in the
// Derp-Public-Key response header and the meta certificate.
func (k NodePublic) UntypedHexString() string { return hex.EncodeToString(k[:]) }

// MarshalText implements encoding.TextMarshaler with the "nodekey:" form.
func (k NodePublic) MarshalText() ([]byte, error) { return []byte(k.String()), nil }

// UnmarshalText implements encoding.TextUnmarshaler.
func (k *NodePublic) UnmarshalText(b []byte) error {
	return parsePrefixedHex(string(b), nodePublicPrefix, (*[KeyLen]byte)(k))
}

// ParseNodePublic parses the "nodekey:<hex>" form (hex in either case).
func ParseNodePublic(s string) (NodePublic, error) {
	var k NodePublic
	err := k.UnmarshalText([]byte(s))
	return k, err
}

// ParseNodePublicUntyped parses 64 hex digits without a prefix.
func ParseNodePublicUntyped(s string) (NodePublic, error) {
	var k NodePublic
	err := decodeHexKey(s, (*[KeyLen]byte)(&k))
	return k, err
}

// ParseNodePrivate parses the "privkey:<hex>" form.
func ParseNodePrivate(s string) (NodePrivate, error) {
	var k NodePrivate
	err := k.UnmarshalText([]byte(s))
	return k, err
}

func parsePrefixedHex(s, prefix string, dst *[KeyLen]byte) error {
	rest, ok := strings.CutPrefix(s, prefix)
	if !ok {
		// The input is not quoted back: it may be a private key that
		// only lacks its prefix.
		return fmt.Errorf("key of %d characters: missing %q prefix", len(s), prefix)
	}
	return decodeHexKey(rest, dst)
}

func decodeHexKey(s string, dst *[KeyLen]byte) error {
	if len(s) != 2*KeyLen {
		return fmt.Errorf("key must be %d hex digits, got %d characters", 2*KeyLen, len(s))
	}
	var tmp [KeyLen]byte
	if _, err := hex.Decode(tmp[:], []byte(s)); err != nil {
		return fmt.Errorf("key is not hex: %w", err)
	}
	*dst = tmp
	return nil
}

// MeshKey is a region's pre-shared key. Connections that present it are
// trusted peers: they may watch connections, forward packets and close
// peers, and they skip admission checks.
type MeshKey [KeyLen]byte

// ErrMeshKeyFormat is returned for anything but exactly 64 hex digits.
var ErrMeshKeyFormat = errors.New("mesh key must be exactly 64 hex digits")

// ParseMeshKey parses 64 hex digits (either case). Callers trim
// surrounding whitespace first if their source (a file) may have it; the
// ClientInfo field must be exact.
func ParseMeshKey(s string) (MeshKey, error) {
	var k MeshKey
	if len(s) != 2*KeyLen {
		return k, ErrMeshKeyFormat
	}
	if _, err := hex.Decode(k[:], []byte(s)); err != nil {
		return MeshKey{}, ErrMeshKeyFormat
	}
	return k, nil
}

// IsZero reports whether the key is unset: an all-zero key means "no mesh".
func (k MeshKey) IsZero() bool { return k == MeshKey{} }

// Equal compares in constant time so that a client probing keys learns
// nothing from how long the server took to reject it.
func (k MeshKey) Equal(other MeshKey) bool {
	return subtle.ConstantTimeCompare(k[:], other[:]) == 1
}

// String hides the key, for the same reason as NodePrivate.String.
func (k MeshKey) String() string { return "meshkey:<redacted>" }

// Hex returns the 64 hex digits, the form a PSK file holds and ClientInfo
// carries.
func (k MeshKey) Hex() string { return hex.EncodeToString(k[:]) }
