//! HPACK (RFC 7541) header-block decoding, for the HTTP/2 reader and the observer socket's
//! authority mender: the static and dynamic tables, prefixed integers, string literals and
//! their Huffman code.
//!
//! Our own because the library decoder weir used before built its Huffman decoding table (a
//! hash map of the 257 codes) anew for every Huffman-coded string: some 20 µs a string, most of
//! the agent's time on real HTTP/2 traffic (servers Huffman-code their header values), enough
//! to fall behind the ring buffer and lose whole connections. Here the code's decoding table is
//! built once per process, and a string is decoded four bits at a time through it.
//!
//! Bounds, with a hostile peer in mind: integers beyond 2^28 are refused, a string or index
//! past the block is refused, the dynamic table never exceeds the size the decoder allows
//! (a size update beyond it is refused), and the EOS symbol or bad padding in a Huffman string
//! is refused, as RFC 7541 §5.2 requires.
use std::{borrow::Cow, collections::VecDeque, sync::OnceLock};

/// Why a block did not decode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Error {
    /// The block ended inside a representation.
    Truncated,
    /// An index of no table entry (0, or past the dynamic table).
    Index,
    /// An integer beyond 2^28.
    Integer,
    /// A Huffman string with the EOS symbol, or padding that is not the EOS code's prefix.
    Huffman,
    /// A table size update beyond what the decoder allows, or after the block's first field.
    SizeUpdate,
}

/// A dynamic table entry: name and value.
type Entry = (Box<[u8]>, Box<[u8]>);

/// A literal field as read: name, value (borrowed from the block or the table unless
/// Huffman-coded) and the octets it took.
type Literal<'a> = (Cow<'a, [u8]>, Cow<'a, [u8]>, usize);

/// One direction's decoding state (its dynamic table).
pub struct Decoder {
    /// Newest first: index 62 is the front.
    table: VecDeque<Entry>,
    /// Octets the table holds, counted as RFC 7541 §4.1 counts them.
    size: usize,
    /// The table's maximum size now (the encoder's last size update, else `allowed`).
    max_size: usize,
    /// The largest size an encoder may set (the SETTINGS_HEADER_TABLE_SIZE this side has).
    allowed: usize,
}

/// An entry's size in the table: its octets and 32 (RFC 7541 §4.1).
fn entry_size(name: &[u8], value: &[u8]) -> usize {
    name.len() + value.len() + 32
}

impl Decoder {
    /// A decoder whose table holds at most `allowed` octets.
    pub fn new(allowed: usize) -> Self {
        Self { table: VecDeque::new(), size: 0, max_size: allowed, allowed }
    }

    /// Decodes `block`, handing each field to `f` in order. On an error the table may hold
    /// part of the block: the caller stops decoding this direction.
    pub fn decode(&mut self, block: &[u8], mut f: impl FnMut(&[u8], &[u8])) -> Result<(), Error> {
        let mut at = 0;
        let mut fields = false;
        while at < block.len() {
            let rest = &block[at..];
            let first = rest[0];
            if first & 0x80 != 0 {
                // Indexed field (§6.1).
                let (index, n) = integer(rest, 7)?;
                let (name, value) = self.entry(index)?;
                f(name, value);
                at += n;
                fields = true;
            } else if first & 0x40 != 0 {
                // Literal with incremental indexing (§6.2.1).
                let (name, value, n) = self.literal(rest, 6)?;
                f(&name, &value);
                let entry = (Box::from(name.as_ref()), Box::from(value.as_ref()));
                self.insert(entry);
                at += n;
                fields = true;
            } else if first & 0x20 != 0 {
                // Dynamic table size update (§6.3): only before the block's first field.
                let (size, n) = integer(rest, 5)?;
                if fields || size > self.allowed {
                    return Err(Error::SizeUpdate);
                }
                self.max_size = size;
                self.evict(0);
                at += n;
            } else {
                // Literal without indexing or never indexed (§6.2.2, §6.2.3).
                let (name, value, n) = self.literal(rest, 4)?;
                f(&name, &value);
                at += n;
                fields = true;
            }
        }
        Ok(())
    }

