//! The Redis store's cached view: users, REST secrets, revocations and realm limits read
//! from coturn's Redis userdb layout, as of the last good read. Pure data: the fleet driver
//! (`src/fleet/`) reads Redis and hands a new view to every worker; a lookup never waits on
//! Redis (DESIGN.md principle 2), and a store that is down leaves the last good view in place.
//!
//! coturn's layout (`turndb/schema.userdb.redis`, `dbd_redis.c`), read as it is:
//!
//! | key | type | meaning |
//! | --- | --- | --- |
//! | `turn/realm/<realm>/user/<name>/key` | string | hex MD5(name:realm:password), the long-term key |
//! | `turn/realm/<realm>/user/<name>/password` | string | plaintext password (older coturn) |
//! | `turn/realm/<realm>/secret` | set | REST shared secrets, several at once |
//! | `turn/realm/<realm>/secret/<id>` | string | one REST secret (older layout) |
//! | `turn/realm/<realm>/user-quota`, `total-quota`, `max-bps` | string | realm limits |
//! | `turn/realm/<realm>/allowed-peer-ip`, `denied-peer-ip` | set | peer ranges (coturn today) |
//! | `turn/allowed-peer-ip/<id>`, `turn/denied-peer-ip/<id>` | string | peer ranges (older layout) |
//!
//! and turnd's own: `turnd/revoked/<realm>/<name>` (string: the unix time the revocation
//! lapses, 0 for never; the key expires then too). `<name>` is a full username (a REST
//! username with its timestamp, or a static user) or a user without a timestamp, which
//! revokes every REST credential of that user.

use std::collections::BTreeMap;

use rustc_hash::FxHashMap;

use super::{Key, PasswordAlgorithm, StaticKeys, long_term_key};

/// Prefix of turnd's revocation keys (`turnd/revoked/<realm>/<name>`).
pub const REVOKED_PREFIX: &str = "turnd/revoked/";

/// A value read from Redis: a string or a set's members.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoreValue {
    Text(String),
    Members(Vec<String>),
}

/// The realm-wide limits coturn keeps in Redis (`turn/realm/<realm>/user-quota`, ...).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RealmLimits {
    pub user_quota: Option<u32>,
    pub total_quota: Option<u32>,
    pub max_bps: Option<u64>,
}

/// What the store says, for one realm.
#[derive(Default)]
pub struct StoreView {
    users: FxHashMap<String, StaticKeys>,
    secrets: Vec<String>,
    /// Revoked names and the unix time each revocation lapses (0: never).
    revoked: FxHashMap<String, u64>,
    pub limits: RealmLimits,
    /// Peer ranges as coturn writes them (`a.b.c.d`, `a.b.c.d-e.f.g.h`, CIDR), unparsed.
    pub allowed_peers: Vec<String>,
    pub denied_peers: Vec<String>,
    /// Entries that could not be used (a malformed key value), for the log.
    pub rejected: Vec<String>,
}

impl std::fmt::Debug for StoreView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreView")
            .field("users", &self.users.len())
            .field("secrets", &self.secrets.len())
            .field("revoked", &self.revoked.len())
            .field("limits", &self.limits)
            .finish()
    }
}

/// The key of a revocation of `name` in `realm`.
pub fn revoked_key(realm: &str, name: &str) -> String {
    format!("{REVOKED_PREFIX}{realm}/{name}")
}

/// The key patterns that hold `realm`'s part of the store (for SCAN and keyspace
/// notifications); glob characters in the realm are escaped.
pub fn key_patterns(realm: &str) -> [String; 4] {
    let mut r = String::with_capacity(realm.len());
    for c in realm.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            r.push('\\');
        }
        r.push(c);
    }
    [
        format!("turn/realm/{r}/*"),
        "turn/allowed-peer-ip/*".to_owned(),
        "turn/denied-peer-ip/*".to_owned(),
        format!("{REVOKED_PREFIX}{r}/*"),
    ]
}

/// Whether `key` belongs to `realm`'s part of the store.
pub fn is_store_key(realm: &str, key: &str) -> bool {
    key.strip_prefix("turn/realm/")
        .and_then(|r| r.strip_prefix(realm))
        .is_some_and(|r| r.starts_with('/'))
        || key.starts_with("turn/allowed-peer-ip/")
        || key.starts_with("turn/denied-peer-ip/")
        || key
            .strip_prefix(REVOKED_PREFIX)
            .and_then(|r| r.strip_prefix(realm))
            .is_some_and(|r| r.starts_with('/'))
}

