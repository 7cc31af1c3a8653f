//! `httpd [-p [IP:]PORT] [-h DIR] [-f] [-v]`: a small HTTP/1.x file server, one connection
//! at a time. Serves `DIR` (default `/var/www` when it exists); `/` with no index file gets a
//! built-in page. Needs sockets: works in the wasm32-wasip2 build (wasi:sockets), fails to bind
//! in the preview1 one.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{bad_usage, getopt};
use crate::{errtext, Ctx, Io};

const PAGE: &str = "<html><body><h1>It works!</h1>\
<p>httpd of the wasmpod toolbox</p></body></html>\n";

pub fn httpd(ctx: &mut Ctx, io: &mut Io, argv: &[String]) -> i32 {
    let args = argv.get(1..).unwrap_or_default();
    let (opts, _) = match getopt(args, "fvi", "phcru") {
        Ok(v) => v,
        Err(e) => return bad_usage(io, "httpd", &e),
    };
    let mut addr = "0.0.0.0:80".to_owned();
    let mut home: Option<PathBuf> = None;
    for (c, v) in opts {
        match (c, v) {
            ('p', Some(p)) if p.contains(':') => addr = p.to_owned(),
            ('p', Some(p)) => addr = format!("0.0.0.0:{p}"),
            ('h', Some(h)) => home = Some(ctx.path(h)),
            _ => {}
        }
    }
    let home = home.or_else(|| {
        let d = ctx.path("/var/www");
        d.is_dir().then_some(d)
    });
    let listener = match TcpListener::bind(&addr) {
        Ok(l) => l,
        Err(e) => {
            io.error("httpd", format_args!("bind: {addr}: {}", errtext(&e)));
            return 1;
        }
    };
    let shown = listener.local_addr().map(|a| a.to_string()).unwrap_or(addr);
    let _ = writeln!(io.out, "httpd: listening on {shown}");
    let _ = io.out.flush();
    loop {
        match listener.accept() {
            Ok((stream, peer)) => {
                let line = serve(stream, home.as_deref());
                if let Some(line) = line {
                    let _ = writeln!(io.out, "httpd: {peer} {line}");
                    let _ = io.out.flush();
                }
            }
            Err(e) => {
                io.error("httpd", format_args!("accept: {}", errtext(&e)));
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

/// Answers one request; returns the log line (`GET / 200`).
fn serve(mut stream: TcpStream, home: Option<&Path>) -> Option<String> {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && !head.windows(2).any(|w| w == b"\n\n") {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
        if head.len() > 64 * 1024 {
            break;
        }
    }
    let text = String::from_utf8_lossy(&head);
    let first = text.lines().next()?.to_owned();
    let mut parts = first.split_whitespace();
    let method = parts.next().unwrap_or("");
    let target = parts.next().unwrap_or("/");
    let path = target.split(['?', '#']).next().unwrap_or("/");
    let (status, reason, body, kind): (u16, &str, Vec<u8>, &str) = match method {
        "GET" | "HEAD" => match lookup(home, path) {
            Some((body, kind)) => (200, "OK", body, kind),
            None => (404, "Not Found", b"404 Not Found\n".to_vec(), "text/plain"),
        },
        _ => (
            501,
            "Not Implemented",
            b"501 Not Implemented\n".to_vec(),
            "text/plain",
        ),
    };
    let header = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\n\
         Server: httpd (wasmpod toolbox)\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let _ = stream.write_all(header.as_bytes());
    if method != "HEAD" {
        let _ = stream.write_all(&body);
    }
    let _ = stream.flush();
    Some(format!("{method} {path} {status}"))
}

/// The body and content type for a request path.
fn lookup(home: Option<&Path>, path: &str) -> Option<(Vec<u8>, &'static str)> {
    let rel: Vec<&str> = path
        .split('/')
        .filter(|s| !s.is_empty() && *s != ".")
        .collect();
    if rel.contains(&"..") {
        return None;
    }
    if let Some(home) = home {
        let mut file = home.to_path_buf();
        file.extend(&rel);
        if file.is_dir() {
            file.push("index.html");
        }
        if let Ok(body) = std::fs::read(&file) {
            let kind = match file.extension().and_then(|e| e.to_str()) {
                Some("html" | "htm") => "text/html",
                Some("txt") => "text/plain",
                Some("json") => "application/json",
                _ => "application/octet-stream",
            };
            return Some((body, kind));
        }
    }
    rel.is_empty()
        .then(|| (PAGE.as_bytes().to_vec(), "text/html"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_get() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let client = std::thread::spawn(move || {
            let mut s = TcpStream::connect(addr).unwrap();
            s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).unwrap();
            out
        });
        let (stream, _) = listener.accept().unwrap();
        assert_eq!(serve(stream, None).as_deref(), Some("GET / 200"));
        let out = client.join().unwrap();
        assert!(out.starts_with("HTTP/1.1 200 OK\r\n"), "{out}");
        assert!(out.ends_with(PAGE));
        assert!(lookup(None, "/x").is_none());
        assert!(lookup(Some(Path::new("/")), "/../etc/passwd").is_none());
    }
}
