//! How a Kafka record becomes an event: one [`Rule`] per Kafka topic, from
//! `--kafka-mapping FILE` (TOML or YAML), or the default rule (key -> user,
//! no key -> broadcast, `sse-topic` / `sse-event` headers, the value as UTF-8
//! text) for topics the file does not name.
//!
//! A rule says where the user, the SSE topic and the event type come from
//! (the key, a header, a field of the decoded value by JSON pointer, or a
//! constant), what happens when no user is named (broadcast or skip), and
//! what of the value is sent (all of it, a sub-document, minus dropped
//! fields). Rules are checked when the file is loaded; errors name the file,
//! the line and the rule. Applying one runs on the ingest side, never under
//! the dispatch lock; a record that is text and needs no field or
//! projection is passed through without a copy, as before.

use std::borrow::Cow;
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;
use serde_json::Value as Json;

use super::format::{Decoded, Format, Registry};
use super::record::{Rejected, Skip, EVENT_HEADER, TOPIC_HEADER};
use crate::event::{Event, Name, Target};
use crate::sse::frame;

/// Most users or topics one record may be sent to.
pub(crate) const MAX_TARGETS: usize = 64;

/// Where a value comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Source {
    /// The record's key (user only).
    Key,
    /// A header's value (the last of that name).
    Header(String),
    /// A field of the decoded value, by JSON pointer; an array names several.
    Field(String),
    /// The same for every record.
    Const(String),
}

/// What a record that names no user (and no topic) becomes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum NoUser {
    Broadcast,
    Skip,
}

/// The rule for one Kafka topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Rule {
    pub(crate) topic: String,
    pub(crate) key: Format,
    pub(crate) value: Format,
    /// `None`: records have no user (they go to SSE topics or everyone).
    pub(crate) user: Option<Source>,
    pub(crate) sse_topic: Option<Source>,
    pub(crate) event: Option<Source>,
    pub(crate) no_user: NoUser,
    /// JSON pointer of the part of the value sent; `None`: all of it.
    pub(crate) data: Option<String>,
    /// JSON pointers removed from what is sent.
    pub(crate) drop: Vec<String>,
}

/// Every topic's rule.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Mappings {
    file: Option<PathBuf>,
    rules: Vec<Arc<Rule>>,
}

/// The rule for topics the file does not name: today's contract.
pub(crate) fn default_rule(topic: &str) -> Rule {
    Rule {
        topic: topic.to_owned(),
        key: Format::String,
        value: Format::String,
        user: Some(Source::Key),
        sse_topic: Some(Source::Header(TOPIC_HEADER.into())),
        event: Some(Source::Header(EVENT_HEADER.into())),
        no_user: NoUser::Broadcast,
        data: None,
        drop: Vec::new(),
    }
}

// === the file ===

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileDoc {
    topics: Vec<FileRule>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileRule {
    topic: String,
    #[serde(default)]
    key: Format,
    #[serde(default)]
    value: Format,
    #[serde(default = "default_user")]
    user: SourceText,
    #[serde(default = "default_sse_topic")]
    sse_topic: SourceText,
    #[serde(default = "default_event")]
    event: SourceText,
    #[serde(default = "default_no_user")]
    no_user: NoUser,
    #[serde(default)]
    data: Option<PointerText>,
    #[serde(default)]
    drop: Vec<PointerText>,
}

fn default_user() -> SourceText {
    SourceText(Some(Source::Key))
}
fn default_sse_topic() -> SourceText {
    SourceText(Some(Source::Header(TOPIC_HEADER.into())))
}
fn default_event() -> SourceText {
    SourceText(Some(Source::Header(EVENT_HEADER.into())))
}
fn default_no_user() -> NoUser {
    NoUser::Skip
}

/// `key`, `header:NAME`, `field:/json/pointer`, `const:VALUE` or `none`,
/// checked while the file is read (so an error carries its line).
#[derive(Debug, Deserialize)]
#[serde(try_from = "String")]
struct SourceText(Option<Source>);

impl TryFrom<String> for SourceText {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        let source = if s == "key" {
            Source::Key
        } else if s == "none" {
            return Ok(SourceText(None));
        } else if let Some(h) = s.strip_prefix("header:") {
            if h.is_empty() {
                return Err(format!("{s:?}: the header name is empty"));
            }
            Source::Header(h.to_owned())
        } else if let Some(p) = s.strip_prefix("field:") {
            check_pointer(p)?;
            Source::Field(p.to_owned())
        } else if let Some(c) = s.strip_prefix("const:") {
            Source::Const(c.to_owned())
        } else {
            return Err(format!(
                "{s:?} is not a source: use key, header:NAME, field:/json/pointer, const:VALUE or none"
            ));
        };
        Ok(SourceText(Some(source)))
    }
}

