// Package harness starts DERP servers as real processes, derpd or
// upstream Tailscale derper built from the module cache, and connects
// Tailscale's own DERP client library to them. The interop tests and the
// side-by-side benchmark tool both use it, so both servers are always
// started with the same flags and driven by the same code.
package harness
