//! Byte-level BPE: the vocabulary, the merge table, and the encoding of one piece.
//!
//! Performance notes:
//! - Merges are keyed by the *ids* of the two parts, `(left, right) -> (priority, merged id)`,
//!   in one hash map with `u64` keys: a lookup hashes 8 bytes instead of a byte string.
//!   For a tiktoken rank file, the merge of two parts exists exactly when their concatenation is
//!   a token, and its priority is that token's rank; the table lists every such split of every
//!   token, so this is tiktoken's algorithm, not an approximation of it.
//! - A piece that is itself a token is one hash lookup (tiktoken's rule; most words hit it).
//! - Short pieces merge in place in a small array, rescanning pair ranks that are cached and
//!   updated only next to a merge; long pieces (a 200 KB run of one letter is one piece) merge
//!   over a linked list with the candidates grouped by priority, in linear expected time for
//!   vocabularies made by training (a heap, `O(n log n)`, for any other), so no input is
//!   quadratic.
//! - Encoding allocates nothing per piece: a [`Scratch`] is reused across the pieces of a call.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use rustc_hash::FxHashMap;

use crate::tokenizer::piece_table::{Key, PieceTable};
use crate::{Error, Result};

/// Tokens up to this long are copied as one fixed-size block when decoding.
const COPY_SLACK: usize = 16;

/// Pieces up to this many bytes merge by rescanning; longer ones use the heap.
const SMALL_PIECE: usize = 128;
/// How many candidates ahead [`Bpe::merge_grouped`] prefetches.
const PREFETCH_AHEAD: usize = 16;
const NO_MERGE: u32 = u32::MAX;
/// The ends of the linked list of parts of a long piece, and a part merged away.
const NONE: u32 = u32::MAX;
const DEAD: u32 = u32::MAX - 1;
/// `byte_ids` of a byte the vocabulary has no token for (Hugging Face vocabularies may lack
/// some; such bytes are dropped before merging, as `tokenizers` drops them without an unk).
const MISSING_BYTE: u32 = u32::MAX;

/// A byte-level BPE vocabulary with its merges.
#[derive(Debug, Clone)]
pub struct Bpe {
    /// The bytes of token `id` are `bytes[offsets[id]..offsets[id + 1]]`; an empty range is an
    /// unused id. [`COPY_SLACK`] zero bytes follow the last token, so that a short token can be
    /// copied as one fixed-size block.
    bytes: Vec<u8>,
    offsets: Vec<u32>,
    lookup: PieceTable,
    byte_ids: [u32; 256],
    /// Whether some byte has no token ([`MISSING_BYTE`]).
    missing_bytes: bool,
    merges: PairTable,
    /// Which tokens may be taken whole when a piece equals them (`None`: all, tiktoken's rule).
    whole_ok: Option<Vec<bool>>,
    len: usize,
    /// Distinguishes this BPE's entries in a thread's merge cache from another BPE's.
    uid: u64,
}

fn next_uid() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// The merge table: `(left id, right id)` -> `(priority, merged id)`, open addressing with
/// linear probing at a load factor of at most 1/2, 16 bytes a slot. Pair keys are never
/// `u64::MAX` (ids are below `u32::MAX`), which marks an empty slot.
#[derive(Debug, Clone)]
struct PairTable {
    slots: Vec<(u64, u32, u32)>,
    shift: u32,
}

const EMPTY_PAIR: u64 = u64::MAX;

impl PairTable {
    fn new(entries: &[(u64, u32, u32)]) -> Self {
        let cap = (entries.len() * 2).next_power_of_two().max(16);
        let shift = 64 - cap.trailing_zeros();
        let mut slots = vec![(EMPTY_PAIR, NO_MERGE, 0); cap];
        for &(key, rank, id) in entries {
            let mut i = (key.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> shift) as usize;
            loop {
                if slots[i].0 == EMPTY_PAIR {
                    slots[i] = (key, rank, id);
                    break;
                }
                if slots[i].0 == key {
                    // The same pair from two splits: keep the lower priority.
                    if rank < slots[i].1 {
                        slots[i] = (key, rank, id);
                    }
                    break;
                }
                i = (i + 1) & (cap - 1);
            }
        }
        PairTable { slots, shift }
    }

    /// `(priority, merged id)`, or `(NO_MERGE, 0)`.
    #[inline]
    fn get(&self, key: u64) -> (u32, u32) {
        let mask = self.slots.len() - 1;
        let mut i = (key.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> self.shift) as usize;
        loop {
            let (k, rank, id) = self.slots[i];
            if k == key {
                return (rank, id);
            }
            if k == EMPTY_PAIR {
                return (NO_MERGE, 0);
            }
            i = (i + 1) & mask;
        }
    }
}

/// A candidate merge in the heap: `priority << 32 | left position` (smallest first: lowest
/// priority, then leftmost).
type Candidate = Reverse<u64>;

/// Pieces of at most this many bytes whose merges give at most [`CACHED_IDS`] ids are cached.
const CACHED_BYTES: usize = 16;
const CACHED_IDS: usize = 6;
const CACHE_SLOTS: usize = 8192;

/// One entry of the merge cache: a piece (as its inline key) and the ids it merged into.
#[derive(Debug, Clone, Copy, Default)]
struct CacheSlot {
    k0: u64,
    k1: u64,
    len: u16,
    n: u16,
    ids: [u32; CACHED_IDS],
}

