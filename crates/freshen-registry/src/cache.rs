//! A cache that coalesces concurrent look-ups of one key into one fetch.
//!
//! Every workload that runs `nginx:1.27` asks for the same tag at about the
//! same time (they are reconciled together after a re-list); this cache makes
//! that one registry request. Entries either live for a time-to-live (tags,
//! which move) or until evicted (content by digest, which never changes);
//! a weight budget bounds memory, evicting the least recently used entries.
//! Failed fetches are not cached: the next look-up tries again.
//!
//! The caller passes `now`, so expiry is tested without waiting.

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::Mutex;
use std::time::Duration;

use futures::FutureExt;
use futures::future::{BoxFuture, Shared};
use tokio::time::Instant;

/// How a look-up was answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lookup {
    /// From a fresh cached entry.
    Hit,
    /// By joining a fetch another caller had started.
    Coalesced,
    /// By a fetch of its own.
    Fetched,
}

type Pending<V, E> = Shared<BoxFuture<'static, Result<V, E>>>;

enum Slot<V, E> {
    Ready {
        value: V,
        fetched_at: Instant,
        used: u64,
        weight: usize,
    },
    Pending(Pending<V, E>),
}

struct State<K, V, E> {
    slots: HashMap<K, Slot<V, E>>,
    weight: usize,
    tick: u64,
}

/// The cache. `V` and `E` are cloned to every waiter, so keep them cheap
/// (`Arc` them when large).
pub struct CoalescingCache<K, V, E> {
    state: Mutex<State<K, V, E>>,
    ttl: Option<Duration>,
    max_weight: usize,
    weigh: fn(&K, &V) -> usize,
}

