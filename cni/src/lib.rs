//! The CNI 1.1 plugin logic: parse the environment and network config, ask the agent, render
//! the spec's result or error JSON. No business logic lives here: IPAM, links and the datapath
//! are the agent's. Every agent call has a deadline shorter than the runtime's.
//!
//! DEL is idempotent and best effort: when the agent is down, the request is queued on disk
//! (`deleteQueueDir`) and the agent drains the queue when it starts.
use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use serde::Deserialize;
use serde_json::{json, Map, Value};
use weir_operator_api::{
    code, ApiError, Attachment, AttachmentRef, Endpoint, GcRequest, Request, Response, DEFAULT_SOCKET,
};

/// The versions whose result format this plugin can write.
pub const SUPPORTED_VERSIONS: &[&str] = &["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];
pub const DEFAULT_DELETE_QUEUE: &str = "/run/weir/delete-queue";
const DEFAULT_TIMEOUT_SECS: u64 = 30;

/// Every way the plugin can fail, one variant per CNI error code.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CniError {
    #[error("incompatible CNI version {0:?}; supported: {SUPPORTED_VERSIONS:?}")]
    IncompatibleVersion(String),
    #[error("unsupported field in network configuration: {0}")]
    UnsupportedField(String),
    #[error("container unknown or does not exist: {0}")]
    UnknownContainer(String),
    #[error("invalid or missing environment variable {0}")]
    InvalidEnv(String),
    #[error("I/O failure: {0}")]
    Io(String),
    #[error("failed to decode content: {0}")]
    Decode(String),
    #[error("invalid network config: {0}")]
    InvalidConfig(String),
    #[error("try again later: {0}")]
    TryAgainLater(String),
    #[error("the plugin is not available: {0}")]
    NotAvailable(String),
    /// An error reported by the agent, code and all.
    #[error("{}", .0.msg)]
    Agent(ApiError),
}

impl CniError {
    pub fn code(&self) -> u32 {
        match self {
            CniError::IncompatibleVersion(_) => code::INCOMPATIBLE_VERSION,
            CniError::UnsupportedField(_) => code::UNSUPPORTED_FIELD,
            CniError::UnknownContainer(_) => code::UNKNOWN_CONTAINER,
            CniError::InvalidEnv(_) => code::INVALID_ENV,
            CniError::Io(_) => code::IO_FAILURE,
            CniError::Decode(_) => code::DECODE_FAILURE,
            CniError::InvalidConfig(_) => code::INVALID_CONFIG,
            CniError::TryAgainLater(_) => code::TRY_AGAIN_LATER,
            CniError::NotAvailable(_) => code::PLUGIN_NOT_AVAILABLE,
            CniError::Agent(e) => e.code,
        }
    }

    fn details(&self) -> String {
        match self {
            CniError::Agent(e) => e.details.clone(),
            _ => String::new(),
        }
    }
}

pub type Result<T, E = CniError> = std::result::Result<T, E>;

/// The network configuration weir reads (unknown fields are ignored, as the spec asks).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetConf {
    pub cni_version: String,
    pub name: String,
    #[serde(rename = "type")]
    pub plugin_type: String,
    #[serde(default)]
    pub agent_socket: Option<PathBuf>,
    #[serde(default)]
    pub delete_queue_dir: Option<PathBuf>,
    #[serde(default)]
    pub agent_timeout_seconds: Option<u64>,
    #[serde(default)]
    pub mtu: Option<u32>,
    #[serde(default)]
    pub prev_result: Option<Value>,
    #[serde(default, rename = "cni.dev/valid-attachments")]
    pub valid_attachments: Option<Vec<ValidAttachment>>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ValidAttachment {
    #[serde(rename = "containerID")]
    pub container_id: String,
    pub ifname: String,
}

/// What the plugin was asked to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Add,
    Del,
    Check,
    Version,
    Status,
    Gc,
}

