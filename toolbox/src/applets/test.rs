//! `test EXPR` and `[ EXPR ]`: 0 true, 1 false, 2 on a bad expression.

use std::fs;

use crate::{Ctx, Io};

pub fn test(ctx: &mut Ctx, io: &mut Io, argv: &[String]) -> i32 {
    let name = argv
        .first()
        .map(|a| a.rsplit('/').next().unwrap_or(a))
        .unwrap_or("test");
    let mut args: Vec<&str> = argv
        .get(1..)
        .unwrap_or_default()
        .iter()
        .map(String::as_str)
        .collect();
    if name == "[" {
        if args.last() != Some(&"]") {
            io.error("[", "missing ]");
            return 2;
        }
        args.pop();
    }
    let mut p = Parser {
        ctx,
        args: &args,
        pos: 0,
    };
    if args.is_empty() {
        return 1;
    }
    match p.or() {
        Ok(v) if p.pos == args.len() => i32::from(!v),
        Ok(_) => {
            io.error(name, format_args!("{}: unknown operand", args[p.pos]));
            2
        }
        Err(e) => {
            io.error(name, e);
            2
        }
    }
}

struct Parser<'a> {
    ctx: &'a Ctx,
    args: &'a [&'a str],
    pos: usize,
}

const BINARY: &[&str] = &[
    "=", "==", "!=", "-eq", "-ne", "-lt", "-le", "-gt", "-ge", "-nt", "-ot", "<", ">",
];

impl<'a> Parser<'a> {
    fn peek(&self, at: usize) -> Option<&'a str> {
        self.args.get(self.pos + at).copied()
    }

    fn or(&mut self) -> Result<bool, String> {
        let mut v = self.and()?;
        while self.peek(0) == Some("-o") {
            self.pos += 1;
            let r = self.and()?;
            v = v || r;
        }
        Ok(v)
    }

    fn and(&mut self) -> Result<bool, String> {
        let mut v = self.not()?;
        while self.peek(0) == Some("-a") {
            self.pos += 1;
            let r = self.not()?;
            v = v && r;
        }
        Ok(v)
    }

    fn not(&mut self) -> Result<bool, String> {
        // `! X` negates, unless the `!` is itself an operand (`[ ! ]`, `[ ! = x ]`).
        if self.peek(0) == Some("!")
            && self.peek(1).is_some()
            && !self.peek(1).is_some_and(|b| BINARY.contains(&b))
        {
            self.pos += 1;
            return Ok(!self.not()?);
        }
        self.primary()
    }

    fn primary(&mut self) -> Result<bool, String> {
        let Some(a) = self.peek(0) else {
            return Err("argument expected".into());
        };
        if let Some(op) = self.peek(1).filter(|op| BINARY.contains(op)) {
            if let Some(b) = self.peek(2) {
                self.pos += 3;
                return self.binary(a, op, b);
            }
        }
        if a == "(" && self.peek(1).is_some() {
            self.pos += 1;
            let v = self.or()?;
            if self.peek(0) != Some(")") {
                return Err("missing )".into());
            }
            self.pos += 1;
            return Ok(v);
        }
        if a.len() == 2 && a.starts_with('-') && a != "--" {
            if let Some(operand) = self.peek(1) {
                self.pos += 2;
                return self.unary(a, operand);
            }
        }
        self.pos += 1;
        Ok(!a.is_empty())
    }

    fn unary(&self, op: &str, s: &str) -> Result<bool, String> {
        let path = || self.ctx.path(s);
        Ok(match op {
            "-n" => !s.is_empty(),
            "-z" => s.is_empty(),
            "-e" | "-a" => fs::metadata(path()).is_ok(),
            "-f" => fs::metadata(path()).is_ok_and(|m| m.is_file()),
            "-d" => fs::metadata(path()).is_ok_and(|m| m.is_dir()),
            "-s" => fs::metadata(path()).is_ok_and(|m| m.len() > 0),
            "-L" | "-h" => fs::symlink_metadata(path()).is_ok_and(|m| m.is_symlink()),
            "-r" | "-x" => fs::metadata(path()).is_ok(),
            "-w" => fs::metadata(path()).is_ok_and(|m| !m.permissions().readonly()),
            "-b" | "-c" | "-p" | "-S" | "-g" | "-u" | "-k" | "-t" | "-G" | "-O" => false,
            _ => return Err(format!("{op}: unknown operand")),
        })
    }

    fn binary(&self, a: &str, op: &str, b: &str) -> Result<bool, String> {
        let int = |s: &str| -> Result<i64, String> {
            s.trim()
                .parse::<i64>()
                .map_err(|_| format!("invalid number '{s}'"))
        };
        let mtime = |s: &str| {
            fs::metadata(self.ctx.path(s))
                .and_then(|m| m.modified())
                .ok()
        };
        Ok(match op {
            "=" | "==" => a == b,
            "!=" => a != b,
            "<" => a < b,
            ">" => a > b,
            "-eq" => int(a)? == int(b)?,
            "-ne" => int(a)? != int(b)?,
            "-lt" => int(a)? < int(b)?,
            "-le" => int(a)? <= int(b)?,
            "-gt" => int(a)? > int(b)?,
            "-ge" => int(a)? >= int(b)?,
            "-nt" => matches!((mtime(a), mtime(b)), (Some(x), Some(y)) if x > y),
            _ => matches!((mtime(a), mtime(b)), (Some(x), Some(y)) if x < y),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::run;

    fn t(args: &[&str]) -> i32 {
        let mut argv = vec!["test"];
        argv.extend_from_slice(args);
        run(&argv, b"").0
    }

    #[test]
    fn expressions() {
        assert_eq!(t(&[]), 1);
        assert_eq!(t(&["x"]), 0);
        assert_eq!(t(&[""]), 1);
        assert_eq!(t(&["!"]), 0);
        assert_eq!(t(&["!", "x"]), 1);
        assert_eq!(t(&["a", "=", "a"]), 0);
        assert_eq!(t(&["a", "!=", "a"]), 1);
        assert_eq!(t(&["1", "-lt", "2", "-a", "-n", "x"]), 0);
        assert_eq!(t(&["1", "-gt", "2", "-o", "-z", ""]), 0);
        assert_eq!(t(&["x", "-eq", "1"]), 2);
        assert_eq!(t(&["-d", "/"]), 0);
        assert_eq!(t(&["-f", "/"]), 1);
        assert_eq!(t(&["(", "a", "=", "b", ")"]), 1);
        assert_eq!(t(&["(", "a"]), 2);
        assert_eq!(t(&["a", "b"]), 2);
        assert_eq!(run(&["[", "-e", "/"], b"").0, 2);
        assert_eq!(run(&["[", "-e", "/", "]"], b"").0, 0);
        assert_eq!(run(&["[", "]"], b"").0, 1);
    }
}
