//! `tar`: creates, lists and extracts POSIX ustar archives, what `kubectl cp` runs in a
//! container (`tar cf - PATH` to copy out, `tar -xmf - -C DIR` to copy in).
//!
//! Names longer than ustar's fields are written as GNU `L`/`K` records (what GNU tar and
//! busybox write) and read back from those or from pax `path`/`linkpath` headers (what Go's
//! archive/tar, hence kubectl, writes). The archive is streamed through a fixed buffer both
//! ways: memory does not grow with the archive or its files.
//!
//! Extraction is confined to the target directory: leading `/` are stripped (with busybox's
//! notice), a member with a `..` component is refused, an existing file is removed before a
//! member replaces it (never written through, should it be a link), and no member is created
//! through a symlink an earlier member of the same archive created (the classic escape: `l ->
//! /etc`, then `l/passwd`). Symlinks already in the target directory are followed, as GNU tar
//! does. Modes are restored where the platform has them (not under WASI, which has none, nor
//! on directories); owners never are (a guest has none).
//!
//! Not done: compression (`z`, `j`), `-h`, `-O`, appending (`r`, `u`); creation archives
//! every hard link as a file of its own; `-C` is not positional (the last one applies to
//! every operand, where GNU tar's applies to the operands after it).

use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, UNIX_EPOCH};

use super::bad_usage;
use crate::{errtext, normalize, Ctx, Io, Sink};

const BLOCK: usize = 512;
/// GNU tar's record: an archive read from a pipe is drained to its end.
const RECORD: u64 = 20 * BLOCK as u64;
/// The copy buffer, a whole number of blocks.
const CHUNK: usize = 128 * BLOCK;
/// The largest long name or pax header read (busybox's limit): larger ones are skipped.
const MAX_EXTENDED: u64 = 0xfffff;

/// What the options ask for.
#[derive(Default)]
struct Options {
    mode: Option<char>,
    file: Option<String>,
    dir: Option<String>,
    verbose: bool,
    /// `m`: extracted files get the current time, not the archived one.
    touch: bool,
    /// `--no-same-permissions`: extracted files keep the default mode.
    no_same_permissions: bool,
    operands: Vec<String>,
}

impl Options {
    fn flag(&mut self, c: char) -> Result<(), String> {
        match c {
            'c' | 'x' | 't' => {
                if self.mode.is_some_and(|m| m != c) {
                    return Err(MODES.to_owned());
                }
                self.mode = Some(c);
            }
            'v' => self.verbose = true,
            'm' => self.touch = true,
            // `o` (--no-same-owner on extraction) and `p` (same permissions, the default
            // here): a guest has no owners to restore.
            'o' | 'p' => {}
            _ => return Err(format!("invalid option -- '{c}'")),
        }
        Ok(())
    }

    fn value(&mut self, c: char, v: &str) {
        if c == 'f' {
            self.file = Some(v.to_owned());
        } else {
            self.dir = Some(v.to_owned());
        }
    }
}

const MODES: &str = "exactly one of 'c', 'x' or 't' must be specified";

/// Parses tar's three option forms: a first argument of bundled letters without a dash
/// (`xmf -`, each valued letter taking the next argument), dashed bundles (`-xmf -`, `-C
/// DIR`, `-fFILE`) and long options (`--no-same-owner`, `--file=F`); anything else is an
/// operand.
fn parse_args(args: &[String]) -> Result<Options, String> {
    let mut o = Options::default();
    let mut i = 0;
    let missing = |c: char| format!("option requires an argument -- '{c}'");
    if let Some(first) = args.first().filter(|a| !a.starts_with('-')) {
        i = 1;
        for c in first.chars() {
            if c == 'f' || c == 'C' {
                let v = args.get(i).ok_or_else(|| missing(c))?;
                i += 1;
                o.value(c, v);
            } else {
                o.flag(c)?;
            }
        }
    }
    while i < args.len() {
        let a = args[i].as_str();
        i += 1;
        if a == "--" {
            o.operands.extend(args[i..].iter().cloned());
            break;
        }
        if let Some(long) = a.strip_prefix("--") {
            let (key, inline) = match long.split_once('=') {
                Some((k, v)) => (k, Some(v)),
                None => (long, None),
            };
            match key {
                "file" | "directory" => {
                    let v = match inline {
                        Some(v) => v,
                        None => {
                            i += 1;
                            args.get(i - 1)
                                .ok_or_else(|| format!("option '--{key}' requires an argument"))?
                                .as_str()
                        }
                    };
                    o.value(if key == "file" { 'f' } else { 'C' }, v);
                }
                "create" => o.flag('c')?,
                "extract" | "get" => o.flag('x')?,
                "list" => o.flag('t')?,
                "verbose" => o.verbose = true,
                "touch" => o.touch = true,
                "no-same-permissions" => o.no_same_permissions = true,
                "same-permissions" | "preserve-permissions" => o.no_same_permissions = false,
                "no-same-owner" | "same-owner" | "numeric-owner" | "overwrite" => {}
                _ => return Err(format!("unrecognized option '{a}'")),
            }
        } else if a.len() > 1 && a.starts_with('-') {
            let body = &a[1..];
            for (at, c) in body.char_indices() {
                if c == 'f' || c == 'C' {
                    let rest = &body[at + 1..];
                    let v = if rest.is_empty() {
                        i += 1;
                        args.get(i - 1).ok_or_else(|| missing(c))?.as_str()
                    } else {
                        rest
                    };
                    o.value(c, v);
                    break;
                }
                o.flag(c)?;
            }
        } else {
            o.operands.push(a.to_owned());
        }
    }
    Ok(o)
}

/// `tar -c|-x|-t [-vmo] [-f FILE|-] [-C DIR] [--no-same-owner] [--no-same-permissions]
/// [PATH...]`
pub fn tar(ctx: &mut Ctx, io: &mut Io, argv: &[String]) -> i32 {
    let o = match parse_args(argv.get(1..).unwrap_or_default()) {
        Ok(o) => o,
        Err(e) => return bad_usage(io, "tar", &e),
    };
    match o.mode {
        Some('c') => create(ctx, io, &o),
        Some(mode) => read_archive(ctx, io, &o, mode == 'x'),
        None => bad_usage(io, "tar", MODES),
    }
}

// ---------------------------------------------------------------------------------------
// Headers

/// A member's header, long names and pax records applied.
#[derive(Debug, Clone, Default, PartialEq)]
struct Entry {
    name: String,
    /// The type flag: `0` file, `1` hard link, `2` symlink, `3`/`4` devices, `5` directory,
    /// `6` fifo.
    kind: u8,
    mode: u32,
    uid: u64,
    gid: u64,
    size: u64,
    mtime: u64,
    link: String,
    uname: String,
    gname: String,
}

/// Writes `value` into `field` as NUL-terminated zero-padded octal, or in GNU's base-256
/// when it does not fit.
fn put_number(field: &mut [u8], value: u64) {
    let digits = field.len() - 1;
    if digits >= 22 || value < 1u64 << (3 * digits) {
        let s = format!("{value:0digits$o}");
        field[..digits].copy_from_slice(s.as_bytes());
        field[digits] = 0;
    } else {
        field.fill(0);
        let bytes = value.to_be_bytes();
        let n = bytes.len().min(field.len() - 1);
        let len = field.len();
        field[len - n..].copy_from_slice(&bytes[bytes.len() - n..]);
        field[0] = 0x80;
    }
}

