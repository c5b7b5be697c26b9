//! What the user can do about an error, in this binary's flags. The libraries describe the
//! condition with a typed error carrying its numbers and name no flag; `main` appends the hint
//! found here to the one `error:` line.

use std::error::Error as StdError;

use cord_runtime::engine::EngineError;
use cord_runtime::memory::KvAutoError;

/// The hint for the first error of `e`'s chain that has one (a suffix to its message).
pub fn flag_hint(e: &anyhow::Error) -> Option<&'static str> {
    e.chain().find_map(hint_of)
}

fn hint_of(e: &(dyn StdError + 'static)) -> Option<&'static str> {
    if let Some(e) = e.downcast_ref::<EngineError>() {
        return match e {
            EngineError::KvTooSmall { .. } => Some("; give it more KV memory (--kv-mib)"),
            EngineError::OutOfMemory(_) => Some(
                ". Give the KV pools less memory (--kv-mib), use a smaller dtype, place the model on another device, or raise the budget (--gpu-memory-fraction)",
            ),
            EngineError::KvAuto(k) => Some(match **k {
                KvAutoError::UnknownSize { .. } => "; give --kv-mib in MiB",
                KvAutoError::TooLittle { .. } => {
                    ". Give --kv-mib explicitly, place models on other devices or raise --gpu-memory-fraction"
                }
            }),
            _ => None,
        };
    }
    if let Some(e) = e.downcast_ref::<cord_decode::Error>() {
        return match e {
            cord_decode::Error::BadLines { .. } => {
                Some("; fix them, or pass --skip-bad-lines to leave them out")
            }
            cord_decode::Error::OutputExists { .. } => {
                Some("; use --resume to continue it or --overwrite to replace it")
            }
            cord_decode::Error::ForeignOutput { .. } => Some("; use --force to append anyway"),
            // A backend's error is carried in the message, not as a `source()`.
            cord_decode::Error::Backend(cause) | cord_decode::Error::Load { cause, .. } => {
                hint_of(cause.as_ref())
            }
            _ => None,
        };
    }
    None
}