fn text(v: &StoreValue) -> Option<&str> {
    match v {
        StoreValue::Text(t) => Some(t.trim()),
        StoreValue::Members(_) => None,
    }
}

fn values(v: &StoreValue) -> Vec<String> {
    match v {
        StoreValue::Text(t) => vec![t.trim().to_owned()],
        StoreValue::Members(m) => m.iter().map(|s| s.trim().to_owned()).collect(),
    }
}

/// Decodes the hex long-term key coturn stores for its default SHA-1 realms: MD5, 32 hex
/// digits (optionally `0x`). Other lengths (coturn's SHA-256 realms) are refused: turnd's
/// static keys are MD5.
fn decode_hex_key(hex: &str) -> Option<Key> {
    let hex = hex
        .strip_prefix("0x")
        .or_else(|| hex.strip_prefix("0X"))
        .unwrap_or(hex)
        .as_bytes();
    if hex.len() != 32 {
        return None;
    }
    let mut out = [0u8; 16];
    for (byte, pair) in out.iter_mut().zip(hex.chunks_exact(2)) {
        let hi = (pair[0] as char).to_digit(16)?;
        let lo = (pair[1] as char).to_digit(16)?;
        *byte = (hi * 16 + lo) as u8;
    }
    Some(Key::from_digest(&out))
}

/// The keys derived from plaintext passwords in earlier builds (two hashes per user), so a
/// change of one key does not hash every password of the realm again.
#[derive(Default)]
pub struct KeyCache {
    keys: FxHashMap<String, (String, StaticKeys)>,
}

impl StoreView {
    /// Builds the view of `realm` from every entry read (keys outside the realm are ignored).
    /// A user with both a `key` and a `password` is taken by its password (it also gives
    /// SHA-256).
    pub fn build(realm: &str, entries: &BTreeMap<String, StoreValue>) -> StoreView {
        StoreView::build_cached(realm, entries, &mut KeyCache::default())
    }

    /// [`StoreView::build`], reusing the password-derived keys of `cache` (which then holds
    /// this build's).
    pub fn build_cached(
        realm: &str,
        entries: &BTreeMap<String, StoreValue>,
        cache: &mut KeyCache,
    ) -> StoreView {
        let mut view = StoreView::default();
        let realm_prefix = format!("turn/realm/{realm}/");
        let revoked_prefix = format!("{REVOKED_PREFIX}{realm}/");
        let mut passwords: Vec<(&str, &str)> = Vec::new();
        for (key, value) in entries {
            if let Some(rest) = key.strip_prefix(&realm_prefix) {
                if let Some(user) = rest.strip_prefix("user/") {
                    if let Some(name) = user.strip_suffix("/key") {
                        match text(value).and_then(decode_hex_key) {
                            Some(k) => {
                                view.users.entry(name.to_owned()).or_insert(StaticKeys {
                                    md5: k,
                                    sha256: None,
                                });
                            }
                            None => view.rejected.push(key.clone()),
                        }
                    } else if let Some(name) = user.strip_suffix("/password") {
                        match text(value) {
                            Some(p) if !p.is_empty() => passwords.push((name, p)),
                            _ => view.rejected.push(key.clone()),
                        }
                    }
                } else if rest == "secret" || rest.starts_with("secret/") {
                    view.secrets
                        .extend(values(value).into_iter().filter(|s| !s.is_empty()));
                } else if rest == "allowed-peer-ip" {
                    view.allowed_peers.extend(values(value));
                } else if rest == "denied-peer-ip" {
                    view.denied_peers.extend(values(value));
                } else if let Some(n) = text(value) {
                    let bad = match rest {
                        "user-quota" => {
                            n.parse().map(|q| view.limits.user_quota = Some(q)).is_err()
                        }
                        "total-quota" => n
                            .parse()
                            .map(|q| view.limits.total_quota = Some(q))
                            .is_err(),
                        "max-bps" => n.parse().map(|b| view.limits.max_bps = Some(b)).is_err(),
                        _ => false,
                    };
                    if bad {
                        view.rejected.push(key.clone());
                    }
                }
            } else if key.starts_with("turn/allowed-peer-ip/") {
                view.allowed_peers.extend(values(value));
            } else if key.starts_with("turn/denied-peer-ip/") {
                view.denied_peers.extend(values(value));
            } else if let Some(name) = key.strip_prefix(&revoked_prefix) {
                let until = text(value).and_then(|t| t.parse().ok()).unwrap_or(0);
                view.revoked.insert(name.to_owned(), until);
            }
        }
        let mut fresh = FxHashMap::default();
        for (name, password) in passwords {
            let keys = match cache.keys.remove(name) {
                Some((p, keys)) if p == password => keys,
                _ => StaticKeys {
                    md5: long_term_key(PasswordAlgorithm::Md5, name, realm, password),
                    sha256: Some(long_term_key(
                        PasswordAlgorithm::Sha256,
                        name,
                        realm,
                        password,
                    )),
                },
            };
            fresh.insert(name.to_owned(), (password.to_owned(), keys.clone()));
            view.users.insert(name.to_owned(), keys);
        }
        cache.keys = fresh;
        view.secrets.sort_unstable();
        view.secrets.dedup();
        view
    }

