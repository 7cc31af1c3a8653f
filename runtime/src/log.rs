//! Container logs in the CRI log format (`<RFC3339Nano> <stream> <F|P> <text>`), written to the
//! container's log file and copied to live subscribers (the local runner prints them).
//!
//! The file is reached only through a handle on its directory, opened component by component
//! under the pod's log directory without following symlinks ([`LogTarget`]): nothing outside
//! that directory is ever created or written, whatever is swapped in along the path later.
//! A [`LogLimit`] keeps the file from filling the disk.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::Write;
use std::os::fd::OwnedFd;
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{SecondsFormat, Utc};
use rustix::fs::{self as rfs, Mode, OFlags};
use rustix::io::Errno;
use tokio::sync::broadcast;

use crate::error::{Error, Result};
use crate::phase::Timer;

/// A line longer than this is cut into partial (`P`) records, as the CRI loggers do.
pub const MAX_LINE: usize = 16 * 1024;
/// kubelet's default `containerLogMaxSize` (10Mi).
pub const DEFAULT_MAX_SIZE: u64 = 10 << 20;
/// kubelet's default `containerLogMaxFiles`.
pub const DEFAULT_MAX_FILES: u32 = 5;
/// The smallest size limit: a few full-length records, so that one record never exceeds it.
pub const MIN_MAX_SIZE: u64 = 64 << 10;
/// Records queued for live subscribers before a writer waits for the slowest one.
pub const LIVE_CAPACITY: usize = 4096;
/// How long a writer waits for a stalled live subscriber before its lines are dropped there
/// (the subscriber is told how many; the file keeps them all).
const LIVE_STALL: Duration = Duration::from_secs(1);
/// Room kept under a hard cap for the line saying the cap was reached.
const CAP_NOTE_ROOM: u64 = 256;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    pub fn as_str(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
}

/// How a log file is kept from filling the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogLimit {
    /// None: the file's owner rotates it and asks for a reopen (kubelet for CRI log paths).
    #[default]
    Unlimited,
    /// Rotated as kubelet does with `containerLogMaxSize` / `containerLogMaxFiles`: a record
    /// that would take the file past `max_size` first moves it to `<name>.1` (older ones shift
    /// to `.2`, …) and at most `max_files` files are kept, the current one included.
    Rotate { max_size: u64, max_files: u32 },
    /// A hard cap for files someone else should rotate: past `max_size` one line says so and
    /// further records are dropped until a reopen starts a new file.
    Cap { max_size: u64 },
}

impl LogLimit {
    /// kubelet's defaults: 10Mi, 5 files.
    pub const DEFAULT_ROTATE: LogLimit = LogLimit::Rotate {
        max_size: DEFAULT_MAX_SIZE,
        max_files: DEFAULT_MAX_FILES,
    };

    /// Refuses sizes below [`MIN_MAX_SIZE`] and a file count of 0.
    pub fn check(self) -> Result<Self> {
        let (size, files) = match self {
            LogLimit::Unlimited => return Ok(self),
            LogLimit::Rotate {
                max_size,
                max_files,
            } => (max_size, max_files),
            LogLimit::Cap { max_size } => (max_size, 1),
        };
        if size < MIN_MAX_SIZE {
            return Err(Error::invalid(format!(
                "log size limit {size} is below the minimum of {MIN_MAX_SIZE} bytes"
            )));
        }
        if files == 0 {
            return Err(Error::invalid(
                "log file count must be at least 1 (the current file)",
            ));
        }
        Ok(self)
    }
}

/// A size as Kubernetes writes quantities (`10Mi`, `1G`, `65536`), as kubelet's
/// `containerLogMaxSize` is written.
pub fn parse_size(text: &str) -> Result<u64> {
    crate::manifest::parse_quantity(&serde_yaml_ng::Value::String(text.to_owned()))
}

/// Which limit applies to which log files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogLimits {
    /// Files wasmpod places itself, under its state directory (pods with no log directory:
    /// `wasmpod run`, a CRI pod created without one). Rotated by default.
    pub own: LogLimit,
    /// Files in the log directory a CRI client named: kubelet rotates them itself and calls
    /// ReopenContainerLog, so none by default; a `Cap` guards nodes where nobody rotates.
    pub client: LogLimit,
}

