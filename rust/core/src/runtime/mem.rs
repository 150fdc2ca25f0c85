//! Memory limits: a request whose buffers (a KV cache for a large batch, the logits of every
//! position of a long input) would not fit in the memory this process can still get is refused
//! with [`Error::OutOfMemory`] before anything is allocated, instead of the allocator aborting
//! the process or the machine swapping.
//!
//! "Can still get" is the least of, on Linux: the kernel's estimate of available memory
//! (`MemAvailable` in `/proc/meminfo`); what a cgroup's `memory.max` leaves (containers); what
//! the process's own limits leave, `RLIMIT_AS` (`ulimit -v`) minus the address space it maps
//! now and `RLIMIT_DATA` minus its data segment (`/proc/self/statm`). Each is read again on
//! every check (a limit can change at run time: `resource.setrlimit`). Elsewhere, or when none
//! of those can be read, only sizes that overflow the address space are refused.

use crate::{Error, Result};

/// Requests below this many bytes are not checked (reading `/proc` costs tens of µs).
const CHECK_FROM: usize = 64 << 20;

/// Bytes this process can still allocate, when the operating system says.
pub fn available_bytes() -> Option<u64> {
    tightest().map(|(bytes, _)| bytes)
}

/// The least of the limits that apply, with what it is (for messages).
fn tightest() -> Option<(u64, &'static str)> {
    let (as_left, data_left) = rlimit_left();
    [
        mem_available().map(|b| (b, "of memory is available")),
        cgroup_left().map(|b| (b, "is left under the cgroup's memory.max")),
        as_left.map(|b| (b, "of address space is left under RLIMIT_AS (ulimit -v)")),
        data_left.map(|b| (b, "is left under RLIMIT_DATA (ulimit -d)")),
    ]
    .into_iter()
    .flatten()
    .min_by_key(|&(bytes, _)| bytes)
}

/// `MemAvailable` of `/proc/meminfo`, in bytes.
fn mem_available() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kib = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse::<u64>()
        .ok()?;
    Some(kib.saturating_mul(1024))
}

/// What a cgroup v2 limit leaves (`memory.max - memory.current`), if there is one.
fn cgroup_left() -> Option<u64> {
    let read = |name: &str| std::fs::read_to_string(format!("/sys/fs/cgroup/{name}")).ok();
    let max = read("memory.max")?.trim().parse::<u64>().ok()?;
    let current = read("memory.current")?.trim().parse::<u64>().ok()?;
    Some(max.saturating_sub(current))
}

/// The soft limit `resource` (`RLIMIT_*`), or None when it is unlimited or cannot be read.
/// A macro, not a function: the constants' type differs between C libraries (glibc, musl).
#[cfg(target_os = "linux")]
macro_rules! soft_limit {
    ($resource:expr) => {{
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: `lim` is a valid, writable rlimit for getrlimit to fill in.
        let rc = unsafe { libc::getrlimit($resource, &mut lim) };
        (rc == 0 && lim.rlim_cur != libc::RLIM_INFINITY).then_some(lim.rlim_cur as u64)
    }};
}

/// What this process's soft `RLIMIT_AS` and `RLIMIT_DATA` leave (None where unlimited): a
/// `malloc` past them fails, and Rust's allocator then aborts.
#[cfg(target_os = "linux")]
fn rlimit_left() -> (Option<u64>, Option<u64>) {
    let as_limit = soft_limit!(libc::RLIMIT_AS);
    let data_limit = soft_limit!(libc::RLIMIT_DATA);
    if as_limit.is_none() && data_limit.is_none() {
        return (None, None);
    }
    let statm = std::fs::read_to_string("/proc/self/statm").ok();
    // SAFETY: sysconf has no preconditions; it returns -1 for an unknown name.
    let page = u64::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
    let (size, data) = statm.as_deref().and_then(parse_statm).unwrap_or((0, 0));
    let left = |limit: Option<u64>, used_pages: u64| {
        limit.map(|l| l.saturating_sub(used_pages.saturating_mul(page)))
    };
    (left(as_limit, size), left(data_limit, data))
}

