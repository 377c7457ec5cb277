//! STUN/TURN error codes (RFC 8489 §14.8, RFC 8656 §18.13) and their reason phrases.

pub const TRY_ALTERNATE: u16 = 300;
pub const BAD_REQUEST: u16 = 400;
pub const UNAUTHENTICATED: u16 = 401;
pub const FORBIDDEN: u16 = 403;
pub const UNKNOWN_ATTRIBUTE: u16 = 420;
pub const ALLOCATION_MISMATCH: u16 = 437;
pub const STALE_NONCE: u16 = 438;
pub const ADDRESS_FAMILY_NOT_SUPPORTED: u16 = 440;
pub const WRONG_CREDENTIALS: u16 = 441;
pub const UNSUPPORTED_TRANSPORT_PROTOCOL: u16 = 442;
pub const PEER_ADDRESS_FAMILY_MISMATCH: u16 = 443;
/// RFC 6062 §6.3.
pub const CONNECTION_ALREADY_EXISTS: u16 = 446;
/// RFC 6062 §6.3.
pub const CONNECTION_TIMEOUT_OR_FAILURE: u16 = 447;
pub const ALLOCATION_QUOTA_REACHED: u16 = 486;
pub const SERVER_ERROR: u16 = 500;
pub const INSUFFICIENT_CAPACITY: u16 = 508;

/// The reason phrase sent with a code.
pub fn reason(code: u16) -> &'static str {
    match code {
        TRY_ALTERNATE => "Try Alternate",
        BAD_REQUEST => "Bad Request",
        UNAUTHENTICATED => "Unauthenticated",
        FORBIDDEN => "Forbidden",
        UNKNOWN_ATTRIBUTE => "Unknown Attribute",
        ALLOCATION_MISMATCH => "Allocation Mismatch",
        STALE_NONCE => "Stale Nonce",
        ADDRESS_FAMILY_NOT_SUPPORTED => "Address Family not Supported",
        WRONG_CREDENTIALS => "Wrong Credentials",
        UNSUPPORTED_TRANSPORT_PROTOCOL => "Unsupported Transport Protocol",
        PEER_ADDRESS_FAMILY_MISMATCH => "Peer Address Family Mismatch",
        CONNECTION_ALREADY_EXISTS => "Connection Already Exists",
        CONNECTION_TIMEOUT_OR_FAILURE => "Connection Timeout or Failure",
        ALLOCATION_QUOTA_REACHED => "Allocation Quota Reached",
        SERVER_ERROR => "Server Error",
        INSUFFICIENT_CAPACITY => "Insufficient Capacity",
        _ => "Error",
    }
}
