//! Applets over files: cat, ls, head, tail, wc, touch, mkdir, rm, dd.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::{bad_usage, getopt, open_input, open_output};
use crate::{errtext, Ctx, Io};

/// Copies `r` to the output, flushing after every read so that a stream shows as it comes.
fn pump(r: &mut dyn Read, io: &mut Io) -> Result<(), (bool, io::Error)> {
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        let n = match r.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err((true, e)),
        };
        io.out
            .write_all(&buf[..n])
            .and_then(|_| io.out.flush())
            .map_err(|e| (false, e))?;
    }
}

/// `cat [FILE|-]...`
pub fn cat(ctx: &mut Ctx, io: &mut Io, argv: &[String]) -> i32 {
    let mut names: Vec<&str> = argv
        .get(1..)
        .unwrap_or_default()
        .iter()
        .map(String::as_str)
        .filter(|a| *a != "-u")
        .collect();
    if names.is_empty() {
        names.push("-");
    }
    let mut code = 0;
    for name in names {
        let mut r = match open_input(ctx, io, name) {
            Ok(r) => r,
            Err(e) if e.kind() == io::ErrorKind::IsADirectory => {
                io.error("cat", format_args!("read error: {}", errtext(&e)));
                code = 1;
                continue;
            }
            Err(e) => {
                io.error("cat", format_args!("can't open '{name}': {}", errtext(&e)));
                code = 1;
                continue;
            }
        };
        match pump(&mut r, io) {
            Ok(()) => {}
            Err((true, e)) => {
                io.error("cat", format_args!("read error: {}", errtext(&e)));
                code = 1;
            }
            Err((false, e)) => {
                io.error("cat", format_args!("write error: {}", errtext(&e)));
                return 1;
            }
        }
    }
    code
}

/// Reads a whole input for head/tail/wc; `None` after reporting an error.
fn slurp(ctx: &Ctx, io: &mut Io, applet: &str, name: &str) -> Option<Vec<u8>> {
    let mut r = match open_input(ctx, io, name) {
        Ok(r) => r,
        Err(e) => {
            io.error(applet, format_args!("can't open '{name}': {}", errtext(&e)));
            return None;
        }
    };
    if name == "/dev/zero" {
        io.error(applet, "/dev/zero: refusing to read an endless file");
        return None;
    }
    let mut buf = Vec::new();
    match r.read_to_end(&mut buf) {
        Ok(_) => Some(buf),
        Err(e) => {
            io.error(applet, format_args!("{name}: {}", errtext(&e)));
            None
        }
    }
}

/// The count of `-n N`, `-N`, `-c N` for head and tail; `+N` (from line N) for tail.
fn head_tail_args(argv: &[String]) -> Result<(bool, u64, bool, Vec<&str>), String> {
    let mut lines = true;
    let mut count = 10u64;
    let mut from = false;
    let mut names = Vec::new();
    let mut args = argv.get(1..).unwrap_or_default().iter();
    let parse = |v: &str, from: &mut bool| -> Result<u64, String> {
        let v = match v.strip_prefix('+') {
            Some(rest) => {
                *from = true;
                rest
            }
            None => v.strip_prefix('-').unwrap_or(v),
        };
        v.parse().map_err(|_| format!("invalid number '{v}'"))
    };
    while let Some(a) = args.next() {
        match a.as_str() {
            "-n" | "-c" => {
                lines = a == "-n";
                let v = args.next().ok_or("option requires an argument")?;
                count = parse(v, &mut from)?;
            }
            "-f" | "-q" | "-v" | "-F" => {}
            s if s.starts_with("-n") || s.starts_with("-c") => {
                lines = s.starts_with("-n");
                count = parse(&s[2..], &mut from)?;
            }
            s if s.len() > 1
                && s.starts_with('-')
                && s[1..].bytes().all(|b| b.is_ascii_digit()) =>
            {
                count = parse(&s[1..], &mut from)?;
            }
            "-" => names.push("-"),
            s if s.starts_with('-') => return Err(format!("invalid option -- '{}'", &s[1..])),
            s => names.push(s),
        }
    }
    if names.is_empty() {
        names.push("-");
    }
    Ok((lines, count, from, names))
}

