//! The long-term credential check (RFC 8489 §9.2.4) and the answers a request gets before
//! it is authenticated: 401/438 challenges and early errors, under the source's reflection
//! budget ([`super::super::rate_limit`]).

use super::*;

/// The result of a successful authentication.
#[derive(Clone)]
pub(super) struct Authed {
    pub(super) key: Key,
    pub(super) integrity: Integrity,
    pub(super) expiry: Option<u64>,
}

/// PASSWORD-ALGORITHMS as this server sends it: SHA-256 preferred, then MD5
/// (RFC 8489 §14.11), each with empty parameters.
const PASSWORD_ALGORITHMS_VALUE: [u8; 8] = [0x00, 0x02, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00];

/// RFC 8489 §14.3: USERNAME is less than 513 bytes.
const MAX_USERNAME: usize = 513;

/// The size of this server's 401 to a request with FINGERPRINT: the unit in which the
/// unauthenticated-answer allowance (`limits.unauth-rate`, `limits.unauth-burst`) is counted.
pub fn challenge_len(realm: &str) -> usize {
    challenge_size(realm, RequestError::Unauthenticated, true)
}

/// The size of a 401 or 438 this server sends: every nonce has the same length, so it is
/// known before the nonce is minted.
fn challenge_size(realm: &str, err: RequestError, fingerprint: bool) -> usize {
    let attr = |len: usize| 4 + len.next_multiple_of(4);
    HEADER_LEN
        + attr(4 + err.reason().len())
        + attr(realm.len())
        + attr(crate::auth::NONCE_LEN)
        + attr(PASSWORD_ALGORITHMS_VALUE.len())
        + if fingerprint { attr(4) } else { 0 }
}

impl Server {
    /// The long-term credential mechanism (RFC 8489 §9.2.4). Sends the error and returns
    /// None when the request does not pass.
    ///
    /// The nonce is checked after the integrity, as §9.2.4 orders it: a stale nonce on a
    /// request whose MESSAGE-INTEGRITY is valid gets its 438 whatever the source's budget for
    /// unauthenticated answers, because the request proves its sender holds the key.
    pub(super) fn authenticate(
        &mut self,
        now: Time,
        ft: &FiveTuple,
        msg: &Message<'_>,
        io: &mut impl Io,
    ) -> Option<Authed> {
        if !msg.has_integrity() {
            self.challenge(now, ft, msg, RequestError::Unauthenticated, false, io);
            return None;
        }
        let (Some(realm), Some(nonce)) = (msg.get(attr::REALM), msg.get(attr::NONCE)) else {
            self.send_unauth_error(now.mono, ft, msg, RequestError::BadRequest, io);
            return None;
        };
        let Some(user) = msg.get(attr::USERNAME) else {
            // USERHASH (RFC 8489 §14.4) is not supported: a client that sent only the hash
            // is challenged, so it can retry with USERNAME.
            if msg.get(attr::USERHASH).is_some() {
                self.challenge(now, ft, msg, RequestError::Unauthenticated, false, io);
            } else {
                self.send_unauth_error(now.mono, ft, msg, RequestError::BadRequest, io);
            }
            return None;
        };
        let Ok(user) = std::str::from_utf8(user) else {
            self.send_unauth_error(now.mono, ft, msg, RequestError::BadRequest, io);
            return None;
        };
        if user.len() >= MAX_USERNAME {
            self.send_unauth_error(now.mono, ft, msg, RequestError::BadRequest, io);
            return None;
        }
        let algorithms = msg.get(attr::PASSWORD_ALGORITHMS);
        let algorithm = msg.get(attr::PASSWORD_ALGORITHM);
        let alg = match (algorithms, algorithm) {
            (None, None) => PasswordAlgorithm::Md5,
            (Some(list), Some(one)) if list == PASSWORD_ALGORITHMS_VALUE => match one {
                [0x00, 0x01, 0x00, 0x00] => PasswordAlgorithm::Md5,
                [0x00, 0x02, 0x00, 0x00] => PasswordAlgorithm::Sha256,
                _ => {
                    self.send_unauth_error(now.mono, ft, msg, RequestError::BadRequest, io);
                    return None;
                }
            },
            _ => {
                self.send_unauth_error(now.mono, ft, msg, RequestError::BadRequest, io);
                return None;
            }
        };
        if realm != self.cfg.live.auth.realm().as_bytes() {
            self.stats.auth_failures += 1;
            self.challenge(now, ft, msg, RequestError::Unauthenticated, false, io);
            return None;
        }
        let has_alloc = self.by_tuple.contains_key(ft);
        let candidates = match self.cfg.live.auth.lookup(user, alg, now.unix) {
            Ok(c) => Some(c),
            Err(AuthError::Expired)
                if !self.cfg.live.enforce_credential_expiry
                    && has_alloc
                    && msg.method() != method::ALLOCATE =>
            {
                // The operator lets live sessions outlast their credential, as coturn does.
                self.cfg.live.auth.lookup_past_expiry(user, alg).ok()
            }
            Err(_) => None,
        };
        // RFC 8489 §9.2.4: the response carries MESSAGE-INTEGRITY-SHA256 when the request
        // named its password algorithm, MESSAGE-INTEGRITY otherwise.
        let integrity = if algorithms.is_some() {
            Integrity::Sha256
        } else {
            Integrity::Sha1
        };
        let found = match candidates {
            Some(c) => {
                let expiry = c.expiry;
                let checks = &mut self.stats.integrity_checks;
                c.keys
                    .into_iter()
                    .find(|k| {
                        *checks += 1;
                        msg.verify_integrity(k.as_bytes()).is_some()
                    })
                    .map(|key| Authed {
                        key,
                        integrity,
                        expiry,
                    })
            }
            None => {
                // Unknown (or expired) user: check against a decoy key all the same, so the
                // answer takes as long as for a known user with a wrong password and timing
                // does not reveal which usernames exist. The outcome is discarded.
                self.stats.integrity_checks += 1;
                let decoy = self.cfg.live.auth.decoy_key(alg);
                let _ = std::hint::black_box(msg.verify_integrity(decoy.as_bytes()));
                None
            }
        };
        let Some(auth) = found else {
            self.stats.auth_failures += 1;
            debug!(client = %ft.client, user = display_user(user, self.cfg.rest_separator), "authentication failed");
            self.challenge(now, ft, msg, RequestError::Unauthenticated, false, io);
            return None;
        };
        if !self
            .cfg
            .live
            .auth
            .check_nonce(nonce, now.unix, ft.client.ip())
        {
            self.challenge(now, ft, msg, RequestError::StaleNonce, true, io);
            return None;
        }
        if self.alloc(ft).is_some_and(|a| a.username != user) {
            self.send_error(ft, msg, RequestError::WrongCredentials, Some(&auth), io);
            return None;
        }
        Some(auth)
    }

