//! Strict fleet quotas: an Allocate that passed authentication and the local checks is
//! parked while the driver takes a lease in the fleet's store (DESIGN.md principle 2:
//! decisions that need I/O are parked, not awaited). The driver answers with
//! [`Server::handle_lease_reply`]: granted (the Allocate goes on as without a fleet and the
//! allocation holds the lease until it ends), refused (486 for the user's quota, 508 for the
//! total), or unavailable. No answer within the timeout, no store to ask, or more parked
//! Allocates than [`MAX_PARKED`]: the Allocate is decided by per-node counting, as while the
//! store is down.
//!
//! An Allocate that reserves the next port (EVEN-PORT with R) asks for two leases at once:
//! the reservation holds one of its own, given back when it ends unclaimed and handed to the
//! allocation of the same user that claims it. What was granted by per-node counting holds
//! none until the driver, with the store back, has it adopted ([`Server::adopt_unleased`]).

use super::*;

/// Most Allocates one worker keeps parked; past it new ones are decided by per-node counting.
pub const MAX_PARKED: usize = 1024;

/// How long a parked Allocate waits for its lease by default (`redis.command-timeout-ms`).
pub const DEFAULT_LEASE_TIMEOUT: Duration = Duration::from_millis(500);

/// What the core asks of the driver for a parked Allocate ([`Io::request_lease`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeaseRequest<'a> {
    /// Names the parked Allocate in [`Server::handle_lease_reply`]; unique per worker.
    pub id: u64,
    /// The quota user (a REST user without its timestamp).
    pub user: &'a str,
    /// The user's allocation quota and the total quota; 0 means none.
    pub user_quota: u32,
    pub total_quota: u32,
    /// Leases wanted at once: 2 for an Allocate that also reserves a port (EVEN-PORT with
    /// the R bit), else 1.
    pub count: u32,
}

/// The store's answer to a [`LeaseRequest`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LeaseAnswer {
    /// A lease is held for the user: grant.
    Granted,
    /// The user's quota is used up across the fleet: 486.
    UserQuota,
    /// The total quota is used up across the fleet: 508.
    TotalQuota,
    /// The store could not answer (down, timed out): per-node counting decides.
    Unavailable,
}

/// What the parked path did, for `/metrics`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LeaseStats {
    pub parked: u64,
    pub granted: u64,
    pub refused: u64,
    /// Answered "unavailable" by the driver.
    pub unavailable: u64,
    /// No answer within the timeout: decided by per-node counting.
    pub timeouts: u64,
    /// Not parked because [`MAX_PARKED`] were: decided by per-node counting.
    pub overflow: u64,
    /// Retransmissions of a parked Allocate, dropped (the answer goes out once).
    pub retransmits: u64,
    /// Parked Allocates whose client went away before the answer.
    pub abandoned: u64,
}

/// One Allocate waiting for its lease: the request as it came, and the credential that
/// signed it (the answer is signed with it).
struct Parked {
    ft: FiveTuple,
    txid: [u8; 12],
    request: Vec<u8>,
    auth: Authed,
    user: String,
    count: u32,
}

/// How the Allocate being handled now got past the lease gate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Resume {
    /// Fresh: it may be parked.
    No,
    /// Its leases were granted; `left` of them not yet held by the allocation or the
    /// reservation it made.
    Leased { left: u32 },
    /// Decided by per-node counting.
    PerNode,
}

/// The parked Allocates of one worker.
pub(super) struct Leases {
    parked: FxHashMap<u64, Parked>,
    by_txn: FxHashMap<(FiveTuple, [u8; 12]), u64>,
    deadlines: BinaryHeap<Reverse<(Instant, u64)>>,
    next_id: u64,
    timeout: Duration,
    resuming: Resume,
    /// When the reservations this worker made end, so their counts and leases go back on
    /// time even when no Allocate touches the port pool.
    reservations: BinaryHeap<Reverse<Instant>>,
    /// Something was granted by per-node counting with a quota in force since the last
    /// [`Server::adopt_unleased`].
    unleased: bool,
    pub(super) stats: LeaseStats,
}

impl Default for Leases {
    fn default() -> Leases {
        Leases {
            parked: FxHashMap::default(),
            by_txn: FxHashMap::default(),
            deadlines: BinaryHeap::new(),
            next_id: 1,
            timeout: DEFAULT_LEASE_TIMEOUT,
            resuming: Resume::No,
            reservations: BinaryHeap::new(),
            unleased: false,
            stats: LeaseStats::default(),
        }
    }
}

