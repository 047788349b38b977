//! System info and capability probing (spec §7.1–7.2), GPU detection included.
