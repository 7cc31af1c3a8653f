//! Fuzz targets (bolero) for path resolution inside volumes: guest mount paths and subPaths.
//! Run as ordinary tests with a bounded number of random inputs (`BOLERO_RANDOM_ITERATIONS`
//! overrides it); `scripts/fuzz` runs the same targets coverage-guided.

mod common;

use std::collections::BTreeMap;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};

use bolero::{check, TypeGenerator};
use wasmpod_runtime::spec::{HostPathKind, MountSource, MountSpec, VolumeSource, VolumeSpec};
use wasmpod_runtime::volume::{normalize_guest_path, PodVolumes};

/// Random inputs per target in a plain `cargo test` run: enough to matter, a few seconds.
const ITERATIONS: usize = 20_000;

/// Path components an attacker would try, and some plain ones.
#[derive(Debug, Clone, Copy, TypeGenerator)]
enum Part {
    Empty,
    Dot,
    DotDot,
    Plain,
    Space,
    Nul,
    Unicode,
    Dots3,
    Backslash,
}

impl Part {
    fn as_str(self) -> &'static str {
        match self {
            Part::Empty => "",
            Part::Dot => ".",
            Part::DotDot => "..",
            Part::Plain => "data",
            Part::Space => "a b",
            Part::Nul => "x\0y",
            Part::Unicode => "ü",
            Part::Dots3 => "...",
            Part::Backslash => "..\\x",
        }
    }
}

fn join(absolute: bool, parts: &[&str]) -> String {
    let body = parts.join("/");
    if absolute {
        format!("/{body}")
    } else {
        body
    }
}

/// Checks the contract of a normalised guest path against the input it came from.
fn check_normalized(input: &str) {
    let result = normalize_guest_path(input);
    let parts: Vec<&str> = input.split('/').collect();
    let valid = input.starts_with('/') && !parts.contains(&"..");
    match result {
        Ok(out) => {
            assert!(valid, "{input:?} was accepted as {out:?}");
            assert!(out.starts_with('/'), "{input:?} -> {out:?} is not absolute");
            assert!(out == "/" || !out.ends_with('/'), "{out:?} ends with /");
            assert!(!out.contains("//"), "{out:?} has an empty component");
            let kept: Vec<&str> = out.split('/').skip(1).filter(|p| !p.is_empty()).collect();
            assert!(
                kept.iter().all(|p| *p != "." && *p != ".."),
                "{out:?} keeps . or .."
            );
            let expected: Vec<&str> = parts
                .iter()
                .copied()
                .filter(|p| !p.is_empty() && *p != ".")
                .collect();
            assert_eq!(
                kept, expected,
                "{input:?} -> {out:?} changed its components"
            );
            assert_eq!(
                normalize_guest_path(&out).as_deref(),
                Ok(out.as_str()),
                "not idempotent"
            );
        }
        Err(e) => {
            assert!(!valid, "{input:?} was refused: {}", e.message);
            assert!(e.message.len() <= 64 + 10 * input.len(), "{}", e.message);
        }
    }
}

#[test]
fn normalize_guest_path_structured() {
    check!()
        .with_type::<(bool, Vec<Part>)>()
        .with_iterations(ITERATIONS)
        .for_each(|(absolute, parts)| {
            let parts: Vec<&str> = parts.iter().take(12).map(|p| p.as_str()).collect();
            check_normalized(&join(*absolute, &parts));
        });
}

#[test]
fn normalize_guest_path_bytes() {
    check!()
        .with_iterations(ITERATIONS)
        .for_each(|bytes: &[u8]| check_normalized(&String::from_utf8_lossy(bytes)));
}

/// Entries of the volume and of its surroundings that a subPath may name.
#[derive(Debug, Clone, Copy, TypeGenerator)]
enum SubPart {
    Dir,
    File,
    Up,
    Up2,
    Out,
    Abs,
    Rel,
    Chain,
    Loop,
    New,
    Canary,
    Secret,
    Dot,
    DotDot,
    Empty,
}

