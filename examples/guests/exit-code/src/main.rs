//! `exit-code`: exits with the given status code, to test how exit codes are
//! reported.
//!
//! Usage: `exit-code [CODE]` (default: 3).

fn main() {
    let code: i32 = match std::env::args().nth(1) {
        None => 3,
        Some(s) => s.parse().unwrap_or_else(|_| {
            eprintln!("exit-code: invalid CODE: {s:?}");
            std::process::exit(2);
        }),
    };
    println!("exiting with {code}");
    std::process::exit(code);
}
