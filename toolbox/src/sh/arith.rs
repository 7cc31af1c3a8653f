//! `$((…))`: 64-bit integer arithmetic with C's operators (wrapping, never trapping),
//! variables by name, and the assignments `=`, `+=`, `-=`, `*=`, `/=`, `%=`.

use crate::Ctx;

#[derive(Debug, Clone, PartialEq)]
enum T {
    Num(i64),
    Name(String),
    Op(&'static str),
}

const OPS: &[&str] = &[
    "<<=", ">>=", "**", "<<", ">>", "<=", ">=", "==", "!=", "&&", "||", "+=", "-=", "*=", "/=",
    "%=", "&=", "|=", "^=", "+", "-", "*", "/", "%", "<", ">", "&", "|", "^", "!", "~", "(", ")",
    "?", ":", "=",
];

fn tokens(s: &str) -> Result<Vec<T>, String> {
    let b: Vec<char> = s.chars().collect();
    let mut i = 0;
    let mut out = Vec::new();
    while i < b.len() {
        let c = b[i];
        if c.is_whitespace() {
            i += 1;
        } else if c.is_ascii_digit() {
            let start = i;
            while i < b.len() && b[i].is_ascii_alphanumeric() {
                i += 1;
            }
            let text: String = b[start..i].iter().collect();
            out.push(T::Num(number(&text)?));
        } else if c == '_' || c.is_ascii_alphabetic() {
            let start = i;
            while i < b.len() && (b[i] == '_' || b[i].is_ascii_alphanumeric()) {
                i += 1;
            }
            out.push(T::Name(b[start..i].iter().collect()));
        } else {
            let rest: String = b[i..b.len().min(i + 3)].iter().collect();
            let op = OPS
                .iter()
                .find(|op| rest.starts_with(**op))
                .ok_or_else(|| "arithmetic syntax error".to_string())?;
            i += op.chars().count();
            out.push(T::Op(op));
        }
    }
    Ok(out)
}

/// A C integer constant: decimal, `0x` hex, `0` octal.
fn number(text: &str) -> Result<i64, String> {
    let bad = || format!("arithmetic syntax error: invalid number \"{text}\"");
    let parsed = if let Some(hex) = text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
        u64::from_str_radix(hex, 16).map(|v| v as i64)
    } else if text.len() > 1 && text.starts_with('0') {
        u64::from_str_radix(&text[1..], 8).map(|v| v as i64)
    } else {
        text.parse::<u64>().map(|v| v as i64)
    };
    parsed.map_err(|_| bad())
}

/// The value of a variable in arithmetic: its text as a number, 0 when unset or empty.
fn var_value(ctx: &Ctx, name: &str) -> Result<i64, String> {
    match ctx.var(name).map(str::trim) {
        None | Some("") => Ok(0),
        Some(v) => {
            let (neg, digits) = match v.strip_prefix('-') {
                Some(d) => (true, d),
                None => (false, v.strip_prefix('+').unwrap_or(v)),
            };
            let n = number(digits)?;
            Ok(if neg { n.wrapping_neg() } else { n })
        }
    }
}

pub fn eval(text: &str, ctx: &mut Ctx) -> Result<i64, String> {
    let toks = tokens(text)?;
    if toks.is_empty() {
        return Ok(0);
    }
    let mut p = P {
        toks,
        pos: 0,
        ctx,
        depth: 0,
    };
    let v = p.assign(true)?;
    if p.pos != p.toks.len() {
        return Err("arithmetic syntax error".into());
    }
    Ok(v)
}

struct P<'a> {
    toks: Vec<T>,
    pos: usize,
    ctx: &'a mut Ctx,
    depth: u32,
}

const LEVELS: &[&[&str]] = &[
    &["||"],
    &["&&"],
    &["|"],
    &["^"],
    &["&"],
    &["==", "!="],
    &["<", "<=", ">", ">="],
    &["<<", ">>"],
    &["+", "-"],
    &["*", "/", "%"],
];

