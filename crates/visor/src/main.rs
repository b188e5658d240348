//! The `visor` command: every role of Visor as a subcommand (see [`visor::cli`]).

fn main() -> std::process::ExitCode {
    visor::cli::main()
}
