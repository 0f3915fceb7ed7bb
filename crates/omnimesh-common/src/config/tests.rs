use std::io::Write as _;
use std::net::SocketAddr;

use serde::Deserialize;

use super::*;

#[derive(Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct TestConfig {
    #[serde(default)]
    listen: Listen,
    #[serde(default = "default_workers")]
    workers: u32,
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Listen {
    grpc: SocketAddr,
}

impl Default for Listen {
    fn default() -> Self {
        Self {
            grpc: crate::ports::CORE_ENGINE_GRPC,
        }
    }
}

fn default_workers() -> u32 {
    4
}

impl Default for TestConfig {
    fn default() -> Self {
        Self {
            listen: Listen::default(),
            workers: default_workers(),
        }
    }
}

impl ServiceConfig for TestConfig {
    const SERVICE: &'static str = "core-engine";

    fn validate(&self) -> Result<(), Invalid> {
        if self.workers == 0 {
            return Err(Invalid::new("workers", "must be at least 1"));
        }
        Ok(())
    }
}

fn file(contents: &str) -> tempfile::NamedTempFile {
    let mut file = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
    file.write_all(contents.as_bytes()).unwrap();
    file
}

fn load_err(sources: &Sources) -> Error {
    load_from::<TestConfig>(sources).unwrap_err()
}

#[test]
fn defaults_apply_without_any_source() {
    assert_eq!(
        load_from::<TestConfig>(&Sources::new()).unwrap(),
        TestConfig::default()
    );
}

#[test]
fn file_section_overrides_defaults_and_other_sections_are_ignored() {
    let toml = file(
        "[core-engine]\nworkers = 8\n[core-engine.listen]\ngrpc = \"127.0.0.1:6000\"\n\
         [proxy-gateway]\nanything = 1\n",
    );
    let config: TestConfig = load_from(&Sources::new().with_file(toml.path())).unwrap();
    assert_eq!(config.workers, 8);
    assert_eq!(config.listen.grpc, "127.0.0.1:6000".parse().unwrap());
}

#[test]
fn environment_overrides_file() {
    let toml = file("[core-engine]\nworkers = 8\n");
    let sources = Sources::new()
        .with_file(toml.path())
        .with_env("OMNIMESH_CORE_ENGINE__WORKERS", "3")
        .with_env("OMNIMESH_CORE_ENGINE__LISTEN__GRPC", "127.0.0.1:7000");
    let config: TestConfig = load_from(&sources).unwrap();
    assert_eq!(config.workers, 3);
    assert_eq!(config.listen.grpc, "127.0.0.1:7000".parse().unwrap());
}

#[test]
fn environment_of_another_service_does_not_leak_in() {
    let sources = Sources::new().with_env("OMNIMESH_PROXY_GATEWAY__WORKERS", "1");
    assert_eq!(load_from::<TestConfig>(&sources).unwrap().workers, 4);
}

#[test]
fn malformed_toml_names_the_file_and_the_line() {
    let toml = file("[core-engine]\nworkers = = 8\n");
    let error = load_err(&Sources::new().with_file(toml.path()));
    assert_eq!(error.key, "(syntax)");
    let line = error.to_string();
    assert!(line.contains(&toml.path().display().to_string()), "{line}");
    assert!(line.contains("line 2"), "{line}");
    assert!(!line.contains('\n'), "one line: {line:?}");
}

#[test]
fn unknown_key_names_the_key_and_the_file() {
    let toml = file("[core-engine.listen]\ngrcp = \"127.0.0.1:1\"\n");
    let error = load_err(&Sources::new().with_file(toml.path()));
    assert_eq!(error.key, "core-engine.listen.grcp");
    assert_eq!(error.origin, toml.path().display().to_string());
    assert!(error.reason.contains("unknown key `grcp`"), "{error}");
    assert!(
        error.reason.contains("grpc"),
        "lists the expected keys: {error}"
    );
}

