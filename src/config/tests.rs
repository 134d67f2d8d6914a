use super::*;

fn parsed(args: &[&str]) -> Result<Cli, String> {
    Cli::try_parse_from(std::iter::once("herald").chain(args.iter().copied()))
        .map_err(|e| e.to_string())
}

fn cli(args: &[&str]) -> Cli {
    parsed(args).unwrap()
}

/// The message a bad value gets, from clap's parser or from `validate`.
fn refused(args: &[&str]) -> String {
    match parsed(args) {
        Err(e) => e,
        Ok(c) => c.validate().unwrap_err().to_string(),
    }
}

#[test]
fn defaults_validate() {
    let c = Config::default_for_tests();
    assert_eq!(c.server.listen, "127.0.0.1:8080".parse().unwrap());
    assert_eq!(c.streams.heartbeat, Duration::from_secs(15));
    assert_eq!(c.server.max_connections, None);
    assert_eq!(c.streams.shards, 64);
    assert_eq!(c.streams.queue.max_bytes, 256 * 1024);
    assert_eq!(c.streams.replay.max_bytes, 64 << 20);
    assert_eq!(c.publish.max_body, 1 << 20);
    assert_eq!(c.server.max_header_bytes, 16 * 1024);
    assert_eq!(c.server.write_timeout, Some(Duration::from_secs(30)));
    assert_eq!(c.publish.backpressure, Some(Duration::from_secs(5)));
    assert_eq!(c.streams.write_coalesce, None);
    assert_eq!(
        c.streams.write_coalesce_busy,
        Some(Duration::from_millis(150))
    );
    assert_eq!(c.limits, Limits::default());
    assert_eq!(c.log.format, LogFormat::Text);
    assert!(c.server.sse_fast_path && c.metrics && c.auth.query_param);
    assert!(c.server.tls_own_records && c.server.own_http2);
}

#[test]
fn errors_name_the_flag() {
    for (args, flag) in [
        (&["--listen", "nope"][..], "--listen"),
        (&["--heartbeat-interval", "15"], "--heartbeat-interval"),
        (&["--shards", "3"], "--shards"),
        (&["--write-coalesce", "2s"], "--write-coalesce"),
        (&["--write-coalesce-busy", "2s"], "--write-coalesce-busy"),
        (&["--publish-backpressure", "61s"], "--publish-backpressure"),
        (
            &["--publish-backpressure", "soon"],
            "--publish-backpressure",
        ),
        (&["--queue-max-frames", "0"], "--queue-max-frames"),
        (&["--queue-max-bytes", "lots"], "--queue-max-bytes"),
        (&["--max-header-bytes", "100"], "--max-header-bytes"),
        (&["--max-connect-rate", "1e-30"], "--max-connect-rate"),
        (&["--log", "debugg"], "--log"),
        (&["--log-format", "yaml"], "--log-format"),
        (&["--shutdown-drain", "20s"], "--shutdown-deadline"),
        (
            &["--jwt-public-key", "/nonexistent.pem"],
            "--jwt-public-key",
        ),
        (&["--cors-origins", "app.example"], "--cors-origins"),
        (
            &["--trusted-proxies", "10.0.0.0/8,proxy"],
            "--trusted-proxies",
        ),
        (&["--trusted-proxies", "10.0.0.0/40"], "--trusted-proxies"),
        (
            &["--jwt-jwks-url", "http://idp.example/jwks"],
            "--jwt-jwks-url",
        ),
        (
            &["--jwt-jwks-url", "ftp://idp.example/jwks"],
            "--jwt-jwks-url",
        ),
        (
            &[
                "--jwt-jwks-url",
                "https://idp.example/jwks",
                "--jwt-jwks-refresh",
                "0s",
            ],
            "--jwt-jwks-refresh",
        ),
        (&["--admin-token", "0123456789abcdef0"], "--admin-token"),
        (
            &["--cors-origins", "*", "--cors-credentials"],
            "--cors-origins",
        ),
        (
            &["--tls-cert", "Cargo.toml", "--tls-key", "Cargo.toml"],
            "--tls-cert",
        ),
        (
            &[
                "--tls-cert",
                "tests/keys/tls-cert.pem",
                "--tls-key",
                "tests/keys/ec-private.pem",
            ],
            "--tls-key",
        ),
    ] {
        let e = refused(args);
        assert!(e.contains(flag), "{args:?}: {e}");
    }
    assert!(refused(&["--publish-backpressure", "61s"]).contains("at most 1m"));
    let e = refused(&["--listen", "0.0.0.0:8080"]);
    assert!(e.contains("--insecure-no-auth"), "{e}");
    let e = refused(&["--publish-secret", "short"]);
    assert!(
        e.contains("--publish-secret") && !e.contains("short\""),
        "{e}"
    );
    assert!(refused(&["--jwt-public-key", "Cargo.toml"]).contains("PEM"));
    // Flags that would silently do nothing.
    for (args, flag) in [
        (&["--jwt-audience", "app"][..], "--jwt-audience"),
        (&["--jwt-issuer", "idp"], "--jwt-issuer"),
        (&["--jwt-query-param", "false"], "--jwt-query-param"),
        (&["--cors-credentials"], "--cors-credentials"),
        (&["--reuse-port"], "--reuse-port"),
    ] {
        let e = refused(args);
        assert!(e.contains(flag), "{args:?}: {e}");
    }
    assert!(cli(&[
        "--jwt-audience",
        "app",
        "--jwt-secret",
        "0123456789abcdef0123"
    ])
    .validate()
    .is_ok());
}

