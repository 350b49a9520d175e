//! The `unitable` binary: `unitable serve` and the client subcommands.

fn main() -> std::process::ExitCode {
    unitable_table_service::cli::main()
}
