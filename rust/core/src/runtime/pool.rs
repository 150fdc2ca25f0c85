//! The one global thread pool that all parallel work in ferrolm runs on.
//!
//! Size: [`set_num_threads`] if called, else the environment variable `FERROLM_NUM_THREADS`,
//! else the number of cores this process may use (`std::thread::available_parallelism`, which
//! honours CPU affinity and cgroup quotas; read once, at first use).
//!
//! Performance and safety notes:
//! - The pool is built lazily on first use and shared as an `Arc`; taking it costs one uncontended
//!   lock and one atomic increment, never a thread spawn.
//! - Resizing builds a new pool; the old one finishes the work it is running and its threads exit
//!   when the last `Arc` to it is dropped, so a resize never blocks on, or breaks, running calls.
//! - `fork()`: a child process inherits the pool's bookkeeping but none of its threads, so a pool
//!   used before the fork would wait forever for workers that do not exist (the classic
//!   `tokenizers` / OpenMP hang). A `pthread_atfork` handler holds the state lock across the fork
//!   (so the child never inherits it locked) and, in the child, forgets the dead pool; the child's
//!   first parallel call builds a fresh one of the same size.
//! - Never use rayon's implicit global pool (`par_iter` outside [`install`]): it has no such
//!   handler.

use std::sync::Arc;

use rayon::{ThreadPool, ThreadPoolBuilder};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock, PoisonError};

use crate::{Error, Result};

/// The environment variable read for the default pool size.
pub const ENV_VAR: &str = "FERROLM_NUM_THREADS";
/// The largest pool ferrolm builds; more threads than this is a mistake, not a configuration.
pub const MAX_THREADS: usize = 1024;

struct State {
    /// Size set by [`set_num_threads`]; `None` means "from the environment or the core count".
    requested: Option<usize>,
    pool: Option<Arc<ThreadPool>>,
}

static STATE: Mutex<State> = Mutex::new(State {
    requested: None,
    pool: None,
});

/// The state, locked. A std mutex, not parking_lot's: across `fork()` a parking_lot unlock
/// may hand the lock to a thread that waited for it in the parent and does not exist in the
/// child, leaving the child's pool locked for ever (seen as a rare hang of a forked child
/// while other threads used the pool). A poisoned lock is still consistent state (every
/// critical section is a few assignments), so poisoning is ignored.
fn state() -> MutexGuard<'static, State> {
    STATE.lock().unwrap_or_else(PoisonError::into_inner)
}

fn check_count(n: usize, source: &str) -> Result<usize> {
    if (1..=MAX_THREADS).contains(&n) {
        Ok(n)
    } else {
        Err(Error::invalid(format!(
            "{source}: the number of threads must be between 1 and {MAX_THREADS}, got {n}"
        )))
    }
}

