//! Field masks on `GetFlows` (Hubble's `field_mask`, field 10): a client names the Flow fields it
//! wants (`"source.pod_name"`, `"l7"`, …) and gets only those. The `hubble` CLI sends one by
//! default for its text outputs, so the whole flow crosses the wire only when asked for.
//!
//! Paths are checked against Hubble's own Flow as of the release weir targets
//! ([`super::hubble_api`]): a path naming a field Hubble has is accepted whether or not weir
//! fills it (one weir never sends simply selects nothing); any other path is refused by name. The
//! mask is applied to the encoded flow: the field numbers of the selected paths are kept, the rest
//! cut out, and the result read back (weir's numbers are Hubble's; a test checks them).
use std::collections::BTreeMap;

use prost::Message as _;

use super::{grpc::proto::flow as pb, hubble_api::MESSAGES};

/// The selected field numbers of one message: a field kept whole (`None`) or only the selected
/// fields of its message (`Some`).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct FieldMask(BTreeMap<u32, Option<FieldMask>>);

fn field(message: &str, name: &str) -> Option<(u32, &'static str)> {
    let (_, fields) = MESSAGES.iter().find(|(m, _)| *m == message)?;
    let (_, number, ty) = fields.iter().find(|(n, _, _)| *n == name)?;
    Some((*number, ty.trim_start_matches("repeated ")))
}

impl FieldMask {
    /// The mask of a request's paths; `None` when there are none (every field).
    pub fn compile(paths: &[String]) -> Result<Option<Self>, String> {
        if paths.is_empty() {
            return Ok(None);
        }
        let mut mask = FieldMask::default();
        for path in paths {
            let parts: Vec<&str> = path.split('.').collect();
            let (mut at, mut message) = (&mut mask, "flow.Flow");
            for (i, part) in parts.iter().enumerate() {
                let (number, ty) = field(message, part)
                    .ok_or_else(|| format!("field_mask path {path:?}: {message} has no field {part:?}"))?;
                let last = i + 1 == parts.len();
                if !last && !MESSAGES.iter().any(|(m, _)| *m == ty) {
                    return Err(format!("field_mask path {path:?}: {part:?} is not a message"));
                }
                let entry = at.0.entry(number).or_insert_with(|| Some(FieldMask::default()));
                if last {
                    // The whole field, whatever narrower paths also named it.
                    *entry = None;
                    break;
                }
                match entry {
                    // Already kept whole.
                    None => break,
                    Some(inner) => at = inner,
                }
                message = ty;
            }
        }
        Ok(Some(mask))
    }

    /// The flow with only the masked fields.
    pub fn apply(&self, flow: &pb::Flow) -> pb::Flow {
        let wire = flow.encode_to_vec();
        let mut out = Vec::with_capacity(wire.len());
        self.keep(&wire, &mut out);
        // Cut from a valid encoding along field boundaries: always decodes.
        pb::Flow::decode(&out[..]).unwrap_or_default()
    }