/// Reads a numeric field: octal (spaces and NULs around it) or base-256.
fn get_number(field: &[u8]) -> Result<u64, String> {
    if field.first().is_some_and(|b| b & 0x80 != 0) {
        if field[0] & 0x40 != 0 {
            // Negative (a time before 1970): the epoch will do.
            return Ok(0);
        }
        let mut v: u64 = u64::from(field[0] & 0x3f);
        for b in &field[1..] {
            v = v
                .checked_mul(256)
                .and_then(|v| v.checked_add(u64::from(*b)))
                .ok_or("numeric value out of range in tar header")?;
        }
        return Ok(v);
    }
    let text: &[u8] = {
        let start = field.iter().position(|b| *b != b' ').unwrap_or(field.len());
        let rest = &field[start..];
        let end = rest
            .iter()
            .position(|b| *b == 0 || *b == b' ')
            .unwrap_or(rest.len());
        if rest[end..].iter().any(|b| *b != 0 && *b != b' ') {
            return Err("corrupted octal value in tar header".into());
        }
        &rest[..end]
    };
    let mut v: u64 = 0;
    for b in text {
        if !(b'0'..=b'7').contains(b) {
            return Err("corrupted octal value in tar header".into());
        }
        v = v
            .checked_mul(8)
            .map(|v| v + u64::from(b - b'0'))
            .ok_or("numeric value out of range in tar header")?;
    }
    Ok(v)
}

/// A NUL-terminated text field.
fn get_text(field: &[u8]) -> String {
    let end = field.iter().position(|b| *b == 0).unwrap_or(field.len());
    String::from_utf8_lossy(&field[..end]).into_owned()
}

fn checksums(block: &[u8; BLOCK]) -> (u64, i64) {
    let mut unsigned = 0u64;
    let mut signed = 0i64;
    for (i, b) in block.iter().enumerate() {
        let b = if (148..156).contains(&i) { b' ' } else { *b };
        unsigned += u64::from(b);
        signed += i64::from(b as i8);
    }
    (unsigned, signed)
}

/// One header block; `name` and `link` must fit their fields (100 bytes each), `prefix` 155.
fn header_block(e: &Entry, name: &[u8], prefix: &[u8], link: &[u8]) -> [u8; BLOCK] {
    let mut h = [0u8; BLOCK];
    h[..name.len()].copy_from_slice(name);
    put_number(&mut h[100..108], u64::from(e.mode & 0o7777));
    put_number(&mut h[108..116], e.uid);
    put_number(&mut h[116..124], e.gid);
    put_number(&mut h[124..136], e.size);
    put_number(&mut h[136..148], e.mtime);
    h[156] = e.kind;
    h[157..157 + link.len()].copy_from_slice(link);
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    for (field, text) in [(265..297, &e.uname), (297..329, &e.gname)] {
        let bytes = text.as_bytes();
        let n = bytes.len().min(31);
        h[field.start..field.start + n].copy_from_slice(&bytes[..n]);
    }
    put_number(&mut h[329..337], 0);
    put_number(&mut h[337..345], 0);
    h[345..345 + prefix.len()].copy_from_slice(prefix);
    let (sum, _) = checksums(&h);
    let s = format!("{sum:06o}\0 ");
    h[148..156].copy_from_slice(s.as_bytes());
    h
}

/// Splits a name too long for the name field into ustar's prefix and name at a `/`.
fn split_name(name: &[u8]) -> Option<(&[u8], &[u8])> {
    if name.len() > 256 {
        return None;
    }
    (1..name.len())
        .rev()
        .filter(|i| name[*i] == b'/')
        .map(|i| (&name[..i], &name[i + 1..]))
        .find(|(p, n)| p.len() <= 155 && n.len() <= 100 && !n.is_empty())
}

/// Writes a GNU long name (`L`) or long link (`K`) record: the text in a pseudo-file.
fn write_long(w: &mut dyn Write, kind: u8, text: &[u8]) -> io::Result<()> {
    let mut data = text.to_vec();
    data.push(0);
    let e = Entry {
        name: "././@LongLink".into(),
        kind,
        size: data.len() as u64,
        ..Entry::default()
    };
    w.write_all(&header_block(&e, e.name.as_bytes(), b"", b""))?;
    data.resize(data.len().div_ceil(BLOCK) * BLOCK, 0);
    w.write_all(&data)
}

/// Writes `e`'s header, with long-name records before it where its names need them.
fn write_header(w: &mut dyn Write, e: &Entry) -> io::Result<()> {
    let name = e.name.as_bytes();
    let link = e.link.as_bytes();
    let (prefix, short) = if name.len() <= 100 {
        (&b""[..], name)
    } else if let Some((p, n)) = split_name(name) {
        (p, n)
    } else {
        write_long(w, b'L', name)?;
        (&b""[..], &name[..100])
    };
    let link_field = if link.len() <= 100 {
        link
    } else {
        write_long(w, b'K', link)?;
        &link[..100]
    };
    w.write_all(&header_block(e, short, prefix, link_field))
}

// ---------------------------------------------------------------------------------------
// Reading

/// The archive being read, a block at a time.
struct Reader<R> {
    r: R,
    /// Bytes consumed.
    pos: u64,
    buf: Vec<u8>,
}

impl<R: Read> Reader<R> {
    fn new(r: R) -> Self {
        Reader {
            r,
            pos: 0,
            buf: vec![0; CHUNK],
        }
    }

    /// Fills `buf`; false at the end of the input before any byte of it.
    fn fill(&mut self, buf: &mut [u8]) -> Result<bool, String> {
        let mut got = 0;
        while got < buf.len() {
            match self.r.read(&mut buf[got..]) {
                Ok(0) if got == 0 => return Ok(false),
                Ok(0) => return Err("short read".into()),
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(format!("read error: {}", errtext(&e))),
            }
        }
        self.pos += got as u64;
        Ok(true)
    }

    /// Reads a member's data (padding included) into `out` as far as `out` takes it: a write
    /// error stops the writing, not the reading, and is returned.
    fn data(
        &mut self,
        size: u64,
        mut out: Option<&mut dyn Write>,
    ) -> Result<Option<io::Error>, String> {
        let mut buf = std::mem::take(&mut self.buf);
        let mut left = size;
        let mut padded = size.div_ceil(BLOCK as u64) * BLOCK as u64;
        let mut failed = None;
        let result = loop {
            if padded == 0 {
                break Ok(failed);
            }
            let n = padded.min(buf.len() as u64) as usize;
            match self.fill(&mut buf[..n]) {
                Ok(true) => {}
                Ok(false) => break Err("short read".to_owned()),
                Err(e) => break Err(e),
            }
            padded -= n as u64;
            let keep = left.min(n as u64) as usize;
            left -= keep as u64;
            if let (Some(w), None) = (out.as_mut(), failed.as_ref()) {
                if let Err(e) = w.write_all(&buf[..keep]) {
                    failed = Some(e);
                }
            }
        };
        self.buf = buf;
        result
    }

    /// Reads a long name or pax header's data whole (it is bounded).
    fn small_data(&mut self, size: u64) -> Result<Vec<u8>, String> {
        let mut v = Vec::new();
        self.data(size, Some(&mut v))?;
        Ok(v)
    }