#[test]
fn typed_values() {
    assert!(cli(&["--listen", "0.0.0.0:8080", "--insecure-no-auth"])
        .validate()
        .is_ok());
    let keyed = cli(&[
        "--listen",
        "0.0.0.0:8080",
        "--jwt-secret",
        "0123456789abcdef0123",
    ])
    .validate()
    .unwrap();
    assert!(keyed.auth.streams_protected() && keyed.auth.publish_protected());
    let c = cli(&["--trusted-proxies", "10.0.0.0/8, 127.0.0.1,fd00::/8"])
        .validate()
        .unwrap();
    assert!(c.proxies.contains("10.2.3.4".parse().unwrap()));
    assert!(c.proxies.contains("127.0.0.1".parse().unwrap()));
    assert!(!c.proxies.contains("127.0.0.2".parse().unwrap()));
    assert!(c.proxies.contains("fd00::1".parse().unwrap()));
    assert!(cli(&[]).validate().unwrap().proxies.is_empty());
    for url in [
        "https://idp.example/.well-known/jwks.json",
        "http://127.0.0.1:9/jwks",
        "http://localhost/jwks",
    ] {
        let c = cli(&["--jwt-jwks-url", url, "--listen", "0.0.0.0:8080"])
            .validate()
            .unwrap();
        assert!(c.auth.streams_protected(), "a JWKS protects streams");
        assert_eq!(c.jwks.unwrap().url, url);
    }
    let c = cli(&["--listen", "localhost:0"]).validate().unwrap();
    assert!(c.server.listen.ip().is_loopback());
    let c = cli(&["--cors-origins", "https://a.example/, http://b.example"])
        .validate()
        .unwrap();
    assert_eq!(c.cors.origins, ["https://a.example", "http://b.example"]);
    assert!(cli(&[
        "--tls-cert",
        "tests/keys/tls-cert.pem",
        "--tls-key",
        "tests/keys/tls-key.pem"
    ])
    .validate()
    .unwrap()
    .server
    .tls
    .is_some());
    let c = cli(&[
        "--write-coalesce",
        "25ms",
        "--write-coalesce-busy",
        "0ms",
        "--write-timeout",
        "0",
        "--publish-backpressure",
        "0ms",
        "--queue-max-bytes",
        "64KiB",
        "--max-streams-per-user",
        "3",
        "--publish-rate",
        "2.5",
        "--kafka-brokers",
        "h:1",
        "--kafka-topics",
        "t",
        "--reuse-port",
        "--sse-fast-path",
        "no",
        "--own-http2",
        "false",
        "--tls-own-records",
        "false",
    ])
    .validate()
    .unwrap();
    assert_eq!(c.streams.write_coalesce, Some(Duration::from_millis(25)));
    assert_eq!(c.streams.write_coalesce_busy, None, "0ms turns it off");
    assert_eq!(c.server.write_timeout, None);
    assert_eq!(c.publish.backpressure, None);
    assert_eq!(c.streams.queue.max_bytes, 65536);
    assert_eq!(c.limits.streams_per_user, NonZeroUsize::new(3));
    assert_eq!(c.limits.publish_rate, Some(2.5));
    assert!(c.server.reuse_port && !c.server.sse_fast_path);
    assert!(!c.server.tls_own_records && !c.server.own_http2);
}