/// `head [-n N | -c N] [FILE...]`
pub fn head(ctx: &mut Ctx, io: &mut Io, argv: &[String]) -> i32 {
    let (lines, count, _, names) = match head_tail_args(argv) {
        Ok(v) => v,
        Err(e) => return bad_usage(io, "head", &e),
    };
    let mut code = 0;
    let many = names.len() > 1;
    for (i, name) in names.iter().enumerate() {
        // Reads only what it prints, so `head -c 10 /dev/zero` ends.
        let mut r = match open_input(ctx, io, name) {
            Ok(r) => r,
            Err(e) => {
                io.error("head", format_args!("can't open '{name}': {}", errtext(&e)));
                code = 1;
                continue;
            }
        };
        if many {
            let sep = if i > 0 { "\n" } else { "" };
            let _ = writeln!(io.out, "{sep}==> {name} <==");
        }
        let mut left = count;
        let mut byte = [0u8; 1];
        let mut out = Vec::new();
        while left > 0 {
            match r.read(&mut byte) {
                Ok(0) => break,
                Ok(_) => {
                    out.push(byte[0]);
                    if !lines || byte[0] == b'\n' {
                        left -= 1;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    io.error("head", format_args!("{name}: {}", errtext(&e)));
                    code = 1;
                    break;
                }
            }
        }
        let _ = io.out.write_all(&out);
        let _ = io.out.flush();
    }
    code
}

/// `tail [-n [+]N | -c [+]N] [-f] [FILE...]`
pub fn tail(ctx: &mut Ctx, io: &mut Io, argv: &[String]) -> i32 {
    let (lines, count, from, names) = match head_tail_args(argv) {
        Ok(v) => v,
        Err(e) => return bad_usage(io, "tail", &e),
    };
    let follow = argv.iter().any(|a| a == "-f" || a == "-F");
    let mut code = 0;
    let many = names.len() > 1;
    for (i, name) in names.iter().enumerate() {
        let Some(data) = slurp(ctx, io, "tail", name) else {
            code = 1;
            continue;
        };
        if many {
            let sep = if i > 0 { "\n" } else { "" };
            let _ = writeln!(io.out, "{sep}==> {name} <==");
        }
        let start = if lines {
            let ends: Vec<usize> = data
                .iter()
                .enumerate()
                .filter(|(_, b)| **b == b'\n')
                .map(|(i, _)| i + 1)
                .collect();
            if from {
                // Line N onwards (1-based).
                let n = count.saturating_sub(1) as usize;
                if n == 0 {
                    0
                } else {
                    ends.get(n - 1).copied().unwrap_or(data.len())
                }
            } else {
                // The last N lines; a last line without a newline counts.
                let mut starts = vec![0];
                starts.extend(ends.iter().copied().filter(|e| *e < data.len()));
                let n = count.min(starts.len() as u64) as usize;
                if n == 0 {
                    data.len()
                } else {
                    starts[starts.len() - n]
                }
            }
        } else if from {
            (count.saturating_sub(1) as usize).min(data.len())
        } else {
            data.len() - (count.min(data.len() as u64) as usize)
        };
        let _ = io.out.write_all(&data[start..]);
        let _ = io.out.flush();
        if follow && names.len() == 1 && *name != "-" {
            return follow_file(ctx, io, name, data.len() as u64);
        }
    }
    code
}

/// `tail -f`: prints what is appended to the file, polling every second, forever.
fn follow_file(ctx: &Ctx, io: &mut Io, name: &str, mut offset: u64) -> i32 {
    use std::io::{Seek, SeekFrom};
    loop {
        std::thread::sleep(Duration::from_secs(1));
        let Ok(mut f) = File::open(ctx.path(name)) else {
            continue;
        };
        let len = f.metadata().map(|m| m.len()).unwrap_or(0);
        if len < offset {
            offset = 0;
        }
        if f.seek(SeekFrom::Start(offset)).is_err() {
            continue;
        }
        let mut buf = Vec::new();
        if f.read_to_end(&mut buf).is_ok() && !buf.is_empty() {
            offset += buf.len() as u64;
            if io.out.write_all(&buf).and_then(|_| io.out.flush()).is_err() {
                return 1;
            }
        }
    }
}

/// `wc [-lwc] [FILE...]`
pub fn wc(ctx: &mut Ctx, io: &mut Io, argv: &[String]) -> i32 {
    let args = argv.get(1..).unwrap_or_default();
    let (opts, mut names) = match getopt(args, "lwcmL", "") {
        Ok(v) => v,
        Err(e) => return bad_usage(io, "wc", &e),
    };
    let mut want = [false; 3];
    for (c, _) in &opts {
        match c {
            'l' => want[0] = true,
            'w' => want[1] = true,
            _ => want[2] = true,
        }
    }
    if !want.iter().any(|w| *w) {
        want = [true; 3];
    }
    let stdin = names.is_empty();
    if stdin {
        names.push("-");
    }
    let columns = want.iter().filter(|w| **w).count();
    let mut totals = [0u64; 3];
    let mut code = 0;
    let mut text = String::new();
    let show = |counts: &[u64; 3], name: Option<&str>, text: &mut String| {
        let fields: Vec<String> = (0..3)
            .filter(|i| want[*i])
            .map(|i| {
                if columns == 1 && name.is_none() {
                    counts[i].to_string()
                } else {
                    format!("{:>7}", counts[i])
                }
            })
            .collect();
        text.push_str(&fields.join(" "));
        if let Some(n) = name {
            text.push(' ');
            text.push_str(n);
        }
        text.push('\n');
    };
    for name in &names {
        let Some(data) = slurp(ctx, io, "wc", name) else {
            code = 1;
            continue;
        };
        let counts = [
            data.iter().filter(|b| **b == b'\n').count() as u64,
            data.split(|b| b.is_ascii_whitespace())
                .filter(|w| !w.is_empty())
                .count() as u64,
            data.len() as u64,
        ];
        for i in 0..3 {
            totals[i] += counts[i];
        }
        show(&counts, (!stdin).then_some(*name), &mut text);
    }
    if names.len() > 1 {
        show(&totals, Some("total"), &mut text);
    }
    let _ = io.out.write_all(text.as_bytes());
    let _ = io.out.flush();
    code
}

/// `touch [-c] FILE...`: creates the file, or sets its modification time to now.
pub fn touch(ctx: &mut Ctx, io: &mut Io, argv: &[String]) -> i32 {
    let args = argv.get(1..).unwrap_or_default();
    let (opts, names) = match getopt(args, "cam", "dtr") {
        Ok(v) => v,
        Err(e) => return bad_usage(io, "touch", &e),
    };
    let no_create = opts.iter().any(|(c, _)| *c == 'c');
    if names.is_empty() {
        return bad_usage(io, "touch", "missing operand");
    }
    let mut code = 0;
    for name in names {
        let path = ctx.path(name);
        let result = if fs::symlink_metadata(&path).is_ok() {
            OpenOptions::new()
                .write(true)
                .open(&path)
                .or_else(|_| File::open(&path))
                .and_then(|f| f.set_modified(SystemTime::now()))
        } else if no_create {
            Ok(())
        } else {
            OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(false)
                .open(&path)
                .map(drop)
        };
        if let Err(e) = result {
            io.error("touch", format_args!("{name}: {}", errtext(&e)));
            code = 1;
        }
    }
    code
}

/// `mkdir [-p] DIR...`
pub fn mkdir(ctx: &mut Ctx, io: &mut Io, argv: &[String]) -> i32 {
    let args = argv.get(1..).unwrap_or_default();
    let (opts, names) = match getopt(args, "pv", "m") {
        Ok(v) => v,
        Err(e) => return bad_usage(io, "mkdir", &e),
    };
    let parents = opts.iter().any(|(c, _)| *c == 'p');
    if names.is_empty() {
        return bad_usage(io, "mkdir", "missing operand");
    }
    let mut code = 0;
    for name in names {
        let path = ctx.path(name);
        let r = if parents {
            fs::create_dir_all(&path)
        } else {
            fs::create_dir(&path)
        };
        if let Err(e) = r {
            io.error(
                "mkdir",
                format_args!("can't create directory '{name}': {}", errtext(&e)),
            );
            code = 1;
        }
    }
    code
}

/// `rm [-rf] FILE...`
pub fn rm(ctx: &mut Ctx, io: &mut Io, argv: &[String]) -> i32 {
    let args = argv.get(1..).unwrap_or_default();
    let (opts, names) = match getopt(args, "rRfiv", "") {
        Ok(v) => v,
        Err(e) => return bad_usage(io, "rm", &e),
    };
    let force = opts.iter().any(|(c, _)| *c == 'f');
    let recursive = opts.iter().any(|(c, _)| *c == 'r' || *c == 'R');
    if names.is_empty() && !force {
        return bad_usage(io, "rm", "missing operand");
    }
    let mut code = 0;
    for name in names {
        let path = ctx.path(name);
        let r = match fs::symlink_metadata(&path) {
            Err(e) => Err(e),
            Ok(m) if m.is_dir() => {
                if !recursive {
                    io.error("rm", format_args!("'{name}' is a directory"));
                    code = 1;
                    continue;
                }
                fs::remove_dir_all(&path)
            }
            Ok(_) => fs::remove_file(&path),
        };
        match r {
            Ok(()) => {}
            Err(e) if force && e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => {
                io.error("rm", format_args!("can't remove '{name}': {}", errtext(&e)));
                code = 1;
            }
        }
    }
    code
}

/// A size with dd's suffixes (`c` 1, `w` 2, `b` 512, `k`/`K` KiB, `M`, `G`; `kB` 1000, `MB`,
/// `GB`).
fn dd_size(s: &str) -> Option<u64> {
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, suffix) = s.split_at(split);
    let n: u64 = num.parse().ok()?;
    let scale: u64 = match suffix {
        "" | "c" => 1,
        "w" => 2,
        "b" => 512,
        "k" | "K" | "KiB" => 1 << 10,
        "M" | "MiB" => 1 << 20,
        "G" | "GiB" => 1 << 30,
        "kB" | "KB" => 1000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        _ => return None,
    };
    n.checked_mul(scale)
}

