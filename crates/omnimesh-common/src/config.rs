//! Configuration loading, shared by every service.
//!
//! Each service reads its own section of one TOML file, merged in this order (later
//! wins): the service's `Default`, the `[<service>]` section of `omnimesh.toml` (path
//! from `OMNIMESH_CONFIG`, else `./omnimesh.toml` when it exists), then environment
//! variables `OMNIMESH_<SERVICE>__<SECTION>__<KEY>` (`OMNIMESH_CORE_ENGINE__LISTEN__GRPC`).
//! Unknown sections, unknown keys, values of the wrong type and values that fail
//! [`ServiceConfig::validate`] all stop start-up with one [`Error`] line that names the
//! key, where the value came from, and why it is wrong.

use std::path::{Path, PathBuf};

use figment::providers::{Format as _, Serialized, Toml};
use figment::value::{Dict, Map, Value};
use figment::{Figment, Metadata, Profile, Provider};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::SERVICES;

/// The environment variable naming the configuration file.
pub const CONFIG_PATH_VAR: &str = "OMNIMESH_CONFIG";
/// The file read from the working directory when `OMNIMESH_CONFIG` is not set.
pub const DEFAULT_CONFIG_FILE: &str = "omnimesh.toml";
const ENV_PREFIX: &str = "OMNIMESH_";

/// The configuration of one service: its section of `omnimesh.toml`.
pub trait ServiceConfig: Serialize + DeserializeOwned + Default {
    /// The section name, one of [`SERVICES`].
    const SERVICE: &'static str;

    /// Checks the rules serde cannot express.
    ///
    /// # Errors
    /// Returns the offending key, relative to the section (`listen.grpc`), and why.
    fn validate(&self) -> Result<(), Invalid>;
}

/// A value that deserialized but breaks a rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    /// The key relative to the service's section, such as `listen.grpc`.
    pub key: String,
    /// Why the value is wrong, in words the operator can act on.
    pub reason: String,
}

impl Invalid {
    /// An invalid `key` for `reason`.
    pub fn new(key: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            reason: reason.into(),
        }
    }
}

/// Why the configuration cannot be used; its `Display` is the one line to show.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid configuration: `{key}` (from {origin}): {reason}")]
pub struct Error {
    /// The full dotted key (`core-engine.listen.grpc`), or the environment variable.
    pub key: String,
    /// Where the value came from: a file path, an environment variable, or `defaults`.
    pub origin: String,
    /// What is wrong with it.
    pub reason: String,
}

/// Where configuration comes from: a file and a set of environment variables.
///
/// [`Sources::from_process`] reads the real environment; tests build one by hand, so
/// they never touch the process environment.
#[derive(Debug, Clone, Default)]
pub struct Sources {
    file: Option<PathBuf>,
    /// Set when the file was named explicitly, so a missing file is an error.
    file_named_by: Option<String>,
    /// TOML given as text (an admin API's body), read instead of a file: (origin, text).
    text: Option<(String, String)>,
    env: Vec<(String, String)>,
}

impl Sources {
    /// No file, no environment: defaults only.
    pub fn new() -> Self {
        Self::default()
    }

    /// The process environment: the file from `OMNIMESH_CONFIG` (or `./omnimesh.toml` when
    /// present) and every `OMNIMESH_…` variable.
    pub fn from_process() -> Self {
        let env: Vec<(String, String)> = std::env::vars_os()
            .filter_map(|(name, value)| Some((name.into_string().ok()?, value.into_string().ok()?)))
            .filter(|(name, _)| name.starts_with(ENV_PREFIX))
            .collect();
        let named = env
            .iter()
            .find(|(name, _)| name == CONFIG_PATH_VAR)
            .map(|(_, value)| PathBuf::from(value));
        let mut sources = Self::new();
        sources.env = env;
        match named {
            Some(path) => sources.with_file(path),
            None if Path::new(DEFAULT_CONFIG_FILE).is_file() => {
                sources.file = Some(PathBuf::from(DEFAULT_CONFIG_FILE));
                sources
            }
            None => sources,
        }
    }

