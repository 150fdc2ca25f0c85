//! Generation: prefill the prompts once, then decode every sequence together, one token per
//! step, each step reading the weights once for all of them.
//!
//! With `num_return_sequences = n`, each prompt's KV cache is filled once and copied to its `n`
//! continuations. Output follows `transformers`: each row is the (left-padded) prompt, then the
//! new tokens; a sequence that has ended is filled with the pad token while others go on.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use crate::model::kv::Cache;
use crate::model::sampling::{self, Rng, Sampling};
use crate::model::CausalLm;
use crate::runtime::mem;
use crate::{Error, Result};

/// The arguments of `generate` (already resolved from `max_length`, `generation_config.json`
/// and the like by the caller).
#[derive(Debug, Clone)]
pub struct GenerateParams {
    pub max_new_tokens: usize,
    pub min_new_tokens: usize,
    pub num_return_sequences: usize,
    pub sampling: Sampling,
    /// A sequence ends after any of these.
    pub eos: Vec<u32>,
    /// Fills the left padding of prompts and the tail of ended sequences.
    pub pad: u32,
    pub seed: u64,
}

/// A hook on each step's logits: `(ids [sequences × cols], cols, logits [sequences × vocab])`.
pub type Adjust<'a> = &'a mut dyn FnMut(&[u32], usize, &mut [f32]) -> Result<()>;

/// A generation in progress: call [`Generation::step`] until it returns `None`.
#[derive(Debug)]
pub struct Generation {
    model: Arc<dyn CausalLm>,
    params: GenerateParams,
    cache: Cache,
    /// Per output sequence: its prompt (unpadded) and the tokens generated so far.
    history: Vec<Vec<u32>>,
    prompt_len: Vec<usize>,
    /// The padded prompt length shared by all rows.
    width: usize,
    new: Vec<Vec<u32>>,
    finished: Vec<bool>,
    /// `[sequences × vocab]`: the logits of each sequence's next token, when `fresh`.
    logits: Vec<f32>,
    fresh: bool,
    steps: usize,
    /// One random stream per output sequence ([`Rng::stream`]).
    rngs: Vec<Rng>,
    scratch: sampling::Scratch,
    step_tokens: Vec<u32>,
    step_mask: Vec<u8>,
    /// What the last step produced per sequence (reused: no allocation per token).
    produced: Vec<Option<u32>>,
}

impl Generation {
    /// Prefills `prompts` (each non-empty) and prepares `num_return_sequences` continuations of
    /// each.
    pub fn new(
        model: Arc<dyn CausalLm>,
        prompts: &[Vec<u32>],
        params: GenerateParams,
    ) -> Result<Self> {
        Self::new_with(model, prompts, params, None)
    }

    /// [`Generation::new`] with a cancellation flag: once set (from any thread, Ctrl-C), the
    /// prefill and every later step stop between two layers with [`Error::Cancelled`].
    pub fn new_with(
        model: Arc<dyn CausalLm>,
        prompts: &[Vec<u32>],
        params: GenerateParams,
        cancel: Option<Arc<AtomicBool>>,
    ) -> Result<Self> {
        params.sampling.validate()?;
        if prompts.is_empty() {
            return Err(Error::invalid("generate: no prompt given"));
        }
        if params.num_return_sequences == 0 {
            return Err(Error::invalid("num_return_sequences must be at least 1"));
        }
        if prompts.iter().any(Vec::is_empty) {
            return Err(Error::invalid(
                "generate: an empty prompt (start it with the BOS token)",
            ));
        }
        let n_pos = model.n_ctx();
        let width = prompts.iter().map(Vec::len).max().unwrap_or(0);
        if width > n_pos {
            return Err(Error::invalid(format!(
                "the prompt has {width} tokens; the model takes at most n_positions = {n_pos}"
            )));
        }
        let b = prompts.len();
        let n = params.num_return_sequences;
        let vocab = model.vocab_size();
        let seqs = b.checked_mul(n).ok_or_else(|| {
            Error::OutOfMemory(format!(
                "{b} prompts × num_return_sequences = {n} is more sequences than this machine \
                 can address"
            ))
        })?;
        // Room for the prompt and every new token: the cache never grows while decoding.
        let room = width.saturating_add(params.max_new_tokens).min(n_pos);
        let mut tokens: Vec<u32> = mem::zeros(b.saturating_mul(width), "the prompts")?;
        let mut mask: Vec<u8> = mem::zeros(b.saturating_mul(width), "the prompts")?;
        for (i, p) in prompts.iter().enumerate() {
            let off = width - p.len();
            tokens[i * width + off..(i + 1) * width].copy_from_slice(p);
            mask[i * width + off..(i + 1) * width].fill(1);
        }
        let mut cache = model.new_cache(b, Some(room))?;
        // Everything the generation will hold at once, checked before the prefill runs: the
        // copies of the prompts' caches for every sequence and, per sequence, its logits, its
        // tokens (history, new tokens, the output rows) and its sampling state.
        let expanded = if n == 1 { 0 } else { cache.bytes() / b };
        let per_seq = [
            expanded,
            vocab.saturating_mul(4),
            room.saturating_mul(4 * 4),
            std::mem::size_of::<Rng>() + 2 * std::mem::size_of::<Vec<u32>>() + 32,
        ]
        .iter()
        .fold(0usize, |a, &x| a.saturating_add(x));
        mem::check_all(
            &[(seqs, per_seq), (b, vocab.saturating_mul(4))],
            &format!("generating {seqs} sequences of up to {room} tokens"),
        )?;
        cache.set_cancel(cancel);
        let mut logits = Vec::new();
        model.forward_into(&mut cache, &tokens, &mask, width, true, &mut logits)?;
        drop((tokens, mask));
        let (cache, logits) = if n == 1 {
            (cache, logits)
        } else {
            let sources: Vec<usize> = (0..b).flat_map(|i| std::iter::repeat_n(i, n)).collect();
            let mut rows: Vec<f32> = mem::zeros(seqs.saturating_mul(vocab), "the logits")?;
            for (row, &s) in rows.chunks_exact_mut(vocab.max(1)).zip(&sources) {
                row.copy_from_slice(&logits[s * vocab..(s + 1) * vocab]);
            }
            (cache.expand(&sources)?, rows)
        };
        let history: Vec<Vec<u32>> = (0..seqs).map(|i| prompts[i / n].clone()).collect();
        Ok(Generation {
            model,
            cache,
            prompt_len: history.iter().map(Vec::len).collect(),
            history,
            width,
            new: vec![Vec::new(); seqs],
            finished: vec![false; seqs],
            logits,
            fresh: true,
            steps: 0,
            rngs: (0..seqs).map(|i| Rng::stream(params.seed, i)).collect(),
            scratch: sampling::Scratch::default(),
            step_tokens: vec![0; seqs],
            step_mask: vec![1; seqs],
            produced: vec![None; seqs],
            params,
        })
    }