/// `dd [if=FILE] [of=FILE] [bs=N] [count=N] [skip=N] [status=none] [conv=notrunc]`: copies
/// blocks of `bs` bytes (the block is allocated whole, as dd does).
pub fn dd(ctx: &mut Ctx, io: &mut Io, argv: &[String]) -> i32 {
    let mut input = "-".to_owned();
    let mut output = "-".to_owned();
    let mut bs: u64 = 512;
    let mut count: Option<u64> = None;
    let mut skip: u64 = 0;
    let mut quiet = false;
    let mut notrunc = false;
    for a in argv.get(1..).unwrap_or_default() {
        let Some((k, v)) = a.split_once('=') else {
            return bad_usage(io, "dd", &format!("invalid operand '{a}'"));
        };
        let size = || dd_size(v);
        match k {
            "if" => input = v.to_owned(),
            "of" => output = v.to_owned(),
            "status" => quiet = v == "none" || v == "noxfer",
            "conv" => notrunc = v.split(',').any(|c| c == "notrunc"),
            "bs" | "ibs" | "obs" | "count" | "skip" | "seek" => {
                let Some(n) = size() else {
                    return bad_usage(io, "dd", &format!("invalid number '{v}'"));
                };
                match k {
                    "count" => count = Some(n),
                    "skip" => skip = n,
                    "seek" => {}
                    _ => bs = n.max(1),
                }
            }
            _ => return bad_usage(io, "dd", &format!("invalid operand '{a}'")),
        }
    }
    let Ok(bs) = usize::try_from(bs) else {
        return bad_usage(io, "dd", "block size too large");
    };
    let mut r = match open_input(ctx, io, &input) {
        Ok(r) => r,
        Err(e) => {
            io.error("dd", format_args!("can't open '{input}': {}", errtext(&e)));
            return 1;
        }
    };
    let mut w = if output == "-" {
        io.out.clone()
    } else if notrunc && output != "/dev/null" {
        match OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(ctx.path(&output))
        {
            Ok(f) => crate::Sink::File(std::rc::Rc::new(std::cell::RefCell::new(f))),
            Err(e) => {
                io.error("dd", format_args!("can't open '{output}': {}", errtext(&e)));
                return 1;
            }
        }
    } else {
        match open_output(ctx, io, &output, false) {
            Ok(w) => w,
            Err(e) => {
                io.error("dd", format_args!("can't open '{output}': {}", errtext(&e)));
                return 1;
            }
        }
    };
    let started = Instant::now();
    let mut block = vec![0u8; bs];
    let (mut full, mut partial, mut bytes) = (0u64, 0u64, 0u64);
    let mut code = 0;
    let mut blocks = 0u64;
    let mut skipped = 0u64;
    while count.is_none_or(|c| blocks < c) {
        let n = match r.read(&mut block) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                io.error("dd", format_args!("{input}: {}", errtext(&e)));
                code = 1;
                break;
            }
        };
        if skipped < skip {
            skipped += 1;
            continue;
        }
        blocks += 1;
        if n == bs {
            full += 1;
        } else {
            partial += 1;
        }
        if let Err(e) = w.write_all(&block[..n]) {
            io.error("dd", format_args!("{output}: {}", errtext(&e)));
            code = 1;
            break;
        }
        bytes += n as u64;
    }
    let _ = w.flush();
    if !quiet {
        let secs = started.elapsed().as_secs_f64();
        let _ = write!(
            io.err,
            "{full}+{partial} records in\n{full}+{partial} records out\n\
             {bytes} bytes copied, {secs:.6} seconds\n"
        );
        let _ = io.err.flush();
    }
    code
}

