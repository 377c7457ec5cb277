//! Integration tests in one binary (one module per behaviour): each starts the real `turnd`
//! on loopback and talks to it with implementations nobody here wrote (the webrtc-rs `stun`
//! and `turn` crates, coturn's `turnutils_uclient`, Chromium, GStreamer webrtcbin, aiortc).
//! One binary links once, where one per file linked seventy times.
//! `tests/hot_path_alloc.rs` stays a binary of its own: it installs a counting allocator.

mod admin_http;
mod clients;
mod common;
mod lifecycle_util;

mod abuse_caps;
mod abuse_garbage_flood;
mod abuse_rate_limit;
mod abuse_silent_stream_clients;
mod abuse_unauth_flood;
mod admin_api;
mod admin_lifecycle;
mod admin_stalled_connections;
mod aiortc;
mod auth_rfc8489;
mod bandwidth_limit;
mod binding;
mod browser;
mod call_quality;
mod channel_bind;
mod channel_numbers;
mod check_config;
mod config_examples;
mod connection_limits;
mod connection_limits_ipv6;
mod connection_timeouts;
mod coturn_uclient;
mod crowd_and_spoof;
mod drain;
mod first_datagram_after_allocate;
mod fuzz_corpus;
mod grafana_dashboard;
mod gstreamer_webrtcbin;
mod io_uring_sends;
mod ipv6;
mod listen_address_in_use;
mod log_format;
mod metrics;
mod migrate_coturn;
mod peer_policy;
mod peer_policy_table;
mod proxy_protocol;
mod quota_overrides;
mod readme_start_command;
mod relay_address;
mod relay_between_allocations;
mod reload;
mod reload_log_level;
mod reload_restart_keys;
mod rest_credentials;
mod rest_expiry_ends_refresh;
mod rest_max_ttl;
mod sd_notify;
mod secrets_not_logged;
mod slow_reader;
mod startup_errors;
mod stream_framing;
mod stream_metrics;
mod stream_read_buffer_memory;
mod systemd_unit;
mod tcp_allocation_6062;
mod tcp_connection_close;
mod tcp_ipv6;
mod tcp_relay;
mod tls_cert_reload;
mod tls_mux;
mod tls_relay;
mod tls_startup_errors;
mod udp_offload;
mod udp_relay;
mod unpredictable_ids;
mod wrong_password;
