//! `--config usermeta.toml`: settings from a TOML file, below environment variables and flags.
//!
//! The file's values become the defaults of the matching command-line arguments before the real parse, so
//! clap's own precedence gives defaults → file → env → flags, and `--help` stays the one list of settings.
//! Keys are the flag names in snake_case (`zitadel_url`, `cache_ttl`, `admins`); a key that is not a setting
//! is an error naming the file and line, so a typo never silently falls back to a default.

use std::{ffi::OsString, path::Path};

use clap::{CommandFactory, FromArgMatches};
use toml::de::{DeTable, DeValue};

use crate::settings::Cli;

/// The subcommand whose settings the file holds, beside the global ones.
const SUBCOMMAND: &str = "serve";
/// Arguments that are not settings.
const NOT_SETTINGS: &[&str] = &["help", "version", "config"];

/// The configuration file is unreadable or wrong.
#[derive(Debug, thiserror::Error)]
pub enum ConfigFileError {
    /// The file could not be read.
    #[error("--config {path}: cannot read it: {source}")]
    Read {
        /// The path given to `--config`.
        path: String,
        /// Why it could not be read.
        source: std::io::Error,
    },
    /// The file is not TOML.
    #[error("{path}: not valid TOML: {message}")]
    Syntax {
        /// The file's path.
        path: String,
        /// The TOML parser's message, which gives the line.
        message: String,
    },
    /// A setting of the file is unknown or its value wrong.
    #[error("{path}:{line}: {problem}")]
    Setting {
        /// The file's path.
        path: String,
        /// The setting's line, from 1.
        line: usize,
        /// What is wrong, naming the setting.
        problem: String,
    },
}

/// Parses the command line of this process, with the `--config` file (or [`CONFIG`](crate::settings::names::CONFIG)) applied.
/// Command-line errors, `--help` and `--version` exit as clap does.
pub fn parse() -> Result<Cli, ConfigFileError> {
    parse_from(std::env::args_os())
}

/// [`parse`] for given arguments (the first is the program name).
pub fn parse_from<I, T>(args: I) -> Result<Cli, ConfigFileError>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let args: Vec<OsString> = args.into_iter().map(Into::into).collect();
    let mut command = Cli::command();
    if let Some(path) = config_path(&args) {
        command = apply(command, &path)?;
    }
    let matches = command.get_matches_from(args);
    Ok(Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit()))
}

/// The `--config` path, found by a lenient first parse (required settings may still be missing).
fn config_path(args: &[OsString]) -> Option<std::path::PathBuf> {
    let matches = Cli::command()
        .ignore_errors(true)
        .try_get_matches_from(args)
        .ok()?;
    let sub = matches.subcommand().map(|(_, sub)| sub);
    [Some(&matches), sub]
        .into_iter()
        .flatten()
        .find_map(|m| m.try_get_one::<std::path::PathBuf>("config").ok().flatten())
        .cloned()
}

/// Makes the file's values the defaults of the matching arguments.
fn apply(mut command: clap::Command, path: &Path) -> Result<clap::Command, ConfigFileError> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| ConfigFileError::Read {
        path: shown.clone(),
        source,
    })?;
    let table = DeTable::parse(&text).map_err(|e| ConfigFileError::Syntax {
        path: shown.clone(),
        message: e.message().to_owned(),
    })?;
    let line_of = |offset: usize| text[..offset.min(text.len())].matches('\n').count() + 1;
    let global: Vec<String> = settings_of(&command);
    let serve: Vec<String> = command
        .find_subcommand(SUBCOMMAND)
        .map(settings_of)
        .unwrap_or_default();
    for (key, value) in table.get_ref() {
        let name = key.get_ref().to_string();
        let line = line_of(key.span().start);
        let problem = |problem: String| ConfigFileError::Setting {
            path: shown.clone(),
            line,
            problem,
        };
        let values =
            values_of(value.get_ref()).map_err(|what| problem(format!("`{name}`: {what}")))?;
        if global.contains(&name) {
            command = command.mut_arg(&name, |arg| arg.default_values(values));
        } else if serve.contains(&name) {
            command = command.mut_subcommand(SUBCOMMAND, |sub| {
                // A required setting the file provides is no longer required on the command line.
                sub.mut_arg(&name, |arg| arg.default_values(values).required(false))
            });
        } else {
            let mut known: Vec<&str> = global.iter().chain(&serve).map(String::as_str).collect();
            known.sort_unstable();
            return Err(problem(format!(
                "unknown setting `{name}`; known settings: {}",
                known.join(", ")
            )));
        }
    }
    Ok(command)
}

/// The ids of a command's settings (its arguments' ids are the snake_case field names).
fn settings_of(command: &clap::Command) -> Vec<String> {
    command
        .get_arguments()
        .map(|arg| arg.get_id().as_str())
        .filter(|id| !NOT_SETTINGS.contains(id))
        .map(str::to_owned)
        .collect()
}

