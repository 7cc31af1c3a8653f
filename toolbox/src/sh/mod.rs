//! `sh`: a small POSIX-style shell whose commands are the toolbox's applets and its own
//! builtins, all run in-process (a Wasm guest cannot fork). A pipe runs its commands one after
//! the other, each reading what the previous one wrote into a buffer; `$(…)` runs into a
//! buffer too. Output goes out as each command writes it.

use std::collections::HashMap;
use std::io::Write;
use std::rc::Rc;

pub mod arith;
pub mod parse;

use parse::{Command, Compound, List, ParamOp, ParseError, Part, Pipeline, RedirKind, Word};

use crate::applets::{self, open_output};
use crate::{errtext, Ctx, Io, Sink, Source};

/// How deeply shells, functions, `eval`, `.`, subshells and `$(…)` may nest while running.
const MAX_CALLS: u32 = 24;

/// How deeply commands may nest while running (compound commands in functions in …): the
/// bound keeps the recursion inside a Wasm guest's 1 MiB stack.
const MAX_DEPTH: u32 = 100;

/// A way out of the normal flow.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Flow {
    Break(u32),
    Continue(u32),
    Return(i32),
    Exit(i32),
}

type R = Result<i32, Flow>;

/// The shell's own state (the variables are the [`Ctx`]'s).
#[derive(Clone, Default)]
pub struct Shell {
    pub status: i32,
    pub arg0: String,
    pub params: Vec<String>,
    funcs: HashMap<String, Rc<Command>>,
    errexit: bool,
    xtrace: bool,
    /// Inside an `if`/`while` condition or a `&&`/`||`/`!` left side: `set -e` does not apply.
    cond: u32,
    calls: u32,
    depth: u32,
    loops: u32,
    /// The status of the last `$(…)` of the command being expanded.
    subst_status: Option<i32>,
}

/// The `sh` applet: `sh -c SCRIPT [ARG0 ARGS...]`, `sh FILE [ARGS...]`, or commands from stdin
/// (a prompt only when stdin is a terminal).
pub fn sh(ctx: &mut Ctx, io: &mut Io, argv: &[String]) -> i32 {
    if ctx.depth >= 8 {
        io.error("sh", "too many nested shells");
        return 2;
    }
    // A nested shell is another process: what it changes stays in it.
    let mut inner = ctx.clone();
    inner.depth += 1;
    let code = run_sh(&mut inner, io, argv);
    ctx.steps = inner.steps;
    io.flush();
    code
}

fn run_sh(ctx: &mut Ctx, io: &mut Io, argv: &[String]) -> i32 {
    let mut shell = Shell {
        arg0: argv.first().cloned().unwrap_or_else(|| "sh".into()),
        ..Shell::default()
    };
    let mut args = argv.get(1..).unwrap_or_default();
    let mut command: Option<String> = None;
    let mut from_stdin = false;
    while let Some(a) = args.first() {
        if a == "--" {
            args = &args[1..];
            break;
        }
        let Some(flags) = a.strip_prefix('-').or_else(|| a.strip_prefix('+')) else {
            break;
        };
        if flags.is_empty() {
            args = &args[1..];
            break;
        }
        let on = a.starts_with('-');
        args = &args[1..];
        for f in flags.chars() {
            match f {
                'c' if on => {
                    let Some(s) = args.first() else {
                        io.error("sh", "-c requires an argument");
                        return 2;
                    };
                    command = Some(s.clone());
                    args = &args[1..];
                }
                'e' => shell.errexit = on,
                'x' => shell.xtrace = on,
                's' => from_stdin = true,
                'i' | 'l' | 'm' | 'u' | 'f' | 'v' | 'o' => {}
                _ => {
                    io.error("sh", format_args!("-{f}: invalid option"));
                    return 2;
                }
            }
        }
    }
    if let Some(script) = command {
        if let Some((zero, rest)) = args.split_first() {
            shell.arg0 = zero.clone();
            shell.params = rest.to_vec();
        }
        return shell.run_text(ctx, io, &script);
    }
    if !from_stdin {
        if let Some((file, rest)) = args.split_first() {
            shell.arg0 = file.clone();
            shell.params = rest.to_vec();
            return match std::fs::read(ctx.path(file)) {
                Ok(bytes) => shell.run_text(ctx, io, &String::from_utf8_lossy(&bytes)),
                Err(e) => {
                    io.error("sh", format_args!("can't open '{file}': {}", errtext(&e)));
                    127
                }
            };
        }
    }
    shell.params = args.to_vec();
    shell.run_input(ctx, io)
}

impl Shell {
    /// Runs a whole script: a syntax error anywhere runs nothing and is status 2.
    pub fn run_text(&mut self, ctx: &mut Ctx, io: &mut Io, text: &str) -> i32 {
        match parse::parse(text) {
            Ok(list) => match self.list(ctx, io, &list) {
                Ok(s) => s,
                Err(Flow::Exit(n) | Flow::Return(n)) => n,
                Err(_) => self.status,
            },
            Err(ParseError::Incomplete(m) | ParseError::Syntax(m)) => {
                io.error("sh", format_args!("syntax error: {m}"));
                2
            }
        }
    }

