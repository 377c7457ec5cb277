//! Why a TURN request fails, and the one mapping of each reason to its STUN error code
//! (RFC 8489 §14.8, RFC 8656 §18.13, RFC 6062 §6.3) and reason phrase.

/// A request's failure; [`RequestError::code`] is its code on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RequestError {
    /// 300: Allocate while draining, with ALTERNATE-SERVER.
    TryAlternate,
    /// 400: malformed, contradictory or missing attributes.
    BadRequest,
    /// 401: no or wrong credentials (answered with a challenge).
    Unauthenticated,
    /// 403: the peer address is not allowed.
    Forbidden,
    /// 420: comprehension-required attributes this server does not know.
    UnknownAttribute,
    /// 437: no allocation on the 5-tuple (or already one, for Allocate).
    AllocationMismatch,
    /// 438: the nonce is no longer valid (answered with a fresh one).
    StaleNonce,
    /// 440: the requested address family is not served.
    AddressFamilyNotSupported,
    /// 441: another user's credentials on an existing allocation.
    WrongCredentials,
    /// 442: REQUESTED-TRANSPORT other than UDP or TCP.
    UnsupportedTransportProtocol,
    /// 443: the peer's family is not one of the allocation's.
    PeerAddressFamilyMismatch,
    /// 446 (RFC 6062): a connection to that peer already exists.
    ConnectionAlreadyExists,
    /// 447 (RFC 6062): the connection to the peer failed or timed out.
    ConnectionTimeoutOrFailure,
    /// 486: the user's (or the client IP's) allocation quota is used up.
    AllocationQuotaReached,
    /// 500.
    ServerError,
    /// 508: out of ports, permissions, channels, total quota or bandwidth capacity.
    InsufficientCapacity,
}

impl RequestError {
    /// The STUN error code.
    pub const fn code(self) -> u16 {
        match self {
            RequestError::TryAlternate => 300,
            RequestError::BadRequest => 400,
            RequestError::Unauthenticated => 401,
            RequestError::Forbidden => 403,
            RequestError::UnknownAttribute => 420,
            RequestError::AllocationMismatch => 437,
            RequestError::StaleNonce => 438,
            RequestError::AddressFamilyNotSupported => 440,
            RequestError::WrongCredentials => 441,
            RequestError::UnsupportedTransportProtocol => 442,
            RequestError::PeerAddressFamilyMismatch => 443,
            RequestError::ConnectionAlreadyExists => 446,
            RequestError::ConnectionTimeoutOrFailure => 447,
            RequestError::AllocationQuotaReached => 486,
            RequestError::ServerError => 500,
            RequestError::InsufficientCapacity => 508,
        }
    }

    /// The reason phrase sent with the code.
    pub const fn reason(self) -> &'static str {
        match self {
            RequestError::TryAlternate => "Try Alternate",
            RequestError::BadRequest => "Bad Request",
            RequestError::Unauthenticated => "Unauthenticated",
            RequestError::Forbidden => "Forbidden",
            RequestError::UnknownAttribute => "Unknown Attribute",
            RequestError::AllocationMismatch => "Allocation Mismatch",
            RequestError::StaleNonce => "Stale Nonce",
            RequestError::AddressFamilyNotSupported => "Address Family not Supported",
            RequestError::WrongCredentials => "Wrong Credentials",
            RequestError::UnsupportedTransportProtocol => "Unsupported Transport Protocol",
            RequestError::PeerAddressFamilyMismatch => "Peer Address Family Mismatch",
            RequestError::ConnectionAlreadyExists => "Connection Already Exists",
            RequestError::ConnectionTimeoutOrFailure => "Connection Timeout or Failure",
            RequestError::AllocationQuotaReached => "Allocation Quota Reached",
            RequestError::ServerError => "Server Error",
            RequestError::InsufficientCapacity => "Insufficient Capacity",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::RequestError::*;

    #[test]
    fn codes_are_distinct_and_in_the_error_classes() {
        let all = [
            TryAlternate,
            BadRequest,
            Unauthenticated,
            Forbidden,
            UnknownAttribute,
            AllocationMismatch,
            StaleNonce,
            AddressFamilyNotSupported,
            WrongCredentials,
            UnsupportedTransportProtocol,
            PeerAddressFamilyMismatch,
            ConnectionAlreadyExists,
            ConnectionTimeoutOrFailure,
            AllocationQuotaReached,
            ServerError,
            InsufficientCapacity,
        ];
        let mut codes: Vec<u16> = all.iter().map(|e| e.code()).collect();
        assert!(codes.iter().all(|c| (300..700).contains(c)));
        codes.sort();
        codes.dedup();
        assert_eq!(codes.len(), all.len());
        assert!(all.iter().all(|e| !e.reason().is_empty()));
    }
}
