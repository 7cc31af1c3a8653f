//! The images critest runs and pulls, built from the toolbox (`tests/src/images.rs`): every
//! fixed reference in cri-tools v1.37.0's `pkg/validate` (and `pkg/framework`), plus our two
//! overridable images (the default test image and the web server), all reproducible.

use std::path::Path;

use wasmpod_tests::images::Image;

/// cri-tools' staging registry for its own test images (`pkg/validate/consts.go`).
const STAGING: &str = "gcr.io/k8s-staging-cri-tools";
/// The e2e images (`framework.DefaultRegistryE2ETestImagesPrefix`).
const E2E: &str = "registry.k8s.io/e2e-test-images";

/// Our default test image (the `defaultTestContainerImage` of the images file), a path in the
/// loopback registry.
pub const TOOLBOX: &str = "wasmpod/toolbox:p1";
/// Our web server image (`webServerTestImage`).
pub const WEB_SERVER: &str = "wasmpod/httpd:p2";

/// One distinct image and the references it is pushed under (`host/path:tag`; a reference
/// without a host is one in the loopback registry itself).
pub struct Pushed {
    /// A short name for its layout directory.
    pub name: &'static str,
    pub image: Image,
    pub refs: Vec<String>,
}

/// A toolbox image that differs from the others by one marker file, `/etc/wasmpod-test-image`.
fn marked(base: &Image, name: &str) -> Image {
    base.clone()
        .file("etc/wasmpod-test-image", format!("{name}\n").as_bytes())
}

/// The web server: the preview2 toolbox (sockets), `httpd -p 80` by default (its start-up line
/// says `httpd: listening on 0.0.0.0:80`), every applet still there for exec.
fn web_server(p2: &[u8]) -> Image {
    let mut image = Image::toolbox_with(p2);
    image.entrypoint = vec!["/bin/httpd".to_owned()];
    image.cmd = vec!["-p".to_owned(), "80".to_owned()];
    image
}

/// Every image, from the two toolbox builds.
pub fn all(p1: &[u8], p2: &[u8]) -> Vec<Pushed> {
    let toolbox = Image::toolbox_with(p1);
    let staging = |path: &str| format!("{STAGING}/{path}");
    let with_user = |name: &str, user: &str| {
        let mut image = marked(&toolbox, name);
        image.user = user.to_owned();
        image
    };
    let mut predefined = with_user("test-image-predefined-group", "1000");
    predefined = predefined
        .file(
            "etc/passwd",
            b"root:x:0:0:root:/root:/bin/sh\ndefault-user:x:1000:1000::/home/default-user:/bin/sh\n",
        )
        .file(
            "etc/group",
            b"root:x:0:\ndefault-user:x:1000:\ngroup-defined-in-image:x:50000:default-user\n",
        );
    let mut pause = marked(&toolbox, "pause");
    pause.entrypoint = vec!["/bin/pause".to_owned()];
    vec![
        Pushed {
            name: "toolbox",
            image: toolbox.clone(),
            refs: vec![TOOLBOX.to_owned(), format!("{E2E}/busybox:1.29-2")],
        },
        Pushed {
            name: "web-server",
            image: web_server(p2),
            refs: vec![
                WEB_SERVER.to_owned(),
                format!("{E2E}/httpd:2.4.39-4"),
                format!("{E2E}/nginx:1.14-2"),
            ],
        },
        Pushed {
            name: "test-image-latest",
            image: marked(&toolbox, "test-image-latest"),
            refs: vec![staging("test-image-latest:latest")],
        },
        Pushed {
            name: "test-image-tag-test",
            image: marked(&toolbox, "test-image-tag:test"),
            refs: vec![staging("test-image-tag:test")],
        },
        Pushed {
            name: "test-image-tag-all",
            image: marked(&toolbox, "test-image-tag:all"),
            refs: vec![staging("test-image-tag:all")],
        },
        Pushed {
            name: "test-image-1",
            image: marked(&toolbox, "test-image-1"),
            refs: vec![staging("test-image-1:latest")],
        },
        Pushed {
            name: "test-image-2",
            image: marked(&toolbox, "test-image-2"),
            refs: vec![staging("test-image-2:latest")],
        },
        Pushed {
            name: "test-image-3",
            image: marked(&toolbox, "test-image-3"),
            refs: vec![staging("test-image-3:latest")],
        },
        Pushed {
            name: "test-image-tags",
            image: marked(&toolbox, "test-image-tags"),
            refs: (1..=3)
                .map(|t| staging(&format!("test-image-tags:{t}")))
                .collect(),
        },
        Pushed {
            name: "test-image-user-uid",
            image: with_user("test-image-user-uid", "1002"),
            refs: vec![staging("test-image-user-uid:latest")],
        },
        Pushed {
            name: "test-image-user-username",
            image: with_user("test-image-user-username", "www-data"),
            refs: vec![staging("test-image-user-username:latest")],
        },
        Pushed {
            name: "test-image-user-uid-group",
            image: with_user("test-image-user-uid-group", "1003:1004"),
            refs: vec![staging("test-image-user-uid-group:latest")],
        },
        Pushed {
            name: "test-image-user-username-group",
            image: with_user("test-image-user-username-group", "www-data:1004"),
            refs: vec![staging("test-image-user-username-group:latest")],
        },
        Pushed {
            name: "test-image-predefined-group",
            image: predefined,
            refs: vec![staging("test-image-predefined-group:latest")],
        },
        Pushed {
            name: "pause",
            image: pause,
            refs: vec![
                "registry.k8s.io/pause:3.9".to_owned(),
                "k8s.gcr.io/pause:3.9".to_owned(),
            ],
        },
    ]
}