    /// Copies the selected fields of one encoded message.
    fn keep(&self, mut wire: &[u8], out: &mut Vec<u8>) {
        use prost::encoding::{decode_varint, encode_varint};
        while !wire.is_empty() {
            let field_start = wire;
            let Ok(key) = decode_varint(&mut wire) else { return };
            let key_len = field_start.len() - wire.len();
            let (number, kind) = ((key >> 3) as u32, key & 7);
            let mut rest = wire;
            let mut content = None;
            match kind {
                0 => {
                    if decode_varint(&mut rest).is_err() {
                        return;
                    }
                }
                1 | 5 => {
                    let n = if kind == 1 { 8 } else { 4 };
                    let Some(r) = rest.get(n..) else { return };
                    rest = r;
                }
                2 => {
                    let Ok(n) = decode_varint(&mut rest) else { return };
                    let n = usize::try_from(n).unwrap_or(usize::MAX);
                    let (Some(c), Some(r)) = (rest.get(..n), rest.get(n..)) else { return };
                    content = Some(c);
                    rest = r;
                }
                _ => return,
            }
            let whole = &field_start[..field_start.len() - rest.len()];
            wire = rest;
            match (self.0.get(&number), content) {
                (None, _) => {}
                (Some(Some(inner)), Some(c)) => {
                    let mut sub = Vec::new();
                    inner.keep(c, &mut sub);
                    out.extend_from_slice(&field_start[..key_len]);
                    encode_varint(sub.len() as u64, out);
                    out.extend_from_slice(&sub);
                }
                (Some(_), _) => out.extend_from_slice(whole),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flow() -> pb::Flow {
        pb::Flow {
            verdict: 1,
            node_name: "n1".into(),
            source: Some(pb::Endpoint {
                identity: 7,
                namespace: "shop".into(),
                pod_name: "cart-1".into(),
                labels: vec!["app=cart".into()],
                ..Default::default()
            }),
            destination: Some(pb::Endpoint { pod_name: "db-0".into(), ..Default::default() }),
            l4: Some(pb::Layer4 {
                protocol: Some(pb::layer4::Protocol::Tcp(pb::Tcp {
                    source_port: 4000,
                    destination_port: 80,
                    flags: None,
                })),
            }),
            summary: "TCP Flags: SYN".into(),
            ..Default::default()
        }
    }

    #[test]
    fn only_the_masked_fields_are_sent() {
        let paths = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let m = FieldMask::compile(&paths(&["verdict", "source.pod_name", "source.namespace", "l4"]))
            .expect("valid")
            .expect("a mask");
        let got = m.apply(&flow());
        let want = pb::Flow {
            verdict: 1,
            source: Some(pb::Endpoint { namespace: "shop".into(), pod_name: "cart-1".into(), ..Default::default() }),
            l4: flow().l4,
            ..Default::default()
        };
        assert_eq!(got, want);
        // A whole message and a path inside it: the whole message.
        let m = FieldMask::compile(&paths(&["source.pod_name", "source"])).unwrap().unwrap();
        assert_eq!(m.apply(&flow()).source, flow().source);
        let m = FieldMask::compile(&paths(&["source", "source.pod_name"])).unwrap().unwrap();
        assert_eq!(m.apply(&flow()).source, flow().source);
    }

    #[test]
    fn the_hubble_cli_default_mask_is_accepted() {
        // hubble observe's default for its text outputs (v1.19): fields weir never fills
        // (ethernet, ip_trace_id) select nothing.
        let default: Vec<String> = [
            "time",
            "verdict",
            "ethernet",
            "IP",
            "l4",
            "source.identity",
            "source.namespace",
            "source.pod_name",
            "destination.identity",
            "destination.namespace",
            "destination.pod_name",
            "Type",
            "node_name",
            "l7",
            "event_type",
            "source_service",
            "destination_service",
            "is_reply",
            "Summary",
            "ip_trace_id",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let m = FieldMask::compile(&default).expect("valid").expect("a mask");
        let got = m.apply(&flow());
        assert_eq!(got.source.as_ref().map(|e| (e.identity, e.labels.len())), Some((7, 0)));
        assert_eq!((got.node_name.as_str(), got.summary.as_str()), ("n1", "TCP Flags: SYN"));
    }

    #[test]
    fn paths_hubble_does_not_have_are_refused_by_name() {
        assert_eq!(FieldMask::compile(&[]), Ok(None));
        for (bad, says) in [
            ("source.pod", "flow.Endpoint has no field \"pod\""),
            ("sources", "flow.Flow has no field \"sources\""),
            ("verdict.code", "\"verdict\" is not a message"),
            ("", "flow.Flow has no field \"\""),
        ] {
            let e = FieldMask::compile(&[bad.to_string()]).expect_err(bad);
            assert!(e.contains(says) && e.contains(&format!("{bad:?}")), "{bad}: {e}");
        }
    }
}
