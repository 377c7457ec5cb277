//! Compiles the kernel fast path's eBPF program (`bpf/relay.bpf.c`) with clang, for
//! `server.kernel-offload` (see `bpf/compile.rs`). Without clang the server still builds:
//! the offload then reports at start that the program is missing (`cfg(turnd_no_bpf)`).

include!("bpf/compile.rs");

fn main() {
    compile_bpf(
        "bpf/relay.bpf.c",
        "relay.bpf.o",
        "turnd_no_bpf",
        "server.kernel-offload",
    );
}
