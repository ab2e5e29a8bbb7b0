//! The runtime's CNI result cache, read to rebuild a lost endpoint store. libcni (containerd,
//! CRI-O, podman) keeps one JSON file per attachment, `<dir>/<network>-<containerID>-<ifName>`
//! (`"kind": "cniCacheV1"`), holding the CNI_ARGS it passed (kubelet's `K8S_POD_NAMESPACE`,
//! `K8S_POD_NAME`, `K8S_POD_UID`) and the result the plugin returned (whose container interface
//! names the network namespace as its `sandbox`, with its MAC, and the address given to it).
//! Read only; a file that does not parse or does not name the attachment is ignored.
use std::{
    net::Ipv4Addr,
    path::{Path, PathBuf},
};

use serde::Deserialize;

/// What the cache holds about one attachment.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Cached {
    pub pod_namespace: String,
    pub pod_name: String,
    pub pod_uid: String,
    /// The container interface's `sandbox` in the cached result (empty when absent).
    pub netns: String,
    /// The container interface's MAC in the cached result, when it is a well-formed one.
    pub pod_mac: Option<[u8; 6]>,
    /// The IPv4 address the result gave the container interface.
    pub ip: Option<Ipv4Addr>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Entry {
    kind: String,
    container_id: String,
    if_name: String,
    #[serde(default)]
    cni_args: Vec<(String, String)>,
    #[serde(default)]
    result: Option<CniResult>,
}

#[derive(Deserialize)]
struct CniResult {
    #[serde(default)]
    interfaces: Vec<Interface>,
    #[serde(default)]
    ips: Vec<IpConfig>,
}

#[derive(Deserialize)]
struct Interface {
    name: String,
    #[serde(default)]
    sandbox: String,
    #[serde(default)]
    mac: String,
}

#[derive(Deserialize)]
struct IpConfig {
    address: String,
    interface: Option<usize>,
}

/// The cache's entry for (`container_id`, `ifname`) in `dir`, if there is one.
pub fn find(dir: &Path, container_id: &str, ifname: &str) -> Option<Cached> {
    let suffix = format!("-{container_id}-{ifname}");
    let files: Vec<PathBuf> = std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(&suffix))
        .map(|e| e.path())
        .collect();
    files.iter().find_map(|f| {
        // A cache entry is a few KiB; anything much larger is not one.
        let meta = std::fs::metadata(f).ok()?;
        if !meta.is_file() || meta.len() > 1 << 20 {
            return None;
        }
        parse(&std::fs::read(f).ok()?, container_id, ifname)
    })
}

/// One cache file's contents, when it is a v1 entry for (`container_id`, `ifname`).
pub fn parse(bytes: &[u8], container_id: &str, ifname: &str) -> Option<Cached> {
    let e: Entry = serde_json::from_slice(bytes).ok()?;
    if e.kind != "cniCacheV1" || e.container_id != container_id || e.if_name != ifname {
        return None;
    }
    let arg = |k: &str| e.cni_args.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone()).unwrap_or_default();
    // The container interface: the one of that name inside a sandbox (the host side has none).
    let pod_if = e
        .result
        .as_ref()
        .and_then(|r| r.interfaces.iter().enumerate().find(|(_, i)| i.name == ifname && !i.sandbox.is_empty()));
    let ip = pod_if.zip(e.result.as_ref()).and_then(|((index, _), r)| {
        r.ips
            .iter()
            .filter(|c| c.interface == Some(index))
            .find_map(|c| c.address.split_once('/').and_then(|(a, _)| a.parse::<Ipv4Addr>().ok()))
    });
    Some(Cached {
        pod_namespace: arg("K8S_POD_NAMESPACE"),
        pod_name: arg("K8S_POD_NAME"),
        pod_uid: arg("K8S_POD_UID"),
        netns: pod_if.map(|(_, i)| i.sandbox.clone()).unwrap_or_default(),
        pod_mac: pod_if.and_then(|(_, i)| parse_mac(&i.mac)),
        ip,
    })
}

/// `aa:bb:cc:dd:ee:ff` → bytes; anything else is `None`.
fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut out = [0u8; 6];
    let mut parts = s.split(':');
    for b in &mut out {
        let p = parts.next().filter(|p| p.len() == 2)?;
        *b = u8::from_str_radix(p, 16).ok()?;
    }
    parts.next().is_none().then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ENTRY: &str = r#"{"kind":"cniCacheV1","containerId":"abc123","config":"e30=","ifName":"eth0",
        "networkName":"weir","cniArgs":[["IgnoreUnknown","1"],["K8S_POD_NAMESPACE","shop"],
        ["K8S_POD_NAME","cart-1"],["K8S_POD_UID","u-1"]],
        "result":{"cniVersion":"1.0.0","interfaces":[{"name":"lxc1"},{"name":"eth0","mac":"0a:00:00:00:00:01",
        "sandbox":"/var/run/netns/cni-1"}],"ips":[{"address":"10.244.1.5/24","interface":1}]}}"#;

    #[test]
    fn reads_pod_identity_and_netns_of_the_attachment_only() {
        let c = parse(ENTRY.as_bytes(), "abc123", "eth0").expect("entry");
        assert_eq!(
            c,
            Cached {
                pod_namespace: "shop".into(),
                pod_name: "cart-1".into(),
                pod_uid: "u-1".into(),
                netns: "/var/run/netns/cni-1".into(),
                pod_mac: Some([0x0a, 0, 0, 0, 0, 1]),
                ip: Some(Ipv4Addr::new(10, 244, 1, 5)),
            }
        );
        // An address given to another interface, or a MAC that is not one, is not taken.
        let other =
            ENTRY.replace(r#""interface":1"#, r#""interface":0"#).replace("0a:00:00:00:00:01", "0a:00:00:00:00");
        let c = parse(other.as_bytes(), "abc123", "eth0").expect("entry");
        assert_eq!((c.ip, c.pod_mac), (None, None));
        assert_eq!(parse(ENTRY.as_bytes(), "abc123", "net1"), None, "another interface");
        assert_eq!(parse(ENTRY.as_bytes(), "abc", "eth0"), None, "another container");
        assert_eq!(parse(b"{not json", "abc123", "eth0"), None);
        assert_eq!(parse(ENTRY.replace("cniCacheV1", "cniCacheV2").as_bytes(), "abc123", "eth0"), None);
    }

    #[test]
    fn finds_the_file_by_libcni_name() {
        let dir = std::env::temp_dir().join(format!("weir-cni-cache-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        std::fs::write(dir.join("weir-abc123-eth0"), ENTRY).expect("write");
        std::fs::write(dir.join("weir-zzz-eth0"), "garbage").expect("write");
        assert_eq!(find(&dir, "abc123", "eth0").map(|c| c.pod_name), Some("cart-1".into()));
        assert_eq!(find(&dir, "zzz", "eth0"), None);
        assert_eq!(find(&dir.join("absent"), "abc123", "eth0"), None);
        std::fs::remove_dir_all(&dir).ok();
    }
}
