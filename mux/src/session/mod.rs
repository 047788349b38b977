//! A yamux session, in layers:
//!
//! * `core`: the connection core without I/O — the stream table, the send queue and every
//!   protocol rule (frames in, frames out, timer expiry as calls), unit-tested on its own;
//! * `lifecycle`: a stream's close sequence as one enum and a transition function;
//! * `flow`: the window arithmetic;
//! * `driver`: the thin async driver (reader, writer, keepalive and timer tasks);
//! * `handle`: [`Control`], [`Incoming`] and [`Stream`], the application's side.
//!
//! Behaviour follows hashicorp/yamux v0.1.2 where the agentserver server depends on it, with
//! one deliberate difference: an inbound stream is acknowledged (window update with `ACK`) as
//! soon as its `SYN` arrives, before the application accepts it, so no application delay can
//! trip the peer's stream-open timeout.

mod config;
mod core;
mod driver;
mod error;
mod flow;
mod handle;
mod lifecycle;

pub use config::{Config, INITIAL_WINDOW, Mode};
pub use driver::Session;
pub use error::{Error, ProtocolError, SessionError};
pub use handle::{Control, Incoming, Stream};
