//! Memory limits: a request whose buffers (a KV cache for a large batch, the logits of every
//! position of a long input) would not fit in the memory this process can still get is refused
//! with [`Error::OutOfMemory`] before anything is allocated, instead of the allocator aborting
//! the process or the machine swapping.
//!
//! "Can still get" is the kernel's estimate of available memory (`MemAvailable` in
//! `/proc/meminfo`), lowered to what a cgroup's `memory.max` leaves (containers). Elsewhere, or
//! when those files cannot be read, only sizes that overflow the address space are refused.

use crate::{Error, Result};

/// Requests below this many bytes are not checked (reading `/proc` costs tens of µs).
const CHECK_FROM: usize = 64 << 20;

/// Bytes this process can still allocate, when the operating system says.
pub fn available_bytes() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kib = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse::<u64>()
        .ok()?;
    let mut avail = kib.saturating_mul(1024);
    if let Some(left) = cgroup_left() {
        avail = avail.min(left);
    }
    Some(avail)
}

/// What a cgroup v2 limit leaves (`memory.max - memory.current`), if there is one.
fn cgroup_left() -> Option<u64> {
    let read = |name: &str| std::fs::read_to_string(format!("/sys/fs/cgroup/{name}")).ok();
    let max = read("memory.max")?.trim().parse::<u64>().ok()?;
    let current = read("memory.current")?.trim().parse::<u64>().ok()?;
    Some(max.saturating_sub(current))
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
        if let Some(avail) = available_bytes() {
            if bytes as u64 > avail {
                return Err(Error::OutOfMemory(format!(
                    "{what} would need {}, and only {} of memory is available: use a smaller \
                     batch or fewer tokens",
                    human(bytes as u64),
                    human(avail)
                )));
            }
        }
    }
    Ok(bytes)
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
    if b >= 1e9 {
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
