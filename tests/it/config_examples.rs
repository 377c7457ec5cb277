//! Every example config shipped in the repository parses and validates.

use std::path::{Path, PathBuf};
use turnd::config::{Config, DEFAULT_CONFIG};

/// `*.toml` files directly in `dir` (none if the directory does not exist).
fn toml_files(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && p.extension().is_some_and(|x| x == "toml"))
        .collect();
    files.sort();
    files
}

fn example_configs() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files: Vec<PathBuf> = toml_files(root)
        .into_iter()
        // The crate manifest and toolchain files are TOML too, but not server configs.
        .filter(|p| {
            !matches!(
                p.file_name().and_then(|n| n.to_str()),
                Some(
                    "Cargo.toml"
                        | "rust-toolchain.toml"
                        | "rustfmt.toml"
                        | "clippy.toml"
                        | "deny.toml"
                )
            )
        })
        .collect();
    files.extend(toml_files(&root.join("examples")));
    files
}

#[test]
fn every_example_config_validates() {
    let files = example_configs();
    assert!(
        files.iter().any(|p| p.ends_with("turnserver.toml")),
        "turnserver.toml not found among {files:?}"
    );
    let mut failures = Vec::new();
    for path in &files {
        let text = std::fs::read_to_string(path)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
        if let Err(e) = Config::from_toml_str(&text) {
            failures.push(format!("{}: {e}", path.display()));
        }
    }
    assert!(
        failures.is_empty(),
        "invalid example configs:\n{}",
        failures.join("\n")
    );
}

#[test]
fn embedded_default_config_validates() {
    let config = Config::from_toml_str(DEFAULT_CONFIG).expect("DEFAULT_CONFIG validates");
    assert_eq!(config.server.realm, "turnd.local");
    assert!(config.server.listen.iter().all(|a| a.ip().is_loopback()));
    assert_eq!(config.relay_ips().len(), 2);
}

#[test]
fn unknown_key_fails_naming_it() {
    let err = Config::from_toml_str("[server]\nbogus = 1\n").expect_err("unknown key accepted");
    let shown = err.to_string();
    assert!(shown.starts_with("config error: "), "{shown}");
    assert!(shown.contains("bogus"), "{shown}");
}
