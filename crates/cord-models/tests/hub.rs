//! Hub ids resolve through a fake HF cache with downloads off. One test function, because it
//! sets the process-wide `HF_HOME`.

mod common;

use common::*;
use cord_models::{HubSpec, LoadOptions, ModelError, load};

#[test]
fn hub_cache_resolution_offline() {
    // Spec parsing.
    let s = HubSpec::parse("org/name").unwrap();
    assert_eq!(
        (s.repo.as_str(), s.revision.as_str(), s.file),
        ("org/name", "main", None)
    );
    let s = HubSpec::parse("org/name@v1:model.Q8_0.gguf").unwrap();
    assert_eq!(s.revision, "v1");
    assert_eq!(s.file.as_deref(), Some("model.Q8_0.gguf"));
    let s = HubSpec::parse("org/name:model.gguf@abc").unwrap();
    assert_eq!(
        (s.revision.as_str(), s.file.as_deref()),
        ("abc", Some("model.gguf"))
    );
    assert!(HubSpec::parse("no-slash").is_none());
    assert!(HubSpec::parse("a/b/c").is_none());
    assert!(HubSpec::parse("../x").is_none());

    let home = tempfile::tempdir().unwrap();
    // SAFETY: this is the only test in this binary; nothing else reads the environment.
    unsafe {
        std::env::set_var("HF_HOME", home.path());
    }
    let offline = LoadOptions {
        allow_download: false,
        ..LoadOptions::default()
    };

    // models--org--tiny/{refs/main, snapshots/<hash>/...}
    let repo = home.path().join("hub").join("models--org--tiny");
    let hash = "0123456789abcdef0123456789abcdef01234567";
    let snap = repo.join("snapshots").join(hash);
    std::fs::create_dir_all(&snap).unwrap();
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    let config = qwen2_config();
    write_model_dir(&snap, &config, &test_weights(&config, 5));
    std::fs::write(
        snap.join("generation_config.json"),
        serde_json::json!({"eos_token_id": 7}).to_string(),
    )
    .unwrap();

    // Without refs/main the snapshot is not found; the error says where we looked.
    let e = load("org/tiny", &offline).unwrap_err();
    let s = e.to_string();
    assert!(matches!(e, ModelError::ModelNotFound { .. }), "{s}");
    assert!(
        s.contains("models--org--tiny") && s.contains("downloads disabled"),
        "{s}"
    );

    std::fs::write(repo.join("refs").join("main"), hash).unwrap();
    let lm = load("org/tiny", &offline).unwrap();
    assert_eq!(lm.name, "org/tiny");
    assert_eq!(lm.eos_token_ids, vec![7, 2]);
    assert_eq!(lm.model.config().arch, cord_models::Arch::Qwen2);

    // A revision given as the commit hash.
    let lm = load(&format!("org/tiny@{hash}"), &offline).unwrap();
    assert_eq!(lm.name, "org/tiny");

    // A missing model: one error naming the cache folder it looked in.
    let e = load("org/absent", &offline).unwrap_err();
    let s = e.to_string();
    assert!(matches!(e, ModelError::ModelNotFound { .. }), "{s}");
    assert!(s.contains("models--org--absent"), "{s}");
    assert!(s.contains(&home.path().display().to_string()), "{s}");

    // A missing file of a present repo.
    let e = load("org/tiny:model.gguf", &offline).unwrap_err();
    assert!(e.to_string().contains("model.gguf"), "{e}");

    unsafe {
        std::env::remove_var("HF_HOME");
    }
}