    /// The next member, long names and pax records applied; `None` at the end.
    fn next(&mut self, io: &mut Io) -> Result<Option<Entry>, String> {
        let mut long_name: Option<String> = None;
        let mut long_link: Option<String> = None;
        let mut pax: Vec<(String, String)> = Vec::new();
        loop {
            let mut h = [0u8; BLOCK];
            if !self.fill(&mut h)? {
                return Ok(None);
            }
            if h.iter().all(|b| *b == 0) {
                return Ok(None);
            }
            let magic = &h[257..263];
            if !magic.starts_with(b"ustar") && magic.iter().any(|b| *b != 0) {
                return Err("invalid tar magic".into());
            }
            let stored = get_number(&h[148..156])?;
            let (unsigned, signed) = checksums(&h);
            if stored != unsigned && stored as i64 != signed {
                return Err("invalid tar header checksum".into());
            }
            let mut e = Entry {
                name: get_text(&h[..100]),
                kind: if h[156] == 0 { b'0' } else { h[156] },
                mode: (get_number(&h[100..108])? & 0o7777) as u32,
                uid: get_number(&h[108..116])?,
                gid: get_number(&h[116..124])?,
                size: get_number(&h[124..136])?,
                mtime: get_number(&h[136..148])?,
                link: get_text(&h[157..257]),
                uname: get_text(&h[265..297]),
                gname: get_text(&h[297..329]),
            };
            // POSIX ustar's prefix; GNU's magic ("ustar  ") keeps other things there.
            if magic == b"ustar\0" && h[345] != 0 {
                e.name = format!("{}/{}", get_text(&h[345..500]), e.name);
            }
            match e.kind {
                b'L' | b'K' | b'x' | b'g' if e.size > MAX_EXTENDED => {
                    io.error(
                        "tar",
                        format_args!("warning: skipping header '{}'", e.kind as char),
                    );
                    self.data(e.size, None)?;
                }
                b'L' => long_name = Some(get_text(&self.small_data(e.size)?)),
                b'K' => long_link = Some(get_text(&self.small_data(e.size)?)),
                b'x' => {
                    let data = self.small_data(e.size)?;
                    if !parse_pax(&data, &mut pax) {
                        io.error("tar", "malformed extended header, skipped");
                    }
                }
                b'g' => {
                    self.data(e.size, None)?;
                }
                b'D' | b'M' | b'N' | b'S' | b'V' => {
                    io.error(
                        "tar",
                        format_args!("warning: skipping header '{}'", e.kind as char),
                    );
                    self.data(e.size, None)?;
                }
                b'0'..=b'7' => {
                    if let Some(n) = long_name {
                        e.name = n;
                    }
                    if let Some(l) = long_link {
                        e.link = l;
                    }
                    for (k, v) in pax {
                        match k.as_str() {
                            "path" => e.name = v,
                            "linkpath" => e.link = v,
                            "size" => e.size = v.parse().map_err(|_| "invalid pax size")?,
                            "mtime" => {
                                let secs = v.split('.').next().unwrap_or("");
                                e.mtime = secs.parse().unwrap_or(0);
                            }
                            _ => {}
                        }
                    }
                    if matches!(e.kind, b'0' | b'7') && e.name.ends_with('/') {
                        e.kind = b'5';
                    }
                    if e.kind == b'7' {
                        e.kind = b'0';
                    }
                    // Only regular files have data (some writers give links a size).
                    if e.kind != b'0' {
                        e.size = 0;
                    }
                    return Ok(Some(e));
                }
                other => return Err(format!("unknown typeflag: 0x{other:x}")),
            }
        }
    }

    /// Consumes the rest of the archive's last record, as GNU tar reads whole records: the
    /// writer of a pipe is not cut off mid-write.
    fn finish(&mut self) {
        let mut rest = (RECORD - self.pos % RECORD) % RECORD;
        let mut block = [0u8; BLOCK];
        while rest > 0 {
            if !matches!(self.fill(&mut block), Ok(true)) {
                return;
            }
            rest -= BLOCK as u64;
        }
    }
}

/// Parses pax records (`LEN KEY=VALUE\n`) into `out`; false if malformed.
fn parse_pax(mut data: &[u8], out: &mut Vec<(String, String)>) -> bool {
    while !data.is_empty() && data[0] != 0 {
        let Some(space) = data.iter().position(|b| *b == b' ') else {
            return false;
        };
        let Some(len) = std::str::from_utf8(&data[..space])
            .ok()
            .and_then(|s| s.parse::<usize>().ok())
        else {
            return false;
        };
        if len <= space + 1 || len > data.len() {
            return false;
        }
        let record = &data[space + 1..len];
        let record = record.strip_suffix(b"\n").unwrap_or(record);
        let Some(eq) = record.iter().position(|b| *b == b'=') else {
            return false;
        };
        out.push((
            String::from_utf8_lossy(&record[..eq]).into_owned(),
            String::from_utf8_lossy(&record[eq + 1..]).into_owned(),
        ));
        data = &data[len..];
    }
    true
}

/// `ls -l`'s mode string of a member.
fn mode_string(kind: u8, mode: u32) -> String {
    let mut s = String::with_capacity(10);
    s.push(match kind {
        b'5' => 'd',
        b'2' => 'l',
        b'3' => 'c',
        b'4' => 'b',
        b'6' => 'p',
        _ => '-',
    });
    for (shift, special, set) in [(6, 0o4000, 's'), (3, 0o2000, 's'), (0, 0o1000, 't')] {
        let bits = (mode >> shift) & 7;
        s.push(if bits & 4 != 0 { 'r' } else { '-' });
        s.push(if bits & 2 != 0 { 'w' } else { '-' });
        s.push(match (bits & 1 != 0, mode & special != 0) {
            (true, true) => set,
            (false, true) => set.to_ascii_uppercase(),
            (true, false) => 'x',
            (false, false) => '-',
        });
    }
    s
}

/// busybox's `tar tv` line: `-rw-r--r-- root/root       5 2024-01-01 12:00:00 name`.
fn verbose_line(e: &Entry) -> String {
    let user = if e.uname.is_empty() {
        e.uid.to_string()
    } else {
        e.uname.clone()
    };
    let group = if e.gname.is_empty() {
        e.gid.to_string()
    } else {
        e.gname.clone()
    };
    // Clamped to the year 9999: a hostile header's time must not overflow the calendar.
    let mtime = e.mtime.min(253_402_300_799);
    let (y, mo, d) = super::files::civil_from_days((mtime / 86400) as i64);
    let day = mtime % 86400;
    let mut line = format!(
        "{} {user}/{group} {:>9} {y:04}-{mo:02}-{d:02} {:02}:{:02}:{:02} {}",
        mode_string(e.kind, e.mode),
        e.size,
        day / 3600,
        day / 60 % 60,
        day % 60,
        e.name
    );
    if !e.link.is_empty() && matches!(e.kind, b'1' | b'2') {
        line.push_str(" -> ");
        line.push_str(&e.link);
    }
    line.push('\n');
    line
}

// ---------------------------------------------------------------------------------------
// Listing and extracting

