//! cord-decode: CoRD (collaborative step-wise multi-teacher decoding) and its baselines as
//! state machines over a text-level, batched [`backend::Backend`]. The `O-n` labels in doc
//! comments name the method's choices, listed in docs/method.md.
//!
//! - [`config`]: the pool file (teachers, scorer, search settings; every O-n default (docs/method.md)).
//! - [`io`]: problems JSONL in, records JSONL out (resumable).
//! - [`answer`]: answer extraction and comparison.
//! - [`backend`]: the engine boundary and its contract.
//! - [`search`], [`cord`], [`curation`], [`mcts`]: the searches.
//! - [`hygiene`]: junk candidate steps rejected before scoring.
//! - [`driver`]: many problems in flight, one backend call per request kind per round.
//! - [`scripted`]: a scripted backend for tests.

pub mod answer;
pub mod arithmetic;
pub mod backend;
pub(crate) mod chunked;
pub mod config;
pub mod cord;
pub mod curation;
pub mod driver;
pub mod error;
pub(crate) mod expand;
pub mod hygiene;
pub mod io;
pub mod mcts;
pub mod scripted;
pub mod search;
pub mod seed;

pub use backend::{AnswerRequest, Backend, Finish, Proposal, ProposeRequest, Score, ScoreRequest};
pub use config::{Method, PoolConfig, ScorerKind, SearchOverrides, StepUnit};
pub use driver::{Progress, Summary, run, run_observed, run_sinks, run_until};
pub use error::{Error, Result};
pub use io::{
    AttemptOutcome, OutputMode, Problem, Record, RecordSink, RecordWriter, read_problems,
};
pub use search::{Need, Reply, Search, SelectedStep, Settings, new_search};
