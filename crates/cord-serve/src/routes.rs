//! The HTTP side: axum handlers that check a request, render and count its prompt with the
//! model's own tokenizer and template, hand the work to the engine worker and write the answer
//! (JSON, or server-sent events in OpenAI's chunk format).

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use cord_decode::PoolConfig;
use cord_decode::Settings;
use cord_decode::config::{Method, SearchOverrides};
use cord_decode::io::Problem;
use cord_runtime::chat::Message;
use cord_runtime::engine::{Finish, GenOutput, GenRequest, ScoreOutput, TokenScoreRequest};
use cord_runtime::sampling::SamplingParams;
use futures_util::Stream;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use tokio::sync::{mpsc as tmpsc, oneshot};

use crate::api::{self, ChatRequest, CompletionRequest, CordBody, Sampling, ScoreBody};
use crate::error::ApiError;
use crate::models::ModelInfo;
use crate::server::ServeConfig;
use crate::worker::{CordEvent, CordJob, GenEvent, GenJob, Job, ScoreJob};

/// Shared by every handler.
pub(crate) struct App {
    pub jobs: mpsc::Sender<Job>,
    pub models: Vec<ModelInfo>,
    pub pool: Option<Arc<PoolConfig>>,
    pub config: ServeConfig,
    pub created: u64,
    pub next_id: AtomicU64,
    pub stopping: Arc<AtomicBool>,
}

type AppState = Arc<App>;

pub(crate) fn router(app: AppState) -> Router {
    let api = Router::new()
        .route("/v1/models", get(list_models))
        .route("/v1/models/{id}", get(get_model))
        .route("/v1/chat/completions", post(chat))
        .route("/v1/completions", post(completions))
        .route("/v1/score", post(score))
        .route("/v1/cord", post(cord))
        .route("/v1/engine", get(engine_state))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(app.clone(), auth));
    Router::new()
        .route(
            "/health",
            get(|| async { axum::Json(json!({"status": "ok"})) }),
        )
        .merge(api)
        .layer(DefaultBodyLimit::max(app.config.max_body_bytes))
        .with_state(app)
}

async fn auth(State(app): State<AppState>, req: Request, next: Next) -> Response {
    if let Some(key) = &app.config.api_key {
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        match given {
            Some(k) if k.trim() == key => {}
            Some(_) => return ApiError::unauthorized("incorrect API key").into_response(),
            None => {
                return ApiError::unauthorized("missing API key: send `Authorization: Bearer KEY`")
                    .into_response();
            }
        }
    }
    next.run(req).await
}

async fn not_found(req: Request) -> ApiError {
    ApiError::not_found(format!("no route {} {}", req.method(), req.uri().path()))
}

async fn method_not_allowed(req: Request) -> ApiError {
    ApiError::invalid(format!(
        "method {} is not allowed on {}",
        req.method(),
        req.uri().path()
    ))
    .with_status(StatusCode::METHOD_NOT_ALLOWED)
}

/// Parses a JSON body; too large, unreadable or malformed bodies become OpenAI-style errors.
fn parse<T: DeserializeOwned>(body: Result<Bytes, BytesRejection>) -> Result<T, ApiError> {
    let bytes = body.map_err(|r| {
        let e = ApiError::invalid(r.body_text()).with_status(r.status());
        if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
            e.with_code("request_too_large")
        } else {
            e
        }
    })?;
    serde_json::from_slice(&bytes).map_err(|e| ApiError::invalid(format!("invalid JSON body: {e}")))
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl App {
    fn model(&self, name: &str) -> Result<&ModelInfo, ApiError> {
        self.models.iter().find(|m| m.name == name).ok_or_else(|| {
            let known: Vec<&str> = self.models.iter().map(|m| m.name.as_str()).collect();
            ApiError::not_found(format!(
                "the model `{name}` does not exist; this server has {}",
                known.join(", ")
            ))
            .with_code("model_not_found")
        })
    }

    fn id(&self, prefix: &str) -> String {
        format!("{prefix}-{}", self.next_id.fetch_add(1, Ordering::Relaxed))
    }

    fn submit(&self, job: Job) -> Result<(), ApiError> {
        if self.stopping.load(Ordering::SeqCst) {
            return Err(ApiError::unavailable("the server is shutting down"));
        }
        self.jobs
            .send(job)
            .map_err(|_| ApiError::unavailable("the engine worker has stopped"))
    }

    async fn score(
        &self,
        model: &ModelInfo,
        reqs: Vec<TokenScoreRequest>,
        top: usize,
    ) -> Result<Vec<ScoreOutput>, ApiError> {
        let (tx, rx) = oneshot::channel();
        self.submit(Job::Score(ScoreJob {
            model: model.id,
            reqs,
            top,
            reply: tx,
        }))?;
        rx.await
            .map_err(|_| ApiError::unavailable("the engine worker has stopped"))?
    }
}

