//! `cord export`: records JSONL -> a dataset directory that `datasets.load_dataset("parquet",
//! data_dir=DIR)` and pyarrow read as is: `data/train-00000-of-00001.parquet` (one row per
//! record, Snappy-compressed) and a `README.md` dataset card (YAML front matter + the run's
//! facts).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use arrow_array::{
    ArrayRef, BooleanArray, Float64Array, Int64Array, ListArray, RecordBatch, StringArray,
    StructArray,
};
use arrow_schema::{DataType, Field, Fields, Schema};
use clap::{Args, ValueEnum};
use cord_decode::Record;
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;

/// The parquet file inside the export directory (the Hugging Face Hub's layout).
pub const PARQUET_FILE: &str = "data/train-00000-of-00001.parquet";

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Parquet,
}

#[derive(Args)]
pub struct ExportArgs {
    /// Records written by `cord synth` (or `cord merge`).
    records: PathBuf,
    #[arg(long, value_enum, default_value_t = Format::Parquet)]
    format: Format,
    /// Directory to write (created; must be empty or absent unless --overwrite).
    #[arg(long)]
    out: PathBuf,
    /// Replace the files of an existing export in DIR.
    #[arg(long)]
    overwrite: bool,
    /// Dataset name in the card (default: the directory's name).
    #[arg(long)]
    name: Option<String>,
}

/// Reads records JSONL; a bad line is an error naming it (blank lines are skipped).
pub fn read_records(path: &Path) -> Result<Vec<Record>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let r: Record = serde_json::from_str(line)
            .with_context(|| format!("{}:{}: not a cord record", path.display(), i + 1))?;
        out.push(r);
    }
    Ok(out)
}

fn strings<'a>(it: impl Iterator<Item = &'a str>) -> ArrayRef {
    Arc::new(StringArray::from_iter_values(it))
}

fn message_fields() -> Fields {
    Fields::from(vec![
        Field::new("role", DataType::Utf8, false),
        Field::new("content", DataType::Utf8, false),
    ])
}

/// The Arrow schema of the export.
pub fn schema() -> Schema {
    let messages = Field::new("item", DataType::Struct(message_fields()), false);
    let teacher = Field::new("item", DataType::Utf8, false);
    Schema::new(vec![
        Field::new("id", DataType::Utf8, false),
        Field::new("question", DataType::Utf8, false),
        Field::new("answer", DataType::Utf8, false),
        Field::new("messages", DataType::List(Arc::new(messages)), false),
        Field::new("correct", DataType::Boolean, false),
        Field::new("score", DataType::Float64, false),
        Field::new("predicted", DataType::Utf8, true),
        Field::new("predicted_normalized", DataType::Utf8, true),
        Field::new("teachers", DataType::List(Arc::new(teacher)), false),
        Field::new("answer_teacher", DataType::Utf8, false),
        Field::new("method", DataType::Utf8, false),
        Field::new("pool", DataType::Utf8, false),
        Field::new("attempts", DataType::Int64, false),
        Field::new("tokens_generated", DataType::Int64, false),
    ])
}

