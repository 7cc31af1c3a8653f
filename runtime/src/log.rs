//! Container logs in the CRI log format (`<RFC3339Nano> <stream> <F|P> <text>`), written to the
//! container's log file and copied to live subscribers (the local runner prints them).

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use chrono::{SecondsFormat, Utc};
use tokio::sync::broadcast;

use crate::error::{Error, Result};

/// A line longer than this is cut into partial (`P`) records, as the CRI loggers do.
pub const MAX_LINE: usize = 16 * 1024;

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

/// The log of one container run: splits both streams into lines and records them.
#[derive(Clone)]
pub struct ContainerLog {
    inner: Arc<Mutex<Inner>>,
}

struct Inner {
    pod: Arc<str>,
    container: Arc<str>,
    path: Option<PathBuf>,
    file: Option<File>,
    live: Option<broadcast::Sender<LogLine>>,
    pending: [Vec<u8>; 2],
}

impl ContainerLog {
    /// Opens (appending) `path` when given; `live` receives every record as well.
    pub fn open(
        pod: &str,
        container: &str,
        path: Option<&Path>,
        live: Option<broadcast::Sender<LogLine>>,
    ) -> Result<Self> {
        let file = path.map(open_log_file).transpose()?;
        Ok(Self {
            inner: Arc::new(Mutex::new(Inner {
                pod: pod.into(),
                container: container.into(),
                path: path.map(Path::to_path_buf),
                file,
                live,
                pending: [Vec::new(), Vec::new()],
            })),
        })
    }

    /// Appends guest output; complete lines are recorded at once, the rest waits for more.
    pub fn write(&self, stream: Stream, bytes: &[u8]) {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
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

    /// Reopens the log file at its path, after a log rotation moved the old one away.
    pub fn reopen(&self) -> Result<()> {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(path) = inner.path.clone() {
            inner.file = Some(open_log_file(&path)?);
        }
        Ok(())
    }
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
        if let Some(file) = self.file.as_mut() {
            let ts = Utc::now().to_rfc3339_opts(SecondsFormat::Nanos, true);
            let tag = if partial { 'P' } else { 'F' };
            let mut record = format!("{ts} {} {tag} ", stream.as_str()).into_bytes();
            record.extend_from_slice(text);
            record.push(b'\n');
            // A full disk must not stop the guest: the record is lost, the guest goes on.
            let _ = file.write_all(&record);
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

fn open_log_file(path: &Path) -> Result<File> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir.display(), e))?;
    }
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| Error::io(format!("log file {}", path.display()), e))
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
        let log = ContainerLog::open("p", "c", Some(&path), Some(tx)).unwrap();
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
        let log = ContainerLog::open("p", "c", Some(&path), None).unwrap();
        log.write(Stream::Stdout, b"before\n");
        std::fs::rename(&path, dir.path().join("0.log.1")).unwrap();
        log.reopen().unwrap();
        log.write(Stream::Stdout, b"after\n");
        assert_eq!(records(&path)[0].2, "after");
        assert_eq!(records(&dir.path().join("0.log.1"))[0].2, "before");
    }
}
