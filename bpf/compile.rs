// The build scripts' shared part (`include!`d by build.rs and tools/build.rs): compiles one
// eBPF program in C with clang for the target `bpf`. Debian's `clang` and `libbpf-dev` (for
// `bpf/bpf_helpers.h`) are what it needs; `.ci/run` installs them. `TURND_CLANG` names
// another clang.

/// Compiles `src` (relative to the crate) into `$OUT_DIR/<obj>`. Without clang the crate
/// still builds, with `--cfg <no_bpf_cfg>` and a warning, unless `TURND_REQUIRE_BPF=1` (as
/// `.ci/run` sets), where a missing program is an error.
fn compile_bpf(src: &str, obj: &str, no_bpf_cfg: &str, what: &str) {
    use std::path::PathBuf;
    use std::process::Command;
    println!("cargo::rustc-check-cfg=cfg({no_bpf_cfg})");
    println!("cargo::rerun-if-changed={src}");
    println!("cargo::rerun-if-env-changed=TURND_CLANG");
    println!("cargo::rerun-if-env-changed=TURND_REQUIRE_BPF");
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
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
    cmd.arg("-c").arg(src).arg("-o").arg(out.join(obj));
    let why = match cmd.output() {
        Ok(o) if o.status.success() => return,
        Ok(o) => format!(
            "compiling {src} with {clang} failed:\n{}",
            String::from_utf8_lossy(&o.stderr)
        ),
        Err(e) => format!("running {clang} failed ({e})"),
    };
    if std::env::var_os("TURND_REQUIRE_BPF").is_some_and(|v| v != "0") {
        panic!("{why}");
    }
    for line in why.lines().take(6) {
        println!("cargo::warning={line}");
    }
    println!("cargo::warning=no eBPF program in this build: install clang and libbpf-dev for {what}");
    println!("cargo::rustc-cfg={no_bpf_cfg}");
}