/// `ls [-aAld1] [FILE...]`: one name a line (the output is never a terminal's columns).
pub fn ls(ctx: &mut Ctx, io: &mut Io, argv: &[String]) -> i32 {
    let args = argv.get(1..).unwrap_or_default();
    let (opts, mut names) = match getopt(args, "aAld1FhRrt", "") {
        Ok(v) => v,
        Err(e) => return bad_usage(io, "ls", &e),
    };
    let has = |f: char| opts.iter().any(|(c, _)| *c == f);
    let (all, almost, long, dir_only) = (has('a'), has('A'), has('l'), has('d'));
    if names.is_empty() {
        names.push(".");
    }
    let mut code = 0;
    let mut files = Vec::new();
    let mut dirs = Vec::new();
    for name in &names {
        let path = ctx.path(name);
        match fs::symlink_metadata(&path) {
            Err(e) => {
                io.error("ls", format_args!("{name}: {}", errtext(&e)));
                code = 1;
            }
            Ok(m) => {
                let is_dir = m.is_dir() || (m.is_symlink() && !long && path.is_dir());
                if is_dir && !dir_only {
                    dirs.push(*name);
                } else {
                    files.push((name.to_string(), path, m));
                }
            }
        }
    }
    let mut text = String::new();
    for (name, path, m) in &files {
        text.push_str(&entry_line(name, path, m, long));
    }
    let headers = names.len() > 1;
    for (i, name) in dirs.iter().enumerate() {
        if headers {
            if i > 0 || !files.is_empty() {
                text.push('\n');
            }
            text.push_str(&format!("{name}:\n"));
        }
        let path = ctx.path(name);
        let read = match fs::read_dir(&path) {
            Ok(r) => r,
            Err(e) => {
                io.error("ls", format_args!("{name}: {}", errtext(&e)));
                code = 1;
                continue;
            }
        };
        let mut entries: Vec<(String, std::path::PathBuf)> = read
            .filter_map(Result::ok)
            .map(|e| (e.file_name().to_string_lossy().into_owned(), e.path()))
            .filter(|(n, _)| all || almost || !n.starts_with('.'))
            .collect();
        if all {
            entries.push((".".into(), path.clone()));
            entries.push(("..".into(), path.join("..")));
        }
        entries.sort();
        if long {
            text.push_str(&format!("total {}\n", entries.len()));
        }
        for (n, p) in entries {
            match fs::symlink_metadata(&p) {
                Ok(m) => text.push_str(&entry_line(&n, &p, &m, long)),
                Err(_) => text.push_str(&format!("{n}\n")),
            }
        }
    }
    let _ = io.out.write_all(text.as_bytes());
    let _ = io.out.flush();
    code
}