    /// Reads `path`, which must exist.
    pub fn with_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.file = Some(path.into());
        self.file_named_by = Some(CONFIG_PATH_VAR.to_owned());
        self
    }

    /// Reads `text` as the TOML file, naming `origin` in errors (`admin API`); a file,
    /// if one was set, is not read.
    pub fn with_toml(mut self, origin: impl Into<String>, text: impl Into<String>) -> Self {
        self.text = Some((origin.into(), text.into()));
        self
    }

    /// The same file and text without any environment variable.
    pub fn without_env(mut self) -> Self {
        self.env.clear();
        self
    }

    /// Adds an environment variable, as if it were set in the process.
    pub fn with_env(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.push((name.into(), value.into()));
        self
    }

    /// The configuration file, if any.
    pub fn file(&self) -> Option<&Path> {
        self.file.as_deref()
    }

    /// The merged file and environment, without any service's defaults.
    fn figment(&self) -> Result<Figment, Error> {
        let mut figment = Figment::new();
        if let Some((origin, text)) = &self.text {
            let toml = Named {
                inner: Toml::string(text),
                origin: origin.clone(),
            };
            check_sections(origin, &toml)?;
            figment = figment.merge(toml);
        } else if let Some(path) = &self.file {
            if !path.is_file() {
                return Err(Error {
                    key: self
                        .file_named_by
                        .clone()
                        .unwrap_or_else(|| CONFIG_PATH_VAR.to_owned()),
                    origin: "environment".to_owned(),
                    reason: format!("configuration file {} does not exist", path.display()),
                });
            }
            let toml = Toml::file_exact(path);
            check_sections(&path.display().to_string(), &toml)?;
            figment = figment.merge(toml);
        }
        Ok(figment.merge(EnvVars::parse(&self.env)?))
    }
}

/// Loads `C` from the process environment (see the module docs).
///
/// # Errors
/// The first problem found, as one line naming key, origin and reason.
pub fn load<C: ServiceConfig>() -> Result<C, Error> {
    load_from(&Sources::from_process())
}

/// For `main`: loads `C` from `sources`, or prints the one-line error to stderr and
/// exits with code 1 (no backtrace, nothing else: the line says what to fix).
pub fn load_or_exit<C: ServiceConfig>(sources: &Sources) -> C {
    load_from(sources).unwrap_or_else(|error| {
        eprintln!("{error}");
        std::process::exit(1)
    })
}

/// Loads `C` from `sources`.
///
/// # Errors
/// The first problem found, as one line naming key, origin and reason.
pub fn load_from<C: ServiceConfig>(sources: &Sources) -> Result<C, Error> {
    let figment =
        Figment::from(Serialized::default(C::SERVICE, C::default())).merge(sources.figment()?);
    let config: C = figment
        .extract_inner(C::SERVICE)
        .map_err(|error| from_figment(C::SERVICE, error))?;
    config.validate().map_err(|invalid| {
        let key = format!("{}.{}", C::SERVICE, invalid.key);
        Error {
            origin: figment
                .find_metadata(&key)
                .map_or_else(|| "defaults".to_owned(), |metadata| origin(metadata, &key)),
            key,
            reason: invalid.reason,
        }
    })?;
    Ok(config)
}

/// One value of another service's section, or `default` when nobody set it: what a
/// supervisor needs to know about the processes it starts (their addresses) without
/// linking their crates.
///
/// # Errors
/// When the value is present but of the wrong type, or the sources are broken.
pub fn peek<T: DeserializeOwned>(
    sources: &Sources,
    service: &str,
    key: &str,
    default: T,
) -> Result<T, Error> {
    let full_key = format!("{service}.{key}");
    match sources.figment()?.extract_inner(&full_key) {
        Ok(value) => Ok(value),
        Err(error) if error.missing() => Ok(default),
        Err(error) => Err(from_figment(&full_key, error)),
    }
}

/// Rejects top-level tables other than the four services, so a typo in a section name
/// is an error rather than a silently ignored block.
fn check_sections(origin: &str, toml: &impl Provider) -> Result<(), Error> {
    // A file that does not parse is reported later, with its line, by `extract`.
    let Ok(data) = toml.data() else {
        return Ok(());
    };
    for dict in data.values() {
        for (section, value) in dict {
            if !SERVICES.contains(&section.as_str()) {
                return Err(Error {
                    key: section.clone(),
                    origin: origin.to_owned(),
                    reason: format!("unknown section, expected one of {}", SERVICES.join(", ")),
                });
            }
            if !matches!(value, Value::Dict(..)) {
                return Err(Error {
                    key: section.clone(),
                    origin: origin.to_owned(),
                    reason: format!("must be a table (`[{section}]`)"),
                });
            }
        }
    }
    Ok(())
}

fn from_figment(prefix: &str, error: figment::Error) -> Error {
    let prefix: Vec<&str> = prefix.split('.').collect();
    // figment reports the path of `extract_inner` in varying places (appended or
    // leading); normalise to `prefix` followed by the key inside it.
    let mut path: Vec<&str> = error.path.iter().map(String::as_str).collect();
    if path.ends_with(&prefix) {
        path.truncate(path.len() - prefix.len());
    }
    if path.starts_with(&prefix) {
        path.drain(..prefix.len());
    }
    if let figment::error::Kind::UnknownField(field, _) = &error.kind
        && path.last() != Some(&field.as_str())
    {
        path.push(field);
    }
    let file = error
        .metadata
        .as_ref()
        .and_then(|metadata| metadata.source.as_ref()?.file_path());
    let key = match (path.is_empty(), file) {
        // A file that does not parse has no key; the reason gives line and column.
        (true, Some(_)) => "(syntax)".to_owned(),
        _ => prefix
            .iter()
            .chain(&path)
            .copied()
            .collect::<Vec<_>>()
            .join("."),
    };
    let origin = match &error.metadata {
        Some(metadata) => origin(metadata, &key),
        None => "defaults".to_owned(),
    };
    let reason = match &error.kind {
        figment::error::Kind::UnknownField(field, expected) => {
            format!(
                "unknown key `{field}`, expected one of {}",
                expected.join(", ")
            )
        }
        kind => one_line(&kind.to_string()),
    };
    Error {
        key,
        origin,
        reason,
    }
}

