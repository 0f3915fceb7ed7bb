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
        Backend::Postgres => url.to_owned(),
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
            opens.spawn(async move {
                let options = Options {
                    max_connections: 2,
                    durability: Durability::Normal,
                };
                let migrations = Migrations {
                    sqlite: &MIGRATOR,
                    postgres: &MIGRATOR,
                };
                open(&url, options, migrations).await.map(|_| ())
            });
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
}
