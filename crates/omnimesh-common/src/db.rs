//! Opening a service's database: SQLite (the embedded default, WAL mode) or PostgreSQL,
//! one `sqlx::Any` pool either way, migrated before it is handed out.
//!
//! Each service keeps its own migrations per backend (`migrations/sqlite`,
//! `migrations/postgres`) and passes both [`Migrator`]s; this module picks by URL.

use std::path::Path;
use std::time::Duration;

use sqlx::AnyPool;
use sqlx::any::AnyPoolOptions;
use sqlx::migrate::Migrator;

/// Which database is behind a pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// A SQLite file (or `:memory:`), WAL mode.
    Sqlite,
    /// PostgreSQL.
    Postgres,
}

impl Backend {
    /// The backend a URL names, or `None` for any other scheme.
    pub fn of(url: &str) -> Option<Self> {
        if url.starts_with("sqlite:") {
            Some(Backend::Sqlite)
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            Some(Backend::Postgres)
        } else {
            None
        }
    }

    /// `"sqlite"` or `"postgres"`, for logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
        }
    }
}

/// How SQLite commits (PostgreSQL always syncs its WAL on commit).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// `synchronous = NORMAL`: a commit survives a process crash but may be lost with
    /// the machine (WAL synced at checkpoints). For caches and rebuildable state.
    Normal,
    /// `synchronous = FULL`: every commit is synced before it returns. For logs of record.
    Full,
}

/// The migrations of a service, one set per backend.
#[derive(Debug, Clone, Copy)]
pub struct Migrations<'a> {
    /// Applied to SQLite databases.
    pub sqlite: &'a Migrator,
    /// Applied to PostgreSQL databases.
    pub postgres: &'a Migrator,
}

/// How a pool is opened.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// Upper bound on pooled connections.
    pub max_connections: u32,
    /// SQLite commit durability.
    pub durability: Durability,
}

/// Opens a pool on `url` (creating a SQLite file and its directory when needed) and
/// applies the backend's migrations.
///
/// # Errors
/// An unsupported URL scheme, an unreachable database, or a failed migration.
pub async fn open(
    url: &str,
    options: Options,
    migrations: Migrations<'_>,
) -> Result<(AnyPool, Backend), sqlx::Error> {
    sqlx::any::install_default_drivers();
    let backend = Backend::of(url).ok_or_else(|| {
        sqlx::Error::Configuration("the database URL must start with sqlite: or postgres:".into())
    })?;
    let url = match backend {
        Backend::Sqlite => sqlite_url(url)?,
        Backend::Postgres => {
            check_tls_files(url)?;
            url.to_owned()
        }
    };
    // sqlx serialises migrations with an advisory lock on PostgreSQL but not on SQLite:
    // processes opening one file at once (two replicas) take a file lock next to it.
    let _migration_lock = match backend {
        Backend::Sqlite => sqlite_lock(&url).await?,
        Backend::Postgres => None,
    };
    let synchronous = match options.durability {
        Durability::Normal => "PRAGMA synchronous = NORMAL",
        Durability::Full => "PRAGMA synchronous = FULL",
    };
    let pool = AnyPoolOptions::new()
        .max_connections(options.max_connections)
        .acquire_timeout(Duration::from_secs(10))
        .after_connect(move |connection, _| {
            Box::pin(async move {
                if backend == Backend::Sqlite {
                    // The busy timeout first: switching to WAL takes a lock that another
                    // process opening the same file may hold for a moment.
                    for pragma in [
                        "PRAGMA busy_timeout = 5000",
                        "PRAGMA journal_mode = WAL",
                        synchronous,
                        "PRAGMA foreign_keys = ON",
                    ] {
                        sqlx::query(pragma).execute(&mut *connection).await?;
                    }
                }
                Ok(())
            })
        })
        .connect(&url)
        .await?;
    let migrator = match backend {
        Backend::Sqlite => migrations.sqlite,
        Backend::Postgres => migrations.postgres,
    };
    migrator.run(&pool).await?;
    Ok((pool, backend))
}

