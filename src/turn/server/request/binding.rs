//! Binding (RFC 8489 §6.3.1): stateless and unauthenticated.

use super::*;

impl Server {
    /// Binding (RFC 8489 §6.3.1): stateless, unauthenticated.
    pub(in crate::turn::server) fn handle_binding(
        &mut self,
        now: Instant,
        ft: &FiveTuple,
        msg: &Message<'_>,
        io: &mut impl Io,
    ) {
        let mut unknown = [0u8; 32];
        let mut n = 0;
        for (t, _) in msg.attributes() {
            if !attr::is_understood(t) && n < unknown.len() {
                unknown[n..n + 2].copy_from_slice(&t.to_be_bytes());
                n += 2;
            }
        }
        let mapped = self.cfg.live.mapped_address;
        let mut w = self.writer(msg, if n > 0 { Class::Error } else { Class::Success });
        if n > 0 {
            w.error_code(
                RequestError::UnknownAttribute.code(),
                RequestError::UnknownAttribute.reason(),
            )
            .attr(attr::UNKNOWN_ATTRIBUTES, &unknown[..n]);
        } else {
            w.xor_address(attr::XOR_MAPPED_ADDRESS, ft.client);
            if mapped {
                w.address(attr::MAPPED_ADDRESS, ft.client);
            }
        }
        if self.seal_and_send_unauth(now, ft, msg, io) && n > 0 {
            self.count_error(method::BINDING, RequestError::UnknownAttribute);
        }
    }
}
