//! The shell's parser: a hand-written recursive descent over the POSIX shell grammar (the
//! subset the toolbox runs), lexing on demand so that `$(…)` parses its inside in place.

use std::rc::Rc;

/// How deeply constructs may nest (`$(`, `if`, `(`, …): deeper is a syntax error, not a
/// stack overflow.
pub const MAX_NESTING: u32 = 48;

/// A word: the pieces it is made of, expanded at run time.
pub type Word = Vec<Part>;

#[derive(Debug, Clone, PartialEq)]
pub enum Part {
    /// Unquoted source text.
    Lit(String),
    /// Quoted or escaped text: never split.
    Quoted(String),
    Param {
        name: String,
        op: ParamOp,
        quoted: bool,
    },
    Command {
        list: Rc<List>,
        quoted: bool,
    },
    Arith {
        expr: Word,
        quoted: bool,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub enum ParamOp {
    Plain,
    /// `${#name}`
    Length,
    /// `${name:-word}` (colon: empty counts as unset) and the others alike.
    Default(bool, Word),
    Assign(bool, Word),
    Alt(bool, Word),
    Error(bool, Word),
    /// `${name#pat}` / `${name##pat}` (longest).
    TrimPrefix(bool, Word),
    TrimSuffix(bool, Word),
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct List {
    pub items: Vec<AndOr>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct AndOr {
    pub first: Pipeline,
    /// `(true for &&, pipeline)`.
    pub rest: Vec<(bool, Pipeline)>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Pipeline {
    pub bang: bool,
    pub cmds: Vec<Command>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    Simple(Simple),
    Compound(Box<Compound>, Vec<Redir>),
    Function(String, Rc<Command>),
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Simple {
    pub assigns: Vec<(String, Word)>,
    pub words: Vec<Word>,
    pub redirs: Vec<Redir>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Compound {
    Brace(List),
    Subshell(List),
    If(Vec<(List, List)>, Option<List>),
    Loop {
        until: bool,
        cond: List,
        body: List,
    },
    For {
        var: String,
        items: Option<Vec<Word>>,
        body: List,
    },
    Case(Word, Vec<(Vec<Word>, List)>),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Redir {
    pub fd: u32,
    pub kind: RedirKind,
    pub target: Word,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum RedirKind {
    In,
    Out,
    Append,
    DupIn,
    DupOut,
    InOut,
}

#[derive(Debug, Clone, PartialEq)]
pub enum ParseError {
    /// The text ends inside a construct: more lines may complete it.
    Incomplete(String),
    Syntax(String),
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Op {
    Semi,
    Amp,
    AndIf,
    OrIf,
    Pipe,
    LParen,
    RParen,
    DSemi,
    Redir(RedirKind),
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    /// A word, with its source text when it is plain (no quotes or expansions: a keyword or
    /// a name may be).
    Word(Word, Option<String>),
    Op(Op),
    IoNum(u32),
    Newline,
    Eof,
}

fn op_text(op: Op) -> &'static str {
    match op {
        Op::Semi => ";",
        Op::Amp => "&",
        Op::AndIf => "&&",
        Op::OrIf => "||",
        Op::Pipe => "|",
        Op::LParen => "(",
        Op::RParen => ")",
        Op::DSemi => ";;",
        Op::Redir(RedirKind::In) => "<",
        Op::Redir(RedirKind::Out) => ">",
        Op::Redir(RedirKind::Append) => ">>",
        Op::Redir(RedirKind::DupIn) => "<&",
        Op::Redir(RedirKind::DupOut) => ">&",
        Op::Redir(RedirKind::InOut) => "<>",
    }
}

const TERMINATORS: &[&str] = &["then", "else", "elif", "fi", "do", "done", "esac", "}"];

pub fn is_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c == '_' || c.is_ascii_alphabetic())
        && chars.all(|c| c == '_' || c.is_ascii_alphanumeric())
}

/// Parses a whole script.
pub fn parse(text: &str) -> Result<List, ParseError> {
    let mut p = Parser {
        s: text.chars().collect(),
        pos: 0,
        peeked: None,
        depth: 0,
    };
    let list = p.list(false)?;
    match p.peek()? {
        Tok::Eof => Ok(list),
        t => Err(unexpected(t)),
    }
}

fn unexpected(t: &Tok) -> ParseError {
    match t {
        Tok::Eof => ParseError::Incomplete("unexpected end of file".into()),
        Tok::Newline => ParseError::Syntax("unexpected newline".into()),
        Tok::Op(op) => ParseError::Syntax(format!("unexpected \"{}\"", op_text(*op))),
        Tok::IoNum(n) => ParseError::Syntax(format!("unexpected \"{n}\"")),
        Tok::Word(_, Some(raw)) => ParseError::Syntax(format!("unexpected \"{raw}\"")),
        Tok::Word(..) => ParseError::Syntax("unexpected word".into()),
    }
}

struct Parser {
    s: Vec<char>,
    pos: usize,
    peeked: Option<Tok>,
    depth: u32,
}

impl Parser {
    fn at(&self, i: usize) -> Option<char> {
        self.s.get(self.pos + i).copied()
    }

    fn enter(&mut self) -> Result<(), ParseError> {
        self.depth += 1;
        if self.depth > MAX_NESTING {
            return Err(ParseError::Syntax("too deeply nested".into()));
        }
        Ok(())
    }

    fn leave(&mut self) {
        self.depth = self.depth.saturating_sub(1);
    }

    fn peek(&mut self) -> Result<&Tok, ParseError> {
        if self.peeked.is_none() {
            let t = self.lex()?;
            self.peeked = Some(t);
        }
        Ok(self.peeked.as_ref().unwrap_or(&Tok::Eof))
    }

    fn next(&mut self) -> Result<Tok, ParseError> {
        match self.peeked.take() {
            Some(t) => Ok(t),
            None => self.lex(),
        }
    }

    fn peek_keyword(&mut self) -> Result<Option<String>, ParseError> {
        Ok(match self.peek()? {
            Tok::Word(_, Some(raw)) => Some(raw.clone()),
            _ => None,
        })
    }

    fn is_keyword(&mut self, kw: &str) -> Result<bool, ParseError> {
        Ok(self.peek_keyword()?.as_deref() == Some(kw))
    }

    fn expect_keyword(&mut self, kw: &str) -> Result<(), ParseError> {
        if self.is_keyword(kw)? {
            self.next()?;
            return Ok(());
        }
        match self.peek()? {
            Tok::Eof => Err(ParseError::Incomplete(format!(
                "unexpected end of file (expecting \"{kw}\")"
            ))),
            t => Err(unexpected(t)),
        }
    }

    fn expect_op(&mut self, op: Op) -> Result<(), ParseError> {
        match self.peek()? {
            Tok::Op(o) if *o == op => {
                self.next()?;
                Ok(())
            }
            Tok::Eof => Err(ParseError::Incomplete(format!(
                "unexpected end of file (expecting \"{}\")",
                op_text(op)
            ))),
            t => Err(unexpected(t)),
        }
    }

    fn skip_newlines(&mut self) -> Result<(), ParseError> {
        while *self.peek()? == Tok::Newline {
            self.next()?;
        }
        Ok(())
    }

    // ---- the grammar ----

    /// A list of and-or lists, ended by end of input or by a token that closes an enclosing
    /// construct. `nonempty`: a compound command's parts may not be empty.
    fn list(&mut self, nonempty: bool) -> Result<List, ParseError> {
        let mut items = Vec::new();
        self.skip_newlines()?;
        loop {
            let stop = match self.peek()? {
                Tok::Eof | Tok::Op(Op::RParen) | Tok::Op(Op::DSemi) => true,
                Tok::Word(_, Some(raw)) => TERMINATORS.contains(&raw.as_str()),
                _ => false,
            };
            if stop {
                break;
            }
            items.push(self.and_or()?);
            match self.peek()? {
                Tok::Op(Op::Semi) | Tok::Op(Op::Amp) | Tok::Newline => {
                    self.next()?;
                    self.skip_newlines()?;
                }
                _ => break,
            }
        }
        if nonempty && items.is_empty() {
            return Err(unexpected(self.peek()?));
        }
        Ok(List { items })
    }

    fn and_or(&mut self) -> Result<AndOr, ParseError> {
        let first = self.pipeline()?;
        let mut rest = Vec::new();
        loop {
            let and = match self.peek()? {
                Tok::Op(Op::AndIf) => true,
                Tok::Op(Op::OrIf) => false,
                _ => break,
            };
            self.next()?;
            self.skip_newlines()?;
            rest.push((and, self.pipeline()?));
        }
        Ok(AndOr { first, rest })
    }

    fn pipeline(&mut self) -> Result<Pipeline, ParseError> {
        let mut bang = false;
        while self.is_keyword("!")? {
            self.next()?;
            bang = !bang;
        }
        let mut cmds = vec![self.command()?];
        while *self.peek()? == Tok::Op(Op::Pipe) {
            self.next()?;
            self.skip_newlines()?;
            cmds.push(self.command()?);
        }
        Ok(Pipeline { bang, cmds })
    }

    fn command(&mut self) -> Result<Command, ParseError> {
        self.enter()?;
        let r = self.command_inner();
        self.leave();
        r
    }

    fn command_inner(&mut self) -> Result<Command, ParseError> {
        let compound = match self.peek()?.clone() {
            Tok::Op(Op::LParen) => {
                self.next()?;
                let list = self.list(true)?;
                self.expect_op(Op::RParen)?;
                Compound::Subshell(list)
            }
            Tok::Word(_, Some(raw)) => match raw.as_str() {
                "if" => self.if_clause()?,
                "while" | "until" => {
                    let until = raw == "until";
                    self.next()?;
                    let cond = self.list(true)?;
                    self.expect_keyword("do")?;
                    let body = self.list(true)?;
                    self.expect_keyword("done")?;
                    Compound::Loop { until, cond, body }
                }
                "for" => self.for_clause()?,
                "case" => self.case_clause()?,
                "{" => {
                    self.next()?;
                    let list = self.list(true)?;
                    self.expect_keyword("}")?;
                    Compound::Brace(list)
                }
                s if TERMINATORS.contains(&s) => return Err(unexpected(self.peek()?)),
                s if is_name(s) && self.function_follows() => {
                    let s = s.to_owned();
                    let name = s.to_owned();
                    self.next()?;
                    self.expect_op(Op::LParen)?;
                    self.expect_op(Op::RParen)?;
                    self.skip_newlines()?;
                    let body = self.command()?;
                    if matches!(body, Command::Simple(_)) {
                        return Err(ParseError::Syntax(
                            "a function body must be a compound command".into(),
                        ));
                    }
                    return Ok(Command::Function(name, Rc::new(body)));
                }
                _ => return self.simple().map(Command::Simple),
            },
            _ => return self.simple().map(Command::Simple),
        };
        let mut redirs = Vec::new();
        while let Some(r) = self.redirection()? {
            redirs.push(r);
        }
        Ok(Command::Compound(Box::new(compound), redirs))
    }

    /// Whether `()` follows the word just peeked (a function definition).
    fn function_follows(&self) -> bool {
        let mut i = self.pos;
        let skip = |i: &mut usize| {
            while matches!(self.s.get(*i), Some(' ' | '\t')) {
                *i += 1;
            }
        };
        skip(&mut i);
        if self.s.get(i) != Some(&'(') {
            return false;
        }
        i += 1;
        skip(&mut i);
        self.s.get(i) == Some(&')')
    }

    fn if_clause(&mut self) -> Result<Compound, ParseError> {
        self.next()?;
        let mut arms = Vec::new();
        let mut otherwise = None;
        loop {
            let cond = self.list(true)?;
            self.expect_keyword("then")?;
            let body = self.list(true)?;
            arms.push((cond, body));
            match self.peek_keyword()?.as_deref() {
                Some("elif") => {
                    self.next()?;
                }
                Some("else") => {
                    self.next()?;
                    otherwise = Some(self.list(true)?);
                    self.expect_keyword("fi")?;
                    break;
                }
                _ => {
                    self.expect_keyword("fi")?;
                    break;
                }
            }
        }
        Ok(Compound::If(arms, otherwise))
    }

    fn for_clause(&mut self) -> Result<Compound, ParseError> {
        self.next()?;
        let var = match self.next()? {
            Tok::Word(_, Some(raw)) if is_name(&raw) => raw,
            Tok::Eof => return Err(ParseError::Incomplete("unexpected end of file".into())),
            t => return Err(unexpected(&t)),
        };
        self.skip_newlines()?;
        let mut items = None;
        if self.is_keyword("in")? {
            self.next()?;
            let mut words = Vec::new();
            while let Tok::Word(..) = self.peek()? {
                if let Tok::Word(w, _) = self.next()? {
                    words.push(w);
                }
            }
            items = Some(words);
            match self.peek()? {
                Tok::Op(Op::Semi) | Tok::Newline => {
                    self.next()?;
                }
                Tok::Eof => return Err(ParseError::Incomplete("unexpected end of file".into())),
                t => return Err(unexpected(t)),
            }
        } else if *self.peek()? == Tok::Op(Op::Semi) {
            self.next()?;
        }
        self.skip_newlines()?;
        self.expect_keyword("do")?;
        let body = self.list(true)?;
        self.expect_keyword("done")?;
        Ok(Compound::For { var, items, body })
    }

    fn case_clause(&mut self) -> Result<Compound, ParseError> {
        self.next()?;
        let word = match self.next()? {
            Tok::Word(w, _) => w,
            Tok::Eof => return Err(ParseError::Incomplete("unexpected end of file".into())),
            t => return Err(unexpected(&t)),
        };
        self.skip_newlines()?;
        self.expect_keyword("in")?;
        let mut arms = Vec::new();
        loop {
            self.skip_newlines()?;
            if self.is_keyword("esac")? {
                self.next()?;
                break;
            }
            if *self.peek()? == Tok::Op(Op::LParen) {
                self.next()?;
            }
            let mut patterns = Vec::new();
            loop {
                match self.next()? {
                    Tok::Word(w, _) => patterns.push(w),
                    Tok::Eof => {
                        return Err(ParseError::Incomplete("unexpected end of file".into()))
                    }
                    t => return Err(unexpected(&t)),
                }
                if *self.peek()? == Tok::Op(Op::Pipe) {
                    self.next()?;
                } else {
                    break;
                }
            }
            self.expect_op(Op::RParen)?;
            let body = self.list(false)?;
            arms.push((patterns, body));
            match self.peek()? {
                Tok::Op(Op::DSemi) => {
                    self.next()?;
                }
                _ => {
                    self.expect_keyword("esac")?;
                    break;
                }
            }
        }
        Ok(Compound::Case(word, arms))
    }

    fn redirection(&mut self) -> Result<Option<Redir>, ParseError> {
        let fd = match self.peek()? {
            Tok::IoNum(n) => {
                let n = *n;
                self.next()?;
                Some(n)
            }
            Tok::Op(Op::Redir(_)) => None,
            _ => return Ok(None),
        };
        let kind = match self.next()? {
            Tok::Op(Op::Redir(k)) => k,
            Tok::Eof => return Err(ParseError::Incomplete("unexpected end of file".into())),
            t => return Err(unexpected(&t)),
        };
        let target = match self.next()? {
            Tok::Word(w, _) => w,
            Tok::Eof => return Err(ParseError::Incomplete("unexpected end of file".into())),
            t => return Err(unexpected(&t)),
        };
        let fd = fd.unwrap_or(match kind {
            RedirKind::In | RedirKind::DupIn | RedirKind::InOut => 0,
            _ => 1,
        });
        Ok(Some(Redir { fd, kind, target }))
    }

    fn simple(&mut self) -> Result<Simple, ParseError> {
        let mut cmd = Simple::default();
        loop {
            if let Some(r) = self.redirection()? {
                cmd.redirs.push(r);
                continue;
            }
            match self.peek()? {
                Tok::Word(..) => {}
                _ => break,
            }
            let Tok::Word(word, _) = self.next()? else {
                break;
            };
            if cmd.words.is_empty() {
                if let Some(Part::Lit(first)) = word.first() {
                    if let Some((name, value)) = first.split_once('=') {
                        if is_name(name) {
                            let mut w = Vec::new();
                            if !value.is_empty() {
                                w.push(Part::Lit(value.to_owned()));
                            }
                            w.extend(word[1..].iter().cloned());
                            cmd.assigns.push((name.to_owned(), w));
                            continue;
                        }
                    }
                }
            }
            cmd.words.push(word);
        }
        if cmd.words.is_empty() && cmd.assigns.is_empty() && cmd.redirs.is_empty() {
            return Err(unexpected(self.peek()?));
        }
        Ok(cmd)
    }

    // ---- the lexer ----

    fn lex(&mut self) -> Result<Tok, ParseError> {
        loop {
            match self.at(0) {
                Some(' ' | '\t' | '\r') => self.pos += 1,
                Some('\\') if self.at(1) == Some('\n') => self.pos += 2,
                Some('#') => {
                    while self.at(0).is_some_and(|c| c != '\n') {
                        self.pos += 1;
                    }
                }
                _ => break,
            }
        }
        let Some(c) = self.at(0) else {
            return Ok(Tok::Eof);
        };
        let two = |a: char| self.at(1) == Some(a);
        let (op, len) = match c {
            '\n' => {
                self.pos += 1;
                return Ok(Tok::Newline);
            }
            ';' if two(';') => (Op::DSemi, 2),
            ';' => (Op::Semi, 1),
            '&' if two('&') => (Op::AndIf, 2),
            '&' => (Op::Amp, 1),
            '|' if two('|') => (Op::OrIf, 2),
            '|' => (Op::Pipe, 1),
            '(' => (Op::LParen, 1),
            ')' => (Op::RParen, 1),
            '<' if two('<') => {
                return Err(ParseError::Syntax(
                    "here-documents are not supported".into(),
                ))
            }
            '<' if two('&') => (Op::Redir(RedirKind::DupIn), 2),
            '<' if two('>') => (Op::Redir(RedirKind::InOut), 2),
            '<' => (Op::Redir(RedirKind::In), 1),
            '>' if two('>') => (Op::Redir(RedirKind::Append), 2),
            '>' if two('&') => (Op::Redir(RedirKind::DupOut), 2),
            '>' if two('|') => (Op::Redir(RedirKind::Out), 2),
            '>' => (Op::Redir(RedirKind::Out), 1),
            _ => return self.word(),
        };
        self.pos += len;
        Ok(Tok::Op(op))
    }

    fn word(&mut self) -> Result<Tok, ParseError> {
        let start = self.pos;
        let mut parts: Vec<Part> = Vec::new();
        let mut plain = true;
        while let Some(c) = self.at(0) {
            match c {
                ' ' | '\t' | '\r' | '\n' | ';' | '&' | '|' | '(' | ')' | '<' | '>' => break,
                '\\' => {
                    plain = false;
                    self.pos += 1;
                    match self.at(0) {
                        Some('\n') => self.pos += 1,
                        Some(e) => {
                            self.pos += 1;
                            push_text(&mut parts, e, true);
                        }
                        None => push_text(&mut parts, '\\', true),
                    }
                }
                '\'' => {
                    plain = false;
                    self.pos += 1;
                    let mut s = String::new();
                    loop {
                        match self.at(0) {
                            None => {
                                return Err(ParseError::Incomplete(
                                    "unterminated quoted string".into(),
                                ))
                            }
                            Some('\'') => {
                                self.pos += 1;
                                break;
                            }
                            Some(ch) => {
                                s.push(ch);
                                self.pos += 1;
                            }
                        }
                    }
                    parts.push(Part::Quoted(s));
                }
                '"' => {
                    plain = false;
                    self.pos += 1;
                    let before = parts.len();
                    self.dquote(&mut parts, '"')?;
                    if parts.len() == before {
                        parts.push(Part::Quoted(String::new()));
                    }
                }
                '$' => {
                    if let Some(p) = self.dollar(false)? {
                        plain = false;
                        parts.push(p);
                    } else {
                        push_text(&mut parts, '$', false);
                    }
                }
                '`' => {
                    plain = false;
                    self.pos += 1;
                    parts.push(self.backquote(false)?);
                }
                c => {
                    self.pos += 1;
                    push_text(&mut parts, c, false);
                }
            }
        }
        let raw: String = self.s[start..self.pos].iter().collect();
        if plain
            && matches!(self.at(0), Some('<' | '>'))
            && !raw.is_empty()
            && raw.chars().all(|c| c.is_ascii_digit())
        {
            if let Ok(n) = raw.parse() {
                return Ok(Tok::IoNum(n));
            }
        }
        Ok(Tok::Word(parts, plain.then_some(raw)))
    }

    /// The inside of double quotes (or of a `${…}` word when `end` is `}`), up to `end`.
    fn dquote(&mut self, parts: &mut Vec<Part>, end: char) -> Result<(), ParseError> {
        let quoted = end == '"';
        loop {
            let Some(c) = self.at(0) else {
                return Err(ParseError::Incomplete(if quoted {
                    "unterminated quoted string".into()
                } else {
                    "missing '}'".into()
                }));
            };
            match c {
                c if c == end => {
                    self.pos += 1;
                    return Ok(());
                }
                '\\' => {
                    self.pos += 1;
                    match self.at(0) {
                        Some('\n') => self.pos += 1,
                        Some(e @ ('$' | '`' | '"' | '\\')) => {
                            self.pos += 1;
                            push_text(parts, e, true);
                        }
                        Some('}') if !quoted => {
                            self.pos += 1;
                            push_text(parts, '}', true);
                        }
                        _ => push_text(parts, '\\', true),
                    }
                }
                '$' => match self.dollar(quoted)? {
                    Some(p) => parts.push(p),
                    None => push_text(parts, '$', quoted),
                },
                '`' => {
                    self.pos += 1;
                    parts.push(self.backquote(quoted)?);
                }
                '\'' if !quoted => {
                    self.pos += 1;
                    let mut s = String::new();
                    loop {
                        match self.at(0) {
                            None => {
                                return Err(ParseError::Incomplete(
                                    "unterminated quoted string".into(),
                                ))
                            }
                            Some('\'') => {
                                self.pos += 1;
                                break;
                            }
                            Some(ch) => {
                                s.push(ch);
                                self.pos += 1;
                            }
                        }
                    }
                    parts.push(Part::Quoted(s));
                }
                '"' if !quoted => {
                    self.pos += 1;
                    self.dquote(parts, '"')?;
                }
                c => {
                    self.pos += 1;
                    push_text(parts, c, quoted);
                }
            }
        }
    }

    /// `` `…` ``: the text up to the closing backquote, parsed as a script.
    fn backquote(&mut self, quoted: bool) -> Result<Part, ParseError> {
        let mut text = String::new();
        loop {
            match self.at(0) {
                None => return Err(ParseError::Incomplete("unterminated quoted string".into())),
                Some('`') => {
                    self.pos += 1;
                    break;
                }
                Some('\\') if matches!(self.at(1), Some('`' | '\\' | '$')) => {
                    text.push(self.at(1).unwrap_or('\\'));
                    self.pos += 2;
                }
                Some(c) => {
                    text.push(c);
                    self.pos += 1;
                }
            }
        }
        self.enter()?;
        let mut inner = Parser {
            s: text.chars().collect(),
            pos: 0,
            peeked: None,
            depth: self.depth,
        };
        let list = inner.list(false);
        let end = inner.peek().cloned();
        self.leave();
        let list = list?;
        match end? {
            Tok::Eof => Ok(Part::Command {
                list: Rc::new(list),
                quoted,
            }),
            t => Err(unexpected(&t)),
        }
    }

    /// A `$` expansion at the cursor, or `None` (the cursor past the `$`) when what follows
    /// makes it a plain `$`.
    fn dollar(&mut self, quoted: bool) -> Result<Option<Part>, ParseError> {
        self.pos += 1;
        match self.at(0) {
            Some('(') if self.at(1) == Some('(') => {
                self.pos += 2;
                self.arith(quoted).map(Some)
            }
            Some('(') => {
                self.pos += 1;
                self.enter()?;
                let saved = self.peeked.take();
                let list = self.list(false);
                let close = list.and_then(|l| self.expect_op(Op::RParen).map(|_| l));
                self.peeked = saved;
                self.leave();
                Ok(Some(Part::Command {
                    list: Rc::new(close?),
                    quoted,
                }))
            }
            Some('{') => {
                self.pos += 1;
                self.braced(quoted).map(Some)
            }
            Some(c) if c == '_' || c.is_ascii_alphabetic() => {
                let mut name = String::new();
                while let Some(c) = self
                    .at(0)
                    .filter(|c| *c == '_' || c.is_ascii_alphanumeric())
                {
                    name.push(c);
                    self.pos += 1;
                }
                Ok(Some(Part::Param {
                    name,
                    op: ParamOp::Plain,
                    quoted,
                }))
            }
            Some(c) if c.is_ascii_digit() || "@*#?$!-".contains(c) => {
                self.pos += 1;
                Ok(Some(Part::Param {
                    name: c.to_string(),
                    op: ParamOp::Plain,
                    quoted,
                }))
            }
            _ => Ok(None),
        }
    }

    /// `${…}` after the brace.
    fn braced(&mut self, quoted: bool) -> Result<Part, ParseError> {
        let mut length = false;
        if self.at(0) == Some('#') && self.at(1).is_some_and(|c| c != '}') {
            length = true;
            self.pos += 1;
        }
        let mut name = String::new();
        match self.at(0) {
            Some(c) if c == '_' || c.is_ascii_alphabetic() => {
                while let Some(c) = self
                    .at(0)
                    .filter(|c| *c == '_' || c.is_ascii_alphanumeric())
                {
                    name.push(c);
                    self.pos += 1;
                }
            }
            Some(c) if c.is_ascii_digit() => {
                while let Some(c) = self.at(0).filter(|c| c.is_ascii_digit()) {
                    name.push(c);
                    self.pos += 1;
                }
            }
            Some(c) if "@*#?$!-".contains(c) => {
                name.push(c);
                self.pos += 1;
            }
            None => return Err(ParseError::Incomplete("missing '}'".into())),
            Some(_) => return Err(ParseError::Syntax("bad substitution".into())),
        }
        if length {
            if self.at(0) != Some('}') {
                return Err(ParseError::Syntax("bad substitution".into()));
            }
            self.pos += 1;
            return Ok(Part::Param {
                name,
                op: ParamOp::Length,
                quoted,
            });
        }
        let colon = self.at(0) == Some(':');
        if colon {
            self.pos += 1;
        }
        let Some(c) = self.at(0) else {
            return Err(ParseError::Incomplete("missing '}'".into()));
        };
        if c == '}' && !colon {
            self.pos += 1;
            return Ok(Part::Param {
                name,
                op: ParamOp::Plain,
                quoted,
            });
        }
        let twice = self.at(1) == Some(c);
        let kind = match c {
            '-' | '=' | '+' | '?' => c,
            '#' | '%' if !colon => c,
            _ => return Err(ParseError::Syntax("bad substitution".into())),
        };
        self.pos += 1;
        let longest = (kind == '#' || kind == '%') && twice;
        if longest {
            self.pos += 1;
        }
        let mut word = Vec::new();
        self.enter()?;
        let r = self.dquote(&mut word, '}');
        self.leave();
        r?;
        let op = match kind {
            '-' => ParamOp::Default(colon, word),
            '=' => ParamOp::Assign(colon, word),
            '+' => ParamOp::Alt(colon, word),
            '?' => ParamOp::Error(colon, word),
            '#' => ParamOp::TrimPrefix(longest, word),
            _ => ParamOp::TrimSuffix(longest, word),
        };
        Ok(Part::Param { name, op, quoted })
    }

    /// `$((…))` after the two parentheses: its text up to the matching `))`, with `$`
    /// expansions in it.
    fn arith(&mut self, quoted: bool) -> Result<Part, ParseError> {
        let mut depth = 0u32;
        let start = self.pos;
        loop {
            match self.at(0) {
                None => return Err(ParseError::Incomplete("missing '))'".into())),
                Some('(') => depth += 1,
                Some(')') if depth == 0 => {
                    if self.at(1) == Some(')') {
                        break;
                    }
                    return Err(ParseError::Syntax("missing '))'".into()));
                }
                Some(')') => depth -= 1,
                _ => {}
            }
            self.pos += 1;
        }
        let text: Vec<char> = self.s[start..self.pos].to_vec();
        self.pos += 2;
        self.enter()?;
        let mut inner = Parser {
            s: text,
            pos: 0,
            peeked: None,
            depth: self.depth,
        };
        let mut expr = Vec::new();
        // The text up to its end, as inside double quotes (a NUL never occurs in it).
        inner.s.push('\0');
        let r = inner.dquote(&mut expr, '\0');
        self.leave();
        r?;
        Ok(Part::Arith { expr, quoted })
    }
}

fn push_text(parts: &mut Vec<Part>, c: char, quoted: bool) {
    match (parts.last_mut(), quoted) {
        (Some(Part::Lit(s)), false) | (Some(Part::Quoted(s)), true) => s.push(c),
        _ => parts.push(if quoted {
            Part::Quoted(c.to_string())
        } else {
            Part::Lit(c.to_string())
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(s: &str) -> List {
        parse(s).unwrap_or_else(|e| panic!("{s:?}: {e:?}"))
    }

    #[test]
    fn parses_lists_and_compounds() {
        assert_eq!(ok("a; b && c || d").items.len(), 2);
        assert_eq!(ok("").items.len(), 0);
        assert_eq!(ok("# only a comment\n").items.len(), 0);
        ok("if a; then b; elif c; then d; else e; fi");
        ok("while true; do echo hi; sleep 1; done");
        ok("for i in 1 2 3; do echo $i; done | wc -l");
        ok("for i\ndo\n echo $i\ndone");
        ok("f() { echo x; }; f");
        ok("case $x in a|b) echo ab;; *) echo other;; esac");
        ok("x=$(echo \"$(echo nested)\")");
        ok("echo ${x:-default} ${#x} ${x%.txt} ${y:+alt}");
        ok("echo $((1 + 2 * (3 - 1)))");
        ok("touch /x 2>&1 | grep -q 'Read-only file system'");
        ok("! false");
        ok("(cd /; ls) > out 2>> err < in");
        ok("echo `echo hi`");
    }

    #[test]
    fn assignments_and_io_numbers() {
        let l = ok("A=1 B=\"x y\" cmd 2>&1");
        let Command::Simple(s) = &l.items[0].first.cmds[0] else {
            panic!()
        };
        assert_eq!(s.assigns.len(), 2);
        assert_eq!(s.words.len(), 1);
        assert_eq!(s.redirs[0].fd, 2);
        assert_eq!(s.redirs[0].kind, RedirKind::DupOut);
    }

    #[test]
    fn tells_incomplete_from_wrong() {
        for s in [
            "if true; then",
            "echo 'abc",
            "echo \"x",
            "a &&",
            "a |",
            "while true",
            "$(echo",
            "for",
        ] {
            assert!(matches!(parse(s), Err(ParseError::Incomplete(_))), "{s}");
        }
        for s in [
            "fi",
            "then",
            ")",
            "a;;",
            "if; then; fi",
            "a | | b",
            "echo ${x!}",
            "&&",
            "cat <<EOF",
        ] {
            assert!(matches!(parse(s), Err(ParseError::Syntax(_))), "{s}");
        }
        assert_eq!(
            parse("if true; then echo; "),
            Err(ParseError::Incomplete(
                "unexpected end of file (expecting \"fi\")".into()
            ))
        );
        assert_eq!(
            parse("echo )"),
            Err(ParseError::Syntax("unexpected \")\"".into()))
        );
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_crash() {
        let deep = "$(".repeat(10_000);
        assert!(parse(&deep).is_err());
        let deep = "(".repeat(10_000);
        assert!(parse(&deep).is_err());
        let deep = "if ".repeat(10_000);
        assert!(parse(&deep).is_err());
        let deep = "${x:-".repeat(10_000);
        assert!(parse(&deep).is_err());
        let deep = "`".repeat(10_001);
        assert!(parse(&deep).is_err());
    }
}