/// The process environment as the plugin reads it: the UTF-8 variables, and the name of the
/// first `CNI_*` variable that is not UTF-8 (the others are none of the plugin's business).
pub fn environment(
    vars: impl IntoIterator<Item = (std::ffi::OsString, std::ffi::OsString)>,
) -> (Vec<(String, String)>, Option<String>) {
    let mut env = Vec::new();
    let mut bad = None;
    for (k, v) in vars {
        match (k.into_string(), v.into_string()) {
            (Ok(k), Ok(v)) => env.push((k, v)),
            (Ok(k), Err(_)) if k.starts_with("CNI_") => {
                bad.get_or_insert(k);
            }
            (Err(k), _) if k.to_string_lossy().starts_with("CNI_") => {
                bad.get_or_insert(k.to_string_lossy().into_owned());
            }
            _ => {}
        }
    }
    (env, bad)
}

fn var<'a>(env: &'a [(String, String)], key: &str) -> Option<&'a str> {
    env.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
}

fn required<'a>(env: &'a [(String, String)], key: &str) -> Result<&'a str> {
    match var(env, key) {
        Some(v) if !v.is_empty() => Ok(v),
        _ => Err(CniError::InvalidEnv(key.to_owned())),
    }
}

pub fn command(env: &[(String, String)]) -> Result<Command> {
    match required(env, "CNI_COMMAND")? {
        "ADD" => Ok(Command::Add),
        "DEL" => Ok(Command::Del),
        "CHECK" => Ok(Command::Check),
        "VERSION" => Ok(Command::Version),
        "STATUS" => Ok(Command::Status),
        "GC" => Ok(Command::Gc),
        other => Err(CniError::InvalidEnv(format!("CNI_COMMAND (unknown command {other:?})"))),
    }
}

/// Parses CNI_ARGS (`K=V;K=V`); malformed pairs are an error naming the pair.
pub fn cni_args(env: &[(String, String)]) -> Result<Vec<(String, String)>> {
    let Some(raw) = var(env, "CNI_ARGS") else { return Ok(Vec::new()) };
    raw.split(';')
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
            _ => Err(CniError::InvalidEnv(format!("CNI_ARGS (malformed pair {p:?})"))),
        })
        .collect()
}

pub fn parse_conf(stdin: &[u8]) -> Result<NetConf> {
    let conf: NetConf = serde_json::from_slice(stdin).map_err(|e| CniError::Decode(format!("network config: {e}")))?;
    if conf.name.is_empty() {
        return Err(CniError::InvalidConfig("\"name\" must not be empty".into()));
    }
    if !SUPPORTED_VERSIONS.contains(&conf.cni_version.as_str()) {
        return Err(CniError::IncompatibleVersion(conf.cni_version.clone()));
    }
    if let Some(mtu) = conf.mtu {
        if !(576..=65535).contains(&mtu) {
            return Err(CniError::InvalidConfig(format!("\"mtu\" {mtu} outside 576..=65535")));
        }
    }
    Ok(conf)
}

/// The VERSION answer.
pub fn version_info() -> Value {
    json!({ "cniVersion": "1.1.0", "supportedVersions": SUPPORTED_VERSIONS })
}

