/*
 * conf_params.h - THE parameter table, one line per parameter, nothing else.
 *
 * PARAM(type, name, default, min, max, choices, doc)
 *   type: BOOL INT TIME SIZE STR ENUM LIST MAP MAPLIST (see conf.h)
 *   min/max: bounds for INT/TIME/SIZE (TIME in ms, SIZE in bytes); 0,0 = none,
 *            max 0 alone = no upper bound
 *   default: text as written in the file ("300s", "$myhostname ESMTP")
 *   choices: "a|b" for ENUM, else NULL; each ENUM has its C enum in
 *            conf_enum.h (enumerators in this order), set at load as NAME_e
 *
 * RESTART(name), after a row on its line: the parameter is read once at
 * start (sockets, threads, directories, the spool); a SIGHUP that changes
 * it logs "reload: NAME: changed value takes effect after restart" and the
 * running value stays. A row without it is applied by a reload.
 *
 * Included with PARAM (and RESTART, or it is ignored) defined; no include
 * guard on purpose.
 */
#ifndef RESTART
#define RESTART(name)
#define CONF_PARAMS_RESTART_LOCAL
#endif
/* One row per line, however long: */
/* clang-format off */

/* Listening and sessions */
PARAM(LIST, smtpd_listen, "0.0.0.0:25, [::]:25", 0, 0, NULL, "addresses to accept SMTP on") RESTART(smtpd_listen)
PARAM(STR, myhostname, "", 0, 0, NULL, "host name used in the banner, EHLO and Received (default: the system host name)")
PARAM(STR, smtpd_banner, "$myhostname ESMTP", 0, 0, NULL, "text after 220 in the greeting")
PARAM(INT, max_sessions, "512", 1, 1000000, NULL, "concurrent SMTP sessions in all; beyond it new clients get 421 4.3.2")
PARAM(INT, io_threads, "0", 0, 256, NULL, "event-loop threads; 0 = one per CPU") RESTART(io_threads)
PARAM(INT, smtpd_client_connection_count_limit, "50", 0, 1000000, NULL, "concurrent sessions per client IP (0 = no limit)")
PARAM(INT, smtpd_client_connection_rate_limit, "0", 0, 1000000, NULL, "new sessions per client IP per minute (0 = no limit); beyond it 421 4.7.0")
PARAM(TIME, smtpd_greet_pause, "0s", 0, 60000, NULL, "wait before the banner; a client that talks first gets 554 5.5.1 and is disconnected")
PARAM(TIME, smtpd_timeout, "300s", 1000, 86400000, NULL, "idle time allowed while waiting for the client")
PARAM(INT, smtpd_recipient_limit, "1000", 1, 1000000, NULL, "recipients per transaction")
PARAM(SIZE, message_size_limit, "25m", 1024, 4294967295LL, NULL, "largest message accepted; advertised in EHLO SIZE")
PARAM(INT, smtpd_command_line_limit, "2048", 512, 1048576, NULL, "longer command lines get 500 5.5.2")
PARAM(ENUM, smtpd_forbid_bare_newline, "normalize", 0, 0, "normalize|reject", "bare LF in DATA: normalize to CRLF, or reject")
PARAM(ENUM, smtpd_upstream_proxy_protocol, "", 0, 0, "|haproxy", "empty, or haproxy: PROXY v1/v2 header from smtpd_upstream_proxy_clients")
PARAM(LIST, smtpd_upstream_proxy_clients, "127.0.0.1", 0, 0, NULL, "addresses (or CIDR networks) allowed to send a PROXY header")
PARAM(TIME, smtpd_upstream_proxy_timeout, "5s", 100, 3600000, NULL, "how long the PROXY header may take to arrive")
PARAM(INT, smtpd_soft_error_limit, "10", 0, 1000, NULL, "errors after which each error reply is delayed")
PARAM(INT, smtpd_hard_error_limit, "20", 1, 1000, NULL, "errors after which the session is closed")
PARAM(TIME, smtpd_error_sleep_time, "1s", 0, 60000, NULL, "delay of each error reply past the soft limit")
PARAM(TIME, shutdown_timeout, "30s", 0, 3600000, NULL, "on SIGTERM, how long open sessions may finish")
PARAM(ENUM, smtpd_tls_security_level, "may", 0, 0, "none|may", "may: offer STARTTLS when smtpd_tls_cert_file and smtpd_tls_key_file are set; none: never")
PARAM(STR, smtpd_tls_cert_file, "", 0, 0, NULL, "PEM file: the server certificate, then its chain")
PARAM(STR, smtpd_tls_key_file, "", 0, 0, NULL, "PEM file: the RSA or EC private key of smtpd_tls_cert_file")
PARAM(STR, mail_owner, "perimd", 0, 0, NULL, "user (or numeric uid[:gid]) to run as after binding ports") RESTART(mail_owner)
PARAM(STR, data_directory, "/var/lib/perimd", 0, 0, NULL, "state: databases, statistics history") RESTART(data_directory)
PARAM(STR, body_spool_directory, "/dev/shm/perimd", 0, 0, NULL, "where bodies over body_memory_limit spill") RESTART(body_spool_directory)
PARAM(SIZE, body_memory_limit, "1m", 0, 4294967295LL, NULL, "per message, kept in memory below this") RESTART(body_memory_limit)
PARAM(SIZE, body_spool_limit, "1g", 1024, 0, NULL, "all bodies together; beyond it new DATA gets 452 4.3.1") RESTART(body_spool_limit)

