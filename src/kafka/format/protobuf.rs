//! Protobuf values as JSON for the browser: the message is decoded with the
//! writer's schema (from the registry: `.proto` text, or a base64
//! `FileDescriptorProto` as some serializers register it; imports through
//! the schema's references, Google's well-known types built in) and written
//! by the proto3 JSON mapping (prost-reflect): lowerCamelCase field names,
//! fields at their default value left out, 64-bit integers as strings,
//! enums by name, bytes as base64, `Timestamp` and `Duration` as strings,
//! wrappers as their value.
//!
//! The Confluent payload starts with the message's place in the schema:
//! a zigzag varint count and that many zigzag varint indexes (a single 0
//! byte for the first message of the file).

use std::collections::HashMap;

use base64::Engine as _;
use prost::Message as _;
use prost_reflect::{DynamicMessage, FileDescriptor, MessageDescriptor};
use protox::file::{ChainFileResolver, File, FileResolver, GoogleFileResolver};
use serde_json::Value as Json;

use crate::kafka::record::{Rejected, Skip};

/// Bound on a message-index path (nesting depth).
const MAX_INDEXES: u64 = 32;

/// A schema's file, its message types reachable by index paths.
#[derive(Debug)]
pub(crate) struct Proto {
    file: FileDescriptor,
}

/// The schema and its references, by name, for protox.
struct Sources(HashMap<String, File>);

impl FileResolver for Sources {
    fn open_file(&self, name: &str) -> Result<File, protox::Error> {
        self.0
            .get(name)
            .cloned()
            .ok_or_else(|| protox::Error::file_not_found(name))
    }
}

/// A registered schema's text as a protox file: a base64
/// `FileDescriptorProto`, else `.proto` source.
fn file(name: &str, text: &str) -> Result<File, String> {
    if let Ok(bytes) = base64::engine::general_purpose::STANDARD.decode(text.trim()) {
        if let Ok(mut fdp) = prost_types::FileDescriptorProto::decode(bytes.as_slice()) {
            fdp.name = Some(name.to_owned());
            return Ok(File::from_file_descriptor_proto(fdp));
        }
    }
    File::from_source(name, text)
        .map_err(|e| format!("cannot parse the Protobuf schema {name}: {e}"))
}

impl Proto {
    pub(crate) fn parse(schema: &str, references: &[(String, String)]) -> Result<Self, String> {
        const ROOT: &str = "herald-registry-schema.proto";
        let mut files = HashMap::new();
        files.insert(ROOT.to_owned(), file(ROOT, schema)?);
        for (name, text) in references {
            files.insert(name.clone(), file(name, text)?);
        }
        let mut chain = ChainFileResolver::new();
        chain.add(Sources(files));
        chain.add(GoogleFileResolver::new());
        let mut compiler = protox::Compiler::with_file_resolver(chain);
        compiler
            .open_file(ROOT)
            .map_err(|e| format!("cannot compile the Protobuf schema: {e}"))?;
        let file = compiler
            .descriptor_pool()
            .get_file_by_name(ROOT)
            .ok_or("the Protobuf schema has no file")?;
        if file.messages().len() == 0 {
            return Err("the Protobuf schema declares no message".into());
        }
        Ok(Self { file })
    }

    /// Decodes one Confluent Protobuf payload into JSON.
    pub(crate) fn decode(&self, payload: &[u8]) -> Result<Json, Rejected> {
        let bad = |e: String| Rejected::new(Skip::Decode, e);
        let mut buf = payload;
        let desc = self.message(&mut buf).map_err(bad)?;
        let msg = DynamicMessage::decode(desc, buf)
            .map_err(|e| bad(format!("not a Protobuf message of its schema: {e}")))?;
        serde_json::to_value(&msg).map_err(|e| bad(e.to_string()))
    }

    /// Reads the message-index path and finds the message type it names.
    fn message(&self, buf: &mut &[u8]) -> Result<MessageDescriptor, String> {
        let count = zigzag(buf)?;
        let path: Vec<u64> = if count == 0 {
            vec![0]
        } else if count > MAX_INDEXES {
            return Err(format!("message index path of {count} entries"));
        } else {
            (0..count).map(|_| zigzag(buf)).collect::<Result<_, _>>()?
        };
        let missing = || format!("the schema has no message at index path {path:?}");
        let mut desc = self
            .file
            .messages()
            .nth(path[0] as usize)
            .ok_or_else(missing)?;
        for i in &path[1..] {
            let child = desc.child_messages().nth(*i as usize);
            desc = child.ok_or_else(missing)?;
        }
        Ok(desc)
    }
}