    /// Reads commands from the input line by line and runs each as soon as it is complete.
    fn run_input(&mut self, ctx: &mut Ctx, io: &mut Io) -> i32 {
        let interactive = io.input.is_terminal();
        let mut text = String::new();
        loop {
            if interactive && text.is_empty() {
                let _ = write!(io.err, "$ ");
                let _ = io.err.flush();
            }
            let line = match io.input.read_line() {
                Ok(l) => l,
                Err(e) => {
                    io.error("sh", format_args!("read error: {}", errtext(&e)));
                    return 1;
                }
            };
            let Some(line) = line else {
                if text.trim().is_empty() {
                    return self.status;
                }
                // What is left cannot be completed any more.
                if let Err(ParseError::Incomplete(m) | ParseError::Syntax(m)) = parse::parse(&text)
                {
                    io.error("sh", format_args!("syntax error: {m}"));
                    return 2;
                }
                return self.run_text(ctx, io, &text);
            };
            text.push_str(&String::from_utf8_lossy(&line));
            match parse::parse(&text) {
                Err(ParseError::Incomplete(_)) => continue,
                Err(ParseError::Syntax(m)) => {
                    io.error("sh", format_args!("syntax error: {m}"));
                    text.clear();
                    self.status = 2;
                    if !interactive {
                        return 2;
                    }
                }
                Ok(list) => {
                    text.clear();
                    match self.list(ctx, io, &list) {
                        Ok(_) => {}
                        Err(Flow::Exit(n)) => return n,
                        Err(_) => {}
                    }
                }
            }
        }
    }

    fn list(&mut self, ctx: &mut Ctx, io: &mut Io, list: &List) -> R {
        let mut status = 0;
        for item in &list.items {
            status = self.pipeline(ctx, io, &item.first, !item.rest.is_empty())?;
            self.status = status;
            let mut last_bang = item.first.bang;
            for (i, (and, p)) in item.rest.iter().enumerate() {
                if (*and && status == 0) || (!*and && status != 0) {
                    let last = i + 1 == item.rest.len();
                    status = self.pipeline(ctx, io, p, !last)?;
                    self.status = status;
                    last_bang = p.bang;
                    if !last {
                        continue;
                    }
                    if self.errexit && self.cond == 0 && status != 0 && !last_bang {
                        return Err(Flow::Exit(status));
                    }
                }
            }
            if item.rest.is_empty() && self.errexit && self.cond == 0 && status != 0 && !last_bang {
                return Err(Flow::Exit(status));
            }
        }
        Ok(status)
    }

    fn pipeline(&mut self, ctx: &mut Ctx, io: &mut Io, p: &Pipeline, cond: bool) -> R {
        let cond = cond || p.bang;
        if cond {
            self.cond += 1;
        }
        let r = self.pipeline_inner(ctx, io, p);
        if cond {
            self.cond -= 1;
        }
        let status = r?;
        Ok(if p.bang {
            i32::from(status == 0)
        } else {
            status
        })
    }

    fn pipeline_inner(&mut self, ctx: &mut Ctx, io: &mut Io, p: &Pipeline) -> R {
        if p.cmds.len() == 1 {
            return self.command(ctx, io, &p.cmds[0]);
        }
        // One command after the other, each in a subshell, through buffers.
        let mut input = io.input.clone();
        let mut status = 0;
        for (i, cmd) in p.cmds.iter().enumerate() {
            let last = i + 1 == p.cmds.len();
            let mut sub = io.clone();
            sub.input = input.clone();
            let buffer = if last {
                None
            } else {
                let (sink, buf) = Sink::buffer();
                sub.out = sink;
                Some(buf)
            };
            status = self.subshell(ctx, |sh, ctx| sh.command(ctx, &mut sub, cmd))?;
            if let Some(buf) = buffer {
                input = Source::buffer(std::mem::take(&mut *buf.borrow_mut()));
            }
        }
        Ok(status)
    }

    /// Runs `f` as a subshell: its variable, directory and function changes are undone, its
    /// `exit` ends only it.
    fn subshell<F>(&mut self, ctx: &mut Ctx, f: F) -> R
    where
        F: FnOnce(&mut Shell, &mut Ctx) -> R,
    {
        if self.calls >= MAX_CALLS {
            let _ = writeln!(std::io::stderr(), "sh: too deeply nested");
            return Err(Flow::Exit(2));
        }
        let saved_ctx = ctx.clone();
        let saved = self.clone();
        self.calls += 1;
        let r = f(self, ctx);
        let steps = ctx.steps;
        *ctx = saved_ctx;
        ctx.steps = steps;
        *self = saved;
        match r {
            Ok(s) | Err(Flow::Exit(s)) | Err(Flow::Return(s)) => Ok(s),
            // A `break` cannot leave a subshell; a spent step budget ends everything.
            Err(_) => Ok(self.status),
        }
        .and_then(|s| match ctx.steps {
            Some(0) => Err(Flow::Exit(s)),
            _ => Ok(s),
        })
    }

