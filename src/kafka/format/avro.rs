//! Avro values as JSON for the browser. The rule (README, "Formats"):
//!
//! - null, booleans, strings: themselves; int, long, float, double:
//!   numbers (NaN and infinities: the strings `"NaN"`, `"Infinity"`,
//!   `"-Infinity"`, as the proto3 JSON mapping does);
//! - bytes and fixed: standard base64 text;
//! - enums: the symbol; arrays, maps and records: arrays and objects
//!   (object keys in sorted order);
//! - unions: the value itself, unwrapped (`null` or the branch's value; no
//!   `{"type": value}` wrapper);
//! - decimal: the exact number as a string (`"12.30"`, scale kept);
//!   big-decimal: its string form;
//! - uuid: its string; date: `"YYYY-MM-DD"`; time-millis / time-micros:
//!   `"HH:MM:SS.mmm"` / `"HH:MM:SS.uuuuuu"`; timestamp-millis / -micros /
//!   -nanos: RFC 3339 in UTC (`"2026-12-01T10:00:00.123Z"`, digits as the
//!   type's precision); local-timestamp-*: the same without `Z`;
//!   duration: `{"months": m, "days": d, "millis": ms}`.

use apache_avro::schema::{DecimalSchema, ResolvedSchema};
use apache_avro::types::Value;
use apache_avro::Schema;
use base64::Engine as _;
use serde_json::{Map, Value as Json};

use crate::kafka::record::{Rejected, Skip};

/// A writer's schema, the schemas it references, and every named type in
/// them (resolved once, for the JSON walk).
#[derive(Debug)]
pub(crate) struct Avro {
    root: Schema,
    references: Vec<Schema>,
    names: Names,
}

impl Avro {
    pub(crate) fn parse(schema: &str, references: &[(String, String)]) -> Result<Self, String> {
        let (root, references) =
            Schema::parse_str_with_list(schema, references.iter().map(|(_, s)| s.as_str()))
                .map_err(|e| format!("cannot parse the Avro schema: {e}"))?;
        let mut all = vec![&root];
        all.extend(references.iter());
        let names = ResolvedSchema::new_with_schemata(all)
            .map_err(|e| format!("cannot resolve the Avro schema: {e}"))?
            .get_names()
            .iter()
            .map(|(n, s)| (n.clone(), (*s).clone()))
            .collect();
        if recursive(&root, &names, &mut Vec::new()) {
            // A recursive type lets one record nest as deep as its length
            // allows, and the decoder recurses per level: a hostile record
            // of a megabyte would overflow the ingest thread's stack.
            return Err("the Avro schema is recursive (a type contains itself); herald does not read recursive Avro types".into());
        }
        Ok(Self {
            root,
            references,
            names,
        })
    }

    fn resolved(&self) -> apache_avro::AvroResult<ResolvedSchema<'_>> {
        let mut all = vec![&self.root];
        all.extend(self.references.iter());
        ResolvedSchema::new_with_schemata(all)
    }

    /// Decodes one datum written with this schema into JSON.
    pub(crate) fn decode(&self, mut payload: &[u8]) -> Result<Json, Rejected> {
        let bad = |e: String| Rejected::new(Skip::Decode, e);
        let reader = apache_avro::reader::datum::GenericDatumReader::builder(&self.root)
            .resolved_writer_schemata(self.resolved().map_err(|e| bad(e.to_string()))?)
            .build()
            .map_err(|e| bad(e.to_string()))?;
        let value = reader
            .read_value(&mut payload)
            .map_err(|e| bad(format!("not an Avro datum of its schema: {e}")))?;
        if !payload.is_empty() {
            return Err(bad(format!(
                "{} bytes left after the Avro datum",
                payload.len()
            )));
        }
        to_json(value, &self.root, &self.names).map_err(bad)
    }
}

type Names = std::collections::HashMap<apache_avro::schema::Name, Schema>;

