//! Dispatch: from a session type or backend name to a `Backend`, and running tasks on it.