    fn command(&mut self, ctx: &mut Ctx, io: &mut Io, cmd: &Command) -> R {
        if self.depth >= MAX_DEPTH {
            io.error("sh", "too deeply nested");
            return Err(Flow::Exit(2));
        }
        self.depth += 1;
        let r = self.command_inner(ctx, io, cmd);
        self.depth -= 1;
        r
    }

    fn command_inner(&mut self, ctx: &mut Ctx, io: &mut Io, cmd: &Command) -> R {
        match cmd {
            Command::Simple(s) => self.simple(ctx, io, s),
            Command::Function(name, body) => {
                self.funcs.insert(name.clone(), body.clone());
                Ok(0)
            }
            Command::Compound(c, redirs) => {
                let mut io = match self.redirect(ctx, io, redirs) {
                    Ok(io) => io,
                    Err(status) => return Ok(status),
                };
                let r = self.compound(ctx, &mut io, c);
                io.flush();
                r
            }
        }
    }

    fn compound(&mut self, ctx: &mut Ctx, io: &mut Io, c: &Compound) -> R {
        match c {
            Compound::Brace(list) => self.list(ctx, io, list),
            Compound::Subshell(list) => self.subshell(ctx, |sh, ctx| sh.list(ctx, io, list)),
            Compound::If(arms, otherwise) => {
                for (cond, body) in arms {
                    self.cond += 1;
                    let c = self.list(ctx, io, cond);
                    self.cond -= 1;
                    if c? == 0 {
                        return self.list(ctx, io, body);
                    }
                }
                match otherwise {
                    Some(list) => self.list(ctx, io, list),
                    None => Ok(0),
                }
            }
            Compound::Loop { until, cond, body } => {
                let mut status = 0;
                self.loops += 1;
                let r = loop {
                    self.cond += 1;
                    let c = self.list(ctx, io, cond);
                    self.cond -= 1;
                    match c {
                        Ok(c) if (c == 0) == *until => break Ok(status),
                        Ok(_) => {}
                        Err(e) => break Err(e),
                    }
                    match self.list(ctx, io, body) {
                        Ok(s) => status = s,
                        Err(Flow::Break(n)) if n > 1 => break Err(Flow::Break(n - 1)),
                        Err(Flow::Break(_)) => break Ok(status),
                        Err(Flow::Continue(n)) if n > 1 => break Err(Flow::Continue(n - 1)),
                        Err(Flow::Continue(_)) => {}
                        Err(e) => break Err(e),
                    }
                };
                self.loops -= 1;
                r
            }
            Compound::For { var, items, body } => {
                let values = match items {
                    Some(words) => match self.expand_words(ctx, io, words) {
                        Ok(v) => v,
                        Err(status) => return Ok(status),
                    },
                    None => self.params.clone(),
                };
                let mut status = 0;
                self.loops += 1;
                let mut r = Ok(0);
                for v in values {
                    ctx.set_var(var, &v);
                    match self.list(ctx, io, body) {
                        Ok(s) => status = s,
                        Err(Flow::Break(n)) if n > 1 => {
                            r = Err(Flow::Break(n - 1));
                            break;
                        }
                        Err(Flow::Break(_)) => break,
                        Err(Flow::Continue(n)) if n > 1 => {
                            r = Err(Flow::Continue(n - 1));
                            break;
                        }
                        Err(Flow::Continue(_)) => {}
                        Err(e) => {
                            r = Err(e);
                            break;
                        }
                    }
                }
                self.loops -= 1;
                r.map(|_| status)
            }
            Compound::Case(word, arms) => {
                let subject = match self.expand_string(ctx, io, word) {
                    Ok(s) => s,
                    Err(status) => return Ok(status),
                };
                for (patterns, body) in arms {
                    for p in patterns {
                        let pattern = match self.expand_pattern(ctx, io, p) {
                            Ok(p) => p,
                            Err(status) => return Ok(status),
                        };
                        if glob_match(&pattern, &subject) {
                            return self.list(ctx, io, body);
                        }
                    }
                }
                Ok(0)
            }
        }
    }

    /// Counts a command against the step budget, if there is one.
    fn step(&mut self, ctx: &mut Ctx) -> Result<(), Flow> {
        if let Some(left) = &mut ctx.steps {
            if *left == 0 {
                return Err(Flow::Exit(124));
            }
            *left -= 1;
        }
        Ok(())
    }