impl SubPart {
    fn as_str(self) -> &'static str {
        match self {
            SubPart::Dir => "d",
            SubPart::File => "file",
            SubPart::Up => "up",
            SubPart::Up2 => "up2",
            SubPart::Out => "out",
            SubPart::Abs => "abs",
            SubPart::Rel => "rel",
            SubPart::Chain => "chain",
            SubPart::Loop => "loop",
            SubPart::New => "new",
            SubPart::Canary => "canary",
            SubPart::Secret => "secret",
            SubPart::Dot => ".",
            SubPart::DotDot => "..",
            SubPart::Empty => "",
        }
    }
}

/// A hostPath volume full of symlinks leading out (directly, through `..`, through chains),
/// with a canary directory beside it that no resolution may reach or change.
struct Fixture {
    _tmp: tempfile::TempDir,
    top: PathBuf,
    volume: PathBuf,
    volumes: PodVolumes,
    before: BTreeMap<PathBuf, Vec<u8>>,
}

impl Fixture {
    fn new() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let top = tmp.path().canonicalize().unwrap();
        let canary = top.join("canary");
        let volume = top.join("vol");
        std::fs::create_dir_all(canary.join("secret")).unwrap();
        std::fs::write(canary.join("secret/file"), "canary").unwrap();
        std::fs::create_dir_all(volume.join("d")).unwrap();
        std::fs::write(volume.join("file"), "in the volume").unwrap();
        std::fs::write(volume.join("d/file"), "in the volume").unwrap();
        let links: [(&str, &Path); 7] = [
            ("d/up", "..".as_ref()),
            ("d/up2", "../..".as_ref()),
            ("out", "../canary".as_ref()),
            ("abs", &canary),
            ("rel", "d/up".as_ref()),
            ("chain", "rel/..".as_ref()),
            ("loop", "loop".as_ref()),
        ];
        for (link, target) in links {
            symlink(target, volume.join(link)).unwrap();
        }
        let spec = VolumeSpec {
            name: "v".into(),
            source: VolumeSource::HostPath {
                path: volume.clone(),
                kind: HostPathKind::Directory,
            },
        };
        let volumes = PodVolumes::create(&top.join("pod"), "fuzz", &[spec]).unwrap();
        let before = snapshot_outside(&top);
        Fixture {
            _tmp: tmp,
            top,
            volume,
            volumes,
            before,
        }
    }
}

fn snapshot_outside(top: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    common::snapshot_except(top, &["vol"])
}

#[test]
fn sub_path_stays_in_volume() {
    let fx = Fixture::new();
    check!()
        .with_type::<(bool, Vec<SubPart>)>()
        .with_iterations(ITERATIONS)
        .for_each(|(absolute, parts)| {
            let parts: Vec<&str> = parts.iter().take(6).map(|p| p.as_str()).collect();
            let sub = join(*absolute, &parts);
            let mount = MountSpec {
                source: MountSource::Volume {
                    name: "v".into(),
                    sub_path: Some(sub.clone()),
                },
                container_path: "/data".into(),
                read_only: false,
            };
            match fx.volumes.resolve(&mount) {
                Ok(m) => {
                    assert!(m.pinned.is_some() || sub.is_empty(), "{sub:?}: not pinned");
                    let real = std::fs::read_link(&m.host)
                        .or_else(|_| m.host.canonicalize())
                        .unwrap();
                    assert!(
                        real.starts_with(&fx.volume),
                        "subPath {sub:?} resolved to {} outside the volume",
                        real.display()
                    );
                }
                Err(e) => assert!(e.message.len() <= 1024, "{sub:?}: {}", e.message),
            }
            assert_eq!(
                snapshot_outside(&fx.top),
                fx.before,
                "subPath {sub:?} changed something outside the volume"
            );
        });
}
