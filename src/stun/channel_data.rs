//! ChannelData messages (RFC 8656 §12.4): a 4-byte header, channel number and length, then
//! the application data; padded to a multiple of 4 on streams, optionally on UDP.
//!
//! On a TURN listener a message starts with STUN (top two bits 00) or ChannelData (01); the
//! wire form of ChannelData is every number with top bits 01, 0x4000 through 0x7FFF, the
//! range RFC 5766 §11 gave clients. RFC 8656 §12 narrowed what a client may bind to
//! 0x4000-0x4FFF so that a first byte of 64-79 alone means TURN where media is also
//! demultiplexed by first byte (RFC 7983 §7); nothing else arrives on the listener, so the
//! codec reads the whole RFC 5766 range, and which numbers ChannelBind grants is the
//! server's choice (`server.strict-channel-numbers`).

/// Lowest channel number (RFC 5766 §11, RFC 8656 §12).
pub const MIN_CHANNEL: u16 = 0x4000;
/// Highest channel number of RFC 5766 §11, and of the wire form (top bits 01).
pub const MAX_CHANNEL: u16 = 0x7FFF;
/// Highest channel number of RFC 8656 §12; 0x5000-0xFFFF are reserved there.
pub const MAX_CHANNEL_RFC8656: u16 = 0x4FFF;

/// Whether the first byte starts a ChannelData message (0b01 in the top two bits), that is a
/// channel number in [`MIN_CHANNEL`]..=[`MAX_CHANNEL`].
pub fn is_channel_data(first: u8) -> bool {
    first & 0xC0 == 0x40
}

/// Whether a client may bind `number`: 0x4000-0x7FFF (RFC 5766 §11), or with `strict`
/// only RFC 8656 §12's 0x4000-0x4FFF.
pub fn is_bindable(number: u16, strict: bool) -> bool {
    let max = if strict {
        MAX_CHANNEL_RFC8656
    } else {
        MAX_CHANNEL
    };
    (MIN_CHANNEL..=max).contains(&number)
}

/// Parses a ChannelData datagram into (channel number, data). Padding past the declared
/// length is allowed; a declared length past the datagram is not.
pub fn parse(buf: &[u8]) -> Option<(u16, &[u8])> {
    let h = buf.get(..4)?;
    if !is_channel_data(h[0]) {
        return None;
    }
    let channel = u16::from_be_bytes([h[0], h[1]]);
    let len = u16::from_be_bytes([h[2], h[3]]) as usize;
    let data = buf.get(4..4 + len)?;
    Some((channel, data))
}

/// Writes a ChannelData header for `len` bytes of data.
pub fn header(channel: u16, len: u16) -> [u8; 4] {
    let c = channel.to_be_bytes();
    let l = len.to_be_bytes();
    [c[0], c[1], l[0], l[1]]
}