#[test]
fn unknown_section_is_rejected() {
    let toml = file("[core-engin]\nworkers = 2\n");
    let error = load_err(&Sources::new().with_file(toml.path()));
    assert_eq!(error.key, "core-engin");
    assert!(error.reason.contains("unknown section"), "{error}");
}

#[test]
fn section_that_is_not_a_table_is_rejected() {
    let toml = file("core-engine = 3\n");
    let error = load_err(&Sources::new().with_file(toml.path()));
    assert_eq!(error.key, "core-engine");
    assert!(error.reason.contains("must be a table"), "{error}");
}

#[test]
fn wrong_type_in_file_names_key_file_and_reason() {
    let toml = file("[core-engine.listen]\ngrpc = \"not an address\"\n");
    let error = load_err(&Sources::new().with_file(toml.path()));
    assert_eq!(error.key, "core-engine.listen.grpc");
    assert_eq!(error.origin, toml.path().display().to_string());
    assert!(error.reason.contains("socket address"), "{error}");
}

#[test]
fn bad_environment_value_names_the_variable() {
    let sources = Sources::new().with_env("OMNIMESH_CORE_ENGINE__WORKERS", "many");
    let error = load_err(&sources);
    assert_eq!(error.key, "core-engine.workers");
    assert_eq!(
        error.origin,
        "environment variable OMNIMESH_CORE_ENGINE__WORKERS"
    );
    assert!(error.reason.contains("invalid type"), "{error}");
}

#[test]
fn unknown_environment_key_names_the_variable() {
    let sources = Sources::new().with_env("OMNIMESH_CORE_ENGINE__WORKERZ", "2");
    let error = load_err(&sources);
    assert_eq!(error.key, "core-engine.workerz");
    assert_eq!(
        error.origin,
        "environment variable OMNIMESH_CORE_ENGINE__WORKERZ"
    );
}

#[test]
fn unknown_service_in_environment_is_rejected() {
    let sources = Sources::new().with_env("OMNIMESH_CORE_ENGIN__WORKERS", "2");
    let error = load_err(&sources);
    assert_eq!(error.key, "OMNIMESH_CORE_ENGIN__WORKERS");
    assert!(error.reason.contains("unknown service"), "{error}");
}

#[test]
fn validation_failure_names_the_origin_of_the_value() {
    let toml = file("[core-engine]\nworkers = 0\n");
    let error = load_err(&Sources::new().with_file(toml.path()));
    assert_eq!(
        error,
        Error {
            key: "core-engine.workers".into(),
            origin: toml.path().display().to_string(),
            reason: "must be at least 1".into(),
        }
    );
    let error = load_err(&Sources::new().with_env("OMNIMESH_CORE_ENGINE__WORKERS", "0"));
    assert_eq!(
        error.origin,
        "environment variable OMNIMESH_CORE_ENGINE__WORKERS"
    );
}

#[test]
fn missing_named_file_is_an_error() {
    let error = load_err(&Sources::new().with_file("/nonexistent/omnimesh.toml"));
    assert_eq!(error.key, CONFIG_PATH_VAR);
    assert!(
        error.reason.contains("/nonexistent/omnimesh.toml"),
        "{error}"
    );
}

#[test]
fn peek_reads_another_section_or_falls_back() {
    let toml = file("[proxy-gateway.listen]\nhttp = \"127.0.0.1:9000\"\n");
    let sources = Sources::new().with_file(toml.path());
    let default: SocketAddr = "127.0.0.1:8080".parse().unwrap();
    let http: SocketAddr = peek(&sources, "proxy-gateway", "listen.http", default).unwrap();
    assert_eq!(http, "127.0.0.1:9000".parse().unwrap());
    let admin: SocketAddr = peek(&sources, "proxy-gateway", "listen.admin", default).unwrap();
    assert_eq!(admin, default);
    let sources = sources.with_env("OMNIMESH_PROXY_GATEWAY__LISTEN__HTTP", "nope");
    let error = peek::<SocketAddr>(&sources, "proxy-gateway", "listen.http", default).unwrap_err();
    assert_eq!(
        error.origin,
        "environment variable OMNIMESH_PROXY_GATEWAY__LISTEN__HTTP"
    );
}

