//! Task intake (spec §8, §9.1–9.3): polling, the CCR v2 bridge client, the durable status outbox.