    /// 401 or 438 with a fresh nonce: the smallest answer that lets a client go on. Drawn
    /// from the source's budget unless `proven` (the request carried valid integrity).
    pub(super) fn challenge(
        &mut self,
        now: Time,
        ft: &FiveTuple,
        msg: &Message<'_>,
        err: RequestError,
        proven: bool,
        io: &mut impl Io,
    ) {
        // The budget is asked before the nonce's HMAC is computed, so a spoofed flood the
        // budget refuses costs no more than the check.
        let auth = self.cfg.live.auth.clone();
        let size = challenge_size(auth.realm(), err, msg.has_fingerprint());
        if !proven && !self.unauth_answer_allowed(now.mono, ft, msg, size) {
            return;
        }
        let nonce = auth.mint_nonce(now.unix, ft.client.ip());
        let mut w = self.writer(msg, Class::Error);
        w.error_code(err.code(), err.reason())
            .attr(attr::REALM, auth.realm().as_bytes())
            .attr(attr::NONCE, nonce.as_bytes())
            .attr(attr::PASSWORD_ALGORITHMS, &PASSWORD_ALGORITHMS_VALUE);
        self.seal_and_send(ft, msg, None, io);
        debug_assert_eq!(self.out.len(), size);
        self.count_error(msg.method(), err);
    }

    /// Whether an answer of `answer` bytes to the unauthenticated request `msg` may go to
    /// this client now. Over UDP the source may be spoofed, so such answers draw on the
    /// source's byte budget (see [`super::rate_limit`]) unless the source has proved it is
    /// real: its address (an IPv6 one by its /64) holds an authenticated allocation, on any
    /// worker. Streams have a handshake and are not limited.
    pub(super) fn unauth_answer_allowed(
        &mut self,
        now: Instant,
        ft: &FiveTuple,
        msg: &Message<'_>,
        answer: usize,
    ) -> bool {
        if ft.transport != Transport::Udp
            || self
                .cfg
                .unauth_limiter
                .allow(ft.client.ip(), now, msg.raw().len(), answer)
            || self.cfg.quotas.ip_count(ft.client.ip()) > 0
        {
            return true;
        }
        self.stats.rate_limited += 1;
        false
    }

    /// An error to a request that is not (yet) authenticated: subject to the source's budget.
    pub(super) fn send_unauth_error(
        &mut self,
        now: Instant,
        ft: &FiveTuple,
        msg: &Message<'_>,
        err: RequestError,
        io: &mut impl Io,
    ) {
        let mut w = self.writer(msg, Class::Error);
        w.error_code(err.code(), err.reason());
        if self.seal_and_send_unauth(now, ft, msg, io) {
            self.count_error(msg.method(), err);
        }
    }

    /// Seals the answer in the scratch buffer as [`Server::seal_and_send`] does for an
    /// unauthenticated request, and sends it if the source's budget allows; says whether it
    /// was sent.
    pub(super) fn seal_and_send_unauth(
        &mut self,
        now: Instant,
        ft: &FiveTuple,
        msg: &Message<'_>,
        io: &mut impl Io,
    ) -> bool {
        let mut w = MessageWriter::resume(&mut self.out, msg.transaction_id());
        if msg.has_fingerprint() {
            w.fingerprint();
        }
        let len = self.out.len();
        if !self.unauth_answer_allowed(now, ft, msg, len) {
            return false;
        }
        io.send_to_client(ft, &self.out);
        true
    }
}
