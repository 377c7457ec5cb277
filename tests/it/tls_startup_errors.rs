//! TLS settings that cannot work stop the server at start, naming the key: `--tls-listen`
//! without a certificate, a certificate file that does not exist, a file that holds no
//! certificate, and a key that does not match the certificate.

use crate::common;

use std::time::Duration;

use common::stream::{TempDir, TestCert, free_tcp_port};
use common::{free_udp_port, run_turnd};

const LIMIT: Duration = Duration::from_secs(20);

fn start(extra: &[&str]) -> (Option<i32>, String) {
    let listen = format!("127.0.0.1:{}", free_udp_port("127.0.0.1"));
    let tls = format!("127.0.0.1:{}", free_tcp_port());
    let mut args = vec!["--listen", &listen, "--tls-listen", &tls];
    args.extend_from_slice(extra);
    let (code, _, err) = run_turnd(&args, LIMIT);
    (code, err)
}

#[test]
fn bad_tls_settings_stop_the_server_naming_the_key() {
    let dir = TempDir::new("tls-startup");
    let cert = TestCert::new(&dir);
    let other = TempDir::new("tls-startup-other");
    let other_cert = TestCert::new(&other);
    let c = cert.cert.to_str().unwrap();
    let k = cert.key.to_str().unwrap();

    let (code, err) = start(&[]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("tls.cert"), "{err}");

    let missing = dir.0.join("missing.pem");
    let (code, err) = start(&["--cert", missing.to_str().unwrap(), "--key", k]);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("tls.cert") && err.contains("missing.pem"),
        "{err}"
    );

    let empty = dir.write("empty.pem", "no certificate here\n");
    let (code, err) = start(&["--cert", empty.to_str().unwrap(), "--key", k]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("tls.cert"), "{err}");

    let (code, err) = start(&["--cert", c, "--key", other_cert.key.to_str().unwrap()]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("tls.key"), "{err}");
}