/// Reusable buffers for encoding, and a cache of recently merged pieces: words that are not a
/// single token recur (Zipf), and their merges cost a dozen hash lookups each. Direct-mapped,
/// 8192 entries (384 KB, fits in L2); it belongs to one BPE at a time (`owner`).
#[derive(Debug, Default)]
pub struct Scratch {
    owner: u64,
    cache: Vec<CacheSlot>,
    ids: Vec<u32>,
    ranks: Vec<u32>,
    /// The parts of a long piece as a doubly linked list ([`Bpe::link_parts`]).
    parts: Vec<Part>,
    heap: BinaryHeap<Candidate>,
    /// [`Bpe::merge_grouped`]: the left positions of the candidates of each priority, and
    /// the priorities that have candidates.
    groups: rustc_hash::FxHashMap<u32, Vec<u32>>,
    order: BinaryHeap<Reverse<u32>>,
    /// Emptied groups, reused for the next priorities (no fresh memory, so no page faults,
    /// per group).
    spare: Vec<Vec<u32>>,
}

/// Scratch buffers above this many bytes are freed after the piece that needed them, so a
/// thread that once encoded a huge piece does not keep hundreds of MB.
const RETAIN_BYTES: usize = 32 << 20;

impl Scratch {
    /// Frees the buffers of long pieces that grew past [`RETAIN_BYTES`].
    fn trim(&mut self) {
        let bytes = |cap: usize, size: usize| cap.saturating_mul(size);
        if bytes(self.parts.capacity(), std::mem::size_of::<Part>()) > RETAIN_BYTES {
            self.parts = Vec::new();
        }
        let mut kept = 0_usize;
        self.spare.retain(|v| {
            kept = kept.saturating_add(bytes(v.capacity(), 4));
            kept <= RETAIN_BYTES
        });
        let groups: usize = self.groups.values().map(|v| bytes(v.capacity(), 4)).sum();
        if groups > RETAIN_BYTES {
            self.groups = Default::default();
        }
        if bytes(self.heap.capacity(), 8) > RETAIN_BYTES {
            self.heap = BinaryHeap::new();
        }
    }
}

/// One part of a long piece: its id and its neighbours' positions (`NONE` at the ends; `next`
/// is `DEAD` once the part was merged into the one before it). One struct rather than three
/// arrays, so a merge touches one cache line where it touched three: pieces of millions of
/// bytes are bound by cache misses.
#[derive(Debug, Clone, Copy)]
struct Part {
    id: u32,
    next: u32,
    prev: u32,
}

