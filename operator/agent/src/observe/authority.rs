//! gRPC clients other than Go's, on the observer's unix socket: gRPC's C core (Python's grpcio,
//! C++, Ruby, …) sends the socket's path, percent-encoded, as the request's `:authority`
//! (`run%2Fweir%2Fobserver.sock`), which the HTTP/2 server (h2) refuses as malformed and
//! answers by resetting the stream. A unix socket has no authority to check, so each accepted
//! connection is passed through [`mend`]: the client's header blocks are decoded and encoded
//! again with an `:authority` that is not a valid URI authority replaced by `localhost`;
//! every other frame, and everything the server sends, passes unchanged.
//!
//! The client's HPACK state is followed with its own decoder (weir's, `hpack`), and what the
//! server sees is encoded with one encoder (`loona-hpack`'s) per connection, so both tables stay in step. A block that does not
//! decode, or that is larger than [`BLOCK_MAX`], closes the connection (the server would have
//! refused it too).
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _, DuplexStream};

use super::h2::{frame, headers_fragment, parse_head, CONTINUATION, END_HEADERS, END_STREAM, HEADERS};

/// A header block gathered at most.
pub const BLOCK_MAX: usize = 256 * 1024;
/// A frame read at most (the server's SETTINGS_MAX_FRAME_SIZE is the protocol's default, 16 KiB;
/// a larger one is a protocol error the server would answer anyway).
const FRAME_MAX: usize = 1 << 20;
/// Payload of one re-encoded HEADERS or CONTINUATION frame at most (the default frame size).
const OUT_FRAME: usize = 16384;

/// Whether `value` is an authority h2 accepts (`host`, `host:port`, `[v6]:port`, userinfo).
fn valid_authority(value: &[u8]) -> bool {
    !value.is_empty() && http::uri::Authority::try_from(value).is_ok()
}

/// The connection as the server should see it: the end to serve, with the client's header
/// blocks mended by a task that lives as long as the connection.
pub fn mend<S>(client: S) -> DuplexStream
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + 'static,
{
    let (server_end, ours) = tokio::io::duplex(64 * 1024);
    tokio::spawn(async move {
        let (mut client_rd, mut client_wr) = tokio::io::split(client);
        let (mut ours_rd, mut ours_wr) = tokio::io::split(ours);
        let to_client = async move {
            let _ = tokio::io::copy(&mut ours_rd, &mut client_wr).await;
            let _ = client_wr.shutdown().await;
        };
        let to_server = async move {
            let _ = forward(&mut client_rd, &mut ours_wr).await;
            let _ = ours_wr.shutdown().await;
        };
        tokio::join!(to_client, to_server);
    });
    server_end
}

/// Copies the client's bytes to the server, header blocks mended.
async fn forward<R, W>(from: &mut R, to: &mut W) -> std::io::Result<()>
where
    R: tokio::io::AsyncRead + Unpin,
    W: tokio::io::AsyncWrite + Unpin,
{
    let mut preface = [0u8; 24];
    from.read_exact(&mut preface).await?;
    to.write_all(&preface).await?;
    // The table size the server (h2) advertises: the protocol's default.
    let mut decoder = super::hpack::Decoder::new(super::h2::TABLE_MAX);
    let mut encoder = loona_hpack::Encoder::new();
    // A block being gathered: its stream, whether its HEADERS ended the stream, the fragments.
    let mut block: Option<(u32, bool, Vec<u8>)> = None;
    loop {
        let mut head = [0u8; 9];
        match from.read_exact(&mut head).await {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(e),
        }
        let (len, kind, flags, stream) = parse_head(&head);
        if len > FRAME_MAX {
            return Err(invalid("frame too large"));
        }
        let mut payload = vec![0u8; len];
        from.read_exact(&mut payload).await?;
        let fragment = match kind {
            HEADERS => {
                block = Some((stream, flags & END_STREAM != 0, Vec::new()));
                headers_fragment(flags, &payload).ok_or_else(|| invalid("HEADERS frame padding"))?.to_vec()
            }
            CONTINUATION if block.as_ref().is_some_and(|b| b.0 == stream) => payload,
            _ => {
                to.write_all(&head).await?;
                to.write_all(&payload).await?;
                continue;
            }
        };
        let Some((_, _, gathered)) = block.as_mut() else { return Err(invalid("CONTINUATION")) };
        gathered.extend_from_slice(&fragment);
        if gathered.len() > BLOCK_MAX {
            return Err(invalid("header block too large"));
        }
        if flags & END_HEADERS == 0 {
            continue;
        }
        let Some((stream, end_stream, gathered)) = block.take() else { continue };
        let mut fields: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
        decoder.decode(&gathered, |n, v| fields.push((n.to_vec(), v.to_vec()))).map_err(|_| invalid("header block"))?;
        for (n, v) in &mut fields {
            if n.as_slice() == b":authority" && !valid_authority(v) {
                *v = b"localhost".to_vec();
            }
        }
        let encoded = encoder.encode(fields.iter().map(|(n, v)| (n.as_slice(), v.as_slice())));
        let chunks: Vec<&[u8]> = if encoded.is_empty() { vec![&[][..]] } else { encoded.chunks(OUT_FRAME).collect() };
        for (i, chunk) in chunks.iter().enumerate() {
            let last = i + 1 == chunks.len();
            let (kind, mut flags) = if i == 0 { (HEADERS, 0) } else { (CONTINUATION, 0) };
            if i == 0 && end_stream {
                flags |= END_STREAM;
            }
            if last {
                flags |= END_HEADERS;
            }
            to.write_all(&frame(kind, flags, stream, chunk)).await?;
        }
    }
}