/// A JSON pointer (RFC 6901): empty, or `/` then tokens with `~0` / `~1`.
#[derive(Debug, Deserialize)]
#[serde(try_from = "String")]
struct PointerText(String);

impl TryFrom<String> for PointerText {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        check_pointer(&s)?;
        Ok(PointerText(s))
    }
}

fn check_pointer(p: &str) -> Result<(), String> {
    if !p.starts_with('/') {
        return Err(format!(
            "{p:?} is not a JSON pointer (it starts with /, e.g. /customer/id)"
        ));
    }
    let mut chars = p.chars();
    while let Some(c) = chars.next() {
        if c == '~' && !matches!(chars.next(), Some('0' | '1')) {
            return Err(format!(
                "{p:?}: `~` must be followed by 0 or 1 in a JSON pointer"
            ));
        }
    }
    Ok(())
}

impl Mappings {
    /// Reads and checks a mapping file (`.toml`, `.yaml` or `.yml`).
    pub fn load(path: &Path) -> Result<Self, String> {
        let shown = path.display();
        let text = std::fs::read_to_string(path).map_err(|e| format!("{shown}: {e}"))?;
        let doc: FileDoc = match path.extension().and_then(|e| e.to_str()) {
            Some("toml") => toml::from_str(&text).map_err(|e| format!("{shown}: {e}"))?,
            Some("yaml" | "yml") => {
                serde_yaml_ng::from_str(&text).map_err(|e| format!("{shown}: {e}"))?
            }
            _ => {
                return Err(format!(
                    "{shown}: the file name must end in .toml, .yaml or .yml"
                ))
            }
        };
        let mut rules = Vec::new();
        let mut seen = HashSet::new();
        for (i, r) in doc.topics.into_iter().enumerate() {
            let at = |problem: String| {
                let line = line_of(&text, &r.topic)
                    .map(|l| format!(", line {l}"))
                    .unwrap_or_default();
                format!(
                    "{shown}{line}: rule {} (topic {:?}): {problem}",
                    i + 1,
                    r.topic
                )
            };
            crate::config::parse::kafka_topic(&r.topic).map_err(|e| at(e.to_string()))?;
            if !seen.insert(r.topic.clone()) {
                return Err(at("a second rule for the same topic".into()));
            }
            let rule = Rule {
                topic: r.topic.clone(),
                key: r.key,
                value: r.value,
                user: r.user.0,
                sse_topic: r.sse_topic.0,
                event: r.event.0,
                no_user: r.no_user,
                data: r.data.map(|p| p.0),
                drop: r.drop.into_iter().map(|p| p.0).collect(),
            };
            rule.check().map_err(at)?;
            rules.push(Arc::new(rule));
        }
        Ok(Self {
            file: Some(path.to_owned()),
            rules,
        })
    }

    /// The Kafka topics the file names, in its order.
    pub fn topics(&self) -> impl Iterator<Item = &str> {
        self.rules.iter().map(|r| r.topic.as_str())
    }

    /// Whether the file has a rule for `topic`.
    pub fn has_rule(&self, topic: &str) -> bool {
        self.rules.iter().any(|r| r.topic == topic)
    }

    /// Whether any rule reads a registry format.
    pub fn needs_registry(&self) -> bool {
        self.rules
            .iter()
            .any(|r| r.key.needs_registry() || r.value.needs_registry())
    }

    /// The rule for each of `topics` (the default one where the file has
    /// none), in that order.
    pub(crate) fn rules_for(&self, topics: &[Arc<str>]) -> Vec<Arc<Rule>> {
        topics
            .iter()
            .map(|t| {
                self.rules
                    .iter()
                    .find(|r| r.topic == **t)
                    .cloned()
                    .unwrap_or_else(|| Arc::new(default_rule(t)))
            })
            .collect()
    }
}

/// The first line of `text` that mentions `topic` (quoted), 1-based.
fn line_of(text: &str, topic: &str) -> Option<usize> {
    let quoted = [
        format!("\"{topic}\""),
        format!("'{topic}'"),
        format!(": {topic}"),
    ];
    text.lines()
        .position(|l| quoted.iter().any(|q| l.contains(q.as_str())))
        .map(|i| i + 1)
}

// === impl Rule ===