    /// Entry `index`: 1..=61 static, then the dynamic table newest first.
    fn entry(&self, index: usize) -> Result<(&[u8], &[u8]), Error> {
        match index {
            0 => Err(Error::Index),
            1..=61 => Ok(STATIC[index - 1]),
            _ => self.table.get(index - 62).map(|(n, v)| (&n[..], &v[..])).ok_or(Error::Index),
        }
    }

    /// A literal field whose name index has a `prefix`-bit prefix: name, value, octets read.
    fn literal<'a>(&'a self, b: &'a [u8], prefix: u8) -> Result<Literal<'a>, Error> {
        let (index, mut at) = integer(b, prefix)?;
        let name = if index == 0 {
            let (s, n) = string(&b[at..])?;
            at += n;
            s
        } else {
            Cow::Borrowed(self.entry(index)?.0)
        };
        let (value, n) = string(&b[at..])?;
        Ok((name, value, at + n))
    }

    fn insert(&mut self, (name, value): Entry) {
        let size = entry_size(&name, &value);
        if size > self.max_size {
            // Larger than the whole table: the table is emptied, nothing added (§4.4).
            self.table.clear();
            self.size = 0;
            return;
        }
        self.evict(size);
        self.size += size;
        self.table.push_front((name, value));
    }

    /// Drops the oldest entries until `room` more octets fit.
    fn evict(&mut self, room: usize) {
        while self.size + room > self.max_size {
            let Some((n, v)) = self.table.pop_back() else { break };
            self.size -= entry_size(&n, &v);
        }
    }

    /// Octets the dynamic table holds.
    pub fn table_size(&self) -> usize {
        self.size
    }
}

/// A prefixed integer (§5.1) whose prefix is the low `prefix` bits of `b[0]`: its value and the
/// octets it took.
fn integer(b: &[u8], prefix: u8) -> Result<(usize, usize), Error> {
    let mask = ((1u16 << prefix) - 1) as u8;
    let first = b.first().ok_or(Error::Truncated)? & mask;
    if first < mask {
        return Ok((usize::from(first), 1));
    }
    let mut value = usize::from(mask);
    for (i, &c) in b[1..].iter().enumerate() {
        let shift = 7 * i;
        if shift > 21 {
            return Err(Error::Integer);
        }
        value += usize::from(c & 0x7f) << shift;
        if c & 0x80 == 0 {
            return Ok((value, i + 2));
        }
    }
    Err(Error::Truncated)
}

/// A string literal (§5.2): its octets (decoded when Huffman-coded) and the octets it took.
fn string(b: &[u8]) -> Result<(Cow<'_, [u8]>, usize), Error> {
    let huffman = b.first().ok_or(Error::Truncated)? & 0x80 != 0;
    let (len, n) = integer(b, 7)?;
    let raw = b.get(n..n + len).ok_or(Error::Truncated)?;
    let s = if huffman { Cow::Owned(huffman_decode(raw)?) } else { Cow::Borrowed(raw) };
    Ok((s, n + len))
}

/// The Huffman code as a binary tree: node `i`'s children for bit 0 and 1, each another
/// node's index or, negative, a symbol (`-(symbol + 1)`); 0 is the root. Built once.
fn tree() -> &'static [[i16; 2]] {
    static TREE: OnceLock<Vec<[i16; 2]>> = OnceLock::new();
    TREE.get_or_init(|| {
        let mut nodes = vec![[0i16; 2]];
        for (symbol, &(code, len)) in CODES.iter().enumerate() {
            let mut node = 0usize;
            for k in (0..len).rev() {
                let bit = ((code >> k) & 1) as usize;
                if k == 0 {
                    nodes[node][bit] = -(symbol as i16 + 1);
                } else {
                    if nodes[node][bit] == 0 {
                        nodes.push([0; 2]);
                        nodes[node][bit] = (nodes.len() - 1) as i16;
                    }
                    node = nodes[node][bit] as usize;
                }
            }
        }
        nodes
    })
}

