//! Admission and queueing, one [`Admission`] per model.
//!
//! - **Bounded**: a model admits at most `capacity` requests (queued or running). The next
//!   one is refused at once with `Busy`, the depth, and `retry_after_ms` estimated from the
//!   depth and the measured service time. Nothing waits unbounded.
//! - **Priority**: interactive entries are served before batch ones; when the model is
//!   full, an interactive request takes the place of the newest queued batch request,
//!   which is shed with `Busy`.
//! - **Fairness**: within a class, users (peer uids) take turns, and within a user its
//!   sessions (round-robin, one entry each), so one client flooding a model — or one user
//!   opening many connections — cannot starve another of the same class.
//! - **Deadlines**: an entry still queued past its deadline is dropped with `Timeout` and
//!   never reaches the model.
//!
//! Consumers: the embedding [`batcher`] pops entries to form batches; generation streams
//! wait for one of the model's `slots` (its concurrent streams), handed out in the same
//! order. One-shot jobs (tokenize) take a place but do not queue.

pub mod batcher;

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use mlxd_proto::{ErrorCode, Priority, Response, SchedStats, WireError};
use tokio::sync::{oneshot, Notify};
use tokio::time::Instant;

/// What a batched request asks of its model.
#[derive(Debug)]
pub enum BatchWork {
    /// Texts to embed, each after the model's prompt named `prompt` ("" = none);
    /// L2-normalised per request when asked.
    Embed { texts: Vec<String>, prompt: String, normalize: bool },
    /// Documents to score against `query`; the best `top_n` (all when `None`) are kept.
    Rerank { query: String, documents: Vec<String>, top_n: Option<u32> },
}

