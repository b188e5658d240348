//! The `visor` command: every role of Visor as a subcommand (see [`visor::cli`]).

/// glibc's allocator spent a quarter of the server's CPU under load (many threads, a heap full
/// of short-lived JSON trees) and kept freed memory as fragmented heap; mimalloc's per-thread
/// pages make those allocations cheap and give memory back.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    visor::cli::main()
}