impl Default for LogLimits {
    fn default() -> Self {
        Self {
            own: LogLimit::DEFAULT_ROTATE,
            client: LogLimit::Unlimited,
        }
    }
}

/// Where a container's log file is: a handle on its directory and its name there. The handle
/// is opened once, at creation, and kept for every (re)open and rotation, so the path is never
/// resolved again.
#[derive(Clone)]
pub struct LogTarget {
    dir: Arc<OwnedFd>,
    name: OsString,
    path: PathBuf,
}

impl LogTarget {
    /// Opens the directory of `rel` under `root`, creating missing directories on the way.
    /// `rel` must be relative and plain (no `..`); each directory under `root` is opened with
    /// `O_NOFOLLOW`, so a symlink anywhere below `root` is refused before anything is made
    /// past it.
    pub fn open(root: &Path, rel: &Path) -> Result<Self> {
        let plain = rel.components().all(|c| matches!(c, Component::Normal(_)));
        let name = rel.file_name().map(OsStr::to_os_string);
        let (Some(name), true, false) = (name, plain, rel.is_absolute()) else {
            return Err(Error::invalid(format!(
                "log path {:?} must be relative to the log directory, without '..'",
                rel
            )));
        };
        std::fs::create_dir_all(root).map_err(|e| Error::io(root.display(), e))?;
        let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
        let mut dir = rfs::open(root, flags, Mode::empty())
            .map_err(|e| Error::io(format!("log directory {}", root.display()), e.into()))?;
        let mut walked = PathBuf::new();
        for part in rel.parent().into_iter().flat_map(Path::components) {
            walked.push(part);
            dir = open_subdir(&dir, part.as_os_str())
                .map_err(|e| refusal(e, root, &walked, "a directory"))?;
        }
        Ok(Self {
            dir: Arc::new(dir),
            name,
            path: root.join(rel),
        })
    }

    /// The file's path, for people and for CRI status; never opened by it.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Opens the file for appending, creating it; a symlink or anything but a regular file
    /// in its place is refused.
    fn open_file(&self) -> Result<File> {
        // O_NONBLOCK: a FIFO planted in its place must not hang the open.
        let flags = OFlags::WRONLY
            | OFlags::CREATE
            | OFlags::APPEND
            | OFlags::NOFOLLOW
            | OFlags::NONBLOCK
            | OFlags::CLOEXEC;
        let root = self.path.parent().unwrap_or(Path::new(""));
        let name = Path::new(&self.name);
        let fd = rfs::openat(&*self.dir, &self.name, flags, Mode::from_raw_mode(0o640))
            .map_err(|e| refusal(e, root, name, "a regular file"))?;
        let stat = rfs::fstat(&fd).map_err(|e| Error::io(self.path.display(), e.into()))?;
        if rfs::FileType::from_raw_mode(stat.st_mode) != rfs::FileType::RegularFile {
            return Err(Error::invalid(format!(
                "log file {} is not a regular file",
                self.path.display()
            )));
        }
        Ok(File::from(fd))
    }