impl P<'_> {
    fn peek_op(&self) -> Option<&'static str> {
        match self.toks.get(self.pos) {
            Some(T::Op(o)) => Some(o),
            _ => None,
        }
    }

    /// `live`: whether side effects (assignments) and errors (division by zero) count; the
    /// branch a `?:`, `&&` or `||` skips is parsed without them.
    fn assign(&mut self, live: bool) -> Result<i64, String> {
        self.depth += 1;
        if self.depth > 64 {
            return Err("arithmetic expression too deeply nested".into());
        }
        let r = self.assign_inner(live);
        self.depth -= 1;
        r
    }

    fn assign_inner(&mut self, live: bool) -> Result<i64, String> {
        if let (Some(T::Name(name)), Some(T::Op(op))) = (
            self.toks.get(self.pos).cloned(),
            self.toks.get(self.pos + 1).cloned(),
        ) {
            if op.ends_with('=') && !matches!(op, "==" | "!=" | "<=" | ">=") {
                self.pos += 2;
                let rhs = self.assign(live)?;
                if !live {
                    return Ok(0);
                }
                let v = if op == "=" {
                    rhs
                } else {
                    let cur = var_value(self.ctx, &name)?;
                    apply(&op[..op.len() - 1], cur, rhs)?
                };
                self.ctx.set_var(&name, &v.to_string());
                return Ok(v);
            }
        }
        self.ternary(live)
    }

    fn ternary(&mut self, live: bool) -> Result<i64, String> {
        let c = self.binary(0, live)?;
        if self.peek_op() != Some("?") {
            return Ok(c);
        }
        self.pos += 1;
        let a = self.assign(live && c != 0)?;
        if self.peek_op() != Some(":") {
            return Err("arithmetic syntax error: expecting ':'".into());
        }
        self.pos += 1;
        let b = self.assign(live && c == 0)?;
        Ok(if c != 0 { a } else { b })
    }

    fn binary(&mut self, level: usize, live: bool) -> Result<i64, String> {
        let Some(ops) = LEVELS.get(level) else {
            return self.unary(live);
        };
        let mut left = self.binary(level + 1, live)?;
        while let Some(op) = self.peek_op().filter(|o| ops.contains(o)) {
            self.pos += 1;
            let live_right = match op {
                "&&" => live && left != 0,
                "||" => live && left == 0,
                _ => live,
            };
            let right = self.binary(level + 1, live_right)?;
            left = if live_right || op == "&&" || op == "||" {
                match op {
                    "&&" => i64::from(left != 0 && right != 0),
                    "||" => i64::from(left != 0 || right != 0),
                    _ => apply(op, left, right)?,
                }
            } else {
                0
            };
        }
        Ok(left)
    }

    fn unary(&mut self, live: bool) -> Result<i64, String> {
        self.depth += 1;
        if self.depth > 64 {
            return Err("arithmetic expression too deeply nested".into());
        }
        let r = self.unary_inner(live);
        self.depth -= 1;
        r
    }

    fn unary_inner(&mut self, live: bool) -> Result<i64, String> {
        match self.toks.get(self.pos).cloned() {
            Some(T::Op("-")) => {
                self.pos += 1;
                Ok(self.unary(live)?.wrapping_neg())
            }
            Some(T::Op("+")) => {
                self.pos += 1;
                self.unary(live)
            }
            Some(T::Op("!")) => {
                self.pos += 1;
                Ok(i64::from(self.unary(live)? == 0))
            }
            Some(T::Op("~")) => {
                self.pos += 1;
                Ok(!self.unary(live)?)
            }
            Some(T::Op("(")) => {
                self.pos += 1;
                let v = self.assign(live)?;
                if self.peek_op() != Some(")") {
                    return Err("arithmetic syntax error: missing ')'".into());
                }
                self.pos += 1;
                Ok(v)
            }
            Some(T::Num(n)) => {
                self.pos += 1;
                Ok(n)
            }
            Some(T::Name(name)) => {
                self.pos += 1;
                var_value(self.ctx, &name)
            }
            _ => Err("arithmetic syntax error".into()),
        }
    }
}

fn apply(op: &str, a: i64, b: i64) -> Result<i64, String> {
    Ok(match op {
        "+" => a.wrapping_add(b),
        "-" => a.wrapping_sub(b),
        "*" => a.wrapping_mul(b),
        "/" | "%" if b == 0 => return Err("divide by zero".into()),
        "/" => a.wrapping_div(b),
        "%" => a.wrapping_rem(b),
        "<<" => a.wrapping_shl((b & 63) as u32),
        ">>" => a.wrapping_shr((b & 63) as u32),
        "<" => i64::from(a < b),
        "<=" => i64::from(a <= b),
        ">" => i64::from(a > b),
        ">=" => i64::from(a >= b),
        "==" => i64::from(a == b),
        "!=" => i64::from(a != b),
        "&" => a & b,
        "|" => a | b,
        "^" => a ^ b,
        _ => return Err("arithmetic syntax error".into()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(s: &str) -> Result<i64, String> {
        let mut ctx = Ctx::default();
        ctx.set_var("x", "5");
        eval(s, &mut ctx)
    }

    #[test]
    fn evaluates() {
        assert_eq!(e("1 + 2 * 3"), Ok(7));
        assert_eq!(e("(1 + 2) * 3"), Ok(9));
        assert_eq!(e("x * 2"), Ok(10));
        assert_eq!(e("y + 1"), Ok(1));
        assert_eq!(e("-x % 3"), Ok(-2));
        assert_eq!(e("0x10 + 010"), Ok(24));
        assert_eq!(e("1 < 2 && 2 > 3 || !0"), Ok(1));
        assert_eq!(e("x > 1 ? 7 : 8"), Ok(7));
        assert_eq!(e("0 && 1 / 0"), Ok(0));
        assert_eq!(e("1 / 0"), Err("divide by zero".into()));
        assert_eq!(
            e("-9223372036854775807 - 1 / -1"),
            Ok(-9223372036854775807 + 1)
        );
        assert_eq!(e("(-9223372036854775807 - 1) / -1"), Ok(i64::MIN));
        assert!(e("1 +").is_err());
        assert!(
            e("((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((1").is_err()
        );
        let mut ctx = Ctx::default();
        assert_eq!(eval("i = 3", &mut ctx), Ok(3));
        assert_eq!(eval("i += 2", &mut ctx), Ok(5));
        assert_eq!(ctx.var("i"), Some("5"));
        assert_eq!(eval("", &mut ctx), Ok(0));
    }
}