/// The CPUs this process may use (`std::thread::available_parallelism`), read once: on Linux
/// it opens and reads the cgroup files each time, which cost a pass ~30 µs when it was asked
/// per pass.
pub fn available_cpus() -> usize {
    static CPUS: OnceLock<usize> = OnceLock::new();
    *CPUS.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// The size the pool has when nobody called [`set_num_threads`].
pub fn default_num_threads() -> Result<usize> {
    match std::env::var(ENV_VAR) {
        Ok(s) => {
            let n: usize = s.trim().parse().map_err(|_| {
                Error::invalid(format!(
                    "{ENV_VAR} must be an integer between 1 and {MAX_THREADS}, got {s:?}"
                ))
            })?;
            check_count(n, ENV_VAR)
        }
        Err(std::env::VarError::NotPresent) => Ok(available_cpus()),
        Err(std::env::VarError::NotUnicode(_)) => Err(Error::invalid(format!(
            "{ENV_VAR} must be an integer between 1 and {MAX_THREADS}, got non-UTF-8 bytes"
        ))),
    }
}

/// The number of threads parallel work runs on.
pub fn num_threads() -> Result<usize> {
    let requested = state().requested;
    match requested {
        Some(n) => Ok(n),
        None => default_num_threads(),
    }
}

/// Sets the pool size for all later parallel work in this process (and its forked children).
pub fn set_num_threads(n: usize) -> Result<()> {
    check_count(n, "set_num_threads")?;
    let mut st = state();
    st.requested = Some(n);
    if st
        .pool
        .as_ref()
        .is_some_and(|p| p.current_num_threads() != n)
    {
        // Running calls keep their `Arc`; the old workers exit when those finish.
        st.pool = None;
    }
    Ok(())
}

/// The current pool, built on first use.
fn pool() -> Result<Arc<ThreadPool>> {
    register_fork_handler();
    let mut st = state();
    if let Some(p) = &st.pool {
        return Ok(Arc::clone(p));
    }
    let n = match st.requested {
        Some(n) => n,
        None => default_num_threads()?,
    };
    let p = ThreadPoolBuilder::new()
        .num_threads(n)
        .thread_name(|i| format!("ferrolm-{i}"))
        .build()
        .map_err(|e| Error::Internal(format!("cannot start {n} worker threads: {e}")))?;
    let p = Arc::new(p);
    st.pool = Some(Arc::clone(&p));
    Ok(p)
}

/// The number of workers of the pool (building it if needed): one lock, no reading of the
/// environment or of the cgroup files that [`num_threads`] may consult.
pub fn size() -> Result<usize> {
    Ok(pool()?.current_num_threads())
}

/// Runs `op` inside the global pool: rayon's `join`, `scope` and parallel iterators called from
/// `op` use the pool's threads. A panic in `op` or in any task it spawns resumes on the caller.
pub fn install<R: Send>(op: impl FnOnce() -> R + Send) -> Result<R> {
    let _busy = Busy::enter();
    Ok(pool()?.install(op))
}

/// Calls of [`install`] and [`team`] under way, in every thread: a team starts only when it
/// is alone (its spinning members would otherwise share the CPUs with the pool's workers, and
/// every barrier would wait for a thread that is not running: 4 Python threads embedding
/// sentences at once lost a quarter of their throughput).
static BUSY: AtomicUsize = AtomicUsize::new(0);

/// One call counted in [`BUSY`] while it lives.
struct Busy;

impl Busy {
    fn enter() -> Busy {
        BUSY.fetch_add(1, Ordering::SeqCst);
        Busy
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        BUSY.fetch_sub(1, Ordering::SeqCst);
    }
}

/// `f` of each of `items`, in order: on the pool, `min_len` items or more per task, when there
/// are enough items for two tasks; else on the calling thread, since handing a few items to a
/// worker (waking it, then waking the caller) costs more than a short call takes (about 20 µs
/// for one sentence's tokenization).
pub fn map<T: Sync, R: Send>(
    items: &[T],
    min_len: usize,
    f: impl Fn(&T) -> R + Sync + Send,
) -> Result<Vec<R>> {
    use rayon::prelude::*;
    if items.len() < 2 * min_len.max(1) {
        return Ok(items.iter().map(f).collect());
    }
    install(|| items.par_iter().with_min_len(min_len).map(f).collect())
}

/// One thread of a [`team`]: its index and the team's size, and the barrier they share.
#[derive(Debug)]
pub struct Member<'a> {
    /// This thread's index, `0..size`.
    pub index: usize,
    /// The number of threads in the team ([`num_threads`]).
    pub size: usize,
    barrier: &'a Barrier,
}

impl Member<'_> {
    /// Waits until every member has reached this call (the same number of calls on every
    /// member): what each wrote before is visible to all after.
    #[inline]
    pub fn sync(&self) {
        self.barrier.wait();
    }

    /// This member's equal share `a..b` of `0..len`.
    #[inline]
    pub fn share(&self, len: usize) -> (usize, usize) {
        (
            len * self.index / self.size,
            len * (self.index + 1) / self.size,
        )
    }
}