/// `tar -t` and `tar -x`.
fn read_archive(ctx: &Ctx, io: &mut Io, o: &Options, extract: bool) -> i32 {
    let name = o.file.as_deref().unwrap_or("-");
    let input: Box<dyn Read> = if name == "-" {
        Box::new(io.input.clone())
    } else {
        match File::open(ctx.path(name)) {
            Ok(f) => Box::new(f),
            Err(e) => {
                io.error("tar", format_args!("can't open '{name}': {}", errtext(&e)));
                return 1;
            }
        }
    };
    let root = match &o.dir {
        Some(d) => {
            let p = ctx.path(d);
            match fs::metadata(&p) {
                Ok(m) if m.is_dir() => p,
                Ok(_) => {
                    io.error(
                        "tar",
                        format_args!("can't change directory to '{d}': Not a directory"),
                    );
                    return 1;
                }
                Err(e) => {
                    io.error(
                        "tar",
                        format_args!("can't change directory to '{d}': {}", errtext(&e)),
                    );
                    return 1;
                }
            }
        }
        None => ctx.cwd.clone(),
    };
    let mut x = Extractor {
        root,
        touch: o.touch,
        same_permissions: !o.no_same_permissions,
        links: HashSet::new(),
        warned_slash: false,
        code: 0,
    };
    let wanted: Vec<String> = o
        .operands
        .iter()
        .map(|s| s.trim_start_matches('/').trim_end_matches('/').to_owned())
        .collect();
    let mut found = vec![false; wanted.len()];
    let mut rd = Reader::new(BufReader::with_capacity(CHUNK, input));
    loop {
        let e = match rd.next(io) {
            Ok(Some(e)) => e,
            Ok(None) => break,
            Err(msg) => {
                io.error("tar", msg);
                return 1;
            }
        };
        if !wanted.is_empty() {
            let n = e.name.trim_start_matches('/').trim_end_matches('/');
            let hit = wanted.iter().position(|w| {
                n == w || (n.starts_with(w.as_str()) && n.as_bytes().get(w.len()) == Some(&b'/'))
            });
            match hit {
                Some(i) => found[i] = true,
                None => {
                    if let Err(msg) = rd.data(e.size, None) {
                        io.error("tar", msg);
                        return 1;
                    }
                    continue;
                }
            }
        }
        let result = if extract {
            if o.verbose {
                let _ = writeln!(io.out, "{}", e.name.trim_start_matches('/'));
            }
            x.extract(&mut rd, io, &e)
        } else {
            let line = if o.verbose {
                verbose_line(&e)
            } else {
                format!("{}\n", e.name)
            };
            let _ = io.out.write_all(line.as_bytes());
            rd.data(e.size, None).map(drop)
        };
        if let Err(msg) = result {
            io.error("tar", msg);
            return 1;
        }
    }
    rd.finish();
    let _ = io.out.flush();
    for (w, found) in o.operands.iter().zip(found) {
        if !found {
            io.error("tar", format_args!("{w}: not found in archive"));
            x.code = 1;
        }
    }
    x.code
}

struct Extractor {
    root: PathBuf,
    touch: bool,
    same_permissions: bool,
    /// The symlinks this archive created (and hard links to them), relative to `root`: no
    /// member is created through one.
    links: HashSet<PathBuf>,
    warned_slash: bool,
    code: i32,
}

impl Extractor {
    /// A member's path relative to the root as components: leading `/` stripped, `.` and
    /// empty components dropped; an error for a `..`.
    fn components(&mut self, io: &mut Io, name: &str) -> Result<Vec<String>, String> {
        let stripped = name.trim_start_matches('/');
        if stripped.len() != name.len() && !self.warned_slash {
            self.warned_slash = true;
            io.error("tar", "removing leading '/' from member names");
        }
        let parts: Vec<String> = stripped
            .split('/')
            .filter(|c| !c.is_empty() && *c != ".")
            .map(str::to_owned)
            .collect();
        if parts.iter().any(|c| c == "..") {
            return Err(format!("can't extract '{name}': member name contains '..'"));
        }
        Ok(parts)
    }

    /// The first of the first `upto` prefixes of `parts` that is a symlink this archive
    /// created.
    fn through_link(&self, parts: &[String], upto: usize) -> Option<PathBuf> {
        if self.links.is_empty() {
            return None;
        }
        let mut p = PathBuf::new();
        for c in &parts[..upto] {
            p.push(c);
            if self.links.contains(&p) {
                return Some(p);
            }
        }
        None
    }

    /// A recoverable error: reported, the member skipped, the exit status 1.
    fn fail(&mut self, io: &mut Io, msg: impl std::fmt::Display) {
        io.error("tar", msg);
        self.code = 1;
    }

    /// Extracts one member, its data consumed whatever happens; `Err` only when the archive
    /// itself cannot be read on.
    fn extract<R: Read>(
        &mut self,
        rd: &mut Reader<R>,
        io: &mut Io,
        e: &Entry,
    ) -> Result<(), String> {
        let parts = match self.components(io, &e.name) {
            Ok(p) => p,
            Err(msg) => {
                self.fail(io, msg);
                return rd.data(e.size, None).map(drop);
            }
        };
        if parts.is_empty() {
            // The target directory itself (`./`).
            if e.kind != b'5' {
                self.fail(
                    io,
                    format_args!("can't extract '{}': empty member name", e.name),
                );
            }
            return rd.data(e.size, None).map(drop);
        }
        let rel: PathBuf = parts.iter().collect();
        let path = self.root.join(&rel);
        let display = rel.display().to_string();
        let upto = if e.kind == b'5' {
            parts.len()
        } else {
            parts.len() - 1
        };
        if let Some(link) = self.through_link(&parts, upto) {
            self.fail(
                io,
                format_args!(
                    "can't extract '{display}': path goes through symlink '{}'",
                    link.display()
                ),
            );
            return rd.data(e.size, None).map(drop);
        }
        if let Some(parent) = path.parent() {
            if let Err(err) = fs::create_dir_all(parent) {
                self.fail(
                    io,
                    format_args!("can't make dir {}: {}", parent_display(&rel), errtext(&err)),
                );
                return rd.data(e.size, None).map(drop);
            }
        }
        if e.kind == b'5' {
            if let Err(err) = fs::create_dir_all(&path) {
                self.fail(
                    io,
                    format_args!("can't make dir {display}: {}", errtext(&err)),
                );
            }
            return Ok(());
        }
        // A hard link's target is checked as a member's path is, before anything goes.
        let mut hard_target = None;
        if e.kind == b'1' {
            let target = match self.components(io, &e.link) {
                Ok(t) if !t.is_empty() => t,
                Ok(_) => {
                    self.fail(
                        io,
                        format_args!("can't create hardlink {display} to {}: empty name", e.link),
                    );
                    return Ok(());
                }
                Err(msg) => {
                    self.fail(io, msg);
                    return Ok(());
                }
            };
            if let Some(link) = self.through_link(&target, target.len() - 1) {
                self.fail(
                    io,
                    format_args!(
                        "can't create hardlink {display} to {}: path goes through symlink '{}'",
                        e.link,
                        link.display()
                    ),
                );
                return Ok(());
            }
            let target: PathBuf = target.iter().collect();
            if target == rel {
                // `tar cf t.tar f f` links the second `f` to itself (busybox skips it too).
                return Ok(());
            }
            hard_target = Some(target);
        } else if !matches!(e.kind, b'0' | b'2') {
            self.fail(
                io,
                format_args!("can't create node {display}: Not supported"),
            );
            return rd.data(e.size, None).map(drop);
        }
        // Never write through what is there: remove it first (busybox's "unlink old").
        match fs::symlink_metadata(&path) {
            Ok(m) if m.is_dir() => {
                self.fail(
                    io,
                    format_args!("can't remove old file {display}: Is a directory"),
                );
                return rd.data(e.size, None).map(drop);
            }
            Ok(_) => {
                if let Err(err) = fs::remove_file(&path) {
                    self.fail(
                        io,
                        format_args!("can't remove old file {display}: {}", errtext(&err)),
                    );
                    return rd.data(e.size, None).map(drop);
                }
                self.links.remove(&rel);
            }
            Err(_) => {}
        }
        if let Some(target) = hard_target {
            match fs::hard_link(self.root.join(&target), &path) {
                Ok(()) => {
                    // A link to a symlink is that symlink again.
                    if self.links.contains(&target) {
                        self.links.insert(rel);
                    }
                }
                Err(err) => self.fail(
                    io,
                    format_args!(
                        "can't create hardlink {display} to {}: {}",
                        e.link,
                        errtext(&err)
                    ),
                ),
            }
            return Ok(());
        }
        if e.kind == b'2' {
            match make_symlink(&e.link, &path) {
                Ok(()) => {
                    self.links.insert(rel);
                }
                // As busybox: reported, but not an error (WASI may not allow links).
                Err(err) => io.error(
                    "tar",
                    format_args!(
                        "can't create symlink {display} to {}: {}",
                        e.link,
                        errtext(&err)
                    ),
                ),
            }
            return Ok(());
        }
        self.file(rd, io, e, &path, &display)
    }

