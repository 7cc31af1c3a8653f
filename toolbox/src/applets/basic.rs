//! Applets that touch no files (or only read one): echo, sleep, env, top, seq, …

use std::io::Write;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::getopt;
use crate::{Ctx, Io};

pub fn true_(_: &mut Ctx, _: &mut Io, _: &[String]) -> i32 {
    0
}

pub fn false_(_: &mut Ctx, _: &mut Io, _: &[String]) -> i32 {
    1
}

pub fn sync(_: &mut Ctx, _: &mut Io, _: &[String]) -> i32 {
    // Every write already went to the host; WASI has no sync of everything.
    0
}

/// `echo [-neE] ARGS...`: options only before the first other argument, as busybox.
pub fn echo(_: &mut Ctx, io: &mut Io, argv: &[String]) -> i32 {
    let mut newline = true;
    let mut escapes = false;
    let mut args = argv.get(1..).unwrap_or_default();
    while let Some(first) = args.first() {
        let flags = match first.strip_prefix('-') {
            Some(f) if !f.is_empty() && f.chars().all(|c| "neE".contains(c)) => f,
            _ => break,
        };
        for c in flags.chars() {
            match c {
                'n' => newline = false,
                'e' => escapes = true,
                _ => escapes = false,
            }
        }
        args = &args[1..];
    }
    let mut text = Vec::new();
    for (i, a) in args.iter().enumerate() {
        if i > 0 {
            text.push(b' ');
        }
        if escapes {
            if unescape(a, &mut text) {
                newline = false;
                break;
            }
        } else {
            text.extend_from_slice(a.as_bytes());
        }
    }
    if newline {
        text.push(b'\n');
    }
    if let Err(e) = io.out.write_all(&text).and_then(|_| io.out.flush()) {
        io.error("echo", crate::errtext(&e));
        return 1;
    }
    0
}

/// Appends `s` with echo -e's escapes; true when `\c` asked to stop all output here.
fn unescape(s: &str, out: &mut Vec<u8>) -> bool {
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] != b'\\' || i + 1 >= b.len() {
            out.push(b[i]);
            i += 1;
            continue;
        }
        i += 1;
        let c = b[i];
        i += 1;
        match c {
            b'a' => out.push(7),
            b'b' => out.push(8),
            b'c' => return true,
            b'e' => out.push(27),
            b'f' => out.push(12),
            b'n' => out.push(b'\n'),
            b'r' => out.push(b'\r'),
            b't' => out.push(b'\t'),
            b'v' => out.push(11),
            b'\\' => out.push(b'\\'),
            b'0' => {
                let mut v: u32 = 0;
                let mut n = 0;
                while n < 3 && i < b.len() && (b'0'..=b'7').contains(&b[i]) {
                    v = v * 8 + u32::from(b[i] - b'0');
                    i += 1;
                    n += 1;
                }
                out.push((v & 0xff) as u8);
            }
            b'x' => {
                let mut v: u32 = 0;
                let mut n = 0;
                while n < 2 && i < b.len() && b[i].is_ascii_hexdigit() {
                    v = v * 16 + (b[i] as char).to_digit(16).unwrap_or(0);
                    i += 1;
                    n += 1;
                }
                if n == 0 {
                    out.extend_from_slice(b"\\x");
                } else {
                    out.push(v as u8);
                }
            }
            other => {
                out.push(b'\\');
                out.push(other);
            }
        }
    }
    false
}

/// A duration as `sleep` takes it: `N`, `N.F`, with an `s`/`m`/`h`/`d` suffix; `inf[inity]`.
pub fn parse_duration(s: &str) -> Option<Option<Duration>> {
    if s.eq_ignore_ascii_case("inf") || s.eq_ignore_ascii_case("infinity") {
        return Some(None);
    }
    let (num, unit) = match s.char_indices().last() {
        Some((i, c @ ('s' | 'm' | 'h' | 'd'))) => (&s[..i], c),
        _ => (s, 's'),
    };
    if num.is_empty() || !num.chars().all(|c| c.is_ascii_digit() || c == '.') {
        return None;
    }
    let v: f64 = num.parse().ok()?;
    let scale = match unit {
        'm' => 60.0,
        'h' => 3600.0,
        'd' => 86400.0,
        _ => 1.0,
    };
    match Duration::try_from_secs_f64(v * scale) {
        Ok(d) => Some(Some(d)),
        // Too long to represent: as good as forever.
        Err(_) => Some(None),
    }
}

pub fn sleep_for(d: Option<Duration>) {
    match d {
        Some(d) => std::thread::sleep(d),
        None => loop {
            std::thread::sleep(Duration::from_secs(86400));
        },
    }
}

