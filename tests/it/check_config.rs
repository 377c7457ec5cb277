//! `turnd check-config PATH` validates a config as the server would: a valid file exits 0
//! and prints every effective setting (defaults filled in) with passwords, keys and REST
//! secrets masked; an invalid one exits non-zero naming the key.

use crate::common;

use std::time::Duration;

use common::run_turnd;
use common::stream::{TempDir, TestCert};

const LIMIT: Duration = Duration::from_secs(20);

fn write(name: &str, text: &str) -> std::path::PathBuf {
    let path =
        std::env::temp_dir().join(format!("turnd-check-config-{}-{name}", std::process::id()));
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn valid_config_prints_settings_with_secrets_masked() {
    let path = write(
        "ok.toml",
        "[server]\nlisten = [\"127.0.0.1:3478\"]\nrealm = \"example.org\"\n\
         [auth]\nusers = [{ name = \"alice\", password = \"hunter2-pw\" }, \
         { name = \"bob\", key = \"0x00112233445566778899aabbccddeeff\" }]\n\
         secrets = [\"rest-secret-1\"]\n",
    );
    let (code, stdout, stderr) = run_turnd(&["check-config", path.to_str().unwrap()], LIMIT);
    let _ = std::fs::remove_file(&path);
    assert_eq!(code, Some(0), "stderr: {stderr}");
    for secret in [
        "hunter2-pw",
        "00112233445566778899aabbccddeeff",
        "rest-secret-1",
    ] {
        assert!(
            !stdout.contains(secret) && !stderr.contains(secret),
            "{secret} shown:\n{stdout}"
        );
    }
    // The output is TOML of the effective config: it parses and shows what is in force.
    let v: toml::Table = toml::from_str(&stdout).expect("TOML");
    assert_eq!(v["server"]["realm"].as_str(), Some("example.org"));
    assert_eq!(
        v["allocation"]["max-lifetime"].as_integer(),
        Some(3600),
        "default shown"
    );
    assert_eq!(
        v["server"]["drain-timeout"].as_integer(),
        Some(300),
        "default shown"
    );
    assert_eq!(v["auth"]["secrets"][0].as_str(), Some("********"));
    assert_eq!(v["auth"]["users"][0]["name"].as_str(), Some("alice"));
    assert_eq!(v["auth"]["users"][0]["password"].as_str(), Some("********"));
    assert_eq!(v["auth"]["users"][1]["key"].as_str(), Some("********"));
    assert!(stderr.contains("config OK"), "{stderr}");
}

#[test]
fn invalid_config_fails_naming_the_key() {
    let path = write("bad.toml", "[relay]\nmin-port = 60000\nmax-port = 50000\n");
    let (code, stdout, stderr) = run_turnd(&["check-config", path.to_str().unwrap()], LIMIT);
    let _ = std::fs::remove_file(&path);
    assert!(matches!(code, Some(c) if c != 0), "code {code:?}");
    assert!(stderr.contains("relay.min-port"), "{stderr}");
    assert!(stdout.is_empty(), "{stdout}");

    let (code, _, stderr) = run_turnd(&["check-config", "/nonexistent/turnd.toml"], LIMIT);
    assert!(matches!(code, Some(c) if c != 0));
    assert!(stderr.contains("cannot read"), "{stderr}");
}

#[test]
fn tls_file_paths_are_shown_while_secrets_stay_masked() {
    let dir = TempDir::new("check-config-tls");
    let cert = TestCert::new(&dir);
    let path = dir.write(
        "tls.toml",
        &format!(
            "[server]\nlisten = [\"127.0.0.1:3478\"]\n\
             [tls]\nlisten = [\"127.0.0.1:5349\"]\ncert = {:?}\nkey = {:?}\n\
             [auth]\nusers = [{{ name = \"bob\", key = \"0x00112233445566778899aabbccddeeff\" }}]\n\
             [admin]\nenabled = true\ntoken = \"admin-token-0123456789\"\n",
            cert.cert, cert.key
        ),
    );
    let (code, stdout, stderr) = run_turnd(&["check-config", path.to_str().unwrap()], LIMIT);
    assert_eq!(code, Some(0), "stderr: {stderr}");
    let shown: toml::Table = stdout.parse().expect("the settings are TOML");
    let tls = shown["tls"].as_table().unwrap();
    assert_eq!(tls["cert"].as_str(), cert.cert.to_str());
    assert_eq!(tls["key"].as_str(), cert.key.to_str());
    let users = shown["auth"]["users"].as_array().unwrap();
    assert_eq!(users[0]["key"].as_str(), Some("********"));
    assert_eq!(shown["admin"]["token"].as_str(), Some("********"));
    assert!(
        !stdout.contains("00112233445566778899aabbccddeeff"),
        "{stdout}"
    );
    assert!(!stdout.contains("admin-token-0123456789"), "{stdout}");
}

/// A TLS certificate or key the server would refuse at start fails the check too (exit 2,
/// naming the key and the file, and no "config OK"): a missing file, a file with no PEM in
/// it, a PEM block that is not a certificate, and a key of another certificate.
#[test]
fn tls_certificate_and_key_are_loaded_as_the_server_loads_them() {
    let dir = TempDir::new("check-config-tls-files");
    let cert = TestCert::new(&dir);
    let other_dir = TempDir::new("check-config-tls-other");
    let other = TestCert::new(&other_dir);
    let garbage = dir.write("garbage.pem", "this is not PEM\n");
    let not_a_cert = dir.write(
        "not-a-cert.pem",
        "-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydGlmaWNhdGU=\n-----END CERTIFICATE-----\n",
    );
    let missing = dir.0.join("missing.pem");
    let check = |c: &std::path::Path, k: &std::path::Path| {
        let path = dir.write(
            "turnd.toml",
            &format!(
                "[server]\nlisten = [\"127.0.0.1:3478\"]\n\
                 [tls]\nlisten = [\"127.0.0.1:5349\"]\ncert = {c:?}\nkey = {k:?}\n"
            ),
        );
        run_turnd(&["check-config", path.to_str().unwrap()], LIMIT)
    };

    let (code, _, stderr) = check(&cert.cert, &cert.key);
    assert_eq!(code, Some(0), "a good pair passes: {stderr}");
    assert!(stderr.contains("config OK"), "{stderr}");

    let name = |p: &std::path::Path| p.file_name().unwrap().to_str().unwrap().to_string();
    for (c, k, key, file) in [
        (&missing, &cert.key, "tls.cert", name(&missing)),
        (&garbage, &cert.key, "tls.cert", name(&garbage)),
        (&not_a_cert, &cert.key, "tls.cert", name(&not_a_cert)),
        (&cert.cert, &missing, "tls.key", name(&missing)),
        (&cert.cert, &garbage, "tls.key", name(&garbage)),
        (&cert.cert, &other.key, "tls.key", name(&other.key)),
    ] {
        let (code, stdout, stderr) = check(c, k);
        assert_eq!(code, Some(2), "cert {c:?} key {k:?}: {stderr}");
        assert!(
            stderr.contains(&format!("config error: {key}: ")) && stderr.contains(&file),
            "cert {c:?} key {k:?}: the error names {key} and {file}: {stderr}"
        );
        assert!(!stderr.contains("config OK"), "{stderr}");
        assert!(stdout.is_empty(), "{stdout}");
    }
}