/// Asks the CPU to start loading `p`'s cache line (a hint: no effect on results).
#[inline(always)]
fn prefetch<T>(p: *const T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch never faults and reads nothing the program sees, whatever the address.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(p.cast());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

#[inline]
fn pair_key(a: u32, b: u32) -> u64 {
    (u64::from(a) << 32) | u64::from(b)
}

impl Bpe {
    /// Builds a BPE from tiktoken-style ranks: each token's bytes and its rank, which is both its
    /// id and its merge priority. `what` names the source in errors.
    pub fn from_ranks(what: &str, ranks: Vec<(Vec<u8>, u32)>) -> Result<Self> {
        Self::build(what, &ranks, false, |lookup| {
            // Every split of every token is tried; hashing both halves of each split would cost
            // the square of a token's length (a megabyte-long token: a minute), so the halves
            // are looked up by rolling hashes, a constant per split.
            let poly = Poly::new();
            let longest = ranks.iter().map(|(t, _)| t.len()).max().unwrap_or(0);
            let mut powers = Vec::with_capacity(longest + 1);
            let mut p = 1u64;
            for _ in 0..=longest {
                powers.push(p);
                p = poly.mul(p, poly.base);
            }
            let by_hash: FxHashMap<(u64, usize), u32> = lookup
                .iter()
                .map(|(t, &id)| ((poly.hash(t), t.len()), id))
                .collect();
            let mut merges = Vec::new();
            let mut prefix = Vec::new();
            for (tok, rank) in &ranks {
                prefix.clear();
                prefix.push(0u64);
                for &b in tok.iter() {
                    let h = prefix[prefix.len() - 1];
                    prefix.push(poly.push(h, b));
                }
                let whole = prefix[tok.len()];
                for k in 1..tok.len() {
                    let Some(&a) = by_hash.get(&(prefix[k], k)) else {
                        continue;
                    };
                    let rest = poly.sub(whole, poly.mul(prefix[k], powers[tok.len() - k]));
                    let Some(&b) = by_hash.get(&(rest, tok.len() - k)) else {
                        continue;
                    };
                    // Both halves found by hash: confirm by bytes, so even a collision cannot
                    // add a wrong merge. Only splits whose halves are both tokens get here, and
                    // each costs the token's length: in all at most twice the file's size.
                    if lookup.get(&tok[..k]) == Some(&a) && lookup.get(&tok[k..]) == Some(&b) {
                        merges.push((pair_key(a, b), *rank, *rank));
                    }
                }
            }
            Ok(merges)
        })
    }

    /// Builds a BPE as Hugging Face defines it: a vocabulary (token bytes, id) and an ordered
    /// list of merges, the first merging first. A word that is itself a token is that token only
    /// when the merges would produce it, unless `ignore_merges` (then it always is, as in
    /// Llama-3-style tokenizers).
    pub fn from_merges(
        what: &str,
        vocab: Vec<(Vec<u8>, u32)>,
        merges: &[(Vec<u8>, Vec<u8>)],
        ignore_merges: bool,
    ) -> Result<Self> {
        let mut bpe = Self::build(what, &vocab, true, |lookup| {
            let mut out = Vec::with_capacity(merges.len());
            for (i, (a, b)) in merges.iter().enumerate() {
                let missing = |t: &[u8]| {
                    Error::format(
                        what,
                        format!(
                            "merge {} uses {}, which is not in the vocabulary",
                            i + 1,
                            escape(t)
                        ),
                    )
                };
                let ia = *lookup.get(a.as_slice()).ok_or_else(|| missing(a))?;
                let ib = *lookup.get(b.as_slice()).ok_or_else(|| missing(b))?;
                let ab = [a.as_slice(), b.as_slice()].concat();
                let iab = *lookup.get(ab.as_slice()).ok_or_else(|| missing(&ab))?;
                let rank = u32::try_from(i).map_err(|_| Error::format(what, "too many merges"))?;
                out.push((pair_key(ia, ib), rank, iab));
            }
            Ok(out)
        })?;
        if !ignore_merges {
            // Which tokens the merges build from their own bytes: only those may be taken whole.
            let mut ok = vec![false; bpe.id_bound()];
            let mut scratch = Scratch::default();
            let mut out = Vec::new();
            for (id, tok) in vocab.iter().map(|(t, id)| (*id, t)) {
                out.clear();
                if tok.len() == 1 {
                    ok[id as usize] = true;
                    continue;
                }
                if tok.len() <= SMALL_PIECE {
                    bpe.merge_small(tok, &mut out, &mut scratch);
                } else {
                    bpe.merge_large(tok, &mut out, &mut scratch);
                }
                ok[id as usize] = out.as_slice() == [id];
            }
            bpe.whole_ok = Some(ok);
        }
        Ok(bpe)
    }

    /// The vocabulary tables shared by both constructors; `pairs` lists the merges as
    /// `(pair key, priority, merged id)` given the bytes -> id map. A byte without a token is
    /// an error unless `missing_ok`.
    fn build<'t>(
        what: &str,
        tokens: &'t [(Vec<u8>, u32)],
        missing_ok: bool,
        pairs: impl FnOnce(&FxHashMap<&'t [u8], u32>) -> Result<Vec<(u64, u32, u32)>>,
    ) -> Result<Self> {
        if tokens.is_empty() {
            return Err(Error::format(what, "no tokens"));
        }
        let max_rank = tokens.iter().map(|(_, r)| *r).max().unwrap_or(0) as usize;
        // Ids index a table: refuse absurdly sparse ids instead of allocating gigabytes.
        if max_rank > 4 * tokens.len() + 1024 {
            return Err(Error::format(
                what,
                format!(
                    "id {max_rank} is far beyond the {} tokens given; ids must be dense",
                    tokens.len()
                ),
            ));
        }
        let mut by_id: Vec<Option<&[u8]>> = vec![None; max_rank + 1];
        let mut lookup: FxHashMap<&[u8], u32> = FxHashMap::default();
        lookup.reserve(tokens.len());
        for (tok, rank) in tokens {
            if tok.is_empty() {
                return Err(Error::format(what, format!("id {rank} has an empty token")));
            }
            if by_id[*rank as usize].is_some() {
                return Err(Error::format(what, format!("id {rank} appears twice")));
            }
            by_id[*rank as usize] = Some(tok);
            if lookup.insert(tok, *rank).is_some() {
                return Err(Error::format(
                    what,
                    format!("token {} appears twice", escape(tok)),
                ));
            }
        }
        let mut byte_ids = [MISSING_BYTE; 256];
        let mut missing_bytes = false;
        for (b, slot) in byte_ids.iter_mut().enumerate() {
            match lookup.get(&[b as u8][..]) {
                Some(&id) => *slot = id,
                None if missing_ok => missing_bytes = true,
                None => {
                    return Err(Error::format(
                        what,
                        format!("no token for the single byte 0x{b:02x}"),
                    ))
                }
            }
        }
        let mut bytes = Vec::with_capacity(tokens.iter().map(|(t, _)| t.len()).sum());
        let mut offsets = Vec::with_capacity(by_id.len() + 1);
        offsets.push(0_u32);
        for tok in &by_id {
            bytes.extend_from_slice(tok.unwrap_or(&[]));
            offsets.push(
                u32::try_from(bytes.len())
                    .map_err(|_| Error::format(what, "the vocabulary is larger than 4 GiB"))?,
            );
        }
        bytes.extend_from_slice(&[0; COPY_SLACK]);
        let merges = PairTable::new(&pairs(&lookup)?);
        let lookup = PieceTable::new(lookup.iter().map(|(k, v)| (*k, *v)));
        Ok(Bpe {
            bytes,
            offsets,
            lookup,
            byte_ids,
            missing_bytes,
            merges,
            whole_ok: None,
            len: tokens.len(),
            uid: next_uid(),
        })
    }

    /// The number of tokens.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when there are no tokens (never, for a successfully built BPE).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// One more than the largest id.
    pub fn id_bound(&self) -> usize {
        self.offsets.len() - 1
    }

    /// The bytes of token `id`, if it exists.
    #[inline]
    pub fn token_bytes(&self, id: u32) -> Option<&[u8]> {
        let i = id as usize;
        let (start, end) = (*self.offsets.get(i)?, *self.offsets.get(i + 1)?);
        (start < end).then(|| &self.bytes[start as usize..end as usize])
    }

    /// The id of the token with exactly these bytes.
    #[inline]
    pub fn token_id(&self, bytes: &[u8]) -> Option<u32> {
        if bytes.is_empty() {
            return None;
        }
        self.lookup
            .get(bytes, |id| self.token_bytes(id).unwrap_or(&[]))
    }

    /// Appends the bytes of tokens `ids` to `out`; stops at the first id that is not a token
    /// and returns its index.
    ///
    /// Performance note: tokens average 3-4 bytes, and a `memcpy` call per token costs more
    /// than the copy. Each token of at most 16 bytes is copied as one 16-byte block (the
    /// vocabulary's byte store has 16 bytes of slack at its end); the output is trimmed after.
    pub fn extend_bytes(&self, ids: &[u32], out: &mut Vec<u8>) -> Result<(), usize> {
        let mut pos = out.len();
        for (k, &id) in ids.iter().enumerate() {
            let i = id as usize;
            let (Some(&start), Some(&end)) = (self.offsets.get(i), self.offsets.get(i + 1)) else {
                out.truncate(pos);
                return Err(k);
            };
            let (start, end) = (start as usize, end as usize);
            if start == end {
                out.truncate(pos);
                return Err(k);
            }
            let len = end - start;
            if out.len() < pos + len.max(COPY_SLACK) {
                out.resize((pos + len.max(COPY_SLACK)).max(out.len() * 2), 0);
            }
            if len <= COPY_SLACK {
                out[pos..pos + COPY_SLACK].copy_from_slice(&self.bytes[start..start + COPY_SLACK]);
            } else {
                out[pos..pos + len].copy_from_slice(&self.bytes[start..end]);
            }
            pos += len;
        }
        out.truncate(pos);
        Ok(())
    }

    /// All tokens with their ids, in id order.
    pub fn tokens(&self) -> impl Iterator<Item = (u32, &[u8])> {
        (0..self.id_bound() as u32).filter_map(|id| self.token_bytes(id).map(|b| (id, b)))
    }

    /// Whether a piece equal to token `id` is that token without merging.
    #[inline]
    fn whole(&self, id: u32) -> bool {
        self.whole_ok
            .as_ref()
            .is_none_or(|ok| ok.get(id as usize).copied().unwrap_or(false))
    }

    #[inline]
    fn merge_of(&self, a: u32, b: u32) -> (u32, u32) {
        self.merges.get(pair_key(a, b))
    }

    /// Appends the ids of the piece `text[start..end]` to `out`. (Taking the whole text lets
    /// the lookup read whole words past the piece's end.)
    #[inline]
    pub fn encode_piece(
        &self,
        text: &[u8],
        start: usize,
        end: usize,
        out: &mut Vec<u32>,
        scratch: &mut Scratch,
    ) {
        let piece = &text[start..end];
        match piece.len() {
            0 => {}
            1 => {
                let id = self.byte_ids[piece[0] as usize];
                if id != MISSING_BYTE {
                    out.push(id);
                }
            }
            n if n <= CACHED_BYTES => {
                let key = Key::new(text, start, end);
                let tail = |id| self.token_bytes(id).unwrap_or(&[]);
                if let Some(id) = self.lookup.get_key(&key, text, start, tail) {
                    if self.whole(id) {
                        out.push(id);
                        return;
                    }
                }
                if scratch.owner != self.uid || scratch.cache.is_empty() {
                    scratch.cache.clear();
                    scratch.cache.resize(CACHE_SLOTS, CacheSlot::default());
                    scratch.owner = self.uid;
                }
                let slot_at = (key.hash as usize) & (CACHE_SLOTS - 1);
                let slot = scratch.cache[slot_at];
                if slot.len as usize == n && slot.k0 == key.k0 && slot.k1 == key.k1 {
                    out.extend_from_slice(&slot.ids[..slot.n as usize]);
                    return;
                }
                let before = out.len();
                self.merge_small(piece, out, scratch);
                let made = &out[before..];
                if made.len() <= CACHED_IDS {
                    let mut ids = [0; CACHED_IDS];
                    ids[..made.len()].copy_from_slice(made);
                    scratch.cache[slot_at] = CacheSlot {
                        k0: key.k0,
                        k1: key.k1,
                        len: n as u16,
                        n: made.len() as u16,
                        ids,
                    };
                }
            }
            n => {
                let tail = |id| self.token_bytes(id).unwrap_or(&[]);
                match self.lookup.get_in(text, start, end, tail) {
                    Some(id) if self.whole(id) => out.push(id),
                    _ if n <= SMALL_PIECE => self.merge_small(piece, out, scratch),
                    _ => self.merge_large(piece, out, scratch),
                }
            }
        }
    }

    /// Repeatedly merges the lowest-priority adjacent pair (leftmost among equals).
    fn merge_small(&self, piece: &[u8], out: &mut Vec<u32>, s: &mut Scratch) {
        let ids = &mut s.ids;
        let ranks = &mut s.ranks;
        ids.clear();
        ids.extend(piece.iter().map(|&b| self.byte_ids[b as usize]));
        if self.missing_bytes {
            ids.retain(|&id| id != MISSING_BYTE);
        }
        ranks.clear();
        ranks.extend(ids.windows(2).map(|w| self.merge_of(w[0], w[1]).0));
        loop {
            let mut best = NO_MERGE;
            let mut at = 0;
            for (i, &r) in ranks.iter().enumerate() {
                if r < best {
                    best = r;
                    at = i;
                }
            }
            if best == NO_MERGE {
                break;
            }
            ids[at] = self.merge_of(ids[at], ids[at + 1]).1;
            ids.remove(at + 1);
            ranks.remove(at);
            if at + 1 < ids.len() {
                ranks[at] = self.merge_of(ids[at], ids[at + 1]).0;
            }
            if at > 0 {
                ranks[at - 1] = self.merge_of(ids[at - 1], ids[at]).0;
            }
        }
        out.extend_from_slice(ids);
    }

    /// Merges the part at `left` with the next one if that pair is still the candidate of
    /// priority `rank` (else `None`: the candidate is stale — its left part was merged away or
    /// the pair there now is another). Returns the candidates the merge makes, `(priority, left
    /// position)` with the part after and the part before (priority `NO_MERGE` where none).
    #[inline]
    fn merge_at(&self, s: &mut Scratch, left: u32, rank: u32) -> Option<[(u32, u32); 2]> {
        let parts = &mut s.parts;
        let l = left as usize;
        let right = parts[l].next;
        if right == NONE || right == DEAD {
            return None;
        }
        let r = right as usize;
        let (now, merged) = self.merge_of(parts[l].id, parts[r].id);
        if now != rank {
            return None;
        }
        parts[l].id = merged;
        let after = parts[r].next;
        parts[r].next = DEAD;
        parts[l].next = after;
        let mut made = [(NO_MERGE, 0); 2];
        if after != NONE {
            let a = &mut parts[after as usize];
            a.prev = left;
            made[0] = (self.merge_of(merged, a.id).0, left);
        }
        let before = parts[l].prev;
        if before != NONE {
            made[1] = (self.merge_of(parts[before as usize].id, merged).0, before);
        }
        Some(made)
    }

    /// The same merges for long pieces: a min-heap of candidate pairs keyed by (priority,
    /// position) over a doubly linked list of parts. An entry is stale when its left part was
    /// merged away or the pair that now starts there has another priority; it is then skipped.
    /// (A priority names one pair of tokens, so an entry whose priority still matches is that
    /// same merge, valid.) Entries are one `u64` each, which keeps the heap in cache.
    fn merge_large(&self, piece: &[u8], out: &mut Vec<u32>, s: &mut Scratch) {
        if !self.merge_grouped(piece, out, s) {
            self.merge_heap(piece, out, s);
        }
        s.trim();
    }

    /// The parts of a long piece as a doubly linked list, `s.parts`. Returns false when fewer
    /// than two parts remain (then they are already in `out`).
    fn link_parts(&self, piece: &[u8], out: &mut Vec<u32>, s: &mut Scratch) -> bool {
        s.parts.clear();
        crate::runtime::mem::reserve_huge(&mut s.parts, piece.len());
        s.parts.extend(piece.iter().filter_map(|&b| {
            let id = self.byte_ids[b as usize];
            (id != MISSING_BYTE).then_some(Part {
                id,
                next: 0,
                prev: 0,
            })
        }));
        let n = s.parts.len();
        if n < 2 {
            out.extend(s.parts.iter().map(|p| p.id));
            return false;
        }
        for (i, p) in s.parts.iter_mut().enumerate() {
            p.next = if i + 1 == n { NONE } else { i as u32 + 1 };
            p.prev = if i == 0 { NONE } else { i as u32 - 1 };
        }
        true
    }

    /// Each adjacent pair's `(priority, left position)`, for pairs that merge.
    fn initial_candidates<'a>(
        &'a self,
        parts: &'a [Part],
    ) -> impl Iterator<Item = (u32, u32)> + 'a {
        (0..parts.len() - 1).filter_map(move |i| {
            let (rank, _) = self.merge_of(parts[i].id, parts[i + 1].id);
            (rank != NO_MERGE).then_some((rank, i as u32))
        })
    }

    /// The same merges in linear expected time, when priorities rise along merges — as in
    /// every vocabulary BPE training made: a pair with a token made by merge `r` has a priority
    /// above `r`. Candidates are grouped by priority (a small heap holds the priorities
    /// present, one entry per distinct priority); a group is complete when its turn comes (no
    /// later merge can add to it), so it is sorted by position once and merged left to right —
    /// the order of the heap's (priority, position) keys. Memory is touched in order, which
    /// keeps a piece of millions of bytes from being bound by cache misses as the heap is.
    /// Returns false, having written nothing, when a merge makes a candidate whose priority is
    /// not above the current one (a vocabulary not made by training); [`Bpe::merge_heap`]
    /// then runs instead.
    fn merge_grouped(&self, piece: &[u8], out: &mut Vec<u32>, s: &mut Scratch) -> bool {
        if !self.link_parts(piece, out, s) {
            return true;
        }
        let mut groups = std::mem::take(&mut s.groups);
        let mut order = std::mem::take(&mut s.order);
        let mut spare = std::mem::take(&mut s.spare);
        spare.extend(groups.drain().map(|(_, mut g)| {
            g.clear();
            g
        }));
        order.clear();
        for (rank, left) in self.initial_candidates(&s.parts) {
            groups
                .entry(rank)
                .or_insert_with(|| spare.pop().unwrap_or_default())
                .push(left);
        }
        order.extend(groups.keys().map(|&r| Reverse(r)));
        let mut ok = true;
        'ranks: while let Some(Reverse(rank)) = order.pop() {
            let mut lefts = groups.remove(&rank).unwrap_or_default();
            // A group is a few runs in position order (one from each earlier priority that
            // made candidates of this one): the stable sort merges runs in linear time.
            lefts.sort();
            for (j, &left) in lefts.iter().enumerate() {
                // The positions ahead are known: load their parts while this one merges (the
                // right neighbour is usually on the same line).
                if let Some(&ahead) = lefts.get(j + PREFETCH_AHEAD) {
                    prefetch(s.parts.as_ptr().wrapping_add(ahead as usize));
                }
                let Some(made) = self.merge_at(s, left, rank) else {
                    continue;
                };
                for (rk, at) in made {
                    if rk == NO_MERGE {
                        continue;
                    }
                    if rk <= rank {
                        ok = false;
                        break 'ranks;
                    }
                    let g = groups.entry(rk).or_insert_with(|| {
                        order.push(Reverse(rk));
                        spare.pop().unwrap_or_default()
                    });
                    g.push(at);
                }
            }
            lefts.clear();
            spare.push(lefts);
        }
        (s.groups, s.order, s.spare) = (groups, order, spare);
        if !ok {
            return false;
        }
        emit_parts(s, out);
        true
    }

    /// The merges of a long piece with a min-heap of candidates (any vocabulary).
    fn merge_heap(&self, piece: &[u8], out: &mut Vec<u32>, s: &mut Scratch) {
        let entry = |rank: u32, left: u32| Reverse((u64::from(rank) << 32) | u64::from(left));
        if !self.link_parts(piece, out, s) {
            return;
        }
        let initial: Vec<Candidate> = self
            .initial_candidates(&s.parts)
            .map(|(rank, left)| entry(rank, left))
            .collect();
        // Heapify in O(n) rather than n pushes.
        s.heap = BinaryHeap::from(initial);
        while let Some(Reverse(key)) = s.heap.pop() {
            let (rank, left) = ((key >> 32) as u32, key as u32);
            let Some(made) = self.merge_at(s, left, rank) else {
                continue;
            };
            for (rk, at) in made {
                if rk != NO_MERGE {
                    s.heap.push(entry(rk, at));
                }
            }
        }
        emit_parts(s, out);
    }
}

