//! The two pgoutput messages WAL capture reads (protocol version 1, text format): Relation
//! (`R`: which table an oid is, and its columns) and Insert (`I`: a new row). Begin and
//! Commit are decoded by the replication client; every other message is skipped.

use std::collections::HashMap;

/// What an `XLogData` payload said.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Change<'a> {
    /// A table's description (sent before its first row on each connection).
    Relation(Relation),
    /// A row inserted into the table with this oid; one value per column, `None` for NULL.
    Insert {
        relid: u32,
        values: Vec<Option<&'a [u8]>>,
    },
    /// Anything else (Type, Origin, Truncate, Update, Delete, Message).
    Other,
}

/// A table as a Relation message describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Relation {
    pub oid: u32,
    /// The schema (empty for pg_catalog).
    pub schema: String,
    pub name: String,
    pub columns: Vec<String>,
}

/// A malformed message: the stream cannot be trusted past it.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Malformed(pub &'static str);

struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], Malformed> {
        if self.buf.len() < n {
            return Err(Malformed("message ends early"));
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }
    fn u8(&mut self) -> Result<u8, Malformed> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, Malformed> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Result<u32, Malformed> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn cstr(&mut self) -> Result<String, Malformed> {
        let end = self
            .buf
            .iter()
            .position(|&b| b == 0)
            .ok_or(Malformed("a name without its terminating zero"))?;
        let s = String::from_utf8(self.buf[..end].to_vec())
            .map_err(|_| Malformed("a name that is not UTF-8"))?;
        self.buf = &self.buf[end + 1..];
        Ok(s)
    }
}

/// Decode one pgoutput message.
pub(super) fn decode(data: &[u8]) -> Result<Change<'_>, Malformed> {
    let mut r = Reader { buf: data };
    match r.u8()? {
        b'R' => {
            let oid = r.u32()?;
            let schema = r.cstr()?;
            let name = r.cstr()?;
            let _replica_identity = r.u8()?;
            let n = r.u16()?;
            let mut columns = Vec::with_capacity(usize::from(n));
            for _ in 0..n {
                let _flags = r.u8()?;
                columns.push(r.cstr()?);
                let _type_oid = r.u32()?;
                let _typmod = r.u32()?;
            }
            Ok(Change::Relation(Relation {
                oid,
                schema,
                name,
                columns,
            }))
        }
        b'I' => {
            let relid = r.u32()?;
            if r.u8()? != b'N' {
                return Err(Malformed("an insert without its new tuple"));
            }
            let n = r.u16()?;
            let mut values = Vec::with_capacity(usize::from(n));
            for _ in 0..n {
                match r.u8()? {
                    b'n' => values.push(None),
                    b't' | b'b' => {
                        let len = usize::try_from(r.u32()?)
                            .map_err(|_| Malformed("a value longer than memory"))?;
                        values.push(Some(r.take(len)?));
                    }
                    // Unchanged TOAST: never in an insert.
                    b'u' => return Err(Malformed("an insert with an unchanged value")),
                    _ => return Err(Malformed("an unknown column kind")),
                }
            }
            Ok(Change::Insert { relid, values })
        }
        _ => Ok(Change::Other),
    }
}

/// Where the columns WAL capture needs sit in a table's rows.
#[derive(Debug, Clone, Copy)]
pub(super) struct Columns {
    pub id: usize,
    pub ordering_key: Option<usize>,
}

impl Columns {
    /// The positions of `id` and `ordering_key` in `relation`; `None` when it has no `id`.
    pub fn of(relation: &Relation) -> Option<Columns> {
        let at = |name: &str| relation.columns.iter().position(|c| c == name);
        Some(Columns {
            id: at("id")?,
            ordering_key: at("ordering_key"),
        })
    }

    /// The row's id and ordering key.
    pub fn read(&self, values: &[Option<&[u8]>]) -> Result<(i64, Option<String>), Malformed> {
        let id = values
            .get(self.id)
            .copied()
            .flatten()
            .and_then(|v| std::str::from_utf8(v).ok())
            .and_then(|v| v.parse().ok())
            .ok_or(Malformed("a row whose id is not a number"))?;
        let key = match self
            .ordering_key
            .and_then(|i| values.get(i).copied().flatten())
        {
            Some(v) => Some(
                String::from_utf8(v.to_vec())
                    .map_err(|_| Malformed("an ordering key that is not UTF-8"))?,
            ),
            None => None,
        };
        Ok((id, key))
    }
}

/// The tables of one stream, by oid (Relation messages come again on every connection, so
/// a new connection starts with an empty one).
pub(super) type Relations<T> = HashMap<u32, T>;

#[cfg(test)]
mod tests {
    use super::*;

    fn relation_bytes() -> Vec<u8> {
        let mut b = vec![b'R'];
        b.extend(16_385u32.to_be_bytes());
        b.extend(b"public\0order_placed\0");
        b.push(b'd');
        b.extend(3u16.to_be_bytes());
        for name in ["id", "topic", "ordering_key"] {
            b.push(1);
            b.extend(name.as_bytes());
            b.push(0);
            b.extend(20u32.to_be_bytes());
            b.extend((-1i32).to_be_bytes());
        }
        b
    }

    fn insert_bytes(key: Option<&str>) -> Vec<u8> {
        let mut b = vec![b'I'];
        b.extend(16_385u32.to_be_bytes());
        b.push(b'N');
        b.extend(3u16.to_be_bytes());
        for v in [Some("42"), Some("orders"), key] {
            match v {
                Some(v) => {
                    b.push(b't');
                    b.extend(u32::try_from(v.len()).unwrap().to_be_bytes());
                    b.extend(v.as_bytes());
                }
                None => b.push(b'n'),
            }
        }
        b
    }

    #[test]
    fn reads_a_relation_and_its_rows() {
        let bytes = relation_bytes();
        let Ok(Change::Relation(rel)) = decode(&bytes) else {
            panic!("not a relation")
        };
        assert_eq!(rel.oid, 16_385);
        assert_eq!(
            (rel.schema.as_str(), rel.name.as_str()),
            ("public", "order_placed")
        );
        let cols = Columns::of(&rel).unwrap();
        for (key, want) in [(Some("acct-7"), Some("acct-7".to_owned())), (None, None)] {
            let bytes = insert_bytes(key);
            let Ok(Change::Insert { relid, values }) = decode(&bytes) else {
                panic!("not an insert")
            };
            assert_eq!(relid, 16_385);
            assert_eq!(cols.read(&values).unwrap(), (42, want));
        }
    }

    #[test]
    fn refuses_what_it_cannot_trust() {
        let bytes = insert_bytes(Some("k"));
        assert!(decode(&bytes[..bytes.len() - 1]).is_err(), "cut short");
        let mut rel = relation_bytes();
        rel.truncate(12);
        assert!(decode(&rel).is_err(), "a name cut short");
        assert_eq!(decode(b"T\0\0\0\x01"), Ok(Change::Other));
        let mut toast = insert_bytes(Some("k"));
        let at = toast.len() - 6; // the key's kind byte
        toast[at] = b'u';
        assert!(decode(&toast).is_err(), "unchanged value in an insert");
    }
}
