//! `reader`: follows a file written by `writer` (possibly in another
//! container), printing every complete line as `read: <line>`, and exits 0
//! once it reads the line `done`. Exits 1 if that does not happen in time.
//!
//! Usage: `reader [PATH] [TIMEOUT_MS]` (defaults: `/data/messages.txt 30000`).

use std::fs;
use std::io::ErrorKind;
use std::process::exit;
use std::thread::sleep;
use std::time::{Duration, Instant};

const POLL_INTERVAL: Duration = Duration::from_millis(50);

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let path = args.first().map_or("/data/messages.txt", String::as_str);
    let timeout_ms: u64 = match args.get(1) {
        None => 30_000,
        Some(s) => s.parse().unwrap_or_else(|_| {
            eprintln!("reader: invalid TIMEOUT_MS: {s:?}");
            exit(2);
        }),
    };
    let deadline = Instant::now() + Duration::from_millis(timeout_ms);

    // Number of bytes of the file already consumed (up to the last newline).
    let mut consumed = 0;
    loop {
        match fs::read(path) {
            Ok(content) => {
                let new = content.get(consumed..).unwrap_or_default();
                // Only complete lines; a trailing partial line is read next time.
                let complete = new.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
                for line in new[..complete]
                    .split(|&b| b == b'\n')
                    .filter(|l| !l.is_empty())
                {
                    let line = String::from_utf8_lossy(line);
                    println!("read: {line}");
                    if line == "done" {
                        return;
                    }
                }
                consumed += complete;
            }
            Err(err) if err.kind() == ErrorKind::NotFound => {}
            Err(err) => {
                eprintln!("reader: {path}: {err}");
                exit(1);
            }
        }
        if Instant::now() >= deadline {
            eprintln!("reader: {path}: timed out after {timeout_ms} ms waiting for \"done\"");
            exit(1);
        }
        sleep(POLL_INTERVAL);
    }
}
