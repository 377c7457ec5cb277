//! Compiles the kernel fast path's eBPF program (`bpf/relay.bpf.c`) with clang, for
//! `server.kernel-offload`. Debian's `clang` and `libbpf-dev` (for `bpf/bpf_helpers.h`) are
//! what it needs; `.ci/run` installs them. Without clang the server still builds: the
//! offload then reports at start that the program is missing (`cfg(turnd_no_bpf)`).

use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo::rustc-check-cfg=cfg(turnd_no_bpf)");
    println!("cargo::rerun-if-changed=bpf/relay.bpf.c");
    println!("cargo::rerun-if-env-changed=TURND_CLANG");
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let obj = out.join("relay.bpf.o");
    let clang = std::env::var("TURND_CLANG").unwrap_or_else(|_| "clang".into());
    let arch = match std::env::var("CARGO_CFG_TARGET_ARCH").as_deref() {
        Ok("x86_64") => "x86_64-linux-gnu",
        Ok("aarch64") => "aarch64-linux-gnu",
        _ => "",
    };
    let mut cmd = Command::new(&clang);
    cmd.args(["-O2", "-g", "-target", "bpf", "-Wall", "-Werror"]);
    if !arch.is_empty() {
        // asm/types.h, which linux/bpf.h includes, lives under the multiarch directory.
        cmd.arg(format!("-I/usr/include/{arch}"));
    }
    cmd.arg("-c").arg("bpf/relay.bpf.c").arg("-o").arg(&obj);
    match cmd.output() {
        Ok(o) if o.status.success() => {}
        Ok(o) => without(&format!(
            "compiling bpf/relay.bpf.c with {clang} failed:\n{}",
            String::from_utf8_lossy(&o.stderr)
        )),
        Err(e) => without(&format!("running {clang} failed ({e})")),
    }
}

/// Builds the server without the program, or fails the build where it is required
/// (`TURND_REQUIRE_BPF=1`, as `.ci/run` sets: there a missing program is an error).
fn without(why: &str) {
    println!("cargo::rerun-if-env-changed=TURND_REQUIRE_BPF");
    if std::env::var_os("TURND_REQUIRE_BPF").is_some_and(|v| v != "0") {
        panic!("{why}");
    }
    for line in why.lines().take(6) {
        println!("cargo::warning={line}");
    }
    println!(
        "cargo::warning=no eBPF fast path in this build: install clang and libbpf-dev for \
         server.kernel-offload"
    );
    println!("cargo::rustc-cfg=turnd_no_bpf");
}