/// A spinning barrier for a team: short waits (a few microseconds of work between barriers)
/// cost a fraction of a microsecond, where waking a sleeping thread costs tens. After a while
/// it yields the CPU, for an oversubscribed machine.
#[derive(Debug)]
struct Barrier {
    arrived: AtomicUsize,
    generation: AtomicUsize,
    size: usize,
    /// Set when a member panics, so that the others stop waiting for it.
    broken: AtomicBool,
}

impl Barrier {
    fn new(size: usize) -> Barrier {
        Barrier {
            arrived: AtomicUsize::new(0),
            generation: AtomicUsize::new(0),
            size,
            broken: AtomicBool::new(false),
        }
    }

    /// Ready for a new team (no member is waiting; a panic may have left it mid-way).
    fn reset(&self) {
        self.arrived.store(0, Ordering::SeqCst);
        self.broken.store(false, Ordering::SeqCst);
    }

    fn wait(&self) {
        if self.size <= 1 {
            return;
        }
        let gen = self.generation.load(Ordering::Acquire);
        if self.arrived.fetch_add(1, Ordering::AcqRel) + 1 == self.size {
            self.arrived.store(0, Ordering::Relaxed);
            self.generation.fetch_add(1, Ordering::Release);
            return;
        }
        spin_until(|| {
            if self.broken.load(Ordering::Relaxed) {
                panic!("another thread of the team panicked");
            }
            self.generation.load(Ordering::Acquire) != gen
        });
    }
}

/// Spins until `done()`, then yields the CPU between checks after a while (for an
/// oversubscribed machine).
#[inline]
fn spin_until(mut done: impl FnMut() -> bool) {
    let mut spins = 0u32;
    while !done() {
        if spins < 1 << 14 {
            spins += 1;
            std::hint::spin_loop();
        } else {
            std::thread::yield_now();
        }
    }
}

/// How long a crew thread spins for the next team after one ends, before it sleeps: calls
/// that follow each other (sentences embedded one by one) find it awake, without the tens of
/// microseconds a wake-up costs; an idle process burns at most this much after its last call.
const CREW_SPIN: std::time::Duration = std::time::Duration::from_micros(200);

/// The job of a team, as the crew threads see it: the caller's closure, lifetime erased (the
/// caller does not return before every crew thread is done with it).
type Job = *const (dyn Fn(&Member) + Sync);

/// What the caller and its crew threads share.
struct CrewShared {
    /// Bumped by the caller for each team (and to stop the crew).
    generation: AtomicU64,
    /// The current team's job, written before `generation` is bumped.
    job: Mutex<Option<SendJob>>,
    /// Crew threads done with the current team.
    done: AtomicUsize,
    /// A crew thread's member panicked.
    panicked: AtomicBool,
    stop: AtomicBool,
    barrier: Barrier,
    /// Crew threads asleep on `wake`.
    sleepers: AtomicUsize,
    sleep: Mutex<()>,
    wake: std::sync::Condvar,
}

#[derive(Clone, Copy)]
struct SendJob(Job);
// SAFETY: the closure is `Sync`, and the caller keeps it alive until every thread is done.
unsafe impl Send for SendJob {}

/// The threads that join callers of [`team`]: `size − 1` of them, the caller being member 0.
/// Separate from the rayon pool, whose workers sleep between parallel regions.
struct Crew {
    shared: Arc<CrewShared>,
    size: usize,
    /// The process that started the threads (after `fork()` the child has none of them).
    pid: u32,
    handles: Vec<std::thread::JoinHandle<()>>,
}