    /// Moves the file to `<name>.1`, shifting older ones up and dropping what is past
    /// `max_files`; with `max_files` 1 the file is removed.
    fn rotate(&self, max_files: u32) -> std::io::Result<()> {
        let numbered = |i: u32| {
            let mut n = self.name.clone();
            n.push(format!(".{i}"));
            n
        };
        let keep = max_files.saturating_sub(1);
        if keep == 0 {
            return Ok(rfs::unlinkat(
                &*self.dir,
                &self.name,
                rfs::AtFlags::empty(),
            )?);
        }
        for i in (1..keep).rev() {
            match rfs::renameat(&*self.dir, numbered(i), &*self.dir, numbered(i + 1)) {
                Ok(()) | Err(Errno::NOENT) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(rfs::renameat(
            &*self.dir,
            &self.name,
            &*self.dir,
            numbered(1),
        )?)
    }
}

/// Opens (creating when missing) directory `name` in `dir` without following a symlink.
/// A symlink fails with ELOOP (Linux says ENOTDIR for it under `O_DIRECTORY`).
fn open_subdir(dir: &OwnedFd, name: &OsStr) -> rustix::io::Result<OwnedFd> {
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let opened = match rfs::openat(dir, name, flags, Mode::empty()) {
        Err(Errno::NOENT) => {
            match rfs::mkdirat(dir, name, Mode::from_raw_mode(0o755)) {
                Ok(()) | Err(Errno::EXIST) => {}
                Err(e) => return Err(e),
            }
            rfs::openat(dir, name, flags, Mode::empty())
        }
        other => other,
    };
    opened.map_err(|e| {
        let is_link = || {
            rfs::statat(dir, name, rfs::AtFlags::SYMLINK_NOFOLLOW)
                .is_ok_and(|st| rfs::FileType::from_raw_mode(st.st_mode) == rfs::FileType::Symlink)
        };
        if e == Errno::NOTDIR && is_link() {
            Errno::LOOP
        } else {
            e
        }
    })
}

/// The error for `rel` under `root` that was to be `what`: a symlink (ELOOP) or another kind
/// of file (ENOTDIR) is a refused request, anything else an I/O failure.
fn refusal(e: Errno, root: &Path, rel: &Path, what: &str) -> Error {
    let path = root.join(rel);
    match e {
        Errno::LOOP => Error::invalid(format!(
            "log path {} is a symlink; log files stay inside the log directory {}",
            path.display(),
            root.display()
        )),
        Errno::NOTDIR | Errno::NXIO => {
            Error::invalid(format!("log path {} is not {what}", path.display()))
        }
        e => Error::io(format!("log path {}", path.display()), e.into()),
    }
}

/// One log record, as delivered to live subscribers.
#[derive(Debug, Clone)]
pub struct LogLine {
    pub pod: Arc<str>,
    pub container: Arc<str>,
    pub stream: Stream,
    pub text: String,
    /// The text does not end a line (it was cut at [`MAX_LINE`]).
    pub partial: bool,
}

/// A container's output as the guest wrote it, for attachers.
#[derive(Debug, Clone)]
pub struct OutputChunk {
    pub stream: Stream,
    pub bytes: bytes::Bytes,
}

/// The log of one container run: splits both streams into lines and records them.
#[derive(Clone)]
pub struct ContainerLog {
    inner: Arc<Mutex<Inner>>,
}

struct Inner {
    pod: Arc<str>,
    container: Arc<str>,
    target: Option<LogTarget>,
    file: Option<File>,
    /// Bytes in the current file.
    size: u64,
    limit: LogLimit,
    /// The hard cap was reached: records are dropped until a reopen.
    capped: bool,
    live: Option<broadcast::Sender<LogLine>>,
    /// A live subscriber stayed full for [`LIVE_STALL`]: no more waiting until it drains.
    live_stalled: bool,
    /// Attachers: every write as it comes, before it is cut into lines.
    attach: Option<broadcast::Sender<OutputChunk>>,
    pending: [Vec<u8>; 2],
    /// Times the guest's start until its first record reaches the file (see
    /// [`ContainerLog::time_first_line`]).
    first_line: Option<Timer>,
}

impl Drop for Inner {
    /// A log dropped before any record was written had no first line to time.
    fn drop(&mut self) {
        if let Some(timer) = self.first_line.take() {
            timer.cancel();
        }
    }
}

impl ContainerLog {
    /// Opens (appending) the file of `target` when given; `live` receives every record as well.
    pub fn open(
        pod: &str,
        container: &str,
        target: Option<&LogTarget>,
        limit: LogLimit,
        live: Option<broadcast::Sender<LogLine>>,
    ) -> Result<Self> {
        let file = target.map(LogTarget::open_file).transpose()?;
        let size = file_size(file.as_ref());
        Ok(Self {
            inner: Arc::new(Mutex::new(Inner {
                pod: pod.into(),
                container: container.into(),
                target: target.cloned(),
                file,
                size,
                limit,
                capped: false,
                live,
                live_stalled: false,
                attach: None,
                pending: [Vec::new(), Vec::new()],
                first_line: None,
            })),
        })
    }

    /// How many bytes the guest may write now without overrunning a live subscriber: every
    /// record takes at least one byte, so as many bytes as the slowest one has room for (all
    /// it wants with no subscriber, as in the CRI server, or once one has stalled).
    pub(crate) fn live_room(&self, want: usize) -> usize {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let Some(live) = inner.live.as_ref().filter(|l| l.receiver_count() > 0) else {
            return want;
        };
        let room = LIVE_CAPACITY.saturating_sub(live.len());
        if room > 0 {
            inner.live_stalled = false;
        }
        if inner.live_stalled {
            want
        } else {
            room.min(want)
        }
    }

    /// Backpressure for live subscribers: waits (asynchronously: the guest's task yields, no
    /// thread is held) until the slowest one has room, for at most [`LIVE_STALL`]; after that
    /// the subscriber counts as stalled and the guest's lines are dropped there (broadcast's
    /// `Lagged` tells it how many) until it drains.
    pub(crate) async fn wait_for_live_room(&self) {
        let deadline = tokio::time::Instant::now() + LIVE_STALL;
        while self.live_room(1) == 0 {
            if tokio::time::Instant::now() >= deadline {
                self.inner
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .live_stalled = true;
                return;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    /// Sends every later write to `attach` as well (a slow attacher lags; it never holds the
    /// guest back).
    pub fn attach_to(&self, attach: broadcast::Sender<OutputChunk>) {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).attach = Some(attach);
    }

    /// Ends `timer` when the first record is about to be written to the file, and times that
    /// write as phase `first_line.log_write`; a guest that ends without writing cancels it.
    /// Nothing is timed for a log without a file.
    pub(crate) fn time_first_line(&self, timer: Timer) {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if inner.file.is_some() {
            inner.first_line = Some(timer);
        } else {
            timer.cancel();
        }
    }

    /// Appends guest output; complete lines are recorded at once, the rest waits for more.
    pub fn write(&self, stream: Stream, bytes: &[u8]) {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(attach) = inner.attach.as_ref().filter(|a| a.receiver_count() > 0) {
            let _ = attach.send(OutputChunk {
                stream,
                bytes: bytes::Bytes::copy_from_slice(bytes),
            });
        }
        let idx = stream as usize;
        let mut buf = std::mem::take(&mut inner.pending[idx]);
        buf.extend_from_slice(bytes);
        let mut start = 0;
        while let Some(nl) = buf[start..].iter().position(|&b| b == b'\n') {
            let end = start + nl;
            inner.record_long(stream, &buf[start..end]);
            start = end + 1;
        }
        let mut rest = buf.split_off(start);
        while rest.len() > MAX_LINE {
            let tail = rest.split_off(cut_point(&rest));
            inner.record(stream, &rest, true);
            rest = tail;
        }
        inner.pending[idx] = rest;
    }

    /// Records what is left of unterminated lines; called when the guest exits.
    pub fn finish(&self) {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        for stream in [Stream::Stdout, Stream::Stderr] {
            let rest = std::mem::take(&mut inner.pending[stream as usize]);
            if !rest.is_empty() {
                inner.record(stream, &rest, false);
            }
        }
        if let Some(timer) = inner.first_line.take() {
            timer.cancel();
        }
        if let Some(f) = inner.file.as_mut() {
            let _ = f.flush();
        }
    }

    /// Writes a line on behalf of the runtime (e.g. the trap message of a failed guest).
    pub fn runtime_line(&self, stream: Stream, text: &str) {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        for line in text.lines() {
            inner.record_long(stream, line.as_bytes());
        }
    }

    /// Reopens the log file by name in its directory (the handle taken at creation), after a
    /// rotation moved the old one away.
    pub fn reopen(&self) -> Result<()> {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(target) = &inner.target {
            let file = target.open_file()?;
            inner.size = file_size(Some(&file));
            inner.file = Some(file);
            inner.capped = false;
        }
        Ok(())
    }
}

fn file_size(file: Option<&File>) -> u64 {
    file.and_then(|f| f.metadata().ok()).map_or(0, |m| m.len())
}

impl Inner {
    /// Records a complete line, cutting it into partial records when it is too long.
    fn record_long(&mut self, stream: Stream, mut line: &[u8]) {
        while line.len() > MAX_LINE {
            let cut = cut_point(line);
            self.record(stream, &line[..cut], true);
            line = &line[cut..];
        }
        self.record(stream, line, false);
    }

    /// Writes one record. The file gets the guest's bytes as they are; live subscribers get
    /// text (invalid UTF-8 replaced).
    fn record(&mut self, stream: Stream, text: &[u8], partial: bool) {
        let text = text.strip_suffix(b"\r").unwrap_or(text);
        if self.file.is_some() {
            let tag = if partial { 'P' } else { 'F' };
            let mut record = format!("{} {} {tag} ", now(), stream.as_str()).into_bytes();
            record.extend_from_slice(text);
            record.push(b'\n');
            match self.first_line.take() {
                None => self.append(&record),
                Some(first) => {
                    drop(first);
                    let _write = Timer::start("first_line.log_write");
                    self.append(&record);
                }
            }
        }
        if let Some(live) = &self.live {
            let _ = live.send(LogLine {
                pod: self.pod.clone(),
                container: self.container.clone(),
                stream,
                text: String::from_utf8_lossy(text).into_owned(),
                partial,
            });
        }
    }

    /// Appends a record to the file within the limit: rotating first, or dropping it past a
    /// hard cap. A full disk must not stop the guest: the record is lost, the guest goes on.
    fn append(&mut self, record: &[u8]) {
        let len = record.len() as u64;
        match self.limit {
            LogLimit::Unlimited => {}
            LogLimit::Rotate {
                max_size,
                max_files,
            } if self.size > 0 && self.size + len > max_size => self.rotate(max_files),
            LogLimit::Cap { .. } if self.capped => return,
            LogLimit::Cap { max_size }
                if self.size + len > max_size.saturating_sub(CAP_NOTE_ROOM) =>
            {
                self.capped = true;
                let note = format!(
                    "{} stderr F wasmpod: the log reached its {max_size}-byte cap; output is \
                     dropped until the file is rotated\n",
                    now()
                );
                self.write_file(note.as_bytes());
                return;
            }
            LogLimit::Rotate { .. } | LogLimit::Cap { .. } => {}
        }
        self.write_file(record);
    }

    fn write_file(&mut self, bytes: &[u8]) {
        if let Some(file) = self.file.as_mut() {
            if file.write_all(bytes).is_ok() {
                self.size += bytes.len() as u64;
            }
        }
    }

    /// Starts a new file after moving the current one aside; on failure the current file
    /// goes on growing (and the next record tries again).
    fn rotate(&mut self, max_files: u32) {
        let Some(target) = &self.target else { return };
        match target
            .rotate(max_files)
            .map_err(|e| Error::io("rotating", e))
        {
            Ok(()) => match target.open_file() {
                Ok(file) => {
                    self.file = Some(file);
                    self.size = 0;
                }
                Err(e) => {
                    tracing::warn!(log = %target.path.display(), "reopening after rotation: {e}");
                    self.file = None;
                }
            },
            Err(e) => tracing::warn!(log = %target.path.display(), "{e}"),
        }
    }
}

fn now() -> String {
    Utc::now().to_rfc3339_opts(SecondsFormat::Nanos, true)
}

/// Where to cut an over-long line: at [`MAX_LINE`], moved back to the start of a UTF-8
/// character so that both records stay valid text.
fn cut_point(bytes: &[u8]) -> usize {
    let mut cut = MAX_LINE;
    while cut > MAX_LINE - 4 && bytes.get(cut).is_some_and(|b| b & 0xC0 == 0x80) {
        cut -= 1;
    }
    if cut == MAX_LINE - 4 {
        MAX_LINE // not UTF-8 text: cut anywhere
    } else {
        cut
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn records(path: &Path) -> Vec<(String, String, String)> {
        std::fs::read_to_string(path)
            .unwrap()
            .lines()
            .map(|l| {
                let mut parts = l.splitn(4, ' ');
                let ts = parts.next().unwrap();
                assert!(
                    chrono::DateTime::parse_from_rfc3339(ts).is_ok(),
                    "bad timestamp {ts}"
                );
                let s = parts.next().unwrap().to_owned();
                let tag = parts.next().unwrap().to_owned();
                (s, tag, parts.next().unwrap_or("").to_owned())
            })
            .collect()
    }

    #[test]
    fn splits_lines_and_marks_partials() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c/0.log");
        let (tx, mut rx) = broadcast::channel(16);
        let target = LogTarget::open(dir.path(), Path::new("c/0.log")).unwrap();
        let log =
            ContainerLog::open("p", "c", Some(&target), LogLimit::Unlimited, Some(tx)).unwrap();
        log.write(Stream::Stdout, b"hello\nwor");
        log.write(Stream::Stderr, b"oops\r\n");
        log.write(Stream::Stdout, b"ld\n");
        log.write(Stream::Stdout, &vec![b'x'; MAX_LINE + 5]);
        log.write(Stream::Stdout, b"\nno newline");
        log.finish();
        let recs = records(&path);
        let want = [
            ("stdout", "F", "hello".to_owned()),
            ("stderr", "F", "oops".to_owned()),
            ("stdout", "F", "world".to_owned()),
            ("stdout", "P", "x".repeat(MAX_LINE)),
            ("stdout", "F", "xxxxx".to_owned()),
            ("stdout", "F", "no newline".to_owned()),
        ];
        assert_eq!(recs.len(), want.len());
        for (got, want) in recs.iter().zip(want.iter()) {
            assert_eq!(
                (got.0.as_str(), got.1.as_str(), &got.2),
                (want.0, want.1, &want.2)
            );
        }
        let first = rx.try_recv().unwrap();
        assert_eq!((&*first.container, first.text.as_str()), ("c", "hello"));
    }

    #[test]
    fn reopen_after_rotation_writes_a_new_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0.log");
        let target = LogTarget::open(dir.path(), Path::new("0.log")).unwrap();
        let log = ContainerLog::open("p", "c", Some(&target), LogLimit::Unlimited, None).unwrap();
        log.write(Stream::Stdout, b"before\n");
        std::fs::rename(&path, dir.path().join("0.log.1")).unwrap();
        log.reopen().unwrap();
        log.write(Stream::Stdout, b"after\n");
        assert_eq!(records(&path)[0].2, "after");
        assert_eq!(records(&dir.path().join("0.log.1"))[0].2, "before");
    }

    /// Writes `n` numbered lines of about 100 bytes each.
    fn write_lines(log: &ContainerLog, n: usize) {
        for i in 0..n {
            log.write(
                Stream::Stdout,
                format!("{i:08} {}\n", "x".repeat(80)).as_bytes(),
            );
        }
    }

    fn size(path: &Path) -> u64 {
        std::fs::metadata(path).map_or(0, |m| m.len())
    }

    #[test]
    fn rotation_caps_every_file_and_keeps_max_files() {
        let dir = tempfile::tempdir().unwrap();
        let target = LogTarget::open(dir.path(), Path::new("c/0.log")).unwrap();
        let limit = LogLimit::Rotate {
            max_size: MIN_MAX_SIZE,
            max_files: 3,
        }
        .check()
        .unwrap();
        let log = ContainerLog::open("p", "c", Some(&target), limit, None).unwrap();
        // About 20 files' worth of output.
        write_lines(&log, 20 * MIN_MAX_SIZE as usize / 100);
        log.finish();
        let c = dir.path().join("c");
        let mut names: Vec<String> = std::fs::read_dir(&c)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, ["0.log", "0.log.1", "0.log.2"]);
        for name in &names {
            let len = size(&c.join(name));
            assert!(len > 0 && len <= MIN_MAX_SIZE, "{name}: {len} bytes");
        }
        // The newest lines are in the current file, the ones before them in .1.
        let last = records(&c.join("0.log")).pop().unwrap().2;
        assert!(
            last.starts_with(&format!("{:08}", 20 * MIN_MAX_SIZE / 100 - 1)),
            "{last}"
        );
        let current_first = records(&c.join("0.log"))[0].2[..8].parse::<u64>().unwrap();
        let previous_last = records(&c.join("0.log.1")).pop().unwrap().2[..8]
            .parse::<u64>()
            .unwrap();
        assert_eq!(previous_last + 1, current_first);
    }

    #[test]
    fn a_hard_cap_drops_records_with_one_note_until_reopened() {
        let dir = tempfile::tempdir().unwrap();
        let target = LogTarget::open(dir.path(), Path::new("0.log")).unwrap();
        let limit = LogLimit::Cap {
            max_size: MIN_MAX_SIZE,
        };
        let log = ContainerLog::open("p", "c", Some(&target), limit, None).unwrap();
        write_lines(&log, 5 * MIN_MAX_SIZE as usize / 100);
        let path = dir.path().join("0.log");
        assert!(size(&path) <= MIN_MAX_SIZE, "{}", size(&path));
        let notes: Vec<_> = records(&path)
            .into_iter()
            .filter(|r| r.2.starts_with("wasmpod: the log reached"))
            .collect();
        assert_eq!(notes.len(), 1, "{notes:?}");
        std::fs::rename(&path, dir.path().join("0.log.rotated")).unwrap();
        log.reopen().unwrap();
        log.write(Stream::Stdout, b"after\n");
        assert_eq!(records(&path)[0].2, "after");
    }

    #[test]
    fn limits_below_the_minimum_are_refused() {
        let small = LogLimit::Rotate {
            max_size: 1000,
            max_files: 5,
        };
        assert!(small.check().unwrap_err().message.contains("minimum"));
        let none = LogLimit::Rotate {
            max_size: DEFAULT_MAX_SIZE,
            max_files: 0,
        };
        assert!(none.check().is_err());
        assert_eq!(
            LogLimit::DEFAULT_ROTATE.check().unwrap(),
            LogLimit::DEFAULT_ROTATE
        );
    }

    #[test]
    fn a_symlinked_subdirectory_is_refused_before_anything_is_made_outside() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let logs = dir.path().join("logs");
        std::fs::create_dir(&logs).unwrap();
        std::os::unix::fs::symlink(outside.path(), logs.join("evil")).unwrap();
        for rel in ["evil/0.log", "evil/deeper/0.log", "evil"] {
            let err = LogTarget::open(&logs, Path::new(rel))
                .and_then(|t| t.open_file().map(drop))
                .unwrap_err();
            assert_eq!(
                err.kind,
                crate::error::ErrorKind::InvalidArgument,
                "{rel}: {err}"
            );
            assert!(err.message.contains("symlink"), "{rel}: {err}");
        }
        assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 0);
        for rel in ["../0.log", "/tmp/0.log", "a/../0.log", ""] {
            assert!(LogTarget::open(&logs, Path::new(rel)).is_err(), "{rel}");
        }
    }

    #[test]
    fn the_directory_handle_outlives_a_swap_for_a_symlink() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let logs = dir.path().join("logs");
        let target = LogTarget::open(&logs, Path::new("c/0.log")).unwrap();
        // Between creation and start, the directory is swapped for a symlink to outside.
        std::fs::rename(logs.join("c"), logs.join("moved")).unwrap();
        std::os::unix::fs::symlink(outside.path(), logs.join("c")).unwrap();
        let log = ContainerLog::open("p", "c", Some(&target), LogLimit::Unlimited, None).unwrap();
        log.write(Stream::Stdout, b"kept inside\n");
        log.reopen().unwrap();
        log.write(Stream::Stdout, b"still inside\n");
        assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 0);
        let kept: Vec<_> = records(&logs.join("moved/0.log"))
            .into_iter()
            .map(|r| r.2)
            .collect();
        assert_eq!(kept, ["kept inside", "still inside"]);
    }
}