impl Leases {
    /// The earliest moment a parked Allocate times out or a reservation ends.
    pub(super) fn poll_timeout(&self) -> Option<Instant> {
        let parked = self.deadlines.peek().map(|Reverse((t, _))| *t);
        let reserved = self.reservations.peek().map(|Reverse(t)| *t);
        match (parked, reserved) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Whether this request is a retransmission of a parked Allocate.
    pub(super) fn is_parked(&self, ft: &FiveTuple, txid: [u8; 12]) -> bool {
        self.by_txn.contains_key(&(*ft, txid))
    }

    fn remove(&mut self, id: u64) -> Option<Parked> {
        let p = self.parked.remove(&id)?;
        self.by_txn.remove(&(p.ft, p.txid));
        Some(p)
    }
}

impl Server {
    /// How long a parked Allocate waits for its lease before per-node counting decides
    /// (`redis.command-timeout-ms`).
    pub fn set_lease_timeout(&mut self, timeout: Duration) {
        self.leases.timeout = timeout;
    }

    /// Allocates parked now.
    pub fn parked_count(&self) -> usize {
        self.leases.parked.len()
    }

    /// The lease gate of Allocate, after authentication and before anything is taken: with
    /// a quota in force and a store to ask, checks the local counts (with `local_check`)
    /// and parks the request for `count` leases (true). False: go on now (no quota, no
    /// store, a resumed request, or the cap reached).
    pub(super) fn park_for_lease(
        &mut self,
        req: Request<'_>,
        quota_user: &str,
        count: u32,
        local_check: bool,
        io: &mut impl Io,
    ) -> Result<bool, RequestError> {
        if self.leases.resuming != Resume::No {
            return Ok(false);
        }
        let (user_quota, total_quota) = self.cfg.quotas.limits_for(quota_user);
        if user_quota == 0 && total_quota == 0 {
            return Ok(false);
        }
        if local_check {
            self.cfg.quotas.check(quota_user)?;
        }
        if self.leases.parked.len() >= MAX_PARKED {
            self.leases.stats.overflow += 1;
            return Ok(false);
        }
        let id = self.leases.next_id;
        let asked = io.request_lease(LeaseRequest {
            id,
            user: quota_user,
            user_quota,
            total_quota,
            count,
        });
        if !asked {
            return Ok(false);
        }
        self.leases.next_id += 1;
        let txid = req.msg.transaction_id();
        let l = &mut self.leases;
        l.parked.insert(
            id,
            Parked {
                ft: *req.ft,
                txid,
                request: req.msg.raw().to_vec(),
                auth: req.auth.clone(),
                user: quota_user.to_owned(),
                count,
            },
        );
        l.by_txn.insert((*req.ft, txid), id);
        l.deadlines.push(Reverse((req.now.mono + l.timeout, id)));
        l.stats.parked += 1;
        Ok(true)
    }

    /// The driver's answer for parked Allocate `id`. Returns false when it is no longer
    /// parked (timed out, or its client went away): a lease granted for it is then the
    /// driver's to give back.
    pub fn handle_lease_reply(
        &mut self,
        now: Time,
        id: u64,
        answer: LeaseAnswer,
        io: &mut impl Io,
    ) -> bool {
        let Some(p) = self.leases.remove(id) else {
            return false;
        };
        match answer {
            LeaseAnswer::Granted => {
                self.leases.stats.granted += 1;
                let left = self.resume(now, &p, Resume::Leased { left: p.count }, io);
                // Refused here after all (a port, the local count), or fewer held than
                // granted: those leases go back.
                for _ in 0..left {
                    io.release_lease(&p.user);
                }
            }
            LeaseAnswer::UserQuota | LeaseAnswer::TotalQuota => {
                self.leases.stats.refused += 1;
                let err = if answer == LeaseAnswer::UserQuota {
                    RequestError::AllocationQuotaReached
                } else {
                    RequestError::InsufficientCapacity
                };
                if let Ok(msg) = Message::parse(&p.request) {
                    self.send_error(&p.ft, &msg, err, Some(&p.auth), io);
                }
            }
            LeaseAnswer::Unavailable => {
                self.leases.stats.unavailable += 1;
                self.resume(now, &p, Resume::PerNode, io);
            }
        }
        true
    }

    /// Decides the parked Allocates whose time is up by per-node counting.
    pub(super) fn expire_parked(&mut self, now: Time, io: &mut impl Io) {
        while let Some(&Reverse((t, id))) = self.leases.deadlines.peek() {
            if t > now.mono {
                break;
            }
            self.leases.deadlines.pop();
            let Some(p) = self.leases.remove(id) else {
                continue;
            };
            self.leases.stats.timeouts += 1;
            let n = self.leases.stats.timeouts;
            if n == 1 || n.is_power_of_two() {
                warn!(
                    timeouts = n,
                    "no fleet lease within the command timeout: quota counted per node"
                );
            }
            self.resume(now, &p, Resume::PerNode, io);
        }
    }