fn entry_line(name: &str, path: &std::path::Path, m: &fs::Metadata, long: bool) -> String {
    if !long {
        return format!("{name}\n");
    }
    let kind = if m.is_dir() {
        'd'
    } else if m.is_symlink() {
        'l'
    } else {
        '-'
    };
    let (perms, links, owner) = mode_and_owner(m);
    let mtime = m
        .modified()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let target = if m.is_symlink() {
        fs::read_link(path)
            .map(|t| format!(" -> {}", t.display()))
            .unwrap_or_default()
    } else {
        String::new()
    };
    format!(
        "{kind}{perms} {links:>4} {owner} {:>9} {} {name}{target}\n",
        m.len(),
        ls_date(mtime)
    )
}

#[cfg(unix)]
fn mode_and_owner(m: &fs::Metadata) -> (String, u64, String) {
    use std::os::unix::fs::MetadataExt;
    let mode = m.mode();
    let mut s = String::new();
    for shift in [6, 3, 0] {
        let bits = (mode >> shift) & 7;
        s.push(if bits & 4 != 0 { 'r' } else { '-' });
        s.push(if bits & 2 != 0 { 'w' } else { '-' });
        s.push(if bits & 1 != 0 { 'x' } else { '-' });
    }
    (s, m.nlink(), format!("{:<8} {:<8}", m.uid(), m.gid()))
}