    fn file<R: Read>(
        &mut self,
        rd: &mut Reader<R>,
        io: &mut Io,
        e: &Entry,
        path: &Path,
        display: &str,
    ) -> Result<(), String> {
        let file = match OpenOptions::new().write(true).create_new(true).open(path) {
            Ok(f) => f,
            Err(err) => {
                self.fail(
                    io,
                    format_args!("can't open '{display}': {}", errtext(&err)),
                );
                return rd.data(e.size, None).map(drop);
            }
        };
        let mut w = BufWriter::with_capacity(CHUNK, file);
        let mut failed = rd.data(e.size, Some(&mut w))?;
        let file = match w.into_inner() {
            Ok(f) => Some(f),
            Err(err) => {
                failed = failed.or(Some(err.into_error()));
                None
            }
        };
        if let Some(err) = failed {
            self.fail(
                io,
                format_args!("{display}: write error: {}", errtext(&err)),
            );
            return Ok(());
        }
        let Some(file) = file else { return Ok(()) };
        if self.same_permissions {
            set_mode(&file, e.mode);
        }
        if !self.touch {
            // Best effort, as GNU tar warns but carries on.
            if let Some(t) = UNIX_EPOCH.checked_add(Duration::from_secs(e.mtime)) {
                let _ = file.set_modified(t);
            }
        }
        Ok(())
    }
}

fn parent_display(rel: &Path) -> String {
    rel.parent()
        .map(|p| p.display().to_string())
        .unwrap_or_default()
}

#[cfg(unix)]
fn make_symlink(target: &str, path: &Path) -> io::Result<()> {
    std::os::unix::fs::symlink(target, path)
}

/// WASI's `path_symlink`, through the one stable door to it (`std::os::wasi::fs` is not
/// stable): the deprecated `soft_link`, which on WASI is exactly that call.
#[cfg(target_os = "wasi")]
fn make_symlink(target: &str, path: &Path) -> io::Result<()> {
    #[allow(deprecated)]
    fs::soft_link(target, path)
}

#[cfg(not(any(unix, target_os = "wasi")))]
fn make_symlink(_: &str, _: &Path) -> io::Result<()> {
    Err(io::Error::new(io::ErrorKind::Unsupported, "Not supported"))
}

#[cfg(unix)]
fn set_mode(file: &File, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    let _ = file.set_permissions(fs::Permissions::from_mode(mode & 0o7777));
}

/// WASI has no modes.
#[cfg(not(unix))]
fn set_mode(_: &File, _: u32) {}

// ---------------------------------------------------------------------------------------
// Creating

/// A member's mode and owner from its metadata: the real ones on Unix; under WASI, which has
/// neither (and whose read-only bit says nothing reliable), `0755` directories, `0777`
/// symlinks and `0644` files, owned by 0.
#[cfg(unix)]
fn mode_of(m: &fs::Metadata) -> (u32, u64, u64) {
    use std::os::unix::fs::MetadataExt;
    (m.mode() & 0o7777, u64::from(m.uid()), u64::from(m.gid()))
}

#[cfg(not(unix))]
fn mode_of(m: &fs::Metadata) -> (u32, u64, u64) {
    let mode = if m.is_dir() {
        0o755
    } else if m.is_symlink() {
        0o777
    } else {
        0o644
    };
    (mode, 0, 0)
}

/// busybox's `strip_unsafe_prefix`: leading `/` and everything up to the last `..`
/// component; the notice once.
fn strip_unsafe(name: &str, warned: &mut bool, io: &mut Io) -> String {
    let mut cp = name;
    loop {
        if let Some(rest) = cp.strip_prefix('/') {
            cp = rest;
        } else if let Some(rest) = cp.strip_prefix("../") {
            cp = rest;
        } else if let Some(at) = cp.find("/../") {
            cp = &cp[at + 4..];
        } else {
            break;
        }
    }
    if cp == ".." || cp.ends_with("/..") {
        cp = "";
    }
    if cp.len() != name.len() && !*warned {
        *warned = true;
        let removed = &name[..name.len() - cp.len()];
        io.error(
            "tar",
            format_args!("removing leading '{removed}' from member names"),
        );
    }
    cp.to_owned()
}

struct Creator<'a> {
    out: BufWriter<Sink>,
    /// The archive's own path when it is a file: never archived into itself.
    archive: Option<PathBuf>,
    verbose: Option<Sink>,
    warned: bool,
    errors: bool,
    buf: Vec<u8>,
    io: &'a mut Io,
}