    pub(super) fn user(&self, name: &str) -> Option<&StaticKeys> {
        self.users.get(name)
    }

    pub(super) fn secrets(&self) -> &[String] {
        &self.secrets
    }

    /// How many users the store holds.
    pub fn user_count(&self) -> usize {
        self.users.len()
    }

    /// How many REST secrets the store holds.
    pub fn secret_count(&self) -> usize {
        self.secrets.len()
    }

    /// How many revocations are in force or recorded.
    pub fn revoked_count(&self) -> usize {
        self.revoked.len()
    }

    /// Whether `username` (or, for a REST username, its user without the timestamp, `user`)
    /// is revoked at `unix_now` (None: revoked whenever recorded).
    pub fn is_revoked(&self, username: &str, user: &str, unix_now: Option<u64>) -> bool {
        if self.revoked.is_empty() {
            return false;
        }
        let live = |until: &u64| *until == 0 || unix_now.is_none_or(|now| now < *until);
        self.revoked.get(username).is_some_and(live)
            || (user != username && self.revoked.get(user).is_some_and(live))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::{AuthConfig, AuthError, Authenticator};
    use std::sync::Arc;

    fn entries(list: &[(&str, StoreValue)]) -> BTreeMap<String, StoreValue> {
        list.iter()
            .map(|(k, v)| ((*k).to_owned(), v.clone()))
            .collect()
    }

    fn t(s: &str) -> StoreValue {
        StoreValue::Text(s.to_owned())
    }

    fn auth(store: StoreView) -> Authenticator {
        Authenticator::new(AuthConfig {
            realm: "north.gov".into(),
            users: Vec::new(),
            secrets: Vec::new(),
            rest_separator: ':',
            nonce_lifetime_secs: 600,
            nonce_key: [7; 32],
        })
        .with_store(Arc::new(store))
    }

    #[test]
    fn reads_coturns_example_database() {
        // From coturn's turndb/schema.userdb.redis: gorst's key is MD5("gorst:north.gov:hero").
        let e = entries(&[
            (
                "turn/realm/north.gov/user/gorst/key",
                t("7da2270ccfa49786e0115366d3a3d14d"),
            ),
            ("turn/realm/north.gov/user/ann/password", t("pw")),
            ("turn/realm/north.gov/user/bad/key", t("xyz")),
            (
                "turn/realm/crinna.org/user/whirrun/key",
                t("6972e85e51f36e53b0b61759c5a5219a"),
            ),
            (
                "turn/realm/north.gov/secret",
                StoreValue::Members(vec!["logen".into(), "bloody9".into()]),
            ),
            ("turn/realm/north.gov/secret/3", t("third")),
            ("turn/realm/north.gov/user-quota", t("10000")),
            ("turn/realm/north.gov/total-quota", t("12000")),
            ("turn/realm/north.gov/max-bps", t("500000")),
            (
                "turn/realm/north.gov/denied-peer-ip",
                StoreValue::Members(vec!["172.17.13.133-172.17.14.56".into()]),
            ),
            ("turn/allowed-peer-ip/1", t("172.17.13.200")),
        ]);
        let view = StoreView::build("north.gov", &e);
        assert_eq!(view.user_count(), 2, "{view:?}");
        assert!(view.user("whirrun").is_none(), "other realm");
        assert_eq!(view.rejected, vec!["turn/realm/north.gov/user/bad/key"]);
        assert_eq!(view.secrets(), ["bloody9", "logen", "third"]);
        assert_eq!(
            view.limits,
            RealmLimits {
                user_quota: Some(10000),
                total_quota: Some(12000),
                max_bps: Some(500000)
            }
        );
        assert_eq!(view.denied_peers, ["172.17.13.133-172.17.14.56"]);
        assert_eq!(view.allowed_peers, ["172.17.13.200"]);
        let a = auth(view);
        let c = a.lookup("gorst", PasswordAlgorithm::Md5, 0).expect("gorst");
        let want = long_term_key(PasswordAlgorithm::Md5, "gorst", "north.gov", "hero");
        assert_eq!(c.keys, vec![want]);
        assert_eq!(
            a.lookup("gorst", PasswordAlgorithm::Sha256, 0).err(),
            Some(AuthError::AlgorithmUnavailable)
        );
        let c = a.lookup("ann", PasswordAlgorithm::Sha256, 0).expect("ann");
        let want = long_term_key(PasswordAlgorithm::Sha256, "ann", "north.gov", "pw");
        assert_eq!(c.keys, vec![want]);
        // REST with the store's secrets: one key per secret.
        let c = a
            .lookup("2000:zed", PasswordAlgorithm::Md5, 1000)
            .expect("rest");
        assert_eq!(c.keys.len(), 3);
    }

    #[test]
    fn revocations_apply_until_they_lapse() {
        let e = entries(&[
            (
                "turn/realm/north.gov/user/gorst/key",
                t("7da2270ccfa49786e0115366d3a3d14d"),
            ),
            (
                "turn/realm/north.gov/secret",
                StoreValue::Members(vec!["s".into()]),
            ),
            ("turnd/revoked/north.gov/gorst", t("0")),
            ("turnd/revoked/north.gov/zed", t("5000")),
            ("turnd/revoked/other/ann", t("0")),
        ]);
        let view = StoreView::build("north.gov", &e);
        assert_eq!(view.revoked_count(), 2);
        let a = auth(view);
        assert_eq!(
            a.lookup("gorst", PasswordAlgorithm::Md5, 10).err(),
            Some(AuthError::Revoked)
        );
        // Every REST credential of zed, until 5000.
        assert_eq!(
            a.lookup("3000:zed", PasswordAlgorithm::Md5, 1000).err(),
            Some(AuthError::Revoked)
        );
        assert!(a.lookup("6000:zed", PasswordAlgorithm::Md5, 5000).is_ok());
        assert!(a.lookup("3000:ann", PasswordAlgorithm::Md5, 1000).is_ok());
        assert_eq!(
            a.lookup_past_expiry("3000:zed", PasswordAlgorithm::Md5)
                .err(),
            Some(AuthError::Revoked)
        );
    }

    #[test]
    fn cached_keys_follow_password_changes() {
        let key = "turn/realm/r/user/ann/password";
        let mut cache = KeyCache::default();
        let a = StoreView::build_cached("r", &entries(&[(key, t("one"))]), &mut cache);
        let b = StoreView::build_cached("r", &entries(&[(key, t("one"))]), &mut cache);
        assert!(a.user("ann").unwrap().md5 == b.user("ann").unwrap().md5);
        let c = StoreView::build_cached("r", &entries(&[(key, t("two"))]), &mut cache);
        let want = long_term_key(PasswordAlgorithm::Md5, "ann", "r", "two");
        assert!(c.user("ann").unwrap().md5 == want);
        let d = StoreView::build_cached("r", &entries(&[]), &mut cache);
        assert_eq!((d.user_count(), cache.keys.len()), (0, 0));
    }

    #[test]
    fn patterns_escape_glob_characters() {
        assert_eq!(key_patterns("a*b")[0], "turn/realm/a\\*b/*");
        assert_eq!(key_patterns("north.gov")[3], "turnd/revoked/north.gov/*");
    }

    #[test]
    fn store_keys_of_a_realm() {
        assert!(is_store_key("r", "turn/realm/r/user/a/key"));
        assert!(!is_store_key("r", "turn/realm/rx/user/a/key"));
        assert!(is_store_key("r", "turnd/revoked/r/a"));
        assert!(!is_store_key("r", "turnd/revoked/rr/a"));
        assert!(is_store_key("r", "turn/denied-peer-ip/1"));
        assert!(!is_store_key("r", "turnd/node/a"));
    }
}