/// The ids of the parts left in the linked list, in order.
fn emit_parts(s: &Scratch, out: &mut Vec<u32>) {
    let mut i = 0_u32;
    while i != NONE {
        let p = s.parts[i as usize];
        out.push(p.id);
        i = p.next;
    }
}

/// A token's bytes for an error message.
pub(crate) fn escape(bytes: &[u8]) -> String {
    format!("{:?}", String::from_utf8_lossy(bytes))
}

/// Polynomial hashes of byte strings modulo the prime 2^61 − 1, with a base drawn at random
/// for each use, so a file cannot be made to collide (two strings of equal length collide with
/// probability under 2^-50); a hit is still confirmed by comparing the bytes.
struct Poly {
    base: u64,
}

const MERSENNE_61: u64 = (1 << 61) - 1;

impl Poly {
    fn new() -> Self {
        use std::hash::{BuildHasher, Hasher};
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u8(0);
        Poly {
            base: 256 + h.finish() % (MERSENNE_61 - 512),
        }
    }

    fn reduce(x: u64) -> u64 {
        if x >= MERSENNE_61 {
            x - MERSENNE_61
        } else {
            x
        }
    }

    fn mul(&self, a: u64, b: u64) -> u64 {
        let p = u128::from(a) * u128::from(b);
        Self::reduce((p as u64 & MERSENNE_61) + (p >> 61) as u64)
    }

