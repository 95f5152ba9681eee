/*
 * stats_names.h - THE table of fixed metrics, one line each, nothing else.
 *
 * STAT(id, type, name, labels, help)
 *   id:     C name; the counter is ST_<id> (stats_inc(ST_<id>))
 *   type:   COUNTER (only goes up) or GAUGE (stats_add() +1 / -1; the value
 *           shown is the sum over threads, so add and subtract anywhere)
 *   name:   the Prometheus metric name, perimd_...; rows sharing a name
 *           MUST be adjacent (one HELP/TYPE block, one row per label set)
 *   labels: "" or the label set without braces: "reason=\"size\""
 * HIST(id, name, help): a histogram (SH_<id>) of milliseconds, shown in
 *   seconds with the buckets of stats.c.
 * Included with STAT and HIST defined; no include guard on purpose.
 */
/* One row per line, however long: */
/* clang-format off */

/* Connections and sessions (smtpd.c) */
STAT(conn_accepted, COUNTER, "perimd_connections_accepted_total", "", "SMTP connections accepted and greeted")
STAT(conn_refused_max, COUNTER, "perimd_connections_refused_total", "reason=\"max_sessions\"", "SMTP connections refused at connect")
STAT(conn_refused_client, COUNTER, "perimd_connections_refused_total", "reason=\"client_limit\"", "")
STAT(conn_refused_early, COUNTER, "perimd_connections_refused_total", "reason=\"early_talker\"", "")
STAT(conn_refused_rate, COUNTER, "perimd_connections_refused_total", "reason=\"client_rate\"", "")
STAT(inflight, GAUGE, "perimd_transactions_in_flight", "", "messages between the final dot and the reply to the client")
STAT(flow_waiting, GAUGE, "perimd_in_flow_waiting", "", "DATA commands waiting for the scanner's backlog before their 354 (in_flow_delay)")
STAT(flow_released, COUNTER, "perimd_in_flow_delayed_total", "end=\"released\"", "DATA commands that waited for the scanner's backlog, by how the wait ended: a scan ended, or in_flow_delay passed")
STAT(flow_expired, COUNTER, "perimd_in_flow_delayed_total", "end=\"expired\"", "")
STAT(smtp_errors, COUNTER, "perimd_smtp_error_replies_total", "", "error replies counted toward smtpd_soft/hard_error_limit")
STAT(close_quit, COUNTER, "perimd_sessions_closed_total", "reason=\"quit\"", "SMTP sessions ended, by why (refusals at connect are in perimd_connections_refused_total)")
STAT(close_eof, COUNTER, "perimd_sessions_closed_total", "reason=\"client_gone\"", "")
STAT(close_timeout, COUNTER, "perimd_sessions_closed_total", "reason=\"timeout\"", "")
STAT(close_errors, COUNTER, "perimd_sessions_closed_total", "reason=\"error_limit\"", "")
STAT(close_protocol, COUNTER, "perimd_sessions_closed_total", "reason=\"protocol\"", "")
STAT(close_shutdown, COUNTER, "perimd_sessions_closed_total", "reason=\"shutdown\"", "")

