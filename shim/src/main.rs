//! The `wasmpod` binary: a thin front end over `wasmpod-runtime`.
mod cli;
mod cri;

fn main() -> std::process::ExitCode {
    cli::main()
}