fn model_json(name: &str, created: u64) -> Value {
    json!({"id": name, "object": "model", "created": created, "owned_by": "cord"})
}

async fn list_models(State(app): State<AppState>) -> Response {
    let data: Vec<Value> = app
        .models
        .iter()
        .map(|m| model_json(&m.name, app.created))
        .collect();
    axum::Json(json!({"object": "list", "data": data})).into_response()
}

async fn get_model(State(app): State<AppState>, Path(id): Path<String>) -> Response {
    match app.model(&id) {
        Ok(m) => axum::Json(model_json(&m.name, app.created)).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn engine_state(State(app): State<AppState>) -> Response {
    let (tx, rx) = oneshot::channel();
    if let Err(e) = app.submit(Job::State(tx)) {
        return e.into_response();
    }
    match rx.await {
        Ok(s) => axum::Json(s).into_response(),
        Err(_) => ApiError::unavailable("the engine worker has stopped").into_response(),
    }
}

/// A checked generation: prompts already rendered and counted.
struct Plan {
    model: ModelInfo,
    /// (prompt text, prompt tokens) per prompt.
    prompts: Vec<(String, usize)>,
    n: usize,
    params: SamplingParams,
    seed: u64,
    max_tokens: usize,
    stop: Vec<String>,
    stream: bool,
    include_usage: bool,
}

impl Plan {
    /// Checks the sampling fields and the prompt lengths. `max_tokens` is the request's;
    /// `min_tokens` the least it may be (chat: 1; completions: 0, for echo scoring).
    fn new(
        app: &App,
        model: &ModelInfo,
        prompts: Vec<String>,
        sampling: Sampling,
        max_tokens: Option<i64>,
        min_tokens: usize,
    ) -> Result<Plan, ApiError> {
        let cfg = &app.config;
        let temperature = sampling.temperature.unwrap_or(1.0);
        if !(temperature.is_finite() && (0.0..=2.0).contains(&temperature)) {
            return Err(ApiError::param(
                "temperature",
                format!("temperature must be in [0, 2], got {temperature}"),
            ));
        }
        let top_p = sampling.top_p.unwrap_or(1.0);
        if !(top_p > 0.0 && top_p <= 1.0) {
            return Err(ApiError::param(
                "top_p",
                format!("top_p must be in (0, 1], got {top_p}"),
            ));
        }
        let top_k = api::count("top_k", sampling.top_k)?.unwrap_or(0);
        let min_p = sampling.min_p.unwrap_or(0.0);
        if !(0.0..=1.0).contains(&min_p) {
            return Err(ApiError::param(
                "min_p",
                format!("min_p must be in [0, 1], got {min_p}"),
            ));
        }
        let n = api::count("n", sampling.n)?.unwrap_or(1);
        if n == 0 || n > cfg.max_n {
            return Err(ApiError::param(
                "n",
                format!("n must be between 1 and {}, got {n}", cfg.max_n),
            ));
        }
        if prompts.len() * n > cfg.max_n {
            return Err(ApiError::param(
                "prompt",
                format!(
                    "{} prompts × n = {n} is more than the {} sequences one request may ask for",
                    prompts.len(),
                    cfg.max_n
                ),
            ));
        }
        let stop = sampling.stop.map(api::Stop::into_vec).unwrap_or_default();
        if stop.len() > 16 || stop.iter().any(String::is_empty) {
            return Err(ApiError::param(
                "stop",
                "stop must be at most 16 non-empty strings",
            ));
        }
        let requested = api::count("max_tokens", max_tokens)?;
        if let Some(m) = requested {
            if m < min_tokens {
                return Err(ApiError::param(
                    "max_tokens",
                    format!("max_tokens must be at least {min_tokens}"),
                ));
            }
            if m > cfg.max_tokens {
                return Err(ApiError::param(
                    "max_tokens",
                    format!(
                        "max_tokens {m} is more than this server allows ({}; cord serve --max-tokens)",
                        cfg.max_tokens
                    ),
                ));
            }
        }
        let limit = model.context.min(model.kv_tokens);
        let mut counted = Vec::with_capacity(prompts.len());
        let mut longest = 0;
        for p in prompts {
            let tokens = count_tokens(model, &p)?;
            if tokens == 0 {
                return Err(ApiError::param("prompt", "the prompt is empty"));
            }
            longest = longest.max(tokens);
            counted.push((p, tokens));
        }
        let max_tokens = match requested {
            Some(m) => m,
            None => cfg.default_max_tokens.min(limit.saturating_sub(longest)),
        };
        if longest + max_tokens > limit || (requested.is_none() && max_tokens < min_tokens.max(1)) {
            return Err(ApiError::param(
                "messages",
                format!(
                    "this model's context is {limit} tokens; the prompt has {longest} and max_tokens is {max_tokens}"
                ),
            )
            .with_code("context_length_exceeded"));
        }
        let seed = match sampling.seed {
            Some(s) => s as u64,
            None => rand::random(),
        };
        let stream = sampling.stream.unwrap_or(false);
        Ok(Plan {
            model: model.clone(),
            prompts: counted,
            n,
            params: SamplingParams {
                temperature,
                top_p,
                top_k,
                min_p,
            },
            seed,
            max_tokens,
            stop,
            stream,
            include_usage: sampling
                .stream_options
                .and_then(|o| o.include_usage)
                .unwrap_or(false),
        })
    }

    fn choices(&self) -> usize {
        self.prompts.len() * self.n
    }

    /// Sends one job per choice (prompt-major); choice `i` samples with seed + i.
    fn submit(&self, app: &App) -> Result<tmpsc::UnboundedReceiver<(usize, GenEvent)>, ApiError> {
        let (tx, rx) = tmpsc::unbounded_channel();
        for (p, (prompt, _)) in self.prompts.iter().enumerate() {
            for j in 0..self.n {
                let index = p * self.n + j;
                app.submit(Job::Generate(GenJob {
                    model: self.model.id,
                    index,
                    req: GenRequest {
                        prompt: prompt.clone(),
                        params: self.params,
                        seed: self.seed.wrapping_add(index as u64),
                        max_new_tokens: self.max_tokens,
                        stop: self.stop.clone(),
                        keep_stop: false,
                    },
                    events: tx.clone(),
                }))?;
            }
        }
        Ok(rx)
    }

    /// Waits for every choice (non-streaming).
    async fn run(&self, app: &App) -> Result<Vec<GenOutput>, ApiError> {
        let mut outs: Vec<Option<GenOutput>> = vec![None; self.choices()];
        if self.max_tokens == 0 {
            // Nothing to generate (echo scoring): the prompt alone.
            for (i, o) in outs.iter_mut().enumerate() {
                *o = Some(GenOutput {
                    text: String::new(),
                    token_ids: Vec::new(),
                    finish: Finish::Length,
                    prompt_tokens: self.prompts[i / self.n].1,
                    reused_tokens: 0,
                    completion_tokens: 0,
                });
            }
        } else {
            let mut rx = self.submit(app)?;
            let mut left = outs.len();
            while left > 0 {
                match rx.recv().await {
                    Some((i, GenEvent::Done(o))) => {
                        outs[i] = Some(o);
                        left -= 1;
                    }
                    Some((_, GenEvent::Text(_))) => {}
                    Some((_, GenEvent::Failed(e))) => return Err(e),
                    None => return Err(ApiError::unavailable("the engine worker has stopped")),
                }
            }
        }
        Ok(outs
            .into_iter()
            .map(|o| o.expect("every choice done"))
            .collect())
    }
}

fn count_tokens(model: &ModelInfo, text: &str) -> Result<usize, ApiError> {
    let enc = model
        .loaded
        .tokenizer
        .encode(text, false)
        .map_err(|e| ApiError::invalid(format!("cannot tokenize the prompt: {e}")))?;
    let bos = usize::from(
        model.loaded.add_bos
            && model
                .loaded
                .bos_token
                .as_deref()
                .is_some_and(|b| !text.starts_with(b)),
    );
    Ok(enc.get_ids().len() + bos)
}

fn finish_reason(f: &Finish) -> &'static str {
    match f {
        Finish::Eos | Finish::Stop(_) => "stop",
        Finish::Length => "length",
    }
}

fn usage(prompt: usize, completion: usize) -> Value {
    json!({
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    })
}

fn usage_of(plan: &Plan, outs: &[GenOutput]) -> Value {
    let prompt: usize = plan.prompts.iter().map(|p| p.1).sum();
    usage(prompt, outs.iter().map(|o| o.completion_tokens).sum())
}

fn token_text(model: &ModelInfo, id: u32) -> String {
    model
        .loaded
        .tokenizer
        .decode(&[id], false)
        .unwrap_or_default()
}

fn top_k_param(name: &str, v: Option<i64>) -> Result<usize, ApiError> {
    let k = api::count(name, v)?.unwrap_or(0);
    if k > 20 {
        return Err(ApiError::param(
            name,
            format!("{name} must be at most 20, got {k}"),
        ));
    }
    Ok(k)
}

async fn chat(State(app): State<AppState>, body: Result<Bytes, BytesRejection>) -> Response {
    match chat_inner(&app, body).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn chat_inner(
    app: &AppState,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let req: ChatRequest = parse(body)?;
    let model = app.model(&req.model)?;
    if req.messages.is_empty() {
        return Err(ApiError::param("messages", "messages must not be empty"));
    }
    let mut messages = Vec::with_capacity(req.messages.len());
    for (i, m) in req.messages.iter().enumerate() {
        let role = match m.role.as_str() {
            "developer" => "system",
            r @ ("system" | "user" | "assistant" | "tool") => r,
            other => {
                return Err(ApiError::param(
                    &format!("messages[{i}].role"),
                    format!("unknown role `{other}` (system, user, assistant, tool, developer)"),
                ));
            }
        };
        messages.push(Message::new(role, &m.text(i)?));
    }
    let prompt = model
        .template
        .render_messages(&messages, true)
        .map_err(|e| ApiError::param("messages", format!("{}: {e}", model.name)))?;
    let logprobs = req.logprobs.unwrap_or(false);
    let top = top_k_param("top_logprobs", req.top_logprobs)?;
    if top > 0 && !logprobs {
        return Err(ApiError::param(
            "top_logprobs",
            "top_logprobs needs logprobs: true",
        ));
    }
    let plan = Plan::new(
        app,
        model,
        vec![prompt],
        req.sampling,
        req.max_completion_tokens.or(req.max_tokens),
        1,
    )?;
    if plan.stream {
        if logprobs {
            return Err(ApiError::param(
                "logprobs",
                "logprobs are computed after generation and are not streamed; use stream: false",
            ));
        }
        return stream(app.clone(), plan, Flavour::Chat);
    }
    let outs = plan.run(app).await?;
    let lps = if logprobs {
        let reqs = outs
            .iter()
            .map(|o| (plan.prompts[0].0.clone(), o.text.clone()))
            .collect();
        Some(score_texts(app, &plan.model, reqs, top).await?)
    } else {
        None
    };
    let choices: Vec<Value> = outs
        .iter()
        .enumerate()
        .map(|(i, o)| {
            json!({
                "index": i,
                "message": {"role": "assistant", "content": o.text},
                "logprobs": lps.as_ref().map(|l| chat_logprobs(&plan.model, l[i].as_ref())),
                "finish_reason": finish_reason(&o.finish),
            })
        })
        .collect();
    Ok(axum::Json(json!({
        "id": app.id("chatcmpl"),
        "object": "chat.completion",
        "created": now(),
        "model": plan.model.name,
        "choices": choices,
        "usage": usage_of(&plan, &outs),
        "system_fingerprint": null,
    }))
    .into_response())
}

/// Scores `(context, continuation)` pairs; an empty continuation has no tokens (`None`).
async fn score_texts(
    app: &App,
    model: &ModelInfo,
    pairs: Vec<(String, String)>,
    top: usize,
) -> Result<Vec<Option<ScoreOutput>>, ApiError> {
    let wanted: Vec<usize> = (0..pairs.len())
        .filter(|&i| !pairs[i].1.is_empty())
        .collect();
    let mut out: Vec<Option<ScoreOutput>> = vec![None; pairs.len()];
    if wanted.is_empty() {
        return Ok(out);
    }
    let reqs = wanted
        .iter()
        .map(|&i| TokenScoreRequest {
            context: pairs[i].0.clone(),
            continuation: pairs[i].1.clone(),
        })
        .collect();
    let scored = app.score(model, reqs, top).await?;
    for (i, s) in wanted.into_iter().zip(scored) {
        out[i] = Some(s);
    }
    Ok(out)
}

fn chat_logprobs(model: &ModelInfo, s: Option<&ScoreOutput>) -> Value {
    let Some(s) = s else {
        return json!({"content": []});
    };
    let content: Vec<Value> = s
        .tokens
        .iter()
        .enumerate()
        .map(|(k, t)| {
            let top: Vec<Value> = s
                .top_logprobs
                .get(k)
                .map(|v| {
                    v.iter()
                        .map(|&(id, lp)| {
                            let tt = token_text(model, id);
                            json!({"token": tt, "logprob": lp, "bytes": tt.as_bytes()})
                        })
                        .collect()
                })
                .unwrap_or_default();
            json!({"token": t, "logprob": s.logprobs[k], "bytes": t.as_bytes(), "top_logprobs": top})
        })
        .collect();
    json!({"content": content})
}

async fn completions(State(app): State<AppState>, body: Result<Bytes, BytesRejection>) -> Response {
    match completions_inner(&app, body).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn completions_inner(
    app: &AppState,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let req: CompletionRequest = parse(body)?;
    let model = app.model(&req.model)?;
    let prompts = req.prompts()?;
    let echo = req.echo.unwrap_or(false);
    let logprobs = match req.logprobs {
        None => None,
        Some(_) => Some(top_k_param("logprobs", req.logprobs)?),
    };
    let min_tokens = if echo { 0 } else { 1 };
    let plan = Plan::new(
        app,
        model,
        prompts,
        req.sampling,
        req.max_tokens,
        min_tokens,
    )?;
    if plan.stream {
        if logprobs.is_some() || echo {
            return Err(ApiError::param(
                "stream",
                "logprobs and echo are not streamed; use stream: false",
            ));
        }
        return stream(app.clone(), plan, Flavour::Completion);
    }
    let outs = plan.run(app).await?;
    let mut lps: Vec<Value> = vec![Value::Null; outs.len()];
    if let Some(top) = logprobs {
        let mut pairs = Vec::with_capacity(outs.len());
        let mut heads = Vec::with_capacity(outs.len());
        for (i, o) in outs.iter().enumerate() {
            let prompt = &plan.prompts[i / plan.n].0;
            if echo {
                // Every prompt token but one with nothing before it is scored too.
                let head = prompt_head(&plan.model, prompt)?;
                pairs.push((
                    prompt[..head.len()].to_string(),
                    format!("{}{}", &prompt[head.len()..], o.text),
                ));
                heads.push(Some(head));
            } else {
                pairs.push((prompt.clone(), o.text.clone()));
                heads.push(None);
            }
        }
        let scored = score_texts(app, &plan.model, pairs, top).await?;
        for (i, s) in scored.iter().enumerate() {
            lps[i] = completion_logprobs(&plan.model, heads[i].as_deref(), s.as_ref(), top);
        }
    }
    let choices: Vec<Value> = outs
        .iter()
        .enumerate()
        .map(|(i, o)| {
            let text = if echo {
                format!("{}{}", plan.prompts[i / plan.n].0, o.text)
            } else {
                o.text.clone()
            };
            json!({
                "index": i,
                "text": text,
                "logprobs": lps[i],
                "finish_reason": finish_reason(&o.finish),
            })
        })
        .collect();
    Ok(axum::Json(json!({
        "id": app.id("cmpl"),
        "object": "text_completion",
        "created": now(),
        "model": plan.model.name,
        "choices": choices,
        "usage": usage_of(&plan, &outs),
    }))
    .into_response())
}

/// The part of `prompt` that has no log-prob with echo: nothing when the model starts every text
/// with a BOS token (the first prompt token is conditioned on it), else the first token's text.
fn prompt_head(model: &ModelInfo, prompt: &str) -> Result<String, ApiError> {
    let enc = model
        .loaded
        .tokenizer
        .encode(prompt, false)
        .map_err(|e| ApiError::invalid(format!("cannot tokenize the prompt: {e}")))?;
    if count_tokens(model, prompt)? > enc.get_ids().len() {
        // A BOS is prepended: every prompt token has a context.
        return Ok(String::new());
    }
    let mut end = enc
        .get_offsets()
        .first()
        .map_or(0, |o| o.1)
        .min(prompt.len());
    while !prompt.is_char_boundary(end) {
        end += 1;
    }
    Ok(prompt[..end].to_string())
}

/// The legacy completions `logprobs` object; with echo, `head` (the unscored first token) leads
/// with a null log-prob.
fn completion_logprobs(
    model: &ModelInfo,
    head: Option<&str>,
    s: Option<&ScoreOutput>,
    top: usize,
) -> Value {
    let mut tokens: Vec<String> = Vec::new();
    let mut lps: Vec<Value> = Vec::new();
    let mut tops: Vec<Value> = Vec::new();
    if let Some(h) = head.filter(|h| !h.is_empty()) {
        tokens.push(h.to_string());
        lps.push(Value::Null);
        tops.push(Value::Null);
    }
    if let Some(s) = s {
        for (k, t) in s.tokens.iter().enumerate() {
            tokens.push(t.clone());
            lps.push(json!(s.logprobs[k]));
            if top > 0 {
                let mut m = serde_json::Map::new();
                for &(id, lp) in s.top_logprobs.get(k).map(Vec::as_slice).unwrap_or(&[]) {
                    m.entry(token_text(model, id)).or_insert(json!(lp));
                }
                tops.push(Value::Object(m));
            } else {
                tops.push(Value::Null);
            }
        }
    }
    let mut offsets = Vec::with_capacity(tokens.len());
    let mut at = 0usize;
    for t in &tokens {
        offsets.push(at);
        at += t.len();
    }
    json!({
        "tokens": tokens,
        "token_logprobs": lps,
        "top_logprobs": if top > 0 { Value::Array(tops) } else { Value::Null },
        "text_offset": offsets,
    })
}

#[derive(Clone, Copy, PartialEq)]
enum Flavour {
    Chat,
    Completion,
}

/// Streams the choices of `plan` as server-sent events in OpenAI's chunk format, ending with
/// `data: [DONE]`. The client going away drops the event stream, which closes the channel the
/// worker writes to (the worker then drops what it has not started).
fn stream(app: AppState, plan: Plan, flavour: Flavour) -> Result<Response, ApiError> {
    let mut rx = plan.submit(&app)?;
    let (tx, out_rx) = tmpsc::channel::<Event>(64);
    let id = app.id(if flavour == Flavour::Chat {
        "chatcmpl"
    } else {
        "cmpl"
    });
    let created = now();
    tokio::spawn(async move {
        let object = match flavour {
            Flavour::Chat => "chat.completion.chunk",
            Flavour::Completion => "text_completion",
        };
        let chunk = |choices: Value, usage: Option<Value>| {
            let mut v = json!({
                "id": id,
                "object": object,
                "created": created,
                "model": plan.model.name,
                "choices": choices,
            });
            if let Some(u) = usage {
                v["usage"] = u;
            }
            Event::default().data(v.to_string())
        };
        let piece = |i: usize, text: &str, finish: Option<&str>| match flavour {
            Flavour::Chat => {
                let delta = if finish.is_some() {
                    json!({})
                } else {
                    json!({"content": text})
                };
                json!([{"index": i, "delta": delta, "logprobs": null, "finish_reason": finish}])
            }
            Flavour::Completion => {
                json!([{"index": i, "text": text, "logprobs": null, "finish_reason": finish}])
            }
        };
        if flavour == Flavour::Chat {
            for i in 0..plan.choices() {
                let first = json!([{"index": i, "delta": {"role": "assistant", "content": ""}, "logprobs": null, "finish_reason": null}]);
                if tx.send(chunk(first, None)).await.is_err() {
                    return;
                }
            }
        }
        let mut left = plan.choices();
        let mut completion = 0usize;
        while left > 0 {
            let ev = match rx.recv().await {
                Some((i, GenEvent::Text(t))) => chunk(piece(i, &t, None), None),
                Some((i, GenEvent::Done(o))) => {
                    left -= 1;
                    completion += o.completion_tokens;
                    let prompt: usize = plan.prompts.iter().map(|p| p.1).sum();
                    // The last chunk carries the usage unless a separate usage chunk was asked for.
                    let u = (left == 0 && !plan.include_usage).then(|| usage(prompt, completion));
                    chunk(piece(i, "", Some(finish_reason(&o.finish))), u)
                }
                Some((_, GenEvent::Failed(e))) => {
                    let _ = tx.send(Event::default().data(e.body().to_string())).await;
                    break;
                }
                None => {
                    let e = ApiError::unavailable("the engine worker has stopped");
                    let _ = tx.send(Event::default().data(e.body().to_string())).await;
                    break;
                }
            };
            if tx.send(ev).await.is_err() {
                return;
            }
        }
        if left == 0 && plan.include_usage {
            let prompt: usize = plan.prompts.iter().map(|p| p.1).sum();
            if tx
                .send(chunk(json!([]), Some(usage(prompt, completion))))
                .await
                .is_err()
            {
                return;
            }
        }
        let _ = tx.send(Event::default().data("[DONE]")).await;
    });
    Ok(sse(out_rx))
}

fn sse(rx: tmpsc::Receiver<Event>) -> Response {
    let events = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|e| (Ok::<Event, Infallible>(e), rx))
    });
    sse_response(events)
}

