//go:build !ts_debug_websockets

package interop

const wsClientCompiled = false