impl Crew {
    fn start(size: usize) -> Result<Crew> {
        let shared = Arc::new(CrewShared {
            generation: AtomicU64::new(0),
            job: Mutex::new(None),
            done: AtomicUsize::new(0),
            panicked: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            barrier: Barrier::new(size),
            sleepers: AtomicUsize::new(0),
            sleep: Mutex::new(()),
            wake: std::sync::Condvar::new(),
        });
        let mut crew = Crew {
            shared,
            size,
            pid: std::process::id(),
            handles: Vec::new(),
        };
        for index in 1..size {
            let shared = Arc::clone(&crew.shared);
            let h = std::thread::Builder::new()
                .name(format!("ferrolm-team-{index}"))
                .spawn(move || crew_thread(&shared, index, size))
                .map_err(|e| Error::Internal(format!("cannot start a team thread: {e}")))?;
            crew.handles.push(h);
        }
        Ok(crew)
    }

    /// Starts the next generation: the job for `Some`, stop for `None`.
    fn publish(&self, job: Option<SendJob>) {
        let sh = &self.shared;
        *sh.job.lock().unwrap_or_else(PoisonError::into_inner) = job;
        if job.is_none() {
            sh.stop.store(true, Ordering::SeqCst);
        }
        sh.generation.fetch_add(1, Ordering::SeqCst);
        if sh.sleepers.load(Ordering::SeqCst) > 0 {
            let _g = sh.sleep.lock().unwrap_or_else(PoisonError::into_inner);
            sh.wake.notify_all();
        }
    }

    /// Stops the threads and waits for them.
    fn stop(mut self) {
        self.publish(None);
        for h in self.handles.drain(..) {
            let _ = h.join();
        }
    }
}

/// A crew thread: waits for each generation (spinning for [`CREW_SPIN`], then asleep), runs
/// its member of the job, counts itself done.
fn crew_thread(sh: &CrewShared, index: usize, size: usize) {
    let mut seen = 0u64;
    loop {
        let mut since = std::time::Instant::now();
        let mut spins = 0u32;
        loop {
            let g = sh.generation.load(Ordering::Acquire);
            if g != seen {
                seen = g;
                break;
            }
            spins = spins.wrapping_add(1);
            std::hint::spin_loop();
            if spins.is_multiple_of(256) && since.elapsed() > CREW_SPIN {
                let mut guard = sh.sleep.lock().unwrap_or_else(PoisonError::into_inner);
                sh.sleepers.fetch_add(1, Ordering::SeqCst);
                while sh.generation.load(Ordering::SeqCst) == seen {
                    guard = sh.wake.wait(guard).unwrap_or_else(PoisonError::into_inner);
                }
                sh.sleepers.fetch_sub(1, Ordering::SeqCst);
                since = std::time::Instant::now();
            }
        }
        if sh.stop.load(Ordering::SeqCst) {
            return;
        }
        let job = *sh.job.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(SendJob(job)) = job {
            // SAFETY: the caller keeps the job alive until `done` counts this thread.
            let op = unsafe { &*job };
            let member = Member {
                index,
                size,
                barrier: &sh.barrier,
            };
            let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| op(&member)));
            if run.is_err() {
                sh.barrier.broken.store(true, Ordering::Relaxed);
                sh.panicked.store(true, Ordering::Relaxed);
            }
        }
        sh.done.fetch_add(1, Ordering::Release);
    }
}

/// At most one team at a time (its crew); a caller that finds it busy takes its ordinary
/// path.
static TEAM: Mutex<Option<Crew>> = Mutex::new(None);