impl<K, V, E> CoalescingCache<K, V, E>
where
    K: Eq + Hash + Clone + Send + 'static,
    V: Clone + Send + Sync + 'static,
    E: Clone + Send + Sync + 'static,
{
    /// A cache whose entries expire `ttl` after they were fetched (`None`:
    /// never), holding at most `max_weight` as measured by `weigh`.
    pub fn new(ttl: Option<Duration>, max_weight: usize, weigh: fn(&K, &V) -> usize) -> Self {
        Self {
            state: Mutex::new(State {
                slots: HashMap::new(),
                weight: 0,
                tick: 0,
            }),
            ttl,
            max_weight,
            weigh,
        }
    }

    /// The value for `key`: cached if fresh at `now`, else from an in-flight
    /// fetch of the same key, else from `fetch()`.
    pub async fn get<F, Fut>(&self, key: &K, now: Instant, fetch: F) -> (Result<V, E>, Lookup)
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<V, E>> + Send + 'static,
    {
        let (pending, how) = {
            let Ok(mut state) = self.state.lock() else {
                // A poisoned lock means a panic elsewhere; serve uncached.
                return (fetch().await, Lookup::Fetched);
            };
            state.tick += 1;
            let tick = state.tick;
            let ttl = self.ttl;
            match state.slots.get_mut(key) {
                Some(Slot::Ready {
                    value,
                    fetched_at,
                    used,
                    ..
                }) if ttl.is_none_or(|ttl| now.saturating_duration_since(*fetched_at) < ttl) => {
                    *used = tick;
                    return (Ok(value.clone()), Lookup::Hit);
                }
                Some(Slot::Pending(pending)) => (pending.clone(), Lookup::Coalesced),
                _ => {
                    let pending = fetch().boxed().shared();
                    if let Some(Slot::Ready { weight, .. }) = state
                        .slots
                        .insert(key.clone(), Slot::Pending(pending.clone()))
                    {
                        state.weight -= weight;
                    }
                    (pending, Lookup::Fetched)
                }
            }
        };
        let result = pending.clone().await;
        self.settle(key, &pending, &result, now);
        (result, how)
    }

    /// Moves a finished fetch into the cache (or drops a failed one). Every
    /// waiter tries, so it happens even when the first caller was cancelled;
    /// only the slot still holding this very fetch is touched.
    fn settle(&self, key: &K, pending: &Pending<V, E>, result: &Result<V, E>, now: Instant) {
        let Ok(mut state) = self.state.lock() else {
            return;
        };
        let ours = matches!(state.slots.get(key), Some(Slot::Pending(p)) if p.ptr_eq(pending));
        if !ours {
            return;
        }
        match result {
            Ok(value) => {
                let weight = (self.weigh)(key, value);
                state.tick += 1;
                let used = state.tick;
                state.weight += weight;
                state.slots.insert(
                    key.clone(),
                    Slot::Ready {
                        value: value.clone(),
                        fetched_at: now,
                        used,
                        weight,
                    },
                );
                self.evict(&mut state);
            }
            Err(_) => {
                state.slots.remove(key);
            }
        }
    }

    /// Evicts least recently used entries until the weight fits, down to
    /// nine tenths of the budget so that eviction is not paid on every insert.
    fn evict(&self, state: &mut State<K, V, E>) {
        if state.weight <= self.max_weight {
            return;
        }
        let target = self.max_weight / 10 * 9;
        let mut ready: Vec<(u64, K, usize)> = state
            .slots
            .iter()
            .filter_map(|(k, s)| match s {
                Slot::Ready { used, weight, .. } => Some((*used, k.clone(), *weight)),
                Slot::Pending(_) => None,
            })
            .collect();
        ready.sort_unstable_by_key(|(used, _, _)| *used);
        for (_, key, weight) in ready {
            if state.weight <= target {
                break;
            }
            state.slots.remove(&key);
            state.weight -= weight;
        }
    }

    /// Forgets the cached value of `key`, so that the next [`get`](Self::get)
    /// fetches it again; a fetch in flight is left to finish.
    pub fn invalidate(&self, key: &K) {
        let Ok(mut state) = self.state.lock() else {
            return;
        };
        if let Some(Slot::Ready { weight, .. }) = state.slots.get(key) {
            let weight = *weight;
            state.slots.remove(key);
            state.weight -= weight;
        }
    }

    /// Forgets the cached values of every key `matches` selects.
    pub fn invalidate_where(&self, matches: impl Fn(&K) -> bool) {
        let Ok(mut state) = self.state.lock() else {
            return;
        };
        let keys: Vec<K> = state
            .slots
            .iter()
            .filter(|(k, slot)| matches!(slot, Slot::Ready { .. }) && matches(k))
            .map(|(k, _)| k.clone())
            .collect();
        for key in keys {
            if let Some(Slot::Ready { weight, .. }) = state.slots.remove(&key) {
                state.weight -= weight;
            }
        }
    }

    /// Total weight of the cached entries.
    pub fn weight(&self) -> usize {
        self.state.lock().map(|s| s.weight).unwrap_or(0)
    }

    /// Number of cached or in-flight keys.
    pub fn len(&self) -> usize {
        self.state.lock().map(|s| s.slots.len()).unwrap_or(0)
    }

    /// Whether nothing is cached or in flight.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    type Cache = CoalescingCache<String, u32, String>;

    /// A fetch that counts its calls and then waits for a permit of `gate`
    /// (permits are kept, so a release before the wait is never lost).
    fn counting_fetch(
        calls: &Arc<AtomicUsize>,
        gate: &Arc<tokio::sync::Semaphore>,
        value: Result<u32, String>,
    ) -> impl FnOnce() -> BoxFuture<'static, Result<u32, String>> {
        let (calls, gate) = (Arc::clone(calls), Arc::clone(gate));
        move || {
            calls.fetch_add(1, Ordering::SeqCst);
            async move {
                let _permit = gate.acquire().await;
                value
            }
            .boxed()
        }
    }

    /// Yields until `counter` reaches `want`. On the current-thread test
    /// runtime a task that counted itself has also run its look-up up to its
    /// first await, i.e. it holds or has joined the pending fetch.
    async fn until(counter: &AtomicUsize, want: usize) {
        while counter.load(Ordering::SeqCst) < want {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test]
    async fn an_invalidated_key_is_fetched_again_and_the_rest_stay() {
        let cache = Cache::new(Some(Duration::from_secs(60)), 1_000, |_, _| 1);
        let now = Instant::now();
        let value = |v: u32| move || async move { Ok::<u32, String>(v) };
        assert_eq!(cache.get(&"a".into(), now, value(1)).await.0, Ok(1));
        assert_eq!(cache.get(&"b".into(), now, value(2)).await.0, Ok(2));
        cache.invalidate(&"a".to_owned());
        assert_eq!(cache.weight(), 1);
        let (again, how) = cache.get(&"a".into(), now, value(3)).await;
        assert_eq!((again, how), (Ok(3), Lookup::Fetched));
        let (kept, how) = cache.get(&"b".into(), now, value(4)).await;
        assert_eq!((kept, how), (Ok(2), Lookup::Hit));
    }

    #[tokio::test]
    async fn concurrent_lookups_of_one_key_make_one_fetch() {
        let cache = Arc::new(Cache::new(Some(Duration::from_secs(60)), 1_000, |_, _| 1));
        let calls = Arc::new(AtomicUsize::new(0));
        let arrived = Arc::new(AtomicUsize::new(0));
        let gate = Arc::new(tokio::sync::Semaphore::new(0));
        let now = Instant::now();
        let mut tasks = Vec::new();
        for i in 0..50 {
            let (cache, calls, gate, arrived) = (
                Arc::clone(&cache),
                Arc::clone(&calls),
                Arc::clone(&gate),
                Arc::clone(&arrived),
            );
            let key = format!("tag-{}", i % 3);
            tasks.push(tokio::spawn(async move {
                arrived.fetch_add(1, Ordering::SeqCst);
                cache
                    .get(&key, now, counting_fetch(&calls, &gate, Ok(7)))
                    .await
            }));
        }
        // Every caller is waiting on one of three pending fetches before any
        // fetch may finish: all 47 others must join, none may be a hit.
        until(&arrived, 50).await;
        gate.add_permits(3);
        let mut how = Vec::new();
        for t in tasks {
            let (value, lookup) = t.await.unwrap();
            assert_eq!(value, Ok(7));
            how.push(lookup);
        }
        assert_eq!(calls.load(Ordering::SeqCst), 3);
        assert_eq!(how.iter().filter(|h| **h == Lookup::Fetched).count(), 3);
        assert_eq!(how.iter().filter(|h| **h == Lookup::Coalesced).count(), 47);
        // Now cached: no fetch at all.
        let (v, lookup) = cache.get(&"tag-0".into(), now, || async { Ok(0) }).await;
        assert_eq!((v, lookup), (Ok(7), Lookup::Hit));
    }

    #[tokio::test]
    async fn entries_expire_after_their_ttl_measured_from_the_callers_now() {
        let cache = Cache::new(Some(Duration::from_secs(60)), 1_000, |_, _| 1);
        let t0 = Instant::now();
        let key = "k".to_owned();
        assert_eq!(
            cache.get(&key, t0, || async { Ok(1) }).await,
            (Ok(1), Lookup::Fetched)
        );
        let later = t0 + Duration::from_secs(59);
        assert_eq!(
            cache.get(&key, later, || async { Ok(2) }).await,
            (Ok(1), Lookup::Hit)
        );
        let expired = t0 + Duration::from_secs(60);
        assert_eq!(
            cache.get(&key, expired, || async { Ok(2) }).await,
            (Ok(2), Lookup::Fetched)
        );
    }

    #[tokio::test]
    async fn failures_are_shared_but_not_cached() {
        let cache = Cache::new(None, 1_000, |_, _| 1);
        let now = Instant::now();
        let key = "k".to_owned();
        let (r, _) = cache
            .get(&key, now, || async { Err("503".to_owned()) })
            .await;
        assert_eq!(r, Err("503".to_owned()));
        assert!(cache.is_empty());
        assert_eq!(
            cache.get(&key, now, || async { Ok(5) }).await,
            (Ok(5), Lookup::Fetched)
        );
    }

    #[tokio::test]
    async fn the_weight_budget_evicts_least_recently_used_first() {
        let cache = Cache::new(None, 100, |_, v| *v as usize);
        let now = Instant::now();
        for (k, w) in [("a", 40), ("b", 40)] {
            let (value, how) = cache
                .get(&k.to_owned(), now, move || async move { Ok(w) })
                .await;
            assert_eq!((value, how), (Ok(w), Lookup::Fetched));
        }
        // Touch `a`, so `b` is the least recently used.
        assert_eq!(
            cache.get(&"a".to_owned(), now, || async { Ok(0) }).await.1,
            Lookup::Hit
        );
        let (value, _) = cache.get(&"c".to_owned(), now, || async { Ok(40) }).await;
        assert_eq!(value, Ok(40));
        assert!(cache.weight() <= 100, "weight {}", cache.weight());
        assert_eq!(
            cache.get(&"a".to_owned(), now, || async { Ok(0) }).await.1,
            Lookup::Hit
        );
        assert_eq!(
            cache.get(&"b".to_owned(), now, || async { Ok(40) }).await.1,
            Lookup::Fetched
        );
    }

    #[tokio::test]
    async fn a_cancelled_first_caller_does_not_strand_the_others() {
        let cache = Arc::new(Cache::new(None, 1_000, |_, _| 1));
        let calls = Arc::new(AtomicUsize::new(0));
        let arrived = Arc::new(AtomicUsize::new(0));
        let gate = Arc::new(tokio::sync::Semaphore::new(0));
        let now = Instant::now();
        let key = "k".to_owned();
        let first = {
            let (cache, calls, gate, key) = (
                Arc::clone(&cache),
                Arc::clone(&calls),
                Arc::clone(&gate),
                key.clone(),
            );
            tokio::spawn(async move {
                cache
                    .get(&key, now, counting_fetch(&calls, &gate, Ok(9)))
                    .await
            })
        };
        until(&calls, 1).await;
        first.abort();
        let second = {
            let (cache, key, arrived) = (Arc::clone(&cache), key.clone(), Arc::clone(&arrived));
            tokio::spawn(async move {
                arrived.fetch_add(1, Ordering::SeqCst);
                cache.get(&key, now, || async { Ok(0) }).await
            })
        };
        until(&arrived, 1).await;
        gate.add_permits(1);
        assert_eq!(second.await.unwrap(), (Ok(9), Lookup::Coalesced));
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert_eq!(
            cache.get(&key, now, || async { Ok(0) }).await,
            (Ok(9), Lookup::Hit)
        );
    }
}
