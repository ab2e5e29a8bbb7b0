//! Offline OCI images for the lab's containerd: no registry is reachable here, so an image is
//! built from files on this machine (one uncompressed layer) as an OCI image layout tarball
//! and imported with `ctr images import`.
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use serde_json::json;
use sha2::{Digest as _, Sha256};

/// One file of an image's single layer.
pub struct File<'a> {
    /// Path inside the image, relative (`weir-lab-pod`, `bin/weir-agent`).
    pub path: &'a str,
    pub source: &'a Path,
    pub mode: u32,
}

/// The image: its files, entrypoint and default arguments, named `name` (`weir.lab/pod:1`).
pub struct Image<'a> {
    pub name: &'a str,
    pub files: Vec<File<'a>>,
    /// Symbolic links (path inside the image, target): `bin/sh` → `busybox`.
    pub links: Vec<(String, String)>,
    pub entrypoint: Vec<&'a str>,
    pub cmd: Vec<&'a str>,
}

/// The shared libraries (and loader) a dynamically linked binary needs, as `ldd` resolves them
/// on this machine; none for a static binary.
pub fn shared_libraries(binary: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let out = std::process::Command::new("ldd").arg(binary).output().context("running ldd")?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() || text.contains("statically linked") {
        // glibc's ldd exits 1 with "not a dynamic executable" for static binaries.
        return Ok(Vec::new());
    }
    let mut libs = Vec::new();
    for line in text.lines() {
        let path = match line.split_once("=>") {
            Some((_, rest)) => rest.split_whitespace().next(),
            None => line.split_whitespace().next().filter(|p| p.starts_with('/')),
        };
        if let Some(p) = path.filter(|p| p.starts_with('/')) {
            libs.push(PathBuf::from(p));
        }
    }
    Ok(libs)
}

/// The shared libraries `binaries` need, each once, as (path in the image, host path): at the
/// same path as on the host, where the binaries' loader looks for them.
pub fn libraries_of<'a>(binaries: impl IntoIterator<Item = &'a Path>) -> anyhow::Result<Vec<(String, PathBuf)>> {
    let mut libs = std::collections::BTreeSet::new();
    for b in binaries {
        libs.extend(shared_libraries(b)?);
    }
    Ok(libs.into_iter().map(|l| (l.display().to_string().trim_start_matches('/').to_owned(), l)).collect())
}

fn sha256(data: &[u8]) -> String {
    let d = Sha256::digest(data);
    format!("sha256:{}", d.iter().map(|b| format!("{b:02x}")).collect::<String>())
}

/// A blob's descriptor and its path in the layout.
fn blob(out: &mut tar::Builder<Vec<u8>>, media_type: &str, data: &[u8]) -> anyhow::Result<serde_json::Value> {
    let digest = sha256(data);
    append(out, &format!("blobs/sha256/{}", &digest["sha256:".len()..]), data, 0o644)?;
    Ok(json!({"mediaType": media_type, "digest": digest, "size": data.len()}))
}

fn append(out: &mut tar::Builder<Vec<u8>>, path: &str, data: &[u8], mode: u32) -> anyhow::Result<()> {
    let mut h = tar::Header::new_ustar();
    h.set_size(data.len() as u64);
    h.set_mode(mode);
    h.set_mtime(0);
    h.set_uid(0);
    h.set_gid(0);
    h.set_entry_type(tar::EntryType::Regular);
    out.append_data(&mut h, path, data).with_context(|| format!("adding {path}"))
}