/* Relay control and routing */
PARAM(MAPLIST, relay_domains, "", 0, 0, NULL, "domains this MX accepts mail for (list or map)")
PARAM(LIST, relay_backends, "", 0, 0, NULL, "default backends, in failover order")
PARAM(MAP, transport_maps, "", 0, 0, NULL, "recipient domain to backend list (perimd's form or Postfix's smtp:[host]:port), overriding relay_backends")
PARAM(INT, relay_destination_concurrency_limit, "100", 1, 100000, NULL, "open connections per backend")
PARAM(TIME, relay_pool_wait, "30s", 0, 540000, NULL, "how long a message may wait for a free backend connection")
PARAM(TIME, relay_connect_timeout, "30s", 100, 540000, NULL, "backend connect and greeting timeout")
PARAM(TIME, relay_timeout, "120s", 100, 540000, NULL, "backend reply timeout for each command stage")
PARAM(TIME, relay_data_done_timeout, "300s", 100, 540000, NULL, "backend reply timeout after the final dot")
PARAM(TIME, relay_idle_timeout, "30s", 0, 3600000, NULL, "an idle pooled backend connection is closed after this")
PARAM(BOOL, relay_recipient_verify, "no", 0, 0, NULL, "verify a recipient that relay_recipient_maps does not settle by a callout to its backend, cached")
PARAM(TIME, relay_verify_positive_ttl, "7d", 0, 315360000000LL, NULL, "how long a recipient a callout accepted is accepted without a new callout")
PARAM(TIME, relay_verify_negative_ttl, "3h", 0, 315360000000LL, NULL, "how long a recipient a backend refused with a mailbox code (5.1.1 5.1.2 5.1.3 5.1.6 5.1.10) is refused at RCPT to every sender but role accounts")
PARAM(TIME, relay_verify_pair_ttl, "3h", 4001000, 315360000000LL, NULL, "how long a backend's other 5xx refusal of a recipient is refused at RCPT to the same sender; above 4000s (Postfix's maximal_backoff_time) so a retry meets it")
PARAM(TIME, relay_verify_defer_ttl, "75m", 4001000, 315360000000LL, NULL, "how long a backend's 4.2.2 (mailbox full, every sender) or other 4xx for one recipient of a partly accepted message (same sender, answered once) is answered at RCPT")
PARAM(ENUM, relay_tls_security_level, "may", 0, 0, "none|may|encrypt|verify", "STARTTLS to backends: none, may (when offered), encrypt (required), verify (required, certificate checked)")
PARAM(STR, relay_tls_CAfile, "", 0, 0, NULL, "PEM file of trust anchors for relay_tls_security_level = verify")
PARAM(STR, relay_tls_verify_name, "", 0, 0, NULL, "name the backend certificate must carry when the backend is written as an address")
PARAM(BOOL, relay_scan_overlap, "no", 0, 0, NULL, "relay while av_scanner scans: envelope and body (BDAT chunks, to a backend offering CHUNKING) go out during the scan, the transaction is completed (BDAT LAST) only after a clean verdict, else abandoned by RSET; never with smtpd_milters or header_checks")
PARAM(BOOL, relay_while_receiving, "no", 0, 0, NULL, "relay the body while the client sends it, over an idle pooled backend connection only (BDAT chunks, or DATA without CHUNKING); the transaction is completed only after every end-of-data verdict is clean, else abandoned (RSET, or the connection closed inside DATA); never with smtpd_milters or header_checks")
PARAM(BOOL, relay_reply_show_backend, "no", 0, 0, NULL, "name the backend's address in replies to clients (for testing; the log always has it)")
PARAM(INT, smtp_line_length_limit, "998", 0, 1000000, NULL, "message lines longer than this (CRLF not counted) are folded with CR LF SP on the way to a backend, as Postfix does; 0 = never")
PARAM(LIST, relay_xclient_hosts, "", 0, 0, NULL, "backend addresses (or CIDR networks) that get the client by XCLIENT when they offer it and do not take XFORWARD; the backend then judges the client itself, and the connection is not reused (Postfix: smtpd_authorized_xclient_hosts)")
PARAM(LIST, relay_xforward_hosts, "", 0, 0, NULL, "backend addresses (or CIDR networks) that get the client's name, address, port, HELO and protocol by XFORWARD before each MAIL when they offer it (Postfix: smtpd_authorized_xforward_hosts on the backend)")