/// `sleep N...`: the sum of its arguments.
pub fn sleep(_: &mut Ctx, io: &mut Io, argv: &[String]) -> i32 {
    let args = argv.get(1..).unwrap_or_default();
    if args.is_empty() {
        io.error("sleep", "missing operand");
        return 1;
    }
    let mut total = Some(Duration::ZERO);
    for a in args {
        match parse_duration(a) {
            Some(d) => {
                total = match (total, d) {
                    (Some(t), Some(d)) => t.checked_add(d),
                    _ => None,
                }
            }
            None => {
                io.error("sleep", format_args!("invalid number '{a}'"));
                return 1;
            }
        }
    }
    sleep_for(total);
    0
}

/// `pause`: sleeps until the container is stopped.
pub fn pause(_: &mut Ctx, _: &mut Io, _: &[String]) -> i32 {
    sleep_for(None);
    0
}

/// `pgrep` and `pidof`: a Wasm guest sees no processes, so nothing matches.
pub fn pgrep(_: &mut Ctx, _: &mut Io, _: &[String]) -> i32 {
    1
}

/// `env [-i] [-u NAME] [NAME=VALUE]... [COMMAND ARGS...]`
pub fn env(ctx: &mut Ctx, io: &mut Io, argv: &[String]) -> i32 {
    let mut inner = ctx.clone();
    let mut args = argv.get(1..).unwrap_or_default();
    while let Some(a) = args.first() {
        match a.as_str() {
            "-i" | "-" => {
                inner.exported.clear();
                args = &args[1..];
            }
            "-u" => {
                let Some(name) = args.get(1) else {
                    io.error("env", "option requires an argument -- 'u'");
                    return 125;
                };
                inner.exported.remove(name);
                inner.vars.remove(name);
                args = &args[2..];
            }
            "--" => {
                args = &args[1..];
                break;
            }
            _ => break,
        }
    }
    while let Some((k, v)) = args.first().and_then(|a| a.split_once('=')) {
        if k.is_empty() {
            break;
        }
        inner.set_var(k, v);
        inner.export(k);
        args = &args[1..];
    }
    if args.is_empty() {
        let mut text = String::new();
        for (k, v) in inner.environment() {
            text.push_str(&format!("{k}={v}\n"));
        }
        let _ = io.out.write_all(text.as_bytes());
        let _ = io.out.flush();
        return 0;
    }
    match super::find(crate::applet_name(&args[0]).unwrap_or("")) {
        Some(run) => {
            let code = run(&mut inner, io, args);
            io.flush();
            code
        }
        None => {
            io.error(
                "env",
                format_args!("can't execute '{}': No such file or directory", args[0]),
            );
            127
        }
    }
}

/// `printenv [NAME...]`
pub fn printenv(ctx: &mut Ctx, io: &mut Io, argv: &[String]) -> i32 {
    let names = argv.get(1..).unwrap_or_default();
    let mut text = String::new();
    let mut code = 0;
    if names.is_empty() {
        for (k, v) in ctx.environment() {
            text.push_str(&format!("{k}={v}\n"));
        }
    }
    for n in names {
        match ctx.var(n).filter(|_| ctx.exported.contains(n)) {
            Some(v) => {
                text.push_str(v);
                text.push('\n');
            }
            None => code = 1,
        }
    }
    let _ = io.out.write_all(text.as_bytes());
    let _ = io.out.flush();
    code
}

/// The node name: `/etc/hostname` (the runtime writes it), else `HOSTNAME`.
pub fn hostname(ctx: &mut Ctx, io: &mut Io, argv: &[String]) -> i32 {
    let args = argv.get(1..).unwrap_or_default();
    if let Some(name) = args.iter().find(|a| !a.starts_with('-')) {
        let _ = name;
        io.error("hostname", "sethostname: Operation not permitted");
        return 1;
    }
    let from_file = std::fs::read_to_string(ctx.path("/etc/hostname"))
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty());
    let name = from_file
        .or_else(|| ctx.var("HOSTNAME").map(str::to_owned))
        .unwrap_or_else(|| "localhost".to_owned());
    let short = args.iter().any(|a| a == "-s");
    let name = if short {
        name.split('.').next().unwrap_or("").to_owned()
    } else {
        name
    };
    let _ = writeln!(io.out, "{name}");
    let _ = io.out.flush();
    0
}

pub fn pwd(ctx: &mut Ctx, io: &mut Io, _: &[String]) -> i32 {
    let _ = writeln!(io.out, "{}", ctx.cwd.display());
    let _ = io.out.flush();
    0
}

