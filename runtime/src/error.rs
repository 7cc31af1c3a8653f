//! The one error type of the core. Its kinds mirror gRPC status codes so that every front end
//! maps an error with a single `match` and no string inspection.

use std::fmt;

/// What went wrong, in the terms a caller can act on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The request itself is malformed (bad manifest, bad wasm, bad path).
    InvalidArgument,
    /// A named object (pod, container, image, file) does not exist.
    NotFound,
    /// The object to create exists already.
    AlreadyExists,
    /// The object is not in a state that allows the operation.
    FailedPrecondition,
    /// A limit was hit (memory, disk, sockets).
    ResourceExhausted,
    /// The operation is not supported by wasmpod.
    Unimplemented,
    /// Credentials are missing or wrong (a registry's 401).
    Unauthenticated,
    /// The credentials do not allow this (a registry's 403).
    PermissionDenied,
    /// The operation did not finish in the time it was given.
    DeadlineExceeded,
    /// A peer (a registry) could not be reached; retrying may help.
    Unavailable,
    /// A fault of the runtime or the host (I/O, compiler).
    Internal,
}

/// An error with its kind and a message a person can act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    pub kind: ErrorKind,
    pub message: String,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::InvalidArgument, message)
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::NotFound, message)
    }
    pub fn exists(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::AlreadyExists, message)
    }
    pub fn precondition(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::FailedPrecondition, message)
    }
    pub fn exhausted(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::ResourceExhausted, message)
    }
    pub fn unimplemented(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Unimplemented, message)
    }
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Unavailable, message)
    }
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Internal, message)
    }
    /// An I/O failure on `what`, classified by the OS error.
    pub fn io(what: impl fmt::Display, err: std::io::Error) -> Self {
        let kind = match err.kind() {
            std::io::ErrorKind::NotFound => ErrorKind::NotFound,
            std::io::ErrorKind::AlreadyExists => ErrorKind::AlreadyExists,
            std::io::ErrorKind::PermissionDenied | std::io::ErrorKind::InvalidInput => {
                ErrorKind::InvalidArgument
            }
            std::io::ErrorKind::StorageFull
            | std::io::ErrorKind::QuotaExceeded
            | std::io::ErrorKind::FileTooLarge => ErrorKind::ResourceExhausted,
            _ => ErrorKind::Internal,
        };
        Self::new(kind, format!("{what}: {err}"))
    }
    /// Prefixes the message with where it happened.
    pub fn context(mut self, what: impl fmt::Display) -> Self {
        self.message = format!("{what}: {}", self.message);
        self
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {}
