//! SQL identifiers (table and column names) that are safe to put into SQL text.
//!
//! Table and column names cannot be bound as query parameters, so every name that reaches SQL
//! goes through [`Ident`]: it accepts only plain identifiers (`[A-Za-z_][A-Za-z0-9_]*`, at most
//! 63 bytes, optionally one `schema.` prefix) and is quoted by the backend on top of that.

use crate::error::{Error, Result};
use std::fmt;

/// A validated SQL identifier, possibly schema-qualified (`schema.table`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Ident {
    parts: Vec<String>,
}

const MAX_LEN: usize = 63;

impl Ident {
    /// Validate `name`. Only ASCII letters, digits and `_` are accepted, starting with a letter
    /// or `_`; one `.` may separate a schema from the name.
    pub fn new(name: &str) -> Result<Self> {
        let bad = |reason| Error::InvalidIdentifier {
            ident: name.to_owned(),
            reason,
        };
        let parts: Vec<&str> = name.split('.').collect();
        if parts.len() > 2 {
            return Err(bad("at most one `.` (schema.table) is allowed"));
        }
        for part in &parts {
            if part.is_empty() {
                return Err(bad("empty name"));
            }
            if part.len() > MAX_LEN {
                return Err(bad("longer than 63 characters"));
            }
            let mut chars = part.chars();
            let first = chars.next().unwrap_or('0');
            if !(first.is_ascii_alphabetic() || first == '_') {
                return Err(bad("must start with an ASCII letter or `_`"));
            }
            if !part.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(bad("only ASCII letters, digits and `_` are allowed"));
            }
        }
        Ok(Ident {
            parts: parts.into_iter().map(str::to_owned).collect(),
        })
    }

    /// The identifier quoted with `quote` (`"` for PostgreSQL and SQLite, `` ` `` for MySQL).
    /// Validation already excludes the quote characters, so no escaping is needed.
    pub fn quoted(&self, quote: char) -> String {
        let mut out = String::new();
        for (i, part) in self.parts.iter().enumerate() {
            if i > 0 {
                out.push('.');
            }
            out.push(quote);
            out.push_str(part);
            out.push(quote);
        }
        out
    }

    /// The schema, when the name has one (`schema.table`).
    pub fn schema(&self) -> Option<&str> {
        (self.parts.len() > 1).then(|| self.parts[0].as_str())
    }

    /// The last part (the table name without its schema).
    pub fn name(&self) -> &str {
        self.parts.last().map(String::as_str).unwrap_or_default()
    }

    /// An identifier derived from this one for an index or constraint: `<name>_<suffix>`,
    /// quoted, without the schema.
    pub fn derived(&self, suffix: &str, quote: char) -> String {
        format!("{quote}{}_{suffix}{quote}", self.name())
    }
}

impl fmt::Display for Ident {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.parts.join("."))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_plain_and_schema_qualified_names() {
        assert_eq!(
            Ident::new("order_placed").unwrap().quoted('"'),
            "\"order_placed\""
        );
        assert_eq!(
            Ident::new("app.sig_1").unwrap().quoted('`'),
            "`app`.`sig_1`"
        );
        assert_eq!(Ident::new("_x").unwrap().name(), "_x");
    }

    #[test]
    fn rejects_anything_that_could_inject() {
        for bad in [
            "",
            "1abc",
            "a-b",
            "a b",
            "a;drop table x",
            "a\"b",
            "a`b",
            "a.b.c",
            ".a",
            "a.",
            "tablé",
        ] {
            assert!(Ident::new(bad).is_err(), "{bad:?} must be rejected");
        }
        assert!(Ident::new(&"a".repeat(64)).is_err());
        assert!(Ident::new(&"a".repeat(63)).is_ok());
    }
}
