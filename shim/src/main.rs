//! The `wasmpod` binary: a thin front end over `wasmpod-runtime`.
mod cli;

fn main() -> std::process::ExitCode {
    cli::main()
}