/* Recipient and client rules */
PARAM(LIST, role_accounts, "postmaster, abuse, hostmaster, webmaster", 0, 0, NULL, "local parts always accepted for relay domains, exempt from client, HELO, sender, DNSBL and greylisting checks (RFC 2142)")
PARAM(MAP, relay_recipient_maps, "", 0, 0, NULL, "when set, a recipient must be found here (user@domain, then the @domain catch-all) or verified, else 550 5.1.1")
PARAM(STR, recipient_delimiter, "", 0, 0, NULL, "characters that end a local part's base (user+ext@domain): relay_recipient_maps is then also asked for user@domain, as in Postfix")
PARAM(MAP, client_access_maps, "", 0, 0, NULL, "client IP (CIDR keys in file: maps) to an access(5) action: OK, PERMIT, DUNNO, REJECT [text], 4NN/5NN text, DEFER, DEFER_IF_PERMIT, DEFER_IF_REJECT, WARN, DISCARD, PREPEND")
PARAM(MAP, sender_access_maps, "", 0, 0, NULL, "sender address (user@domain, domain, parents, user@) to an access(5) action, as client_access_maps")
PARAM(MAP, recipient_access_maps, "", 0, 0, NULL, "recipient address to an access(5) action, as client_access_maps; OK exempts it as a role account")
PARAM(MAP, header_checks, "", 0, 0, NULL, "regexp: table (Postfix header_checks(5)) applied to each message header after DATA, before the virus scan: REJECT [text], WARN, IGNORE, PREPEND, DISCARD, DUNNO")
PARAM(BOOL, strict_rfc821_envelopes, "yes", 0, 0, NULL, "MAIL FROM and RCPT TO addresses must be in angle brackets")
PARAM(BOOL, smtpd_helo_required, "yes", 0, 0, NULL, "MAIL before HELO/EHLO gets 503 5.5.1")
PARAM(BOOL, reject_invalid_helo_hostname, "yes", 0, 0, NULL, "a HELO name that is neither a domain nor an address literal is refused at RCPT with 501 5.5.2")