/* Messages (smtpd.c) */
STAT(msg_received, COUNTER, "perimd_messages_received_total", "", "messages whose final dot was received")
STAT(msg_discarded, COUNTER, "perimd_messages_discarded_total", "", "messages answered 250 but relayed to nobody: DISCARD by a milter, an access map, a transport or header_checks")
STAT(msg_relayed, COUNTER, "perimd_messages_relayed_total", "", "messages a backend accepted (2xx given to the client)")
STAT(rej_relay_denied, COUNTER, "perimd_recipients_rejected_total", "reason=\"relay_denied\"", "recipients refused at RCPT, by reason (one per RCPT refused)")
STAT(rej_unknown_recipient, COUNTER, "perimd_recipients_rejected_total", "reason=\"unknown_recipient\"", "")
STAT(rej_access, COUNTER, "perimd_recipients_rejected_total", "reason=\"access\"", "")
STAT(rej_rcpt_rfc, COUNTER, "perimd_recipients_rejected_total", "reason=\"rfc\"", "")
STAT(rej_dnsbl, COUNTER, "perimd_recipients_rejected_total", "reason=\"dnsbl\"", "")
STAT(rej_greylist, COUNTER, "perimd_recipients_rejected_total", "reason=\"greylist\"", "")
STAT(rej_rcpt_tempfail, COUNTER, "perimd_recipients_rejected_total", "reason=\"tempfail\"", "")
STAT(rej_rcpt_policy, COUNTER, "perimd_recipients_rejected_total", "reason=\"policy\"", "")
STAT(rej_rfc, COUNTER, "perimd_messages_rejected_total", "reason=\"rfc\"", "messages (transactions) refused at MAIL, DATA or the final dot, by reason; a refused recipient is in perimd_recipients_rejected_total")
STAT(rej_size, COUNTER, "perimd_messages_rejected_total", "reason=\"size\"", "")
STAT(rej_smuggling, COUNTER, "perimd_messages_rejected_total", "reason=\"smuggling\"", "")
STAT(rej_loop, COUNTER, "perimd_messages_rejected_total", "reason=\"loop\"", "")
STAT(rej_spool_full, COUNTER, "perimd_messages_rejected_total", "reason=\"spool_full\"", "")
STAT(rej_virus, COUNTER, "perimd_messages_rejected_total", "reason=\"virus\"", "")
STAT(rej_unscanned, COUNTER, "perimd_messages_rejected_total", "reason=\"not_fully_scanned\"", "")
STAT(rej_tempfail, COUNTER, "perimd_messages_rejected_total", "reason=\"tempfail\"", "")
STAT(rej_policy, COUNTER, "perimd_messages_rejected_total", "reason=\"policy\"", "")
STAT(rej_backend_reject, COUNTER, "perimd_messages_rejected_total", "reason=\"backend_reject\"", "")
STAT(rej_backend_tempfail, COUNTER, "perimd_messages_rejected_total", "reason=\"backend_tempfail\"", "")

/* Backends (relay.c) */
STAT(backend_connects, COUNTER, "perimd_backend_connections_total", "result=\"opened\"", "backend connections opened (TCP up) or failed")
STAT(backend_connect_fail, COUNTER, "perimd_backend_connections_total", "result=\"failed\"", "")
STAT(pool_waits, COUNTER, "perimd_backend_pool_waits_total", "", "messages that waited for a free backend connection")
STAT(pool_timeouts, COUNTER, "perimd_backend_pool_timeouts_total", "", "messages that waited relay_pool_wait in vain")
STAT(stream_done, COUNTER, "perimd_relay_streamed_total", "", "messages relayed while received (relay_while_receiving): the final dot or BDAT LAST went out on the stream")
STAT(stream_unavailable, COUNTER, "perimd_relay_stream_unavailable_total", "", "messages that could have been streamed but found no idle pooled backend connection at DATA (relayed after the final dot)")
STAT(stream_ab_refused, COUNTER, "perimd_relay_stream_abandoned_total", "reason=\"refused\"", "streams abandoned unfinished, by why: the message refused (size, bare LF, loop, scan, 8-bit undeclared), the client gone (disconnect, timeout, shutdown), the client too slow, the backend failed or refused before the end (the last two are replayed after the final dot)")
STAT(stream_ab_gone, COUNTER, "perimd_relay_stream_abandoned_total", "reason=\"client_gone\"", "")
STAT(stream_ab_slow, COUNTER, "perimd_relay_stream_abandoned_total", "reason=\"slow_client\"", "")
STAT(stream_ab_backend, COUNTER, "perimd_relay_stream_abandoned_total", "reason=\"backend\"", "")

/* DNS (dns.c, dnscache.c) */
STAT(dns_queries, COUNTER, "perimd_dns_queries_total", "", "DNS questions sent to the servers (cache misses not joined to one in flight)")
STAT(dns_cache_hits, COUNTER, "perimd_dns_cache_total", "result=\"hit\"", "DNS lookups answered from the cache, or not")
STAT(dns_cache_misses, COUNTER, "perimd_dns_cache_total", "result=\"miss\"", "")
STAT(dns_joined, COUNTER, "perimd_dns_joined_total", "", "cache misses that joined the same question already out, from this loop or another")
STAT(dns_timeouts, COUNTER, "perimd_dns_timeouts_total", "", "DNS lookups that got no answer in time")
STAT(dns_failures, COUNTER, "perimd_dns_failures_total", "", "DNS lookups that failed otherwise (SERVFAIL, refused, malformed)")