/// Runs one invocation; returns the JSON to print on success (`Null` prints nothing).
pub fn run(env: &[(String, String)], stdin: &[u8]) -> Result<Value> {
    let cmd = command(env)?;
    if cmd == Command::Version {
        return Ok(version_info());
    }
    let conf = parse_conf(stdin)?;
    let client = Client::from_conf(&conf);
    match cmd {
        Command::Version => Ok(version_info()),
        Command::Add => {
            let att = attachment(env, &conf, true)?;
            let ep = client.call_endpoint(&Request::Add(att))?;
            Ok(add_result(&conf, &ep))
        }
        Command::Check => {
            let att = attachment(env, &conf, true)?;
            let ep = client.call_endpoint(&Request::Check(att))?;
            check_prev_result(&conf, &ep)?;
            Ok(Value::Null)
        }
        Command::Del => {
            let att = attachment(env, &conf, false)?;
            match client.call(&Request::Del(att.id.clone())) {
                Ok(Response::Deleted) => Ok(Value::Null),
                Ok(Response::Error(e)) => Err(CniError::Agent(e)),
                Ok(other) => Err(CniError::Io(format!("unexpected agent answer {other:?}"))),
                // The agent is down, died while answering, or did not answer in time: the DEL is
                // queued on disk and done when the agent drains the queue (at start and every
                // resync). DEL is idempotent, so a DEL the agent did finish is harmless there.
                Err(CniError::NotAvailable(why) | CniError::Io(why) | CniError::TryAgainLater(why)) => {
                    queue_delete(&conf, &att.id)
                        .map_err(|e| CniError::Io(format!("agent unavailable ({why}) and queueing DEL failed: {e}")))?;
                    Ok(Value::Null)
                }
                Err(e) => Err(e),
            }
        }
        Command::Status => match client.call(&Request::Status)? {
            Response::Status(s) if s.ready => Ok(Value::Null),
            Response::Status(s) => Err(CniError::NotAvailable(s.reason)),
            Response::Error(e) => Err(CniError::Agent(e)),
            other => Err(CniError::Io(format!("unexpected agent answer {other:?}"))),
        },
        Command::Gc => {
            let valid = conf
                .valid_attachments
                .as_ref()
                .ok_or_else(|| CniError::InvalidConfig("GC needs \"cni.dev/valid-attachments\"".into()))?
                .iter()
                .map(|a| AttachmentRef {
                    container_id: a.container_id.clone(),
                    ifname: a.ifname.clone(),
                    netns: String::new(),
                })
                .collect();
            match client.call(&Request::Gc(GcRequest { valid }))? {
                Response::Collected { .. } => Ok(Value::Null),
                Response::Error(e) => Err(CniError::Agent(e)),
                other => Err(CniError::Io(format!("unexpected agent answer {other:?}"))),
            }
        }
    }
}

