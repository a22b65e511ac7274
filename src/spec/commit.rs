//! `synchronous_commit`: whether a batch's commit waits for its WAL.

use serde::{Deserialize, Deserializer, Serialize};

use super::shorten;

/// Whether a batch's COMMIT waits for its WAL to reach disk (and synchronous standbys): the
/// values of PostgreSQL's `synchronous_commit`, set on the batch sessions only.
///
/// `off` by default, because a batch can be redone by construction: its rows and its checkpoint
/// commit in one transaction, and a server crash that loses the last few asynchronous commits
/// loses them whole ("as if those transactions had been aborted cleanly", says PostgreSQL's
/// manual), so the job resumes from the checkpoint that survived and nothing is lost or done
/// twice. Waiting for a flush on every batch only adds latency and one fsync per batch to the
/// server's I/O. Job completion and every state change commit synchronously regardless, and
/// a durable completion implies that every batch before it is durable (the WAL is sequential).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum SynchronousCommit {
    #[default]
    Off,
    Local,
    RemoteWrite,
    On,
    RemoteApply,
}

impl SynchronousCommit {
    const ALL: [SynchronousCommit; 5] = [
        SynchronousCommit::Off,
        SynchronousCommit::Local,
        SynchronousCommit::RemoteWrite,
        SynchronousCommit::On,
        SynchronousCommit::RemoteApply,
    ];

    /// The setting's value as PostgreSQL spells it.
    pub fn as_setting(self) -> &'static str {
        match self {
            SynchronousCommit::Off => "off",
            SynchronousCommit::Local => "local",
            SynchronousCommit::RemoteWrite => "remote_write",
            SynchronousCommit::On => "on",
            SynchronousCommit::RemoteApply => "remote_apply",
        }
    }

    /// Like the derived `Deserialize`, but a wrong value's message names the field (serde's
    /// own does not, in JSON).
    pub(super) fn deserialize_named<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<SynchronousCommit, D::Error> {
        let value = String::deserialize(deserializer).map_err(|_| {
            serde::de::Error::custom("synchronous_commit must be a string such as \"off\"")
        })?;
        value.parse().map_err(serde::de::Error::custom)
    }
}

impl std::str::FromStr for SynchronousCommit {
    type Err = String;

    fn from_str(value: &str) -> Result<SynchronousCommit, String> {
        Self::ALL
            .into_iter()
            .find(|v| v.as_setting() == value)
            .ok_or_else(|| {
                format!(
                    "synchronous_commit {:?} is not one of off, local, remote_write, on, remote_apply",
                    shorten(value)
                )
            })
    }
}