/// A zigzag-encoded varint that must not be negative.
fn zigzag(buf: &mut &[u8]) -> Result<u64, String> {
    let v = prost::encoding::decode_varint(buf).map_err(|e| e.to_string())?;
    let n = ((v >> 1) as i64) ^ -((v & 1) as i64);
    u64::try_from(n).map_err(|_| "negative message index".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SCHEMA: &str = r#"
        syntax = "proto3";
        package shop;
        import "google/protobuf/timestamp.proto";
        message Order {
          string id = 1;
          int64 customer_id = 2;
          Status status = 3;
          bytes blob = 4;
          google.protobuf.Timestamp at = 5;
          repeated string tags = 6;
          message Line { string sku = 1; uint32 qty = 2; }
          repeated Line lines = 7;
        }
        enum Status { NEW = 0; PAID = 1; }
        message Other { bool ok = 1; }
    "#;

    fn encode(fields: &[(u32, &[u8])]) -> Vec<u8> {
        // Hand-built wire bytes: tag, then length-delimited or varint.
        let mut out = Vec::new();
        for (tag, v) in fields {
            out.extend_from_slice(&[(*tag << 3) as u8 | 2, v.len() as u8]);
            out.extend_from_slice(v);
        }
        out
    }

    #[test]
    fn proto3_json_mapping() {
        let p = Proto::parse(SCHEMA, &[]).unwrap();
        // Index path [0] as the single 0 byte; id "o-1", customer_id 42
        // (varint field 2), status PAID, blob, timestamp 1s, a tag, a line.
        let mut payload = vec![0u8];
        payload.extend(encode(&[(1, b"o-1")]));
        payload.extend([2 << 3, 42, 3 << 3, 1]);
        payload.extend(encode(&[
            (4, &[0, 255]),
            (5, &[8, 1]),
            (6, b"a"),
            (7, &[10, 1, b'x', 16, 3]),
        ]));
        let j = p.decode(&payload).unwrap();
        assert_eq!(
            j,
            serde_json::json!({
                "id": "o-1", "customerId": "42", "status": "PAID", "blob": "AP8=",
                "at": "1970-01-01T00:00:01Z", "tags": ["a"],
                "lines": [{"sku": "x", "qty": 3}]
            })
        );
        // Index path [1] (count 1, index 1, zigzag: 2 2): message Other.
        let j = p.decode(&[2, 2, 8, 1]).unwrap();
        assert_eq!(j, serde_json::json!({"ok": true}));
        // Nested: [0, 0] = Order.Line.
        let j = p.decode(&[4, 0, 0, 10, 1, b'y']).unwrap();
        assert_eq!(j, serde_json::json!({"sku": "y"}));
    }

    #[test]
    fn bad_payloads_and_schemas_are_errors() {
        let p = Proto::parse(SCHEMA, &[]).unwrap();
        for junk in [&[][..], &[2, 20], &[1], &[0, 0xff], &[0, 10, 50, 1]] {
            assert_eq!(p.decode(junk).unwrap_err().skip, Skip::Decode, "{junk:?}");
        }
        assert!(Proto::parse("message {", &[]).is_err());
        assert!(Proto::parse("syntax = \"proto3\";", &[]).is_err());
        assert!(Proto::parse("import \"missing.proto\";", &[]).is_err());
    }

    #[test]
    fn a_base64_descriptor_and_references_are_read() {
        let dep = "syntax = \"proto3\"; package d; message D { string s = 1; }";
        let root = "syntax = \"proto3\"; import \"d.proto\"; message R { d.D d = 1; }";
        let p = Proto::parse(root, &[("d.proto".into(), dep.into())]).unwrap();
        assert_eq!(
            p.decode(&[0, 10, 3, 10, 1, b'z']).unwrap(),
            serde_json::json!({"d": {"s": "z"}})
        );
        // The same root as a serialized FileDescriptorProto in base64.
        let fdp = p.file.file_descriptor_proto().encode_to_vec();
        let b64 = base64::engine::general_purpose::STANDARD.encode(fdp);
        let p = Proto::parse(&b64, &[("d.proto".into(), dep.into())]).unwrap();
        assert_eq!(
            p.decode(&[0, 10, 3, 10, 1, b'z']).unwrap(),
            serde_json::json!({"d": {"s": "z"}})
        );
    }
}