/// WASI has no modes and no owners: the bits say what the guest may do as far as it can
/// tell (read-only or not), the owner columns say there is none.
#[cfg(not(unix))]
fn mode_and_owner(m: &fs::Metadata) -> (String, u64, String) {
    let w = if m.permissions().readonly() { '-' } else { 'w' };
    let s = if m.is_dir() || m.is_symlink() {
        format!("r{w}xr-xr-x")
    } else {
        format!("r{w}-r--r--")
    };
    (s, 1, format!("{:<8} {:<8}", "-", "-"))
}

/// `Mon DD HH:MM` (UTC), or `Mon DD  YYYY` for times more than half a year off now.
fn ls_date(secs: u64) -> String {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let (y, mo, d) = civil_from_days((secs / 86400) as i64);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let month = MONTHS[(mo as usize).saturating_sub(1).min(11)];
    if now.abs_diff(secs) > 183 * 86400 {
        format!("{month} {d:>2}  {y}")
    } else {
        format!(
            "{month} {d:>2} {:02}:{:02}",
            (secs / 3600) % 24,
            (secs / 60) % 60
        )
    }
}

/// The proleptic Gregorian (year, month, day) of a day count from 1970-01-01.
pub fn civil_from_days(days: i64) -> (i64, u32, u32) {
    // Shift to an era starting on 0000-03-01 so that leap days end each cycle.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::super::testing::{run, run_in};
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
        assert_eq!(civil_from_days(19_723), (2024, 1, 1));
    }

    #[test]
    fn cat_files_and_stdin() {
        let dir = std::env::temp_dir().join(format!("toolbox-cat-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("a"), "A\n").unwrap();
        let (code, out, err) = run_in(&dir, &["cat", "a", "-", "missing"], b"in\n");
        assert_eq!(code, 1);
        assert_eq!(out, "A\nin\n");
        assert_eq!(
            err,
            "cat: can't open 'missing': No such file or directory\n"
        );
        assert_eq!(
            run_in(&dir, &["cat", "."], b"").2,
            "cat: read error: Is a directory\n"
        );
        assert_eq!(run(&["cat"], b"").0, 0);
        assert_eq!(run(&["cat", "/dev/null"], b"x").1, "");

        assert_eq!(
            run_in(&dir, &["touch", "b", "c/d"], b"").2,
            "touch: c/d: No such file or directory\n"
        );
        assert!(dir.join("b").is_file());
        assert_eq!(run_in(&dir, &["mkdir", "-p", "x/y"], b"").0, 0);
        assert_eq!(
            run_in(&dir, &["mkdir", "x"], b"").2,
            "mkdir: can't create directory 'x': File exists\n"
        );
        assert_eq!(run_in(&dir, &["ls", "-A"], b"").1, "a\nb\nx\n");
        assert!(run_in(&dir, &["ls", "-l", "a"], b"").1.starts_with("-rw"));
        assert_eq!(
            run_in(&dir, &["ls", "nope"], b"").2,
            "ls: nope: No such file or directory\n"
        );
        assert_eq!(
            run_in(&dir, &["rm", "x"], b"").2,
            "rm: 'x' is a directory\n"
        );
        assert_eq!(run_in(&dir, &["rm", "-r", "x", "b"], b"").0, 0);
        assert_eq!(run_in(&dir, &["rm", "-f", "zz"], b"").0, 0);
        assert_eq!(
            run_in(&dir, &["rm", "zz"], b"").2,
            "rm: can't remove 'zz': No such file or directory\n"
        );
        assert_eq!(
            run_in(
                &dir,
                &[
                    "dd",
                    "if=/dev/zero",
                    "of=z",
                    "bs=1K",
                    "count=3",
                    "status=none"
                ],
                b""
            )
            .0,
            0
        );
        assert_eq!(fs::metadata(dir.join("z")).unwrap().len(), 3072);
        let (code, _, err) = run(
            &["dd", "if=/dev/zero", "of=/dev/null", "bs=1M", "count=2"],
            b"",
        );
        assert_eq!(code, 0);
        assert!(
            err.starts_with("2+0 records in\n2+0 records out\n2097152 bytes"),
            "{err}"
        );
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn head_tail_wc() {
        let input = b"1\n2\n3\n4\n5";
        assert_eq!(run(&["head", "-n", "2"], input).1, "1\n2\n");
        assert_eq!(run(&["head", "-2"], input).1, "1\n2\n");
        assert_eq!(run(&["head", "-c", "3", "/dev/zero"], b"").1, "\0\0\0");
        assert_eq!(run(&["tail", "-n", "2"], input).1, "4\n5");
        assert_eq!(run(&["tail", "-n", "+4"], input).1, "4\n5");
        assert_eq!(run(&["tail", "-1"], b"a\nb\n").1, "b\n");
        assert_eq!(run(&["tail", "-c", "2"], input).1, "\n5");
        assert_eq!(run(&["wc", "-l"], input).1, "4\n");
        assert_eq!(run(&["wc"], b"a b\nc\n").1, "      2       3       6\n");
        assert_eq!(run(&["wc", "-x"], b"").0, 1);
    }
}