/// Runs `op` on [`num_threads`] threads at once — the caller as member 0 and a crew of
/// threads kept for teams — as a team that moves in lockstep through [`Member::sync`]
/// barriers: for short passes (one sentence through an encoder), where a parallel region per
/// step would cost more in wake-ups than the step itself. Returns `Ok(false)` without running
/// `op` when it cannot run as a team now — other work is under way on the pool or in another
/// team, the caller is a worker of the pool, or [`num_threads`] exceeds the CPUs this process
/// may use — so that the caller takes its ordinary path. A panic in one member stops the
/// others and reaches the caller.
pub fn team(op: impl Fn(&Member) + Sync) -> Result<bool> {
    register_fork_handler();
    let _busy = Busy::enter();
    if rayon::current_thread_index().is_some() || BUSY.load(Ordering::SeqCst) > 1 {
        return Ok(false);
    }
    let mut slot = match TEAM.try_lock() {
        Ok(g) => g,
        Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
        Err(std::sync::TryLockError::WouldBlock) => return Ok(false),
    };
    let size = num_threads()?;
    // More threads than CPUs: members would wait at each barrier for one that is not
    // running (a sentence took 20 ms instead of 1 with 3 threads on 2 CPUs).
    if size > available_cpus() {
        return Ok(false);
    }
    let pid = std::process::id();
    match slot.take() {
        // After fork(): the threads are not in this process; leak the bookkeeping.
        Some(c) if c.pid != pid => std::mem::forget(c),
        Some(c) if c.size != size => c.stop(),
        keep => *slot = keep,
    }
    let crew = match &mut *slot {
        Some(c) => c,
        None => slot.insert(Crew::start(size)?),
    };
    let sh = &crew.shared;
    sh.barrier.reset();
    sh.done.store(0, Ordering::SeqCst);
    sh.panicked.store(false, Ordering::SeqCst);
    let job: &(dyn Fn(&Member) + Sync) = &op;
    // SAFETY: only the lifetime is erased; `op` outlives every use (the wait below).
    let job: Job = unsafe { std::mem::transmute::<_, Job>(job) };
    crew.publish(Some(SendJob(job)));
    let member = Member {
        index: 0,
        size,
        barrier: &sh.barrier,
    };
    let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| op(&member)));
    if run.is_err() {
        sh.barrier.broken.store(true, Ordering::Relaxed);
    }
    // Every crew thread done with `op` before it goes out of scope.
    spin_until(|| sh.done.load(Ordering::Acquire) >= size - 1);
    *sh.job.lock().unwrap_or_else(PoisonError::into_inner) = None;
    if let Err(p) = run {
        std::panic::resume_unwind(p);
    }
    if sh.panicked.load(Ordering::SeqCst) {
        panic!("a thread of the team panicked");
    }
    Ok(true)
}

/// Runs `op` once on every worker of the pool and collects the results in worker order.
/// Used to touch per-thread state, and by the tests to see the workers that really exist.
pub fn broadcast<R: Send>(op: impl Fn(usize) -> R + Sync) -> Result<Vec<R>> {
    Ok(pool()?.broadcast(|ctx| op(ctx.index())))
}

#[cfg(unix)]
fn register_fork_handler() {
    static REGISTER: std::sync::Once = std::sync::Once::new();

    thread_local! {
        /// The guard `prepare` takes, released by `parent` / `child` on the same thread (the
        /// one that forks).
        static HELD: std::cell::RefCell<Option<MutexGuard<'static, State>>> =
            const { std::cell::RefCell::new(None) };
    }
    extern "C" fn prepare() {
        // Hold the lock across fork() so that no other thread owns it at the moment of the fork.
        let guard = state();
        HELD.with(|h| *h.borrow_mut() = Some(guard));
    }
    extern "C" fn parent() {
        HELD.with(|h| h.borrow_mut().take());
    }
    extern "C" fn child() {
        // The child has exactly one thread, the one that forked: release its guard.
        HELD.with(|h| h.borrow_mut().take());
        // The calls under way in other threads of the parent do not go on in the child.
        BUSY.store(0, Ordering::SeqCst);
        let mut st = state();
        if let Some(dead) = st.pool.take() {
            // Its worker threads do not exist in this process: dropping it would try to signal
            // them. Leak the bookkeeping instead (a few hundred bytes per fork).
            std::mem::forget(dead);
        }
    }

    REGISTER.call_once(|| {
        // SAFETY: the handlers are `extern "C"` functions with no arguments, as required; they
        // only touch `STATE`, whose lock `prepare` holds for the duration of the fork, and the
        // forking thread's `HELD`.
        let rc = unsafe { libc::pthread_atfork(Some(prepare), Some(parent), Some(child)) };
        // A failure (ENOMEM) leaves fork-safety off; parallel work still runs correctly.
        debug_assert_eq!(rc, 0, "pthread_atfork failed");
    });
}

