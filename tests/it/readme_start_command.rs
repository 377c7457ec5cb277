//! README's start command is `cargo run --release`. At the root of the workspace it runs the
//! root package, turnd (the tools are the `tools/` member), and `default-run` keeps it the
//! server should the package gain another binary.

#[test]
fn cargo_run_starts_the_server() {
    let manifest = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml"))
        .expect("Cargo.toml");
    let value: toml::Table = manifest.parse().expect("Cargo.toml parses");
    let package = value["package"].as_table().expect("[package]");
    assert_eq!(
        package.get("default-run").and_then(|v| v.as_str()),
        Some("turnd"),
        "`cargo run --release` must start the server"
    );
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).expect("README");
    assert!(readme.contains("cargo run --release"));
}