    fn simple(&mut self, ctx: &mut Ctx, io: &mut Io, cmd: &parse::Simple) -> R {
        self.step(ctx)?;
        self.subst_status = None;
        let fields = match self.expand_words(ctx, io, &cmd.words) {
            Ok(f) => f,
            Err(status) => return Ok(status),
        };
        let mut assigns = Vec::new();
        for (name, value) in &cmd.assigns {
            match self.expand_string(ctx, io, value) {
                Ok(v) => assigns.push((name.clone(), v)),
                Err(status) => return Ok(status),
            }
        }
        if self.xtrace {
            let mut line: Vec<String> = assigns.iter().map(|(k, v)| format!("{k}={v}")).collect();
            line.extend(fields.iter().cloned());
            let _ = writeln!(io.err, "+ {}", line.join(" "));
        }
        let mut io = match self.redirect(ctx, io, &cmd.redirs) {
            Ok(io) => io,
            Err(status) => return Ok(status),
        };
        let Some(name) = fields.first() else {
            for (k, v) in assigns {
                ctx.set_var(&k, &v);
            }
            return Ok(self.subst_status.unwrap_or(0));
        };
        // Assignments before a command are its environment only.
        let saved: Vec<(String, Option<String>, bool)> = assigns
            .iter()
            .map(|(k, _)| {
                (
                    k.clone(),
                    ctx.vars.get(k).cloned(),
                    ctx.exported.contains(k),
                )
            })
            .collect();
        for (k, v) in &assigns {
            ctx.set_var(k, v);
            ctx.export(k);
        }
        let r = self.run(ctx, &mut io, name, &fields);
        for (k, old, exported) in saved {
            match old {
                Some(v) => ctx.set_var(&k, &v),
                None => {
                    ctx.vars.remove(&k);
                }
            }
            if !exported {
                ctx.exported.remove(&k);
            }
        }
        io.flush();
        r
    }

    /// Runs a function, builtin or applet.
    fn run(&mut self, ctx: &mut Ctx, io: &mut Io, name: &str, argv: &[String]) -> R {
        if let Some(body) = self.funcs.get(name).cloned() {
            if self.calls >= MAX_CALLS {
                io.error("sh", format_args!("{name}: function nesting too deep"));
                return Ok(2);
            }
            let saved = std::mem::replace(&mut self.params, argv[1..].to_vec());
            self.calls += 1;
            let r = self.command(ctx, io, &body);
            self.calls -= 1;
            self.params = saved;
            return match r {
                Err(Flow::Return(n)) => Ok(n),
                other => other,
            };
        }
        if let Some(r) = self.builtin(ctx, io, name, argv) {
            return r;
        }
        match crate::applet_name(name).and_then(applets::find) {
            Some(applet) => {
                let code = applet(ctx, io, argv);
                io.flush();
                match ctx.steps {
                    Some(0) => Err(Flow::Exit(code)),
                    _ => Ok(code),
                }
            }
            None => {
                io.error("sh", format_args!("{name}: not found"));
                Ok(127)
            }
        }
    }

    fn builtin(&mut self, ctx: &mut Ctx, io: &mut Io, name: &str, argv: &[String]) -> Option<R> {
        let args = &argv[1..];
        let number = |io: &mut Io, s: Option<&String>, default: i32| -> Result<i32, ()> {
            match s {
                None => Ok(default),
                Some(s) => s.parse::<i32>().map_err(|_| {
                    io.error("sh", format_args!("{name}: Illegal number: {s}"));
                }),
            }
        };
        Some(match name {
            ":" => Ok(0),
            "exit" => match number(io, args.first(), self.status) {
                Ok(n) => Err(Flow::Exit(n & 0xff)),
                Err(()) => Err(Flow::Exit(2)),
            },
            "return" => match number(io, args.first(), self.status) {
                Ok(n) => Err(Flow::Return(n & 0xff)),
                Err(()) => Ok(2),
            },
            "break" | "continue" => {
                let n = match number(io, args.first(), 1) {
                    Ok(n) if n >= 1 => n as u32,
                    _ => return Some(Ok(2)),
                };
                if self.loops == 0 {
                    Ok(0)
                } else if name == "break" {
                    Err(Flow::Break(n))
                } else {
                    Err(Flow::Continue(n))
                }
            }
            "cd" => Ok(self.cd(ctx, io, args)),
            "export" | "readonly" | "local" => {
                for a in args {
                    let (k, v) = match a.split_once('=') {
                        Some((k, v)) => (k, Some(v)),
                        None => (a.as_str(), None),
                    };
                    if k == "-p" || k == "-n" {
                        continue;
                    }
                    if !parse::is_name(k) {
                        io.error("sh", format_args!("{name}: {k}: bad variable name"));
                        return Some(Ok(1));
                    }
                    if let Some(v) = v {
                        ctx.set_var(k, v);
                    }
                    if name == "export" {
                        ctx.export(k);
                    }
                }
                if args.is_empty() && name == "export" {
                    let mut text = String::new();
                    for (k, v) in ctx.environment() {
                        text.push_str(&format!("export {k}='{}'\n", v.replace('\'', "'\\''")));
                    }
                    let _ = io.out.write_all(text.as_bytes());
                }
                Ok(0)
            }
            "unset" => {
                for a in args.iter().filter(|a| !a.starts_with('-')) {
                    ctx.vars.remove(a);
                    ctx.exported.remove(a);
                    self.funcs.remove(a);
                }
                Ok(0)
            }
            "set" => Ok(self.set(ctx, io, args)),
            "shift" => match number(io, args.first(), 1) {
                Ok(n) if n >= 0 && (n as usize) <= self.params.len() => {
                    self.params.drain(..n as usize);
                    Ok(0)
                }
                _ => Ok(1),
            },
            "read" => Ok(self.read(ctx, io, args)),
            "eval" => self.nested(ctx, io, &args.join(" ")),
            "." | "source" => {
                let Some(file) = args.first() else {
                    io.error("sh", ".: filename argument required");
                    return Some(Ok(2));
                };
                match std::fs::read(ctx.path(file)) {
                    Ok(b) => self.nested(ctx, io, &String::from_utf8_lossy(&b)),
                    Err(e) => {
                        io.error(
                            "sh",
                            format_args!(".: can't open '{file}': {}", errtext(&e)),
                        );
                        Ok(2)
                    }
                }
            }
            "exec" => {
                if args.is_empty() {
                    return Some(Ok(0));
                }
                match self.run(ctx, io, &args[0], args) {
                    Ok(n) | Err(Flow::Exit(n)) => Err(Flow::Exit(n)),
                    other => other,
                }
            }
            "command" => {
                let (verbose, rest) = match args.first().map(String::as_str) {
                    Some("-v" | "-V") => (true, &args[1..]),
                    _ => (false, args),
                };
                if verbose {
                    let mut code = 0;
                    for n in rest {
                        if self.funcs.contains_key(n) || is_builtin(n) || applets::find(n).is_some()
                        {
                            let _ = writeln!(io.out, "{n}");
                        } else {
                            code = 1;
                        }
                    }
                    Ok(code)
                } else if rest.is_empty() {
                    Ok(0)
                } else {
                    let saved = std::mem::take(&mut self.funcs);
                    let r = self.run(ctx, io, &rest[0], rest);
                    self.funcs = saved;
                    r
                }
            }
            "type" | "which" => {
                let mut code = 0;
                for n in args {
                    if self.funcs.contains_key(n) {
                        let _ = writeln!(io.out, "{n} is a function");
                    } else if is_builtin(n) {
                        let _ = writeln!(io.out, "{n} is a shell builtin");
                    } else if applets::find(n).is_some() {
                        let _ = writeln!(io.out, "{n} is /bin/{n}");
                    } else {
                        let _ = writeln!(io.err, "{n}: not found");
                        code = 1;
                    }
                }
                Ok(code)
            }
            "wait" | "trap" | "umask" | "ulimit" | "times" | "hash" | "alias" => Ok(0),
            _ => return None,
        })
    }

