//! The `c360-bridge` command line: serve, check, sign, send, dev.

mod cli;

fn main() -> std::process::ExitCode {
    cli::main()
}