impl Rule {
    /// Cross-field checks a file's syntax cannot express.
    fn check(&self) -> Result<(), String> {
        let fields = |what: &str, s: &Option<Source>| {
            match s {
            Some(Source::Field(p)) if !self.value.has_fields() => Err(format!(
                "{what} = \"field:{p}\" reads a field, but value = \"string\" has none (use json, avro, protobuf or json-schema)"
            )),
            Some(Source::Const(c)) if what == "user" => Err(format!(
                "user = \"const:{c}\": every record to one user is not a rule (send to an SSE topic instead)"
            )),
            Some(Source::Key) if what != "user" => {
                Err(format!("{what} = \"key\": only the user may come from the key"))
            }
            _ => Ok(()),
        }
        };
        fields("user", &self.user)?;
        fields("sse_topic", &self.sse_topic)?;
        fields("event", &self.event)?;
        if !self.value.has_fields() && (self.data.is_some() || !self.drop.is_empty()) {
            return Err(
                "data and drop need a JSON value (value = json, avro, protobuf or json-schema)"
                    .into(),
            );
        }
        if let Some(Source::Const(t)) = &self.sse_topic {
            Name::new(t).map_err(|e| format!("sse_topic = \"const:{t}\": the name {e}"))?;
        }
        if let Some(Source::Const(e)) = &self.event {
            frame::check_event_type(e).map_err(|err| format!("event = \"const:{e}\": {err}"))?;
        }
        Ok(())
    }

    /// Whether applying the rule needs the value as a JSON tree.
    fn needs_tree(&self) -> bool {
        let field = |s: &Option<Source>| matches!(s, Some(Source::Field(_)));
        field(&self.user)
            || field(&self.sse_topic)
            || field(&self.event)
            || self.data.is_some()
            || !self.drop.is_empty()
    }

    /// The event for one record. `headers`: the record's headers in order
    /// (a later one of the same name wins).
    pub(crate) fn apply<'a>(
        &self,
        key: Option<&'a [u8]>,
        headers: &[(&'a str, Option<&'a [u8]>)],
        value: Option<&'a [u8]>,
        registry: Option<&Registry>,
    ) -> Result<Event<'a>, Rejected> {
        let value = value.ok_or(Skip::NoValue)?;
        let decoded = self.value.decode(value, self.needs_tree(), registry)?;
        let tree = match &decoded {
            Decoded::Tree(t, _) => Some(t),
            Decoded::Text(_) => None,
        };
        let header = |name: &str| {
            headers
                .iter()
                .rev()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| v.unwrap_or_default())
        };

        let event = match &self.event {
            None => None,
            Some(s) => match self.names(s, key, &header, tree, registry, Skip::BadEvent)? {
                Names::None => None,
                Names::One(e) => {
                    frame::check_event_type(&e).map_err(|err| match err {
                        frame::FieldError::Reserved => Skip::ReservedEvent,
                        _ => Skip::BadEvent,
                    })?;
                    Some(e)
                }
                Names::Many(_) => {
                    return Err(Rejected::new(
                        Skip::BadEvent,
                        "a list where one event type belongs".into(),
                    ))
                }
            },
        };

        let target = self.target(key, &header, tree, registry)?;

        let data: Cow<'a, str> = match decoded {
            Decoded::Text(t) => Cow::Borrowed(t),
            // Fields were read, nothing is cut: the record's own text.
            Decoded::Tree(_, Some(raw)) if self.data.is_none() && self.drop.is_empty() => {
                Cow::Borrowed(raw)
            }
            Decoded::Tree(mut t, _) => {
                if let Some(p) = &self.data {
                    t = t
                        .pointer_mut(p)
                        .map(Json::take)
                        .ok_or_else(|| Rejected::new(Skip::NoData, format!("no field at {p}")))?;
                }
                for p in &self.drop {
                    remove(&mut t, p);
                }
                Cow::Owned(t.to_string())
            }
        };
        Ok(Event {
            target,
            kind: event,
            data,
            id: None,
            timestamp_us: 0,
        })
    }

    fn target<'a>(
        &self,
        key: Option<&'a [u8]>,
        header: &impl Fn(&str) -> Option<&'a [u8]>,
        tree: Option<&Json>,
        registry: Option<&Registry>,
    ) -> Result<Target, Rejected> {
        // One name (every record of the default rule) makes one `Name`
        // and no list; a field's list is checked, bounded and merged.
        let named = |s: &Option<Source>,
                     bad: Skip,
                     make: fn(Name) -> Target|
         -> Result<Option<Target>, Rejected> {
            let name = |n: &str| Name::new(n).map_err(|e| Rejected::new(bad, format!("{n:?} {e}")));
            let Some(s) = s else { return Ok(None) };
            match self.names(s, key, header, tree, registry, bad)? {
                Names::None => Ok(None),
                Names::One(n) => Ok(Some(make(name(&n)?))),
                Names::Many(list) if list.len() > MAX_TARGETS => Err(Rejected::new(
                    Skip::TooManyTargets,
                    format!("{} names; at most {MAX_TARGETS}", list.len()),
                )),
                Names::Many(list) if list.is_empty() => Ok(None),
                Names::Many(list) => Ok(Some(many(
                    list.iter()
                        .map(|n| name(n).map(make))
                        .collect::<Result<_, _>>()?,
                ))),
            }
        };
        if let Some(t) = named(&self.sse_topic, Skip::BadTopic, Target::Topic)? {
            return Ok(t);
        }
        if let Some(t) = named(&self.user, Skip::BadUser, Target::User)? {
            return Ok(t);
        }
        match (self.user.is_some(), self.no_user) {
            (true, NoUser::Skip) => Err(Skip::NoUser.into()),
            _ => Ok(Target::Broadcast),
        }
    }

    /// The name(s) a source yields for one record.
    fn names<'a>(
        &self,
        source: &Source,
        key: Option<&'a [u8]>,
        header: &impl Fn(&str) -> Option<&'a [u8]>,
        tree: Option<&Json>,
        registry: Option<&Registry>,
        bad: Skip,
    ) -> Result<Names<'a>, Rejected> {
        let text = |b: &'a [u8]| -> Result<Cow<'a, str>, Rejected> {
            std::str::from_utf8(b)
                .map(Cow::Borrowed)
                .map_err(|_| Rejected::new(bad, "not UTF-8".into()))
        };
        Ok(match source {
            Source::Const(c) => Names::One(Cow::Owned(c.clone())),
            Source::Header(h) => match header(h) {
                Some(v) => Names::One(text(v)?),
                None => Names::None,
            },
            Source::Key => match key {
                None => Names::None,
                Some(k) => match self
                    .key
                    .decode(k, true, registry)
                    // An unreadable key is a bad name; a registry that
                    // can not be asked keeps its own reason.
                    .map_err(|r| match r.skip {
                        Skip::UnknownSchema | Skip::RegistryUnavailable | Skip::BadSchema => r,
                        _ => Rejected { skip: bad, ..r },
                    })? {
                    Decoded::Text(t) => Names::One(Cow::Borrowed(t)),
                    Decoded::Tree(j, _) => scalar(&j, bad, "the key")?
                        .map_or(Names::None, |s| Names::One(Cow::Owned(s))),
                },
            },
            Source::Field(p) => match tree.and_then(|t| t.pointer(p)) {
                None | Some(Json::Null) => Names::None,
                Some(Json::Array(items)) => Names::Many(
                    items
                        .iter()
                        .filter_map(|j| scalar(j, bad, p).transpose())
                        .collect::<Result<_, _>>()?,
                ),
                Some(j) => scalar(j, bad, p)?.map_or(Names::None, |s| Names::One(Cow::Owned(s))),
            },
        })
    }
}