mod hostile {
    use proptest::prelude::*;

    use super::*;

    fn assert_one_line(result: Result<TestConfig, Error>) {
        if let Err(error) = result {
            let line = error.to_string();
            assert!(line.starts_with("invalid configuration: `"), "{line}");
            assert!(!line.contains('\n'), "{line:?}");
        }
    }

    proptest! {
        /// Arbitrary file contents never panic the loader; failures are one line.
        #[test]
        fn arbitrary_file_contents_fail_cleanly(contents in ".{0,400}") {
            let toml = file(&contents);
            assert_one_line(load_from(&Sources::new().with_file(toml.path())));
        }

        /// Arbitrary values (and key paths) in our variables never panic the loader.
        #[test]
        fn arbitrary_environment_fails_cleanly(
            key in "[A-Z_]{0,12}(__[A-Z_]{0,8}){0,3}",
            value in ".{0,200}",
        ) {
            let sources = Sources::new().with_env(format!("OMNIMESH_CORE_ENGINE__{key}"), value);
            assert_one_line(load_from(&sources));
        }

        /// TOML-shaped input with random keys and values in our section.
        #[test]
        fn random_keys_and_values_fail_cleanly(
            table in "(listen|server|telemetry|workers|[a-z]{1,6})",
            key in "[a-z_]{1,10}",
            value in "(\"[^\"\\\\\n]{0,20}\"|-?[0-9]{1,25}|true|\\[\\]|\\{\\})",
        ) {
            let toml = file(&format!("[core-engine.{table}]\n{key} = {value}\n"));
            assert_one_line(load_from(&Sources::new().with_file(toml.path())));
        }
    }

    /// Found by the property test above: figment's unescaping panicked on a backslash
    /// after a non-ASCII character.
    #[test]
    fn a_backslash_after_non_ascii_text_does_not_panic() {
        for value in ["q\u{1ea00}\\x", "é\\n", "\"é\\t\"", "ключ\\"] {
            let sources =
                Sources::new().with_env("OMNIMESH_CORE_ENGINE__TELEMETRY__LOG_LEVEL", value);
            assert_one_line(load_from(&sources));
        }
    }

    #[test]
    fn a_huge_file_is_read_or_refused_without_panicking() {
        // 8 MiB of comments and one real key: loads, and the key still counts.
        let mut contents = "# padding\n".repeat(800_000);
        contents.push_str("[core-engine]\nworkers = 2\n");
        let toml = file(&contents);
        let config: TestConfig = load_from(&Sources::new().with_file(toml.path())).unwrap();
        assert_eq!(config.workers, 2);
    }
}

#[test]
fn toml_text_is_read_like_a_file_and_errors_name_its_origin() {
    let sources = Sources::new()
        .with_toml("admin API", "[core-engine]\nworkers = 9\n")
        .with_env("OMNIMESH_CORE_ENGINE__WORKERS", "2");
    assert_eq!(load_from::<TestConfig>(&sources).unwrap().workers, 2);
    assert_eq!(
        load_from::<TestConfig>(&sources.clone().without_env())
            .unwrap()
            .workers,
        9
    );
    let error = load_from::<TestConfig>(
        &Sources::new().with_toml("admin API", "[core-engine]\nworkers = 0\n"),
    )
    .unwrap_err();
    assert_eq!(error.key, "core-engine.workers");
    assert_eq!(error.origin, "admin API");
    let error = load_from::<TestConfig>(&Sources::new().with_toml("admin API", "[core-enjine]\n"))
        .unwrap_err();
    assert_eq!(
        (error.key.as_str(), error.origin.as_str()),
        ("core-enjine", "admin API")
    );
    let error = load_from::<TestConfig>(&Sources::new().with_toml("admin API", "[core-engine\n"))
        .unwrap_err();
    assert!(!error.reason.is_empty(), "{error}");
}