impl Creator<'_> {
    /// Adds `path` as `name` (as given: stripped here), directories recursively. `Err` is a
    /// write error on the archive, which ends it.
    fn add(&mut self, name: &str, path: &Path) -> io::Result<()> {
        let m = match fs::symlink_metadata(path) {
            Ok(m) => m,
            Err(e) => {
                self.io
                    .error("tar", format_args!("{name}: {}", errtext(&e)));
                self.errors = true;
                return Ok(());
            }
        };
        if self.archive.as_deref() == Some(path) {
            self.io
                .error("tar", format_args!("{name}: file is the archive; skipping"));
            return Ok(());
        }
        let member = strip_unsafe(name, &mut self.warned, self.io);
        let (mode, uid, gid) = mode_of(&m);
        let mtime = m
            .modified()
            .ok()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_secs());
        let mut e = Entry {
            name: member.clone(),
            mode,
            uid,
            gid,
            mtime,
            ..Entry::default()
        };
        if m.is_dir() {
            e.kind = b'5';
            if !member.is_empty() {
                e.name.push('/');
                self.header(&e)?;
            }
            let mut children: Vec<String> = match fs::read_dir(path) {
                Ok(rd) => rd
                    .filter_map(Result::ok)
                    .map(|d| d.file_name().to_string_lossy().into_owned())
                    .collect(),
                Err(err) => {
                    self.io
                        .error("tar", format_args!("{name}: {}", errtext(&err)));
                    self.errors = true;
                    return Ok(());
                }
            };
            children.sort();
            let base = name.trim_end_matches('/');
            for child in children {
                let child_name = format!("{base}/{child}");
                self.add(&child_name, &path.join(&child))?;
            }
            Ok(())
        } else if m.is_symlink() {
            e.kind = b'2';
            e.link = match fs::read_link(path) {
                Ok(t) => t.to_string_lossy().into_owned(),
                Err(err) => {
                    self.io
                        .error("tar", format_args!("{name}: {}", errtext(&err)));
                    self.errors = true;
                    return Ok(());
                }
            };
            self.header(&e)
        } else if m.is_file() {
            let mut f = match File::open(path) {
                Ok(f) => f,
                Err(err) => {
                    self.io
                        .error("tar", format_args!("{name}: {}", errtext(&err)));
                    self.errors = true;
                    return Ok(());
                }
            };
            e.kind = b'0';
            e.size = m.len();
            self.header(&e)?;
            self.copy(&mut f, e.size, name)
        } else {
            self.io
                .error("tar", format_args!("{name}: unknown file type"));
            self.errors = true;
            Ok(())
        }
    }

    fn header(&mut self, e: &Entry) -> io::Result<()> {
        if let Some(v) = self.verbose.as_mut() {
            let _ = writeln!(v, "{}", e.name);
        }
        write_header(&mut self.out, e)
    }

    /// Copies exactly `size` bytes of `f` and the padding: a file that shrank meanwhile is
    /// padded with zeros (and reported), one that grew is cut at its header's size.
    fn copy(&mut self, f: &mut File, size: u64, name: &str) -> io::Result<()> {
        let mut left = size;
        let mut buf = std::mem::take(&mut self.buf);
        let mut short = None;
        while left > 0 {
            let want = left.min(buf.len() as u64) as usize;
            let n = if short.is_some() {
                buf[..want].fill(0);
                want
            } else {
                match f.read(&mut buf[..want]) {
                    Ok(0) => {
                        short = Some(format!(
                            "{name}: file shrank by {left} bytes; padding with zeros"
                        ));
                        continue;
                    }
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        short = Some(format!("{name}: read error: {}", errtext(&e)));
                        continue;
                    }
                }
            };
            self.out.write_all(&buf[..n])?;
            left -= n as u64;
        }
        self.buf = buf;
        let pad = (BLOCK as u64 - size % BLOCK as u64) % BLOCK as u64;
        self.out.write_all(&[0u8; BLOCK][..pad as usize])?;
        if let Some(msg) = short {
            self.io.error("tar", msg);
            self.errors = true;
        }
        Ok(())
    }
}

/// `tar -c`.
fn create(ctx: &Ctx, io: &mut Io, o: &Options) -> i32 {
    if o.operands.is_empty() {
        io.error("tar", "empty archive");
        return 1;
    }
    let name = o.file.as_deref().unwrap_or("-");
    let (sink, archive) = if name == "-" {
        (io.out.clone(), None)
    } else {
        let path = ctx.path(name);
        match File::create(&path) {
            Ok(f) => (
                Sink::File(std::rc::Rc::new(std::cell::RefCell::new(f))),
                Some(path),
            ),
            Err(e) => {
                io.error("tar", format_args!("can't open '{name}': {}", errtext(&e)));
                return 1;
            }
        }
    };
    let base = match &o.dir {
        Some(d) => ctx.path(d),
        None => ctx.cwd.clone(),
    };
    let verbose = o.verbose.then(|| {
        if archive.is_none() {
            io.err.clone()
        } else {
            io.out.clone()
        }
    });
    let mut c = Creator {
        out: BufWriter::with_capacity(CHUNK, sink),
        archive,
        verbose,
        warned: false,
        errors: false,
        buf: vec![0; CHUNK],
        io,
    };
    for op in &o.operands {
        let path = if op.starts_with('/') {
            normalize(Path::new(op))
        } else {
            normalize(&base.join(op))
        };
        // `dir/` is archived as `dir` (its members `dir/…`); `/` stays.
        let trimmed = op.trim_end_matches('/');
        let member = if trimmed.is_empty() {
            op.as_str()
        } else {
            trimmed
        };
        if let Err(e) = c.add(member, &path) {
            c.io.error("tar", format_args!("write error: {}", errtext(&e)));
            return 1;
        }
    }
    let end = c
        .out
        .write_all(&[0u8; 2 * BLOCK])
        .and_then(|_| c.out.flush());
    if let Some(v) = c.verbose.as_mut() {
        let _ = v.flush();
    }
    if let Err(e) = end {
        c.io.error("tar", format_args!("write error: {}", errtext(&e)));
        return 1;
    }
    if c.errors {
        c.io.error("tar", "error exit delayed from previous errors");
        return 1;
    }
    0
}

#[cfg(test)]
mod tests {
    use super::super::testing::run_in;
    use super::*;

    /// A fresh directory for one test.
    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("toolbox-tar-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// Runs `argv` in `cwd` with `input`: (code, stdout bytes, stderr).
    fn run_bytes(cwd: &Path, argv: &[&str], input: &[u8]) -> (i32, Vec<u8>, String) {
        let (mut io, out, err) = Io::buffers(input);
        let mut ctx = Ctx::new_in(cwd);
        let argv: Vec<String> = argv.iter().map(|s| s.to_string()).collect();
        let code = crate::dispatch(&mut ctx, &mut io, &argv);
        let out = out.borrow().clone();
        let err = String::from_utf8_lossy(&err.borrow()).into_owned();
        (code, out, err)
    }

    /// An archive of raw members (name, type, link, data), as a hostile writer makes it.
    fn archive(members: &[(&str, u8, &str, &[u8])]) -> Vec<u8> {
        let mut out = Vec::new();
        for (name, kind, link, data) in members {
            let e = Entry {
                name: name.to_string(),
                kind: *kind,
                mode: 0o644,
                size: data.len() as u64,
                mtime: 1_000_000_000,
                link: link.to_string(),
                ..Entry::default()
            };
            write_header(&mut out, &e).unwrap();
            out.extend_from_slice(data);
            out.resize(out.len().div_ceil(BLOCK) * BLOCK, 0);
        }
        out.extend_from_slice(&[0u8; 2 * BLOCK]);
        out
    }

    fn listing(archive: &[u8]) -> String {
        run_in(Path::new("/"), &["tar", "tf", "-"], archive).1
    }

    /// A tree with text, a binary file bigger than the copy buffer, an empty directory and
    /// (on Unix) a symlink and an executable.
    fn make_tree(root: &Path) {
        fs::create_dir_all(root.join("sub/deeper")).unwrap();
        fs::create_dir_all(root.join("empty")).unwrap();
        fs::write(root.join("a.txt"), "hello\n").unwrap();
        let big: Vec<u8> = (0..200_000u32).map(|i| (i * 7 % 251) as u8).collect();
        fs::write(root.join("sub/big.bin"), &big).unwrap();
        fs::write(root.join("sub/deeper/zero"), "").unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::os::unix::fs::symlink("a.txt", root.join("link")).unwrap();
            fs::write(root.join("run.sh"), "#!/bin/sh\n").unwrap();
            fs::set_permissions(root.join("run.sh"), fs::Permissions::from_mode(0o755)).unwrap();
        }
    }

    /// Every path under `root` with its kind and contents, for comparing trees.
    fn tree(root: &Path) -> Vec<(String, String)> {
        let mut out = Vec::new();
        let mut stack = vec![root.to_path_buf()];
        while let Some(dir) = stack.pop() {
            for e in fs::read_dir(&dir).unwrap() {
                let p = e.unwrap().path();
                let rel = p.strip_prefix(root).unwrap().display().to_string();
                let m = fs::symlink_metadata(&p).unwrap();
                if m.is_symlink() {
                    out.push((rel, format!("-> {}", fs::read_link(&p).unwrap().display())));
                } else if m.is_dir() {
                    out.push((rel, "dir".into()));
                    stack.push(p);
                } else {
                    let data = fs::read(&p).unwrap();
                    out.push((
                        rel,
                        format!(
                            "{} bytes, sum {}",
                            data.len(),
                            data.iter().map(|b| u64::from(*b)).sum::<u64>()
                        ),
                    ));
                }
            }
        }
        out.sort();
        out
    }

