package main

import (
	"bytes"
	"encoding/binary"
	"errors"
	"math/rand/v2"
	"time"

	"tailscale.com/disco"
	"tailscale.com/types/key"
)

// Every packet the soak sends ends in a tag naming its destination and
// its source, so that a receiver can tell a packet meant for it from one
// the relay delivered to the wrong connection or labelled with the wrong
// sender: either is counted as misdelivered, an error. The tag also says
// what the sender knew of the destination (live, or not reading), so
// that deliveries to healthy clients can be counted apart.
//
//	tag: "SOAK" | destKind (1) | destination key (32) | source key (32)
const tagMagic = "SOAK"

const (
	keyLen = 32
	timeAt = len(tagMagic) + 1 // where the send time starts in a tag
	keysAt = timeAt + 8        // where the destination key starts
	tagLen = keysAt + 2*keyLen
	// discoHeaderLen is what makes both servers treat a payload as a
	// disco message (its own queue, PeerGone(NotHere) for an unknown
	// destination): the magic, a disco key and a nonce.
	discoHeaderLen = len(disco.Magic) + keyLen + disco.NonceLen
	// discoSize is a disco-shaped packet's whole payload: the header,
	// a box of about a ping's size, and the tag.
	discoSize = discoHeaderLen + 48 + tagLen
)

// buildPacket writes into buf a payload for dst from src: disco-shaped,
// or data of a random size in [tagLen, maxSize] (never discoSize). buf
// must hold maxSize+1 and discoSize bytes; the result aliases it.
func buildPacket(buf []byte, src, dst key.NodePublic, kind destKind, discoShaped bool, maxSize int, now time.Time) []byte {
	var p []byte
	if discoShaped {
		p = buf[:discoSize]
		copy(p, disco.Magic)
		// The disco key and nonce are never read by a relay; zeros will do.
		clear(p[len(disco.Magic):discoHeaderLen])
	} else {
		n := tagLen + rand.IntN(max(1, maxSize-tagLen+1))
		if n == discoSize {
			n++ // the length alone tells a receiver which kind it sent
		}
		p = buf[:n]
		// Zeros, so that what a disco packet left in buf does not make
		// this one look like disco to the relay.
		clear(p[:n-tagLen])
	}
	tag := p[len(p)-tagLen:]
	copy(tag, tagMagic)
	tag[len(tagMagic)] = byte(kind)
	binary.BigEndian.PutUint64(tag[timeAt:keysAt], uint64(now.UnixNano()))
	dst.AppendTo(tag[keysAt:keysAt])
	src.AppendTo(tag[keysAt+keyLen : keysAt+keyLen])
	return p
}

var (
	errNoTag        = errors.New("no soak tag: a corrupted or foreign payload")
	errWrongDest    = errors.New("tagged for another destination: delivered to the wrong connection")
	errWrongSource  = errors.New("the relay named a sender other than the one in the tag")
	errDiscoChanged = errors.New("disco header lost on the way")
)

// checkPacket verifies a received payload: tagged for self (the raw
// key), from source as the relay says, and a disco-shaped one still so.
// It reports what the sender took the destination for, when it sent
// the packet, and whether the packet was disco-shaped.
func checkPacket(data []byte, self *[keyLen]byte, source key.NodePublic) (kind destKind, sent time.Time, discoShaped bool, err error) {
	if len(data) < tagLen {
		return 0, sent, false, errNoTag
	}
	tag := data[len(data)-tagLen:]
	if string(tag[:len(tagMagic)]) != tagMagic {
		return 0, sent, false, errNoTag
	}
	kind = destKind(tag[len(tagMagic)])
	sent = time.Unix(0, int64(binary.BigEndian.Uint64(tag[timeAt:keysAt])))
	if !bytes.Equal(tag[keysAt:keysAt+keyLen], self[:]) {
		return kind, sent, false, errWrongDest
	}
	var src [keyLen]byte
	source.AppendTo(src[:0])
	if !bytes.Equal(tag[keysAt+keyLen:], src[:]) {
		return kind, sent, false, errWrongSource
	}
	discoShaped = len(data) == discoSize
	if discoShaped && !disco.LooksLikeDiscoWrapper(data) {
		return kind, sent, true, errDiscoChanged
	}
	return kind, sent, discoShaped, nil
}
