//! `fsprobe`: a filesystem probe used by the test suite to check what a guest
//! can and cannot do with its preopened directories and volumes.
//!
//! Usage: `fsprobe OP ARGS... [-- OP ARGS...]...` runs the ops in order:
//!
//! | op                        | effect / output                               |
//! |---------------------------|-----------------------------------------------|
//! | `read PATH`               | prints the file's content verbatim            |
//! | `write PATH TEXT`         | creates or truncates PATH, writes TEXT        |
//! | `append PATH TEXT`        | appends TEXT to PATH (creating it)            |
//! | `mkdir PATH`              | creates one directory                         |
//! | `ls DIR`                  | prints the sorted entry names, one per line   |
//! | `rm PATH`                 | removes a file, symlink or empty directory    |
//! | `symlink TARGET LINKPATH` | creates a symlink at LINKPATH                 |
//! | `hardlink SRC DST`        | creates a hard link DST to SRC                |
//! | `stat PATH`               | prints `file <len>`, `dir`, `symlink` or `other` (not following symlinks) |
//! | `exists PATH`             | prints `yes` or `no` (following symlinks)     |
//! | `hold PATH N`             | opens PATH N times, keeping every descriptor; prints `held <k>` before failing or ending |
//!
//! On the first failing op it prints exactly one line to stderr,
//! `fsprobe: <op> <path>: errno=<n> kind=<kind>: <error>`, and exits 1
//! (`<path>` is the path the op creates, i.e. LINKPATH / DST for the link ops,
//! and the path it acts on otherwise; `errno` is -1 when there is no OS error).
//! Exits 0 when every op succeeded.

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::process::exit;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.is_empty() {
        fail(
            "usage",
            "",
            &invalid("usage: fsprobe OP ARGS... [-- OP ARGS...]..."),
        );
    }
    for group in args.split(|arg| arg == "--") {
        let (op, rest) = group
            .split_first()
            .map_or(("", &[][..]), |(op, rest)| (op.as_str(), rest));
        let path = match op {
            "symlink" | "hardlink" => rest.get(1),
            _ => rest.first(),
        };
        let path = path.map_or("", String::as_str);
        if let Err(err) = run(op, rest) {
            fail(op, path, &err);
        }
    }
}

fn run(op: &str, args: &[String]) -> io::Result<()> {
    let arity = match op {
        "read" | "mkdir" | "ls" | "rm" | "stat" | "exists" => 1,
        "write" | "append" | "symlink" | "hardlink" | "hold" => 2,
        _ => return Err(invalid(&format!("unknown op {op:?}"))),
    };
    if args.len() != arity {
        return Err(invalid(&format!(
            "expected {arity} argument(s), got {}",
            args.len()
        )));
    }
    let path = args[0].as_str();
    let mut stdout = io::stdout().lock();
    match op {
        "read" => stdout.write_all(&fs::read(path)?)?,
        "write" => fs::write(path, &args[1])?,
        "append" => OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?
            .write_all(args[1].as_bytes())?,
        "mkdir" => fs::create_dir(path)?,
        "ls" => {
            let mut names = fs::read_dir(path)?
                .map(|entry| Ok(entry?.file_name().to_string_lossy().into_owned()))
                .collect::<io::Result<Vec<_>>>()?;
            names.sort();
            for name in names {
                writeln!(stdout, "{name}")?;
            }
        }
        "rm" => {
            if fs::symlink_metadata(path)?.is_dir() {
                fs::remove_dir(path)?;
            } else {
                fs::remove_file(path)?;
            }
        }
        "symlink" => symlink(path, &args[1])?,
        "hardlink" => fs::hard_link(path, &args[1])?,
        "stat" => {
            let meta = fs::symlink_metadata(path)?;
            let file_type = meta.file_type();
            if file_type.is_symlink() {
                writeln!(stdout, "symlink")?;
            } else if file_type.is_dir() {
                writeln!(stdout, "dir")?;
            } else if file_type.is_file() {
                writeln!(stdout, "file {}", meta.len())?;
            } else {
                writeln!(stdout, "other")?;
            }
        }
        "exists" => writeln!(stdout, "{}", if fs::exists(path)? { "yes" } else { "no" })?,
        "hold" => {
            let n: usize = args[1].parse().map_err(|_| invalid("hold: N is not a number"))?;
            let mut held = Vec::new();
            let mut failed = None;
            while held.len() < n && failed.is_none() {
                match fs::File::open(path) {
                    Ok(file) => held.push(file),
                    Err(e) => failed = Some(e),
                }
            }
            writeln!(stdout, "held {}", held.len())?;
            stdout.flush()?;
            if let Some(e) = failed {
                return Err(e);
            }
        }
        _ => unreachable!("arity check covers every op"),
    }
    stdout.flush()
}

/// `std::os::wasi::fs::symlink_path` is still unstable (`wasi_ext`), so call
/// wasi-libc's `symlink(3)` directly; std links wasi-libc on both wasip1 and
/// wasip2, and it resolves LINKPATH against the preopens just like std does.
#[cfg(target_os = "wasi")]
fn symlink(target: &str, link: &str) -> io::Result<()> {
    use std::ffi::{c_char, c_int, CString};

    extern "C" {
        #[link_name = "symlink"]
        fn libc_symlink(target: *const c_char, linkpath: *const c_char) -> c_int;
    }

    let (target, link) = (CString::new(target)?, CString::new(link)?);
    // SAFETY: both arguments are valid NUL-terminated strings that outlive the call.
    if unsafe { libc_symlink(target.as_ptr(), link.as_ptr()) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(unix)]
fn symlink(target: &str, link: &str) -> io::Result<()> {
    std::os::unix::fs::symlink(target, link)
}

#[cfg(not(any(target_os = "wasi", unix)))]
fn symlink(_target: &str, _link: &str) -> io::Result<()> {
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        "symlink unsupported",
    ))
}

fn invalid(msg: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, msg)
}

fn fail(op: &str, path: &str, err: &io::Error) -> ! {
    let errno = err.raw_os_error().unwrap_or(-1);
    eprintln!(
        "fsprobe: {op} {path}: errno={errno} kind={:?}: {err}",
        err.kind()
    );
    exit(1);
}