fn invalid(what: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, format!("HTTP/2 from the client: {what}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observe::h2::{PADDED, PRIORITY};

    /// The headers of every header block in `bytes` (after the preface), decoded in order.
    fn blocks(bytes: &[u8]) -> Vec<Vec<(String, String)>> {
        let mut d = loona_hpack::Decoder::new();
        let mut at = 24;
        let mut out = Vec::new();
        while at + 9 <= bytes.len() {
            let len = usize::from(bytes[at]) << 16 | usize::from(bytes[at + 1]) << 8 | usize::from(bytes[at + 2]);
            let payload = &bytes[at + 9..at + 9 + len];
            if bytes[at + 3] == HEADERS {
                let mut fields = Vec::new();
                d.decode_with_cb(payload, |n, v| {
                    fields.push((String::from_utf8_lossy(&n).into_owned(), String::from_utf8_lossy(&v).into_owned()))
                })
                .expect("decodes");
                out.push(fields);
            }
            at += 9 + len;
        }
        out
    }

    #[tokio::test]
    async fn a_socket_path_authority_becomes_localhost_and_the_rest_is_kept() {
        let mut client = loona_hpack::Encoder::new();
        let first: Vec<(&[u8], &[u8])> = vec![
            (b":method", b"POST"),
            (b":path", b"/observer.Observer/ServerStatus"),
            (b":authority", b"run%2Fweir%2Fobserver.sock"),
            (b"content-type", b"application/grpc"),
        ];
        let mut input = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        input.extend(frame(4, 0, 0, &[]));
        // Padded, with a priority, and split over a CONTINUATION.
        let block = client.encode(first.clone());
        let (a, b) = block.split_at(5);
        let mut padded = vec![3u8, 0, 0, 0, 0, 16];
        padded.extend_from_slice(a);
        padded.extend_from_slice(&[0, 0, 0]);
        input.extend(frame(HEADERS, PADDED | PRIORITY, 1, &padded));
        input.extend(frame(CONTINUATION, END_HEADERS, 1, b));
        input.extend(frame(0, END_STREAM, 1, &[0, 0, 0, 0, 0]));
        // The second request refers to the client's table: it must still decode right.
        input.extend(frame(HEADERS, END_HEADERS | END_STREAM, 3, &client.encode(first.clone())));
        let mut reader = &input[..];
        let mut out = Vec::new();
        forward(&mut reader, &mut out).await.expect("forwarded");
        let got = blocks(&out);
        assert_eq!(got.len(), 2, "{got:?}");
        for fields in &got {
            let authority = fields.iter().find(|(n, _)| n == ":authority").map(|(_, v)| v.as_str());
            assert_eq!(authority, Some("localhost"));
            assert!(fields.iter().any(|(n, v)| n == ":path" && v == "/observer.Observer/ServerStatus"));
        }
        // A valid authority is kept; the DATA frame passed unchanged.
        assert!(out.windows(14).any(|w| w == frame(0, END_STREAM, 1, &[0, 0, 0, 0, 0]).as_slice()));
        assert!(valid_authority(b"weir-observer.invalid") && valid_authority(b"localhost:4245"));
        assert!(!valid_authority(b"run%2Fweir%2Fobserver.sock") && !valid_authority(b"/run/x.sock"));
    }
}