/// The image as an OCI image layout tarball (what `ctr images import` reads).
pub fn layout(image: &Image<'_>) -> anyhow::Result<Vec<u8>> {
    let mut layer = tar::Builder::new(Vec::new());
    // Every parent directory first, as image builders write them.
    let mut dirs = std::collections::BTreeSet::new();
    for p in image.files.iter().map(|f| f.path).chain(image.links.iter().map(|l| l.0.as_str())) {
        let mut parent = Path::new(p).parent();
        while let Some(d) = parent.filter(|d| !d.as_os_str().is_empty()) {
            dirs.insert(d.to_owned());
            parent = d.parent();
        }
    }
    // Every image has a /tmp (iperf3, for one, keeps its buffers there).
    let mut h = tar::Header::new_ustar();
    h.set_size(0);
    h.set_mode(0o1777);
    h.set_mtime(0);
    h.set_entry_type(tar::EntryType::Directory);
    layer.append_data(&mut h, "tmp/", std::io::empty())?;
    for d in &dirs {
        let mut h = tar::Header::new_ustar();
        h.set_size(0);
        h.set_mode(0o755);
        h.set_mtime(0);
        h.set_entry_type(tar::EntryType::Directory);
        layer.append_data(&mut h, format!("{}/", d.display()), std::io::empty())?;
    }
    for (path, target) in &image.links {
        let mut h = tar::Header::new_ustar();
        h.set_size(0);
        h.set_mode(0o777);
        h.set_mtime(0);
        h.set_entry_type(tar::EntryType::Symlink);
        layer.append_link(&mut h, path, target).with_context(|| format!("adding link {path}"))?;
    }
    for f in &image.files {
        let data = std::fs::read(f.source).with_context(|| format!("reading {}", f.source.display()))?;
        append(&mut layer, f.path, &data, f.mode)?;
    }
    let layer = layer.into_inner()?;
    let mut out = tar::Builder::new(Vec::new());
    append(&mut out, "oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#, 0o644)?;
    let layer_desc = blob(&mut out, "application/vnd.oci.image.layer.v1.tar", &layer)?;
    let config = json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {
            "Entrypoint": image.entrypoint,
            "Cmd": image.cmd,
            "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
        },
        "rootfs": {"type": "layers", "diff_ids": [layer_desc["digest"]]},
    });
    let config_desc = blob(&mut out, "application/vnd.oci.image.config.v1+json", &serde_json::to_vec(&config)?)?;
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": config_desc,
        "layers": [layer_desc],
    });
    let mut manifest_desc =
        blob(&mut out, "application/vnd.oci.image.manifest.v1+json", &serde_json::to_vec(&manifest)?)?;
    let tag = image.name.rsplit_once(':').map_or("latest", |(_, t)| t);
    manifest_desc["annotations"] =
        json!({"io.containerd.image.name": image.name, "org.opencontainers.image.ref.name": tag});
    let index = json!({"schemaVersion": 2, "manifests": [manifest_desc]});
    append(&mut out, "index.json", &serde_json::to_vec(&index)?, 0o644)?;
    Ok(out.into_inner()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The layout names its blobs by their digests and the index leads to the layer.
    #[test]
    fn the_layout_is_addressed_by_content() {
        let dir = std::env::temp_dir().join(format!("weir-image-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let src = dir.join("bin");
        std::fs::write(&src, b"#!hello").expect("write");
        let image = Image {
            name: "weir.lab/t:1",
            files: vec![File { path: "bin/t", source: &src, mode: 0o755 }],
            links: vec![("bin/u".into(), "t".into())],
            entrypoint: vec!["/t"],
            cmd: vec![],
        };
        let bytes = layout(&image).expect("layout");
        let _ = std::fs::remove_dir_all(&dir);
        let mut files = std::collections::BTreeMap::new();
        for e in tar::Archive::new(bytes.as_slice()).entries().expect("entries") {
            let mut e = e.expect("entry");
            let mut data = Vec::new();
            std::io::Read::read_to_end(&mut e, &mut data).expect("read");
            files.insert(e.path().expect("path").display().to_string(), data);
        }
        for (path, data) in &files {
            if let Some(hex) = path.strip_prefix("blobs/sha256/") {
                assert_eq!(sha256(data), format!("sha256:{hex}"), "{path} is named by its digest");
            }
        }
        let index: serde_json::Value = serde_json::from_slice(&files["index.json"]).expect("index");
        assert_eq!(index["manifests"][0]["annotations"]["io.containerd.image.name"], "weir.lab/t:1");
        let at = |d: &serde_json::Value| &files[&format!("blobs/sha256/{}", &d.as_str().expect("digest")[7..])];
        let manifest: serde_json::Value = serde_json::from_slice(at(&index["manifests"][0]["digest"])).expect("m");
        let layer = at(&manifest["layers"][0]["digest"]);
        let mut names = Vec::new();
        for e in tar::Archive::new(layer.as_slice()).entries().expect("layer") {
            names.push(e.expect("e").path().expect("p").display().to_string());
        }
        assert_eq!(names, ["tmp/", "bin/", "bin/u", "bin/t"]);
    }
}