    #[test]
    fn round_trip_of_a_tree() {
        let dir = scratch("round");
        make_tree(&dir.join("src/d"));
        // To a file, then extracted with kubectl's options.
        let (code, _, err) = run_bytes(&dir.join("src"), &["tar", "cf", "../d.tar", "d"], b"");
        assert_eq!((code, err.as_str()), (0, ""));
        fs::create_dir(dir.join("out")).unwrap();
        let (code, _, err) = run_bytes(&dir, &["tar", "-xmf", "d.tar", "-C", "out"], b"");
        assert_eq!((code, err.as_str()), (0, ""));
        assert_eq!(tree(&dir.join("out/d")), tree(&dir.join("src/d")));

        // To stdout from another directory (`-C`), extracted from stdin.
        let (code, bytes, err) = run_bytes(
            Path::new("/"),
            &[
                "tar",
                "-c",
                "-f",
                "-",
                "-C",
                dir.join("src").to_str().unwrap(),
                "d",
            ],
            b"",
        );
        assert_eq!((code, err.as_str()), (0, ""));
        assert_eq!(
            bytes,
            fs::read(dir.join("d.tar")).unwrap(),
            "the same archive both ways"
        );
        fs::create_dir(dir.join("out2")).unwrap();
        let (code, out, err) = run_bytes(
            &dir,
            &[
                "tar",
                "--no-same-permissions",
                "--no-same-owner",
                "-xvmf",
                "-",
                "-C",
                "out2",
            ],
            &bytes,
        );
        assert_eq!((code, err.as_str()), (0, ""));
        assert!(String::from_utf8_lossy(&out).contains("d/sub/big.bin\n"));
        assert_eq!(tree(&dir.join("out2/d")), tree(&dir.join("src/d")));

        let mut names = vec![
            "d/",
            "d/a.txt",
            "d/empty/",
            "d/sub/",
            "d/sub/big.bin",
            "d/sub/deeper/",
            "d/sub/deeper/zero",
        ];
        if cfg!(unix) {
            names.extend(["d/link", "d/run.sh"]);
        }
        names.sort();
        assert_eq!(
            listing(&bytes),
            names.iter().map(|n| format!("{n}\n")).collect::<String>()
        );

        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = |p: &str| fs::metadata(dir.join(p)).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode("out/d/run.sh"), 0o755, "modes restored");
            // Without `m` the archived time is restored.
            fs::create_dir(dir.join("out3")).unwrap();
            assert_eq!(
                run_bytes(&dir, &["tar", "xf", "d.tar", "-C", "out3"], b"").0,
                0
            );
            let t = |p: &str| fs::metadata(dir.join(p)).unwrap().modified().unwrap();
            let secs = |t: std::time::SystemTime| t.duration_since(UNIX_EPOCH).unwrap().as_secs();
            assert_eq!(secs(t("out3/d/a.txt")), secs(t("src/d/a.txt")));
        }

        // Verbose listing, busybox's shape.
        let (_, out, _) = run_in(&dir, &["tar", "tvf", "d.tar"], b"");
        let line = out.lines().find(|l| l.ends_with(" d/a.txt")).unwrap();
        assert!(line.starts_with("-rw"), "{line}");
        assert!(line.contains("        6 "), "{line}");
        // A member named on the command line: only it.
        let (code, out, _) = run_in(&dir, &["tar", "tf", "d.tar", "d/sub/deeper"], b"");
        assert_eq!(
            (code, out.as_str()),
            (0, "d/sub/deeper/\nd/sub/deeper/zero\n")
        );
        let (code, _, err) = run_in(&dir, &["tar", "tf", "d.tar", "nope"], b"");
        assert_eq!(
            (code, err.as_str()),
            (1, "tar: nope: not found in archive\n")
        );
        fs::remove_dir_all(&dir).unwrap();
    }

    /// kubectl's copy out: `tar cf - /abs/path`, names relative, said once on stderr.
    #[test]
    fn absolute_operands_lose_their_slash() {
        let dir = scratch("abs");
        make_tree(&dir.join("x"));
        let abs = dir.join("x");
        let (code, bytes, err) = run_bytes(
            Path::new("/"),
            &["tar", "cf", "-", abs.to_str().unwrap()],
            b"",
        );
        assert_eq!(code, 0);
        assert_eq!(err, "tar: removing leading '/' from member names\n");
        let rel = abs.to_str().unwrap().trim_start_matches('/');
        let names = listing(&bytes);
        assert!(
            names.starts_with(&format!("{rel}/\n{rel}/a.txt\n")),
            "{names}"
        );

        // An archive with absolute names extracts below the directory.
        let bytes = archive(&[("/abs/file", b'0', "", b"data")]);
        let (code, _, err) = run_bytes(&dir, &["tar", "xf", "-"], &bytes);
        assert_eq!(
            (code, err.as_str()),
            (0, "tar: removing leading '/' from member names\n")
        );
        assert_eq!(fs::read(dir.join("abs/file")).unwrap(), b"data");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn long_names_round_trip() {
        let dir = scratch("long");
        // A name past 100 bytes that splits into ustar's prefix, one that cannot (a single
        // 150-byte component) and a symlink target past 100 bytes.
        let deep = format!("{}/{}", "p".repeat(120), "q".repeat(90));
        let flat = "f".repeat(150);
        let src = dir.join("src");
        fs::create_dir_all(src.join(&deep).parent().unwrap()).unwrap();
        fs::write(src.join(&deep), "deep").unwrap();
        fs::write(src.join(&flat), "flat").unwrap();
        #[cfg(unix)]
        std::os::unix::fs::symlink("t".repeat(130), src.join("l")).unwrap();
        let (code, bytes, err) = run_bytes(&src, &["tar", "cf", "-", "."], b"");
        assert_eq!((code, err.as_str()), (0, ""));
        let names = listing(&bytes);
        assert!(names.contains(&format!("./{deep}\n")), "{names}");
        assert!(names.contains(&format!("./{flat}\n")), "{names}");
        fs::create_dir(dir.join("out")).unwrap();
        assert_eq!(
            run_bytes(&dir.join("out"), &["tar", "xf", "-"], &bytes).0,
            0
        );
        assert_eq!(fs::read(dir.join("out").join(&deep)).unwrap(), b"deep");
        assert_eq!(fs::read(dir.join("out").join(&flat)).unwrap(), b"flat");
        #[cfg(unix)]
        assert_eq!(
            fs::read_link(dir.join("out/l")).unwrap(),
            PathBuf::from("t".repeat(130))
        );

        // A pax header's path (what Go's archive/tar, hence kubectl, writes).
        let long = format!("x/{}", "y".repeat(200));
        let record = format!(" path={long}\n");
        let record = format!(
            "{}{record}",
            record.len() + (record.len() + 3).to_string().len()
        );
        let mut pax = archive(&[("PaxHeaders/y", b'x', "", record.as_bytes())]);
        pax.truncate(pax.len() - 2 * BLOCK);
        pax.extend(archive(&[("x/yyy", b'0', "", b"pax")]));
        assert_eq!(listing(&pax), format!("{long}\n"));
        assert_eq!(run_bytes(&dir.join("out"), &["tar", "xf", "-"], &pax).0, 0);
        assert_eq!(fs::read(dir.join("out").join(&long)).unwrap(), b"pax");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn dot_dot_is_refused() {
        let dir = scratch("dotdot");
        fs::create_dir(dir.join("in")).unwrap();
        let bytes = archive(&[
            ("../evil", b'0', "", b"x"),
            ("a/../../evil2", b'0', "", b"x"),
            ("ok/file", b'0', "", b"fine"),
            ("hard", b'1', "../evil3", b""),
        ]);
        let (code, _, err) = run_bytes(&dir.join("in"), &["tar", "xf", "-"], &bytes);
        assert_eq!(code, 1);
        assert_eq!(
            err,
            "tar: can't extract '../evil': member name contains '..'\n\
             tar: can't extract 'a/../../evil2': member name contains '..'\n\
             tar: can't extract '../evil3': member name contains '..'\n"
        );
        assert!(!dir.join("evil").exists() && !dir.join("evil2").exists());
        assert_eq!(
            fs::read(dir.join("in/ok/file")).unwrap(),
            b"fine",
            "the rest is extracted"
        );
        fs::remove_dir_all(&dir).unwrap();
    }

    #[cfg(unix)]
    #[test]
    fn symlink_escapes_are_refused() {
        let dir = scratch("escape");
        fs::create_dir(dir.join("in")).unwrap();
        fs::create_dir(dir.join("outside")).unwrap();
        fs::write(dir.join("outside/target"), "keep").unwrap();
        let outside = dir.join("outside");
        let outside = outside.to_str().unwrap();
        let target = format!("{outside}/target");
        let bytes = archive(&[
            ("l", b'2', outside, b""),
            ("l/pwned", b'0', "", b"x"),
            ("l/sub/", b'5', "", b""),
            ("l/", b'5', "", b""),
            ("rel", b'2', "../outside", b""),
            ("rel/pwned", b'0', "", b"x"),
            ("h", b'1', "l", b""),
            ("h/pwned", b'0', "", b"x"),
            ("f", b'2', &target, b""),
            ("f", b'0', "", b"replaced"),
        ]);
        let (code, _, err) = run_bytes(&dir.join("in"), &["tar", "-xf", "-"], &bytes);
        assert_eq!(code, 1);
        assert_eq!(
            err,
            "tar: can't extract 'l/pwned': path goes through symlink 'l'\n\
             tar: can't extract 'l/sub': path goes through symlink 'l'\n\
             tar: can't extract 'l': path goes through symlink 'l'\n\
             tar: can't extract 'rel/pwned': path goes through symlink 'rel'\n\
             tar: can't extract 'h/pwned': path goes through symlink 'h'\n"
        );
        assert_eq!(
            fs::read_dir(outside).unwrap().count(),
            1,
            "nothing written outside"
        );
        assert_eq!(
            fs::read(&target).unwrap(),
            b"keep",
            "a link is replaced, not written through"
        );
        assert_eq!(fs::read(dir.join("in/f")).unwrap(), b"replaced");
        assert!(fs::symlink_metadata(dir.join("in/l")).unwrap().is_symlink());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn errors_in_busybox_words() {
        let dir = scratch("errors");
        fs::write(dir.join("here"), "x").unwrap();
        let (code, bytes, err) = run_bytes(&dir, &["tar", "cf", "-", "missing", "here"], b"");
        assert_eq!(code, 1);
        assert_eq!(
            err,
            "tar: missing: No such file or directory\ntar: error exit delayed from previous errors\n"
        );
        assert_eq!(listing(&bytes), "here\n", "the rest is archived");
        let cases: &[(&[&str], &str)] = &[
            (
                &["tar", "xf", "missing.tar"],
                "tar: can't open 'missing.tar': No such file or directory\n",
            ),
            (&["tar", "cf", "x.tar"], "tar: empty archive\n"),
            (&["tar", "-xf"], "tar: option requires an argument -- 'f'\n"),
            (&["tar", "xzf", "a"], "tar: invalid option -- 'z'\n"),
            (
                &["tar", "--frobnicate"],
                "tar: unrecognized option '--frobnicate'\n",
            ),
            (
                &["tar", "-f", "x"],
                "tar: exactly one of 'c', 'x' or 't' must be specified\n",
            ),
            (
                &["tar", "-cx"],
                "tar: exactly one of 'c', 'x' or 't' must be specified\n",
            ),
            (
                &["tar", "-xf", "here", "-C", "nodir"],
                "tar: can't change directory to 'nodir': No such file or directory\n",
            ),
        ];
        for (argv, want) in cases {
            let (code, _, err) = run_in(&dir, argv, b"");
            assert_eq!((code, err.as_str()), (1, *want), "{argv:?}");
        }
        // A broken archive: a bad checksum, then one cut short.
        let mut bad = archive(&[("f", b'0', "", b"data")]);
        bad[0] = b'g';
        assert_eq!(
            run_in(&dir, &["tar", "tf", "-"], &bad).2,
            "tar: invalid tar header checksum\n"
        );
        let good = archive(&[("f", b'0', "", &[7u8; 2000])]);
        let (code, _, err) = run_in(&dir, &["tar", "xf", "-"], &good[..1200]);
        assert_eq!((code, err.as_str()), (1, "tar: short read\n"));
        assert_eq!(
            run_in(
                &dir,
                &["tar", "tf", "-"],
                b"not a tar archive at all".repeat(30).as_slice()
            )
            .2,
            "tar: invalid tar magic\n"
        );
        // An empty input is an empty archive.
        assert_eq!(
            run_in(&dir, &["tar", "tf", "-"], b""),
            (0, String::new(), String::new())
        );
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn go_style_archives_extract() {
        // kubectl's writer: no directory members, parents implied, then two zero blocks.
        let dir = scratch("go");
        let bytes = archive(&[("x/a.txt", b'0', "", b"A"), ("x/sub/b.txt", b'0', "", b"B")]);
        let (code, _, err) = run_bytes(
            &dir,
            &["tar", "-xmf", "-", "-C", dir.to_str().unwrap()],
            &bytes,
        );
        assert_eq!((code, err.as_str()), (0, ""));
        assert_eq!(fs::read(dir.join("x/sub/b.txt")).unwrap(), b"B");
        // Re-extracting replaces the files.
        let bytes = archive(&[("x/a.txt", b'0', "", b"again")]);
        assert_eq!(run_bytes(&dir, &["tar", "xf", "-"], &bytes).0, 0);
        assert_eq!(fs::read(dir.join("x/a.txt")).unwrap(), b"again");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn numbers() {
        let mut f = [0u8; 12];
        put_number(&mut f, 0o777);
        assert_eq!(&f, b"00000000777\0");
        assert_eq!(get_number(&f).unwrap(), 0o777);
        put_number(&mut f, 1 << 40);
        assert_eq!(f[0], 0x80);
        assert_eq!(get_number(&f).unwrap(), 1 << 40);
        assert_eq!(get_number(b"  644 \0\0").unwrap(), 0o644);
        assert!(get_number(b"12x4\0").is_err());
        assert_eq!(mode_string(b'5', 0o755), "drwxr-xr-x");
        assert_eq!(mode_string(b'0', 0o4644), "-rwSr--r--");
    }
}
