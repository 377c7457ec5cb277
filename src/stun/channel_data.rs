//! ChannelData messages (RFC 8656 §12.4): a 4-byte header, channel number and length, then
//! the application data; padded to a multiple of 4 on streams, optionally on UDP.

/// RFC 8656 §12: channel numbers a client may bind.
pub const MIN_CHANNEL: u16 = 0x4000;
pub const MAX_CHANNEL: u16 = 0x4FFF;

/// Whether the first byte starts a ChannelData message (0b01 in the top two bits).
pub fn is_channel_data(first: u8) -> bool {
    first & 0xC0 == 0x40
}

/// Parses a ChannelData datagram into (channel number, data). Padding past the declared
/// length is allowed; a declared length past the datagram is not.
pub fn parse(buf: &[u8]) -> Option<(u16, &[u8])> {
    let h = buf.get(..4)?;
    let channel = u16::from_be_bytes([h[0], h[1]]);
    if !(MIN_CHANNEL..=MAX_CHANNEL).contains(&channel) {
        return None;
    }
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
