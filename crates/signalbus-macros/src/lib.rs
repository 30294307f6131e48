//! `#[derive(Signal)]`: maps a struct to a signal type of signalbus.
//!
//! See the `signalbus` crate for the attributes; this crate is re-exported there.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod attrs;

use proc_macro::TokenStream;
use quote::quote;
use syn::ext::IdentExt;
use syn::{Data, DeriveInput, Fields, parse_macro_input};

/// Derives `signalbus::Signal` for a struct that also implements `serde::Serialize`.
///
/// Container attributes, all optional, in `#[signal(...)]`:
/// `name = "..."` (default: the type's name), `table = "..."` (default: the type's name in
/// snake_case), `destination = "..."` (default: the name), `routing_key = "..."`,
/// `autoflush = false`, `burst = 500`, `batch = false`, `ordered = true` (a relay sends the type
/// in order), `order_by = "created_at DESC, id"`,
/// and the retry policy of refused messages: `max_attempts = 5`, `retry_base_ms = 1000`,
/// `retry_max_ms = 600000` (unset parts keep `RetryPolicy::default()`).
///
/// Field attributes: `#[signal(routing_key)]`, `#[signal(key)]` (the ordering key: order is
/// kept per key, see `Signal::ordering_key`) and `#[signal(destination)]` take the value
/// from that field (via `ToString`; an `Option` field gives none when it is `None`); `#[signal(header)]` or `#[signal(header = "x-name")]`
/// adds the field as a header (an `Option` field only when it is `Some`).
#[proc_macro_derive(Signal, attributes(signal))]
pub fn derive_signal(input: TokenStream) -> TokenStream {
    let input = parse_macro_input!(input as DeriveInput);
    match expand(&input) {
        Ok(tokens) => tokens.into(),
        Err(e) => e.to_compile_error().into(),
    }
}

fn expand(input: &DeriveInput) -> syn::Result<proc_macro2::TokenStream> {
    if !input.generics.params.is_empty() {
        return Err(syn::Error::new_spanned(
            &input.generics,
            "#[derive(Signal)] does not support generic types: a signal type has one table",
        ));
    }
    let fields = match &input.data {
        Data::Struct(s) => match &s.fields {
            Fields::Named(named) => named.named.iter().collect::<Vec<_>>(),
            Fields::Unit => Vec::new(),
            Fields::Unnamed(_) => Vec::new(),
        },
        _ => {
            return Err(syn::Error::new_spanned(
                &input.ident,
                "#[derive(Signal)] works on structs",
            ));
        }
    };
    let ident = &input.ident;
    let container = attrs::Container::parse(input)?;
    let field_attrs = fields
        .iter()
        .map(|f| attrs::FieldAttrs::parse(f))
        .collect::<syn::Result<Vec<_>>>()?;

    let name = container.name.clone().unwrap_or_else(|| ident.to_string());
    let table = container
        .table
        .clone()
        .unwrap_or_else(|| attrs::snake_case(&ident.to_string()));
    attrs::check_identifier(&table, container.table_span.unwrap_or(ident.span()))?;

    let mut policy = quote! { ::signalbus::SignalType::new(#name).table(#table) };
    if let Some(d) = &container.destination {
        policy.extend(quote! { .destination(#d) });
    }
    if let Some(r) = &container.routing_key {
        policy.extend(quote! { .routing_key(#r) });
    }
    if let Some(a) = container.autoflush {
        policy.extend(quote! { .autoflush(#a) });
    }
    if let Some(b) = container.burst {
        policy.extend(quote! { .burst(#b) });
    }
    if let Some(b) = container.batch {
        policy.extend(quote! { .batch(#b) });
    }
    if let Some(o) = container.ordered {
        policy.extend(quote! { .ordered(#o) });
    }
    if !container.order_by.is_empty() {
        let cols = &container.order_by;
        policy.extend(quote! { .order_by([#(#cols),*]) });
    }
    if container.max_attempts.is_some()
        || container.retry_base_ms.is_some()
        || container.retry_max_ms.is_some()
    {
        // Unset parts keep the default policy's values.
        let mut retry = quote! { let mut retry = ::signalbus::RetryPolicy::default(); };
        if let Some(n) = container.max_attempts {
            retry.extend(quote! { retry.max_attempts = #n; });
        }
        if let Some(ms) = container.retry_base_ms {
            retry.extend(quote! { retry.base = ::std::time::Duration::from_millis(#ms); });
        }
        if let Some(ms) = container.retry_max_ms {
            retry.extend(quote! { retry.max = ::std::time::Duration::from_millis(#ms); });
        }
        policy = quote! { { #retry #policy.retry(retry) } };
    }

    let mut methods = proc_macro2::TokenStream::new();
    let mut headers = Vec::new();
    for (field, attrs) in fields.iter().zip(&field_attrs) {
        let member = field.ident.as_ref().expect("named field");
        if attrs.routing_key && attrs::is_option(&field.ty) {
            methods.extend(quote! {
                fn routing_key(&self) -> ::std::option::Option<::std::borrow::Cow<'_, str>> {
                    self.#member.as_ref().map(|value| ::std::borrow::Cow::Owned(::std::string::ToString::to_string(value)))
                }
            });
        } else if attrs.routing_key {
            methods.extend(quote! {
                fn routing_key(&self) -> ::std::option::Option<::std::borrow::Cow<'_, str>> {
                    ::std::option::Option::Some(::std::borrow::Cow::Owned(::std::string::ToString::to_string(&self.#member)))
                }
            });
        }
        if attrs.key && attrs::is_option(&field.ty) {
            methods.extend(quote! {
                fn ordering_key(&self) -> ::std::option::Option<::std::borrow::Cow<'_, str>> {
                    self.#member.as_ref().map(|value| ::std::borrow::Cow::Owned(::std::string::ToString::to_string(value)))
                }
            });
        } else if attrs.key {
            methods.extend(quote! {
                fn ordering_key(&self) -> ::std::option::Option<::std::borrow::Cow<'_, str>> {
                    ::std::option::Option::Some(::std::borrow::Cow::Owned(::std::string::ToString::to_string(&self.#member)))
                }
            });
        }
        if attrs.destination {
            methods.extend(quote! {
                fn destination(&self) -> ::std::borrow::Cow<'_, str> {
                    ::std::borrow::Cow::Owned(::std::string::ToString::to_string(&self.#member))
                }
            });
        }
        if let Some(header) = &attrs.header {
            let header = header.clone().unwrap_or_else(|| member.unraw().to_string());
            headers.push(if attrs::is_option(&field.ty) {
                quote! {
                    if let ::std::option::Option::Some(value) = &self.#member {
                        headers.insert(#header.to_owned(), ::std::string::ToString::to_string(value));
                    }
                }
            } else {
                quote! { headers.insert(#header.to_owned(), ::std::string::ToString::to_string(&self.#member)); }
            });
        }
    }
    if !headers.is_empty() {
        methods.extend(quote! {
            fn headers(&self) -> ::signalbus::Headers {
                let mut headers = ::signalbus::Headers::new();
                #(#headers)*
                headers
            }
        });
    }

    Ok(quote! {
        impl ::signalbus::Signal for #ident {
            fn signal_type() -> &'static ::signalbus::SignalType {
                static TYPE: ::std::sync::OnceLock<::signalbus::SignalType> = ::std::sync::OnceLock::new();
                TYPE.get_or_init(|| #policy)
            }

            fn body(&self) -> ::signalbus::Result<::std::vec::Vec<u8>> {
                ::signalbus::json_body(self)
            }

            #methods
        }
    })
}