/// Whether `schema` contains a named type inside itself. `stack`: the full
/// names of the records being walked.
fn recursive(schema: &Schema, names: &Names, stack: &mut Vec<String>) -> bool {
    match schema {
        // A reference to a record being walked is recursion; any other is
        // walked (the record pushes its own name).
        Schema::Ref { name } => {
            stack.contains(&name.fullname(None))
                || names.get(name).is_some_and(|s| recursive(s, names, stack))
        }
        Schema::Record(r) => {
            let full = r.name.fullname(None);
            if stack.contains(&full) {
                return true;
            }
            stack.push(full);
            let found = r.fields.iter().any(|f| recursive(&f.schema, names, stack));
            stack.pop();
            found
        }
        Schema::Array(a) => recursive(&a.items, names, stack),
        Schema::Map(m) => recursive(&m.types, names, stack),
        Schema::Union(u) => u.variants().iter().any(|v| recursive(v, names, stack)),
        _ => false,
    }
}

/// Follows named references to the schema they name.
fn deref<'a>(mut schema: &'a Schema, names: &'a Names) -> &'a Schema {
    for _ in 0..64 {
        match schema {
            Schema::Ref { name } => match names.get(name) {
                Some(s) => schema = s,
                None => return schema,
            },
            _ => return schema,
        }
    }
    schema
}

/// `value` (read with `schema`) as JSON, by the rule above.
pub(crate) fn to_json<'a>(
    value: Value,
    schema: &'a Schema,
    names: &'a Names,
) -> Result<Json, String> {
    let schema = deref(schema, names);
    Ok(match value {
        Value::Null => Json::Null,
        Value::Boolean(b) => Json::Bool(b),
        Value::Int(i) => Json::from(i),
        Value::Long(l) => Json::from(l),
        Value::Float(f) => float(f64::from(f)),
        Value::Double(f) => float(f),
        Value::Bytes(b) | Value::Fixed(_, b) => Json::String(base64(&b)),
        Value::String(s) | Value::Enum(_, s) => Json::String(s),
        Value::Uuid(u) => Json::String(u.to_string()),
        Value::Union(i, v) => {
            let branch = match schema {
                Schema::Union(u) => u
                    .variants()
                    .get(i as usize)
                    .ok_or("union branch out of range")?,
                s => s,
            };
            to_json(*v, branch, names)?
        }
        Value::Array(items) => {
            let item = match schema {
                Schema::Array(a) => &*a.items,
                s => s,
            };
            Json::Array(
                items
                    .into_iter()
                    .map(|v| to_json(v, item, names))
                    .collect::<Result<_, _>>()?,
            )
        }
        Value::Map(m) => {
            let item = match schema {
                Schema::Map(m) => &*m.types,
                s => s,
            };
            let mut keys: Vec<_> = m.into_iter().collect();
            keys.sort_by(|a, b| a.0.cmp(&b.0));
            let mut out = Map::with_capacity(keys.len());
            for (k, v) in keys {
                out.insert(k, to_json(v, item, names)?);
            }
            Json::Object(out)
        }
        Value::Record(fields) => {
            let mut out = Map::with_capacity(fields.len());
            for (name, v) in fields {
                let field = match schema {
                    Schema::Record(r) => r
                        .lookup
                        .get(&name)
                        .and_then(|i| r.fields.get(*i))
                        .map(|f| &f.schema),
                    _ => None,
                };
                let j = match field {
                    Some(f) => to_json(v, f, names)?,
                    None => to_json(v, &Schema::Null, names)?,
                };
                out.insert(name, j);
            }
            Json::Object(out)
        }
        Value::Decimal(d) => {
            let scale = match schema {
                Schema::Decimal(DecimalSchema { scale, .. }) => *scale,
                _ => 0,
            };
            let bytes: Vec<u8> = Vec::try_from(&d).map_err(|e| e.to_string())?;
            Json::String(decimal(&bytes, scale)?)
        }
        Value::BigDecimal(d) => Json::String(d.to_string()),
        Value::Date(days) => Json::String(
            days.checked_add(719_163)
                .and_then(chrono::NaiveDate::from_num_days_from_ce_opt)
                .ok_or("date out of range")?
                .to_string(),
        ),
        Value::TimeMillis(ms) => Json::String(time(i64::from(ms) * 1_000_000, 3)?),
        Value::TimeMicros(us) => Json::String(time(us.saturating_mul(1000), 6)?),
        Value::TimestampMillis(v) => Json::String(stamp(v, 1_000_000, 3, true)?),
        Value::TimestampMicros(v) => Json::String(stamp(v, 1000, 6, true)?),
        Value::TimestampNanos(v) => Json::String(stamp(v, 1, 9, true)?),
        Value::LocalTimestampMillis(v) => Json::String(stamp(v, 1_000_000, 3, false)?),
        Value::LocalTimestampMicros(v) => Json::String(stamp(v, 1000, 6, false)?),
        Value::LocalTimestampNanos(v) => Json::String(stamp(v, 1, 9, false)?),
        Value::Duration(d) => serde_json::json!({
            "months": u32::from(d.months()),
            "days": u32::from(d.days()),
            "millis": u32::from(d.millis()),
        }),
    })
}

