//! The fuzz corpus on stable: every committed file under `fuzz/corpus/` goes through every
//! fuzz target body (`turnd::testing::fuzz`), so CI checks what the fuzzers found on each
//! change.
//! The seeds (`turnd::testing::fuzz::seeds`) must be committed: run with `TURND_WRITE_CORPUS=1`
//! to write them after changing the generator.

use std::fs;
use std::path::PathBuf;

use turnd::testing::fuzz::{TARGETS, run_server, run_stream_server, seeds};

fn corpus_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz")
        .join("corpus")
}

#[test]
fn seeds_are_committed() {
    let write = std::env::var_os("TURND_WRITE_CORPUS").is_some();
    let mut missing = Vec::new();
    for (target, name, bytes) in seeds() {
        let dir = corpus_root().join(target);
        let path = dir.join(format!("seed-{name}"));
        if write {
            fs::create_dir_all(&dir).unwrap();
            fs::write(&path, &bytes).unwrap();
        } else if !path.exists() {
            // Only presence: a seed derived from a file others edit (the example config)
            // may drift, and an older committed version is still a good seed.
            missing.push(path.display().to_string());
        }
    }
    assert!(
        missing.is_empty(),
        "seed files missing (regenerate with TURND_WRITE_CORPUS=1): {missing:?}"
    );
}

#[test]
fn current_seeds_through_every_target() {
    for (target, name, bytes) in seeds() {
        for (body_name, body) in TARGETS {
            let r = std::panic::catch_unwind(|| body(&bytes));
            assert!(
                r.is_ok(),
                "target {body_name} panicked on seed {target}/{name}"
            );
        }
    }
}

#[test]
fn every_corpus_file_through_every_target() {
    let mut files = 0;
    for (target, _) in TARGETS {
        let dir = corpus_root().join(target);
        let entries = fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        let mut here = 0;
        for entry in entries {
            let path = entry.unwrap().path();
            let data = fs::read(&path).unwrap();
            for (name, body) in TARGETS {
                let r = std::panic::catch_unwind(|| body(&data));
                assert!(r.is_ok(), "target {name} panicked on {}", path.display());
            }
            here += 1;
        }
        assert!(here > 0, "no corpus for {target}");
        files += here;
    }
    println!(
        "replayed {files} corpus files through {} targets",
        TARGETS.len()
    );
}

#[test]
fn server_seeds_reach_relaying() {
    for (target, name, bytes) in seeds() {
        if target != "server" || !name.starts_with("session") {
            continue;
        }
        let st = run_server(&bytes);
        assert!(st.allocations_created >= 1, "{name}: {st:?}");
        assert!(st.relayed_to_peer >= 1, "{name}: {st:?}");
        assert!(st.relayed_from_peer >= 1, "{name}: {st:?}");
        assert!(st.allocations_deleted >= 1, "{name}: {st:?}");
    }
}

#[test]
fn seeds_cover_every_method() {
    let names: Vec<String> = seeds()
        .into_iter()
        .filter(|(t, _, _)| *t == "stun_message")
        .map(|(_, n, _)| n)
        .collect();
    for m in [
        "binding",
        "allocate",
        "refresh",
        "send",
        "data",
        "create_permission",
        "channel_bind",
        "connect",
        "connection_bind",
        "connection_attempt",
    ] {
        for c in ["request", "indication", "success", "error"] {
            assert!(names.contains(&format!("{m}-{c}")), "{m}-{c}");
        }
    }
}

#[test]
fn stream_seeds_reach_rfc6062_and_relaying() {
    let seeds = seeds();
    let case = |name: &str| {
        seeds
            .iter()
            .find(|(t, n, _)| *t == "stream_server" && n == name)
            .map(|(_, _, b)| b.clone())
            .unwrap_or_else(|| panic!("seed {name}"))
    };
    let (st, reach) = run_stream_server(&case("rfc6062"));
    assert!(st.allocations_created >= 1, "{st:?}");
    assert!(reach.connects >= 2, "{reach:?}");
    assert!(reach.incoming >= 1, "{reach:?}");
    assert_eq!(reach.bound, 2, "{reach:?}");
    let (st, _) = run_stream_server(&case("session-tls"));
    assert!(st.allocations_created >= 1, "{st:?}");
    assert!(st.relayed_to_peer >= 1, "{st:?}");
    assert!(st.relayed_from_peer >= 1, "{st:?}");
}
