//! SIGHUP applies a new `log.level` (RUST_LOG unset): at "warn" the startup info lines are
//! not written; after a reload to "info" the reload's own info line is.

use crate::lifecycle_util;

use lifecycle_util::{NotifiedServer, Scratch};

const USERS: &str = "[auth]\nusers = [{ name = \"alice\", password = \"wonderland\" }]\n";

#[test]
fn reload_changes_the_log_level() {
    let scratch = Scratch::new("reload-log-level");
    let path = scratch.write("turnd.toml", &format!("{USERS}[log]\nlevel = \"warn\"\n"));
    let mut server = NotifiedServer::start_capturing_log(&scratch, &path);

    scratch.write("turnd.toml", &format!("{USERS}[log]\nlevel = \"info\"\n"));
    let status = server.reload();
    assert!(status.contains("STATUS=config reloaded"), "{status}");
    let lines = server
        .log_until("config reloaded")
        .expect("the reload is logged at info once info is on");
    // Everything logged before it was at warn: the info line about listening is not there.
    assert!(
        !lines.iter().any(|l| l.contains("listening")),
        "info lines written at level warn: {lines:#?}"
    );
}
