//! Several sandboxes in one host: what to serve ([`config`]) and serving them together
//! ([`supervisor`]): each sandbox keeps its own registration, session file, tunnel, intake and
//! outbox; all share one task capacity and one shutdown.

pub mod config;
pub mod supervisor;