/// The CNI specification's container ID: a letter or digit, then letters, digits, `_`, `.`
/// and `-` (it names files and interfaces; nothing else may reach them). At most 1024 bytes.
pub fn valid_container_id(id: &str) -> bool {
    let mut chars = id.chars();
    id.len() <= 1024
        && chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

fn attachment(env: &[(String, String)], conf: &NetConf, need_netns: bool) -> Result<Attachment> {
    let container_id = required(env, "CNI_CONTAINERID")?.to_owned();
    if !valid_container_id(&container_id) {
        return Err(CniError::InvalidEnv(format!(
            "CNI_CONTAINERID ({container_id:?}: must start with a letter or digit and hold only letters, digits, '_', '.' and '-')"
        )));
    }
    let ifname = required(env, "CNI_IFNAME")?.to_owned();
    if ifname.len() > 15 || ifname.contains('/') || ifname.contains(char::is_whitespace) {
        return Err(CniError::InvalidEnv(format!("CNI_IFNAME ({ifname:?} is not a valid interface name)")));
    }
    required(env, "CNI_PATH")?;
    let netns = if need_netns {
        let n = required(env, "CNI_NETNS")?;
        if !Path::new(n).exists() {
            return Err(CniError::UnknownContainer(format!("network namespace {n} does not exist")));
        }
        n.to_owned()
    } else {
        var(env, "CNI_NETNS").unwrap_or_default().to_owned()
    };
    let args = cni_args(env)?;
    let arg = |k: &str| args.iter().find(|(a, _)| a == k).map(|(_, v)| v.clone()).unwrap_or_default();
    Ok(Attachment {
        id: AttachmentRef { container_id, ifname, netns },
        pod_namespace: arg("K8S_POD_NAMESPACE"),
        pod_name: arg("K8S_POD_NAME"),
        pod_uid: arg("K8S_POD_UID"),
        mtu: conf.mtu,
    })
}

/// Builds the ADD result in the config's version, appended to `prevResult` when chained.
pub fn add_result(conf: &NetConf, ep: &Endpoint) -> Value {
    let legacy = conf.cni_version.starts_with("0.");
    let prev = conf.prev_result.as_ref();
    let list =
        |k: &str| -> Vec<Value> { prev.and_then(|p| p.get(k)).and_then(Value::as_array).cloned().unwrap_or_default() };
    let mut interfaces = list("interfaces");
    let mut ips = list("ips");
    let mut routes = list("routes");
    let base = interfaces.len();
    interfaces.push(json!({ "name": ep.host_ifname, "mac": ep.host_mac }));
    let mut pod_if = Map::new();
    pod_if.insert("name".into(), json!(ep.ifname));
    pod_if.insert("mac".into(), json!(ep.pod_mac));
    pod_if.insert("sandbox".into(), json!(ep.netns));
    if !legacy && conf.cni_version != "1.0.0" {
        pod_if.insert("mtu".into(), json!(ep.mtu));
    }
    interfaces.push(Value::Object(pod_if));
    let mut ip = Map::new();
    if legacy {
        ip.insert("version".into(), json!("4"));
    }
    ip.insert("address".into(), json!(format!("{}/{}", ep.ip, ep.prefix_len)));
    ip.insert("gateway".into(), json!(ep.gateway.to_string()));
    ip.insert("interface".into(), json!(base + 1));
    ips.push(Value::Object(ip));
    routes.push(json!({ "dst": "0.0.0.0/0", "gw": ep.gateway.to_string() }));
    let dns = prev.and_then(|p| p.get("dns")).cloned().unwrap_or_else(|| json!({}));
    json!({
        "cniVersion": conf.cni_version,
        "interfaces": interfaces,
        "ips": ips,
        "routes": routes,
        "dns": dns,
    })
}

/// CHECK: when the runtime passes our earlier result, the address in it must be ours.
fn check_prev_result(conf: &NetConf, ep: &Endpoint) -> Result<()> {
    let Some(prev) = &conf.prev_result else { return Ok(()) };
    let want = format!("{}/{}", ep.ip, ep.prefix_len);
    let has = prev
        .get("ips")
        .and_then(Value::as_array)
        .is_some_and(|ips| ips.iter().any(|i| i.get("address").and_then(Value::as_str) == Some(&want)));
    if has {
        Ok(())
    } else {
        Err(CniError::Agent(ApiError::new(
            code::CHECK_FAILED,
            format!("prevResult does not list this attachment's address {want}"),
            "",
        )))
    }
}

fn queue_delete(conf: &NetConf, id: &AttachmentRef) -> std::io::Result<()> {
    let dir = conf.delete_queue_dir.clone().unwrap_or_else(|| PathBuf::from(DEFAULT_DELETE_QUEUE));
    std::fs::create_dir_all(&dir)?;
    let safe: String = format!("{}_{}", id.container_id, id.ifname)
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '_' })
        .collect();
    let tmp = dir.join(format!(".{safe}.tmp"));
    std::fs::write(&tmp, serde_json::to_vec(id).map_err(std::io::Error::other)?)?;
    std::fs::rename(tmp, dir.join(format!("{safe}.json")))
}

/// A synchronous client with a deadline on every call.
pub struct Client {
    socket: PathBuf,
    timeout: Duration,
}

impl Client {
    pub fn from_conf(conf: &NetConf) -> Self {
        Self {
            socket: conf.agent_socket.clone().unwrap_or_else(|| PathBuf::from(DEFAULT_SOCKET)),
            timeout: Duration::from_secs(conf.agent_timeout_seconds.unwrap_or(DEFAULT_TIMEOUT_SECS)),
        }
    }

    pub fn call(&self, req: &Request) -> Result<Response> {
        use weir_operator_api::client::{call, CallError};
        call(&self.socket, req, self.timeout).map_err(|e| match e {
            CallError::Connect(_) => CniError::NotAvailable(format!("{} ({})", e, self.socket.display())),
            CallError::Timeout(_) => CniError::TryAgainLater(e.to_string()),
            CallError::Io(_) | CallError::Decode(_) => CniError::Io(e.to_string()),
        })
    }

    fn call_endpoint(&self, req: &Request) -> Result<Endpoint> {
        match self.call(req)? {
            Response::Added(ep) | Response::Checked(ep) => Ok(ep),
            Response::Error(e) => Err(CniError::Agent(e)),
            other => Err(CniError::Io(format!("unexpected agent answer {other:?}"))),
        }
    }
}