pub fn basename(_: &mut Ctx, io: &mut Io, argv: &[String]) -> i32 {
    let Some(path) = argv.get(1) else {
        io.error("basename", "missing operand");
        return 1;
    };
    let trimmed = path.trim_end_matches('/');
    let mut base = if trimmed.is_empty() && !path.is_empty() {
        "/"
    } else {
        trimmed.rsplit('/').next().unwrap_or("")
    };
    if let Some(suffix) = argv.get(2) {
        if base != suffix.as_str() {
            base = base.strip_suffix(suffix.as_str()).unwrap_or(base);
        }
    }
    let _ = writeln!(io.out, "{base}");
    let _ = io.out.flush();
    0
}

pub fn dirname(_: &mut Ctx, io: &mut Io, argv: &[String]) -> i32 {
    let Some(path) = argv.get(1) else {
        io.error("dirname", "missing operand");
        return 1;
    };
    let trimmed = path.trim_end_matches('/');
    let dir = match trimmed.rfind('/') {
        None if path.starts_with('/') => "/",
        None => ".",
        Some(i) => {
            let d = trimmed[..i].trim_end_matches('/');
            if d.is_empty() {
                "/"
            } else {
                d
            }
        }
    };
    let _ = writeln!(io.out, "{dir}");
    let _ = io.out.flush();
    0
}

/// `seq [-s SEP] [-w] [FIRST [INC]] LAST` over integers.
pub fn seq(_: &mut Ctx, io: &mut Io, argv: &[String]) -> i32 {
    let args = argv.get(1..).unwrap_or_default();
    let mut sep = "\n".to_owned();
    let mut width = false;
    let mut i = 0;
    while i < args.len() {
        match args[i].as_str() {
            "-s" => {
                let Some(s) = args.get(i + 1) else {
                    io.error("seq", "option requires an argument -- 's'");
                    return 1;
                };
                sep = s.clone();
                i += 2;
            }
            "-w" => {
                width = true;
                i += 1;
            }
            a if a.starts_with("-s") => {
                sep = a[2..].to_owned();
                i += 1;
            }
            _ => break,
        }
    }
    let nums = &args[i..];
    let mut vals = Vec::new();
    for n in nums {
        match n.parse::<i64>() {
            Ok(v) => vals.push(v),
            Err(_) => {
                io.error("seq", format_args!("invalid number '{n}'"));
                return 1;
            }
        }
    }
    let (first, inc, last) = match vals[..] {
        [last] => (1, 1, last),
        [first, last] => (first, 1, last),
        [first, inc, last] => (first, inc, last),
        _ => {
            io.error("seq", "usage: seq [-s SEP] [-w] [FIRST [INC]] LAST");
            return 1;
        }
    };
    if inc == 0 {
        io.error("seq", "invalid increment '0'");
        return 1;
    }
    let pad = if width {
        first.to_string().len().max(last.to_string().len())
    } else {
        0
    };
    let mut text = String::new();
    let mut v = first;
    let mut any = false;
    while (inc > 0 && v <= last) || (inc < 0 && v >= last) {
        if any {
            text.push_str(&sep);
        }
        any = true;
        if v < 0 {
            text.push_str(&format!(
                "-{:0>w$}",
                v.unsigned_abs(),
                w = pad.saturating_sub(1)
            ));
        } else {
            text.push_str(&format!("{v:0>pad$}"));
        }
        if text.len() >= 64 * 1024 {
            if io.out.write_all(text.as_bytes()).is_err() {
                return 1;
            }
            text.clear();
        }
        match v.checked_add(inc) {
            Some(n) => v = n,
            None => break,
        }
    }
    if any {
        text.push('\n');
    }
    let _ = io.out.write_all(text.as_bytes());
    let _ = io.out.flush();
    0
}

