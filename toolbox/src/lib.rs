//! A multi-call WASI program: `sh`, `echo`, `cat`, `ls`, `sleep`, `top`, … in one module, for
//! the images wasmpod's tests and critest run.
//!
//! The program dispatches on the basename of argv[0] (a `.wasm` suffix stripped), or on argv[1]
//! when argv[0] is the toolbox itself. Every applet reads and writes through an [`Io`] rather
//! than the process's descriptors, so that the shell (a Wasm guest cannot fork) runs them
//! in-process: a pipe or a `$(…)` runs one side after the other through a buffer.
//!
//! Messages follow busybox's wording (`touch: FILE: Read-only file system`), with the errno
//! text of the WASI error. Nothing here panics on any argument or script.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::{self, BufRead, Cursor, Read, Write};
use std::path::{Component, Path, PathBuf};
use std::rc::Rc;

pub mod applets;
pub mod sh;

/// The process's state an applet may read or change: variables and the working directory.
#[derive(Debug, Clone, Default)]
pub struct Ctx {
    /// Shell variables; the exported ones are the environment applets see.
    pub vars: BTreeMap<String, String>,
    pub exported: BTreeSet<String>,
    /// The working directory, kept here (not the process's) and always absolute.
    pub cwd: PathBuf,
    /// How deeply shells are nested in this process (`sh -c 'sh -c …'`, `eval`).
    pub depth: u32,
    /// A cap on the simple commands the shell may still run (none when `None`): lets tests run
    /// arbitrary scripts, endless loops included, to completion.
    pub steps: Option<u64>,
}

impl Ctx {
    /// The context of the process: its environment (all exported) and working directory
    /// (`PWD` when it is absolute, as wasmpod passes the container's `workingDir`; else the
    /// process's, else `/`).
    pub fn from_env() -> Ctx {
        let mut ctx = Ctx::default();
        for (k, v) in std::env::vars_os() {
            if let (Ok(k), Ok(v)) = (k.into_string(), v.into_string()) {
                ctx.exported.insert(k.clone());
                ctx.vars.insert(k, v);
            }
        }
        let pwd = ctx
            .vars
            .get("PWD")
            .filter(|p| p.starts_with('/'))
            .map(PathBuf::from)
            .or_else(|| std::env::current_dir().ok())
            .unwrap_or_else(|| PathBuf::from("/"));
        ctx.cwd = normalize(&pwd);
        ctx
    }

    /// A context with no variables, in `cwd` (tests).
    pub fn new_in(cwd: &Path) -> Ctx {
        Ctx {
            cwd: normalize(cwd),
            ..Ctx::default()
        }
    }

    pub fn var(&self, name: &str) -> Option<&str> {
        self.vars.get(name).map(String::as_str)
    }

    pub fn set_var(&mut self, name: &str, value: &str) {
        self.vars.insert(name.to_owned(), value.to_owned());
    }

    pub fn export(&mut self, name: &str) {
        self.exported.insert(name.to_owned());
    }