enum Names<'a> {
    None,
    One(Cow<'a, str>),
    Many(Vec<String>),
}

/// A JSON scalar as a name: strings as they are, numbers and booleans in
/// their JSON form; `null` is none; objects and arrays are an error.
fn scalar(j: &Json, bad: Skip, what: &str) -> Result<Option<String>, Rejected> {
    match j {
        Json::Null => Ok(None),
        Json::String(s) => Ok(Some(s.clone())),
        Json::Number(n) => Ok(Some(n.to_string())),
        Json::Bool(b) => Ok(Some(b.to_string())),
        _ => Err(Rejected::new(
            bad,
            format!("{what} is an object or a list of lists"),
        )),
    }
}

/// One target, or several delivered once to each stream they reach.
fn many(mut targets: Vec<Target>) -> Target {
    targets.dedup();
    if targets.len() == 1 {
        targets.pop().unwrap_or(Target::Broadcast)
    } else {
        Target::Many(targets.into())
    }
}

/// The rules of every topic a node reads, and the registry they decode
/// with: shared by ingest and the catch-up readers.
#[derive(Debug)]
pub(crate) struct Mapper {
    topics: Vec<Arc<str>>,
    rules: Vec<Arc<Rule>>,
    registry: Option<Registry>,
}

impl Mapper {
    pub(crate) fn new(cfg: &crate::config::KafkaConfig) -> Self {
        let topics: Vec<Arc<str>> = cfg.topics.iter().map(|t| Arc::from(t.as_str())).collect();
        Self {
            rules: cfg.mappings.rules_for(&topics),
            topics,
            registry: cfg.schema_registry.as_ref().map(Registry::new),
        }
    }