    /// `eval` and `.`: a script run in this shell, nested.
    fn nested(&mut self, ctx: &mut Ctx, io: &mut Io, text: &str) -> R {
        if self.calls >= MAX_CALLS {
            io.error("sh", "eval nesting too deep");
            return Ok(2);
        }
        match parse::parse(text) {
            Ok(list) => {
                self.calls += 1;
                let r = self.list(ctx, io, &list);
                self.calls -= 1;
                r
            }
            Err(ParseError::Incomplete(m) | ParseError::Syntax(m)) => {
                io.error("sh", format_args!("syntax error: {m}"));
                Ok(2)
            }
        }
    }

    fn cd(&mut self, ctx: &mut Ctx, io: &mut Io, args: &[String]) -> i32 {
        let target = match args
            .iter()
            .find(|a| !a.starts_with('-') || a.as_str() == "-")
        {
            Some(t) if t == "-" => ctx.var("OLDPWD").unwrap_or("/").to_owned(),
            Some(t) => t.clone(),
            None => ctx.var("HOME").unwrap_or("/").to_owned(),
        };
        let path = ctx.path(&target);
        match std::fs::metadata(&path) {
            Ok(m) if m.is_dir() => {
                let old = ctx.cwd.display().to_string();
                ctx.set_var("OLDPWD", &old);
                ctx.cwd = path;
                let new = ctx.cwd.display().to_string();
                ctx.set_var("PWD", &new);
                0
            }
            Ok(_) => {
                io.error(
                    "sh",
                    format_args!("cd: can't cd to {target}: Not a directory"),
                );
                2
            }
            Err(e) => {
                io.error(
                    "sh",
                    format_args!("cd: can't cd to {target}: {}", errtext(&e)),
                );
                2
            }
        }
    }

    fn set(&mut self, ctx: &mut Ctx, io: &mut Io, args: &[String]) -> i32 {
        if args.is_empty() {
            let mut text = String::new();
            for (k, v) in &ctx.vars {
                text.push_str(&format!("{k}='{}'\n", v.replace('\'', "'\\''")));
            }
            let _ = io.out.write_all(text.as_bytes());
            return 0;
        }
        let mut i = 0;
        while i < args.len() {
            let a = &args[i];
            if a == "--" {
                self.params = args[i + 1..].to_vec();
                return 0;
            }
            let on = a.starts_with('-');
            let Some(flags) = a.strip_prefix('-').or_else(|| a.strip_prefix('+')) else {
                self.params = args[i..].to_vec();
                return 0;
            };
            for f in flags.chars() {
                match f {
                    'e' => self.errexit = on,
                    'x' => self.xtrace = on,
                    'o' => i += 1,
                    'u' | 'f' | 'v' | 'm' | 'C' | 'a' | 'b' | 'h' | 'n' => {}
                    _ => {
                        io.error("sh", format_args!("set: -{f}: invalid option"));
                        return 2;
                    }
                }
            }
            i += 1;
        }
        0
    }