/// `top [-b] [-d SECS] [-n COUNT]`: a line per interval (1 s), forever unless `-n`. A Wasm
/// guest sees only itself: the line gives the time, its run time and its linear memory.
pub fn top(_: &mut Ctx, io: &mut Io, argv: &[String]) -> i32 {
    let args = argv.get(1..).unwrap_or_default();
    let (opts, _) = match getopt(args, "bHis", "dn") {
        Ok(v) => v,
        Err(e) => return super::bad_usage(io, "top", &e),
    };
    let mut delay = Duration::from_secs(1);
    let mut count: Option<u64> = None;
    for (c, v) in opts {
        match (c, v) {
            ('d', Some(v)) => match super::basic::parse_duration(v) {
                Some(Some(d)) => delay = d,
                _ => return super::bad_usage(io, "top", &format!("invalid number '{v}'")),
            },
            ('n', Some(v)) => match v.parse() {
                Ok(n) => count = Some(n),
                Err(_) => return super::bad_usage(io, "top", &format!("invalid number '{v}'")),
            },
            _ => {}
        }
    }
    let started = std::time::Instant::now();
    let mut n = 0u64;
    loop {
        let (h, m, s) = clock(SystemTime::now());
        let up = started.elapsed().as_secs();
        let line = format!(
            "top - {h:02}:{m:02}:{s:02} up {up}s, 1 task (this one), linear memory {} KiB\n",
            linear_memory() / 1024
        );
        if io
            .out
            .write_all(line.as_bytes())
            .and_then(|_| io.out.flush())
            .is_err()
        {
            return 1;
        }
        n += 1;
        if count.is_some_and(|c| n >= c) {
            return 0;
        }
        std::thread::sleep(delay);
    }
}

/// Hours, minutes, seconds (UTC) of a time.
fn clock(t: SystemTime) -> (u64, u64, u64) {
    let secs = t
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    ((secs / 3600) % 24, (secs / 60) % 60, secs % 60)
}

fn linear_memory() -> usize {
    #[cfg(target_arch = "wasm32")]
    {
        core::arch::wasm32::memory_size(0) * 65536
    }
    #[cfg(not(target_arch = "wasm32"))]
    {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::run;

    #[test]
    fn echo_flags_and_escapes() {
        assert_eq!(run(&["echo", "-n", "hello"], b"").1, "hello");
        assert_eq!(run(&["echo", "a", "b"], b"").1, "a b\n");
        assert_eq!(run(&["echo", "-e", "a\\tb\\n"], b"").1, "a\tb\n\n");
        assert_eq!(run(&["echo", "-e", "a\\cb"], b"").1, "a");
        assert_eq!(run(&["echo", "-x"], b"").1, "-x\n");
        assert_eq!(run(&["echo", "-e", "\\x41\\0101\\q\\"], b"").1, "AA\\q\\\n");
        assert_eq!(run(&["echo"], b"").1, "\n");
    }

    #[test]
    fn sleep_parses() {
        use super::parse_duration;
        use std::time::Duration;
        assert_eq!(
            parse_duration("1.5"),
            Some(Some(Duration::from_millis(1500)))
        );
        assert_eq!(parse_duration("2m"), Some(Some(Duration::from_secs(120))));
        assert_eq!(parse_duration("infinity"), Some(None));
        assert_eq!(parse_duration("1e999"), None);
        assert_eq!(parse_duration("99999999999999999999999d"), Some(None));
        assert_eq!(parse_duration("x"), None);
        assert_eq!(parse_duration("."), None);
        assert_eq!(run(&["sleep", "0.01"], b"").0, 0);
        assert_eq!(run(&["sleep", "x"], b"").2, "sleep: invalid number 'x'\n");
    }

    #[test]
    fn seq_counts() {
        assert_eq!(run(&["seq", "3"], b"").1, "1\n2\n3\n");
        assert_eq!(run(&["seq", "2", "2", "7"], b"").1, "2\n4\n6\n");
        assert_eq!(run(&["seq", "-s", ",", "3", "-1", "1"], b"").1, "3,2,1\n");
        assert_eq!(run(&["seq", "-w", "8", "10"], b"").1, "08\n09\n10\n");
        assert_eq!(run(&["seq", "0"], b"").1, "");
        assert_eq!(run(&["seq", "1", "0", "2"], b"").0, 1);
        assert_eq!(
            run(&["seq", "9223372036854775806", "9223372036854775807"], b"").0,
            0
        );
    }

    #[test]
    fn env_and_hostname() {
        let (code, out, _) = run(&["env", "A=1", "printenv", "A", "HOSTNAME"], b"");
        assert_eq!((code, out.as_str()), (0, "1\ntesthost\n"));
        assert_eq!(run(&["env", "-i", "env"], b"").1, "");
        assert_eq!(run(&["printenv", "NOPE"], b"").0, 1);
        assert_eq!(run(&["env", "nosuch"], b"").0, 127);
        assert_eq!(
            run(&["pgrep", "sleep"], b""),
            (1, String::new(), String::new())
        );
        assert_eq!(run(&["top", "-n", "1"], b"").0, 0);
        assert_eq!(run(&["basename", "/a/b.txt", ".txt"], b"").1, "b\n");
        assert_eq!(run(&["dirname", "/a/b/"], b"").1, "/a\n");
        assert_eq!(run(&["dirname", "b"], b"").1, ".\n");
    }
}
