//! Chat templates: a model's own Jinja template rendered with minijinja, plus CoRD's raw assistant
//! prefill.
//!
//! The environment mirrors what `transformers` does in `apply_chat_template`:
//! * `trim_blocks` and `lstrip_blocks` on, a single trailing newline of the source dropped;
//! * Python string/dict methods (`.strip()`, `.startswith()`, `.split()`, `.items()`, ...) through
//!   `minijinja-contrib`'s pycompat callback; `break`/`continue` loop controls;
//! * globals `raise_exception(msg)` (a render error) and `strftime_now(fmt)` (the current UTC
//!   date/time);
//! * variables `messages`, `add_generation_prompt`, `bos_token`, `eos_token`, and `tools = none`;
//! * the `{% generation %}...{% endgeneration %}` tags of training templates (e.g. Phi-4) are
//!   accepted and render their body unchanged.
//!
//! The template source comes from `tokenizer_config.json` (`chat_template`, a string or a list of
//! `{name, template}`; see [`ChatTemplate::from_tokenizer_config`]) or from GGUF metadata
//! (`tokenizer.chat_template`, a plain string for [`ChatTemplate::new`]). Models without a template
//! (base models) use [`ChatTemplate::plain`].

use minijinja::value::Value;
use minijinja::{Environment, Error, ErrorKind, context};
use serde::Serialize;

/// Errors of template parsing and rendering.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ChatError {
    #[error("invalid chat template: {0}")]
    Template(String),
    #[error("chat template rendering failed: {0}")]
    Render(String),
    #[error("invalid tokenizer_config.json: {0}")]
    Config(String),
}

/// One chat message as templates see it (`message.role`, `message['content']`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Message {
    pub role: String,
    pub content: String,
}

impl Message {
    pub fn new(role: &str, content: &str) -> Self {
        Self {
            role: role.to_string(),
            content: content.to_string(),
        }
    }
}

/// The fallback template for models without one (e.g. base models). Format:
///
/// ```text
/// {system}\n\n            (only when a system message is given)
/// User: {user}\n\n
/// Assistant:\n            (the generation prompt)
/// ```
///
/// Earlier assistant turns render as `Assistant: {content}\n\n`. No BOS token is written; the
/// tokenizer's own `add_bos` setting applies.
pub const PLAIN_TEMPLATE: &str = "{%- for message in messages -%}\
{%- if message.role == 'system' -%}{{ message.content }}{{ '\\n\\n' }}\
{%- elif message.role == 'user' -%}User: {{ message.content }}{{ '\\n\\n' }}\
{%- elif message.role == 'assistant' -%}Assistant: {{ message.content }}{{ '\\n\\n' }}\
{%- endif -%}\
{%- endfor -%}\
{%- if add_generation_prompt -%}Assistant:{{ '\\n' }}{%- endif -%}";

const NAME: &str = "chat";

/// A compiled chat template with its BOS/EOS token strings.
#[derive(Debug, Clone)]
pub struct ChatTemplate {
    env: Environment<'static>,
    bos_token: String,
    eos_token: String,
}

impl ChatTemplate {
    /// Compiles `source` (Jinja). `bos_token` / `eos_token` are the strings the template sees as
    /// `bos_token` / `eos_token` (empty when the model has none).
    pub fn new(source: &str, bos_token: &str, eos_token: &str) -> Result<Self, ChatError> {
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_keep_trailing_newline(false);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", raise_exception);
        env.add_function("strftime_now", strftime_now);
        env.add_template_owned(NAME, strip_generation_tags(source))
            .map_err(|e| ChatError::Template(format!("{e:#}")))?;
        Ok(Self {
            env,
            bos_token: bos_token.to_string(),
            eos_token: eos_token.to_string(),
        })
    }

    /// The fallback [`PLAIN_TEMPLATE`].
    pub fn plain(bos_token: &str, eos_token: &str) -> Self {
        Self::new(PLAIN_TEMPLATE, bos_token, eos_token).expect("PLAIN_TEMPLATE is valid Jinja")
    }

    /// The template of a `tokenizer_config.json` (its text), with its `bos_token` / `eos_token`.
    /// `Ok(None)` when the file has no `chat_template`.
    pub fn from_tokenizer_config(json: &str) -> Result<Option<Self>, ChatError> {
        let cfg: serde_json::Value =
            serde_json::from_str(json).map_err(|e| ChatError::Config(e.to_string()))?;
        let Some(source) = template_source(&cfg)? else {
            return Ok(None);
        };
        let bos = special_token(&cfg, "bos_token").unwrap_or_default();
        let eos = special_token(&cfg, "eos_token").unwrap_or_default();
        Self::new(&source, &bos, &eos).map(Some)
    }