/// Renders the outcome as (stdout text, exit code), per the spec: errors are JSON on stdout
/// with a non-zero exit.
pub fn render(stdin: &[u8], outcome: Result<Value>) -> (String, i32) {
    match outcome {
        Ok(Value::Null) => (String::new(), 0),
        Ok(v) => (v.to_string(), 0),
        Err(e) => {
            // Answer in the caller's version when it is one we know.
            let version = serde_json::from_slice::<Value>(stdin)
                .ok()
                .and_then(|v| v.get("cniVersion").and_then(Value::as_str).map(str::to_owned))
                .filter(|v| SUPPORTED_VERSIONS.contains(&v.as_str()))
                .unwrap_or_else(|| "1.1.0".to_owned());
            let body = json!({ "cniVersion": version, "code": e.code(), "msg": e.to_string(), "details": e.details() });
            (body.to_string(), 1)
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    const CONF: &str =
        r#"{"cniVersion":"1.1.0","name":"weir","type":"weir-cni","agentSocket":"/nonexistent/weir.sock"}"#;

    fn code_of(e: &[(&str, &str)], stdin: &str) -> u32 {
        let (text, exit) = render(stdin.as_bytes(), run(&env(e), stdin.as_bytes()));
        assert_ne!(exit, 0, "{text}");
        let v: Value = serde_json::from_str(&text).expect("error JSON");
        assert!(v["msg"].as_str().is_some_and(|m| !m.is_empty()));
        v["code"].as_u64().expect("code") as u32
    }

    #[test]
    fn error_variants_map_to_spec_codes() {
        let cases = [
            (CniError::IncompatibleVersion("9".into()), 1),
            (CniError::UnsupportedField("x".into()), 2),
            (CniError::UnknownContainer("x".into()), 3),
            (CniError::InvalidEnv("x".into()), 4),
            (CniError::Io("x".into()), 5),
            (CniError::Decode("x".into()), 6),
            (CniError::InvalidConfig("x".into()), 7),
            (CniError::TryAgainLater("x".into()), 11),
            (CniError::NotAvailable("x".into()), 50),
            (CniError::Agent(ApiError::new(101, "full", "")), 101),
        ];
        for (e, c) in cases {
            assert_eq!(e.code(), c, "{e}");
        }
    }

    #[test]
    fn version_needs_no_config_and_lists_1_1() {
        let out = run(&env(&[("CNI_COMMAND", "VERSION")]), b"").expect("version");
        assert_eq!(out["cniVersion"], "1.1.0");
        assert!(out["supportedVersions"].as_array().expect("list").contains(&json!("1.1.0")));
    }

    #[test]
    fn bad_input_gets_the_right_code() {
        assert_eq!(code_of(&[], CONF), 4, "missing CNI_COMMAND");
        assert_eq!(code_of(&[("CNI_COMMAND", "FROB")], CONF), 4, "unknown command");
        assert_eq!(code_of(&[("CNI_COMMAND", "ADD")], "{not json"), 6, "malformed stdin");
        let v9 = CONF.replace("1.1.0", "9.9.9");
        assert_eq!(code_of(&[("CNI_COMMAND", "ADD")], &v9), 1, "unknown version");
        let noname = CONF.replace(r#""name":"weir""#, r#""name":"""#);
        assert_eq!(code_of(&[("CNI_COMMAND", "ADD")], &noname), 7, "empty name");
        assert_eq!(code_of(&[("CNI_COMMAND", "ADD"), ("CNI_IFNAME", "eth0")], CONF), 4, "no CNI_CONTAINERID");
        let base =
            [("CNI_COMMAND", "ADD"), ("CNI_CONTAINERID", "c"), ("CNI_IFNAME", "eth0"), ("CNI_PATH", "/opt/cni/bin")];
        assert_eq!(code_of(&base, CONF), 4, "no CNI_NETNS");
        for bad_id in ["../../etc", "-rf", "a b", "a/b", "a\nb", ""] {
            let mut bad = base.to_vec();
            bad[1] = ("CNI_CONTAINERID", bad_id);
            bad.push(("CNI_NETNS", "/proc/self/ns/net"));
            assert_eq!(code_of(&bad, CONF), 4, "container ID {bad_id:?}");
        }
        let mut gone = base.to_vec();
        gone.push(("CNI_NETNS", "/nonexistent/netns"));
        assert_eq!(code_of(&gone, CONF), 3, "netns does not exist");
        let mut badargs = base.to_vec();
        badargs.push(("CNI_NETNS", "/proc/self/ns/net"));
        badargs.push(("CNI_ARGS", "K8S_POD_NAME"));
        assert_eq!(code_of(&badargs, CONF), 4, "malformed CNI_ARGS");
        let mut ok = base.to_vec();
        ok.push(("CNI_NETNS", "/proc/self/ns/net"));
        assert_eq!(code_of(&ok, CONF), 50, "agent not running");
        assert_eq!(code_of(&[("CNI_COMMAND", "STATUS")], CONF), 50, "STATUS with no agent");
        assert_eq!(code_of(&[("CNI_COMMAND", "GC")], CONF), 7, "GC without valid-attachments");
        let badmtu = CONF.replace(r#""type""#, r#""mtu":10,"type""#);
        assert_eq!(code_of(&[("CNI_COMMAND", "ADD")], &badmtu), 7, "absurd MTU");
    }

    #[test]
    fn del_with_agent_down_is_queued_and_succeeds() {
        let dir = std::env::temp_dir().join(format!("weir-cni-q-{}", std::process::id()));
        let conf = format!(
            r#"{{"cniVersion":"1.1.0","name":"weir","type":"weir-cni","agentSocket":"/nonexistent/s","deleteQueueDir":"{}"}}"#,
            dir.display()
        );
        let e = env(&[("CNI_COMMAND", "DEL"), ("CNI_CONTAINERID", "abc"), ("CNI_IFNAME", "eth0"), ("CNI_PATH", "/x")]);
        assert_eq!(run(&e, conf.as_bytes()), Ok(Value::Null));
        let queued = std::fs::read_to_string(dir.join("abc_eth0.json")).expect("queued DEL");
        assert!(queued.contains("\"container_id\":\"abc\""));
        std::fs::remove_dir_all(&dir).ok();
    }

    fn endpoint() -> Endpoint {
        Endpoint {
            container_id: "c".into(),
            ifname: "eth0".into(),
            netns: "/var/run/netns/p".into(),
            pod_namespace: "ns".into(),
            pod_name: "p".into(),
            host_ifname: "lxc1".into(),
            host_mac: "0a:00:00:00:00:01".into(),
            pod_mac: "0a:00:00:00:00:02".into(),
            ip: Ipv4Addr::new(10, 244, 1, 5),
            prefix_len: 32,
            gateway: Ipv4Addr::new(169, 254, 1, 1),
            mtu: 1500,
        }
    }

    #[test]
    fn add_result_follows_the_spec_and_appends_to_prev_result() {
        let conf = parse_conf(CONF.as_bytes()).expect("conf");
        let r = add_result(&conf, &endpoint());
        assert_eq!(r["cniVersion"], "1.1.0");
        assert_eq!(r["interfaces"][1]["sandbox"], "/var/run/netns/p");
        assert_eq!(r["interfaces"][1]["mtu"], 1500);
        assert_eq!(r["ips"][0]["address"], "10.244.1.5/32");
        assert_eq!(r["ips"][0]["interface"], 1);
        assert!(r["ips"][0].get("version").is_none(), "1.x has no ips[].version");

        let chained = r#"{"cniVersion":"0.4.0","name":"weir","type":"weir-cni",
            "prevResult":{"cniVersion":"0.4.0","interfaces":[{"name":"x"}],"ips":[],"dns":{"nameservers":["10.96.0.10"]}}}"#;
        let conf = parse_conf(chained.as_bytes()).expect("conf");
        let r = add_result(&conf, &endpoint());
        assert_eq!(r["interfaces"].as_array().map(Vec::len), Some(3));
        assert_eq!(r["ips"][0]["interface"], 2, "index shifted past prevResult's interfaces");
        assert_eq!(r["ips"][0]["version"], "4");
        assert_eq!(r["dns"]["nameservers"][0], "10.96.0.10");
    }
}