/* TLS credentials (tls.c): set at start and on every SIGHUP */
STAT(tls_reload_time, GAUGE, "perimd_tls_reload_last_timestamp_seconds", "", "when the TLS certificates and keys were last loaded or reloaded (start, SIGHUP), Unix time")
STAT(tls_reload_ok, GAUGE, "perimd_tls_reload_success", "", "1 when that last load succeeded, 0 when it failed and the old certificates stayed")
STAT(config_reload_time, GAUGE, "perimd_config_reload_last_timestamp_seconds", "", "when the configuration was last read (start, SIGHUP, a changed map file), Unix time")
STAT(config_reload_ok, GAUGE, "perimd_config_reload_success", "", "1 when that last read was taken, 0 when it was refused and the previous configuration runs on")

/* The fleet's shared state (fleet.c) */
STAT(fleet_sync_ok, COUNTER, "perimd_fleet_syncs_total", "result=\"ok\"", "syncs of the state shared with the other boxes (fleet_share_*), by outcome")
STAT(fleet_sync_failed, COUNTER, "perimd_fleet_syncs_total", "result=\"failed\"", "")
STAT(fleet_verdicts_written, COUNTER, "perimd_fleet_verdicts_total", "direction=\"written\"", "per-recipient verdicts written for the other boxes, or read from them")
STAT(fleet_verdicts_read, COUNTER, "perimd_fleet_verdicts_total", "direction=\"read\"", "")
STAT(fleet_dropped, COUNTER, "perimd_fleet_dropped_total", "", "verdicts or counts not shared: the queue between two syncs was full")

/* Shadow checks (policy.c) */
STAT(shadow_dnsbl, COUNTER, "perimd_shadow_rejects_total", "check=\"dnsbl\"", "recipients a check named in shadow_checks would have refused: logged, counted here, and let pass")
STAT(shadow_greylist, COUNTER, "perimd_shadow_rejects_total", "check=\"greylist\"", "")
STAT(shadow_recipient_maps, COUNTER, "perimd_shadow_rejects_total", "check=\"recipient_maps\"", "")
STAT(shadow_recipient_verify, COUNTER, "perimd_shadow_rejects_total", "check=\"recipient_verify\"", "")
STAT(shadow_client_access, COUNTER, "perimd_shadow_rejects_total", "check=\"client_access\"", "")
STAT(shadow_sender_access, COUNTER, "perimd_shadow_rejects_total", "check=\"sender_access\"", "")
STAT(shadow_recipient_access, COUNTER, "perimd_shadow_rejects_total", "check=\"recipient_access\"", "")
STAT(shadow_helo, COUNTER, "perimd_shadow_rejects_total", "check=\"helo\"", "")
STAT(shadow_client_hostname, COUNTER, "perimd_shadow_rejects_total", "check=\"client_hostname\"", "")
STAT(shadow_sender_domain, COUNTER, "perimd_shadow_rejects_total", "check=\"sender_domain\"", "")
STAT(shadow_policy_services, COUNTER, "perimd_shadow_rejects_total", "check=\"policy_services\"", "")

/* Policy services (psvc.c); requests by service and result are the
 * labelled perimd_policy_service_requests_total{service,result} */
STAT(psvc_err_connect, COUNTER, "perimd_policy_service_errors_total", "reason=\"connect\"", "policy service tries that got no answer, by why")
STAT(psvc_err_timeout, COUNTER, "perimd_policy_service_errors_total", "reason=\"timeout\"", "")
STAT(psvc_err_closed, COUNTER, "perimd_policy_service_errors_total", "reason=\"closed\"", "")
STAT(psvc_err_protocol, COUNTER, "perimd_policy_service_errors_total", "reason=\"protocol\"", "")
STAT(psvc_default, COUNTER, "perimd_policy_service_default_actions_total", "", "requests answered by smtpd_policy_service_default_action after the last try failed")
STAT(psvc_cached, COUNTER, "perimd_policy_service_cached_total", "", "answers reused for the very same request in a transaction")