#[cfg(not(unix))]
fn register_fork_handler() {}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    /// A team of `n` (the pool resized to it): every member runs, each step's writes are seen
    /// by all after the barrier, a call from inside the pool is refused, and a member's panic
    /// reaches the caller instead of leaving the others waiting.
    fn team_steps_in_lockstep(n: usize) {
        use std::sync::atomic::AtomicU64;
        // Other tests run on the pool meanwhile, and a team starts only when the pool is idle:
        // try until it does.
        let until_it_runs = |op: &(dyn Fn(&Member) + Sync)| {
            for _ in 0..10_000 {
                if team(op).unwrap() {
                    return;
                }
                std::thread::sleep(std::time::Duration::from_micros(200));
            }
            panic!("the team never ran");
        };
        set_num_threads(n).unwrap();
        let slots: Vec<AtomicU64> = (0..n).map(|_| AtomicU64::new(0)).collect();
        let seen = AtomicU64::new(0);
        until_it_runs(&|m| {
            assert_eq!(m.size, n);
            for step in 1..=200u64 {
                slots[m.index].store(step, Ordering::Relaxed);
                m.sync();
                // Every member has written this step before any reads it.
                assert!(slots.iter().all(|s| s.load(Ordering::Relaxed) == step));
                m.sync();
            }
            seen.fetch_add(1, Ordering::Relaxed);
        });
        assert_eq!(seen.load(Ordering::Relaxed), n as u64);
        // Refused inside the pool (and while other work is under way on it).
        assert!(!install(|| team(|_| ()).unwrap()).unwrap());
        let caught = std::panic::catch_unwind(|| {
            until_it_runs(&|m| {
                if m.index == 0 {
                    panic!("member 0 fails");
                }
                m.sync();
            })
        });
        assert!(caught.is_err());
        // The lock and the crew are usable again.
        until_it_runs(&|m| m.sync());
    }

    // The pool is process-global and cargo runs tests on several threads, so the tests that
    // resize it share one test function.
    #[test]
    fn resize_runs_work_on_exactly_that_many_threads() {
        for n in [3, 1, 2] {
            set_num_threads(n).unwrap();
            assert_eq!(num_threads().unwrap(), n);
            let ids: HashSet<_> = broadcast(|_| std::thread::current().id())
                .unwrap()
                .into_iter()
                .collect();
            assert_eq!(ids.len(), n);
            let names = broadcast(|_| std::thread::current().name().map(str::to_owned)).unwrap();
            assert!(names
                .iter()
                .all(|n| n.as_deref().is_some_and(|s| s.starts_with("ferrolm-"))));
            // Parallel iterators inside `install` stay on the pool.
            use rayon::prelude::*;
            let sum: u64 = install(|| (1..=1000_u64).into_par_iter().sum()).unwrap();
            assert_eq!(sum, 500_500);
        }
        let cpus = available_cpus();
        team_steps_in_lockstep(cpus.clamp(1, 3));
        set_num_threads(cpus + 1).unwrap();
        assert!(!team(|_| ()).unwrap(), "no team of more threads than CPUs");
        set_num_threads(2).unwrap();
        assert!(set_num_threads(0).is_err());
        assert!(set_num_threads(MAX_THREADS + 1).is_err());
        assert_eq!(num_threads().unwrap(), 2, "a rejected size changes nothing");
    }

    #[test]
    fn panics_in_tasks_reach_the_caller() {
        let r = std::panic::catch_unwind(|| {
            install(|| rayon::join(|| 1, || -> i32 { panic!("task failed") }))
        });
        assert!(r.is_err());
        // The pool is still usable afterwards.
        assert_eq!(install(|| 5).unwrap(), 5);
    }
}