    /// Forgets the parked Allocates of a 5-tuple that went away (its connection closed).
    pub(super) fn abandon_parked(&mut self, ft: &FiveTuple) {
        let ids: Vec<u64> = self
            .leases
            .parked
            .iter()
            .filter(|(_, p)| p.ft == *ft)
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            self.leases.remove(id);
            self.leases.stats.abandoned += 1;
        }
    }

    /// Forgets every parked Allocate (shutdown).
    pub(super) fn abandon_all_parked(&mut self) {
        let n = self.leases.parked.len() as u64;
        self.leases.parked.clear();
        self.leases.by_txn.clear();
        self.leases.deadlines.clear();
        self.leases.stats.abandoned += n;
    }

    /// Handles a parked Allocate again, past the gate. Returns how many of its granted
    /// leases neither the allocation nor its reservation holds (`Leased` only).
    fn resume(&mut self, now: Time, p: &Parked, mode: Resume, io: &mut impl Io) -> u32 {
        let granted = match mode {
            Resume::Leased { left } => left,
            _ => 0,
        };
        let Ok(msg) = Message::parse(&p.request) else {
            return granted;
        };
        self.leases.resuming = mode;
        let req = Request {
            now,
            ft: &p.ft,
            msg: &msg,
            auth: &p.auth,
        };
        if let Err(e) = self.handle_allocate(req, io) {
            self.send_error(&p.ft, &msg, e, Some(&p.auth), io);
        }
        self.give_back_lapsed(io);
        let left = match self.leases.resuming {
            Resume::Leased { left } => left,
            _ => 0,
        };
        self.leases.resuming = Resume::No;
        left
    }

    /// Takes one lease of the Allocate being resumed for what it installs (its allocation,
    /// its reservation): true when it was granted one not yet held. False without one
    /// (per-node counting) also marks that something under a quota holds no lease, when
    /// `quota_user` has a quota in force, for the next [`Server::adopt_unleased`].
    pub(super) fn take_lease(&mut self, quota_user: &str) -> bool {
        if let Resume::Leased { left } = &mut self.leases.resuming
            && *left > 0
        {
            *left -= 1;
            return true;
        }
        if !self.leases.unleased && self.cfg.quotas.limits_for(quota_user) != (0, 0) {
            self.leases.unleased = true;
        }
        false
    }

    /// A reservation made now ends at `expires`: wake then to end it, so its quota count
    /// and lease go back on time.
    pub(super) fn note_reservation(&mut self, expires: Instant) {
        self.leases.reservations.push(Reverse(expires));
    }

    /// Ends the reservations whose time is up (see [`Server::note_reservation`]).
    pub(super) fn expire_reservations(&mut self, now: Instant, io: &mut impl Io) {
        let mut due = false;
        while let Some(&Reverse(t)) = self.leases.reservations.peek() {
            if t > now {
                break;
            }
            self.leases.reservations.pop();
            due = true;
        }
        if due {
            self.lock_ports().expire(now);
            self.give_back_lapsed(io);
        }
    }

    /// Gives back the fleet leases of reservations that ended unclaimed (on any worker:
    /// the port pool is shared, and so is the driver's lease desk).
    pub(super) fn give_back_lapsed(&mut self, io: &mut impl Io) {
        for user in self.lock_ports().take_lapsed_leases() {
            io.release_lease(&user);
        }
    }

    /// Marks the live allocations and reservations that count against a quota in force but
    /// hold no fleet lease (granted by per-node counting while the store was down, or when
    /// no lease came in time) as holding one, and returns their users, one entry each: the
    /// driver registers these leases in the store, over the quota if need be (nothing is
    /// ended; new Allocates are refused until the counts fall), and from then on they are
    /// given back as they end. Without `all`, returns at once unless something was granted
    /// without a lease since the last call.
    pub fn adopt_unleased(&mut self, all: bool) -> Vec<String> {
        if !all && !self.leases.unleased {
            return Vec::new();
        }
        self.leases.unleased = false;
        let quotas = self.cfg.quotas.clone();
        let counted = |user: &str| quotas.limits_for(user) != (0, 0);
        let sep = self.cfg.rest_separator;
        let mut users = Vec::new();
        for a in self.slots.iter_mut().flatten() {
            let user = display_user(&a.username, sep);
            if !a.leased && counted(user) {
                a.leased = true;
                users.push(user.to_owned());
            }
        }
        users.extend(self.lock_ports().adopt_reservations(counted));
        users
    }
}
