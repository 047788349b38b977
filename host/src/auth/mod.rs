//! OAuth 2.0 device flow login, the credentials file and token refresh (spec §2), and sandbox registration (§3.1).
