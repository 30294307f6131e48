//! Parsing of `#[signal(...)]` attributes.

use proc_macro2::Span;
use syn::{DeriveInput, Field, LitBool, LitInt, LitStr, Type};

/// Columns of the table contract that `order_by` may name (kept in step with
/// `signalbus_core::storage::ORDERABLE_COLUMNS`).
const ORDERABLE: &[&str] = &["id", "created_at", "topic", "routing_key", "message_id"];

#[derive(Default)]
pub struct Container {
    pub name: Option<String>,
    pub table: Option<String>,
    pub table_span: Option<Span>,
    pub destination: Option<String>,
    pub routing_key: Option<String>,
    pub autoflush: Option<bool>,
    pub burst: Option<usize>,
    pub batch: Option<bool>,
    pub ordered: Option<bool>,
    pub order_by: Vec<String>,
    /// `max_attempts`, `retry_base_ms`, `retry_max_ms`: the retry policy, where given.
    pub max_attempts: Option<u32>,
    pub retry_base_ms: Option<u64>,
    pub retry_max_ms: Option<u64>,
}

impl Container {
    pub fn parse(input: &DeriveInput) -> syn::Result<Self> {
        let mut out = Container::default();
        for attr in input.attrs.iter().filter(|a| a.path().is_ident("signal")) {
            attr.parse_nested_meta(|meta| {
                let key = meta.path.get_ident().map(|i| i.to_string()).unwrap_or_default();
                match key.as_str() {
                    "name" => out.name = Some(meta.value()?.parse::<LitStr>()?.value()),
                    "table" => {
                        let lit = meta.value()?.parse::<LitStr>()?;
                        out.table_span = Some(lit.span());
                        out.table = Some(lit.value());
                    }
                    "destination" => out.destination = Some(meta.value()?.parse::<LitStr>()?.value()),
                    "routing_key" => out.routing_key = Some(meta.value()?.parse::<LitStr>()?.value()),
                    "autoflush" => out.autoflush = Some(meta.value()?.parse::<LitBool>()?.value),
                    "batch" => out.batch = Some(meta.value()?.parse::<LitBool>()?.value),
                    "ordered" => out.ordered = Some(meta.value()?.parse::<LitBool>()?.value),
                    "burst" => {
                        let lit = meta.value()?.parse::<LitInt>()?;
                        let burst: usize = lit.base10_parse()?;
                        if burst == 0 {
                            return Err(syn::Error::new(lit.span(), "burst must be at least 1"));
                        }
                        out.burst = Some(burst);
                    }
                    "max_attempts" => {
                        let lit = meta.value()?.parse::<LitInt>()?;
                        let n: u32 = lit.base10_parse()?;
                        if n == 0 {
                            return Err(syn::Error::new(lit.span(), "max_attempts must be at least 1"));
                        }
                        out.max_attempts = Some(n);
                    }
                    "retry_base_ms" => out.retry_base_ms = Some(meta.value()?.parse::<LitInt>()?.base10_parse()?),
                    "retry_max_ms" => out.retry_max_ms = Some(meta.value()?.parse::<LitInt>()?.base10_parse()?),
                    "order_by" => {
                        let lit = meta.value()?.parse::<LitStr>()?;
                        for part in lit.value().split(',') {
                            let part = part.trim();
                            let column = part.split_whitespace().next().unwrap_or_default();
                            if !ORDERABLE.contains(&column) {
                                return Err(syn::Error::new(
                                    lit.span(),
                                    format!("order_by: `{column}` is not a signal table column (one of {})", ORDERABLE.join(", ")),
                                ));
                            }
                            out.order_by.push(part.to_owned());
                        }
                    }
                    _ => return Err(meta.error(
                        "unknown signal attribute; expected name, table, destination, routing_key, autoflush, burst, batch, ordered, order_by, max_attempts, retry_base_ms or retry_max_ms",
                    )),
                }
                Ok(())
            })?;
        }
        Ok(out)
    }
}

#[derive(Default)]
pub struct FieldAttrs {
    pub routing_key: bool,
    pub key: bool,
    pub destination: bool,
    /// `Some(None)`: header named after the field.
    pub header: Option<Option<String>>,
}

impl FieldAttrs {
    pub fn parse(field: &Field) -> syn::Result<Self> {
        let mut out = FieldAttrs::default();
        for attr in field.attrs.iter().filter(|a| a.path().is_ident("signal")) {
            attr.parse_nested_meta(|meta| {
                if meta.path.is_ident("routing_key") {
                    out.routing_key = true;
                } else if meta.path.is_ident("key") {
                    out.key = true;
                } else if meta.path.is_ident("destination") {
                    out.destination = true;
                } else if meta.path.is_ident("header") {
                    out.header = Some(if meta.input.peek(syn::Token![=]) {
                        Some(meta.value()?.parse::<LitStr>()?.value())
                    } else {
                        None
                    });
                } else {
                    return Err(meta.error(
                        "unknown field attribute; expected routing_key, key, destination or header",
                    ));
                }
                Ok(())
            })?;
        }
        Ok(out)
    }
}

/// `OrderPlaced` → `order_placed`, `HTTPRequest` → `http_request`, `V2Event` → `v2_event`.
pub fn snake_case(name: &str) -> String {
    let chars: Vec<char> = name.chars().collect();
    let mut out = String::with_capacity(name.len() + 4);
    for (i, &c) in chars.iter().enumerate() {
        if c.is_uppercase() && i > 0 {
            let prev = chars[i - 1];
            let next_is_lower = chars.get(i + 1).is_some_and(|n| n.is_lowercase());
            if prev.is_lowercase()
                || prev.is_ascii_digit()
                || (prev.is_uppercase() && next_is_lower)
            {
                out.push('_');
            }
        }
        out.extend(c.to_lowercase());
    }
    out
}

/// The same rule as `signalbus_core::Ident`, checked at compile time.
pub fn check_identifier(table: &str, span: Span) -> syn::Result<()> {
    let ok_part = |p: &str| {
        !p.is_empty()
            && p.len() <= 63
            && p.chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && p.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
    };
    let parts: Vec<&str> = table.split('.').collect();
    if parts.len() <= 2 && parts.iter().all(|p| ok_part(p)) {
        Ok(())
    } else {
        Err(syn::Error::new(
            span,
            format!(
                "`{table}` is not a valid table name: use ASCII letters, digits and `_` (optionally `schema.table`)"
            ),
        ))
    }
}

pub fn is_option(ty: &Type) -> bool {
    match ty {
        // Types that come out of `macro_rules!` are wrapped in invisible groups.
        Type::Group(group) => is_option(&group.elem),
        Type::Paren(paren) => is_option(&paren.elem),
        Type::Path(p) => p.path.segments.last().is_some_and(|s| s.ident == "Option"),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snake_case_handles_acronyms_and_digits() {
        assert_eq!(snake_case("OrderPlaced"), "order_placed");
        assert_eq!(snake_case("HTTPRequest"), "http_request");
        assert_eq!(snake_case("V2Event"), "v2_event");
        assert_eq!(snake_case("already_snake"), "already_snake");
    }

    #[test]
    fn option_detection_sees_through_groups() {
        assert!(is_option(&syn::parse_quote!(Option<String>)));
        assert!(is_option(&syn::parse_quote!(std::option::Option<i64>)));
        assert!(!is_option(&syn::parse_quote!(Vec<u8>)));
    }
}
