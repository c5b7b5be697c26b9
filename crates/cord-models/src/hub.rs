//! Resolution of Hugging Face hub ids through the local cache (and downloads when allowed).

use std::path::{Path, PathBuf};

use hf_hub::{Cache, Repo, RepoType};

use crate::error::{ModelError, Result};

/// `org/name[@revision][:file.gguf]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubSpec {
    pub repo: String,
    pub revision: String,
    /// A single file of the repo (a `.gguf`); None for a safetensors checkpoint.
    pub file: Option<String>,
}

impl HubSpec {
    /// Parses `org/name`, `org/name@rev`, `org/name:file.gguf`, `org/name@rev:file.gguf`
    /// (also `org/name:file.gguf@rev`). None when `spec` does not look like a hub id.
    pub fn parse(spec: &str) -> Option<HubSpec> {
        let (repo_rev, file) = match spec.split_once(':') {
            Some((r, f)) => (r, Some(f)),
            None => (spec, None),
        };
        let (repo, mut revision) = match repo_rev.split_once('@') {
            Some((r, rev)) => (r, Some(rev.to_string())),
            None => (repo_rev, None),
        };
        let file = match file {
            Some(f) => match f.split_once('@') {
                Some((f, rev)) if revision.is_none() => {
                    revision = Some(rev.to_string());
                    Some(f.to_string())
                }
                _ => Some(f.to_string()),
            },
            None => None,
        };
        let (org, name) = repo.split_once('/')?;
        let ok = |s: &str| {
            !s.is_empty()
                && s != "."
                && s != ".."
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        };
        if !ok(org) || !ok(name) || file.as_deref().is_some_and(str::is_empty) {
            return None;
        }
        if revision.as_deref().is_some_and(str::is_empty) {
            return None;
        }
        Some(HubSpec {
            repo: repo.to_string(),
            revision: revision.unwrap_or_else(|| "main".into()),
            file,
        })
    }
}

/// A model resolved to local files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolved {
    /// A directory with config.json, tokenizer files and safetensors.
    Dir(PathBuf),
    /// A GGUF file (a tokenizer.json may lie beside it).
    Gguf(PathBuf),
}

struct Resolver {
    spec: HubSpec,
    cache: Cache,
    api: Option<hf_hub::api::sync::ApiRepo>,
    api_error: Option<String>,
    allow_download: bool,
}

impl Resolver {
    fn repo(&self) -> Repo {
        Repo::with_revision(
            self.spec.repo.clone(),
            RepoType::Model,
            self.spec.revision.clone(),
        )
    }

    fn cache_dir(&self) -> PathBuf {
        self.cache.path().join(self.repo().folder_name())
    }

    fn cached(&self, file: &str) -> Option<PathBuf> {
        if let Some(p) = self.cache.repo(self.repo()).get(file) {
            return Some(p);
        }
        // A revision given as a commit hash: look at its snapshot directly.
        let p = self
            .cache_dir()
            .join("snapshots")
            .join(&self.spec.revision)
            .join(file);
        p.exists().then_some(p)
    }

    /// The file from the cache, else downloaded when allowed.
    fn get(&mut self, file: &str) -> std::result::Result<PathBuf, String> {
        if let Some(p) = self.cached(file) {
            return Ok(p);
        }
        if !self.allow_download {
            return Err("not in cache (downloads disabled)".into());
        }
        if self.api.is_none() && self.api_error.is_none() {
            match hf_hub::api::sync::ApiBuilder::from_env()
                .with_progress(false)
                .build()
            {
                Ok(api) => self.api = Some(api.repo(self.repo())),
                Err(e) => self.api_error = Some(e.to_string()),
            }
        }
        match (&self.api, &self.api_error) {
            (Some(api), _) => api.get(file).map_err(|e| format!("download failed: {e}")),
            (None, Some(e)) => Err(format!("hub client: {e}")),
            (None, None) => Err("no hub client".into()),
        }
    }

    fn not_found(&self, spec: &str, file: &str, why: String) -> ModelError {
        let mut looked = vec![format!(
            "HF cache {} (revision {}): `{file}` {why}",
            self.cache_dir().display(),
            self.spec.revision
        )];
        if !self.allow_download {
            looked.push("no download: downloads disabled".into());
        }
        ModelError::ModelNotFound {
            spec: spec.to_string(),
            looked,
        }
    }
}

/// Resolves a hub id: the standard cache (`HF_HOME`, read by hf-hub) first, then a download
/// unless `allow_download` is false (no network client is built then; the `cord` binary turns
/// downloads off when `HF_HUB_OFFLINE` is set).
pub fn resolve(spec_str: &str, spec: &HubSpec, allow_download: bool) -> Result<Resolved> {
    let mut r = Resolver {
        spec: spec.clone(),
        cache: Cache::from_env(),
        api: None,
        api_error: None,
        allow_download,
    };
    if let Some(file) = &spec.file {
        let path = r
            .get(file)
            .map_err(|why| r.not_found(spec_str, file, why))?;
        // Best effort: a tokenizer.json from the same repo.
        let _ = r.get("tokenizer.json");
        return Ok(Resolved::Gguf(path));
    }
    let config = r
        .get("config.json")
        .map_err(|why| r.not_found(spec_str, "config.json", why))?;
    let dir = config
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    r.get("tokenizer.json")
        .map_err(|why| r.not_found(spec_str, "tokenizer.json", why))?;
    for optional in [
        "tokenizer_config.json",
        "generation_config.json",
        "chat_template.jinja",
    ] {
        let _ = r.get(optional);
    }
    match r.get("model.safetensors.index.json") {
        Ok(index) => {
            for shard in crate::loader::index_shards(&index)? {
                r.get(&shard)
                    .map_err(|why| r.not_found(spec_str, &shard, why))?;
            }
        }
        Err(_) => {
            r.get("model.safetensors")
                .map_err(|why| r.not_found(spec_str, "model.safetensors", why))?;
        }
    }
    Ok(Resolved::Dir(dir))
}