/* Greylisting (grey.c) */
STAT(grey_new, COUNTER, "perimd_greylist_decisions_total", "result=\"new\"", "greylisting decisions by outcome (recipients)")
STAT(grey_early, COUNTER, "perimd_greylist_decisions_total", "result=\"early\"", "")
STAT(grey_passed, COUNTER, "perimd_greylist_decisions_total", "result=\"passed\"", "")
STAT(grey_awl, COUNTER, "perimd_greylist_decisions_total", "result=\"auto_whitelisted\"", "")
STAT(grey_whitelisted, COUNTER, "perimd_greylist_decisions_total", "result=\"whitelisted\"", "")
STAT(grey_quota, COUNTER, "perimd_greylist_decisions_total", "result=\"over_quota\"", "")
STAT(grey_full, COUNTER, "perimd_greylist_decisions_total", "result=\"store_full\"", "")
STAT(grey_evicted, COUNTER, "perimd_greylist_evicted_total", "", "unpassed greylist entries evicted to keep the store under greylist_max_entries")
STAT(grey_db_errors, COUNTER, "perimd_greylist_db_errors_total", "", "greylist database calls that failed")
STAT(grey_db_queries, COUNTER, "perimd_greylist_db_queries_total", "", "round trips to a mysql: greylist database (a multi-statement query is one)")
STAT(grey_db_batches, COUNTER, "perimd_greylist_db_batches_total", "", "greylist store calls that decided several RCPTs waiting at once (one transaction, one round trip)")
STAT(grey_db_batched, COUNTER, "perimd_greylist_db_batched_total", "", "RCPTs decided in those calls")
STAT(grey_awl_skipped, COUNTER, "perimd_greylist_awl_counts_skipped_total", "", "accepted messages not sent to the greylist store: it would not count their network yet (its last count is within greylist_auto_whitelist_interval)")
STAT(grey_db_retry_conflict, COUNTER, "perimd_greylist_db_retries_total", "reason=\"conflict\"", "greylist database statements tried again: a write conflict (deadlock 1213, Galera certification) or lock wait, or a node unusable (connection lost, WSREP not ready 1047: the next host)")
STAT(grey_db_retry_node, COUNTER, "perimd_greylist_db_retries_total", "reason=\"node\"", "")

/* LDAP maps (maps_ldap.c; open connections per server: the family perimd_ldap_connections) */
STAT(ldap_found, COUNTER, "perimd_ldap_lookups_total", "result=\"found\"", "directory searches of ldap: maps by answer (cached answers and keys not eligible are not searched)")
STAT(ldap_notfound, COUNTER, "perimd_ldap_lookups_total", "result=\"notfound\"", "")
STAT(ldap_error, COUNTER, "perimd_ldap_lookups_total", "result=\"error\"", "")
STAT(ldap_errors, COUNTER, "perimd_ldap_errors_total", "", "failed LDAP operations: connects, binds and searches (a lookup retried or failed over counts each)")
STAT(ldap_conns, GAUGE, "perimd_ldap_open_connections", "", "open connections to LDAP servers, all maps and servers (the sum of perimd_ldap_connections; graphed)")

/* Milters (milter.c) */
STAT(milter_errors, COUNTER, "perimd_milter_errors_total", "", "milter conversations that failed (down, timeout, broken protocol): milter_default_action applied")

/* The scanner process (av_sup.c, av_scanner = libclamav) */
STAT(av_scans_killed, COUNTER, "perimd_av_scans_killed_total", "", "scans whose scanning process was killed for running past av_timeout + 5 s (their messages had followed av_fail_action at av_timeout); each process is replaced, the other scans go on")
STAT(av_scanner_restarts, COUNTER, "perimd_av_scanner_restarts_total", "", "whole restarts of the scanner process (it died or stopped answering): every scan in flight fails and the signatures load again")

/* Histograms */
HIST(latency, "perimd_message_latency_seconds", "end to end: final dot received to reply sent")
HIST(backend, "perimd_backend_transaction_seconds", "backend attempt that decided a message: connection taken to verdict")
HIST(ldap_lookup, "perimd_ldap_lookup_seconds", "an ldap: map lookup of one key: pool, connects, failover and search")