fn base64(b: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(b)
}

fn float(f: f64) -> Json {
    match serde_json::Number::from_f64(f) {
        Some(n) => Json::Number(n),
        None if f.is_nan() => Json::String("NaN".into()),
        None if f > 0.0 => Json::String("Infinity".into()),
        None => Json::String("-Infinity".into()),
    }
}

/// A big-endian two's-complement unscaled value with `scale` decimals.
fn decimal(bytes: &[u8], scale: usize) -> Result<String, String> {
    if bytes.len() > 16 {
        return Err(format!(
            "decimal of {} bytes (herald reads up to 16)",
            bytes.len()
        ));
    }
    let negative = bytes.first().is_some_and(|b| b & 0x80 != 0);
    let mut buf = [if negative { 0xff } else { 0 }; 16];
    buf[16 - bytes.len()..].copy_from_slice(bytes);
    let v = i128::from_be_bytes(buf);
    let digits = v.unsigned_abs().to_string();
    let mut out = String::with_capacity(digits.len() + scale + 3);
    if v < 0 {
        out.push('-');
    }
    if scale == 0 {
        out.push_str(&digits);
    } else if digits.len() > scale {
        let (int, frac) = digits.split_at(digits.len() - scale);
        out.push_str(int);
        out.push('.');
        out.push_str(frac);
    } else {
        out.push_str("0.");
        out.extend(std::iter::repeat_n('0', scale - digits.len()));
        out.push_str(&digits);
    }
    Ok(out)
}

/// Time of day from nanoseconds since midnight.
fn time(nanos: i64, digits: usize) -> Result<String, String> {
    let secs = u32::try_from(nanos.div_euclid(1_000_000_000)).map_err(|_| "time out of range")?;
    let sub = nanos.rem_euclid(1_000_000_000) as u32;
    let t = chrono::NaiveTime::from_num_seconds_from_midnight_opt(secs, sub)
        .ok_or("time out of range")?;
    Ok(t.format(match digits {
        3 => "%H:%M:%S%.3f",
        _ => "%H:%M:%S%.6f",
    })
    .to_string())
}

