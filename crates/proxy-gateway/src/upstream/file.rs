//! Endpoints from a TOML file that is watched: edit it and the clusters follow, with no
//! restart; a bad edit is refused (logged, counted) and the last good sets stay.
//!
//! ```toml
//! [[clusters.core-engine]]
//! address = "10.0.0.5:50051"
//! weight = 100        # share within its subset (default 100)
//! subset = "stable"   # default: none
//! healthy = true      # default true
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;
use tokio::sync::watch;

use super::{Endpoint, EndpointSet, EndpointSource, Endpoints};
use crate::filewatch::FileWatch;

/// Largest endpoints file read (a file is configuration, not a database).
const MAX_FILE_BYTES: u64 = 4 * 1024 * 1024;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    clusters: BTreeMap<String, Vec<FileEndpoint>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileEndpoint {
    address: String,
    #[serde(default = "default_weight")]
    weight: u32,
    #[serde(default)]
    subset: String,
    #[serde(default = "default_true")]
    healthy: bool,
}

fn default_weight() -> u32 {
    100
}

fn default_true() -> bool {
    true
}

/// Reads and checks an endpoints file.
///
/// # Errors
/// The reason, naming the cluster and entry at fault.
pub(super) fn read(path: &Path, revision: u64) -> Result<Endpoints, String> {
    let size = std::fs::metadata(path)
        .map_err(|error| format!("{}: {error}", path.display()))?
        .len();
    if size > MAX_FILE_BYTES {
        return Err(format!(
            "{}: {size} bytes, more than the {MAX_FILE_BYTES} allowed",
            path.display()
        ));
    }
    let text =
        std::fs::read_to_string(path).map_err(|error| format!("{}: {error}", path.display()))?;
    parse(&text, revision).map_err(|reason| format!("{}: {reason}", path.display()))
}

/// Parses the text of an endpoints file.
///
/// # Errors
/// The reason, naming the cluster and entry at fault.
pub fn parse(text: &str, revision: u64) -> Result<Endpoints, String> {
    let file: File = toml::from_str(text).map_err(|error| error.message().to_owned())?;
    let mut sets = Endpoints::new();
    for (cluster, entries) in file.clusters {
        if cluster.is_empty() {
            return Err("a cluster has an empty name".to_owned());
        }
        let mut endpoints = Vec::with_capacity(entries.len());
        for (index, entry) in entries.into_iter().enumerate() {
            let at = format!("clusters.{cluster}[{index}]");
            if entry.address.parse::<http::uri::Authority>().is_err()
                || entry
                    .address
                    .parse::<http::uri::Authority>()
                    .ok()
                    .and_then(|a| a.port_u16())
                    .is_none()
            {
                return Err(format!(
                    "{at}.address: {:?} is not host:port",
                    entry.address
                ));
            }
            let id = format!("{cluster}@{}", entry.address);
            if endpoints.iter().any(|other: &Endpoint| other.id == id) {
                return Err(format!("{at}.address: {} appears twice", entry.address));
            }
            endpoints.push(Endpoint {
                id,
                address: entry.address,
                weight: entry.weight,
                subset: entry.subset,
                version: String::new(),
                healthy: entry.healthy,
            });
        }
        endpoints.sort_by(|a, b| a.id.cmp(&b.id));
        sets.insert(
            cluster,
            EndpointSet {
                endpoints,
                revision,
                source: "file",
            },
        );
    }
    Ok(sets)
}

/// Endpoint sets from a watched file.
#[derive(Debug)]
pub struct FileSource {
    sets: watch::Sender<Arc<Endpoints>>,
    _follow: tokio_util::sync::DropGuard,
}

impl FileSource {
    /// Reads `path` and follows its changes until dropped.
    ///
    /// # Errors
    /// When the file cannot be read or is invalid now, or cannot be watched.
    pub fn start(path: &Path) -> Result<Self, String> {
        let mut revision = 1;
        let first = read(path, revision)?;
        let mut watch = FileWatch::new(path)
            .map_err(|error| format!("watching {}: {error}", path.display()))?;
        let sets = watch::Sender::new(Arc::new(first));
        let stop = tokio_util::sync::CancellationToken::new();
        let tx = sets.clone();
        let path: PathBuf = watch.path().to_owned();
        let stopped = stop.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    changed = watch.changed() => if changed.is_none() { return },
                    () = stopped.cancelled() => return,
                }
                revision += 1;
                match read(&path, revision) {
                    Ok(next) if **tx.borrow() != next => {
                        tracing::info!(path = %path.display(), clusters = next.len(), "endpoints file applied");
                        tx.send_replace(Arc::new(next));
                    }
                    Ok(_) => {}
                    Err(reason) => tracing::warn!(
                        %reason,
                        "endpoints file refused; the last good endpoints stay"
                    ),
                }
            }
        });
        Ok(Self {
            sets,
            _follow: stop.drop_guard(),
        })
    }
}

impl EndpointSource for FileSource {
    fn endpoints(&self) -> watch::Receiver<Arc<Endpoints>> {
        self.sets.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_reads_into_sets_with_defaults() {
        let sets = parse(
            "[[clusters.engine]]\naddress = \"127.0.0.1:2\"\nsubset = \"canary\"\nweight = 5\n\
             [[clusters.engine]]\naddress = \"127.0.0.1:1\"\n",
            7,
        )
        .unwrap();
        let engine = &sets["engine"];
        assert_eq!(engine.revision, 7);
        let ids: Vec<&str> = engine.endpoints.iter().map(|e| e.id.as_str()).collect();
        assert_eq!(ids, ["engine@127.0.0.1:1", "engine@127.0.0.1:2"]);
        assert_eq!(engine.endpoints[0].weight, 100);
        assert!(engine.endpoints[0].healthy);
        assert_eq!(engine.endpoints[1].subset, "canary");
    }

    #[test]
    fn bad_files_are_refused_with_the_entry_at_fault() {
        for (text, expected) in [
            (
                "[[clusters.e]]\naddress = \"nowhere\"\n",
                "clusters.e[0].address",
            ),
            (
                "[[clusters.e]]\naddress = \"h:1\"\n[[clusters.e]]\naddress = \"h:1\"\n",
                "appears twice",
            ),
            (
                "[[clusters.e]]\naddress = \"h:1\"\nport = 3\n",
                "unknown field",
            ),
            (
                "[[clusters.e]]\naddress = \"h:1\"\nweight = -1\n",
                "invalid value",
            ),
            ("clusters = 3", "invalid type"),
            ("[[clusters", "invalid"),
        ] {
            let error = parse(text, 1).unwrap_err();
            assert!(error.contains(expected), "{error} for {text:?}");
        }
    }

    #[test]
    fn an_oversized_file_is_refused_before_it_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("endpoints.toml");
        let file = std::fs::File::create(&path).unwrap();
        file.set_len(MAX_FILE_BYTES + 1).unwrap();
        let error = read(&path, 1).unwrap_err();
        assert!(error.contains("more than"), "{error}");
    }
}