    /// `read [-r] [-p PROMPT] NAME...`: a line of the input, split on blanks.
    fn read(&mut self, ctx: &mut Ctx, io: &mut Io, args: &[String]) -> i32 {
        let mut raw = false;
        let mut names = Vec::new();
        let mut i = 0;
        while i < args.len() {
            match args[i].as_str() {
                "-r" => raw = true,
                "-p" => {
                    i += 1;
                    if let Some(p) = args.get(i) {
                        let _ = write!(io.err, "{p}");
                        let _ = io.err.flush();
                    }
                }
                n => names.push(n.to_owned()),
            }
            i += 1;
        }
        if names.is_empty() {
            names.push("REPLY".into());
        }
        let mut line = String::new();
        let mut got_newline = false;
        loop {
            match io.input.read_line() {
                Ok(Some(bytes)) => {
                    let mut s = String::from_utf8_lossy(&bytes).into_owned();
                    if s.ends_with('\n') {
                        s.pop();
                        got_newline = true;
                    }
                    if !raw && s.ends_with('\\') && got_newline {
                        s.pop();
                        line.push_str(&s);
                        got_newline = false;
                        continue;
                    }
                    line.push_str(&s);
                }
                Ok(None) => {}
                Err(e) => {
                    io.error("sh", format_args!("read: {}", errtext(&e)));
                    return 1;
                }
            }
            break;
        }
        if !raw {
            line = line.replace('\\', "");
        }
        let mut rest = line.trim_matches([' ', '\t']);
        for (i, name) in names.iter().enumerate() {
            if !parse::is_name(name) {
                io.error("sh", format_args!("read: '{name}': bad variable name"));
                return 2;
            }
            let value = if i + 1 == names.len() {
                std::mem::take(&mut rest)
            } else {
                let (v, r) = rest.split_once([' ', '\t']).unwrap_or((rest, ""));
                rest = r.trim_start_matches([' ', '\t']);
                v
            };
            ctx.set_var(name, value);
        }
        i32::from(!got_newline && line.is_empty())
    }

    /// Applies redirections to a copy of `io`; on failure, reports and returns the status.
    fn redirect(&mut self, ctx: &mut Ctx, io: &Io, redirs: &[parse::Redir]) -> Result<Io, i32> {
        let mut io = io.clone();
        for r in redirs {
            let target = self.expand_string(ctx, &mut io, &r.target)?;
            match r.kind {
                RedirKind::Out | RedirKind::Append => {
                    let sink = open_output(ctx, &io, &target, r.kind == RedirKind::Append)
                        .map_err(|e| {
                            io.error("sh", format_args!("can't create {target}: {}", errtext(&e)));
                            1
                        })?;
                    match r.fd {
                        1 => io.out = sink,
                        2 => io.err = sink,
                        _ => {}
                    }
                }
                RedirKind::In | RedirKind::InOut => {
                    let source = match target.as_str() {
                        "/dev/null" => Source::Empty,
                        "/dev/stdin" | "-" => io.input.clone(),
                        _ => match std::fs::File::open(ctx.path(&target)) {
                            Ok(f) => Source::File(Rc::new(std::cell::RefCell::new(f))),
                            Err(e) => {
                                io.error(
                                    "sh",
                                    format_args!("can't open '{target}': {}", errtext(&e)),
                                );
                                return Err(1);
                            }
                        },
                    };
                    if r.fd == 0 {
                        io.input = source;
                    }
                }
                RedirKind::DupOut | RedirKind::DupIn => {
                    let sink = match target.as_str() {
                        "1" => io.out.clone(),
                        "2" => io.err.clone(),
                        "-" => Sink::Null,
                        "0" if r.kind == RedirKind::DupIn => continue,
                        _ => {
                            io.error("sh", format_args!("{target}: bad file descriptor"));
                            return Err(1);
                        }
                    };
                    match r.fd {
                        1 => io.out = sink,
                        2 => io.err = sink,
                        0 if target == "-" => io.input = Source::Empty,
                        _ => {}
                    }
                }
            }
        }
        Ok(io)
    }

    // ---- expansion ----

    /// Expands words into fields (splitting what unquoted expansions produce); on an
    /// expansion error, reports it and returns the status.
    fn expand_words(
        &mut self,
        ctx: &mut Ctx,
        io: &mut Io,
        words: &[Word],
    ) -> Result<Vec<String>, i32> {
        let mut out = Vec::new();
        for w in words {
            let mut f = Fields::default();
            self.expand_into(ctx, io, w, &mut f, false)?;
            f.finish(&mut out);
        }
        Ok(out)
    }

    /// Expands a word to one string (assignments, redirection targets, `case`).
    fn expand_string(&mut self, ctx: &mut Ctx, io: &mut Io, w: &Word) -> Result<String, i32> {
        let mut f = Fields::default();
        self.expand_into(ctx, io, w, &mut f, true)?;
        let mut out = Vec::new();
        f.finish(&mut out);
        Ok(out.join(" "))
    }

