//! The `unitable` binary: `unitable serve` and the client subcommands.

/// mimalloc instead of glibc's allocator: a committer catching up a large changelog backlog
/// spent about half its CPU in glibc's malloc and free (docs/benchmarks.md, "Allocator").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    unitable_table_service::cli::main()
}