    /// Replaces the cancellation flag (see [`Generation::new_with`]).
    pub fn set_cancel(&mut self, cancel: Option<Arc<AtomicBool>>) {
        self.cache.set_cancel(cancel);
    }

    /// The number of output sequences.
    pub fn sequences(&self) -> usize {
        self.history.len()
    }

    /// Steps taken (tokens generated per sequence, padding included).
    pub fn steps(&self) -> usize {
        self.steps
    }

    /// True when no more steps will be taken.
    pub fn done(&self) -> bool {
        self.finished.iter().all(|&f| f)
            || self.steps >= self.params.max_new_tokens
            || (!self.fresh && self.cache.len(0) >= self.model.n_ctx())
    }

    /// Generates one token for every sequence that has not ended. `stop(i, new_tokens)` may end
    /// sequence `i` after its token (stop strings). Returns the token of each sequence (`None`
    /// for those that had already ended), or `None` when generation is over.
    pub fn step(&mut self, stop: &dyn Fn(usize, &[u32]) -> bool) -> Result<Option<&[Option<u32>]>> {
        self.step_with(stop, None)
    }

    /// [`Generation::step`] with an `adjust(ids, cols, logits)` hook run on every step's
    /// logits (`[sequences × vocab]`) before the token is chosen, given the output so far
    /// (`[sequences × cols]`, as [`Generation::output`]): a user's logits processor.
    pub fn step_with(
        &mut self,
        stop: &dyn Fn(usize, &[u32]) -> bool,
        adjust: Option<Adjust<'_>>,
    ) -> Result<Option<&[Option<u32>]>> {
        if self.done() {
            return Ok(None);
        }
        if !self.fresh {
            let mut logits = std::mem::take(&mut self.logits);
            self.model.forward_into(
                &mut self.cache,
                &self.step_tokens,
                &self.step_mask,
                1,
                true,
                &mut logits,
            )?;
            self.logits = logits;
        }
        if let Some(f) = adjust {
            let (ids, cols) = self.output();
            f(&ids, cols, &mut self.logits)?;
        }
        let vocab = self.model.vocab_size();
        let ban: &[u32] = if self.steps < self.params.min_new_tokens {
            &self.params.eos
        } else {
            &[]
        };
        for i in 0..self.history.len() {
            if self.finished[i] {
                self.produced[i] = None;
                self.step_tokens[i] = 0;
                continue;
            }
            let row = &mut self.logits[i * vocab..(i + 1) * vocab];
            let tok = sampling::choose(
                row,
                &self.history[i],
                ban,
                &self.params.sampling,
                &mut self.rngs[i],
                &mut self.scratch,
            );
            self.history[i].push(tok);
            self.new[i].push(tok);
            self.step_tokens[i] = tok;
            if self.params.eos.contains(&tok) || stop(i, &self.new[i]) {
                self.finished[i] = true;
            }
            self.produced[i] = Some(tok);
        }
        self.steps += 1;
        self.fresh = false;
        Ok(Some(&self.produced))
    }

    /// Runs to the end.
    pub fn run(&mut self, stop: &dyn Fn(usize, &[u32]) -> bool) -> Result<()> {
        while self.step(stop)?.is_some() {}
        Ok(())
    }

    /// The tokens generated so far for sequence `i` (no prompt, no padding).
    pub fn new_tokens(&self, i: usize) -> &[u32] {
        &self.new[i]
    }

    /// `[sequences × (width + steps)]`, row-major: left-padded prompt, then the new tokens, the
    /// pad token after a sequence ended.
    pub fn output(&self) -> (Vec<u32>, usize) {
        let cols = self.width + self.steps;
        let mut out = Vec::with_capacity(self.history.len() * cols);
        for (i, h) in self.history.iter().enumerate() {
            let pad_left = self.width - self.prompt_len[i];
            out.extend(std::iter::repeat_n(self.params.pad, pad_left));
            out.extend_from_slice(h);
            out.extend(std::iter::repeat_n(
                self.params.pad,
                cols - pad_left - h.len(),
            ));
        }
        (out, cols)
    }
}
