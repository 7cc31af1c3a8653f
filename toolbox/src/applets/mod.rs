//! The applets. Each takes its argv (argv[0] is its name) and returns its exit code.

use std::cell::RefCell;
use std::fs::{File, OpenOptions};
use std::io::{self, Read};
use std::rc::Rc;

use crate::{Ctx, Io, Sink};

mod basic;
mod files;
mod grep;
mod httpd;
mod tar;
mod test;

pub use grep::Regex;

/// An applet's entry point.
pub type Applet = fn(&mut Ctx, &mut Io, &[String]) -> i32;

const APPLETS: &[(&str, Applet)] = &[
    ("[", test::test),
    ("basename", basic::basename),
    ("cat", files::cat),
    ("dd", files::dd),
    ("dirname", basic::dirname),
    ("echo", basic::echo),
    ("env", basic::env),
    ("false", basic::false_),
    ("grep", grep::grep),
    ("head", files::head),
    ("hostname", basic::hostname),
    ("httpd", httpd::httpd),
    ("ls", files::ls),
    ("mkdir", files::mkdir),
    ("pause", basic::pause),
    ("pgrep", basic::pgrep),
    ("pidof", basic::pgrep),
    ("printenv", basic::printenv),
    ("pwd", basic::pwd),
    ("rm", files::rm),
    ("seq", basic::seq),
    ("sh", crate::sh::sh),
    ("sleep", basic::sleep),
    ("sync", basic::sync),
    ("tail", files::tail),
    ("tar", tar::tar),
    ("test", test::test),
    ("top", basic::top),
    ("touch", files::touch),
    ("true", basic::true_),
    ("wc", files::wc),
];

/// Every applet's name, sorted: the links an image puts beside the toolbox.
pub const NAMES: &[&str] = &[
    "[", "basename", "cat", "dd", "dirname", "echo", "env", "false", "grep", "head", "hostname",
    "httpd", "ls", "mkdir", "pause", "pgrep", "pidof", "printenv", "pwd", "rm", "seq", "sh",
    "sleep", "sync", "tail", "tar", "test", "top", "touch", "true", "wc",
];

pub fn find(name: &str) -> Option<Applet> {
    APPLETS
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, run)| *run)
}

/// Opens a file an applet reads, with `-` and `/dev/stdin` its input and `/dev/null`,
/// `/dev/zero` understood (a guest has no devices).
pub fn open_input(ctx: &Ctx, io: &Io, name: &str) -> io::Result<Box<dyn Read>> {
    Ok(match name {
        "-" | "/dev/stdin" => Box::new(io.input.clone()),
        "/dev/null" => Box::new(io::empty()),
        "/dev/zero" => Box::new(io::repeat(0)),
        _ => {
            let path = ctx.path(name);
            let file = File::open(&path)?;
            if file.metadata().map(|m| m.is_dir()).unwrap_or(false) {
                return Err(io::Error::new(
                    io::ErrorKind::IsADirectory,
                    "Is a directory",
                ));
            }
            Box::new(file)
        }
    })
}

/// Opens a file an applet (or a redirection) writes: `/dev/null`, `/dev/stdout` and
/// `/dev/stderr` understood; others created, and truncated unless `append`.
pub fn open_output(ctx: &Ctx, io: &Io, name: &str, append: bool) -> io::Result<Sink> {
    Ok(match name {
        "/dev/null" | "/dev/zero" => Sink::Null,
        "/dev/stdout" | "-" => io.out.clone(),
        "/dev/stderr" => io.err.clone(),
        _ => {
            let mut o = OpenOptions::new();
            o.create(true);
            if append {
                o.append(true);
            } else {
                o.write(true).truncate(true);
            }
            Sink::File(Rc::new(RefCell::new(o.open(ctx.path(name))?)))
        }
    })
}

/// Flags with their values, and operands.
pub type Opts<'a> = (Vec<(char, Option<&'a str>)>, Vec<&'a str>);

/// Splits leading single-letter flags (`-la`, `-n` `5`) from operands: `valued` flags take a
/// value (attached or the next argument). Stops at `--` or the first operand. Returns the
/// flags in order with their values, and the operands; or the bad flag.
pub fn getopt<'a>(args: &'a [String], flags: &str, valued: &str) -> Result<Opts<'a>, String> {
    let mut opts = Vec::new();
    let mut i = 0;
    while i < args.len() {
        let a = args[i].as_str();
        if a == "--" {
            i += 1;
            break;
        }
        if a.len() < 2 || !a.starts_with('-') {
            break;
        }
        let body = &a[1..];
        for (at, c) in body.char_indices() {
            if valued.contains(c) {
                let rest = &body[at + c.len_utf8()..];
                if !rest.is_empty() {
                    opts.push((c, Some(rest)));
                } else {
                    i += 1;
                    match args.get(i) {
                        Some(v) => opts.push((c, Some(v.as_str()))),
                        None => return Err(format!("option requires an argument -- '{c}'")),
                    }
                }
                break;
            } else if flags.contains(c) {
                opts.push((c, None));
            } else {
                return Err(format!("invalid option -- '{c}'"));
            }
        }
        i += 1;
    }
    let operands = args[i.min(args.len())..]
        .iter()
        .map(String::as_str)
        .collect();
    Ok((opts, operands))
}

/// Runs `applet` with its operands and an error for bad flags, in busybox's shape.
pub fn bad_usage(io: &mut Io, applet: &str, message: &str) -> i32 {
    io.error(applet, message);
    1
}

#[cfg(test)]
pub(crate) mod testing {
    use super::*;
    use std::path::Path;

    /// Runs `argv` in `cwd` with `input`; returns (code, stdout, stderr).
    pub fn run_in(cwd: &Path, argv: &[&str], input: &[u8]) -> (i32, String, String) {
        let (mut io, out, err) = Io::buffers(input);
        let mut ctx = Ctx::new_in(cwd);
        ctx.set_var("HOSTNAME", "testhost");
        ctx.export("HOSTNAME");
        let argv: Vec<String> = argv.iter().map(|s| s.to_string()).collect();
        let code = crate::dispatch(&mut ctx, &mut io, &argv);
        let out = String::from_utf8_lossy(&out.borrow()).into_owned();
        let err = String::from_utf8_lossy(&err.borrow()).into_owned();
        (code, out, err)
    }

    pub fn run(argv: &[&str], input: &[u8]) -> (i32, String, String) {
        run_in(Path::new("/"), argv, input)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_table_agree() {
        let mut table: Vec<&str> = APPLETS.iter().map(|(n, _)| *n).collect();
        table.sort();
        assert_eq!(table, NAMES);
    }

    #[test]
    fn getopt_splits_flags() {
        let args: Vec<String> = ["-la", "-n", "5", "-c3", "x", "-y"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let (opts, rest) = getopt(&args, "la", "nc").unwrap();
        assert_eq!(
            opts,
            vec![('l', None), ('a', None), ('n', Some("5")), ('c', Some("3"))]
        );
        assert_eq!(rest, vec!["x", "-y"]);
        assert!(getopt(&args, "l", "").is_err());
        assert!(getopt(&["-n".to_string()], "", "n").is_err());
    }
}