#[cfg(not(target_os = "linux"))]
fn rlimit_left() -> (Option<u64>, Option<u64>) {
    (None, None)
}

/// `(size, data)` in pages from `/proc/self/statm` ("size resident shared text lib data dt"):
/// the whole address space, and the data segment and stack (what `RLIMIT_DATA` counts, near
/// enough).
fn parse_statm(statm: &str) -> Option<(u64, u64)> {
    let mut fields = statm
        .split_ascii_whitespace()
        .map(|f| f.parse::<u64>().ok());
    let size = fields.next()??;
    let data = fields.nth(4)??;
    Some((size, data))
}

/// Checks that `count` elements of `elem_bytes` each (for `what`, named in the error) fit in
/// the memory left; returns their size in bytes.
pub fn check(count: usize, elem_bytes: usize, what: &str) -> Result<usize> {
    let too_big = || {
        Error::OutOfMemory(format!(
            "{what} would need {count} × {elem_bytes} bytes, more than this machine can address"
        ))
    };
    let bytes = count.checked_mul(elem_bytes).ok_or_else(too_big)?;
    if bytes > isize::MAX as usize {
        return Err(too_big());
    }
    if bytes >= CHECK_FROM {
        if let Some((avail, which)) = tightest() {
            if bytes as u64 > avail {
                return Err(Error::OutOfMemory(format!(
                    "{what} would need {}, and only {} {which}: use a smaller batch or fewer \
                     tokens",
                    human(bytes as u64),
                    human(avail)
                )));
            }
        }
    }
    Ok(bytes)
}

/// Checks that buffers of `(count, elem_bytes)` each, all held at once (for `what`), fit
/// together in the memory left; returns their total size in bytes.
pub fn check_all(parts: &[(usize, usize)], what: &str) -> Result<usize> {
    let total = parts.iter().try_fold(0usize, |sum, &(count, elem_bytes)| {
        count.checked_mul(elem_bytes)?.checked_add(sum)
    });
    match total {
        Some(bytes) => check(bytes, 1, what),
        None => Err(Error::OutOfMemory(format!(
            "{what} would need more memory than this machine can address"
        ))),
    }
}

/// `n` zeros, after [`check`]: allocated with `calloc` (pages are touched only when written).
pub fn zeros<T: Clone + Default>(n: usize, what: &str) -> Result<Vec<T>> {
    check(n, std::mem::size_of::<T>(), what)?;
    Ok(vec![T::default(); n])
}

/// Grows `v` to at least `n` elements (zeros), after [`check`].
pub fn grow<T: Clone + Default>(v: &mut Vec<T>, n: usize, what: &str) -> Result<()> {
    if v.len() < n {
        check(n, std::mem::size_of::<T>(), what)?;
        v.resize(n, T::default());
    }
    Ok(())
}

/// Buffers from this many bytes are worth backing with huge pages.
const HUGE_FROM: usize = 8 << 20;

/// Reserves room for `n` more elements in `v` and, for a buffer of several MB, asks Linux to
/// back it with transparent huge pages (where THP is `madvise`-only, the usual default): a
/// buffer of hundreds of MB walked out of order then costs a TLB miss a 2 MB page instead of a
/// 4 KB one, and a page fault per 2 MB. Only a hint: results never depend on it. Call it
/// before writing, while the new pages are still untouched.
pub fn reserve_huge<T>(v: &mut Vec<T>, n: usize) {
    v.reserve(n);
    advise_huge(v.as_ptr() as usize, v.capacity() * std::mem::size_of::<T>());
}

/// An empty vector for the ids of a text of `bytes` bytes, with room for one id a byte (the
/// most any tokenizer here makes), so it never grows — each growth of a large vector copies it
/// into fresh pages, which cost more than the copy. Room that goes unused is never touched, so
/// costs address space, not memory (also with huge pages, which are backed as they are
/// touched); where even that is refused, it starts at a quarter.
pub fn ids_for(bytes: usize) -> Vec<u32> {
    let mut v = Vec::new();
    if v.try_reserve_exact(bytes.saturating_add(1)).is_err() {
        v.reserve(bytes / 4 + 1);
    }
    advise_huge(v.as_ptr() as usize, v.capacity() * 4);
    v
}

