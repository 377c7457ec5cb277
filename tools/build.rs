//! Compiles turnd-load's kernel load (`bpf/load.bpf.c`, `--kernel-load`) with clang (see
//! `../bpf/compile.rs`). Without clang the tools still build and `--kernel-load` says why
//! it is missing (`cfg(turnd_load_no_bpf)`).

include!("../bpf/compile.rs");

fn main() {
    compile_bpf(
        "bpf/load.bpf.c",
        "load.bpf.o",
        "turnd_load_no_bpf",
        "turnd-load --kernel-load",
    );
}