/* Content scanning */
PARAM(STR, av_scanner, "none", 0, 0, NULL, "none, libclamav (a scanner process), clamd:/path/to/socket or clamd:HOST:PORT")
PARAM(STR, clamav_database_directory, "/var/lib/clamav", 0, 0, NULL, "signature database of av_scanner = libclamav")
PARAM(INT, stats_virus_names_max, "200", 1, 255, NULL, "most virus names perimd_viruses_total counts by name; the rest count as name=\"other\"")
PARAM(INT, av_threads, "0", 0, 256, NULL, "scanning worker processes of the scanner; 0 = one per CPU")
PARAM(TIME, av_timeout, "120s", 1000, 540000, NULL, "per scan; a scanner hung past it is restarted")
PARAM(TIME, in_flow_delay, "10s", 0, 60000, NULL, "while the scanner's backlog is full, DATA waits at most this long for a scan to end before its 354 (as Postfix's in_flow_delay); 0 = never")
PARAM(SIZE, av_max_size, "50m", 1024, 4294967295LL, NULL, "larger messages are not scanned but follow av_oversize_action")
PARAM(ENUM, av_oversize_action, "reject", 0, 0, "reject|tempfail|accept", "a message over av_max_size: reject (552 5.3.4), tempfail (451 4.3.0) or accept (logged)")
PARAM(ENUM, av_fail_action, "tempfail", 0, 0, "tempfail|accept", "scanner error, timeout or not running: tempfail (451 4.3.0) or accept (logged)")
PARAM(INT, av_max_recursion, "17", 1, 100, NULL, "libclamav MaxRecursion: archive nesting depth scanned; deeper follows av_oversize_action")
PARAM(INT, av_max_files, "10000", 1, 1000000, NULL, "libclamav MaxFiles: files scanned inside one message; more follows av_oversize_action")
PARAM(SIZE, av_max_scan_size, "400m", 1024, 4294967295LL, NULL, "libclamav MaxScanSize: data scanned per message, decoded parts and archive members added up")
PARAM(SIZE, av_max_file_size, "100m", 1024, 2147483647LL, NULL, "libclamav MaxFileSize: largest decoded part or archive member scanned")
PARAM(TIME, av_max_scan_time, "0", 0, 540000, NULL, "libclamav MaxScanTime; 0 = a second below av_timeout (libclamav's own 120s is not below the default av_timeout)")
PARAM(ENUM, av_alert_encrypted, "archive", 0, 0, "no|archive|document|yes", "encrypted archives (archive), documents (document), both (yes) or none (no) are refused as unscannable")
PARAM(ENUM, av_reload_mode, "swap", 0, 0, "swap|inplace", "signature reload: swap (new engine built beside the old; memory doubles for the load) or inplace (old engine freed first; scans wait for the new one)")

/* Milters (milter.c), with Postfix's names and defaults */
PARAM(LIST, smtpd_milters, "", 0, 0, NULL, "content filters speaking the milter protocol, inet:HOST:PORT or unix:/path (or { ADDRESS, name=value ... } with settings of its own: connect_timeout, command_timeout, content_timeout, default_action, protocol), asked in order at each SMTP stage")
PARAM(ENUM, milter_default_action, "tempfail", 0, 0, "tempfail|accept|reject", "a milter that is down, times out or breaks the protocol: tempfail (451 4.3.5), reject (550 5.5.0) or accept (left out of the transaction); quarantine is refused (perimd has no queue)")
PARAM(INT, milter_protocol, "6", 2, 6, NULL, "milter protocol version offered (2 to 6)")
PARAM(TIME, milter_connect_timeout, "30s", 100, 540000, NULL, "time to connect to a milter")
PARAM(TIME, milter_command_timeout, "30s", 100, 540000, NULL, "time a milter may take to answer a command")
PARAM(TIME, milter_content_timeout, "300s", 100, 540000, NULL, "time a milter may take to answer a body chunk or end of message")
PARAM(LIST, milter_connect_macros, "j {daemon_name} {daemon_addr} v _", 0, 0, NULL, "macros sent with connect")
PARAM(LIST, milter_helo_macros, "{tls_version} {cipher} {cipher_bits} {cert_subject} {cert_issuer}", 0, 0, NULL, "macros sent with HELO")
PARAM(LIST, milter_mail_macros, "i {auth_type} {auth_authen} {auth_author} {mail_addr} {mail_host} {mail_mailer}", 0, 0, NULL, "macros sent with MAIL FROM")
PARAM(LIST, milter_rcpt_macros, "i {rcpt_addr} {rcpt_host} {rcpt_mailer}", 0, 0, NULL, "macros sent with RCPT TO")
PARAM(LIST, milter_data_macros, "i", 0, 0, NULL, "macros sent with DATA")
PARAM(LIST, milter_end_of_header_macros, "i", 0, 0, NULL, "macros sent at the end of the headers")
PARAM(LIST, milter_end_of_data_macros, "i", 0, 0, NULL, "macros sent at the end of the message")