/// Gives back the room [`ids_for`] reserved and the ids did not use (the allocator shrinks a
/// block in place), so a caller that keeps the vector keeps only its ids.
pub fn fit_ids(mut v: Vec<u32>) -> Vec<u32> {
    if v.capacity() / 2 > v.len() + 1024 {
        v.shrink_to_fit();
    }
    v
}

/// The same hint for `bytes` bytes at address `start` (memory this process allocated, not
/// yet written): the whole 2 MB pages inside the range, when it is several MB.
pub fn advise_huge(start: usize, bytes: usize) {
    if bytes < HUGE_FROM {
        return;
    }
    #[cfg(target_os = "linux")]
    {
        const PAGE: usize = 2 << 20;
        let first = start.next_multiple_of(PAGE);
        let end = start.saturating_add(bytes) & !(PAGE - 1);
        if end > first {
            // SAFETY: MADV_HUGEPAGE changes neither the contents nor the mapping of the range;
            // on a range that is not a private anonymous mapping it fails, harmlessly (ignored).
            unsafe {
                libc::madvise(first as *mut libc::c_void, end - first, libc::MADV_HUGEPAGE);
            }
        }
    }
}

/// `bytes` as "1.5 GB" / "300 MB".
fn human(bytes: u64) -> String {
    let b = bytes as f64;
    if b >= 1e12 {
        format!("{:.1} TB", b / 1e12)
    } else if b >= 1e9 {
        format!("{:.1} GB", b / 1e9)
    } else {
        format!("{:.0} MB", b / 1e6)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_are_checked_before_allocating() {
        assert_eq!(check(10, 4, "x").unwrap(), 40);
        let e = check(usize::MAX / 2, 4, "a KV cache").unwrap_err();
        assert!(matches!(e, Error::OutOfMemory(_)), "{e}");
        assert!(e.to_string().contains("a KV cache"));
        if let Some(avail) = available_bytes() {
            assert!(avail > 0);
            let n = (avail / 4 + (1 << 30)) as usize;
            let e = zeros::<f32>(n, "the logits").unwrap_err();
            assert!(e.to_string().contains("only"), "{e}");
        }
        let mut v = vec![1.0f32; 2];
        grow(&mut v, 4, "x").unwrap();
        assert_eq!(v, [1.0, 1.0, 0.0, 0.0]);
    }

    #[test]
    fn sums_of_buffers_are_checked_together() {
        assert_eq!(check_all(&[(10, 4), (3, 8)], "x").unwrap(), 64);
        let e = check_all(&[(usize::MAX / 2, 1), (usize::MAX / 2, 4)], "a generation");
        assert!(e.unwrap_err().to_string().contains("a generation"));
        if let Some(avail) = available_bytes() {
            let half = (avail / 2 + (1 << 30)) as usize;
            let e = check_all(&[(half, 1), (half, 1)], "both halves").unwrap_err();
            assert!(e.to_string().contains("both halves"), "{e}");
        }
    }

    #[test]
    fn statm_gives_the_address_space_and_the_data_segment() {
        assert_eq!(parse_statm("2500 300 100 10 0 900 0\n"), Some((2500, 900)));
        assert_eq!(parse_statm("2500 300"), None);
        assert_eq!(parse_statm(""), None);
        #[cfg(target_os = "linux")]
        {
            let own = std::fs::read_to_string("/proc/self/statm").unwrap();
            let (size, data) = parse_statm(&own).unwrap();
            assert!(size > 0 && data > 0 && data <= size, "{own}");
        }
    }

    /// Runs `name` (an ignored test of this module) in a child process of this test binary:
    /// changing a limit of the process would disturb the tests running beside it.
    #[cfg(target_os = "linux")]
    fn in_child(name: &str) {
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", &format!("runtime::mem::tests::{name}")])
            .args(["--ignored", "--nocapture", "--test-threads=1"])
            .env("FERROLM_MEM_CHILD", "1")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{text}");
        assert!(text.contains("1 passed"), "the child ran no test: {text}");
    }

    #[test]
    #[cfg(target_os = "linux")]
    fn the_address_space_limit_is_respected_and_read_again_each_time() {
        in_child("address_space_limit_child");
    }

    #[test]
    #[cfg(target_os = "linux")]
    fn the_data_limit_is_respected() {
        in_child("data_limit_child");
    }

    #[cfg(target_os = "linux")]
    fn set_soft_limit(resource: libc::__rlimit_resource_t, bytes: u64) -> u64 {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: a valid rlimit to read into, then to write from.
        unsafe {
            assert_eq!(libc::getrlimit(resource, &mut lim), 0);
            let old = lim.rlim_cur;
            lim.rlim_cur = bytes.min(lim.rlim_max);
            assert_eq!(libc::setrlimit(resource, &lim), 0);
            old
        }
    }

    #[cfg(target_os = "linux")]
    fn page_size() -> u64 {
        // SAFETY: sysconf has no preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        u64::try_from(page).unwrap()
    }

    /// Under `ulimit -v` of what is mapped + 1 GB: 2 GB is refused naming the limit, 256 MB is
    /// allowed and really allocates; after the limit is lifted again, 2 GB passes the check.
    #[test]
    #[ignore = "run in a child process by the test above"]
    #[cfg(target_os = "linux")]
    fn address_space_limit_child() {
        if std::env::var_os("FERROLM_MEM_CHILD").is_none() {
            return;
        }
        let page = page_size();
        let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
        let mapped = parse_statm(&statm).unwrap().0 * page;
        let old = set_soft_limit(libc::RLIMIT_AS, mapped + (1 << 30));
        let e = check(2 << 30, 1, "the logits").unwrap_err();
        assert!(matches!(e, Error::OutOfMemory(_)));
        assert!(e.to_string().contains("RLIMIT_AS"), "{e}");
        let left = available_bytes().unwrap();
        assert!(left <= 1 << 30, "{left}");
        let v = zeros::<u8>(256 << 20, "a buffer").unwrap();
        assert_eq!(v.len(), 256 << 20);
        drop(v);
        set_soft_limit(libc::RLIMIT_AS, old);
        if mem_available().is_some_and(|m| m > 3 << 30) && cgroup_left().is_none_or(|c| c > 3 << 30)
        {
            check(2 << 30, 1, "the logits").unwrap();
        }
    }

    #[test]
    #[ignore = "run in a child process by the test above"]
    #[cfg(target_os = "linux")]
    fn data_limit_child() {
        if std::env::var_os("FERROLM_MEM_CHILD").is_none() {
            return;
        }
        let page = page_size();
        let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
        let data = parse_statm(&statm).unwrap().1 * page;
        set_soft_limit(libc::RLIMIT_DATA, data + (512 << 20));
        let e = check(1 << 30, 1, "the KV cache").unwrap_err();
        assert!(e.to_string().contains("RLIMIT_DATA"), "{e}");
    }

    #[test]
    fn id_buffers_have_room_for_one_id_a_byte_and_give_back_what_is_unused() {
        let mut v = ids_for(20 << 20);
        assert!(v.capacity() > 20 << 20);
        let p = v.as_ptr();
        v.extend(0..(20 << 20) as u32);
        assert_eq!(v.as_ptr(), p, "no growth, no copy");
        let mut v = ids_for(20 << 20);
        v.extend(0..1000);
        let v = fit_ids(v);
        assert_eq!(v, (0..1000).collect::<Vec<u32>>());
        assert!(v.capacity() < 4096, "{}", v.capacity());
        let small = fit_ids(ids_for(10));
        assert!(small.is_empty() && small.capacity() >= 11);
        let mut w: Vec<u64> = Vec::new();
        reserve_huge(&mut w, 3 << 20);
        w.resize(3 << 20, 7);
        assert!(w.iter().all(|&x| x == 7), "the hint changes no contents");
    }
}