    /// A `case` pattern: quoted characters match themselves.
    fn expand_pattern(&mut self, ctx: &mut Ctx, io: &mut Io, w: &Word) -> Result<String, i32> {
        let mut s = String::new();
        for part in w {
            match part {
                Part::Lit(t) => s.push_str(t),
                Part::Quoted(t) => s.push_str(&escape_glob(t)),
                other => {
                    let v = self.expand_string(ctx, io, &vec![other.clone()])?;
                    if matches!(
                        other,
                        Part::Param { quoted: true, .. } | Part::Command { quoted: true, .. }
                    ) {
                        s.push_str(&escape_glob(&v));
                    } else {
                        s.push_str(&v);
                    }
                }
            }
        }
        Ok(s)
    }

    fn expand_into(
        &mut self,
        ctx: &mut Ctx,
        io: &mut Io,
        w: &Word,
        f: &mut Fields,
        no_split: bool,
    ) -> Result<(), i32> {
        for (i, part) in w.iter().enumerate() {
            match part {
                Part::Lit(s) => {
                    // `~` at the start of a word is $HOME.
                    if i == 0 && (s == "~" || s.starts_with("~/")) {
                        let home = ctx.var("HOME").unwrap_or("/").to_owned();
                        f.text(&home);
                        f.text(&s[1..]);
                    } else {
                        f.text(s);
                    }
                }
                Part::Quoted(s) => f.text(s),
                Part::Param { name, op, quoted } => {
                    let split = !*quoted && !no_split;
                    if matches!(op, ParamOp::Plain) && (name == "@" || name == "*") {
                        if *quoted && name == "@" {
                            f.many(&self.params);
                        } else if *quoted || no_split {
                            f.text(&self.params.join(" "));
                        } else {
                            for p in self.params.clone() {
                                f.split(&p);
                                f.end_field();
                            }
                        }
                        continue;
                    }
                    let v = self.param(ctx, io, name, op)?;
                    if split {
                        f.split(&v);
                    } else {
                        f.text(&v);
                    }
                }
                Part::Command { list, quoted } => {
                    let (sink, buf) = Sink::buffer();
                    let mut sub = io.clone();
                    sub.out = sink;
                    let status = match self.subshell(ctx, |sh, ctx| sh.list(ctx, &mut sub, list)) {
                        Ok(s) => s,
                        Err(Flow::Exit(s)) => return Err(s),
                        Err(_) => 1,
                    };
                    self.subst_status = Some(status);
                    self.status = status;
                    let mut text = String::from_utf8_lossy(&buf.borrow()).into_owned();
                    while text.ends_with('\n') {
                        text.pop();
                    }
                    if *quoted || no_split {
                        f.text(&text);
                    } else {
                        f.split(&text);
                    }
                }
                Part::Arith { expr, quoted } => {
                    let text = self.expand_string(ctx, io, expr)?;
                    match arith::eval(&text, ctx) {
                        Ok(v) => {
                            if *quoted || no_split {
                                f.text(&v.to_string());
                            } else {
                                f.split(&v.to_string());
                            }
                        }
                        Err(e) => {
                            io.error("sh", e);
                            return Err(2);
                        }
                    }
                }
            }
        }
        Ok(())
    }

    fn param(
        &mut self,
        ctx: &mut Ctx,
        io: &mut Io,
        name: &str,
        op: &ParamOp,
    ) -> Result<String, i32> {
        let value: Option<String> = match name {
            "?" => Some(self.status.to_string()),
            "#" => Some(self.params.len().to_string()),
            "$" => Some("1".into()),
            "!" => None,
            "-" => Some(
                [(self.errexit, 'e'), (self.xtrace, 'x')]
                    .iter()
                    .filter(|(on, _)| *on)
                    .map(|(_, c)| *c)
                    .collect(),
            ),
            "@" | "*" => Some(self.params.join(" ")),
            "0" => Some(self.arg0.clone()),
            n if n.chars().all(|c| c.is_ascii_digit()) => n
                .parse::<usize>()
                .ok()
                .and_then(|i| self.params.get(i.checked_sub(1)?).cloned()),
            n => ctx.var(n).map(str::to_owned),
        };
        let unset = |colon: bool| match &value {
            None => true,
            Some(v) => colon && v.is_empty(),
        };
        Ok(match op {
            ParamOp::Plain => value.unwrap_or_default(),
            ParamOp::Length => value.unwrap_or_default().chars().count().to_string(),
            ParamOp::Default(colon, w) => {
                if unset(*colon) {
                    self.expand_string(ctx, io, w)?
                } else {
                    value.unwrap_or_default()
                }
            }
            ParamOp::Assign(colon, w) => {
                if unset(*colon) {
                    let v = self.expand_string(ctx, io, w)?;
                    if !parse::is_name(name) {
                        io.error("sh", format_args!("${name}: cannot assign in this way"));
                        return Err(2);
                    }
                    ctx.set_var(name, &v);
                    v
                } else {
                    value.unwrap_or_default()
                }
            }
            ParamOp::Alt(colon, w) => {
                if unset(*colon) {
                    String::new()
                } else {
                    self.expand_string(ctx, io, w)?
                }
            }
            ParamOp::Error(colon, w) => {
                if unset(*colon) {
                    let msg = self.expand_string(ctx, io, w)?;
                    let msg = if msg.is_empty() {
                        "parameter not set".to_owned()
                    } else {
                        msg
                    };
                    io.error("sh", format_args!("{name}: {msg}"));
                    return Err(2);
                } else {
                    value.unwrap_or_default()
                }
            }
            ParamOp::TrimPrefix(longest, w) | ParamOp::TrimSuffix(longest, w) => {
                let v = value.unwrap_or_default();
                let pattern = self.expand_pattern(ctx, io, w)?;
                let prefix = matches!(op, ParamOp::TrimPrefix(..));
                trim(&v, &pattern, prefix, *longest)
            }
        })
    }
}