#[test]
fn help_groups_flags_by_domain() {
    let help = Cli::command().render_help().to_string();
    for heading in [
        "Listening:",
        "Streams:",
        "Publishing:",
        "Auth and CORS:",
        "Limits:",
        "Kafka:",
        "Logging, metrics and shutdown:",
    ] {
        assert!(help.contains(heading), "--help lacks {heading}");
    }
    let at = |s: &str| help.find(s).unwrap();
    assert!(at("Kafka:") < at("--kafka-brokers") && at("Limits:") < at("--write-timeout"));
}

#[test]
fn kafka_flags() {
    let c = cli(&[
        "--kafka-brokers",
        "127.0.0.1:9092",
        "--kafka-topics",
        "a,b,a",
    ])
    .validate()
    .unwrap();
    let k = c.kafka.unwrap();
    assert_eq!(k.topics, ["a", "b"]);
    assert_eq!(k.publish_topic.as_deref(), Some("a"));
    assert_eq!(k.start, StartPosition::Latest);
    let c = cli(&[
        "--kafka-brokers",
        "h:1",
        "--kafka-topics",
        "t",
        "--kafka-start",
        "replay-window",
        "--kafka-property",
        "security.protocol=SASL_SSL",
        "--kafka-property",
        "x=a=b",
    ])
    .validate()
    .unwrap();
    let k = c.kafka.unwrap();
    assert_eq!(k.start, StartPosition::ReplayWindow);
    assert_eq!(k.properties[1], ("x".to_owned(), "a=b".to_owned()));
    assert!(cli(&[]).validate().unwrap().kafka.is_none());

    let k = ["--kafka-brokers", "h:1", "--kafka-topics", "t"];
    let cases: [(Vec<&str>, &str); 8] = [
        (vec!["--kafka-topics", "t"], "--kafka-topics"),
        (vec!["--kafka-brokers", "h:1"], "--kafka-topics"),
        (
            vec!["--kafka-brokers", "nohostport", "--kafka-topics", "t"],
            "--kafka-brokers",
        ),
        (
            vec!["--kafka-brokers", "tcp://h:1", "--kafka-topics", "t"],
            "--kafka-brokers",
        ),
        (
            vec!["--kafka-brokers", "h:1", "--kafka-topics", "bad topic"],
            "--kafka-topics",
        ),
        ([&k[..], &["--kafka-start", "x"]].concat(), "--kafka-start"),
        (
            [&k[..], &["--kafka-property", "novalue"]].concat(),
            "--kafka-property",
        ),
        (
            [&k[..], &["--kafka-publish-topic", "u"]].concat(),
            "--kafka-publish-topic",
        ),
    ];
    for (args, flag) in cases {
        let e = refused(&args);
        assert!(e.contains(flag), "{args:?}: {e}");
    }
}