    pub fn bos_token(&self) -> &str {
        &self.bos_token
    }

    pub fn eos_token(&self) -> &str {
        &self.eos_token
    }

    /// Renders an arbitrary conversation.
    pub fn render_messages(
        &self,
        messages: &[Message],
        add_generation_prompt: bool,
    ) -> Result<String, ChatError> {
        let tmpl = self
            .env
            .get_template(NAME)
            .map_err(|e| ChatError::Template(format!("{e:#}")))?;
        tmpl.render(context! {
            messages => messages,
            add_generation_prompt => add_generation_prompt,
            bos_token => self.bos_token.as_str(),
            eos_token => self.eos_token.as_str(),
            tools => Value::from(()),
        })
        .map_err(|e| ChatError::Render(format!("{e:#}")))
    }

    /// Renders an optional system message and one user message.
    pub fn render(
        &self,
        system: Option<&str>,
        user: &str,
        add_generation_prompt: bool,
    ) -> Result<String, ChatError> {
        let mut messages = Vec::with_capacity(2);
        if let Some(s) = system {
            messages.push(Message::new("system", s));
        }
        messages.push(Message::new("user", user));
        self.render_messages(&messages, add_generation_prompt)
    }

    /// CoRD's prompt: system + user rendered with the generation prompt, then the assistant prefill
    /// appended as raw text.
    ///
    /// If the rendered prompt already ends with `<think>` (optionally followed by whitespace, as in
    /// QwQ's `<|im_start|>assistant\n<think>\n`), a leading `<think>` is removed from the prefill so
    /// that `<think>` never appears twice; one newline right after it is removed too when the
    /// template already wrote whitespace after its `<think>`.
    pub fn prompt_with_prefill(
        &self,
        system: Option<&str>,
        user: &str,
        prefill: &str,
    ) -> Result<String, ChatError> {
        let mut out = self.render(system, user, true)?;
        let trimmed = out.trim_end();
        let mut rest = prefill;
        let after_think = prefill
            .strip_prefix("<think>")
            .filter(|_| trimmed.ends_with("<think>"));
        if let Some(after) = after_think {
            let template_wrote_space = trimmed.len() < out.len();
            rest = if template_wrote_space {
                after
                    .strip_prefix("\r\n")
                    .or_else(|| after.strip_prefix('\n'))
                    .unwrap_or(after)
            } else {
                after
            };
        }
        out.push_str(rest);
        Ok(out)
    }
}

/// The template source of a parsed `tokenizer_config.json`: `chat_template` as a string, or from
/// the list form the entry named `default` (else the first entry).
pub fn template_source(cfg: &serde_json::Value) -> Result<Option<String>, ChatError> {
    match cfg.get("chat_template") {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(serde_json::Value::String(s)) => Ok(Some(s.clone())),
        Some(serde_json::Value::Array(list)) => {
            let named =
                |e: &serde_json::Value| e.get("name").and_then(|n| n.as_str()) == Some("default");
            let entry = list.iter().find(|e| named(e)).or_else(|| list.first());
            match entry
                .and_then(|e| e.get("template"))
                .and_then(|t| t.as_str())
            {
                Some(t) => Ok(Some(t.to_string())),
                None if list.is_empty() => Ok(None),
                None => Err(ChatError::Config(
                    "chat_template list entry without a template string".into(),
                )),
            }
        }
        Some(other) => Err(ChatError::Config(format!(
            "chat_template has unexpected type: {other}"
        ))),
    }
}

/// A special token of `tokenizer_config.json`: a string or `{"content": ...}`.
fn special_token(cfg: &serde_json::Value, key: &str) -> Option<String> {
    match cfg.get(key)? {
        serde_json::Value::String(s) => Some(s.clone()),
        obj => obj.get("content")?.as_str().map(str::to_string),
    }
}

fn raise_exception(msg: String) -> Result<Value, Error> {
    Err(Error::new(ErrorKind::InvalidOperation, msg))
}

fn strftime_now(fmt: String) -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    strftime(&fmt, secs)
}

/// Replaces `{% generation %}` / `{% endgeneration %}` (whitespace-control markers kept) with an
/// always-true `if` block, so the template keeps exactly the same output and whitespace.
fn strip_generation_tags(src: &str) -> String {
    let mut out = String::with_capacity(src.len());
    let mut rest = src;
    while let Some(pos) = rest.find("{%") {
        out.push_str(&rest[..pos]);
        let tag = &rest[pos..];
        // The close marker is searched after the opening one: in `{%}` the `%}` overlaps it.
        let Some(close) = tag[2..].find("%}").map(|c| c + 2) else {
            out.push_str(tag);
            return out;
        };
        let inner = &tag[2..close];
        let (lead, body) = split_marker(inner, true);
        let (body, trail) = split_marker(body, false);
        let word = body.trim();
        let replacement = match word {
            "generation" => Some("if true"),
            "endgeneration" => Some("endif"),
            _ => None,
        };
        match replacement {
            Some(r) => {
                out.push_str("{%");
                out.push_str(lead);
                out.push(' ');
                out.push_str(r);
                out.push(' ');
                out.push_str(trail);
                out.push_str("%}");
            }
            None => out.push_str(&tag[..close + 2]),
        }
        rest = &tag[close + 2..];
    }
    out.push_str(rest);
    out
}