/* DNS */
PARAM(LIST, dns_servers, "", 0, 0, NULL, "DNS servers (address or address:port); empty = /etc/resolv.conf")
PARAM(TIME, dns_timeout, "5s", 100, 60000, NULL, "wait for one DNS server's answer")
PARAM(INT, dns_retries, "2", 0, 10, NULL, "tries after the first; a lookup gives up after dns_timeout x (dns_retries + 1)")
PARAM(INT, dns_cache_size, "100000", 0, 100000000, NULL, "DNS answers cached (0 = no cache)")
PARAM(TIME, dns_cache_min_ttl, "30s", 0, 86400000, NULL, "shortest time a DNS answer is cached")
PARAM(TIME, dns_cache_max_ttl, "1d", 1000, 604800000, NULL, "longest time a DNS answer is cached")
PARAM(BOOL, reject_unknown_sender_domain, "yes", 0, 0, NULL, "refuse a sender domain with neither MX nor A/AAAA, or with a null MX")
PARAM(BOOL, reject_unknown_reverse_client_hostname, "no", 0, 0, NULL, "refuse a client address without a PTR record")
PARAM(BOOL, reject_unknown_client_hostname, "no", 0, 0, NULL, "refuse a client whose PTR name does not resolve back to its address (FCrDNS)")
PARAM(LIST, dnsbl_sites, "", 0, 0, NULL, "DNS block lists: zone[=filter][*weight]")
PARAM(INT, dnsbl_threshold, "1", 1, 1000000, NULL, "summed weight of the listing block lists that refuses a client")
PARAM(LIST, dnswl_sites, "", 0, 0, NULL, "DNS allow lists: zone[=filter]; a listed client skips DNSBL and greylisting")

/* Greylisting (grey.c) */
PARAM(BOOL, greylist, "yes", 0, 0, NULL, "greylist (client network, sender, recipient) triplets at RCPT")
PARAM(STR, greylist_database, "sqlite:$data_directory/greylist.db", 0, 0, NULL, "sqlite:PATH (WAL mode) or mysql:FILE (hosts, port, user, password, dbname), shared by a fleet")
PARAM(TIME, greylist_delay, "300s", 0, 86400000, NULL, "a triplet must wait this long before a retry passes")
PARAM(TIME, greylist_max_age, "2d", 1000, 315360000000LL, NULL, "a retry after this long starts over")
PARAM(TIME, greylist_retention, "35d", 1000, 315360000000LL, NULL, "how long a passed triplet or auto-whitelisted client network is remembered")
PARAM(INT, greylist_ipv4_netmask, "24", 8, 32, NULL, "IPv4 clients are grouped per network of this prefix length")
PARAM(INT, greylist_ipv6_netmask, "64", 16, 128, NULL, "IPv6 clients are grouped per network of this prefix length")
PARAM(INT, greylist_auto_whitelist_count, "5", 0, 1000000, NULL, "accepted messages after which a client network is no longer greylisted (0 = never)")
PARAM(TIME, greylist_auto_whitelist_interval, "1h", 0, 315360000000LL, NULL, "at most one accepted message per client network counts per this interval")
PARAM(STR, greylist_whitelist_clients, "", 0, 0, NULL, "file of clients never greylisted (postgrey format: host name suffixes, /regex/, CIDR)")
PARAM(STR, greylist_whitelist_recipients, "", 0, 0, NULL, "file of recipients never greylisted (postgrey format: user@, domain, user@domain, /regex/)")
PARAM(ENUM, greylist_fail_action, "accept", 0, 0, "accept|tempfail", "when the greylist database fails: accept, or tempfail (451 4.3.0)")
PARAM(INT, greylist_new_triplet_limit, "1000", 0, 100000000, NULL, "new triplets a client network (greylist_ipv4_netmask / greylist_ipv6_netmask) may create per greylist_new_triplet_interval; past it 451 4.7.1 (0 = no limit)")
PARAM(TIME, greylist_new_triplet_interval, "1h", 1000, 315360000000LL, NULL, "the window of greylist_new_triplet_limit")
PARAM(INT, greylist_max_entries, "2000000", 0, 1000000000, NULL, "triplets the store holds at most; past it unpassed entries are evicted, over-quota networks' first (0 = no bound)")
PARAM(STR, policy_listen, "", 0, 0, NULL, "address for the Postfix policy delegation protocol (check_policy_service): 127.0.0.1:2525, inet:127.0.0.1:2525 or unix:/path; empty = none") RESTART(policy_listen)

