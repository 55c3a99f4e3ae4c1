//! The `c360-bridge` command line: serve, check, sign, send, dev.

mod cli;

/// mimalloc for Rust's allocations (librdkafka keeps glibc's malloc): docs/performance-notes.md.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    cli::main()
}