/// Splits a leading (or trailing) `-` / `+` whitespace-control marker off a tag's inside.
fn split_marker(s: &str, leading: bool) -> (&str, &str) {
    if leading {
        match s.as_bytes().first() {
            Some(b'-' | b'+') => (&s[..1], &s[1..]),
            _ => ("", s),
        }
    } else {
        match s.as_bytes().last() {
            Some(b'-' | b'+') => (&s[..s.len() - 1], &s[s.len() - 1..]),
            _ => (s, ""),
        }
    }
}

/// A small `strftime` over UTC for `strftime_now`: `%Y %y %m %d %e %j %H %M %S %p %b %B %a %A %%`;
/// other specifiers are copied as they are.
pub fn strftime(fmt: &str, unix_secs: u64) -> String {
    const MONTHS: [&str; 12] = [
        "January",
        "February",
        "March",
        "April",
        "May",
        "June",
        "July",
        "August",
        "September",
        "October",
        "November",
        "December",
    ];
    const DAYS: [&str; 7] = [
        "Monday",
        "Tuesday",
        "Wednesday",
        "Thursday",
        "Friday",
        "Saturday",
        "Sunday",
    ];
    let days = (unix_secs / 86_400) as i64;
    let sod = unix_secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    let weekday = (days + 3).rem_euclid(7) as usize; // 1970-01-01 was a Thursday (index 3)
    let yday = days - days_from_civil(y, 1, 1) + 1;
    let (hh, mm, ss) = (sod / 3600, (sod / 60) % 60, sod % 60);
    let mut out = String::new();
    let mut chars = fmt.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('Y') => out.push_str(&y.to_string()),
            Some('y') => out.push_str(&format!("{:02}", y.rem_euclid(100))),
            Some('m') => out.push_str(&format!("{m:02}")),
            Some('d') => out.push_str(&format!("{d:02}")),
            Some('e') => out.push_str(&format!("{d:2}")),
            Some('j') => out.push_str(&format!("{yday:03}")),
            Some('H') => out.push_str(&format!("{hh:02}")),
            Some('M') => out.push_str(&format!("{mm:02}")),
            Some('S') => out.push_str(&format!("{ss:02}")),
            Some('p') => out.push_str(if hh < 12 { "AM" } else { "PM" }),
            Some('b') => out.push_str(&MONTHS[(m - 1) as usize][..3]),
            Some('B') => out.push_str(MONTHS[(m - 1) as usize]),
            Some('a') => out.push_str(&DAYS[weekday][..3]),
            Some('A') => out.push_str(DAYS[weekday]),
            Some('%') => out.push('%'),
            Some(other) => {
                out.push('%');
                out.push(other);
            }
            None => out.push('%'),
        }
    }
    out
}

/// Days since 1970-01-01 to (year, month 1-12, day 1-31), proleptic Gregorian (H. Hinnant).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = y - i64::from(m <= 2);
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = (i64::from(m) + 9) % 12;
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strftime_formats_known_dates() {
        // 2024-07-26 00:00:00 UTC (a Friday) = 1721952000
        assert_eq!(strftime("%d %b %Y", 1_721_952_000), "26 Jul 2024");
        assert_eq!(
            strftime("%A %B %e, %y %j", 1_721_952_000),
            "Friday July 26, 24 208"
        );
        assert_eq!(
            strftime("%Y-%m-%d %H:%M:%S %p %% %Q", 0),
            "1970-01-01 00:00:00 AM % %Q"
        );
        // 2000-02-29 23:59:59 UTC = 951868799 (leap day)
        assert_eq!(
            strftime("%Y-%m-%d %H:%M:%S %a", 951_868_799),
            "2000-02-29 23:59:59 Tue"
        );
        for days in [-1000i64, 0, 59, 365, 11_016, 20_000, 100_000] {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days);
        }
    }

    #[test]
    fn generation_tags_are_neutralised() {
        assert_eq!(
            strip_generation_tags("a{% generation %}b{%- endgeneration -%}c{{ x }}{% if y %}"),
            "a{% if true %}b{%- endif -%}c{{ x }}{% if y %}"
        );
        assert_eq!(strip_generation_tags("{% unterminated"), "{% unterminated");
    }
}