/* The fleet (policy.c, fleet.c) */
PARAM(BOOL, fleet_share_recipient_verdicts, "no", 0, 0, NULL, "share per-recipient verdicts (a callout's acceptance, a mailbox refusal) with the other boxes through the mysql: greylist_database")
PARAM(BOOL, fleet_share_client_limits, "no", 0, 0, NULL, "apply smtpd_client_connection_count_limit and _rate_limit to a client's sessions on all boxes, through the mysql: greylist_database")
PARAM(TIME, fleet_sync_interval, "1s", 100, 60000, NULL, "how often a box writes its news and reads the other boxes' (one database round trip)")
PARAM(LIST, shadow_checks, "", 0, 0, NULL, "RCPT checks that only log and count what they would refuse and let the recipient pass: dnsbl, greylist, recipient_maps, recipient_verify, client_access, sender_access, recipient_access, helo, client_hostname, sender_domain, policy_services (never the virus scanner)")

/* Policy services asked at RCPT (psvc.c), as Postfix's check_policy_service */
PARAM(LIST, smtpd_policy_services, "", 0, 0, NULL, "Postfix policy delegation services asked at RCPT, in order: inet:HOST:PORT, HOST:PORT or unix:/path (a preceding check_policy_service is allowed); the first answer other than DUNNO decides")
PARAM(TIME, smtpd_policy_service_timeout, "100s", 100, 3600000, NULL, "time a policy service has for one try: waiting for a connection, connecting, the request and its answer")
PARAM(STR, smtpd_policy_service_default_action, "451 4.3.5 Server configuration problem", 0, 0, NULL, "the action taken when a policy service gave no answer after smtpd_policy_service_try_limit tries: DUNNO, OK, REJECT, DEFER or a 4NN/5NN reply")
PARAM(TIME, smtpd_policy_service_max_idle, "300s", 1000, 86400000, NULL, "an idle pooled connection to a policy service is closed after this")
PARAM(TIME, smtpd_policy_service_max_ttl, "1000s", 1000, 86400000, NULL, "a connection to a policy service is not used for new requests once this old")
PARAM(INT, smtpd_policy_service_request_limit, "0", 0, 1000000000, NULL, "requests per connection to a policy service, then it is closed (0 = no limit)")
PARAM(INT, smtpd_policy_service_try_limit, "2", 1, 100, NULL, "tries of a request to a policy service before smtpd_policy_service_default_action")
PARAM(TIME, smtpd_policy_service_retry_delay, "1s", 0, 600000, NULL, "wait between two tries of a request to a policy service")
PARAM(INT, smtpd_policy_service_connection_limit, "20", 1, 10000, NULL, "connections to each policy service per io thread; further requests wait their turn (within smtpd_policy_service_timeout)")
PARAM(STR, smtpd_policy_service_policy_context, "", 0, 0, NULL, "sent to policy services as the policy_context attribute (one service may set its own in { })")

/* Observability */
PARAM(STR, stats_listen, "127.0.0.1:9125", 0, 0, NULL, "HTTP address for /metrics, /healthz and the graphs (empty = none)") RESTART(stats_listen)
PARAM(ENUM, log_to, "syslog", 0, 0, "syslog|stderr", "where to log (-f implies stderr)") RESTART(log_to)
PARAM(ENUM, log_format, "text", 0, 0, "text|json", "log lines as Postfix-like text, or one JSON object per line")

/* clang-format on */
#ifdef CONF_PARAMS_RESTART_LOCAL
#undef RESTART
#undef CONF_PARAMS_RESTART_LOCAL
#endif