    /// The environment an applet sees: the exported variables that are set, sorted by name.
    pub fn environment(&self) -> Vec<(String, String)> {
        self.vars
            .iter()
            .filter(|(k, _)| self.exported.contains(*k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    /// A path an applet was given, resolved against the working directory.
    pub fn path(&self, p: &str) -> PathBuf {
        if p.starts_with('/') {
            normalize(Path::new(p))
        } else {
            normalize(&self.cwd.join(p))
        }
    }
}

/// Removes `.` and resolves `..` lexically (as a shell's logical `cd` does): WASI resolves
/// paths inside preopens, where a `..` leading out of one fails.
pub fn normalize(p: &Path) -> PathBuf {
    let mut out = PathBuf::from("/");
    for c in p.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::ParentDir => {
                out.pop();
            }
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    out
}

/// Where an applet reads its standard input from.
#[derive(Clone, Default)]
pub enum Source {
    /// The process's stdin.
    Stdin,
    /// Nothing (`< /dev/null`).
    #[default]
    Empty,
    /// A buffer: the left side of a pipe, a test's input.
    Buffer(Rc<RefCell<Cursor<Vec<u8>>>>),
    File(Rc<RefCell<File>>),
}

impl Source {
    pub fn buffer(bytes: Vec<u8>) -> Source {
        Source::Buffer(Rc::new(RefCell::new(Cursor::new(bytes))))
    }

    /// Reads one line, its newline included; `None` at the end. Reads no further than the
    /// line from a file, so that a command the shell runs next reads on from there.
    pub fn read_line(&mut self) -> io::Result<Option<Vec<u8>>> {
        let mut line = Vec::new();
        match self {
            Source::Stdin => {
                io::stdin().lock().read_until(b'\n', &mut line)?;
            }
            Source::Empty => {}
            Source::Buffer(b) => {
                b.borrow_mut().read_until(b'\n', &mut line)?;
            }
            Source::File(f) => {
                let mut f = f.borrow_mut();
                let mut byte = [0u8; 1];
                loop {
                    match f.read(&mut byte) {
                        Ok(0) => break,
                        Ok(_) => {
                            line.push(byte[0]);
                            if byte[0] == b'\n' {
                                break;
                            }
                        }
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) => return Err(e),
                    }
                }
            }
        }
        Ok(if line.is_empty() { None } else { Some(line) })
    }

    pub fn is_terminal(&self) -> bool {
        use std::io::IsTerminal;
        matches!(self, Source::Stdin) && io::stdin().is_terminal()
    }
}

impl Read for Source {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Source::Stdin => io::stdin().lock().read(buf),
            Source::Empty => Ok(0),
            Source::Buffer(b) => b.borrow_mut().read(buf),
            Source::File(f) => f.borrow_mut().read(buf),
        }
    }
}

/// What a [`Sink::Buffer`] collects.
pub type Buffer = Rc<RefCell<Vec<u8>>>;

/// Where an applet writes its output or errors.
#[derive(Clone)]
pub enum Sink {
    Stdout,
    Stderr,
    /// Discards (`> /dev/null`).
    Null,
    /// Collects: the left side of a pipe, a `$(…)`, a test.
    Buffer(Rc<RefCell<Vec<u8>>>),
    File(Rc<RefCell<File>>),
}

impl Sink {
    pub fn buffer() -> (Sink, Rc<RefCell<Vec<u8>>>) {
        let b = Rc::new(RefCell::new(Vec::new()));
        (Sink::Buffer(b.clone()), b)
    }
}

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Sink::Stdout => io::stdout().lock().write(buf),
            Sink::Stderr => io::stderr().lock().write(buf),
            Sink::Null => Ok(buf.len()),
            Sink::Buffer(b) => {
                b.borrow_mut().extend_from_slice(buf);
                Ok(buf.len())
            }
            Sink::File(f) => f.borrow_mut().write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Sink::Stdout => io::stdout().lock().flush(),
            Sink::Stderr => io::stderr().lock().flush(),
            Sink::Null | Sink::Buffer(_) => Ok(()),
            Sink::File(f) => f.borrow_mut().flush(),
        }
    }
}

/// An applet's standard streams.
#[derive(Clone)]
pub struct Io {
    pub input: Source,
    pub out: Sink,
    pub err: Sink,
}

impl Io {
    /// The process's own stdin, stdout and stderr.
    pub fn stdio() -> Io {
        Io {
            input: Source::Stdin,
            out: Sink::Stdout,
            err: Sink::Stderr,
        }
    }

    /// Reads `input`, collects output and errors: for tests.
    pub fn buffers(input: &[u8]) -> (Io, Buffer, Buffer) {
        let (out, o) = Sink::buffer();
        let (err, e) = Sink::buffer();
        (
            Io {
                input: Source::buffer(input.to_vec()),
                out,
                err,
            },
            o,
            e,
        )
    }

