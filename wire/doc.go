// Package wire is the DERP protocol on the byte level: frame headers, the
// body layout of every frame type of protocol version 2, node keys and
// their text forms, and the NaCl boxes that carry ClientInfo and
// ServerInfo. It knows nothing about servers, actors or routing; a reader
// should be able to learn the protocol from this package alone.
//
// # Framing
//
// Every frame is a 5-byte header followed by its body:
//
//	type (1 byte) | body length (4 bytes, big-endian) | body
//
// The length never includes the header itself.
//
// # Handshake
//
// After the HTTP upgrade (or with fast start, straight after the request
// headers) both directions carry frames:
//
//	server → client   ServerKey   magic "DERP🔑" (8 bytes) | server public key (32)
//	client → server   ClientInfo  client public key (32) | box(JSON) sealed client→server
//	                  (the server checks admission; a rejected client is closed without reply)
//	server → client   ServerInfo  box(JSON) sealed server→client, always the first frame
//	                  after ServerKey; a client that cannot open it has not reached the
//	                  server it meant to, which is how clients authenticate the server.
//
// A client may pipeline NotePreferred and WatchConns right after its
// ClientInfo without waiting for ServerInfo, and a fast-start client sends
// ClientInfo together with its HTTP request. Nothing in the handshake
// depends on the server having answered first.
//
// # Steady state
//
// Clients send SendPacket frames addressed by destination key; the server
// delivers them as RecvPacket frames carrying the source key. Mesh peers
// (connections that presented the region's mesh key) may also send
// ForwardPacket, WatchConns and ClosePeer. The server sends KeepAlive
// about once a minute, PeerGone when a peer a client heard from has left,
// and PeerPresent to watchers.
package wire
