use super::*;

fn name(s: &str) -> Name {
    Name::new(s).unwrap()
}

fn load(ext: &str, text: &str) -> Result<Mappings, String> {
    let dir = std::env::temp_dir().join(format!(
        "herald-mapping-{}-{ext}-{}",
        std::process::id(),
        text.len()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("m.{ext}"));
    std::fs::write(&path, text).unwrap();
    Mappings::load(&path)
}

fn rule(text: &str) -> Rule {
    let m = load("toml", text).unwrap();
    let topic: Arc<str> = Arc::from(m.topics().next().unwrap());
    (*m.rules_for(&[topic])[0]).clone()
}

fn apply<'a>(
    r: &Rule,
    key: Option<&'a [u8]>,
    headers: &[(&'a str, Option<&'a [u8]>)],
    value: &'a [u8],
) -> Result<Event<'a>, Rejected> {
    r.apply(key, headers, Some(value), None)
}

#[test]
fn the_default_rule_is_the_old_contract() {
    let r = default_rule("messages");
    let m = apply(&r, Some(b"123"), &[], br#"{"a":1}"#).unwrap();
    assert_eq!(m.target, Target::User(name("123")));
    assert_eq!((m.kind(), &*m.data), (None, r#"{"a":1}"#));
    assert!(
        matches!(m.data, Cow::Borrowed(_)),
        "text passes through without a copy"
    );
    assert_eq!(
        apply(&r, None, &[], b"x").unwrap().target,
        Target::Broadcast
    );
    let h = [
        ("sse-topic", Some(&b"news"[..])),
        ("sse-event", Some(&b"headline"[..])),
    ];
    let m = apply(&r, Some(b"123"), &h, b"line1\nline2").unwrap();
    assert_eq!(m.target, Target::Topic(name("news")), "topic wins over key");
    assert_eq!(m.kind(), Some("headline"));
    assert_eq!(m.data, "line1\nline2", "value unchanged");
    let h = [
        ("sse-event", Some(&b"a"[..])),
        ("sse-event", Some(&b"b"[..])),
    ];
    assert_eq!(
        apply(&r, None, &h, b"").unwrap().kind(),
        Some("b"),
        "last header wins"
    );

    let skip = |key: Option<&[u8]>, h: &[(&str, Option<&[u8]>)], v: Option<&[u8]>| {
        r.apply(key, h, v, None).unwrap_err().skip
    };
    assert_eq!(skip(None, &[], Some(b"\xff")), Skip::ValueNotUtf8);
    assert_eq!(skip(None, &[], None), Skip::NoValue);
    assert_eq!(skip(Some(b"\xff"), &[], Some(b"x")), Skip::BadUser);
    assert_eq!(skip(Some(b""), &[], Some(b"x")), Skip::BadUser);
    assert_eq!(skip(Some(b"a\nb"), &[], Some(b"x")), Skip::BadUser);
    assert_eq!(
        skip(None, &[("sse-event", Some(b"a\nb"))], Some(b"x")),
        Skip::BadEvent
    );
    assert_eq!(
        skip(None, &[("sse-event", None)], Some(b"x")),
        Skip::BadEvent
    );
    assert_eq!(
        skip(None, &[("sse-topic", Some(b"\xff"))], Some(b"x")),
        Skip::BadTopic
    );
    assert_eq!(
        skip(None, &[("sse-event", Some(b"herald-reset"))], Some(b"x")),
        Skip::ReservedEvent
    );
}

#[test]
fn users_topics_and_events_from_fields_headers_and_constants() {
    let r = rule(
        r#"
[[topics]]
topic = "orders"
value = "json"
user = "field:/customer/id"
event = "const:order"
drop = ["/card", "/customer/email"]
"#,
    );
    let v = br#"{"id":"o1","customer":{"id":42,"email":"a@b"},"card":"4111"}"#;
    let m = apply(&r, Some(b"o1"), &[], v).unwrap();
    assert_eq!(m.target, Target::User(name("42")), "a number names a user");
    assert_eq!(m.kind(), Some("order"));
    assert_eq!(
        m.data, r#"{"customer":{"id":42},"id":"o1"}"#,
        "PII dropped before encoding"
    );
    // Absent, null, wrong type; and the file's default: no user, skip.
    assert_eq!(
        apply(&r, None, &[], br#"{"customer":{}}"#)
            .unwrap_err()
            .skip,
        Skip::NoUser
    );
    assert_eq!(
        apply(&r, None, &[], br#"{"customer":{"id":null}}"#)
            .unwrap_err()
            .skip,
        Skip::NoUser
    );
    assert_eq!(
        apply(&r, None, &[], br#"{"customer":{"id":{"x":1}}}"#)
            .unwrap_err()
            .skip,
        Skip::BadUser
    );
    assert_eq!(apply(&r, None, &[], b"{").unwrap_err().skip, Skip::NotJson);
    // An array of users: one event, each stream once.
    let m = apply(&r, None, &[], br#"{"customer":{"id":["a","b","a",null]}}"#).unwrap();
    assert_eq!(
        m.target,
        Target::Many(
            vec![
                Target::User(name("a")),
                Target::User(name("b")),
                Target::User(name("a"))
            ]
            .into()
        )
    );
    let many: Vec<String> = (0..65).map(|i| format!("\"u{i}\"")).collect();
    let v = format!(r#"{{"customer":{{"id":[{}]}}}}"#, many.join(","));
    assert_eq!(
        apply(&r, None, &[], v.as_bytes()).unwrap_err().skip,
        Skip::TooManyTargets
    );

    let r = rule(
        r#"
[[topics]]
topic = "prices"
value = "json"
user = "none"
sse_topic = "const:prices"
event = "field:/kind"
data = "/quote"
"#,
    );
    let m = apply(
        &r,
        None,
        &[],
        br#"{"kind":"tick","quote":{"p":1.5},"secret":1}"#,
    )
    .unwrap();
    assert_eq!(m.target, Target::Topic(name("prices")));
    assert_eq!((m.kind(), &*m.data), (Some("tick"), r#"{"p":1.5}"#));
    assert_eq!(
        apply(&r, None, &[], br#"{"kind":"tick"}"#)
            .unwrap_err()
            .skip,
        Skip::NoData
    );
    assert_eq!(
        apply(&r, None, &[], br#"{"kind":"a\nb","quote":1}"#)
            .unwrap_err()
            .skip,
        Skip::BadEvent
    );
    assert_eq!(
        apply(&r, None, &[], br#"{"kind":["a"],"quote":1}"#)
            .unwrap_err()
            .skip,
        Skip::BadEvent
    );

    let r = rule(
        r#"
[[topics]]
topic = "alerts"
value = "json"
user = "header:x-user"
sse_topic = "field:/rooms"
no_user = "broadcast"
"#,
    );
    let h = [("x-user", Some(&b"u1"[..]))];
    assert_eq!(
        apply(&r, None, &h, b"{}").unwrap().target,
        Target::User(name("u1"))
    );
    assert_eq!(
        apply(&r, None, &[], b"{}").unwrap().target,
        Target::Broadcast
    );
    let m = apply(&r, None, &h, br#"{"rooms":["r1","r2"]}"#).unwrap();
    assert_eq!(
        m.target,
        Target::Many(vec![Target::Topic(name("r1")), Target::Topic(name("r2"))].into())
    );
    assert_eq!(
        apply(&r, None, &[], br#"{"rooms":"r1"}"#).unwrap().target,
        Target::Topic(name("r1"))
    );
    assert_eq!(
        apply(&r, None, &[], br#"{"rooms":[""]}"#).unwrap_err().skip,
        Skip::BadTopic
    );
    assert!(
        matches!(apply(&r, None, &h, b"[1]").unwrap().data, Cow::Borrowed(_)),
        "no projection: no copy"
    );
}

#[test]
fn yaml_reads_the_same_rules() {
    let y = load(
        "yaml",
        "topics:\n  - topic: orders\n    value: json\n    user: field:/customerId\n    drop: [/email]\n",
    )
    .unwrap();
    let t = load(
        "toml",
        "[[topics]]\ntopic = \"orders\"\nvalue = \"json\"\nuser = \"field:/customerId\"\ndrop = [\"/email\"]\n",
    )
    .unwrap();
    assert_eq!(y.rules, t.rules);
    assert_eq!(y.topics().collect::<Vec<_>>(), vec!["orders"]);
    assert!(!y.needs_registry());
}

#[test]
fn file_errors_name_the_file_line_and_rule() {
    let e = load("toml", "[[topics]]\ntopic = \"a\"\nuser = \"feld:/x\"\n").unwrap_err();
    assert!(
        e.contains("m.toml") && e.contains("line 3") && e.contains("is not a source"),
        "{e}"
    );
    let e = load("yaml", "topics:\n  - topic: a\n    user: \"field:x\"\n").unwrap_err();
    assert!(
        e.contains("m.yaml")
            && e.contains("topics[0]")
            && e.contains("line 2")
            && e.contains("not a JSON pointer"),
        "{e}"
    );
    let e = load("toml", "[[topics]]\ntopic = \"a\"\nvalu = \"json\"\n").unwrap_err();
    assert!(e.contains("line 3") && e.contains("valu"), "{e}");
    let e = load(
        "toml",
        "[[topics]]\ntopic = \"a\"\n\n[[topics]]\ntopic = \"b\"\nuser = \"field:/u\"\n",
    )
    .unwrap_err();
    assert!(
        e.contains("line 5")
            && e.contains("rule 2")
            && e.contains("\"b\"")
            && e.contains("value = \"string\""),
        "{e}"
    );
    let e = load(
        "toml",
        "[[topics]]\ntopic = \"a\"\n[[topics]]\ntopic = \"a\"\n",
    )
    .unwrap_err();
    assert!(e.contains("second rule"), "{e}");
    let e = load("toml", "[[topics]]\ntopic = \"a b\"\n").unwrap_err();
    assert!(e.contains("rule 1"), "{e}");
    let e = load(
        "toml",
        "[[topics]]\ntopic = \"a\"\nvalue = \"json\"\nevent = \"const:herald-x\"\n",
    )
    .unwrap_err();
    assert!(e.contains("event"), "{e}");
    let e = load("toml", "[[topics]]\ntopic = \"a\"\nvalue = \"xml\"\n").unwrap_err();
    assert!(e.contains("line 3") && e.contains("xml"), "{e}");
    let e = load("toml", "[[topics]]\ntopic = \"a\"\ndata = \"/x\"\n").unwrap_err();
    assert!(e.contains("data and drop need a JSON value"), "{e}");
    let e = load("json", "{}").unwrap_err();
    assert!(e.contains(".toml, .yaml or .yml"), "{e}");
    assert!(
        load("toml", "[[topics]]\ntopic = \"a\"\nvalue = \"avro\"\n")
            .unwrap()
            .needs_registry()
    );
}

#[test]
fn a_json_key_names_the_user() {
    let r = rule("[[topics]]\ntopic = \"k\"\nkey = \"json\"\nvalue = \"json\"\n");
    assert_eq!(
        apply(&r, Some(br#""u1""#), &[], b"{}").unwrap().target,
        Target::User(name("u1"))
    );
    assert_eq!(
        apply(&r, Some(b"42"), &[], b"{}").unwrap().target,
        Target::User(name("42"))
    );
    assert_eq!(
        apply(&r, Some(b"null"), &[], b"{}").unwrap_err().skip,
        Skip::NoUser
    );
    assert_eq!(
        apply(&r, Some(b"{"), &[], b"{}").unwrap_err().skip,
        Skip::BadUser
    );
    assert_eq!(
        apply(&r, Some(br#"{"a":1}"#), &[], b"{}").unwrap_err().skip,
        Skip::BadUser
    );
}
