//! Local state under ~/.agentserver: sessions, the legacy registry, locking and atomic writes (spec §4).
