//! The built-in `opencode` backend (work in progress).
