//! `http-hello`: a wasi:http/proxy component (it exports
//! `wasi:http/incoming-handler` instead of a `main`), served by the runtime
//! itself, one instance per request, like `wasmtime serve` does.
//!
//! | request              | response                                              |
//! |----------------------|-------------------------------------------------------|
//! | `GET /`              | 200, `hello from wasi:http\n`                         |
//! | `GET /env/NAME`      | 200 with the value of the environment variable NAME, verbatim (no newline); 404 if it is unset |
//! | `GET /fetch?url=URL` | an outgoing GET of the (percent-encoded) URL through `wasi:http/outgoing-handler`: 200 with the upstream body (its status in `x-upstream-status`), 502 `upstream error: <ErrorCode:?>` if it failed, 400 if URL is not an `http(s)://` URL |
//! | anything else        | 404                                                   |
//!
//! Every response is `text/plain` with a `content-length`. Tests use `/env`
//! to check the pod's environment (HOSTNAME) and `/fetch` to check egress.
//!
//! It is `no_std`: std would link wasi-libc, whose stdio setup imports
//! wasi:cli/terminal-*, which are not part of the wasi:http/proxy world.

// (Only on wasm: a host `cargo check` of the workspace still builds it with std.)
#![cfg_attr(target_arch = "wasm32", no_std)]

extern crate alloc;

use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec;
use alloc::vec::Vec;

use wasip2::exports::http::incoming_handler::Guest;
use wasip2::http::outgoing_handler;
use wasip2::http::types::{
    http_error_code, ErrorCode, Fields, IncomingRequest, IncomingResponse, Method, OutgoingBody,
    OutgoingRequest, OutgoingResponse, RequestOptions, ResponseOutparam, Scheme,
};
use wasip2::io::streams::StreamError;

wasip2::http::proxy::export!(HttpHello);

/// What std would otherwise provide: libc's mem* functions, an allocator, the
/// canonical ABI's realloc and a panic handler.
#[cfg(target_arch = "wasm32")]
mod no_std_runtime {
    use core::panic::PanicInfo;

    // On wasi targets compiler_builtins leaves memcmp & co. to wasi-libc; link
    // just those (a static archive brings only the objects that are used).
    #[link(name = "c")]
    extern "C" {}

    #[global_allocator]
    static ALLOCATOR: dlmalloc::GlobalDlmalloc = dlmalloc::GlobalDlmalloc;

    /// The canonical ABI's allocation hook (the host calls it to pass strings and
    /// lists in). wit-bindgen leaves it to wasi-libc on wasip2, which is not here.
    #[no_mangle]
    unsafe extern "C" fn cabi_realloc(
        old_ptr: *mut u8,
        old_len: usize,
        align: usize,
        new_len: usize,
    ) -> *mut u8 {
        use alloc::alloc::{alloc, handle_alloc_error, realloc, Layout};
        if new_len == 0 {
            return align as *mut u8;
        }
        // SAFETY: the canonical ABI passes a power-of-two align, and old_ptr and
        // old_len from an earlier call with the same align.
        let ptr = unsafe {
            if old_len == 0 {
                alloc(Layout::from_size_align_unchecked(new_len, align))
            } else {
                realloc(
                    old_ptr,
                    Layout::from_size_align_unchecked(old_len, align),
                    new_len,
                )
            }
        };
        if ptr.is_null() {
            handle_alloc_error(Layout::from_size_align(new_len, align).unwrap());
        }
        ptr
    }

    /// Traps; the host then answers the request with a 500 (or drops it).
    #[panic_handler]
    fn panic(_: &PanicInfo) -> ! {
        core::arch::wasm32::unreachable()
    }
}

struct HttpHello;

impl Guest for HttpHello {
    fn handle(request: IncomingRequest, response_out: ResponseOutparam) {
        let path_with_query = request.path_with_query().unwrap_or_default();
        let (path, query) = path_with_query
            .split_once('?')
            .unwrap_or((&path_with_query, ""));
        let (status, body, extra) = match (request.method(), path) {
            (Method::Get, "/") => (200, b"hello from wasi:http\n".to_vec(), None),
            (Method::Get, path) if path.starts_with("/env/") => match env(&path[5..]) {
                Some(value) => (200, value.into_bytes(), None),
                None => (404, b"not set\n".to_vec(), None),
            },
            (Method::Get, "/fetch") => match query_param(query, "url").map(|url| fetch(&url)) {
                Some(Ok((status, body))) => {
                    (200, body, Some(("x-upstream-status", status.to_string())))
                }
                Some(Err(Fetch::BadUrl(msg))) => {
                    (400, format!("bad url: {msg}\n").into_bytes(), None)
                }
                Some(Err(Fetch::Upstream(code))) => (
                    502,
                    format!("upstream error: {code:?}\n").into_bytes(),
                    None,
                ),
                None => (400, b"bad url: missing ?url=\n".to_vec(), None),
            },
            _ => (404, b"not found\n".to_vec(), None),
        };
        respond(response_out, status, &body, extra);
    }
}