/// What four more bits do from one node of the code tree: the node they lead to, and the
/// symbol they complete, if any (the shortest code is 5 bits, so at most one).
#[derive(Clone, Copy, Default)]
struct Step {
    next: u8,
    /// `EMIT`, `FAIL`.
    flags: u8,
    symbol: u8,
}
const EMIT: u8 = 1;
/// The bits complete the EOS symbol, which a string may not hold.
const FAIL: u8 = 2;

/// The Huffman decoding table: per tree node (256, the root 0), one `Step` for each value of
/// the next four bits; and which nodes a string may end at (the root, or at most 7 bits of
/// ones past a symbol: padding, §5.2). Built once from `tree()`.
struct Table {
    steps: Vec<[Step; 16]>,
    accepting: Vec<bool>,
}

fn table() -> &'static Table {
    static TABLE: OnceLock<Table> = OnceLock::new();
    TABLE.get_or_init(|| {
        let tree = tree();
        // 257 symbols in a complete code: 256 inner nodes, each numbered below 256.
        assert!(tree.len() <= 256, "HPACK code tree of {} nodes", tree.len());
        let steps = (0..tree.len())
            .map(|start| {
                let mut row = [Step::default(); 16];
                for (nibble, step) in row.iter_mut().enumerate() {
                    let mut node = start;
                    for k in (0..4).rev() {
                        let next = tree[node][(nibble >> k) & 1];
                        if next >= 0 {
                            node = next as usize;
                        } else if next == -257 {
                            step.flags |= FAIL;
                            node = 0;
                        } else {
                            step.flags |= EMIT;
                            step.symbol = (-next - 1) as u8;
                            node = 0;
                        }
                    }
                    step.next = node as u8;
                }
                row
            })
            .collect();
        let mut accepting = vec![false; tree.len()];
        let mut node = 0usize;
        accepting[0] = true;
        for _ in 0..7 {
            // Every all-ones path shorter than EOS's 30 bits is inside the tree.
            node = tree[node][1] as usize;
            accepting[node] = true;
        }
        Table { steps, accepting }
    })
}

/// Huffman-codes `s` (§5.2): the codes in order, padded with ones to an octet. For tests and
/// benchmarks (weir only decodes).
pub fn huffman_encode(s: &[u8]) -> Vec<u8> {
    let (mut acc, mut bits, mut out) = (0u64, 0u32, Vec::new());
    for &b in s {
        let (code, len) = CODES[usize::from(b)];
        acc = (acc << len) | u64::from(code);
        bits += u32::from(len);
        while bits >= 8 {
            out.push((acc >> (bits - 8)) as u8);
            bits -= 8;
        }
    }
    if bits > 0 {
        out.push(((acc << (8 - bits)) | ((1 << (8 - bits)) - 1)) as u8);
    }
    out
}

/// Decodes a Huffman-coded string (§5.2): no EOS symbol, and padding of at most 7 bits, all
/// ones. Four bits per table lookup.
pub fn huffman_decode(raw: &[u8]) -> Result<Vec<u8>, Error> {
    let table = table();
    let mut out = Vec::with_capacity(raw.len() * 8 / 5);
    let mut node = 0usize;
    for &byte in raw {
        for nibble in [byte >> 4, byte & 0x0f] {
            let step = table.steps[node][usize::from(nibble)];
            if step.flags & FAIL != 0 {
                return Err(Error::Huffman);
            }
            if step.flags & EMIT != 0 {
                out.push(step.symbol);
            }
            node = usize::from(step.next);
        }
    }
    if !table.accepting[node] {
        return Err(Error::Huffman);
    }
    Ok(out)
}

