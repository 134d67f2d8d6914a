//! `--config FILE`: settings from a TOML file, as the flags they name. Each
//! key is a flag's long name (`_` or `-`); a flag given on the command line
//! or through its HERALD_* variable wins over the file. The file becomes
//! command-line arguments, so every value goes through the flag's own parser
//! and its error names the flag.

use std::ffi::OsString;
use std::path::Path;

use clap::parser::ValueSource;
use clap::{ArgAction, ArgMatches, Command};
use toml::Value;

/// The arguments `path` adds to those already given (`matches`).
pub(super) fn args(
    cmd: &Command,
    matches: &ArgMatches,
    path: &Path,
) -> Result<Vec<OsString>, String> {
    let shown = path.display();
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("--config {shown}: cannot be read: {e}"))?;
    let table: toml::Table = text
        .parse()
        .map_err(|e| format!("--config {shown}: not valid TOML: {e}"))?;
    let mut out = Vec::new();
    for (key, value) in table {
        let long = key.replace('_', "-");
        let arg = cmd
            .get_arguments()
            .find(|a| a.get_long() == Some(long.as_str()) && long != "config")
            .ok_or_else(|| {
                format!("--config {shown}: unknown setting `{key}` (settings are flag names without --, see herald --help)")
            })?;
        let given = matches!(
            matches.value_source(arg.get_id().as_str()),
            Some(ValueSource::CommandLine | ValueSource::EnvVariable)
        );
        if given {
            continue;
        }
        let flag = format!("--{long}");
        let bad = |what: &str| format!("--config {shown}: `{key}` {what}");
        match (value, arg.get_action()) {
            (Value::Boolean(on), ArgAction::SetTrue) => {
                if on {
                    out.push(flag.into());
                }
            }
            (_, ArgAction::SetTrue) => return Err(bad("is a switch: true or false")),
            (Value::Array(items), action) => {
                let items = items.iter().map(scalar).collect::<Option<Vec<_>>>();
                let items = items.ok_or_else(|| bad("must list strings, numbers or booleans"))?;
                if matches!(action, ArgAction::Append) {
                    for item in items {
                        out.push(flag.clone().into());
                        out.push(item.into());
                    }
                } else if arg.get_value_delimiter() == Some(',') {
                    out.push(flag.into());
                    out.push(items.join(",").into());
                } else {
                    return Err(bad("takes one value, not a list"));
                }
            }
            (value, _) => {
                let v = scalar(&value).ok_or_else(|| bad("must be a string, number or boolean"))?;
                out.push(flag.into());
                out.push(v.into());
            }
        }
    }
    Ok(out)
}

fn scalar(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Integer(i) => Some(i.to_string()),
        Value::Float(f) => Some(f.to_string()),
        Value::Boolean(b) => Some(b.to_string()),
        Value::Datetime(d) => Some(d.to_string()),
        Value::Array(_) | Value::Table(_) => None,
    }
}