/// A TOML value as the command-line strings it stands for; arrays are lists (e.g. `admins`).
fn values_of(value: &DeValue<'_>) -> Result<Vec<String>, &'static str> {
    match value {
        DeValue::Array(items) => items
            .iter()
            .map(|item| scalar(item.get_ref()))
            .collect::<Result<_, _>>(),
        other => Ok(vec![scalar(other)?]),
    }
}

fn scalar(value: &DeValue<'_>) -> Result<String, &'static str> {
    match value {
        DeValue::String(s) => Ok(s.to_string()),
        DeValue::Integer(i) => Ok(i.to_string()),
        DeValue::Float(f) => Ok(f.to_string()),
        DeValue::Boolean(b) => Ok(b.to_string()),
        DeValue::Datetime(_) => Err("dates are not a setting's type; quote durations like \"5s\""),
        DeValue::Array(_) => Err("nested arrays are not supported"),
        DeValue::Table(_) => Err("tables are not supported; settings are top-level keys"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(name: &str, text: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("usermeta-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    fn serve_args(cli: Cli) -> Box<crate::settings::ServeArgs> {
        match cli.command {
            crate::settings::Command::Serve(args) => args,
            _ => panic!("not serve"),
        }
    }

    #[test]
    fn file_values_fill_settings_and_flags_win() {
        let path = file(
            "ok.toml",
            r#"
# a comment
zitadel_url = "https://file.example"
admins = ["a1", "a2"]
cache_capacity = 7
upstream_timeout = "2s"
zitadel_http2 = "always"
log_format = "json"
shutdown_grace = "3s"
"#,
        );
        let cli = parse_from(["usermeta", "serve", "--config", path.to_str().unwrap()]).unwrap();
        assert_eq!(cli.log_format, crate::settings::LogFormat::Json);
        let args = serve_args(cli);
        assert_eq!(args.zitadel_url, "https://file.example");
        assert_eq!(args.access.admins, ["a1", "a2"]);
        assert_eq!(args.cache.cache_capacity, 7);
        assert_eq!(args.zitadel.upstream_timeout.as_secs(), 2);
        assert_eq!(args.zitadel.zitadel_http2, usermeta_zitadel::Http2::Always);
        assert_eq!(args.ops.shutdown_grace.as_secs(), 3);

        let cli = parse_from([
            "usermeta",
            "--config",
            path.to_str().unwrap(),
            "serve",
            "--zitadel-url",
            "https://flag.example",
            "--cache-capacity=9",
        ])
        .unwrap();
        let args = serve_args(cli);
        assert_eq!(args.zitadel_url, "https://flag.example");
        assert_eq!(args.cache.cache_capacity, 9);
        assert_eq!(args.access.admins, ["a1", "a2"]);
    }

    #[test]
    fn unknown_keys_name_the_file_and_line() {
        let path = file(
            "typo.toml",
            "zitadel_url = \"https://x\"\n\ncache_tll = \"5s\"\n",
        );
        let error = parse_from(["usermeta", "serve", "--config", path.to_str().unwrap()])
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("typo.toml:3: unknown setting `cache_tll`"),
            "{error}"
        );
        assert!(error.contains("cache_ttl"), "{error}");

        let path = file("table.toml", "[serve]\nzitadel_url = \"https://x\"\n");
        let error = parse_from(["usermeta", "serve", "--config", path.to_str().unwrap()])
            .unwrap_err()
            .to_string();
        assert!(error.contains("table.toml:1: `serve`: tables"), "{error}");

        let path = file("broken.toml", "zitadel_url = \n");
        let error = parse_from(["usermeta", "serve", "--config", path.to_str().unwrap()])
            .unwrap_err()
            .to_string();
        assert!(error.contains("broken.toml: not valid TOML"), "{error}");
    }

    mod fuzz {
        //! Config files from careless hands (256 cases under `cargo test`, more with `PROPTEST_CASES`): any
        //! text, and files of real setting names holding any TOML value, are applied or refused naming the file
        //! and a line inside it; never a panic, and the command line then parses or fails as clap says.

        use proptest::prelude::*;

        use super::*;

        const NAMES: &[&str] = &[
            "zitadel_url",
            "admins",
            "cache_ttl",
            "cache_capacity",
            "listen",
            "log_format",
            "zitadel_api",
            "upstream_rate_limit",
            "redis_url",
            "webhook_listen",
            "ext_authz",
            "no_such_setting",
        ];

        fn toml_value() -> impl Strategy<Value = String> {
            let leaf = prop_oneof![
                "\"\\PC{0,20}\"".prop_map(|s| s),
                any::<i64>().prop_map(|n| n.to_string()),
                any::<f64>().prop_map(|f| format!("{f:?}")),
                any::<bool>().prop_map(|b| b.to_string()),
                Just("\"30s\"".to_owned()),
                Just("\"127.0.0.1:0\"".to_owned()),
                Just("{ a = 1 }".to_owned()),
            ];
            prop_oneof![
                leaf.clone(),
                prop::collection::vec(leaf, 0..3)
                    .prop_map(|items| format!("[{}]", items.join(", "))),
            ]
        }

        fn check(name: &str, text: &str) -> Result<(), TestCaseError> {
            let path = file(name, text);
            match apply(Cli::command(), &path) {
                Ok(command) => {
                    let _ = command
                        .try_get_matches_from(["usermeta", "serve"])
                        .map(|matches| Cli::from_arg_matches(&matches));
                }
                Err(ConfigFileError::Setting { line, .. }) => {
                    prop_assert!(line >= 1 && line <= text.lines().count().max(1));
                }
                Err(error) => prop_assert!(error.to_string().contains(name), "{error}"),
            }
            Ok(())
        }

        proptest! {
            #[test]
            fn no_text_panics_the_config_file(text in "\\PC{0,200}") {
                check("fuzz-text.toml", &text)?;
            }

            #[test]
            fn no_setting_value_panics_the_config_file(
                pairs in prop::collection::vec((prop::sample::select(NAMES), toml_value()), 0..6),
            ) {
                let text: String = pairs.iter().map(|(name, value)| format!("{name} = {value}\n")).collect();
                check("fuzz-settings.toml", &text)?;
            }
        }
    }
}
