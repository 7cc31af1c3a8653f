//! `forever`: never exits on its own, to test stopping a running container.
//!
//! Usage: `forever [--spin]`. By default prints `tick N` once a second,
//! sleeping in between. With `--spin` prints `spinning` once and then
//! busy-loops without making any host call, so it can only be stopped by
//! interrupting the wasm execution itself (e.g. epoch interruption).

use std::hint::black_box;
use std::thread::sleep;
use std::time::Duration;

fn main() {
    match std::env::args().nth(1).as_deref() {
        None => tick(),
        Some("--spin") => spin(),
        Some(other) => {
            eprintln!("forever: unknown argument {other:?}; usage: forever [--spin]");
            std::process::exit(2);
        }
    }
}

fn tick() -> ! {
    let mut n: u64 = 0;
    loop {
        n += 1;
        println!("tick {n}");
        sleep(Duration::from_secs(1));
    }
}

fn spin() -> ! {
    println!("spinning");
    let mut counter = 0u64;
    loop {
        counter = black_box(counter.wrapping_add(1));
    }
}
