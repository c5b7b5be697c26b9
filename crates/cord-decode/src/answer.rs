//! Final-answer extraction and comparison with the ground truth: the `cord-verify` crate, under
//! the names the searches use.

pub use cord_verify::{
    Verdict, answers_match, extract_answer, last_boxed, last_number, normalize, verify,
};
