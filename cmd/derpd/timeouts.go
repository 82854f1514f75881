package main

import (
	"time"

	"github.com/derpd/derpd/actors/client"
)

// The deadlines that cut off hostile handshakes on the main listener.
// They are variables only so that tests can shorten them (abuse_test.go
// would otherwise last half a minute); derpd never changes them.
var (
	// httpReadTimeout is net/http's ReadHeaderTimeout and ReadTimeout:
	// a request that never ends (a silent connection, one dribbling its
	// headers, a TLS handshake that stalls) is closed after it.
	httpReadTimeout = 30 * time.Second

	// handshakeTimeout is client.Config.HandshakeTimeout: ServerKey,
	// ClientInfo and admission after the upgrade.
	handshakeTimeout = client.HandshakeTimeout
)
