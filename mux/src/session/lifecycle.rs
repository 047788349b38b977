//! The close lifecycle of one stream, as one state and one transition function.
//!
//! yamux closes each direction on its own (`FIN`) or both at once (`RST`); a reset wins over
//! everything that comes after it.

/// Where a stream is in its close sequence.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Lifecycle {
    /// Both directions open.
    Open,
    /// We sent `FIN`; the peer may still send.
    LocalClosed,
    /// The peer sent `FIN`; we may still send.
    RemoteClosed,
    /// Both sides sent `FIN`.
    Closed,
    /// Either side sent `RST`: nothing more is read or written.
    Reset,
}

/// What happened to a stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Transition {
    /// We queued our `FIN`.
    FinSent,
    /// The peer's `FIN` arrived.
    FinReceived,
    /// A `RST` was sent or received, or the close timeout fired.
    Reset,
}

impl Lifecycle {
    /// The state after `event`.
    pub(super) fn next(self, event: Transition) -> Self {
        use Lifecycle::*;
        match (self, event) {
            (Reset, _) | (_, Transition::Reset) => Reset,
            (Open, Transition::FinSent) => LocalClosed,
            (Open, Transition::FinReceived) => RemoteClosed,
            (RemoteClosed, Transition::FinSent) | (LocalClosed, Transition::FinReceived) => Closed,
            (state, _) => state,
        }
    }

    /// True once our `FIN` is out (and no reset happened).
    pub(super) fn local_closed(self) -> bool {
        matches!(self, Lifecycle::LocalClosed | Lifecycle::Closed)
    }

    /// True once the peer's `FIN` arrived (and no reset happened).
    pub(super) fn remote_closed(self) -> bool {
        matches!(self, Lifecycle::RemoteClosed | Lifecycle::Closed)
    }

    /// True after a reset.
    pub(super) fn is_reset(self) -> bool {
        self == Lifecycle::Reset
    }

    /// True when nothing more can happen on the stream.
    pub(super) fn is_finished(self) -> bool {
        matches!(self, Lifecycle::Closed | Lifecycle::Reset)
    }
}

#[cfg(test)]
mod tests {
    use super::Lifecycle::{Closed, LocalClosed, Open, RemoteClosed};
    use super::Transition::{FinReceived, FinSent};
    use super::*;

    #[test]
    fn each_side_closes_on_its_own_in_either_order() {
        assert_eq!(Open.next(FinSent), LocalClosed);
        assert_eq!(LocalClosed.next(FinReceived), Closed);
        assert_eq!(Open.next(FinReceived), RemoteClosed);
        assert_eq!(RemoteClosed.next(FinSent), Closed);
        assert!(Closed.is_finished() && Closed.local_closed() && Closed.remote_closed());
    }

    #[test]
    fn a_repeated_fin_changes_nothing() {
        assert_eq!(LocalClosed.next(FinSent), LocalClosed);
        assert_eq!(RemoteClosed.next(FinReceived), RemoteClosed);
        assert_eq!(Closed.next(FinReceived), Closed);
    }

    #[test]
    fn reset_wins_from_every_state_and_stays() {
        for state in [Open, LocalClosed, RemoteClosed, Closed, Lifecycle::Reset] {
            assert_eq!(state.next(Transition::Reset), Lifecycle::Reset);
        }
        for event in [FinSent, FinReceived, Transition::Reset] {
            assert_eq!(Lifecycle::Reset.next(event), Lifecycle::Reset);
        }
        assert!(!Lifecycle::Reset.local_closed() && !Lifecycle::Reset.remote_closed());
        assert!(Lifecycle::Reset.is_finished());
    }

    #[test]
    fn open_and_half_closed_streams_are_not_finished() {
        for state in [Open, LocalClosed, RemoteClosed] {
            assert!(!state.is_finished(), "{state:?}");
            assert!(!state.is_reset());
        }
    }
}
