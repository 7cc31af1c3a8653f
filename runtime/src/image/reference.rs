//! Image references, normalised as containerd and CRI-O do: `hello` is
//! `docker.io/library/hello:latest`.

use oci_client::Reference;

use crate::error::{Error, Result};

/// Parses and normalises an image reference.
pub fn parse(reference: &str) -> Result<Reference> {
    if reference.is_empty() {
        return Err(Error::invalid("image reference is empty"));
    }
    reference
        .parse::<Reference>()
        .map_err(|e| Error::invalid(format!("image reference {reference:?}: {e}")))
}

/// The normalised name with tag (`docker.io/library/hello:latest`), or `None` for a
/// digest-only reference.
pub fn tagged_name(r: &Reference) -> Option<String> {
    r.tag()
        .map(|t| format!("{}/{}:{t}", r.registry(), r.repository()))
}

/// `registry/repository@digest`.
pub fn digest_name(r: &Reference, digest: &str) -> String {
    format!("{}/{}@{digest}", r.registry(), r.repository())
}

/// Checks a digest is `sha256:` and 64 lowercase hex digits, so it can name a file safely.
pub fn check_digest(digest: &str) -> Result<&str> {
    match digest.strip_prefix("sha256:") {
        Some(hex)
            if hex.len() == 64 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) =>
        {
            Ok(hex)
        }
        _ => Err(Error::invalid(format!(
            "{digest:?} is not a valid sha256 digest"
        ))),
    }
}

/// Whether a registry host is this machine (plain HTTP is allowed there).
pub fn is_loopback(registry: &str) -> bool {
    let host = match registry.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or(""),
        None => registry.rsplit_once(':').map_or(registry, |(h, _)| h),
    };
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalises_like_containerd() {
        let r = parse("hello").unwrap();
        assert_eq!(tagged_name(&r).unwrap(), "docker.io/library/hello:latest");
        let r = parse("ghcr.io/example/hello:1.0").unwrap();
        assert_eq!(tagged_name(&r).unwrap(), "ghcr.io/example/hello:1.0");
        let d = format!("sha256:{}", "a".repeat(64));
        let r = parse(&format!("127.0.0.1:5000/app@{d}")).unwrap();
        assert_eq!(r.digest(), Some(d.as_str()));
        assert_eq!(digest_name(&r, &d), format!("127.0.0.1:5000/app@{d}"));
        assert!(parse("library/UPPER").is_err());
        assert!(parse("").is_err());
    }

    #[test]
    fn digests_are_checked() {
        assert!(check_digest(&format!("sha256:{}", "0".repeat(64))).is_ok());
        for bad in [
            "sha256:../x",
            "sha256:",
            "md5:abc",
            &format!("sha256:{}", "G".repeat(64)),
        ] {
            assert!(check_digest(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn loopback_registries() {
        for r in [
            "localhost:5000",
            "127.0.0.1:5000",
            "127.1.2.3",
            "[::1]:5000",
        ] {
            assert!(is_loopback(r), "{r}");
        }
        for r in ["docker.io", "10.0.0.1:5000", "ghcr.io"] {
            assert!(!is_loopback(r), "{r}");
        }
    }
}