/// One row per record.
pub fn to_batch(records: &[Record]) -> Result<RecordBatch> {
    let schema = Arc::new(schema());
    let list_field = |name: &str| match schema.field_with_name(name).map(|f| f.data_type()) {
        Ok(DataType::List(f)) => f.clone(),
        _ => unreachable!("the schema above has the list column {name}"),
    };
    // messages: list<struct<role, content>>
    let msgs: Vec<&cord_decode::io::Message> =
        records.iter().flat_map(|r| r.messages.iter()).collect();
    let msg_struct = StructArray::new(
        message_fields(),
        vec![
            strings(msgs.iter().map(|m| m.role.as_str())),
            strings(msgs.iter().map(|m| m.content.as_str())),
        ],
        None,
    );
    let messages = ListArray::new(
        list_field("messages"),
        arrow_buffer::OffsetBuffer::from_lengths(records.iter().map(|r| r.messages.len())),
        Arc::new(msg_struct),
        None,
    );
    let teachers = ListArray::new(
        list_field("teachers"),
        arrow_buffer::OffsetBuffer::from_lengths(records.iter().map(|r| r.steps.len())),
        strings(
            records
                .iter()
                .flat_map(|r| r.steps.iter().map(|s| s.teacher.as_str())),
        ),
        None,
    );
    let columns: Vec<ArrayRef> = vec![
        strings(records.iter().map(|r| r.id.as_str())),
        strings(records.iter().map(|r| r.question.as_str())),
        strings(records.iter().map(|r| r.answer.as_str())),
        Arc::new(messages),
        Arc::new(BooleanArray::from(
            records.iter().map(|r| r.correct).collect::<Vec<_>>(),
        )),
        Arc::new(Float64Array::from_iter_values(
            records.iter().map(|r| r.score),
        )),
        Arc::new(StringArray::from(
            records
                .iter()
                .map(|r| r.predicted.as_deref())
                .collect::<Vec<_>>(),
        )),
        Arc::new(StringArray::from(
            records
                .iter()
                .map(|r| r.predicted_normalized.as_deref())
                .collect::<Vec<_>>(),
        )),
        Arc::new(teachers),
        strings(records.iter().map(|r| r.answer_teacher.as_str())),
        strings(records.iter().map(|r| r.method.as_str())),
        strings(records.iter().map(|r| r.config.pool.as_str())),
        Arc::new(Int64Array::from_iter_values(
            records.iter().map(|r| r.attempts.len().max(1) as i64),
        )),
        Arc::new(Int64Array::from_iter_values(
            records
                .iter()
                .map(|r| r.stats.tokens_generated.values().sum::<u64>() as i64),
        )),
    ];
    Ok(RecordBatch::try_new(schema, columns)?)
}

/// Writes the parquet file.
pub fn write_parquet(records: &[Record], path: &Path) -> Result<()> {
    let batch = to_batch(records)?;
    let file = File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let props = WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        .build();
    let mut w = ArrowWriter::try_new(file, batch.schema(), Some(props))?;
    w.write(&batch)?;
    w.close()?;
    Ok(())
}

fn size_category(n: usize) -> &'static str {
    match n {
        0..1_000 => "n<1K",
        1_000..10_000 => "1K<n<10K",
        10_000..100_000 => "10K<n<100K",
        100_000..1_000_000 => "100K<n<1M",
        _ => "1M<n<10M",
    }
}

/// Distinct values of `f` over the records, with counts, for the card.
fn tally<'a>(records: &'a [Record], f: impl Fn(&'a Record) -> String) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for r in records {
        *m.entry(f(r)).or_default() += 1;
    }
    m
}

