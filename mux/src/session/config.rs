//! Session settings and which end of the session this is.

use std::time::Duration;

/// The initial stream window both sides assume (spec: 256 KiB).
pub const INITIAL_WINDOW: u32 = 256 * 1024;

/// Which end of the session this is: the client opens odd stream ids, the server even ones.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Opens odd stream ids (the agent).
    Client,
    /// Opens even stream ids (the agentserver server).
    Server,
}

impl Mode {
    /// The first stream id this side opens.
    pub(super) fn first_stream_id(self) -> u32 {
        match self {
            Mode::Client => 1,
            Mode::Server => 2,
        }
    }

    /// True when `id` is one the peer may open (never 0).
    pub(super) fn is_remote_id(self, id: u32) -> bool {
        id != 0
            && match self {
                Mode::Client => id.is_multiple_of(2),
                Mode::Server => !id.is_multiple_of(2),
            }
    }
}

/// Session settings. The defaults match the server's hashicorp configuration (spec §6.4).
#[derive(Clone, Debug)]
pub struct Config {
    /// Inbound streams waiting for [`Incoming::next`](super::Incoming::next); more are reset.
    /// Also the limit of outbound streams that may wait for their `ACK` at once. Default 256.
    pub accept_backlog: usize,
    /// The receive window of each stream (at least [`INITIAL_WINDOW`]). Default 256 KiB.
    pub max_stream_window: u32,
    /// Largest data frame body this side sends. Default 64 KiB.
    pub max_frame_size: u32,
    /// Close the whole session when an outbound stream's `SYN` is not acknowledged within this
    /// time (hashicorp's `StreamOpenTimeout`). Default 75 s; `None` disables it.
    pub stream_open_timeout: Option<Duration>,
    /// Reset a stream when the peer has not closed its side this long after ours. Default 5 min.
    pub stream_close_timeout: Option<Duration>,
    /// Send a ping this often and close the session when one is not answered within
    /// `write_timeout` (10 s when that is `None`). Default `None` (disabled, as upstream v0.27.2+).
    pub keepalive_interval: Option<Duration>,
    /// Close the session when one write to the connection takes longer than this (a dead
    /// peer). Default 10 s (hashicorp's `ConnectionWriteTimeout`).
    pub write_timeout: Option<Duration>,
    /// Bytes of data frames that may wait in the send queue before stream writes wait.
    /// Default 1 MiB.
    pub write_queue_limit: usize,
    /// Window auto-tuning: the receive window a stream may grow to, doubling each time the
    /// peer has used three quarters of it while the application kept up (a link whose
    /// bandwidth-delay product exceeds the window). Default [`INITIAL_WINDOW`], raised to
    /// `max_stream_window`: no growth, as hashicorp.
    pub grown_window_limit: u32,
    /// Window auto-tuning: the bytes of window beyond `max_stream_window` that all streams
    /// together may be granted, which bounds what the session buffers. Default 0.
    pub grown_window_budget: usize,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            accept_backlog: 256,
            max_stream_window: INITIAL_WINDOW,
            max_frame_size: 64 * 1024,
            stream_open_timeout: Some(Duration::from_secs(75)),
            stream_close_timeout: Some(Duration::from_secs(300)),
            keepalive_interval: None,
            write_timeout: Some(Duration::from_secs(10)),
            write_queue_limit: 1024 * 1024,
            grown_window_limit: INITIAL_WINDOW,
            grown_window_budget: 0,
        }
    }
}

impl Config {
    /// The settings with every value brought into its valid range.
    pub(super) fn normalized(mut self) -> Self {
        self.max_stream_window = self.max_stream_window.max(INITIAL_WINDOW);
        self.grown_window_limit = self.grown_window_limit.max(self.max_stream_window);
        self.max_frame_size = self.max_frame_size.clamp(1, 16 * 1024 * 1024);
        self.accept_backlog = self.accept_backlog.max(1);
        self
    }
}
