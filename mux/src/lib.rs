//! yamux sessions over a byte stream, compatible with hashicorp/yamux v0.1.2, and the
//! agentserver stream header that starts every tunnel stream.
