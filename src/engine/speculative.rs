//! Multi-token prediction: the NextN layers GLM-4.5 and later carry guess the next few
//! tokens, and the model checks the guesses in one pass. Each checked position is
//! sampled with the reply's own sampler and a guess is kept only while it equals what
//! was sampled, so the output is the output without drafting; only the speed differs.
//!
//! The draft context is llama.cpp's MTP context bound to the target context (it reads the
//! target's hidden states); llama-cpp-2's `MtpSpeculative` owns both.

use anyhow::{anyhow, Result};
use llama_cpp_2::context::params::LlamaContextType;
use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::speculative::{MtpSpeculative, MtpSpeculativeParams};
use llama_cpp_2::token::LlamaToken;

use super::model::{backend, context_params, refusal, Engine};
use super::options::{ContextOptions, DraftOptions};

/// Drafted and accepted token counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DraftStats {
    pub drafted: usize,
    pub accepted: usize,
}

impl DraftStats {
    /// Accepted drafts per drafted token.
    pub fn acceptance_rate(&self) -> f64 {
        self.accepted as f64 / self.drafted.max(1) as f64
    }
}

/// The contexts a session decodes with: the model's alone, or the model's with an MTP
/// draft context that follows every batch the model evaluates.
pub(super) enum Decoder<'m> {
    Plain(LlamaContext<'m>),
    Drafting {
        spec: Box<MtpSpeculative<'m>>,
        options: DraftOptions,
        /// False once positions were decoded without the draft context seeing them (an
        /// image turn); drafting resumes after the cache is cleared.
        in_step: bool,
    },
}

impl<'m> Decoder<'m> {
    /// The model's context, and a draft context when `options.draft` asks for one and the
    /// model has NextN layers loaded.
    pub fn new(engine: &'m Engine, options: &ContextOptions, n_ctx: u32) -> Result<Self> {
        let target = engine.new_context(options, n_ctx)?;
        let Some(draft) = options.draft.filter(|_| engine.has_nextn_layers()) else {
            return Ok(Decoder::Plain(target));
        };
        let params = context_params(options, n_ctx)
            .with_context_type(LlamaContextType::Mtp)
            .with_n_rs_seq(0);
        super::log::start_capture();
        let draft_context = engine
            .model
            .new_context_with_ctx_other(backend()?, params, &target)
            .map_err(|e| refusal("cannot create the multi-token-prediction context".to_owned(), e))?;
        let spec = MtpSpeculative::new(
            target,
            draft_context,
            MtpSpeculativeParams {
                n_max: draft.max as i32,
                n_min: draft.min as i32,
                p_min: draft.p_min,
            },
        )
        .map_err(|e| refusal("cannot start multi-token prediction".to_owned(), e))?;
        Ok(Decoder::Drafting {
            spec: Box::new(spec),
            options: draft,
            in_step: true,
        })
    }

    pub fn target(&self) -> &LlamaContext<'m> {
        match self {
            Decoder::Plain(ctx) => ctx,
            Decoder::Drafting { spec, .. } => spec.target_context(),
        }
    }

    pub fn target_mut(&mut self) -> &mut LlamaContext<'m> {
        match self {
            Decoder::Plain(ctx) => ctx,
            Decoder::Drafting { spec, .. } => spec.target_context_mut(),
        }
    }

    /// Whether this reply drafts: the contexts are in step, and sampling is greedy or the
    /// user asked for drafting whatever the sampling.
    pub fn drafts(&self, greedy: bool) -> bool {
        matches!(self, Decoder::Drafting { options, in_step: true, .. } if greedy || options.always)
    }

    /// Evaluates a batch with the model and shows it to the draft context.
    pub fn decode(&mut self, batch: &mut LlamaBatch) -> Result<()> {
        let _watch = super::rpc::watch();
        self.target_mut()
            .decode(batch)
            .map_err(|e| anyhow!("llama.cpp failed to evaluate the tokens: {e}"))?;
        if let Decoder::Drafting {
            spec, in_step: true, ..
        } = self
        {
            spec.process(batch)
                .map_err(|e| anyhow!("the multi-token-prediction context could not follow: {e}"))?;
        }
        Ok(())
    }

    /// Marks the draft context as behind the model (positions it never saw).
    pub fn lose_step(&mut self) {
        if let Decoder::Drafting { in_step, .. } = self {
            *in_step = false;
        }
    }

    /// Drops cached positions from `position` on, in both contexts.
    pub fn forget_from(&mut self, position: u32) -> Result<()> {
        let trim = |ctx: &mut LlamaContext| {
            ctx.clear_kv_cache_seq(Some(0), Some(position), None)
                .map(drop)
                .map_err(|e| anyhow!("cannot trim the KV cache: {e}"))
        };
        match self {
            Decoder::Plain(ctx) => trim(ctx),
            Decoder::Drafting { spec, .. } => {
                trim(spec.target_context_mut())?;
                trim(spec.draft_context_mut())
            }
        }
    }

    /// Empties both caches; the contexts are in step again.
    pub fn clear(&mut self) {
        match self {
            Decoder::Plain(ctx) => ctx.clear_kv_cache(),
            Decoder::Drafting { spec, in_step, .. } => {
                spec.target_context_mut().clear_kv_cache();
                spec.draft_context_mut().clear_kv_cache();
                *in_step = true;
            }
        }
    }

    /// Starts a reply whose evaluated tokens are `history` (the next token, not yet
    /// evaluated, is the first one drafted from).
    pub fn begin(&mut self, history: &[LlamaToken]) -> Result<()> {
        if let Decoder::Drafting { spec, .. } = self {
            spec.begin(history).map_err(|e| anyhow!("cannot start drafting: {e}"))?;
        }
        Ok(())
    }

    /// Up to `limit` tokens guessed to follow `last`, which sits at `position` and is not
    /// yet evaluated. The draft context's own guesses are dropped from its cache after.
    pub fn draft(&mut self, position: u32, last: LlamaToken, limit: usize) -> Result<Vec<LlamaToken>> {
        let Decoder::Drafting { spec, .. } = self else {
            return Ok(Vec::new());
        };
        if limit == 0 {
            return Ok(Vec::new());
        }
        // The MTP drafter reads the hidden states, not the token history.
        let mut guesses = spec
            .draft(position as i32, last, &[])
            .map_err(|e| anyhow!("drafting failed: {e}"))?;
        spec.draft_context_mut()
            .clear_kv_cache_seq(Some(0), Some(position), None)
            .map_err(|e| anyhow!("cannot trim the draft cache: {e}"))?;
        guesses.truncate(limit);
        Ok(guesses)
    }

    /// Tells the drafter how many of the last draft's tokens the model kept.
    pub fn accept(&mut self, accepted: usize, drafted: usize) -> Result<()> {
        if let Decoder::Drafting { spec, .. } = self {
            if drafted > 0 {
                spec.accept(accepted as u16)
                    .map_err(|e| anyhow!("drafting failed: {e}"))?;
            }
        }
        Ok(())
    }
}