/// RFC 7541 Appendix A: the static table, entries 1..=61.
const STATIC: [(&[u8], &[u8]); 61] = [
    (b":authority", b""),
    (b":method", b"GET"),
    (b":method", b"POST"),
    (b":path", b"/"),
    (b":path", b"/index.html"),
    (b":scheme", b"http"),
    (b":scheme", b"https"),
    (b":status", b"200"),
    (b":status", b"204"),
    (b":status", b"206"),
    (b":status", b"304"),
    (b":status", b"400"),
    (b":status", b"404"),
    (b":status", b"500"),
    (b"accept-charset", b""),
    (b"accept-encoding", b"gzip, deflate"),
    (b"accept-language", b""),
    (b"accept-ranges", b""),
    (b"accept", b""),
    (b"access-control-allow-origin", b""),
    (b"age", b""),
    (b"allow", b""),
    (b"authorization", b""),
    (b"cache-control", b""),
    (b"content-disposition", b""),
    (b"content-encoding", b""),
    (b"content-language", b""),
    (b"content-length", b""),
    (b"content-location", b""),
    (b"content-range", b""),
    (b"content-type", b""),
    (b"cookie", b""),
    (b"date", b""),
    (b"etag", b""),
    (b"expect", b""),
    (b"expires", b""),
    (b"from", b""),
    (b"host", b""),
    (b"if-match", b""),
    (b"if-modified-since", b""),
    (b"if-none-match", b""),
    (b"if-range", b""),
    (b"if-unmodified-since", b""),
    (b"last-modified", b""),
    (b"link", b""),
    (b"location", b""),
    (b"max-forwards", b""),
    (b"proxy-authenticate", b""),
    (b"proxy-authorization", b""),
    (b"range", b""),
    (b"referer", b""),
    (b"refresh", b""),
    (b"retry-after", b""),
    (b"server", b""),
    (b"set-cookie", b""),
    (b"strict-transport-security", b""),
    (b"transfer-encoding", b""),
    (b"user-agent", b""),
    (b"vary", b""),
    (b"via", b""),
    (b"www-authenticate", b""),
];