fn sse_response<S>(events: S) -> Response
where
    S: Stream<Item = Result<Event, Infallible>> + Send + 'static,
{
    Sse::new(events)
        .keep_alive(KeepAlive::default())
        .into_response()
}

async fn score(State(app): State<AppState>, body: Result<Bytes, BytesRejection>) -> Response {
    match score_inner(&app, body).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn score_inner(
    app: &AppState,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let req: ScoreBody = parse(body)?;
    let model = app.model(&req.model)?;
    if req.continuations.is_empty() || req.continuations.len() > app.config.max_continuations {
        return Err(ApiError::param(
            "continuations",
            format!(
                "give between 1 and {} continuations",
                app.config.max_continuations
            ),
        ));
    }
    if let Some(i) = req.continuations.iter().position(String::is_empty) {
        return Err(ApiError::param(
            &format!("continuations[{i}]"),
            "a continuation is empty",
        ));
    }
    let top = top_k_param("top_logprobs", req.top_logprobs)?;
    let limit = model.context.min(model.kv_tokens);
    for (i, c) in req.continuations.iter().enumerate() {
        let n = count_tokens(model, &format!("{}{c}", req.context))?;
        if n > limit {
            return Err(ApiError::param(
                &format!("continuations[{i}]"),
                format!("context + continuation is {n} tokens; this model's context is {limit}"),
            )
            .with_code("context_length_exceeded"));
        }
    }
    let reqs = req
        .continuations
        .iter()
        .map(|c| TokenScoreRequest {
            context: req.context.clone(),
            continuation: c.clone(),
        })
        .collect();
    let outs = app.score(model, reqs, top).await?;
    let mut prompt_tokens = 0;
    let mut scored = 0;
    let data: Vec<Value> = outs
        .iter()
        .enumerate()
        .map(|(i, o)| {
            prompt_tokens += o.context_tokens;
            scored += o.logprobs.len();
            let mut v = json!({
                "index": i,
                "object": "score",
                "tokens": o.tokens,
                "token_ids": o.token_ids,
                "logprobs": o.logprobs,
                "sum": o.sum(),
                "mean": o.mean(),
                "context_tokens": o.context_tokens,
                "reused_tokens": o.reused_tokens,
            });
            if top > 0 {
                v["top_logprobs"] = o
                    .top_logprobs
                    .iter()
                    .map(|row| {
                        row.iter()
                            .map(|&(id, lp)| json!({"token": token_text(model, id), "id": id, "logprob": lp}))
                            .collect::<Vec<_>>()
                    })
                    .collect::<Vec<_>>()
                    .into();
            }
            v
        })
        .collect();
    Ok(axum::Json(json!({
        "object": "list",
        "model": model.name,
        "data": data,
        "usage": {
            "prompt_tokens": prompt_tokens,
            "scored_tokens": scored,
            "total_tokens": prompt_tokens + scored,
        },
    }))
    .into_response())
}

fn parse_method(s: &str) -> Result<Method, ApiError> {
    [Method::Cord, Method::Greedy, Method::Curation, Method::Mcts]
        .into_iter()
        .find(|m| m.as_str().eq_ignore_ascii_case(s))
        .ok_or_else(|| {
            ApiError::param(
                "method",
                format!("unknown method `{s}` (cord, greedy, curation or mcts)"),
            )
        })
}

async fn cord(State(app): State<AppState>, body: Result<Bytes, BytesRejection>) -> Response {
    match cord_inner(&app, body).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn cord_inner(
    app: &AppState,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let req: CordBody = parse(body)?;
    let Some(pool) = &app.pool else {
        return Err(ApiError::invalid(
            "this server was started without a pool: CoRD needs `cord serve --pool POOL.toml`",
        ));
    };
    if req.question.trim().is_empty() {
        return Err(ApiError::param("question", "the question is empty"));
    }
    let answer = match req.answer.as_deref().map(str::trim) {
        Some(a) if !a.is_empty() => a.to_string(),
        _ => {
            return Err(ApiError::param(
                "answer",
                "answer is required: CoRD rates each candidate step by how predictable the known answer becomes",
            ));
        }
    };
    let cap = app.config.max_tokens;
    let budget = |name: &str, v: Option<i64>| -> Result<Option<usize>, ApiError> {
        let v = api::count(name, v)?;
        if let Some(x) = v
            && (x == 0 || x > cap)
        {
            return Err(ApiError::param(
                name,
                format!("{name} must be between 1 and {cap} (cord serve --max-tokens)"),
            ));
        }
        Ok(v)
    };
    let beam_width = api::count("beam_width", req.beam_width)?;
    if let Some(b) = beam_width
        && (b == 0 || b > app.config.max_n)
    {
        return Err(ApiError::param(
            "beam_width",
            format!("beam_width must be between 1 and {}", app.config.max_n),
        ));
    }
    let overrides = SearchOverrides {
        method: req.method.as_deref().map(parse_method).transpose()?,
        beam_width,
        think_budget: budget("think_budget", req.think_budget)?,
        answer_budget: budget("answer_budget", req.answer_budget)?,
        max_step_tokens: budget("max_step_tokens", req.max_step_tokens)?,
        max_steps: budget("max_steps", req.max_steps)?,
        seed: req.seed.map(|s| s as u64),
        save_tree: req.save_tree,
        ..SearchOverrides::default()
    };
    let mut pool = (**pool).clone();
    pool.apply_overrides(&overrides)
        .and_then(|()| pool.validate())
        .map_err(|e| ApiError::invalid(e.to_string()))?;
    let settings = Settings::shared(&pool).map_err(|e| ApiError::invalid(e.to_string()))?;
    let problem = Problem {
        id: req.id.clone().unwrap_or_else(|| app.id("request")),
        question: req.question.clone(),
        answer,
        line: 0,
    };
    let (tx, mut rx) = tmpsc::unbounded_channel();
    app.submit(Job::Cord(CordJob {
        settings,
        problem,
        events: tx,
    }))?;
    if !req.stream.unwrap_or(false) {
        loop {
            match rx.recv().await {
                Some(CordEvent::Step(_)) => {}
                Some(CordEvent::Record(r)) => {
                    let line =
                        serde_json::to_string(&r).map_err(|e| ApiError::internal(e.to_string()))?;
                    return Ok(([(header::CONTENT_TYPE, "application/json")], line).into_response());
                }
                Some(CordEvent::Failed(e)) => return Err(e),
                None => {
                    return Err(ApiError::unavailable(
                        "the search was stopped (server shutting down)",
                    ));
                }
            }
        }
    }
    let (out, out_rx) = tmpsc::channel::<Event>(64);
    tokio::spawn(async move {
        loop {
            let (ev, last) = match rx.recv().await {
                Some(CordEvent::Step(s)) => {
                    let v = json!({
                        "beam": s.beam,
                        "done": s.done,
                        "index": s.step.index,
                        "teacher": s.step.teacher,
                        "score": s.step.score,
                        "text": s.step.text,
                        "candidates": s.step.candidates,
                        "tokens": s.step.tokens,
                        "finish": s.step.finish,
                    });
                    (Event::default().event("step").data(v.to_string()), false)
                }
                Some(CordEvent::Record(r)) => match serde_json::to_string(&r) {
                    Ok(line) => (Event::default().event("record").data(line), true),
                    Err(e) => (
                        Event::default()
                            .event("error")
                            .data(ApiError::internal(e.to_string()).body().to_string()),
                        true,
                    ),
                },
                Some(CordEvent::Failed(e)) => (
                    Event::default().event("error").data(e.body().to_string()),
                    true,
                ),
                None => (
                    Event::default().event("error").data(
                        ApiError::unavailable("the search was stopped (server shutting down)")
                            .body()
                            .to_string(),
                    ),
                    true,
                ),
            };
            if out.send(ev).await.is_err() {
                return;
            }
            if last {
                break;
            }
        }
        let _ = out.send(Event::default().data("[DONE]")).await;
    });
    Ok(sse(out_rx))
}