/// Checks a PostgreSQL URL's TLS settings (libpq's names) before connecting:
///
/// - the files it names (`sslrootcert`, `sslcert`, `sslkey`) must be readable, since the
///   driver's own error would not say which file it could not open;
/// - `sslrootcert` needs `sslmode=verify-ca` or `verify-full`: libpq verifies against a
///   given root with `sslmode=require` too, the driver does not, so a URL written for libpq
///   would silently go unverified.
fn check_tls_files(url: &str) -> Result<(), sqlx::Error> {
    let invalid = |message: String| sqlx::Error::Configuration(message.into());
    let parsed =
        url::Url::parse(url).map_err(|error| invalid(format!("the database URL: {error}")))?;
    let mut mode = None;
    let mut root = false;
    for (name, value) in parsed.query_pairs() {
        match name.as_ref() {
            "sslmode" => mode = Some(value.into_owned()),
            "sslrootcert" | "sslcert" | "sslkey" => {
                std::fs::File::open(value.as_ref())
                    .map_err(|error| invalid(format!("{name} {value}: {error}")))?;
                root |= name == "sslrootcert";
            }
            _ => {}
        }
    }
    let verifies = matches!(mode.as_deref(), Some("verify-ca" | "verify-full"));
    if root && !verifies {
        return Err(invalid(format!(
            "sslrootcert is only checked with sslmode=verify-ca or verify-full (the URL has {})",
            mode.map_or_else(
                || "no sslmode: prefer".to_owned(),
                |mode| format!("sslmode={mode}")
            )
        )));
    }
    Ok(())
}

/// An exclusive lock on `<file>.lock`, held while the caller migrates (none for an
/// in-memory database).
async fn sqlite_lock(url: &str) -> Result<Option<std::fs::File>, sqlx::Error> {
    let path = sqlite_path(url);
    if path.is_empty() || path == ":memory:" {
        return Ok(None);
    }
    let lock_path = format!("{path}.lock");
    let io = |error: std::io::Error| {
        sqlx::Error::Configuration(format!("locking {lock_path}: {error}").into())
    };
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(io)?;
    let file = tokio::task::spawn_blocking(move || file.lock().map(|()| file))
        .await
        .map_err(|error| sqlx::Error::Configuration(error.to_string().into()))?
        .map_err(io)?;
    Ok(Some(file))
}

fn sqlite_path(url: &str) -> &str {
    url.trim_start_matches("sqlite:")
        .trim_start_matches("//")
        .split('?')
        .next()
        .unwrap_or_default()
}

