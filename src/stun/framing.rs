//! Cutting STUN and ChannelData messages out of a byte stream (TCP/TLS, RFC 8656 §12.5).

use super::channel_data;
use super::{HEADER_LEN, MAGIC_COOKIE};

/// What the deframer can say about the start of a stream buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Frame {
    /// A whole message of this many bytes (ChannelData includes its padding) is at the front.
    Complete(usize),
    /// At least this many bytes are needed in total before the next message can be cut.
    NeedMore(usize),
    /// The bytes cannot start a STUN or ChannelData message: the stream is broken.
    Invalid,
}

/// Looks at the front of `buf` and says how long the first message is.
pub fn next_frame(buf: &[u8]) -> Frame {
    let Some(&first) = buf.first() else {
        return Frame::NeedMore(4);
    };
    if buf.len() < 4 {
        return Frame::NeedMore(4);
    }
    let len = u16::from_be_bytes([buf[2], buf[3]]) as usize;
    let total = if first & 0xC0 == 0 {
        if !len.is_multiple_of(4) {
            return Frame::Invalid;
        }
        if buf.len() >= 8 && u32::from_be_bytes([buf[4], buf[5], buf[6], buf[7]]) != MAGIC_COOKIE {
            return Frame::Invalid;
        }
        HEADER_LEN + len
    } else if channel_data::is_channel_data(first) {
        // Any number 0x4000-0x7FFF: whether it is bound is the server's question.
        4 + ((len + 3) & !3)
    } else {
        return Frame::Invalid;
    };
    if buf.len() >= total {
        Frame::Complete(total)
    } else {
        Frame::NeedMore(total)
    }
}
