//! The WebSocket + yamux tunnel to the server (spec §6): control, HTTP and terminal streams.
