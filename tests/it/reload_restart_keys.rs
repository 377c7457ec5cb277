//! A reload that changes keys needing a rebind (`relay.min-port`, `relay.max-port`) applies
//! the rest, names those keys in a warning, and keeps serving on the sockets bound at start.

use crate::lifecycle_util;

use lifecycle_util::{NotifiedServer, Scratch, try_allocate};

fn config(min_port: u16, user: &str) -> String {
    format!(
        "[auth]\nusers = [{{ name = \"{user}\", password = \"pw\" }}]\n\
         [relay]\nmin-port = {min_port}\nmax-port = 65000\n[log]\nlevel = \"info\"\n"
    )
}

#[test]
fn rebind_keys_are_reported_and_the_rest_applies() {
    let scratch = Scratch::new("reload-restart-keys");
    let path = scratch.write("turnd.toml", &config(50000, "alice"));
    let mut server = NotifiedServer::start_capturing_log(&scratch, &path);
    assert_eq!(try_allocate(server.addr, "alice", "pw").1, None);

    scratch.write("turnd.toml", &config(51000, "bob"));
    let status = server.reload();
    assert!(status.contains("STATUS=config reloaded"), "{status}");
    let lines = server
        .log_until("need a restart")
        .expect("a restart warning");
    let warning = lines.last().unwrap();
    assert!(warning.contains("WARN"), "{warning}");
    assert!(warning.contains("relay.min-port"), "{warning}");
    assert!(!warning.contains("relay.max-port"), "unchanged: {warning}");

    // The user change applied, on the sockets bound at start.
    assert_eq!(try_allocate(server.addr, "bob", "pw").1, None);
    assert_eq!(try_allocate(server.addr, "alice", "pw").1, Some(401));
}
