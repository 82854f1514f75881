package main

import (
	"bufio"
	"io"
	"strings"
)

// metricHelp is the HELP line of every metric family /debug/varz writes:
// what a person reading the exposition, or a dashboard's tooltip, needs
// to know about a series. The families are written by several packages
// (actors, stun, mesh, this one) with type lines only; withHelp adds
// these in front of them. A family written with a HELP line of its own
// keeps it. A new family needs a line here: the promtool test in interop
// fails on a family without one.
var metricHelp = map[string]string{
	// Connections.
	"derp_accepts":                                "Client connections that completed the DERP handshake.",
	"derp_websocket_accepts":                      "Client connections that completed the handshake over WebSocket.",
	"derp_current_connections":                    "Client connections open now, mesh peers' links included.",
	"derp_current_home_connections":               "Open connections whose client named this server its home (preferred) DERP.",
	"derp_current_notideal_connections":           "Open connections whose client said this is not the region it would choose.",
	"derp_clients_total":                          "Keys reachable through this server: connected here or announced by a mesh peer.",
	"derp_clients_local":                          "Keys with a connection to this server.",
	"derp_clients_remote":                         "Keys reachable only through a mesh peer.",
	"derp_rate_limit_per_client_bytes_per_second": "The per-client receive rate limit in force (-rate-config); 0 for none.",
	"derp_rate_limit_per_client_burst_bytes":      "The per-client receive burst in force (-rate-config), at least 65568.",
	"derp_rate_limit_per_client_waited":           "Frames a client connection had to wait for under the receive rate limit.",
	"derp_current_dup_client_keys":                "Keys connected more than once right now.",
	"derp_current_dup_client_conns":               "Connections belonging to keys connected more than once.",
	"derp_total_dup_client_conns":                 "Connections that arrived for a key already connected.",
	"derp_watchers":                               "Mesh peers subscribed to this server's connection changes.",
	"derp_home_moves_in":                          "Clients that made this server their home after it was not.",
	"derp_home_moves_out":                         "Clients that stopped calling this server their home.",
	"derp_sclient_write_timeouts":                 "Clients disconnected because a write to them blocked longer than -tcp-write-timeout.",
	"derpd_handshake_errors":                      "Connections that failed the DERP handshake.",
	"derpd_admission_rejected":                    "Connections refused by admission control: -verify-clients (the local tailscaled) or the -verify-client-url controller.",
	"tls_listener_accepted_connections":           "Sockets the main listener accepted within -accept-connection-limit.",
	"tls_listener_rejected_connections":           "Sockets the main listener closed at once for exceeding -accept-connection-limit.",
	"derper_tls_request_version":                  "HTTPS requests by TLS version.",

	// Frames and packets.
	"derp_got_ping":                      "Ping frames received from clients.",
	"derp_sent_pong":                     "Pong frames sent in answer.",
	"derp_peer_gone_disconnected_frames": "PeerGone frames sent because a peer a client heard from disconnected.",
	"derp_peer_gone_not_here_frames":     "PeerGone frames sent because a client sent to a key not connected here.",
	"derp_unknown_frames":                "Frames of a type the server does not know.",
	"derp_packets_received":              "Packets clients sent for relaying.",
	"derp_bytes_received":                "Payload bytes of the packets clients sent for relaying.",
	"derp_packets_received_kind":         "Packets clients sent for relaying, by kind: disco (path discovery) or other.",
	"derp_packets_sent":                  "Packets written to clients.",
	"derp_bytes_sent":                    "Payload bytes of the packets written to clients.",
	"derp_packets_dropped":               "Packets not delivered, by reason and kind.",
	"derp_bytes_dropped":                 "Payload bytes of the packets not delivered, by reason and kind.",
	"derp_average_queue_duration_ms":     "Moving average of how long a packet waits in a client's queue, in milliseconds.",
	"derp_buffered_write_frames":         "Frames written per socket write: the batching of a busy writer.",
	"derpd_queue_waits":                  "Times a reader waited for room in a destination's full queue rather than drop.",
	"derpd_queue_wait_timeouts":          "Of those waits, the ones that gave up and dropped the oldest packet.",

	// The mesh.
	"derp_packets_forwarded_in":                "Packets mesh peers forwarded to this server for its clients.",
	"derp_packets_forwarded_out":               "Packets this server forwarded to mesh peers.",
	"derp_multiforwarder_created":              "Keys announced by a second mesh peer.",
	"derp_multiforwarder_deleted":              "Keys back to one announcing mesh peer.",
	"derp_packet_forwarder_delete_other_value": "Withdrawals by a mesh peer of a key it had not announced.",
	"derp_mesh_update_batch_size":              "Connection changes written to a watcher per batch.",
	"derp_mesh_update_loop_count":              "Batches of connection changes written per wake-up of a watcher's writer.",
	"derpd_mesh_keys_refused":                  "Key announcements ignored for exceeding -mesh-max-peer-keys.",
	"derpd_mesh_unknown_sources_ignored":       "Forwarded packets whose source the region did not know and that were not recorded for PeerGone, because too many unknown sources were already on probation.",
	"derpd_dup_client_fight_claims":            "Claims of the receiving role by a connection fighting another with the same key; each is at least 250 ms after that connection's last, and not waited for.",
	"derpd_watcher_backlog_closes":             "Mesh watchers closed for letting connection updates pile up unread (at least 65,536, and twice their snapshot); they reconnect and start from a fresh snapshot.",
	"derpd_mesh_key_mismatch":                  "Clients that presented a mesh key other than this server's.",
	"derpd_mesh_link_up":                       "1 while the link to the peer is up, 0 otherwise (and for the entry that is this node).",
	"derpd_mesh_link_state":                    "1 for the state the link is in (up, connecting, down, or self: the entry is this node), 0 for the others.",
	"derpd_mesh_link_sessions":                 "Sessions the link to the peer has established.",
	"derpd_mesh_link_failures":                 "Failed attempts to connect to the peer.",
	"derpd_mesh_link_keys":                     "Keys the peer announces over the link.",
	"derpd_mesh_link_forwarded_out":            "Packets forwarded to the peer over the link.",
	"derpd_mesh_link_forwarded_in":             "Packets the peer forwarded to this server over its own link.",
	"derpd_mesh_link_queue_depth":              "Packets waiting in the link's queue.",
	"derpd_mesh_link_rtt_seconds":              "Round-trip time of the last ping answered by the peer.",
	"derpd_mesh_link_dropped":                  "Packets for the peer dropped by the link, by reason.",

	// The debug pages' bookkeeping and the actors.
	"derpd_flows_tracked":            "Flows (source, destination, mesh peer) the flows actor is tracking.",
	"derpd_flows_evicted":            "Flows forgotten to stay within -flows-max.",
	"derpd_flows_swept":              "Flows forgotten after being inactive for -flows-inactive.",
	"derpd_rejects_tracked":          "Entries of the rejects aggregate behind /debug/rejects.",
	"derpd_rejects_evicted":          "Rejects entries forgotten to stay within -rejects-max.",
	"derpd_actors":                   "Actors running, by kind.",
	"derpd_actor_mailbox_depth":      "Messages waiting in the mailboxes of the actors of a kind.",
	"derpd_actor_messages_processed": "Messages processed by the actors of a kind.",
	"derpd_actor_panics":             "Panics caught in the actors of a kind; each is logged as an error with its stack, and the actor recovers to a known state or stops.",

	// -verify-clients.
	"derpd_verify_lookups":              "Connecting clients verified with the local tailscaled, by result: admitted, refused (an unknown key), error (tailscaled could not be asked).",
	"derpd_verify_fail_open_admissions": "Of the lookups that ended in error, the clients admitted anyway by -verify-clients-fail-open.",
	"derpd_verify_cache_hits":           "Lookups answered from the cache or the last status answer, without asking tailscaled.",
	"derpd_verify_cache_entries":        "Answers about node keys the verify actor holds.",
	"derpd_verify_localapi_calls":       "Calls to tailscaled's LocalAPI, by call: whois (by node key) or status (for a tailscaled too old for whois by node key, and /debug/check).",
	"derpd_verify_localapi_errors":      "LocalAPI calls that got no usable answer (no socket, a timeout, an error status), by call.",
	"derpd_verify_status_fallback":      "1 while tailscaled predates whois by node key and clients are verified against its status.",

	// STUN and bootstrap DNS.
	"stun_requests":                            "STUN datagrams, by what became of them.",
	"stun_addrfamily":                          "STUN requests answered, by address family.",
	"bootstrap_dns_requests":                   "Requests to /bootstrap-dns.",
	"bootstrap_dns_published_hits":             "/bootstrap-dns?q= lookups not answered from the unpublished names, for a published name.",
	"bootstrap_dns_published_misses":           "/bootstrap-dns?q= lookups not answered from the unpublished names, for a name not published either.",
	"bootstrap_dns_unpublished_hits":           "/bootstrap-dns?q= lookups answered from the unpublished names.",
	"bootstrap_dns_unpublished_misses":         "/bootstrap-dns?q= lookups of a name with no unpublished addresses.",
	"bootstrap_dns_unpublished_percent_misses": "/bootstrap-dns?q= lookups of an unpublished name from a client outside its rollout percentage.",
	"bootstrap_dns_queried_domains":            "Distinct names asked for with ?q= since the last reset (at 500).",

	// The process.
	"goroutines":              "Goroutines running.",
	"process_start_unix_time": "When the process started, in seconds since the Unix epoch.",
	"uptime_sec":              "Seconds since the process started.",
	"memstats_heap_alloc":     "Bytes of allocated heap objects.",
	"memstats_heap_inuse":     "Bytes in in-use heap spans.",
	"memstats_sys":            "Bytes of memory obtained from the operating system.",
	"memstats_stack_inuse":    "Bytes in stack spans.",
	"memstats_num_gc":         "Completed garbage collection cycles.",
	"version":                 "Always 1; the version label is the server's version.",
	"go_version":              "Always 1; the version label is the Go release the server was built with.",
}

// withHelp copies an exposition from r to w with a HELP line in front of
// every TYPE line whose family has none.
func withHelp(w io.Writer, r io.Reader) error {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	bw := bufio.NewWriter(w)
	helped := map[string]bool{}
	for sc.Scan() {
		line := sc.Text()
		if rest, ok := strings.CutPrefix(line, "# HELP "); ok {
			name, _, _ := strings.Cut(rest, " ")
			helped[name] = true
		} else if rest, ok := strings.CutPrefix(line, "# TYPE "); ok {
			name, _, _ := strings.Cut(rest, " ")
			if text, ok := metricHelp[name]; ok && !helped[name] {
				bw.WriteString("# HELP " + name + " " + escapeHelp(text) + "\n")
				helped[name] = true
			}
		}
		bw.WriteString(line)
		bw.WriteByte('\n')
	}
	if err := sc.Err(); err != nil {
		return err
	}
	return bw.Flush()
}

// escapeHelp escapes what the text format does not allow raw in a HELP
// line.
func escapeHelp(s string) string {
	return strings.NewReplacer(`\`, `\\`, "\n", `\n`).Replace(s)
}
