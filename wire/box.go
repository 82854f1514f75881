package wire

import (
	"crypto/rand"
	"errors"

	"golang.org/x/crypto/nacl/box"
)

// BoxOverhead is what sealing adds: a 24-byte random nonce in front of
// NaCl box's 16-byte Poly1305 tag and the ciphertext.
const (
	nonceLen    = 24
	BoxOverhead = nonceLen + box.Overhead
)

// ErrBoxOpen means a sealed message did not authenticate: wrong keys,
// tampering, or a peer that is not who it says.
var ErrBoxOpen = errors.New("sealed message does not open with these keys")

// Seal encrypts plaintext from sender to receiver and appends
// nonce|tag|ciphertext to dst. It derives the shared key each time (as
// box.Seal would); use SealShared to reuse one.
func Seal(dst, plaintext []byte, sender NodePrivate, receiver NodePublic) []byte {
	k := Precompute(sender, receiver)
	return SealShared(dst, plaintext, &k)
}

// Open authenticates and decrypts a message sealed by sender for receiver
// and appends the plaintext to dst.
func Open(dst, sealed []byte, sender NodePublic, receiver NodePrivate) ([]byte, error) {
	k := Precompute(receiver, sender)
	return OpenShared(dst, sealed, &k)
}

// SharedKey is the NaCl box key two nodes derive from one's private key and
// the other's public key. Deriving it is the expensive part of sealing or
// opening (an X25519 multiplication); a handshake that both opens and seals
// derives it once.
type SharedKey [32]byte

// Precompute derives the shared key of priv and peer.
func Precompute(priv NodePrivate, peer NodePublic) SharedKey {
	var k SharedKey
	box.Precompute((*[32]byte)(&k), (*[32]byte)(&peer), (*[32]byte)(&priv))
	return k
}

// SealShared is Seal with a precomputed key.
func SealShared(dst, plaintext []byte, k *SharedKey) []byte {
	var nonce [nonceLen]byte
	if _, err := rand.Read(nonce[:]); err != nil {
		panic("wire: no randomness for a nonce: " + err.Error())
	}
	dst = append(dst, nonce[:]...)
	return box.SealAfterPrecomputation(dst, plaintext, &nonce, (*[32]byte)(k))
}

// OpenShared is Open with a precomputed key.
func OpenShared(dst, sealed []byte, k *SharedKey) ([]byte, error) {
	if len(sealed) < BoxOverhead {
		return nil, ErrBoxOpen
	}
	nonce := (*[nonceLen]byte)(sealed[:nonceLen])
	out, ok := box.OpenAfterPrecomputation(dst, sealed[nonceLen:], nonce, (*[32]byte)(k))
	if !ok {
		return nil, ErrBoxOpen
	}
	return out, nil
}
