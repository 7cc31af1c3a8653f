//! Fuzz target (bolero) for the Pod YAML parser of `wasmpod run`: seeded with the examples'
//! pods and hostile ones (`__fuzz__/pod_yaml/corpus`). Whatever the text, the
//! parser answers a typed error of bounded size, or a pod whose names, mounts and ports hold
//! the invariants the runner relies on.

use std::collections::HashSet;
use std::path::Path;

use bolero::check;
use wasmpod_runtime::error::ErrorKind;
use wasmpod_runtime::manifest::PodManifest;
use wasmpod_runtime::spec::MountSource;
use wasmpod_runtime::volume::normalize_guest_path;

/// Random inputs in a plain `cargo test` run (`BOLERO_RANDOM_ITERATIONS` overrides it).
const ITERATIONS: usize = 20_000;

fn is_dns_label(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-')
}

fn check_pod(text: &str) {
    match PodManifest::parse(text, Path::new("/base")) {
        Ok(m) => {
            assert!(is_dns_label(&m.pod.name), "pod name {:?}", m.pod.name);
            assert!(!m.containers.is_empty(), "a pod without containers");
            let volumes: HashSet<&str> = m.pod.volumes.iter().map(|v| v.name.as_str()).collect();
            assert_eq!(volumes.len(), m.pod.volumes.len(), "duplicate volumes");
            let mut names = HashSet::new();
            for c in m.init_containers.iter().chain(&m.containers) {
                assert!(is_dns_label(&c.name), "container name {:?}", c.name);
                assert!(names.insert(&c.name), "two containers named {}", c.name);
                assert!(!c.image.is_empty());
                let mut paths = HashSet::new();
                for mount in &c.mounts {
                    assert_eq!(
                        normalize_guest_path(&mount.container_path).as_deref(),
                        Ok(mount.container_path.as_str()),
                        "mount path not normalised"
                    );
                    assert!(
                        paths.insert(&mount.container_path),
                        "two mounts on one path"
                    );
                    match &mount.source {
                        MountSource::Volume { name, .. } => {
                            assert!(volumes.contains(name.as_str()), "undeclared volume {name}")
                        }
                        MountSource::Host(p) => panic!("a manifest mount became host path {p:?}"),
                    }
                }
            }
            let mut host_ports = HashSet::new();
            for p in &m.pod.port_mappings {
                assert!(
                    host_ports.insert((p.host_ip, p.host_port, p.protocol)),
                    "hostPort {} twice",
                    p.host_port
                );
            }
        }
        Err(e) => {
            assert_eq!(e.kind, ErrorKind::InvalidArgument, "{}", e.message);
            // Messages quote the offending value at most (escaped), never the whole document
            // many times over.
            assert!(
                e.message.len() <= 512 + 10 * text.len(),
                "error of {} bytes for {} bytes of YAML",
                e.message.len(),
                text.len()
            );
        }
    }
}

#[test]
fn pod_yaml() {
    check!()
        .with_iterations(ITERATIONS)
        .for_each(|bytes: &[u8]| check_pod(&String::from_utf8_lossy(bytes)));
}

/// The example pods, to be edited by [`Edit`]s: random bytes rarely get past the YAML parser,
/// while a real pod with a few hostile edits reaches every check behind it.
const EXAMPLES: [&str; 6] = [
    include_str!("../../examples/hello/pod.yaml"),
    include_str!("../../examples/shared-volume/pod.yaml"),
    include_str!("../../examples/exit-codes/pod.yaml"),
    include_str!("../../examples/forever/pod.yaml"),
    include_str!("../../examples/http-hello/pod.yaml"),
    include_str!("../../examples/localhost-pair/pod.yaml"),
];

#[derive(Debug, Clone, Copy, bolero::TypeGenerator)]
enum Hostile {
    DropLine,
    DupLine,
    DotDot,
    Empty,
    Huge,
    Negative,
    Nul,
    Unicode,
    List,
    Map,
    Absolute,
    Anchor,
    Alias,
    Indent,
    HostNetwork,
    SubPathOut,
}

#[derive(Debug, Clone, Copy, bolero::TypeGenerator)]
struct Edit {
    line: u8,
    what: Hostile,
}

fn apply(pod: &str, edits: &[Edit]) -> String {
    let mut lines: Vec<String> = pod.lines().map(str::to_owned).collect();
    for edit in edits {
        let i = edit.line as usize % lines.len().max(1);
        let line = lines.get(i).cloned().unwrap_or_default();
        let indent = &line[..line.len() - line.trim_start().len()];
        let with_value = |v: &str| match line.split_once(": ") {
            Some((key, _)) => format!("{key}: {v}"),
            None => format!("{line} {v}"),
        };
        let new = match edit.what {
            Hostile::DropLine => {
                if i < lines.len() {
                    lines.remove(i);
                }
                continue;
            }
            Hostile::DupLine => line.clone(),
            Hostile::DotDot => with_value("../../etc"),
            Hostile::Empty => with_value("\"\""),
            Hostile::Huge => with_value("184467440737095516160"),
            Hostile::Negative => with_value("-1"),
            Hostile::Nul => with_value("\"a\\0b\""),
            Hostile::Unicode => with_value("ünï/\u{202e}"),
            Hostile::List => with_value("[a, [b, [c]]]"),
            Hostile::Map => with_value("{a: {b: 1}}"),
            Hostile::Absolute => with_value("/etc/shadow"),
            Hostile::Anchor => with_value("&x [x, x, x, x]"),
            Hostile::Alias => with_value("*x"),
            Hostile::Indent => format!("  {line}"),
            Hostile::HostNetwork => format!("{indent}hostNetwork: true"),
            Hostile::SubPathOut => format!("{indent}subPath: ../.."),
        };
        if matches!(edit.what, Hostile::DupLine) {
            lines.insert(i, new);
        } else if i < lines.len() {
            lines[i] = new;
        }
    }
    lines.join("\n")
}

#[test]
fn pod_yaml_edited() {
    check!()
        .with_type::<(u8, Vec<Edit>)>()
        .with_iterations(ITERATIONS)
        .for_each(|(which, edits)| {
            let pod = EXAMPLES[*which as usize % EXAMPLES.len()];
            check_pod(&apply(pod, &edits[..edits.len().min(4)]));
        });
}