#[test]
fn kafka_mapping_flags() {
    let dir = std::env::temp_dir().join(format!("herald-config-mapping-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("m.toml");
    std::fs::write(
        &file,
        "[[topics]]\ntopic = \"orders\"\nvalue = \"avro\"\nuser = \"field:/c\"\n",
    )
    .unwrap();
    let m = file.to_str().unwrap();
    let reg = ["--schema-registry-url", "http://r:8081"];
    let with = |extra: &[&str]| {
        let mut a = vec!["--kafka-brokers", "h:1", "--kafka-mapping", m];
        a.extend_from_slice(extra);
        a.iter().map(|s| s.to_string()).collect::<Vec<_>>()
    };
    let args = with(&reg);
    let k = cli(&args.iter().map(String::as_str).collect::<Vec<_>>())
        .validate()
        .unwrap()
        .kafka
        .unwrap();
    assert_eq!(k.topics, ["orders"], "the file's topics are read");
    assert_eq!(
        k.publish_topic, None,
        "no topic in herald's format: publishing is off"
    );
    let args = with(&[&reg[..], &["--kafka-topics", "a"]].concat());
    let k = cli(&args.iter().map(String::as_str).collect::<Vec<_>>())
        .validate()
        .unwrap()
        .kafka
        .unwrap();
    assert_eq!(k.topics, ["a", "orders"]);
    assert_eq!(k.publish_topic.as_deref(), Some("a"));
    for (extra, want) in [
        (vec![], "needs --schema-registry-url"),
        (
            vec![reg[0], reg[1], "--kafka-publish-topic", "orders"],
            "has a --kafka-mapping rule",
        ),
        (
            vec![reg[0], reg[1], "--kafka-dead-letter-topic", "orders"],
            "a topic herald reads",
        ),
        (vec!["--schema-registry-url", "r:8081"], "http://"),
        (
            vec![reg[0], reg[1], "--schema-registry-auth", "nocolon"],
            "USER:PASSWORD",
        ),
    ] {
        let args = with(&extra);
        let e = refused(&args.iter().map(String::as_str).collect::<Vec<_>>());
        assert!(e.contains(want), "{extra:?}: {e}");
        assert!(!e.contains("nocolon"), "a secret is never echoed: {e}");
    }
    let e = refused(&["--kafka-mapping", m]);
    assert!(e.contains("needs --kafka-brokers"), "{e}");
}

/// A config file under the temp dir, unique per test.
fn config_file(name: &str, text: &str) -> std::path::PathBuf {
    let path =
        std::env::temp_dir().join(format!("herald-config-{}-{name}.toml", std::process::id()));
    std::fs::write(&path, text).unwrap();
    path
}

fn served(args: &[&str]) -> Result<Config, String> {
    match load_from(std::iter::once("herald").chain(args.iter().copied())) {
        Ok(Loaded::Serve(c)) => Ok(*c),
        Ok(Loaded::Token(_)) => Err("token".into()),
        Err(e) => Err(e.to_string()),
    }
}

#[test]
fn a_config_file_sets_flags_and_flags_win() {
    let path = config_file(
        "ok",
        r#"
listen = "127.0.0.1:9999"
heartbeat_interval = "5s"
max-streams-per-user = 3
cors-origins = ["https://a.example", "https://b.example"]
sse-fast-path = false
access-log = true
kafka-brokers = "127.0.0.1:9092"
kafka-topics = "t"
kafka-property = ["fetch.wait.max.ms=50", "client.rack=r1"]
"#,
    );
    let p = path.to_str().unwrap();
    let c = served(&["--config", p]).unwrap();
    assert_eq!(c.server.listen, "127.0.0.1:9999".parse().unwrap());
    assert_eq!(c.streams.heartbeat, Duration::from_secs(5));
    assert_eq!(c.limits.streams_per_user, NonZeroUsize::new(3));
    assert_eq!(c.cors.origins, ["https://a.example", "https://b.example"]);
    assert!(!c.server.sse_fast_path && c.log.access);
    let props = &c.kafka.as_ref().unwrap().properties;
    assert!(
        props.contains(&("client.rack".to_owned(), "r1".to_owned())),
        "{props:?}"
    );
    // The command line wins over the file.
    let c = served(&[
        "--config",
        p,
        "--heartbeat-interval",
        "20s",
        "--listen",
        "127.0.0.1:7",
    ])
    .unwrap();
    assert_eq!(c.streams.heartbeat, Duration::from_secs(20));
    assert_eq!(c.server.listen, "127.0.0.1:7".parse().unwrap());
}

#[test]
fn a_bad_config_file_is_refused_naming_the_file_and_the_setting() {
    let cases = [
        ("unknown", "listn = \"x\"", "unknown setting `listn`"),
        ("table", "[listen]\nport = 1", "`listen` must be a string"),
        ("switch", "access-log = \"yes\"", "`access-log` is a switch"),
        ("list", "listen = [\"a\", \"b\"]", "takes one value"),
        ("toml", "listen = ", "not valid TOML"),
        (
            "value",
            "heartbeat-interval = \"soon\"",
            "--heartbeat-interval",
        ),
        (
            "nested",
            "config = \"other.toml\"",
            "unknown setting `config`",
        ),
    ];
    for (name, text, want) in cases {
        let path = config_file(name, text);
        let e = served(&["--config", path.to_str().unwrap()]).unwrap_err();
        assert!(e.contains(want), "{name}: {e}");
        if name != "value" {
            assert!(
                e.contains(path.to_str().unwrap()),
                "{name}: names the file: {e}"
            );
        }
    }
    let e = served(&["--config", "/nonexistent/herald.toml"]).unwrap_err();
    assert!(e.contains("cannot be read"), "{e}");
}
