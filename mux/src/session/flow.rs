//! Flow control: the arithmetic of one stream's send and receive windows.
//!
//! The receiver grants window back once the application has consumed at least half of it
//! (hashicorp's rule; the window itself may have grown, see `Connection::grow_window`); a
//! sender may never exceed the window, and a window update may never take a send window past
//! 2^32 − 1.

use super::ProtocolError;

/// The window update to send, if any: the space the application has freed beyond what the
/// peer may already send, once that is at least half of `max`.
pub(super) fn window_update(max: u32, buffered: usize, recv_window: u32) -> Option<u32> {
    let buffered = u32::try_from(buffered).unwrap_or(u32::MAX);
    let delta = max.saturating_sub(buffered).saturating_sub(recv_window);
    (delta >= max / 2 && delta > 0).then_some(delta)
}

/// The receive window after a data frame of `len` bytes, or the protocol error of a frame
/// larger than the window.
pub(super) fn receive(stream: u32, recv_window: u32, len: u32) -> Result<u32, ProtocolError> {
    recv_window
        .checked_sub(len)
        .ok_or(ProtocolError::WindowExceeded {
            stream,
            len,
            window: recv_window,
        })
}

/// The send window after the peer's window update of `delta`, or the protocol error of an
/// update that overflows it.
pub(super) fn credit(stream: u32, send_window: u32, delta: u32) -> Result<u32, ProtocolError> {
    send_window
        .checked_add(delta)
        .ok_or(ProtocolError::WindowOverflow {
            stream,
            delta,
            window: send_window,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: u32 = 256 * 1024;

    #[test]
    fn window_is_granted_back_once_half_is_consumed() {
        // Nothing consumed: the peer may still send the whole window.
        assert_eq!(window_update(MAX, 0, MAX), None);
        // Just under half read and gone: not yet.
        assert_eq!(window_update(MAX, 0, MAX / 2 + 1), None);
        // Half: the freed half goes back in one update.
        assert_eq!(window_update(MAX, 0, MAX / 2), Some(MAX / 2));
        // Received but still buffered bytes are not free yet.
        assert_eq!(window_update(MAX, (MAX / 2) as usize, 0), Some(MAX / 2));
        assert_eq!(window_update(MAX, MAX as usize, 0), None);
        assert_eq!(window_update(MAX, usize::MAX, 0), None);
    }

    #[test]
    fn data_beyond_the_window_is_a_protocol_error() {
        assert_eq!(receive(3, 10, 10), Ok(0));
        assert_eq!(
            receive(3, 10, 11),
            Err(ProtocolError::WindowExceeded {
                stream: 3,
                len: 11,
                window: 10
            })
        );
    }

    #[test]
    fn updates_up_to_u32_max_are_credited_and_past_it_refused() {
        assert_eq!(credit(1, 1, u32::MAX - 1), Ok(u32::MAX));
        assert_eq!(
            credit(1, 2, u32::MAX - 1),
            Err(ProtocolError::WindowOverflow {
                stream: 1,
                delta: u32::MAX - 1,
                window: 2
            })
        );
    }
}
