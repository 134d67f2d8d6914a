//! How a record's key or value is read: as text, as JSON, or through a
//! schema registry (the Confluent wire format: a zero byte, the schema id
//! as 4 bytes big-endian, then the payload) as Avro, Protobuf or JSON
//! Schema, turned into JSON for the browser (rules in `avro` and
//! `protobuf`).
//!
//! Decoding runs on the ingest side, before the dispatch lock.

pub(crate) mod avro;
pub(crate) mod protobuf;
pub(crate) mod registry;

use std::sync::Arc;

use serde::Deserialize;

use crate::kafka::record::{Rejected, Skip};
pub(crate) use registry::Registry;

/// A key or value format, as a mapping rule names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum Format {
    /// UTF-8 text, sent as is.
    #[default]
    String,
    /// UTF-8 JSON (checked; sent as is unless the rule projects it).
    Json,
    /// Confluent-framed Avro, decoded with the writer's schema.
    Avro,
    /// Confluent-framed Protobuf, decoded with the writer's schema.
    Protobuf,
    /// Confluent-framed JSON (JSON Schema serializers).
    JsonSchema,
}

/// A schema fetched from the registry, parsed once.
#[derive(Debug)]
pub(crate) enum Schema {
    Avro(Box<avro::Avro>),
    Protobuf(protobuf::Proto),
    Json,
}

/// A decoded key or value: text borrowed from the record, or a JSON tree
/// (with the record's own JSON text when it was JSON, to send unchanged
/// when nothing is projected).
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Decoded<'a> {
    Text(&'a str),
    Tree(serde_json::Value, Option<&'a str>),
}

impl Format {
    /// Whether reading it needs a schema registry.
    pub(crate) fn needs_registry(self) -> bool {
        matches!(self, Format::Avro | Format::Protobuf | Format::JsonSchema)
    }

    /// Whether fields can be read from it (a JSON document).
    pub(crate) fn has_fields(self) -> bool {
        self != Format::String
    }

    pub(crate) fn label(self) -> &'static str {
        match self {
            Format::String => "string",
            Format::Json => "json",
            Format::Avro => "avro",
            Format::Protobuf => "protobuf",
            Format::JsonSchema => "json-schema",
        }
    }

    /// Reads `bytes`. `tree`: the caller needs a JSON tree (fields or a
    /// projection), not just checked text.
    pub(crate) fn decode<'a>(
        self,
        bytes: &'a [u8],
        tree: bool,
        registry: Option<&Registry>,
    ) -> Result<Decoded<'a>, Rejected> {
        match self {
            Format::String => std::str::from_utf8(bytes)
                .map(Decoded::Text)
                .map_err(|_| Skip::ValueNotUtf8.into()),
            Format::Json => json(bytes, tree),
            Format::Avro | Format::Protobuf | Format::JsonSchema => {
                let (id, payload) = framed(bytes)?;
                let registry = registry.ok_or_else(|| {
                    Rejected::new(Skip::RegistryUnavailable, "no --schema-registry-url".into())
                })?;
                let schema = registry.schema(id)?;
                match (self, &*schema) {
                    (Format::Avro, Schema::Avro(a)) => {
                        a.decode(payload).map(|j| Decoded::Tree(j, None))
                    }
                    (Format::Protobuf, Schema::Protobuf(p)) => {
                        p.decode(payload).map(|j| Decoded::Tree(j, None))
                    }
                    (Format::JsonSchema, Schema::Json) => json(payload, tree),
                    (_, s) => Err(Rejected::new(
                        Skip::BadSchema,
                        format!(
                            "schema {id} is {}, the rule reads {}",
                            s.label(),
                            self.label()
                        ),
                    )),
                }
            }
        }
    }
}

fn json(bytes: &[u8], tree: bool) -> Result<Decoded<'_>, Rejected> {
    let text = std::str::from_utf8(bytes).map_err(|_| Skip::ValueNotUtf8)?;
    let bad = |e: serde_json::Error| Rejected::new(Skip::NotJson, e.to_string());
    if tree {
        serde_json::from_str(text)
            .map(|j| Decoded::Tree(j, Some(text)))
            .map_err(bad)
    } else {
        serde_json::from_str::<serde::de::IgnoredAny>(text).map_err(bad)?;
        Ok(Decoded::Text(text))
    }
}

/// The Confluent wire format's header: a zero byte and a 4-byte schema id.
pub(crate) fn framed(bytes: &[u8]) -> Result<(u32, &[u8]), Rejected> {
    match bytes {
        [0, a, b, c, d, rest @ ..] => Ok((u32::from_be_bytes([*a, *b, *c, *d]), rest)),
        _ => Err(Rejected::new(
            Skip::NotFramed,
            "no schema registry header (a zero byte, then a 4-byte schema id)".into(),
        )),
    }
}

impl Schema {
    pub(crate) fn parse(f: &registry::Fetched) -> Result<Arc<Schema>, String> {
        Ok(Arc::new(match f.kind.as_str() {
            "AVRO" => Schema::Avro(Box::new(avro::Avro::parse(&f.schema, &f.references)?)),
            "PROTOBUF" => Schema::Protobuf(protobuf::Proto::parse(&f.schema, &f.references)?),
            "JSON" => Schema::Json,
            other => return Err(format!("unknown schemaType {other:?}")),
        }))
    }

    fn label(&self) -> &'static str {
        match self {
            Schema::Avro(_) => "Avro",
            Schema::Protobuf(_) => "Protobuf",
            Schema::Json => "JSON Schema",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_json_and_framing() {
        assert_eq!(
            Format::String.decode(b"hi", true, None).unwrap(),
            Decoded::Text("hi")
        );
        assert_eq!(
            Format::Json.decode(br#"{"a":1}"#, false, None).unwrap(),
            Decoded::Text(r#"{"a":1}"#)
        );
        assert_eq!(
            Format::Json.decode(br#"{"a":1}"#, true, None).unwrap(),
            Decoded::Tree(serde_json::json!({"a": 1}), Some(r#"{"a":1}"#))
        );
        let e = Format::Json.decode(b"{", false, None).unwrap_err();
        assert_eq!(e.skip, Skip::NotJson);
        let e = Format::String.decode(b"\xff", false, None).unwrap_err();
        assert_eq!(e.skip, Skip::ValueNotUtf8);
        assert_eq!(framed(&[0, 0, 0, 1, 2, 9]).unwrap(), (258, &[9u8][..]));
        assert_eq!(framed(&[1, 0, 0, 1, 2]).unwrap_err().skip, Skip::NotFramed);
        assert_eq!(framed(&[0, 0, 1]).unwrap_err().skip, Skip::NotFramed);
        let e = Format::Avro
            .decode(&[0, 0, 0, 0, 1], true, None)
            .unwrap_err();
        assert_eq!(e.skip, Skip::RegistryUnavailable);
    }
}
