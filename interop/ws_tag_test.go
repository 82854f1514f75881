//go:build ts_debug_websockets

package interop

// Tailscale's client library dials WebSocket only when built with this tag
// (and TS_DEBUG_DERP_WS_CLIENT=1 at run time).
const wsClientCompiled = true
