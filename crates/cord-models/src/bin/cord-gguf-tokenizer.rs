//! `cord-gguf-tokenizer IN.gguf OUT.json`: write a `tokenizer.json` rebuilt from the
//! `tokenizer.ggml.*` metadata of a GGUF file (see `cord_models::gguf_tokenizer`).
//!
//! Used by `scripts/fetch-models.sh` for SmolLM2-135M, whose package ships no tokenizer.json.

use std::path::PathBuf;
use std::process::ExitCode;

use candle_core::quantized::gguf_file::Content;
use cord_models::gguf_tokenizer::tokenizer_from_gguf;

const USAGE: &str = "usage: cord-gguf-tokenizer IN.gguf OUT.json";

fn run(input: PathBuf, output: PathBuf) -> Result<(), String> {
    let mut file =
        std::fs::File::open(&input).map_err(|e| format!("cannot open {}: {e}", input.display()))?;
    let content = Content::read(&mut file)
        .map_err(|e| format!("cannot read GGUF {}: {e}", input.display()))?;
    let tokenizer =
        tokenizer_from_gguf(&content).map_err(|e| format!("{}: {e}", input.display()))?;
    // Write next to the destination, then rename, so a failed run leaves no partial file.
    let mut tmp = output.clone().into_os_string();
    tmp.push(".partial");
    let tmp = PathBuf::from(tmp);
    tokenizer
        .save(&tmp, true)
        .map_err(|e| format!("cannot write {}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, &output).map_err(|e| {
        format!(
            "cannot rename {} to {}: {e}",
            tmp.display(),
            output.display()
        )
    })?;
    Ok(())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "-h" || a == "--help") {
        println!("{USAGE}");
        return ExitCode::SUCCESS;
    }
    let [input, output] = <[String; 2]>::try_from(args).unwrap_or_else(|_| {
        eprintln!("{USAGE}");
        std::process::exit(2)
    });
    match run(PathBuf::from(input), PathBuf::from(output)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cord-gguf-tokenizer: {e}");
            ExitCode::FAILURE
        }
    }
}