/// Reads the environment through wasi:cli/environment directly.
fn env(name: &str) -> Option<String> {
    wasip2::cli::environment::get_environment()
        .into_iter()
        .find_map(|(key, value)| (key == name).then_some(value))
}

fn respond(out: ResponseOutparam, status: u16, body: &[u8], extra: Option<(&str, String)>) {
    let mut headers = vec![
        ("content-type".to_string(), b"text/plain".to_vec()),
        (
            "content-length".to_string(),
            body.len().to_string().into_bytes(),
        ),
    ];
    if let Some((name, value)) = extra {
        headers.push((name.to_string(), value.into_bytes()));
    }
    let headers = Fields::from_list(&headers).expect("valid headers");
    let response = OutgoingResponse::new(headers);
    response.set_status_code(status).expect("valid status");
    let outgoing = response.body().expect("body taken once");
    ResponseOutparam::set(out, Ok(response));
    {
        let stream = outgoing.write().expect("stream taken once");
        // At most 4096 bytes per blocking_write_and_flush. The client may be
        // gone already; there is nobody left to tell then.
        if body
            .chunks(4096)
            .any(|chunk| stream.blocking_write_and_flush(chunk).is_err())
        {
            return;
        }
    }
    let _ = OutgoingBody::finish(outgoing, None);
}

/// How long `/fetch` waits to connect, for the response head, and between
/// body chunks: 10 s, in nanoseconds (wasi:clocks durations).
const FETCH_TIMEOUT_NS: u64 = 10_000_000_000;

enum Fetch {
    BadUrl(&'static str),
    Upstream(ErrorCode),
}

/// GETs `url` through wasi:http/outgoing-handler; returns its status and body.
fn fetch(url: &str) -> Result<(u16, Vec<u8>), Fetch> {
    let (scheme, rest) = match url.split_once("://") {
        Some(("http", rest)) => (Scheme::Http, rest),
        Some(("https", rest)) => (Scheme::Https, rest),
        _ => return Err(Fetch::BadUrl("not an http:// or https:// URL")),
    };
    let split = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, path_with_query) = rest.split_at(split);
    if authority.is_empty() {
        return Err(Fetch::BadUrl("no host"));
    }
    let path_with_query = match path_with_query {
        "" => "/".to_string(),
        pq if pq.starts_with('?') => format!("/{pq}"),
        pq => pq.to_string(),
    };

    let request = OutgoingRequest::new(Fields::new());
    let invalid = |_| Fetch::BadUrl("rejected by wasi:http");
    request.set_scheme(Some(&scheme)).map_err(invalid)?;
    request.set_authority(Some(authority)).map_err(invalid)?;
    request
        .set_path_with_query(Some(&path_with_query))
        .map_err(invalid)?;
    // Bounded, so that a dropped (rather than refused) connection ends in a
    // 502 soon; a host that does not support a timeout ignores it.
    let options = RequestOptions::new();
    let _ = options.set_connect_timeout(Some(FETCH_TIMEOUT_NS));
    let _ = options.set_first_byte_timeout(Some(FETCH_TIMEOUT_NS));
    let _ = options.set_between_bytes_timeout(Some(FETCH_TIMEOUT_NS));
    let future = outgoing_handler::handle(request, Some(options)).map_err(Fetch::Upstream)?;
    future.subscribe().block();
    let response = match future.get() {
        Some(Ok(result)) => result.map_err(Fetch::Upstream)?,
        _ => unreachable!("the response is ready after block() and read only once"),
    };
    let body = read_body(&response).map_err(Fetch::Upstream)?;
    Ok((response.status(), body))
}

fn read_body(response: &IncomingResponse) -> Result<Vec<u8>, ErrorCode> {
    let body = response.consume().expect("body consumed once");
    let mut bytes = Vec::new();
    {
        let stream = body.stream().expect("stream taken once");
        loop {
            match stream.blocking_read(64 * 1024) {
                Ok(chunk) => bytes.extend_from_slice(&chunk),
                Err(StreamError::Closed) => break,
                // The connection broke off; wasi:http says why.
                Err(StreamError::LastOperationFailed(err)) => {
                    return Err(http_error_code(&err)
                        .unwrap_or_else(|| ErrorCode::InternalError(Some(err.to_debug_string()))));
                }
            }
        }
    }
    drop(body);
    Ok(bytes)
}

/// The value of `name` in an `a=1&b=2` query string, percent-decoded.
fn query_param(query: &str, name: &str) -> Option<String> {
    query
        .split('&')
        .find_map(|pair| pair.strip_prefix(name)?.strip_prefix('='))
        .map(percent_decode)
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .filter(|h| h.iter().all(u8::is_ascii_hexdigit))
            .map(|h| u8::from_str_radix(core::str::from_utf8(h).unwrap(), 16).unwrap());
        match (bytes[i], hex) {
            (b'%', Some(byte)) => {
                out.push(byte);
                i += 3;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}