/// The URL with `mode=rwc` (create when missing), after creating the file's directory.
fn sqlite_url(url: &str) -> Result<String, sqlx::Error> {
    let path = sqlite_path(url);
    if path.is_empty() || path == ":memory:" {
        return Ok(url.to_owned());
    }
    if let Some(parent) = Path::new(path).parent() {
        std::fs::create_dir_all(parent).map_err(|error| {
            sqlx::Error::Configuration(format!("creating {}: {error}", parent.display()).into())
        })?;
    }
    if url.contains("mode=") {
        return Ok(url.to_owned());
    }
    let separator = if url.contains('?') { '&' } else { '?' };
    Ok(format!("{url}{separator}mode=rwc"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backends_by_scheme() {
        assert_eq!(Backend::of("sqlite://x.db"), Some(Backend::Sqlite));
        assert_eq!(Backend::of("postgres://h/db"), Some(Backend::Postgres));
        assert_eq!(Backend::of("postgresql://h/db"), Some(Backend::Postgres));
        assert_eq!(Backend::of("mysql://h/db"), None);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn processes_opening_one_new_file_at_once_migrate_it_once() {
        static MIGRATOR: Migrator = sqlx::migrate!("tests/migrations");
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("shared.db").display());
        let mut opens = tokio::task::JoinSet::new();
        for _ in 0..12 {
            let url = url.clone();
            opens.spawn(async move { open_migrated(&url, &MIGRATOR, 2).await.map(|_| ()) });
        }
        for opened in opens.join_all().await {
            opened.unwrap();
        }
    }

    #[test]
    fn sqlite_files_are_created_with_their_directory() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("nested/deeper/x.db");
        let url = sqlite_url(&format!("sqlite://{}", file.display())).unwrap();
        assert!(url.ends_with("?mode=rwc"), "{url}");
        assert!(file.parent().unwrap().is_dir());
        let kept = sqlite_url("sqlite://x.db?mode=ro").unwrap();
        assert_eq!(kept, "sqlite://x.db?mode=ro");
        assert_eq!(sqlite_url("sqlite::memory:").unwrap(), "sqlite::memory:");
    }

    /// Opens `url` with `migrator` for either backend.
    async fn open_migrated(
        url: &str,
        migrator: &Migrator,
        max_connections: u32,
    ) -> Result<(AnyPool, Backend), sqlx::Error> {
        let options = Options {
            max_connections,
            durability: Durability::Normal,
        };
        let migrations = Migrations {
            sqlite: migrator,
            postgres: migrator,
        };
        open(url, options, migrations).await
    }

    /// Opens `url` (migrating it) and says whether the connection is encrypted.
    async fn open_and_report_tls(url: &str) -> Result<bool, sqlx::Error> {
        static MIGRATOR: Migrator = sqlx::migrate!("tests/migrations-postgres");
        let (pool, _) = open_migrated(url, &MIGRATOR, 1).await?;
        sqlx::query_scalar("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
            .fetch_one(&pool)
            .await
    }

    /// TLS to PostgreSQL as libpq's `sslmode` and `sslrootcert` ask, on the real server
    /// (Debian's PostgreSQL serves TLS with its `ssl-cert-snakeoil` certificate, issued to
    /// `localhost`).
    #[tokio::test]
    async fn postgres_connections_use_tls_as_the_url_asks_and_check_the_certificate() {
        use sqlx::Connection as _;
        use std::str::FromStr as _;

        let database = omnimesh_test_support::postgres::TempDatabase::create()
            .await
            .unwrap();
        let given = sqlx::postgres::PgConnectOptions::from_str(database.url()).unwrap();
        let url = |host: &str, query: &str| {
            format!(
                "postgres://{}@{host}:{}/{}?{query}",
                given.get_username(),
                given.get_port(),
                given.get_database().unwrap_or_default()
            )
        };
        let host = given.get_host().to_owned();
        let mut admin = sqlx::PgConnection::connect(database.url()).await.unwrap();
        let (ssl, cert_file): (String, String) =
            sqlx::query_as("SELECT current_setting('ssl'), current_setting('ssl_cert_file')")
                .fetch_one(&mut admin)
                .await
                .unwrap();
        assert_eq!(
            ssl, "on",
            "this test needs PostgreSQL with `ssl = on` (Debian's default)"
        );
        let cert = std::fs::canonicalize(&cert_file)
            .unwrap_or_else(|error| panic!("the server's certificate {cert_file}: {error}"));
        let cert = cert.display();

        assert!(
            !open_and_report_tls(&url(&host, "sslmode=disable"))
                .await
                .unwrap()
        );
        assert!(
            open_and_report_tls(&url(&host, "sslmode=require"))
                .await
                .unwrap()
        );
        // A root that did not issue the server's certificate.
        let dir = tempfile::tempdir().unwrap();
        let stranger = dir.path().join("stranger.pem");
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        std::fs::write(&stranger, params.self_signed(&key).unwrap().pem()).unwrap();
        let query = format!("sslmode=verify-full&sslrootcert={}", stranger.display());
        let unknown = open_and_report_tls(&url("localhost", &query))
            .await
            .unwrap_err()
            .to_string();
        assert!(unknown.contains("UnknownIssuer"), "{unknown}");
        // Trusted, and issued to the name connected to.
        let query = format!("sslmode=verify-full&sslrootcert={cert}");
        let verified = open_and_report_tls(&url("localhost", &query)).await;
        assert!(
            verified.unwrap_or_else(|error| panic!(
                "{error}: this test needs the server's certificate ({cert}) issued to localhost, \
                 as Debian's ssl-cert-snakeoil is on these machines"
            )),
            "verified but not encrypted"
        );
        // Trusted, but issued to another name than the one connected to.
        let other_name = open_and_report_tls(&url("127.0.0.1", &query))
            .await
            .unwrap_err()
            .to_string();
        assert!(other_name.contains("not valid for name"), "{other_name}");
        // verify-ca checks the issuer and not the name.
        let query = format!("sslmode=verify-ca&sslrootcert={cert}");
        assert!(
            open_and_report_tls(&url("127.0.0.1", &query))
                .await
                .unwrap()
        );
        // A root with a mode that would not check it.
        for mode in ["require", "prefer"] {
            let query = format!("sslmode={mode}&sslrootcert={cert}");
            let unchecked = open_and_report_tls(&url("localhost", &query))
                .await
                .unwrap_err()
                .to_string();
            assert!(
                unchecked.contains(&format!("only checked with sslmode=verify-ca or verify-full (the URL has sslmode={mode})")),
                "{unchecked}"
            );
        }
        // A root certificate file that is not there.
        let missing = open_and_report_tls(&url(
            "localhost",
            "sslmode=verify-full&sslrootcert=/nonexistent/ca.pem",
        ))
        .await
        .unwrap_err()
        .to_string();
        assert!(
            missing.contains("sslrootcert /nonexistent/ca.pem: No such file"),
            "{missing}"
        );
    }
}