    /// Writes an error line `applet: message` (write errors are ignored: there is nowhere
    /// left to report them).
    pub fn error(&mut self, applet: &str, message: impl std::fmt::Display) {
        let _ = writeln!(self.err, "{applet}: {message}");
        let _ = self.err.flush();
    }

    pub fn flush(&mut self) {
        let _ = self.out.flush();
        let _ = self.err.flush();
    }
}

/// The text of an I/O error without std's ` (os error N)` suffix: `No such file or directory`,
/// `Read-only file system` (the C library's strerror of the WASI errno).
pub fn errtext(e: &io::Error) -> String {
    let s = e.to_string();
    match s.rfind(" (os error ") {
        Some(i) if s.ends_with(')') => s[..i].to_owned(),
        _ => s,
    }
}

/// The applet a program name selects: the basename without `.wasm`; the toolbox's own names
/// (`toolbox`, `toolbox.p1`, `toolbox.p2`) select none.
pub fn applet_name(argv0: &str) -> Option<&str> {
    let base = argv0.rsplit('/').next().unwrap_or(argv0);
    let base = base.strip_suffix(".wasm").unwrap_or(base);
    if base == "toolbox" || base.starts_with("toolbox.") || base.is_empty() {
        None
    } else {
        Some(base)
    }
}

/// Runs the applet `argv` names (see [`applet_name`]) and returns its exit code.
pub fn dispatch(ctx: &mut Ctx, io: &mut Io, argv: &[String]) -> i32 {
    let mut argv = argv;
    // `toolbox toolbox echo` is `echo`.
    loop {
        let Some(first) = argv.first() else {
            return usage(io);
        };
        match applet_name(first) {
            Some(name) => {
                let code = match applets::find(name) {
                    Some(run) => run(ctx, io, argv),
                    None => {
                        io.error("toolbox", format_args!("applet not found: {name}"));
                        127
                    }
                };
                io.flush();
                return code;
            }
            None => argv = &argv[1..],
        }
    }
}

fn usage(io: &mut Io) -> i32 {
    let _ = writeln!(
        io.out,
        "wasmpod toolbox: a multi-call WASI program.\n\
         Usage: toolbox APPLET [ARGS...], or run it as one of its applets' names.\n\
         Applets: {}",
        applets::NAMES.join(" ")
    );
    io.flush();
    0
}

/// The process entry point: dispatches its own argv with its own stdio.
pub fn main_entry() -> i32 {
    let argv: Vec<String> = std::env::args_os()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let mut ctx = Ctx::from_env();
    let mut io = Io::stdio();
    dispatch(&mut ctx, &mut io, &argv)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_select_applets() {
        assert_eq!(applet_name("/bin/sh"), Some("sh"));
        assert_eq!(applet_name("echo.wasm"), Some("echo"));
        assert_eq!(applet_name("toolbox"), None);
        assert_eq!(applet_name("/x/toolbox.p1.wasm"), None);
        assert_eq!(applet_name(""), None);
    }

    #[test]
    fn dispatches_through_the_toolbox_name() {
        let (mut io, out, _) = Io::buffers(b"");
        let mut ctx = Ctx::new_in(Path::new("/"));
        let argv: Vec<String> = ["toolbox.p1.wasm", "echo", "hi"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(dispatch(&mut ctx, &mut io, &argv), 0);
        assert_eq!(&*out.borrow(), b"hi\n");
        let argv = vec!["toolbox".to_string()];
        assert_eq!(dispatch(&mut ctx, &mut io, &argv), 0);
        let argv = vec!["nosuch".to_string()];
        assert_eq!(dispatch(&mut ctx, &mut io, &argv), 127);
    }

    #[test]
    fn paths_resolve_lexically() {
        let ctx = Ctx::new_in(Path::new("/a/b"));
        assert_eq!(ctx.path("c"), PathBuf::from("/a/b/c"));
        assert_eq!(ctx.path("../../../x"), PathBuf::from("/x"));
        assert_eq!(ctx.path("/y/./z/"), PathBuf::from("/y/z"));
    }
}