fn listing(m: &BTreeMap<String, usize>) -> String {
    m.iter()
        .map(|(k, v)| format!("`{k}` ({v})"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn pct(a: usize, b: usize) -> String {
    if b == 0 {
        "-".into()
    } else {
        format!("{:.1}%", 100.0 * a as f64 / b as f64)
    }
}

/// The dataset card: YAML front matter and the facts of the run the records came from.
/// `rejected` is the number of records in the run's `.rejected.jsonl`, when there is one.
pub fn card(name: &str, source: &str, records: &[Record], rejected: Option<usize>) -> String {
    let n = records.len();
    let correct = records.iter().filter(|r| r.correct).count();
    let mut s = String::new();
    let _ = write!(
        s,
        "---\npretty_name: {name:?}\nlicense: other\nlanguage:\n- en\ntask_categories:\n- text-generation\n\
         tags:\n- reasoning\n- chain-of-thought\n- synthetic\n- distillation\n- cord\n\
         size_categories:\n- {}\nconfigs:\n- config_name: default\n  data_files:\n  - split: train\n    path: {PARQUET_FILE}\n---\n\n",
        size_category(n)
    );
    let _ = writeln!(s, "# {name}\n");
    let _ = writeln!(
        s,
        "Reasoning traces synthesized by cord (collaborative \
         multi-teacher step-wise decoding), exported from `{source}` with `cord export`. One row \
         per problem; `messages` is the chat-format SFT example (user question, assistant \
         `<think>` reasoning + final answer).\n"
    );
    let _ = writeln!(s, "## Columns\n");
    for (col, what) in [
        ("id", "problem id from the input file"),
        ("question", "the problem"),
        ("answer", "reference (gold) answer"),
        (
            "messages",
            "list of {role, content}: the user question and the assistant response",
        ),
        (
            "correct",
            "the extracted answer verifies against `answer` (cord-verify)",
        ),
        (
            "score",
            "predictive-perplexity score of the chosen trajectory",
        ),
        (
            "predicted",
            "answer extracted from the response (null if none)",
        ),
        (
            "predicted_normalized",
            "its normal form (null in records written before it existed)",
        ),
        (
            "teachers",
            "the teacher that wrote each reasoning step, in order",
        ),
        ("answer_teacher", "the teacher that wrote the final answer"),
        ("method", "search method"),
        (
            "pool",
            "fingerprint of the teacher pool and search settings",
        ),
        (
            "attempts",
            "attempts the problem took (rejection sampling; 1 without it)",
        ),
        (
            "tokens_generated",
            "tokens generated for the problem's record, all teachers",
        ),
    ] {
        let _ = writeln!(s, "- `{col}`: {what}");
    }

    let _ = writeln!(s, "\n## Run\n");
    let _ = writeln!(s, "| fact | value |\n|---|---|");
    let pools = tally(records, |r| r.config.pool.clone());
    let _ = writeln!(s, "| pool fingerprint | {} |", listing(&pools));
    let _ = writeln!(
        s,
        "| method | {} |",
        listing(&tally(records, |r| r.method.as_str().to_string()))
    );
    let _ = writeln!(
        s,
        "| search | {} |",
        listing(&tally(records, |r| {
            let c = &r.config;
            format!(
                "beam {}, think budget {}, answer budget {}, step cap {}, max steps {}, step unit {}, scorer {}",
                c.beam,
                c.think_budget,
                c.answer_budget,
                c.step_cap,
                c.max_steps,
                c.step_unit,
                c.scorer
            )
        }))
    );
    let _ = writeln!(
        s,
        "| seeds | {} |",
        listing(&tally(records, |r| r.config.seed.to_string()))
    );
    let _ = writeln!(s, "| records | {n} |");
    let _ = writeln!(s, "| verified correct | {correct} ({}) |", pct(correct, n));
    if let Some(rj) = rejected {
        let _ = writeln!(
            s,
            "| rejected (answer wrong after every attempt; not in this dataset) | {rj} |"
        );
    }
    let attempts: usize = records.iter().map(|r| r.attempts.len().max(1)).sum();
    if records.iter().any(|r| !r.attempts.is_empty()) {
        let _ = writeln!(
            s,
            "| attempts (rejection sampling) | {attempts} for {n} problems |"
        );
    }
    let steps: usize = records.iter().map(|r| r.steps.len()).sum();
    let _ = writeln!(
        s,
        "| steps | {steps} ({:.1} per problem) |",
        steps as f64 / n.max(1) as f64
    );
    let seconds: f64 = records.iter().filter_map(|r| r.stats.seconds).sum();
    if records.iter().any(|r| r.stats.seconds.is_some()) {
        let _ = writeln!(s, "| wall time (sum over problems) | {seconds:.1} s |");
    } else {
        let _ = writeln!(s, "| wall time | not recorded (`--no-timing`) |");
    }
    let mut tokens: BTreeMap<String, u64> = BTreeMap::new();
    for r in records {
        for (t, k) in &r.stats.tokens_generated {
            *tokens.entry(t.clone()).or_default() += k;
        }
    }
    let total_tokens: u64 = tokens.values().sum();
    let scored: u64 = records.iter().map(|r| r.stats.tokens_scored).sum();
    let _ = writeln!(
        s,
        "| tokens generated | {total_tokens} ({}) |",
        tokens
            .iter()
            .map(|(k, v)| format!("`{k}` {v}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let _ = writeln!(s, "| answer tokens scored | {scored} |");

    let _ = writeln!(s, "\n## Teacher shares\n");
    let _ = writeln!(
        s,
        "| teacher | steps | share of steps | final answers |\n|---|---|---|---|"
    );
    let step_by = {
        let mut m: BTreeMap<String, usize> = BTreeMap::new();
        for r in records {
            for st in &r.steps {
                *m.entry(st.teacher.clone()).or_default() += 1;
            }
        }
        m
    };
    let answer_by = tally(records, |r| r.answer_teacher.clone());
    let mut names: Vec<&String> = step_by.keys().chain(answer_by.keys()).collect();
    names.sort();
    names.dedup();
    for t in names {
        let k = step_by.get(t).copied().unwrap_or(0);
        let _ = writeln!(
            s,
            "| {t} | {k} | {} | {} |",
            pct(k, steps),
            answer_by.get(t).copied().unwrap_or(0)
        );
    }

    // Candidates the search did not keep, by reason (records written with --save-tree).
    let mut reasons: BTreeMap<String, usize> = BTreeMap::new();
    let mut with_tree = 0;
    for r in records {
        if let Some(tree) = &r.tree {
            with_tree += 1;
            for e in tree.iter().filter(|e| !e.kept) {
                let why = e.note.clone().unwrap_or_else(|| "outranked".to_string());
                *reasons.entry(why).or_default() += 1;
            }
        }
    }
    if with_tree > 0 {
        let _ = writeln!(s, "\n## Rejected candidate steps by reason\n");
        let _ = writeln!(
            s,
            "From the search trees of {with_tree} record(s) (`--save-tree`).\n"
        );
        let _ = writeln!(s, "| reason | candidates |\n|---|---|");
        for (k, v) in &reasons {
            let _ = writeln!(s, "| {k} | {v} |");
        }
    }
    let _ = writeln!(
        s,
        "\n## Licence\n\nThe licence is that of the input problems and of the teacher models' \
         outputs; set `license` in the front matter accordingly before publishing."
    );
    s
}

pub fn export(a: ExportArgs) -> Result<ExitCode> {
    let Format::Parquet = a.format;
    let records = read_records(&a.records)?;
    if records.is_empty() {
        bail!("{}: no records to export", a.records.display());
    }
    if a.out.exists() {
        if !a.out.is_dir() {
            bail!("{} exists and is not a directory", a.out.display());
        }
        let nonempty = std::fs::read_dir(&a.out)
            .with_context(|| format!("reading {}", a.out.display()))?
            .next()
            .is_some();
        if nonempty && !a.overwrite {
            bail!(
                "{} is not empty (give --overwrite to replace an export there)",
                a.out.display()
            );
        }
    }
    let parquet_path = a.out.join(PARQUET_FILE);
    if let Some(dir) = parquet_path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    write_parquet(&records, &parquet_path)?;
    let rejected_file = crate::synth::rejected_path(&a.records);
    let rejected = if rejected_file.exists() {
        Some(read_records(&rejected_file)?.len())
    } else {
        None
    };
    let name = a.name.clone().unwrap_or_else(|| {
        a.out
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "cord-traces".into())
    });
    let source = a
        .records
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let card_path = a.out.join("README.md");
    std::fs::write(&card_path, card(&name, &source, &records, rejected))
        .with_context(|| format!("writing {}", card_path.display()))?;
    let correct = records.iter().filter(|r| r.correct).count();
    println!(
        "{} records ({correct} verified correct) -> {} and {}",
        records.len(),
        parquet_path.display(),
        card_path.display()
    );
    Ok(ExitCode::SUCCESS)
}