/// Folds a multi-line parser message (with its source excerpt) into one line.
fn one_line(message: &str) -> String {
    message
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('|') && !line.contains(" | "))
        .collect::<Vec<_>>()
        .join("; ")
}

/// Where the value at `key` came from, in words: a file path, an environment variable,
/// or the defaults.
fn origin(metadata: &Metadata, key: &str) -> String {
    if let Some(figment::Source::Custom(origin)) = &metadata.source {
        return origin.clone();
    }
    if let Some(path) = metadata
        .source
        .as_ref()
        .and_then(|source| source.file_path())
    {
        return path.display().to_string();
    }
    if metadata.name == EnvVars::NAME {
        let keys: Vec<&str> = key.split('.').collect();
        return format!(
            "environment variable {}",
            metadata.interpolate(&Profile::Default, &keys)
        );
    }
    "defaults".to_owned()
}

/// A provider whose values report `origin` (such as `admin API`) as where they came from.
struct Named<P> {
    inner: P,
    origin: String,
}

impl<P: Provider> Provider for Named<P> {
    fn metadata(&self) -> Metadata {
        Metadata::from(
            self.origin.clone(),
            figment::Source::Custom(self.origin.clone()),
        )
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        self.inner.data()
    }
}

/// `OMNIMESH_<SERVICE>__<SECTION>__<KEY>=value` variables as a figment provider.
struct EnvVars {
    dict: Dict,
}

impl EnvVars {
    const NAME: &'static str = "environment";

    fn parse(vars: &[(String, String)]) -> Result<Self, Error> {
        let mut dict = Dict::new();
        for (name, value) in vars {
            let Some(rest) = name.strip_prefix(ENV_PREFIX) else {
                continue;
            };
            let Some((service, key)) = rest.split_once("__") else {
                // OMNIMESH_CONFIG and variables of other tools.
                continue;
            };
            let invalid = |reason: String| Error {
                key: name.clone(),
                origin: "environment".to_owned(),
                reason,
            };
            let section = SERVICES
                .iter()
                .find(|known| known.replace('-', "_").eq_ignore_ascii_case(service))
                .ok_or_else(|| {
                    invalid(format!(
                        "unknown service `{service}`, expected one of {}",
                        env_services()
                    ))
                })?;
            let mut path = vec![(*section).to_owned()];
            for part in key.split("__") {
                if part.is_empty() {
                    return Err(invalid("empty key segment (`____`)".to_owned()));
                }
                path.push(part.to_ascii_lowercase());
            }
            // figment's string unescaping slices by character index and panics on a
            // backslash after a non-ASCII character; such a value is taken verbatim.
            let parsed: Value = if value.contains('\\') && !value.is_ascii() {
                Value::from(value.clone())
            } else {
                value.parse().expect("figment parses any string")
            };
            let nested = figment::util::nest(&path.join("."), parsed)
                .into_dict()
                .expect("a non-empty key nests into a dict");
            dict = merge(dict, nested);
        }
        Ok(Self { dict })
    }
}

fn env_services() -> String {
    SERVICES
        .iter()
        .map(|service| service.replace('-', "_").to_ascii_uppercase())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Merges `incoming` into `base`, recursing into tables (later values win).
fn merge(mut base: Dict, incoming: Dict) -> Dict {
    for (key, value) in incoming {
        let merged = match (base.remove(&key), value) {
            (Some(Value::Dict(_, old)), Value::Dict(tag, new)) => Value::Dict(tag, merge(old, new)),
            (_, value) => value,
        };
        base.insert(key, merged);
    }
    base
}

impl Provider for EnvVars {
    fn metadata(&self) -> Metadata {
        Metadata::named(Self::NAME).interpolater(|_: &Profile, keys: &[&str]| {
            let (service, rest) = keys.split_first().map_or(("", &[][..]), |(s, r)| (*s, r));
            let mut name = format!(
                "{ENV_PREFIX}{}",
                service.replace('-', "_").to_ascii_uppercase()
            );
            for key in rest {
                name.push_str("__");
                name.push_str(&key.to_ascii_uppercase());
            }
            name
        })
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        Ok(Profile::Default.collect(self.dict.clone()))
    }
}

#[cfg(test)]
mod tests;