/// A timestamp of `v` units (`unit_ns` nanoseconds each) since the epoch.
fn stamp(v: i64, unit_ns: i64, digits: usize, utc: bool) -> Result<String, String> {
    let ns = i128::from(v) * i128::from(unit_ns);
    let secs = i64::try_from(ns.div_euclid(1_000_000_000)).map_err(|_| "timestamp out of range")?;
    let sub = ns.rem_euclid(1_000_000_000) as u32;
    let t = chrono::DateTime::from_timestamp(secs, sub).ok_or("timestamp out of range")?;
    let frac = match digits {
        3 => "%.3f",
        6 => "%.6f",
        _ => "%.9f",
    };
    let fmt = format!("%Y-%m-%dT%H:%M:%S{frac}{}", if utc { "Z" } else { "" });
    Ok(t.naive_utc().format(&fmt).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(schema: &str, value: Value) -> Json {
        let s = Schema::parse_str(schema).unwrap();
        #[allow(deprecated)]
        let mut bytes = apache_avro::to_avro_datum(&s, value).unwrap();
        let avro = Avro::parse(schema, &[]).unwrap();
        // The Confluent payload is the bare datum.
        let out = avro.decode(&bytes).unwrap();
        bytes.push(0);
        assert_eq!(
            avro.decode(&bytes).unwrap_err().skip,
            Skip::Decode,
            "trailing bytes"
        );
        out
    }

    #[test]
    fn primitives_unions_and_collections() {
        assert_eq!(one(r#""long""#, Value::Long(-5)), Json::from(-5));
        assert_eq!(
            one(r#""bytes""#, Value::Bytes(vec![0, 255])),
            Json::from("AP8=")
        );
        assert_eq!(
            one(r#""double""#, Value::Double(f64::NAN)),
            Json::from("NaN")
        );
        let union = r#"["null","string"]"#;
        assert_eq!(
            one(union, Value::Union(0, Box::new(Value::Null))),
            Json::Null
        );
        assert_eq!(
            one(union, Value::Union(1, Box::new(Value::String("x".into())))),
            Json::from("x")
        );
        let rec = r#"{"type":"record","name":"Order","fields":[
            {"name":"id","type":"string"},
            {"name":"customerId","type":["null","long"]},
            {"name":"status","type":{"type":"enum","name":"S","symbols":["NEW","PAID"]}},
            {"name":"tags","type":{"type":"array","items":"string"}},
            {"name":"attrs","type":{"type":"map","values":"int"}},
            {"name":"again","type":["null","S"]}]}"#;
        let v = Value::Record(vec![
            ("id".into(), Value::String("o-1".into())),
            (
                "customerId".into(),
                Value::Union(1, Box::new(Value::Long(42))),
            ),
            ("status".into(), Value::Enum(1, "PAID".into())),
            ("tags".into(), Value::Array(vec![Value::String("a".into())])),
            (
                "attrs".into(),
                Value::Map(
                    [
                        ("b".to_string(), Value::Int(2)),
                        ("a".to_string(), Value::Int(1)),
                    ]
                    .into(),
                ),
            ),
            (
                "again".into(),
                Value::Union(1, Box::new(Value::Enum(0, "NEW".into()))),
            ),
        ]);
        assert_eq!(
            one(rec, v).to_string(),
            r#"{"again":"NEW","attrs":{"a":1,"b":2},"customerId":42,"id":"o-1","status":"PAID","tags":["a"]}"#
        );
    }

    #[test]
    fn logical_types() {
        let dec = r#"{"type":"bytes","logicalType":"decimal","precision":9,"scale":2}"#;
        let v = Value::Decimal(apache_avro::Decimal::from(1230i32.to_be_bytes().to_vec()));
        assert_eq!(one(dec, v), Json::from("12.30"));
        let v = Value::Decimal(apache_avro::Decimal::from((-5i32).to_be_bytes().to_vec()));
        assert_eq!(one(dec, v), Json::from("-0.05"));
        let date = r#"{"type":"int","logicalType":"date"}"#;
        assert_eq!(one(date, Value::Date(20_788)), Json::from("2026-12-01"));
        assert_eq!(one(date, Value::Date(-1)), Json::from("1969-12-31"));
        let ts = r#"{"type":"long","logicalType":"timestamp-millis"}"#;
        assert_eq!(
            one(ts, Value::TimestampMillis(1_764_583_200_123)),
            Json::from("2025-12-01T10:00:00.123Z")
        );
        let ts = r#"{"type":"long","logicalType":"timestamp-micros"}"#;
        assert_eq!(
            one(ts, Value::TimestampMicros(-1)),
            Json::from("1969-12-31T23:59:59.999999Z")
        );
        let lts = r#"{"type":"long","logicalType":"local-timestamp-millis"}"#;
        assert_eq!(
            one(lts, Value::LocalTimestampMillis(0)),
            Json::from("1970-01-01T00:00:00.000")
        );
        let t = r#"{"type":"int","logicalType":"time-millis"}"#;
        assert_eq!(
            one(t, Value::TimeMillis(3_723_004)),
            Json::from("01:02:03.004")
        );
        let u = r#"{"type":"string","logicalType":"uuid"}"#;
        let id = "6ba7b810-9dad-11d1-80b4-00c04fd430c8";
        assert_eq!(one(u, Value::Uuid(id.parse().unwrap())), Json::from(id));
    }

    /// The encodings the Avro specification gives as examples (binary
    /// encoding: zigzag longs, a string, the record of its complex types).
    #[test]
    fn the_specification_examples() {
        let long = Avro::parse(r#""long""#, &[]).unwrap();
        for (bytes, want) in [
            (&[0x00][..], 0),
            (&[0x01], -1),
            (&[0x02], 1),
            (&[0x03], -2),
            (&[0x04], 2),
            (&[0x7f], -64),
            (&[0x80, 0x01], 64),
        ] {
            assert_eq!(long.decode(bytes).unwrap(), Json::from(want), "{bytes:?}");
        }
        let s = Avro::parse(r#""string""#, &[]).unwrap();
        assert_eq!(
            s.decode(&[0x06, 0x66, 0x6f, 0x6f]).unwrap(),
            Json::from("foo")
        );
        // The spec's record example: {"a": 27 (long), "b": "foo"} is
        // 36 06 66 6f 6f.
        let r = Avro::parse(
            r#"{"type":"record","name":"test","fields":[{"name":"a","type":"long"},{"name":"b","type":"string"}]}"#,
            &[],
        )
        .unwrap();
        assert_eq!(
            r.decode(&[0x36, 0x06, 0x66, 0x6f, 0x6f]).unwrap(),
            serde_json::json!({"a": 27, "b": "foo"})
        );
        // An array of longs {3, 27}: 04 06 36 00.
        let a = Avro::parse(r#"{"type":"array","items":"long"}"#, &[]).unwrap();
        assert_eq!(
            a.decode(&[0x04, 0x06, 0x36, 0x00]).unwrap(),
            serde_json::json!([3, 27])
        );
        // The union ["null","string"]: null is 00; "a" is 02 02 61.
        let u = Avro::parse(r#"["null","string"]"#, &[]).unwrap();
        assert_eq!(u.decode(&[0x00]).unwrap(), Json::Null);
        assert_eq!(u.decode(&[0x02, 0x02, 0x61]).unwrap(), Json::from("a"));
    }

    /// Dates, times and timestamps at the ends of their ranges are a decode
    /// error (the record is a poison record), never an overflow.
    #[test]
    fn out_of_range_dates_and_times_are_errors() {
        fn datum(schema: &str, value: Value) -> Vec<u8> {
            #[allow(deprecated)]
            apache_avro::to_avro_datum(&Schema::parse_str(schema).unwrap(), value).unwrap()
        }
        let date = Avro::parse(r#"{"type":"int","logicalType":"date"}"#, &[]).unwrap();
        for days in [i32::MAX, i32::MIN, 2_000_000_000] {
            let bytes = datum(r#""int""#, Value::Int(days));
            assert!(date.decode(&bytes).is_err(), "date {days}");
        }
        let ts = r#"{"type":"long","logicalType":"timestamp-millis"}"#;
        let ts = Avro::parse(ts, &[]).unwrap();
        let t = Avro::parse(r#"{"type":"long","logicalType":"time-micros"}"#, &[]).unwrap();
        for v in [i64::MAX, i64::MIN] {
            let bytes = datum(r#""long""#, Value::Long(v));
            assert!(ts.decode(&bytes).is_err(), "timestamp {v}");
            assert!(t.decode(&bytes).is_err(), "time {v}");
        }
    }

    #[test]
    fn junk_is_a_decode_error_not_a_panic() {
        let avro = Avro::parse(r#"{"type":"array","items":"string"}"#, &[]).unwrap();
        for junk in [&[0x01][..], &[0x7f, 0x7f, 0x7f], &[0x02, 0x10, b'a']] {
            assert_eq!(avro.decode(junk).unwrap_err().skip, Skip::Decode);
        }
        assert!(Avro::parse("{", &[]).is_err());
        let list = r#"{"type":"record","name":"L","fields":[{"name":"next","type":["null","L"]}]}"#;
        let e = Avro::parse(list, &[]).unwrap_err();
        assert!(e.contains("recursive"), "{e}");
        let nested = r#"{"type":"record","name":"A","fields":[{"name":"b","type":{"type":"array","items":
            {"type":"record","name":"B","fields":[{"name":"a","type":{"type":"map","values":"A"}}]}}}]}"#;
        assert!(Avro::parse(nested, &[]).unwrap_err().contains("recursive"));
        // The same named type twice, side by side, is not recursion.
        let twice = r#"{"type":"record","name":"P","fields":[
            {"name":"x","type":{"type":"record","name":"Q","fields":[{"name":"v","type":"int"}]}},
            {"name":"y","type":"Q"}]}"#;
        assert!(Avro::parse(twice, &[]).is_ok());
    }
}
