//! The credential recipes of docs/integrations.md, run: a script per language in
//! `tests/recipes/` (shell with openssl, Node, Python, Go, each with its standard library
//! only) mints a REST credential for turnd's secret, and the credential allocates on turnd
//! (the webrtc-rs client). The page shows each script whole; the test checks that it still
//! does, so the page and what runs cannot drift apart.
//!
//! Needs `openssl`, `node`, `/usr/bin/python3` and `go` (`bash .ci/setup-integrations.sh`
//! installs Debian's golang-go and openssl; `.ci/setup-browser.sh` installs node).

use crate::common::{TestServer, turn_client};

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

const SECRET: &str = "recipe-secret-Kestrel-2604";
const TTL: u64 = 3600;

fn recipes() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/recipes")
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Runs a recipe and returns its (username, credential), checking the expiry and the user.
fn mint(program: &str, args: &[&str], user: &str) -> (String, String) {
    let before = unix_now();
    let go_cache = std::env::temp_dir().join("turnd-recipes-go-cache");
    let out = Command::new(program)
        .args(args)
        .args([SECRET, user, &TTL.to_string()])
        .current_dir(recipes())
        .env("GOCACHE", &go_cache)
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run {program}: {e} (run `bash .ci/setup-integrations.sh`)")
        });
    let after = unix_now();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{program} {args:?}: {}\n{stdout}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value =
        serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{e}: {stdout}"));
    let username = v["username"].as_str().expect("username").to_string();
    let credential = v["credential"].as_str().expect("credential").to_string();
    let (expiry, u) = username.split_once(':').expect("<expiry>:<user>");
    assert_eq!(u, user, "{program}");
    let expiry: u64 = expiry.parse().expect("a unix time");
    assert!(
        (before + TTL..=after + TTL + 1).contains(&expiry),
        "{program}: expiry {expiry} is not now + {TTL}"
    );
    (username, credential)
}

async fn allocates(server: &TestServer, user: &str, pass: &str) {
    use webrtc_util::Conn;
    let client = turn_client(server, user, pass).await;
    let relay = client
        .allocate()
        .await
        .unwrap_or_else(|e| panic!("allocate with {user}: {e}"));
    assert_eq!(relay.local_addr().unwrap().ip().to_string(), "127.0.0.1");
    relay.close().await.unwrap();
    client.close().await.unwrap();
}

#[tokio::test]
async fn every_recipe_mints_a_credential_that_allocates() {
    let server = TestServer::start("127.0.0.1", &["--auth-secret", SECRET]);
    let cases: [(&str, &[&str], &str); 4] = [
        ("sh", &["mint.sh"], "shell-user"),
        ("node", &["mint.js"], "node-user"),
        ("/usr/bin/python3", &["mint.py"], "python-user"),
        ("go", &["run", "mint.go"], "go-user"),
    ];
    for (program, args, user) in cases {
        let (username, credential) = mint(program, args, user);
        // The same bytes turnd's own minting gives for that expiry.
        let expiry: u64 = username.split(':').next().unwrap().parse().unwrap();
        let (_, expected) = turnd::auth::rest_credential(SECRET, user, expiry, ':');
        assert_eq!(credential, expected, "{program}");
        allocates(&server, &username, &credential).await;
    }
    // A credential minted with another secret does not allocate.
    let other = Command::new("sh")
        .args(["mint.sh", "not-the-secret", "eve", "600"])
        .current_dir(recipes())
        .output()
        .expect("run mint.sh");
    let v: serde_json::Value = serde_json::from_slice(&other.stdout).expect("JSON");
    let client = turn_client(
        &server,
        v["username"].as_str().unwrap(),
        v["credential"].as_str().unwrap(),
    )
    .await;
    assert!(
        client.allocate().await.is_err(),
        "a wrong secret is refused"
    );
    client.close().await.unwrap();
}

#[test]
fn the_page_shows_the_scripts_that_run() {
    let page =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/integrations.md"))
            .expect("docs/integrations.md");
    for script in ["mint.sh", "mint.js", "mint.py", "mint.go"] {
        let text = std::fs::read_to_string(recipes().join(script)).expect(script);
        assert!(
            page.contains(text.trim_end()),
            "docs/integrations.md does not show tests/recipes/{script} as it is"
        );
    }
}
