//! Request bodies of the endpoints (OpenAI's field names) and their checks. Unknown fields are
//! ignored, as OpenAI-compatible servers do (clients send vendor extras).

use serde::Deserialize;
use serde_json::Value;

use crate::error::ApiError;

/// `stop`: one string or a list.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub(crate) enum Stop {
    One(String),
    Many(Vec<String>),
}

impl Stop {
    pub fn into_vec(self) -> Vec<String> {
        match self {
            Stop::One(s) => vec![s],
            Stop::Many(v) => v,
        }
    }
}

/// Sampling fields shared by chat and completions.
#[derive(Debug, Clone, Deserialize, Default)]
pub(crate) struct Sampling {
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    /// Not in OpenAI's API; vLLM and llama.cpp accept it.
    pub top_k: Option<i64>,
    /// As `top_k`.
    pub min_p: Option<f32>,
    pub seed: Option<i64>,
    pub n: Option<i64>,
    pub stop: Option<Stop>,
    pub stream: Option<bool>,
    pub stream_options: Option<StreamOptions>,
}

#[derive(Debug, Clone, Deserialize, Default)]
pub(crate) struct StreamOptions {
    pub include_usage: Option<bool>,
}

/// `POST /v1/chat/completions`.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct ChatRequest {
    pub model: String,
    pub messages: Vec<ChatMessage>,
    pub max_tokens: Option<i64>,
    pub max_completion_tokens: Option<i64>,
    pub logprobs: Option<bool>,
    pub top_logprobs: Option<i64>,
    #[serde(flatten)]
    pub sampling: Sampling,
}

#[derive(Debug, Clone, Deserialize)]
pub(crate) struct ChatMessage {
    pub role: String,
    /// A string, a list of parts (`{"type": "text", "text": ...}`), or null.
    #[serde(default)]
    pub content: Value,
}

impl ChatMessage {
    /// The text of the message; parts other than text are refused.
    pub fn text(&self, i: usize) -> Result<String, ApiError> {
        let param = format!("messages[{i}].content");
        match &self.content {
            Value::String(s) => Ok(s.clone()),
            Value::Null => Ok(String::new()),
            Value::Array(parts) => {
                let mut out = String::new();
                for p in parts {
                    match (p.get("type").and_then(Value::as_str), p.get("text")) {
                        (Some("text"), Some(Value::String(t))) => out.push_str(t),
                        _ => {
                            return Err(ApiError::param(
                                &param,
                                "only text content parts ({\"type\": \"text\", \"text\": ...}) are supported",
                            ));
                        }
                    }
                }
                Ok(out)
            }
            _ => Err(ApiError::param(
                &param,
                "content must be a string or a list of text parts",
            )),
        }
    }
}

/// `POST /v1/completions`.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct CompletionRequest {
    pub model: String,
    pub prompt: Value,
    pub max_tokens: Option<i64>,
    /// Number of most likely tokens to list per position; 0 lists only the chosen token's.
    pub logprobs: Option<i64>,
    pub echo: Option<bool>,
    #[serde(flatten)]
    pub sampling: Sampling,
}

impl CompletionRequest {
    /// The prompts: a string or a list of strings (token-id prompts are refused).
    pub fn prompts(&self) -> Result<Vec<String>, ApiError> {
        let bad = || {
            ApiError::param(
                "prompt",
                "prompt must be a string or a list of strings (token-id prompts are not supported)",
            )
        };
        match &self.prompt {
            Value::String(s) => Ok(vec![s.clone()]),
            Value::Array(v) if !v.is_empty() => v
                .iter()
                .map(|p| p.as_str().map(str::to_string).ok_or_else(bad))
                .collect(),
            _ => Err(bad()),
        }
    }
}

/// `POST /v1/score`.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct ScoreBody {
    pub model: String,
    pub context: String,
    pub continuations: Vec<String>,
    /// Most likely tokens to list per position (default 0).
    pub top_logprobs: Option<i64>,
}

/// `POST /v1/cord`.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct CordBody {
    pub question: String,
    pub answer: Option<String>,
    /// The record's id (default `request-N`).
    pub id: Option<String>,
    pub stream: Option<bool>,
    pub method: Option<String>,
    pub beam_width: Option<i64>,
    pub think_budget: Option<i64>,
    pub answer_budget: Option<i64>,
    pub max_step_tokens: Option<i64>,
    pub max_steps: Option<i64>,
    pub seed: Option<i64>,
    pub save_tree: Option<bool>,
}

/// A non-negative integer field, or a 400 naming it.
pub(crate) fn count(name: &str, v: Option<i64>) -> Result<Option<usize>, ApiError> {
    match v {
        None => Ok(None),
        Some(x) if x >= 0 => Ok(Some(x as usize)),
        Some(x) => Err(ApiError::param(
            name,
            format!("{name} must be a non-negative integer, got {x}"),
        )),
    }
}
