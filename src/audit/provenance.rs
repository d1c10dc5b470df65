//! Where a report came from, so an auditor can file it and anyone can reproduce it: the
//! ackwatch version and revision, the policy and topics, every input (a file's size and
//! SHA-256, or a cluster's partitions and offsets read), the selection, and when it was made.

use std::path::Path;

use ackwatch_topology::time::format_rfc3339_ms;
use ackwatch_topology::Policy;
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::settings::Topics;

/// The version `--version` prints and the commit it was built from (`build.rs`).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
pub const REVISION: &str = env!("ACKWATCH_REVISION");

#[derive(Clone, Debug, Serialize)]
pub struct Provenance {
    pub ackwatch_version: &'static str,
    pub revision: &'static str,
    /// Wall-clock time the report was made (RFC 3339 UTC).
    pub generated_at: String,
    pub policy: Policy,
    /// The input topics the records were taken from.
    pub activation_topic: String,
    pub ack_topic: String,
    /// File audits: every input file, in the order read.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub inputs: Vec<InputFile>,
    /// Cluster audits: where, and exactly which offsets were read.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster: Option<ClusterRead>,
    /// File audits: `--end-time`, when given (else the input ends at its largest event time).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub end_time: Option<String>,
    /// `--world` / `--run`, when given.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub world_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub run_id: Option<String>,
}

#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct InputFile {
    pub path: String,
    pub bytes: u64,
    /// Lowercase hex SHA-256 of the file's bytes as read (`sha256sum` gives the same).
    pub sha256: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct ClusterRead {
    pub bootstrap_servers: String,
    /// `warmup` before `from`: where reading started.
    pub warmup: String,
    pub read: Vec<OffsetsRead>,
}

/// One topic partition's records read: offsets `[from_offset, to_offset)`.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct OffsetsRead {
    pub topic: String,
    pub partition: i32,
    pub from_offset: i64,
    pub to_offset: i64,
}

impl Provenance {
    pub fn new(policy: Policy, topics: &Topics) -> Self {
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        Provenance {
            ackwatch_version: VERSION,
            revision: REVISION,
            generated_at: format_rfc3339_ms(now_ms),
            policy,
            activation_topic: topics.activation.clone(),
            ack_topic: topics.ack.clone(),
            inputs: vec![],
            cluster: None,
            end_time: None,
            world_id: None,
            run_id: None,
        }
    }

    /// The provenance as the text summary starts.
    pub fn text(&self) -> String {
        self.lines().iter().map(|l| format!("{l}\n")).collect()
    }

    /// The lines the text summary and the page show.
    pub fn lines(&self) -> Vec<String> {
        let p = &self.policy;
        let mut lines = vec![
            format!(
                "ackwatch {} (revision {}), report made {}",
                self.ackwatch_version, self.revision, self.generated_at
            ),
            format!(
                "policy: ack_timeout_ms {}, gap_timeout_ms {}, orphan_timeout_ms {}, rollback_after_ms {}, auto_rollback {}, sequence_start {}, run_retention_ms {}, max_clock_lead_ms {}, max_record_bytes {}",
                p.ack_timeout_ms,
                p.gap_timeout_ms,
                p.orphan_timeout_ms,
                p.rollback_after_ms,
                p.auto_rollback,
                p.sequence_start,
                p.run_retention_ms,
                p.max_clock_lead_ms,
                p.max_record_bytes
            ),
            format!("topics: {} and {}", self.activation_topic, self.ack_topic),
        ];
        for input in &self.inputs {
            lines.push(format!(
                "input: {} ({} bytes, sha256 {})",
                input.path, input.bytes, input.sha256
            ));
        }
        if let Some(cluster) = &self.cluster {
            lines.push(format!(
                "cluster: {} (warm-up {})",
                cluster.bootstrap_servers, cluster.warmup
            ));
            for r in &cluster.read {
                lines.push(format!(
                    "read: {} [{}] offsets {}..{}",
                    r.topic, r.partition, r.from_offset, r.to_offset
                ));
            }
        }
        if let Some(end) = &self.end_time {
            lines.push(format!("end time: {end}"));
        }
        match (&self.world_id, &self.run_id) {
            (Some(w), Some(r)) => lines.push(format!("selection: world {w}, run {r}")),
            (Some(w), None) => lines.push(format!("selection: world {w}")),
            _ => {}
        }
        lines
    }
}

/// Hashes a file's bytes as they are read, line by line.
pub struct FileDigest {
    path: String,
    bytes: u64,
    hasher: Sha256,
}

impl FileDigest {
    pub fn new(path: &Path) -> Self {
        FileDigest {
            path: path.display().to_string(),
            bytes: 0,
            hasher: Sha256::new(),
        }
    }

    pub fn update(&mut self, chunk: &[u8]) {
        self.bytes += chunk.len() as u64;
        self.hasher.update(chunk);
    }

    pub fn finish(self) -> InputFile {
        let digest = self.hasher.finalize();
        InputFile {
            path: self.path,
            bytes: self.bytes,
            sha256: digest.iter().map(|b| format!("{b:02x}")).collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(content: &[&[u8]], expected_sha256: &str) {
        let mut digest = FileDigest::new(Path::new("x"));
        for chunk in content {
            digest.update(chunk);
        }
        let file = digest.finish();
        assert_eq!(file.sha256, expected_sha256);
        assert_eq!(file.bytes, content.iter().map(|c| c.len() as u64).sum::<u64>());
    }

    #[test]
    fn sha256_of_chunks_is_the_files() {
        // FIPS 180-2 test vectors.
        check(
            &[],
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        );
        check(
            &[b"ab", b"c"],
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
        );
    }
}
