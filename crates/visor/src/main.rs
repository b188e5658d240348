//! The `visor` command: every role of Visor as a subcommand (see [`visor::cli`]).

/// glibc's allocator spent a quarter of the server's CPU under load (many threads, a heap full
/// of short-lived JSON trees) and kept freed memory as fragmented heap; mimalloc's per-thread
/// pages make those allocations cheap and give memory back.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Position of `mi_option_purge_delay` in mimalloc 3's `mi_option_e` (`include/mimalloc.h`);
/// the Rust bindings name only the options of older releases.
const PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

fn main() -> std::process::ExitCode {
    // Hand freed pages back after 10 ms instead of a second: an idle server holds about
    // 15 MiB less. (Transparent huge pages are off at build time, `no_thp`: with them an idle
    // heap of 18 MiB occupied 31 MiB in 2 MiB pages.)
    // SAFETY: mimalloc's option setter is not thread-safe; this runs before any thread starts.
    unsafe { libmimalloc_sys::mi_option_set(PURGE_DELAY, 10) };
    visor::cli::main()
}
