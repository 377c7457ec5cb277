//! A `redis-server` of the test's own (loopback, a free port, a temporary data directory,
//! append-only file so a restart keeps its data), ended by its pid; and a fleet of turnd
//! nodes on it, each with its admin listener. Needs Debian's `redis-server` and `redis-cli`
//! (`.ci/setup-redis.sh`).
#![allow(dead_code)]

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use std::path::{Path, PathBuf};

use super::stream::{TempDir, TestCert, free_tcp_port, start_with_config};
use super::{REALM, TestServer};
use crate::admin_http::{self, TOKEN};

/// A redis-server process; killed by its pid on drop.
pub struct TestRedis {
    child: Option<Child>,
    pub port: u16,
    dir: TempDir,
    /// TLS only (rediss://): its certificate (also the CA clients trust) and key.
    tls: Option<(PathBuf, PathBuf)>,
}

fn need(bin: &str) {
    let found = Command::new(bin)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        found,
        "{bin} not found: install it with `bash .ci/setup-redis.sh` (Debian's redis-server)"
    );
}

impl TestRedis {
    pub fn start() -> TestRedis {
        need("redis-server");
        need("redis-cli");
        let mut r = TestRedis {
            child: None,
            port: free_tcp_port(),
            dir: TempDir::new("redis"),
            tls: None,
        };
        r.spawn();
        r
    }

    /// A Redis that speaks TLS only, with a self-signed certificate for 127.0.0.1
    /// ([`TestRedis::ca_file`]).
    pub fn start_tls() -> TestRedis {
        need("redis-server");
        need("redis-cli");
        let dir = TempDir::new("redis-tls");
        let cert = TestCert::new(&dir);
        let mut r = TestRedis {
            child: None,
            port: free_tcp_port(),
            dir,
            tls: Some((cert.cert, cert.key)),
        };
        r.spawn();
        r
    }

    /// The PEM file a client trusts to reach a TLS Redis.
    pub fn ca_file(&self) -> Option<&Path> {
        self.tls.as_ref().map(|(c, _)| c.as_path())
    }

    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() {
            "rediss"
        } else {
            "redis"
        };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    fn spawn(&mut self) {
        let port = self.port.to_string();
        let mut listen: Vec<&str> = vec!["--port", &port];
        if let Some((cert, key)) = &self.tls {
            listen = vec![
                "--port",
                "0",
                "--tls-port",
                &port,
                "--tls-cert-file",
                cert.to_str().unwrap(),
                "--tls-key-file",
                key.to_str().unwrap(),
                "--tls-ca-cert-file",
                cert.to_str().unwrap(),
                "--tls-auth-clients",
                "no",
            ];
        }
        let child = Command::new("redis-server")
            .args(&listen)
            .args([
                "--bind",
                "127.0.0.1",
                "--dir",
                self.dir.0.to_str().unwrap(),
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--daemonize",
                "no",
                "--protected-mode",
                "yes",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn redis-server");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if self.try_cli(&["PING"]).is_some_and(|o| o.trim() == "PONG") {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("redis-server did not start on port {}", self.port);
    }

    /// SIGKILL (by pid) and reap: Redis gone at once, as in a crash.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port and data directory.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    fn try_cli(&self, args: &[&str]) -> Option<String> {
        let mut cmd = Command::new("redis-cli");
        cmd.args(["-h", "127.0.0.1", "-p", &self.port.to_string()]);
        if let Some((cert, _)) = &self.tls {
            cmd.args(["--tls", "--cacert", cert.to_str().unwrap()]);
        }
        let out = cmd.args(args).stdin(Stdio::null()).output().ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Runs `redis-cli` with `args` against this server and returns its output.
    pub fn cli(&self, args: &[&str]) -> String {
        self.try_cli(args)
            .unwrap_or_else(|| panic!("redis-cli {args:?} failed"))
    }
}

impl TestRedis {
    /// The fleet leases of `user` in this Redis (strict quotas): every node's acquired
    /// (`c:<node>`) and adopted (`a:<node>`) count, summed. Panics on a negative count.
    pub fn leases(&self, user: &str) -> i64 {
        let out = self.cli(&["HGETALL", &format!("turnd/lease/{REALM}/user/{user}")]);
        let lines: Vec<&str> = out.lines().collect();
        let mut sum = 0;
        for pair in lines.chunks(2) {
            if let [field, value] = pair
                && (field.starts_with("c:") || field.starts_with("a:"))
            {
                let n: i64 = value.trim().parse().expect("a lease count");
                assert!(n >= 0, "negative lease count {field} = {n} in {out}");
                sum += n;
            }
        }
        sum
    }
}

impl Drop for TestRedis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// coturn's stored long-term key: hex MD5(user:realm:password), as `turnadmin -k` prints it.
pub fn coturn_key(user: &str, password: &str) -> String {
    use md5::{Digest, Md5};
    let d = Md5::digest(format!("{user}:{REALM}:{password}").as_bytes());
    d.iter().map(|b| format!("{b:02x}")).collect()
}

/// A turnd node of a test fleet, with its admin listener.
pub struct Node {
    pub server: TestServer,
    pub admin: SocketAddr,
    pub dir: TempDir,
}

impl Node {
    pub fn addr(&self) -> SocketAddr {
        self.server.addr
    }

    pub fn get_json(&self, target: &str) -> serde_json::Value {
        admin_http::get_json(self.admin, target)
    }

    pub fn http(&self, method: &str, target: &str) -> (u16, String) {
        admin_http::http(self.admin, method, target, Some(TOKEN))
    }

    /// Live allocations on this node (its `/sessions`).
    pub fn sessions(&self) -> usize {
        self.get_json("/sessions").as_array().map_or(0, Vec::len)
    }
}

/// Starts a turnd node on `redis` with `[redis]` keys `redis_extra` and other config text
/// `extra_toml` (sections after `[redis]` are fine). Static user `alice:wonderland` as
/// every test server has; peers on loopback are allowed.
pub fn start_node(redis: &TestRedis, redis_extra: &str, extra_toml: &str, flags: &[&str]) -> Node {
    let dir = TempDir::new("fleet-node");
    let admin: SocketAddr = format!("127.0.0.1:{}", free_tcp_port()).parse().unwrap();
    let config = format!(
        "[server]\nrealm = \"{REALM}\"\n\n[peers]\nallow = [\"127.0.0.0/8\"]\n\n\
         [admin]\nenabled = true\nlisten = \"{admin}\"\ntoken = \"{TOKEN}\"\n\n\
         {extra_toml}\n\n[redis]\nurl = \"{}\"\n{redis_extra}\n",
        redis.url()
    );
    let server = start_with_config(&dir, &config, flags);
    Node { server, admin, dir }
}

/// Three nodes on one Redis, waiting until each sees all three in `/cluster`.
pub fn start_fleet(redis: &TestRedis, redis_extra: &str, extra_toml: &str) -> Vec<Node> {
    let nodes: Vec<Node> = (0..3)
        .map(|_| start_node(redis, redis_extra, extra_toml, &[]))
        .collect();
    for n in &nodes {
        let ok = wait_until(Duration::from_secs(20), || {
            n.get_json("/cluster")["nodes"]
                .as_array()
                .is_some_and(|a| a.len() == 3)
        });
        assert!(
            ok,
            "node {} did not see the fleet: {}",
            n.addr(),
            n.get_json("/cluster")
        );
    }
    nodes
}

/// Polls `f` every 50 ms until it holds or `within` passes; whether it held.
pub fn wait_until(within: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