/// RFC 7541 Appendix B: the Huffman code of each symbol (0..=255, and 256: EOS) as (code, bit
/// length).
const CODES: [(u32, u8); 257] = [
    (0x1ff8, 13),
    (0x7fffd8, 23),
    (0xfffffe2, 28),
    (0xfffffe3, 28),
    (0xfffffe4, 28),
    (0xfffffe5, 28),
    (0xfffffe6, 28),
    (0xfffffe7, 28),
    (0xfffffe8, 28),
    (0xffffea, 24),
    (0x3ffffffc, 30),
    (0xfffffe9, 28),
    (0xfffffea, 28),
    (0x3ffffffd, 30),
    (0xfffffeb, 28),
    (0xfffffec, 28),
    (0xfffffed, 28),
    (0xfffffee, 28),
    (0xfffffef, 28),
    (0xffffff0, 28),
    (0xffffff1, 28),
    (0xffffff2, 28),
    (0x3ffffffe, 30),
    (0xffffff3, 28),
    (0xffffff4, 28),
    (0xffffff5, 28),
    (0xffffff6, 28),
    (0xffffff7, 28),
    (0xffffff8, 28),
    (0xffffff9, 28),
    (0xffffffa, 28),
    (0xffffffb, 28),
    (0x14, 6),
    (0x3f8, 10),
    (0x3f9, 10),
    (0xffa, 12),
    (0x1ff9, 13),
    (0x15, 6),
    (0xf8, 8),
    (0x7fa, 11),
    (0x3fa, 10),
    (0x3fb, 10),
    (0xf9, 8),
    (0x7fb, 11),
    (0xfa, 8),
    (0x16, 6),
    (0x17, 6),
    (0x18, 6),
    (0x0, 5),
    (0x1, 5),
    (0x2, 5),
    (0x19, 6),
    (0x1a, 6),
    (0x1b, 6),
    (0x1c, 6),
    (0x1d, 6),
    (0x1e, 6),
    (0x1f, 6),
    (0x5c, 7),
    (0xfb, 8),
    (0x7ffc, 15),
    (0x20, 6),
    (0xffb, 12),
    (0x3fc, 10),
    (0x1ffa, 13),
    (0x21, 6),
    (0x5d, 7),
    (0x5e, 7),
    (0x5f, 7),
    (0x60, 7),
    (0x61, 7),
    (0x62, 7),
    (0x63, 7),
    (0x64, 7),
    (0x65, 7),
    (0x66, 7),
    (0x67, 7),
    (0x68, 7),
    (0x69, 7),
    (0x6a, 7),
    (0x6b, 7),
    (0x6c, 7),
    (0x6d, 7),
    (0x6e, 7),
    (0x6f, 7),
    (0x70, 7),
    (0x71, 7),
    (0x72, 7),
    (0xfc, 8),
    (0x73, 7),
    (0xfd, 8),
    (0x1ffb, 13),
    (0x7fff0, 19),
    (0x1ffc, 13),
    (0x3ffc, 14),
    (0x22, 6),
    (0x7ffd, 15),
    (0x3, 5),
    (0x23, 6),
    (0x4, 5),
    (0x24, 6),
    (0x5, 5),
    (0x25, 6),
    (0x26, 6),
    (0x27, 6),
    (0x6, 5),
    (0x74, 7),
    (0x75, 7),
    (0x28, 6),
    (0x29, 6),
    (0x2a, 6),
    (0x7, 5),
    (0x2b, 6),
    (0x76, 7),
    (0x2c, 6),
    (0x8, 5),
    (0x9, 5),
    (0x2d, 6),
    (0x77, 7),
    (0x78, 7),
    (0x79, 7),
    (0x7a, 7),
    (0x7b, 7),
    (0x7ffe, 15),
    (0x7fc, 11),
    (0x3ffd, 14),
    (0x1ffd, 13),
    (0xffffffc, 28),
    (0xfffe6, 20),
    (0x3fffd2, 22),
    (0xfffe7, 20),
    (0xfffe8, 20),
    (0x3fffd3, 22),
    (0x3fffd4, 22),
    (0x3fffd5, 22),
    (0x7fffd9, 23),
    (0x3fffd6, 22),
    (0x7fffda, 23),
    (0x7fffdb, 23),
    (0x7fffdc, 23),
    (0x7fffdd, 23),
    (0x7fffde, 23),
    (0xffffeb, 24),
    (0x7fffdf, 23),
    (0xffffec, 24),
    (0xffffed, 24),
    (0x3fffd7, 22),
    (0x7fffe0, 23),
    (0xffffee, 24),
    (0x7fffe1, 23),
    (0x7fffe2, 23),
    (0x7fffe3, 23),
    (0x7fffe4, 23),
    (0x1fffdc, 21),
    (0x3fffd8, 22),
    (0x7fffe5, 23),
    (0x3fffd9, 22),
    (0x7fffe6, 23),
    (0x7fffe7, 23),
    (0xffffef, 24),
    (0x3fffda, 22),
    (0x1fffdd, 21),
    (0xfffe9, 20),
    (0x3fffdb, 22),
    (0x3fffdc, 22),
    (0x7fffe8, 23),
    (0x7fffe9, 23),
    (0x1fffde, 21),
    (0x7fffea, 23),
    (0x3fffdd, 22),
    (0x3fffde, 22),
    (0xfffff0, 24),
    (0x1fffdf, 21),
    (0x3fffdf, 22),
    (0x7fffeb, 23),
    (0x7fffec, 23),
    (0x1fffe0, 21),
    (0x1fffe1, 21),
    (0x3fffe0, 22),
    (0x1fffe2, 21),
    (0x7fffed, 23),
    (0x3fffe1, 22),
    (0x7fffee, 23),
    (0x7fffef, 23),
    (0xfffea, 20),
    (0x3fffe2, 22),
    (0x3fffe3, 22),
    (0x3fffe4, 22),
    (0x7ffff0, 23),
    (0x3fffe5, 22),
    (0x3fffe6, 22),
    (0x7ffff1, 23),
    (0x3ffffe0, 26),
    (0x3ffffe1, 26),
    (0xfffeb, 20),
    (0x7fff1, 19),
    (0x3fffe7, 22),
    (0x7ffff2, 23),
    (0x3fffe8, 22),
    (0x1ffffec, 25),
    (0x3ffffe2, 26),
    (0x3ffffe3, 26),
    (0x3ffffe4, 26),
    (0x7ffffde, 27),
    (0x7ffffdf, 27),
    (0x3ffffe5, 26),
    (0xfffff1, 24),
    (0x1ffffed, 25),
    (0x7fff2, 19),
    (0x1fffe3, 21),
    (0x3ffffe6, 26),
    (0x7ffffe0, 27),
    (0x7ffffe1, 27),
    (0x3ffffe7, 26),
    (0x7ffffe2, 27),
    (0xfffff2, 24),
    (0x1fffe4, 21),
    (0x1fffe5, 21),
    (0x3ffffe8, 26),
    (0x3ffffe9, 26),
    (0xffffffd, 28),
    (0x7ffffe3, 27),
    (0x7ffffe4, 27),
    (0x7ffffe5, 27),
    (0xfffec, 20),
    (0xfffff3, 24),
    (0xfffed, 20),
    (0x1fffe6, 21),
    (0x3fffe9, 22),
    (0x1fffe7, 21),
    (0x1fffe8, 21),
    (0x7ffff3, 23),
    (0x3fffea, 22),
    (0x3fffeb, 22),
    (0x1ffffee, 25),
    (0x1ffffef, 25),
    (0xfffff4, 24),
    (0xfffff5, 24),
    (0x3ffffea, 26),
    (0x7ffff4, 23),
    (0x3ffffeb, 26),
    (0x7ffffe6, 27),
    (0x3ffffec, 26),
    (0x3ffffed, 26),
    (0x7ffffe7, 27),
    (0x7ffffe8, 27),
    (0x7ffffe9, 27),
    (0x7ffffea, 27),
    (0x7ffffeb, 27),
    (0xffffffe, 28),
    (0x7ffffec, 27),
    (0x7ffffed, 27),
    (0x7ffffee, 27),
    (0x7ffffef, 27),
    (0x7fffff0, 27),
    (0x3ffffee, 26),
    (0x3fffffff, 30),
];

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(d: &mut Decoder, block: &[u8]) -> Result<Vec<(String, String)>, Error> {
        let mut out = Vec::new();
        d.decode(block, |n, v| out.push((String::from_utf8_lossy(n).into(), String::from_utf8_lossy(v).into())))?;
        Ok(out)
    }

    fn pairs(p: &[(&str, &str)]) -> Vec<(String, String)> {
        p.iter().map(|(n, v)| ((*n).to_owned(), (*v).to_owned())).collect()
    }

    #[test]
    fn every_symbol_round_trips_through_the_huffman_code() {
        let all: Vec<u8> = (0..=255).collect();
        assert_eq!(huffman_decode(&huffman_encode(&all)), Ok(all));
        // RFC 7541 C.4.1: "www.example.com".
        let www = [0xf1, 0xe3, 0xc2, 0xe5, 0xf2, 0x3a, 0x6b, 0xa0, 0xab, 0x90, 0xf4, 0xff];
        assert_eq!(huffman_encode(b"www.example.com"), www);
        assert_eq!(huffman_decode(&www).as_deref(), Ok(&b"www.example.com"[..]));
        // Padding of zeros, padding of a whole octet, and the EOS symbol are refused.
        assert_eq!(huffman_encode(b"a"), [0x1f]);
        assert_eq!(huffman_decode(&[0x18]), Err(Error::Huffman));
        assert_eq!(huffman_decode(&[0x1f, 0xff]), Err(Error::Huffman));
        assert_eq!(huffman_decode(&[0xff, 0xff, 0xff, 0xff]), Err(Error::Huffman));
    }

    /// The code decoded one bit at a time down the tree: what the table must agree with.
    fn huffman_decode_bitwise(raw: &[u8]) -> Result<Vec<u8>, Error> {
        let tree = tree();
        let mut out = Vec::new();
        let (mut node, mut pending, mut ones) = (0usize, 0u32, true);
        for &byte in raw {
            for k in (0..8).rev() {
                let bit = (byte >> k) & 1;
                pending += 1;
                ones &= bit == 1;
                let next = tree[node][usize::from(bit)];
                if next == -257 {
                    return Err(Error::Huffman);
                }
                if next < 0 {
                    out.push((-next - 1) as u8);
                    (node, pending, ones) = (0, 0, true);
                } else {
                    node = next as usize;
                }
            }
        }
        if pending > 7 || !ones {
            return Err(Error::Huffman);
        }
        Ok(out)
    }

    #[test]
    fn the_decoding_table_agrees_with_the_tree_on_any_octets() {
        // Encoded strings, the same with their last octets changed, and octets at random
        // (mostly invalid): same symbols, same refusals.
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let (mut valid, mut refused) = (0, 0);
        for i in 0..20_000 {
            let len = (next() % 40) as usize;
            let mut raw: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            if i % 2 == 0 {
                raw = huffman_encode(&raw);
                if i % 4 == 0 {
                    if let Some(last) = raw.last_mut() {
                        *last ^= (next() % 255 + 1) as u8;
                    }
                }
            }
            let want = huffman_decode_bitwise(&raw);
            assert_eq!(huffman_decode(&raw), want, "{raw:02x?}");
            if want.is_ok() {
                valid += 1
            } else {
                refused += 1
            }
        }
        assert!(valid > 5_000 && refused > 5_000, "{valid} valid, {refused} refused");
    }

    #[test]
    fn requests_decode_with_the_dynamic_table_as_rfc_7541_c4_shows() {
        let mut d = Decoder::new(4096);
        // C.4.1: GET http / with a Huffman-coded :authority, added to the table.
        let mut b1 = vec![0x82, 0x86, 0x84, 0x41, 0x8c];
        b1.extend(huffman_encode(b"www.example.com"));
        let want = [(":method", "GET"), (":scheme", "http"), (":path", "/"), (":authority", "www.example.com")];
        assert_eq!(fields(&mut d, &b1), Ok(pairs(&want)));
        assert_eq!(d.table_size(), 57);
        // C.4.2: the :authority from the table (index 62), cache-control added.
        let mut b2 = vec![0x82, 0x86, 0x84, 0xbe, 0x58, 0x86];
        b2.extend(huffman_encode(b"no-cache"));
        let mut want = want.to_vec();
        want.push(("cache-control", "no-cache"));
        assert_eq!(fields(&mut d, &b2), Ok(pairs(&want)));
        assert_eq!(d.table_size(), 110);
        // A literal name and value, not indexed: the table is unchanged.
        let mut b3 = vec![0x00, 0x03];
        b3.extend(b"key");
        b3.push(0x05);
        b3.extend(b"value");
        assert_eq!(fields(&mut d, &b3), Ok(pairs(&[("key", "value")])));
        assert_eq!(d.table_size(), 110);
    }

    #[test]
    fn the_table_stays_within_its_size_and_hostile_blocks_are_refused() {
        let mut d = Decoder::new(100);
        // Two 50-octet entries (18 + 32): the second evicts the first.
        let entry = |name: &[u8]| [&[0x40, 0x09][..], name, &[0x09], b"123456789"].concat();
        fields(&mut d, &entry(b"aaaaaaaaa")).expect("first");
        fields(&mut d, &entry(b"bbbbbbbbb")).expect("second");
        assert_eq!(d.table_size(), 100);
        fields(&mut d, &entry(b"ccccccccc")).expect("third");
        assert_eq!(d.table_size(), 100);
        assert_eq!(fields(&mut d, &[0xbe]).map(|f| f[0].0.clone()), Ok("ccccccccc".into()));
        assert_eq!(fields(&mut d, &[0xbf]).map(|f| f[0].0.clone()), Ok("bbbbbbbbb".into()));
        assert_eq!(fields(&mut d, &[0xc0]), Err(Error::Index));
        assert_eq!(fields(&mut d, &[0x80]), Err(Error::Index));
        // Size updates: beyond the allowed size, or after a field, refused; to 0 empties.
        assert_eq!(fields(&mut d, &[0x3f, 0x46]), Err(Error::SizeUpdate));
        assert_eq!(fields(&mut d, &[0x82, 0x20]), Err(Error::SizeUpdate));
        assert_eq!(fields(&mut d, &[0x20]), Ok(vec![]));
        assert_eq!(d.table_size(), 0);
        // Truncated strings and integers, and integers past 2^28.
        assert_eq!(fields(&mut d, &[0x00, 0x85, b'a']), Err(Error::Truncated));
        assert_eq!(fields(&mut d, &[0xff, 0x80]), Err(Error::Truncated));
        assert_eq!(fields(&mut d, &[0xff, 0xff, 0xff, 0xff, 0xff, 0x01]), Err(Error::Integer));
    }
}
