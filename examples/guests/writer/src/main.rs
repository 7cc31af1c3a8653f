//! `writer`: appends `message N` lines to a file at a fixed interval, then a
//! final `done` line. Pairs with `reader` to exercise a shared volume.
//!
//! Usage: `writer [PATH] [COUNT] [INTERVAL_MS]`
//! (defaults: `/data/messages.txt 5 200`).

use std::fs::OpenOptions;
use std::io::{self, Write};
use std::process::exit;
use std::thread::sleep;
use std::time::Duration;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let path = args.first().map_or("/data/messages.txt", String::as_str);
    let count = parse_arg(args.get(1), "COUNT", 5);
    let interval = Duration::from_millis(parse_arg(args.get(2), "INTERVAL_MS", 200));

    if let Err(err) = run(path, count, interval) {
        eprintln!("writer: {path}: {err}");
        exit(1);
    }
    println!("writer: done");
}

fn run(path: &str, count: u64, interval: Duration) -> io::Result<()> {
    let mut file = OpenOptions::new().create(true).append(true).open(path)?;
    for n in 1..=count {
        // One write per line, so a concurrent reader never sees a torn line
        // unless the host splits the write.
        file.write_all(format!("message {n}\n").as_bytes())?;
        file.flush()?;
        println!("wrote message {n}");
        if n < count {
            sleep(interval);
        }
    }
    file.write_all(b"done\n")?;
    file.flush()
}

fn parse_arg(arg: Option<&String>, name: &str, default: u64) -> u64 {
    match arg {
        None => default,
        Some(s) => s.parse().unwrap_or_else(|_| {
            eprintln!("writer: invalid {name}: {s:?}");
            exit(2);
        }),
    }
}