    /// The node's topics, in `--kafka-topics` order (then the file's).
    pub(crate) fn topics(&self) -> &[Arc<str>] {
        &self.topics
    }

    /// The event for one record of topic `topic` (an index into
    /// [`Mapper::topics`]). `headers` is scratch space, reused.
    pub(crate) fn map<'a, M: rdkafka::Message>(
        &self,
        topic: usize,
        msg: &'a M,
        headers: &mut Vec<(&'a str, Option<&'a [u8]>)>,
    ) -> Result<Event<'a>, Rejected> {
        use rdkafka::message::Headers as _;
        headers.clear();
        if let Some(h) = msg.headers() {
            headers.extend(h.iter().map(|h| (h.key, h.value)));
        }
        let rule = self.rules.get(topic).ok_or(Skip::NoValue)?;
        rule.apply(msg.key(), headers, msg.payload(), self.registry.as_ref())
    }

    /// The index of a topic by name.
    pub(crate) fn topic(&self, name: &str) -> Option<usize> {
        self.topics.iter().position(|t| **t == *name)
    }
}

/// Removes what `pointer` names from `doc`, if present.
fn remove(doc: &mut Json, pointer: &str) {
    let Some((parent, last)) = pointer.rsplit_once('/') else {
        return;
    };
    let token = last.replace("~1", "/").replace("~0", "~");
    match doc.pointer_mut(parent) {
        Some(Json::Object(m)) => {
            m.remove(&token);
        }
        Some(Json::Array(a)) => {
            if let Ok(i) = token.parse::<usize>() {
                if i < a.len() {
                    a.remove(i);
                }
            }
        }
        _ => {}
    }
}

/// See `herald::bench::map_record`.
pub(crate) fn bench_case(format: &str) -> Box<dyn FnMut() -> usize> {
    use super::format::{avro::Avro, protobuf::Proto, Schema};
    const AVRO: &str = r#"{"type":"record","name":"Order","fields":[
        {"name":"id","type":"string"},{"name":"customerId","type":"string"},
        {"name":"card","type":"string"},{"name":"seq","type":"long"},
        {"name":"note","type":["null","string"]}]}"#;
    const PROTO: &str = "syntax = \"proto3\"; message Order { string id = 1; \
        string customer_id = 2; string card = 3; int64 seq = 4; string note = 5; }";
    let registry = Registry::new(&crate::config::SchemaRegistryConfig {
        url: "http://127.0.0.1:9".into(),
        basic_auth: None,
        ca: None,
    });
    let mapped = |value: Format| Rule {
        value,
        user: Some(Source::Field("/customerId".into())),
        drop: vec!["/card".into()],
        ..default_rule("orders")
    };
    let json = br#"{"id":"o-1","customerId":"c-42","card":"4111111111111111","seq":1,"note":"leave at the door"}"#;
    let (rule, key, value): (Rule, &[u8], Vec<u8>) = match format {
        "string" => (default_rule("orders"), b"c-42", json.to_vec()),
        "json" => (mapped(Format::Json), b"o-1", json.to_vec()),
        "avro" => {
            let a = Avro::parse(AVRO, &[]).unwrap_or_else(|e| unreachable!("{e}"));
            registry.hold(1, Arc::new(Schema::Avro(Box::new(a))));
            // id, customerId, card, seq, note (union branch 1).
            let mut v = vec![0, 0, 0, 0, 1];
            for s in ["o-1", "c-42", "4111111111111111"] {
                v.push((s.len() * 2) as u8);
                v.extend(s.as_bytes());
            }
            v.extend([2, 2, 34]);
            v.extend(b"leave at the door");
            (mapped(Format::Avro), b"o-1", v)
        }
        _ => {
            let p = Proto::parse(PROTO, &[]).unwrap_or_else(|e| unreachable!("{e}"));
            registry.hold(1, Arc::new(Schema::Protobuf(p)));
            let mut v = vec![0, 0, 0, 0, 1, 0];
            for (tag, s) in [(1u8, "o-1"), (2, "c-42"), (3, "4111111111111111")] {
                v.extend([tag << 3 | 2, s.len() as u8]);
                v.extend(s.as_bytes());
            }
            v.extend([4 << 3, 1, 5 << 3 | 2, 17]);
            v.extend(b"leave at the door");
            (mapped(Format::Protobuf), b"o-1", v)
        }
    };
    Box::new(
        move || match rule.apply(Some(key), &[], Some(&value), Some(&registry)) {
            Ok(e) => e.data.len(),
            Err(r) => unreachable!("bench record maps: {r}"),
        },
    )
}

#[cfg(test)]
mod tests;