fn is_builtin(name: &str) -> bool {
    [
        ":", "exit", "return", "break", "continue", "cd", "export", "readonly", "local", "unset",
        "set", "shift", "read", "eval", ".", "source", "exec", "command", "type", "which", "wait",
        "trap", "umask", "ulimit", "times", "hash", "alias",
    ]
    .contains(&name)
}

/// Fields being built by an expansion.
#[derive(Default)]
struct Fields {
    done: Vec<String>,
    cur: String,
    /// Whether `cur` is a field (a quoted empty string makes an empty one).
    have: bool,
}

impl Fields {
    fn text(&mut self, s: &str) {
        self.cur.push_str(s);
        self.have = true;
    }

    /// Text split on blanks and newlines (an unquoted expansion).
    fn split(&mut self, s: &str) {
        for c in s.chars() {
            if c == ' ' || c == '\t' || c == '\n' {
                self.end_field();
            } else {
                self.cur.push(c);
                self.have = true;
            }
        }
    }

    fn end_field(&mut self) {
        if self.have {
            self.done.push(std::mem::take(&mut self.cur));
            self.have = false;
        }
    }

    /// `"$@"`: each value its own field, the first joined to what precedes.
    fn many(&mut self, values: &[String]) {
        for (i, v) in values.iter().enumerate() {
            if i > 0 {
                self.end_field();
            }
            self.text(v);
        }
    }

    fn finish(mut self, out: &mut Vec<String>) {
        self.end_field();
        out.append(&mut self.done);
    }
}

fn escape_glob(s: &str) -> String {
    let mut out = String::new();
    for c in s.chars() {
        if matches!(c, '*' | '?' | '[' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// Shell pattern matching: `*`, `?`, `[…]` (with `!`/`^` negation), `\` escapes.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    // Iterative, with one backtrack point for the last `*` (linear enough, no recursion).
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        let step = match p.get(pi) {
            Some('*') => {
                star = Some((pi, ti));
                pi += 1;
                continue;
            }
            Some('?') => Some(pi + 1),
            Some('[') => class_match(&p, pi, t[ti]),
            Some('\\') if pi + 1 < p.len() => (p[pi + 1] == t[ti]).then_some(pi + 2),
            Some(c) => (*c == t[ti]).then_some(pi + 1),
            None => None,
        };
        match step {
            Some(next) => {
                pi = next;
                ti += 1;
            }
            None => match star {
                Some((sp, st)) => {
                    pi = sp + 1;
                    ti = st + 1;
                    star = Some((sp, st + 1));
                }
                None => return false,
            },
        }
    }
    while p.get(pi) == Some(&'*') {
        pi += 1;
    }
    pi == p.len()
}

/// Matches a `[…]` class at `p[start]` against `c`: the index after the class when it
/// matches; a `[` with no closing `]` is a plain character.
fn class_match(p: &[char], start: usize, c: char) -> Option<usize> {
    let mut i = start + 1;
    let negated = matches!(p.get(i), Some('!' | '^'));
    if negated {
        i += 1;
    }
    let mut hit = false;
    let mut first = true;
    loop {
        let &ch = match p.get(i) {
            Some(ch) => ch,
            None => return (c == '[').then_some(start + 1),
        };
        if ch == ']' && !first {
            i += 1;
            break;
        }
        first = false;
        if p.get(i + 1) == Some(&'-') && p.get(i + 2).is_some_and(|e| *e != ']') {
            if ch <= c && c <= p[i + 2] {
                hit = true;
            }
            i += 3;
        } else {
            if ch == c {
                hit = true;
            }
            i += 1;
        }
    }
    (hit != negated).then_some(i)
}

/// `${v#p}`, `${v##p}`, `${v%p}`, `${v%%p}`.
fn trim(v: &str, pattern: &str, prefix: bool, longest: bool) -> String {
    let bounds: Vec<usize> = v
        .char_indices()
        .map(|(i, _)| i)
        .chain(std::iter::once(v.len()))
        .collect();
    let candidates: Box<dyn Iterator<Item = &usize>> = match (prefix, longest) {
        (true, false) | (false, true) => Box::new(bounds.iter()),
        _ => Box::new(bounds.iter().rev()),
    };
    for &b in candidates {
        if prefix && glob_match(pattern, &v[..b]) {
            return v[b..].to_owned();
        }
        if !prefix && glob_match(pattern, &v[b..]) {
            return v[..b].to_owned();
        }
    }
    v.to_owned()
}

#[cfg(test)]
mod tests;
