//! `grep [-qvicnlsFEx] [-e PATTERN] PATTERN [FILE...]` with a small regular expression
//! matcher: `.`, `[…]` (ranges, `^` negation), `*`, `^`, `$`; in extended mode (`-E`) also
//! `+`, `?` and `|` between whole alternatives. No groups or back-references.

use std::io::{Read, Write};

use super::{getopt, open_input};
use crate::{errtext, Ctx, Io};

#[derive(Debug, Clone, PartialEq)]
enum Atom {
    Char(char),
    Any,
    Class(Vec<(char, char)>, bool),
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Rep {
    One,
    Star,
    Plus,
    Opt,
}

#[derive(Debug, Clone)]
struct Branch {
    anchored: bool,
    end: bool,
    items: Vec<(Atom, Rep)>,
}

/// A compiled pattern.
#[derive(Debug, Clone)]
pub struct Regex {
    branches: Vec<Branch>,
    fold: bool,
}

impl Regex {
    /// `whole`: the pattern must match the whole line (`-x`).
    pub fn new(
        pattern: &str,
        extended: bool,
        fixed: bool,
        fold: bool,
        whole: bool,
    ) -> Result<Regex, String> {
        let pattern = if fold {
            pattern.to_lowercase()
        } else {
            pattern.to_owned()
        };
        let alternatives: Vec<&str> = if extended {
            pattern.split('|').collect()
        } else {
            vec![&pattern]
        };
        let branches = alternatives
            .into_iter()
            .map(|p| {
                if fixed {
                    Ok(Branch {
                        anchored: false,
                        end: false,
                        items: p.chars().map(|c| (Atom::Char(c), Rep::One)).collect(),
                    })
                } else {
                    compile(p, extended)
                }
            })
            .map(|b: Result<Branch, String>| {
                b.map(|mut b| {
                    if whole {
                        b.anchored = true;
                        b.end = true;
                    }
                    b
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(Regex { branches, fold })
    }

    pub fn is_match(&self, line: &str) -> bool {
        let text: Vec<char> = if self.fold {
            line.to_lowercase().chars().collect()
        } else {
            line.chars().collect()
        };
        self.branches.iter().any(|b| {
            if b.anchored {
                match_here(&b.items, b.end, &text, 0)
            } else {
                (0..=text.len()).any(|i| match_here(&b.items, b.end, &text, i))
            }
        })
    }
}

fn compile(p: &str, extended: bool) -> Result<Branch, String> {
    let chars: Vec<char> = p.chars().collect();
    let mut i = 0;
    let mut anchored = false;
    let mut end = false;
    let mut items: Vec<(Atom, Rep)> = Vec::new();
    if chars.first() == Some(&'^') {
        anchored = true;
        i = 1;
    }
    while i < chars.len() {
        let c = chars[i];
        i += 1;
        let atom = match c {
            '$' if i == chars.len() => {
                end = true;
                continue;
            }
            '.' => Atom::Any,
            '[' => {
                let mut negated = false;
                if chars.get(i) == Some(&'^') {
                    negated = true;
                    i += 1;
                }
                let mut ranges = Vec::new();
                let mut first = true;
                loop {
                    let Some(&c) = chars.get(i) else {
                        return Err("unmatched [".into());
                    };
                    i += 1;
                    if c == ']' && !first {
                        break;
                    }
                    first = false;
                    if chars.get(i) == Some(&'-') && chars.get(i + 1).is_some_and(|d| *d != ']') {
                        let hi = chars[i + 1];
                        i += 2;
                        ranges.push((c, hi));
                    } else {
                        ranges.push((c, c));
                    }
                }
                Atom::Class(ranges, negated)
            }
            '\\' => {
                let Some(&e) = chars.get(i) else {
                    return Err("trailing backslash (\\)".into());
                };
                i += 1;
                match e {
                    '+' | '?' if !extended => {
                        if let Some(last) = items.last_mut() {
                            last.1 = if e == '+' { Rep::Plus } else { Rep::Opt };
                            continue;
                        }
                        Atom::Char(e)
                    }
                    't' => Atom::Char('\t'),
                    _ => Atom::Char(e),
                }
            }
            '*' | '+' | '?' if !items.is_empty() && (c == '*' || extended) => {
                if let Some(last) = items.last_mut() {
                    last.1 = match c {
                        '*' => Rep::Star,
                        '+' => Rep::Plus,
                        _ => Rep::Opt,
                    };
                }
                continue;
            }
            c => Atom::Char(c),
        };
        items.push((atom, Rep::One));
    }
    Ok(Branch {
        anchored,
        end,
        items,
    })
}

fn atom_matches(a: &Atom, c: char) -> bool {
    match a {
        Atom::Char(x) => *x == c,
        Atom::Any => true,
        Atom::Class(ranges, negated) => {
            ranges.iter().any(|(lo, hi)| *lo <= c && c <= *hi) != *negated
        }
    }
}

fn match_here(items: &[(Atom, Rep)], end: bool, text: &[char], at: usize) -> bool {
    let Some(((atom, rep), rest)) = items.split_first() else {
        return !end || at == text.len();
    };
    let (min, max) = match rep {
        Rep::One => (1, 1),
        Rep::Opt => (0, 1),
        Rep::Star => (0, usize::MAX),
        Rep::Plus => (1, usize::MAX),
    };
    // Greedy: take as many as match, then give back.
    let mut n = 0;
    while n < max && at + n < text.len() && atom_matches(atom, text[at + n]) {
        n += 1;
    }
    if n < min {
        return false;
    }
    loop {
        if match_here(rest, end, text, at + n) {
            return true;
        }
        if n == min {
            return false;
        }
        n -= 1;
    }
}

pub fn grep(ctx: &mut Ctx, io: &mut Io, argv: &[String]) -> i32 {
    let args = argv.get(1..).unwrap_or_default();
    let (opts, mut rest) = match getopt(args, "qvicnlsFExhHwr", "em") {
        Ok(v) => v,
        Err(e) => {
            io.error("grep", e);
            return 2;
        }
    };
    let has = |f: char| opts.iter().any(|(c, _)| *c == f);
    let mut patterns: Vec<&str> = opts
        .iter()
        .filter(|(c, _)| *c == 'e')
        .filter_map(|(_, v)| *v)
        .collect();
    if patterns.is_empty() {
        if rest.is_empty() {
            io.error(
                "grep",
                "usage: grep [-qvicnlsFEx] [-e PATTERN] PATTERN [FILE...]",
            );
            return 2;
        }
        patterns.push(rest.remove(0));
    }
    let (quiet, invert, count, numbers, list, silent) =
        (has('q'), has('v'), has('c'), has('n'), has('l'), has('s'));
    let whole = has('x');
    let mut res = Vec::new();
    for p in patterns {
        match Regex::new(p, has('E'), has('F'), has('i'), whole) {
            Ok(r) => res.push(r),
            Err(e) => {
                io.error("grep", e);
                return 2;
            }
        }
    }
    let names = if rest.is_empty() { vec!["-"] } else { rest };
    let prefix = names.len() > 1 && !has('h') || has('H');
    let mut found = false;
    let mut errors = false;
    for name in &names {
        let mut r = match open_input(ctx, io, name) {
            Ok(r) => r,
            Err(e) => {
                if !silent {
                    io.error("grep", format_args!("{name}: {}", errtext(&e)));
                }
                errors = true;
                continue;
            }
        };
        let mut data = Vec::new();
        if let Err(e) = r.read_to_end(&mut data) {
            if !silent {
                io.error("grep", format_args!("{name}: {}", errtext(&e)));
            }
            errors = true;
            continue;
        }
        let text = String::from_utf8_lossy(&data);
        let mut matches = 0u64;
        let mut out = String::new();
        for (i, line) in text.lines().enumerate() {
            let hit = res.iter().any(|r| r.is_match(line)) != invert;
            if !hit {
                continue;
            }
            matches += 1;
            found = true;
            if quiet {
                return 0;
            }
            if count || list {
                continue;
            }
            if prefix {
                out.push_str(name);
                out.push(':');
            }
            if numbers {
                out.push_str(&format!("{}:", i + 1));
            }
            out.push_str(line);
            out.push('\n');
        }
        if count {
            if prefix {
                out.push_str(&format!("{name}:"));
            }
            out.push_str(&format!("{matches}\n"));
        } else if list && matches > 0 {
            out.push_str(&format!("{name}\n"));
        }
        let _ = io.out.write_all(out.as_bytes());
        let _ = io.out.flush();
    }
    if errors && !(quiet && found) {
        2
    } else if found {
        0
    } else {
        1
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::run;
    use super::Regex;

    fn m(p: &str, s: &str) -> bool {
        Regex::new(p, false, false, false, false)
            .unwrap()
            .is_match(s)
    }

    #[test]
    fn regexes() {
        assert!(m(
            "Read-only file system",
            "touch: x: Read-only file system"
        ));
        assert!(m("^a.c$", "abc"));
        assert!(!m("^a.c$", "abcd"));
        assert!(m("a*b", "b"));
        assert!(m("x[0-9][0-9]*", "ax12"));
        assert!(!m("[^a-z]", "abc"));
        assert!(m("a\\+", "aa"));
        assert!(m("", "anything"));
        assert!(m("$", ""));
        assert!(Regex::new("a+|^z", true, false, false, false)
            .unwrap()
            .is_match("zz"));
        assert!(Regex::new("A", false, false, true, false)
            .unwrap()
            .is_match("a"));
        assert!(Regex::new("[", false, false, false, false).is_err());
        assert!(Regex::new("a\\", false, false, false, false).is_err());
    }

    #[test]
    fn grep_flags() {
        let input = b"one\ntwo\nthree\n";
        assert_eq!(
            run(&["grep", "t"], input),
            (0, "two\nthree\n".into(), String::new())
        );
        assert_eq!(run(&["grep", "-q", "o"], input).1, "");
        assert_eq!(run(&["grep", "-q", "zzz"], input).0, 1);
        assert_eq!(run(&["grep", "-c", "o"], input).1, "2\n");
        assert_eq!(run(&["grep", "-v", "o"], input).1, "three\n");
        assert_eq!(run(&["grep", "-n", "three"], input).1, "3:three\n");
        assert_eq!(run(&["grep", "-x", "tw"], input).0, 1);
        assert_eq!(run(&["grep", "-Fx", "two"], input).0, 0);
        assert_eq!(run(&["grep"], input).0, 2);
        assert_eq!(run(&["grep", "x", "/nonexistent"], input).0, 2);
    }
}
