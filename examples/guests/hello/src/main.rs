//! `hello`: the smallest useful guest. Prints a greeting, the `GREETING`
//! environment variable, its arguments and its working directory to stdout,
//! and one line to stderr, then exits 0.

use std::env;

fn main() {
    println!("Hello from wasmpod!");
    let greeting = env::var("GREETING").unwrap_or_else(|_| "(unset)".to_string());
    println!("GREETING={greeting}");
    let args: Vec<String> = env::args().skip(1).collect();
    println!("args: {}", args.join(" "));
    // wasmpod passes workingDir as PWD (and wasi:cli initial-cwd); wasi-libc itself starts
    // every program in `/`, so a Rust guest sees it here rather than in current_dir.
    println!(
        "PWD={}",
        env::var("PWD").unwrap_or_else(|_| "(unset)".to_string())
    );
    match env::current_dir() {
        Ok(dir) => println!("cwd: {}", dir.display()),
        Err(_) => println!("cwd: (none)"),
    }
    eprintln!("hello: done");
}
