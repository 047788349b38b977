//! The crate's integration tests, one test binary, against real git in temp directories.

mod cap;
mod concurrent;
mod finish;
mod open;
mod recover;
mod session;
mod support;