/// The repository path and tag of `reference` in the loopback registry (its host dropped:
/// the mirrors map `gcr.io`, `registry.k8s.io` and `k8s.gcr.io` onto that one registry).
pub fn registry_path(reference: &str) -> &str {
    match reference.split_once('/') {
        Some((host, rest)) if host.contains('.') || host.contains(':') => rest,
        _ => reference,
    }
}

/// Writes every layout under `out/<name>`, `out/push.txt` (`<layout dir> <registry path>` a
/// line, for skopeo) and `out/test-images.yaml` (critest's `-test-images-file`, naming our two
/// images in `registry`, a `host:port`).
pub fn write(out: &Path, registry: &str, p1: &[u8], p2: &[u8]) -> std::io::Result<()> {
    std::fs::create_dir_all(out)?;
    let mut push = String::new();
    for p in all(p1, p2) {
        let dir = out.join(p.name);
        if dir.exists() {
            std::fs::remove_dir_all(&dir)?;
        }
        p.image.write_layout(&dir);
        for r in &p.refs {
            push.push_str(&format!("{} {}\n", dir.display(), registry_path(r)));
        }
    }
    std::fs::write(out.join("push.txt"), push)?;
    std::fs::write(
        out.join("test-images.yaml"),
        format!(
            "defaultTestContainerImage: {registry}/{TOOLBOX}\nwebServerTestImage: {registry}/{WEB_SERVER}\n"
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_drop_the_registry_host() {
        assert_eq!(
            registry_path("gcr.io/k8s-staging-cri-tools/test-image-tags:1"),
            "k8s-staging-cri-tools/test-image-tags:1"
        );
        assert_eq!(registry_path("registry.k8s.io/pause:3.9"), "pause:3.9");
        assert_eq!(registry_path(TOOLBOX), TOOLBOX);
    }

    #[test]
    fn the_set_has_the_properties_the_specs_check() {
        let all = all(b"\0asm p1", b"\0asm p2");
        // Every reference once; every image distinct (critest's "3 different images", tag:test
        // against tag:all), so a reference's image is told by its content alone.
        let mut refs: Vec<&String> = all.iter().flat_map(|p| &p.refs).collect();
        let n = refs.len();
        refs.sort();
        refs.dedup();
        assert_eq!(refs.len(), n);
        let mut layers: Vec<Vec<u8>> = all.iter().map(|p| p.image.layer_tar()).collect();
        layers.sort();
        layers.dedup();
        assert_eq!(layers.len(), all.len());
        let find = |r: &str| all.iter().find(|p| p.refs.iter().any(|x| x == r)).unwrap();
        assert_eq!(find("k8s.gcr.io/pause:3.9").name, "pause");
        assert_eq!(
            find("registry.k8s.io/pause:3.9").image.entrypoint,
            ["/bin/pause"]
        );
        assert_eq!(
            find("registry.k8s.io/e2e-test-images/httpd:2.4.39-4").name,
            "web-server"
        );
        let user = |r: &str| find(&format!("{STAGING}/{r}:latest")).image.user.clone();
        assert_eq!(user("test-image-user-uid"), "1002");
        assert_eq!(user("test-image-user-username"), "www-data");
        assert_eq!(user("test-image-user-uid-group"), "1003:1004");
        assert_eq!(user("test-image-user-username-group"), "www-data:1004");
    }
}