impl BatchWork {
    /// Texts (or query/document pairs) the model will read: what a batch's size counts.
    pub fn len(&self) -> usize {
        match self {
            BatchWork::Embed { texts, .. } => texts.len(),
            BatchWork::Rerank { documents, .. } => documents.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn is_rerank(&self) -> bool {
        matches!(self, BatchWork::Rerank { .. })
    }
}

/// One request waiting for its batch: vectors, or scores.
#[derive(Debug)]
pub struct BatchItem {
    pub work: BatchWork,
    pub priority: Priority,
    /// The session that sent it (whether other clients are active decides the wait).
    pub session: u64,
    /// When the request arrived (for the queue-wait metric).
    pub arrived: tokio::time::Instant,
    /// `Response::Embeddings` or `Response::Reranked`.
    pub reply: oneshot::Sender<Result<Response, WireError>>,
}

/// What a queued entry is waiting for.
#[derive(Debug)]
pub enum Pending {
    /// Texts for the embedding batcher, with the channel for their vectors.
    Batch(BatchItem),
    /// A generation stream waiting for a slot: `Ok(())` when it may start.
    Turn(oneshot::Sender<Result<(), WireError>>),
}

impl Pending {
    fn fail(self, error: WireError) {
        match self {
            Pending::Batch(item) => {
                let _ = item.reply.send(Err(error));
            }
            Pending::Turn(turn) => {
                let _ = turn.send(Err(error));
            }
        }
    }
}

#[derive(Debug)]
struct Entry {
    seq: u64,
    deadline: Option<Instant>,
    payload: Pending,
}

#[derive(Debug)]
struct SessionQueue {
    session: u64,
    entries: VecDeque<Entry>,
}

/// One user's sessions with queued entries, in turn order.
#[derive(Debug)]
struct UserQueue {
    uid: u32,
    sessions: VecDeque<SessionQueue>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Place {
    /// Holds a place, not in the queue (before `enqueue`, or a one-shot job).
    Held,
    Queued,
    /// Taken off the queue by a consumer (or dropped by it for a passed deadline).
    Taken,
    /// Holds one of the model's slots.
    Running,
}

#[derive(Debug, Default)]
struct State {
    /// Every admitted request's place; its size is the depth.
    places: HashMap<u64, Place>,
    /// The user each place belongs to.
    owners: HashMap<u64, u32>,
    /// Per class (interactive, batch), the users with queued entries, in turn order.
    classes: [VecDeque<UserQueue>; 2],
    running: usize,
    next_seq: u64,
}

fn class(priority: Priority) -> usize {
    match priority {
        Priority::Interactive => 0,
        Priority::Batch => 1,
    }
}

impl State {
    /// Removes the entry `seq` of `uid`'s `session` from class `class`, if still queued.
    fn remove(&mut self, class: usize, uid: u32, session: u64, seq: u64) -> Option<Entry> {
        let ring = &mut self.classes[class];
        let user_at = ring.iter().position(|u| u.uid == uid)?;
        let user = &mut ring[user_at];
        let at = user.sessions.iter().position(|q| q.session == session)?;
        let queue = &mut user.sessions[at];
        let index = queue.entries.iter().position(|e| e.seq == seq)?;
        let entry = queue.entries.remove(index);
        if queue.entries.is_empty() {
            user.sessions.remove(at);
        }
        if user.sessions.is_empty() {
            ring.remove(user_at);
        }
        entry
    }

    /// The next entry in turn (interactive first, users then their sessions round-robin),
    /// without taking it.
    fn peek(&self) -> Option<&Entry> {
        self.classes.iter().find_map(|ring| {
            ring.front().and_then(|user| user.sessions.front()).and_then(|queue| queue.entries.front())
        })
    }

    /// Takes the next entry in turn; its session goes to the back of its user's ring, and
    /// the user to the back of its class's ring.
    fn pop(&mut self) -> Option<Entry> {
        let ring = self.classes.iter_mut().find(|ring| !ring.is_empty())?;
        let mut user = ring.pop_front()?;
        let mut queue = user.sessions.pop_front()?;
        let entry = queue.entries.pop_front();
        if !queue.entries.is_empty() {
            user.sessions.push_back(queue);
        }
        if !user.sessions.is_empty() {
            ring.push_back(user);
        }
        entry
    }

    /// The newest queued entry of class `class` (of user `uid` only, if given).
    fn newest_queued(&self, class: usize, uid: Option<u32>) -> Option<(Client, u64)> {
        self.classes[class]
            .iter()
            .filter(|user| uid.is_none_or(|uid| user.uid == uid))
            .flat_map(|user| user.sessions.iter().map(move |queue| (user.uid, queue)))
            .flat_map(|(uid, queue)| {
                queue.entries.iter().map(move |entry| (Client { uid, session: queue.session }, entry.seq))
            })
            .max_by_key(|&(_, seq)| seq)
    }

    /// The user holding the most places, and how many.
    fn heaviest_user(&self) -> Option<(u32, usize)> {
        let mut held: HashMap<u32, usize> = HashMap::new();
        for &uid in self.owners.values() {
            *held.entry(uid).or_default() += 1;
        }
        held.into_iter().max_by_key(|&(uid, count)| (count, std::cmp::Reverse(uid)))
    }

    fn queued(&self) -> usize {
        self.classes.iter().flatten().flat_map(|u| &u.sessions).map(|q| q.entries.len()).sum()
    }
}

#[derive(Debug, Default)]
struct Counters {
    admitted: AtomicU64,
    busy: AtomicU64,
    shed: AtomicU64,
    timeouts: AtomicU64,
    single_stream: AtomicU64,
    batches: AtomicU64,
    batched_requests: AtomicU64,
}

#[derive(Debug)]
pub struct Admission {
    capacity: usize,
    /// Entries that may run at once (generation streams); consumers other than slot
    /// holders (the embedding batcher) ignore it.
    slots: usize,
    state: Mutex<State>,
    /// Wakes the embedding batcher when an entry is queued.
    queued: Notify,
    /// Exponentially weighted mean service time per request, in microseconds (0 = unknown).
    service_us: AtomicU64,
    counters: Counters,
}

/// A request's place at its model; given back when dropped (which also withdraws a
/// still-queued entry and frees a slot it held).
#[derive(Debug)]
pub struct Admitted {
    admission: Arc<Admission>,
    seq: u64,
    client: Client,
    priority: Priority,
}

/// Who a request is from, for turn-taking: the user (peer uid) and their session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Client {
    pub uid: u32,
    pub session: u64,
}

impl Admission {
    pub fn new(capacity: usize, slots: usize) -> Arc<Admission> {
        Arc::new(Admission {
            capacity: capacity.max(1),
            slots: slots.max(1),
            state: Mutex::new(State::default()),
            queued: Notify::new(),
            service_us: AtomicU64::new(0),
            counters: Counters::default(),
        })
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Admits a request or refuses it at once with `Busy`. When the model is full, an
    /// interactive request takes the place of the newest queued batch entry, which is
    /// answered `Busy` (shed).
    pub fn admit(self: &Arc<Self>, model: &str, client: Client, priority: Priority) -> Result<Admitted, WireError> {
        let mut state = self.state();
        if state.places.len() >= self.capacity {
            // Full. Interactive work takes the place of the newest queued batch entry; and
            // a user holding more places than this one gives up its newest queued entry
            // (of this class or a lower one), so one user — however many connections it
            // opens — cannot keep another out of a model for good.
            let newest_batch = (priority == Priority::Interactive)
                .then(|| state.newest_queued(class(Priority::Batch), None))
                .flatten()
                .map(|(victim, seq)| (class(Priority::Batch), victim, seq, "batch request shed for interactive work"));
            let over_share = || {
                let (hog, held) = state.heaviest_user()?;
                let mine = state.owners.values().filter(|&&uid| uid == client.uid).count();
                if hog == client.uid || held <= mine + 1 {
                    return None;
                }
                (class(priority)..2).rev().find_map(|c| {
                    state.newest_queued(c, Some(hog)).map(|(victim, seq)| {
                        (c, victim, seq, "request shed: its user holds more of the model's places than another")
                    })
                })
            };
            let Some((victim_class, victim, victim_seq, why)) = newest_batch.or_else(over_share) else {
                let depth = state.places.len();
                drop(state);
                self.counters.busy.fetch_add(1, Ordering::Relaxed);
                return Err(self.busy(model, depth));
            };
            if let Some(entry) = state.remove(victim_class, victim.uid, victim.session, victim_seq) {
                state.places.remove(&victim_seq);
                state.owners.remove(&victim_seq);
                let depth = state.places.len() + 1;
                self.counters.shed.fetch_add(1, Ordering::Relaxed);
                let mut error = self.busy(model, depth);
                error.message = format!("{why}: {}", error.message);
                entry.payload.fail(error);
            }
        }
        let seq = state.next_seq;
        state.next_seq += 1;
        state.places.insert(seq, Place::Held);
        state.owners.insert(seq, client.uid);
        drop(state);
        self.counters.admitted.fetch_add(1, Ordering::Relaxed);
        Ok(Admitted { admission: self.clone(), seq, client, priority })
    }

    fn busy(&self, model: &str, depth: usize) -> WireError {
        WireError::new(
            ErrorCode::Busy,
            format!("model {model} has {depth} requests queued or running (capacity {})", self.capacity),
        )
        .with_retry_after(self.retry_after_ms(depth as u32))
    }

    /// Requests admitted and not yet finished.
    pub fn depth(&self) -> u32 {
        self.state().places.len() as u32
    }

    pub fn capacity(&self) -> u32 {
        self.capacity as u32
    }

    /// Takes the next queued batch entry (embeddings, reranking) in turn if `fits` accepts
    /// it; entries whose deadline has passed are answered `Timeout` and skipped.
    pub fn pop_batch(&self, fits: impl Fn(&BatchItem) -> bool) -> Option<BatchItem> {
        let mut state = self.state();
        loop {
            let entry = state.peek()?;
            let expired = entry.deadline.is_some_and(|d| d <= Instant::now());
            match &entry.payload {
                Pending::Batch(item) if !expired && !fits(item) => return None,
                _ => {}
            }
            let entry = state.pop()?;
            state.places.insert(entry.seq, Place::Taken);
            if expired {
                self.counters.timeouts.fetch_add(1, Ordering::Relaxed);
                entry.payload.fail(deadline_passed());
                continue;
            }
            match entry.payload {
                Pending::Batch(item) => return Some(item),
                other => other.fail(WireError::internal("a generation entry reached the embedding batcher")),
            }
        }
    }

    /// Entries waiting in the queue.
    pub fn queued(&self) -> usize {
        self.state().queued()
    }

    /// Waits until something is queued (returns at once if something was queued since
    /// the last wait).
    pub async fn wait_queued(&self) {
        self.queued.notified().await;
    }

    /// Hands free slots to waiting streams, in turn.
    fn dispatch(&self, state: &mut State) {
        while state.running < self.slots {
            let Some(entry) = state.pop() else { return };
            let expired = entry.deadline.is_some_and(|d| d <= Instant::now());
            match entry.payload {
                _ if expired => {
                    state.places.insert(entry.seq, Place::Taken);
                    self.counters.timeouts.fetch_add(1, Ordering::Relaxed);
                    entry.payload.fail(deadline_passed());
                }
                Pending::Turn(turn) => {
                    if turn.send(Ok(())).is_ok() {
                        state.places.insert(entry.seq, Place::Running);
                        state.running += 1;
                    } else {
                        state.places.insert(entry.seq, Place::Taken);
                    }
                }
                other @ Pending::Batch(_) => {
                    state.places.insert(entry.seq, Place::Taken);
                    other.fail(WireError::internal("an embedding entry reached a generation slot"));
                }
            }
        }
    }

    /// Feeds a finished request's service time into the estimate (for work done in
    /// batches or concurrently, the elapsed time divided by how many shared it).
    pub fn record_service(&self, elapsed: Duration) {
        let sample = elapsed.as_micros().min(u128::from(u64::MAX)) as u64;
        let old = self.service_us.load(Ordering::Relaxed);
        let new = if old == 0 { sample } else { (old * 7 + sample) / 8 };
        self.service_us.store(new.max(1), Ordering::Relaxed);
    }

    /// Time for the queue ahead to drain at the measured rate; at least 1 ms, and 50 ms
    /// per request when nothing has been measured.
    pub fn retry_after_ms(&self, depth: u32) -> u64 {
        let per_request_us = match self.service_us.load(Ordering::Relaxed) {
            0 => 50_000,
            us => us,
        };
        (u64::from(depth) * per_request_us / 1000).max(1)
    }

    /// A generation request the model's batch path could not express ran on its own.
    pub fn count_single_stream(&self) {
        self.counters.single_stream.fetch_add(1, Ordering::Relaxed);
    }

    /// A worker call that served `requests` requests together.
    pub fn count_batch(&self, requests: usize) {
        self.counters.batches.fetch_add(1, Ordering::Relaxed);
        self.counters.batched_requests.fetch_add(requests as u64, Ordering::Relaxed);
    }

    pub fn stats(&self) -> SchedStats {
        let (queued, running) = {
            let state = self.state();
            (state.queued() as u32, state.running as u32)
        };
        let c = &self.counters;
        SchedStats {
            queued,
            running,
            slots: self.slots as u32,
            admitted: c.admitted.load(Ordering::Relaxed),
            busy: c.busy.load(Ordering::Relaxed),
            shed: c.shed.load(Ordering::Relaxed),
            timeouts: c.timeouts.load(Ordering::Relaxed),
            single_stream: c.single_stream.load(Ordering::Relaxed),
            batches: c.batches.load(Ordering::Relaxed),
            batched_requests: c.batched_requests.load(Ordering::Relaxed),
            service_us: self.service_us.load(Ordering::Relaxed),
        }
    }
}

fn deadline_passed() -> WireError {
    WireError::new(ErrorCode::Timeout, "the request's deadline passed while it was queued; it never reached the model")
}

impl Admitted {
    /// Queues `payload` behind this place, in its session's turn within its class;
    /// `deadline` drops it with `Timeout` if it is still queued then.
    pub fn enqueue(&self, payload: Pending, deadline: Option<Instant>) {
        let admission = &self.admission;
        let mut state = admission.state();
        state.places.insert(self.seq, Place::Queued);
        let ring = &mut state.classes[class(self.priority)];
        let entry = Entry { seq: self.seq, deadline, payload };
        let Client { uid, session } = self.client;
        let user = match ring.iter().position(|u| u.uid == uid) {
            Some(at) => &mut ring[at],
            None => {
                ring.push_back(UserQueue { uid, sessions: VecDeque::new() });
                ring.back_mut().expect("just pushed")
            }
        };
        match user.sessions.iter_mut().find(|q| q.session == session) {
            Some(queue) => queue.entries.push_back(entry),
            None => user.sessions.push_back(SessionQueue { session, entries: VecDeque::from([entry]) }),
        }
        if matches!(state.peek().map(|e| &e.payload), Some(Pending::Turn(_))) {
            admission.dispatch(&mut state);
        }
        drop(state);
        admission.queued.notify_one();
    }

    /// Takes the entry out of the queue if it is still there (its deadline passed, or its
    /// client gave up); true if it was, and so never reaches the model.
    pub fn withdraw(&self) -> bool {
        let mut state = self.admission.state();
        if state.places.get(&self.seq) != Some(&Place::Queued) {
            return false;
        }
        state.remove(class(self.priority), self.client.uid, self.client.session, self.seq);
        state.places.insert(self.seq, Place::Held);
        true
    }

    /// Withdraws the entry because its deadline passed: the `Timeout` answer, or `None`
    /// if a consumer took it first (it is then served normally).
    pub fn expire(&self) -> Option<WireError> {
        self.withdraw().then(|| {
            self.admission.counters.timeouts.fetch_add(1, Ordering::Relaxed);
            deadline_passed()
        })
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let admission = &self.admission;
        let mut state = admission.state();
        state.owners.remove(&self.seq);
        match state.places.remove(&self.seq) {
            Some(Place::Queued) => {
                state.remove(class(self.priority), self.client.uid, self.client.session, self.seq);
            }
            Some(Place::Running) => {
                state.running -= 1;
                admission.dispatch(&mut state);
            }
            _ => {}
        }
    }
}

/// The instant `deadline_ms` after `arrived`, for a request that set one.
pub fn deadline(arrived: Instant, deadline_ms: Option<u64>) -> Option<Instant> {
    deadline_ms.map(|ms| arrived + Duration::from_millis(ms))
}

#[cfg(test)]
mod tests;