    fn sub(&self, a: u64, b: u64) -> u64 {
        Self::reduce(a + MERSENNE_61 - b)
    }

    /// The hash of a string extended by one byte.
    fn push(&self, h: u64, b: u8) -> u64 {
        Self::reduce(self.mul(h, self.base) + u64::from(b) + 1)
    }

    fn hash(&self, bytes: &[u8]) -> u64 {
        bytes.iter().fold(0, |h, &b| self.push(h, b))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tiny vocabulary: all bytes, then "ab" (256), "bc" (257), "abc" (258), "aa" (259),
    /// "aaaa" (260).
    fn tiny() -> Bpe {
        let mut ranks: Vec<(Vec<u8>, u32)> = (0..=255_u8).map(|b| (vec![b], b as u32)).collect();
        for (i, t) in ["ab", "bc", "abc", "aa", "aaaa"].iter().enumerate() {
            ranks.push((t.as_bytes().to_vec(), 256 + i as u32));
        }
        Bpe::from_ranks("tiny", ranks).unwrap()
    }

    fn enc(bpe: &Bpe, s: &[u8], large: bool) -> Vec<u32> {
        let mut out = Vec::new();
        let mut scratch = Scratch::default();
        if large && s.len() > 1 {
            bpe.merge_large(s, &mut out, &mut scratch);
            let mut heap = Vec::new();
            bpe.merge_heap(s, &mut heap, &mut scratch);
            assert_eq!(heap, out, "the heap and the grouped merges differ");
        } else if s.len() > 1 && bpe.token_id(s).is_none() {
            bpe.merge_small(s, &mut out, &mut scratch);
        } else {
            bpe.encode_piece(s, 0, s.len(), &mut out, &mut scratch);
        }
        out
    }

    /// tiktoken's own loop, written plainly over byte strings: the executable spec.
    fn reference(bpe: &Bpe, piece: &[u8]) -> Vec<u32> {
        if let Some(id) = bpe.token_id(piece) {
            return vec![id];
        }
        let mut parts: Vec<Vec<u8>> = piece.iter().map(|&b| vec![b]).collect();
        loop {
            let mut best: Option<(u32, usize)> = None;
            for i in 0..parts.len().saturating_sub(1) {
                let cat = [parts[i].as_slice(), parts[i + 1].as_slice()].concat();
                if let Some(r) = bpe.token_id(&cat) {
                    if best.is_none_or(|(br, _)| r < br) {
                        best = Some((r, i));
                    }
                }
            }
            let Some((_, i)) = best else { break };
            let right = parts.remove(i + 1);
            parts[i].extend(right);
        }
        parts.iter().map(|p| bpe.token_id(p).unwrap()).collect()
    }

    #[test]
    fn a_vocabulary_whose_priorities_fall_along_merges_takes_the_heap() {
        // "abc" ranks below its part "ab": the grouped merge sees a falling priority and
        // leaves the piece to the heap, which gives tiktoken's answer.
        let mut ranks: Vec<(Vec<u8>, u32)> = (0..=255_u8).map(|b| (vec![b], b as u32)).collect();
        ranks.push((b"abc".to_vec(), 256));
        ranks.push((b"ab".to_vec(), 300));
        let bpe = Bpe::from_ranks("falling", ranks).unwrap();
        let piece = b"abcabcxab".repeat(20);
        let mut s = Scratch::default();
        let mut grouped = Vec::new();
        assert!(!bpe.merge_grouped(&piece, &mut grouped, &mut s));
        assert!(grouped.is_empty());
        assert_eq!(enc(&bpe, &piece, true), reference(&bpe, &piece));
    }

    #[test]
    fn a_megabyte_long_rank_token_builds_in_linear_time() {
        // Every split of every token is looked up; hashing each half would be quadratic (a
        // megabyte of one letter took a minute). With rolling hashes this is milliseconds.
        let mut ranks: Vec<(Vec<u8>, u32)> = (0..=255_u8).map(|b| (vec![b], b as u32)).collect();
        ranks.push((b"aa".to_vec(), 256));
        ranks.push((vec![b'a'; 1 << 20], 257));
        let bpe = Bpe::from_ranks("long", ranks).unwrap();
        // The long token is no merge of two tokens, so it never forms; "aa" does.
        assert_eq!(enc(&bpe, b"aaaaa", false), vec![256, 256, b'a' as u32]);
        // Splits found by hash are the splits found by bytes.
        assert_eq!(enc(&bpe, b"abc", false), reference(&bpe, b"abc"));
    }

    #[test]
    fn merges_follow_rank_order() {
        let bpe = tiny();
        // "abc": "ab" (256) merges before "bc" (257), then "ab"+"c" -> "abc" (258).
        assert_eq!(enc(&bpe, b"abc", false), vec![258]);
        assert_eq!(enc(&bpe, b"abcx", false), vec![258, b'x' as u32]);
        assert_eq!(enc(&bpe, b"xbc", false), vec![b'x' as u32, 257]);
        assert_eq!(enc(&bpe, b"aaaaa", false), vec![260, b'a' as u32]);
        assert_eq!(enc(&bpe, b"a", false), vec![b'a' as u32]);
    }

    /// `len` bytes of "abcx" from a xorshift stream.
    fn random_piece(state: &mut u64, len: usize) -> Vec<u8> {
        (0..len)
            .map(|_| {
                *state ^= *state << 13;
                *state ^= *state >> 7;
                *state ^= *state << 17;
                b"abcx"[(*state % 4) as usize]
            })
            .collect()
    }

    #[test]
    fn small_and_large_paths_agree_with_the_reference() {
        let bpe = tiny();
        let mut state = 0x2545F4914F6CDD1D_u64;
        for len in 2..300 {
            let piece = random_piece(&mut state, len);
            let want = reference(&bpe, &piece);
            assert_eq!(enc(&bpe, &piece, false), want, "small, len {len}");
            assert_eq!(enc(&bpe, &piece, true), want, "large, len {len}");
        }
        let run = vec![b'a'; 1001];
        assert_eq!(enc(&bpe, &run, true), reference(&bpe, &run));
    }

    #[test]
    fn one_scratch_serves_many_pieces_and_frees_what_a_huge_one_needed() {
        let bpe = tiny();
        let mut scratch = Scratch::default();
        let mut state = 0x9E37_79B9_7F4A_7C15_u64;
        let mut piece = |len: usize| random_piece(&mut state, len);
        // Groups, spare vectors and parts carried over from one piece must not leak into the
        // next: each result equals the reference's with the same (reused) scratch.
        for len in [200, 3000, 150, 5000, 129] {
            let p = piece(len);
            let mut out = Vec::new();
            bpe.merge_large(&p, &mut out, &mut scratch);
            assert_eq!(out, reference(&bpe, &p), "len {len}");
        }
        assert!(
            scratch.parts.capacity() >= 5000,
            "small buffers are kept for the next piece"
        );
        let huge = piece(RETAIN_BYTES / std::mem::size_of::<Part>() + 1);
        let mut out = Vec::new();
        bpe.merge_large(&huge, &mut out, &mut scratch);
        let mut heap = Vec::new();
        bpe.merge_heap(&huge, &mut heap, &mut Scratch::default());
        assert_eq!(out, heap);
        assert_eq!(
            scratch.parts.capacity(),
            0,
            "a huge piece's parts are freed"
        );
        let spare: usize = scratch.spare.iter().map(|v| v.capacity() * 4).sum();
        assert!(spare <= RETAIN_BYTES, "{spare} bytes of spare groups kept");
    }

    #[test]
    fn token_tables() {
        let bpe = tiny();
        assert_eq!(bpe.len(), 261);
        assert_eq!(bpe.token_bytes(258), Some(&b"abc"[..]));
        assert_eq!(bpe.token_bytes(261), None);
        assert_eq!(bpe.token_id(b"aaaa"), Some(260));
        assert_eq!(bpe.tokens().count(), 261);
    }

    #[test]
    fn hugging_face_merges_decide_even_for_whole_tokens() {
        let mut vocab: Vec<(Vec<u8>, u32)> = (0..=255_u8).map(|b| (vec![b], b as u32)).collect();
        for (i, t) in ["ab", "bc", "abc"].iter().enumerate() {
            vocab.push((t.as_bytes().to_vec(), 256 + i as u32));
        }
        let merges = vec![
            (b"b".to_vec(), b"c".to_vec()),
            (b"a".to_vec(), b"bc".to_vec()),
        ];
        let hf = Bpe::from_merges("hf", vocab.clone(), &merges, false).unwrap();
        let enc = |bpe: &Bpe, s: &[u8]| {
            let mut out = vec![];
            bpe.encode_piece(s, 0, s.len(), &mut out, &mut Scratch::default());
            out
        };
        // "ab" is a token but no merge builds it: Hugging Face gives the two bytes.
        assert_eq!(enc(&hf, b"ab"), vec![97, 98]);
        assert_eq!(enc(&hf, b"abc"), vec![258]);
        assert_eq!(enc(&hf, b"xbc"), vec![b'x' as u32, 257]);
        // With ignore_merges (Llama 3), a word that is a token is that token.
        let llama = Bpe::from_merges("l3", vocab.clone(), &merges, true).unwrap();
        assert_eq!(enc(&llama, b"ab"), vec![256]);
        let bad = vec![(b"q".to_vec(), b"zz".to_vec())];
        let e = Bpe::from_merges("m", vocab, &bad, false)
            .unwrap_err()
            .to_string();
        assert!(e.contains("merge 1 uses \"zz\""), "{e}");
    }

    #[test]
    fn bytes_without_a_token_are_dropped_before_merging() {
        // Like `tokenizers` without an unk token: the byte vanishes and its neighbours merge.
        let mut vocab: Vec<(Vec<u8>, u32)> = (0..=255_u8)
            .filter(|&b| b != 4)
            .map(|b| (vec![b], u32::from(b)))
            .collect();
        vocab.push((b"ab".to_vec(), 300));
        let merges = vec![(b"a".to_vec(), b"b".to_vec())];
        let bpe = Bpe::from_merges("hf", vocab.clone(), &merges, false).unwrap();
        let enc = |s: &[u8]| {
            let mut out = vec![];
            bpe.encode_piece(s, 0, s.len(), &mut out, &mut Scratch::default());
            out
        };
        assert_eq!(enc(b"a\x04b"), vec![300]);
        assert_eq!(enc(b"\x04"), Vec::<u32>::new());
        let long: Vec<u8> = b"a\x04b".iter().copied().cycle().take(3 * 100).collect();
        assert_eq!(enc(&long), vec![300; 100]);
        // tiktoken rank files must cover every byte.
        assert!(Bpe::from_ranks("t", vocab).is_err());
    }

    #[test]
    fn malformed_ranks_are_format_errors() {
        let all: Vec<(Vec<u8>, u32)> = (0..=255_u8).map(|b| (vec![b], b as u32)).collect();
        let mut dup_rank = all.clone();
        dup_rank.push((b"ab".to_vec(), 5));
        assert!(Bpe::from_ranks("t", dup_rank)
            .unwrap_err()
            .to_string()
            .contains("id 5 appears twice"));
        let mut dup_tok = all.clone();
        dup_tok.push((b"a".to_vec(), 300));
        assert!(Bpe::from_ranks("t", dup_tok)
            .unwrap_err()
            .to_string()
            .contains("appears twice"));
        let missing: Vec<_> = all[1..].to_vec();
        assert!(Bpe::from_ranks("t", missing)
            .unwrap_err()
            .to_string()
            .contains("0x00"));
        let mut sparse = all.clone();
        sparse.push((b"zz".to_vec(), 4_000_000_000));
        assert!(Bpe::from_ranks("t", sparse)
            .unwrap_err()
            .to_string()
            .contains("dense"));
        assert!(Bpe::from_ranks("t", vec![]).is_err());
    }
}
