//! Links between checkpoints: the create-if-absent objects that commit a checkpoint and
//! fence older generations (see [`crate::protocol::Node`]).

use object_store::{PutMode, PutOptions, PutPayload};

use super::CheckpointStore;
use crate::codec;
use crate::error::{CheckpointError, Result};
use crate::ids::{Epoch, Generation};
use crate::manifest::Manifest;
use crate::protocol::{self, Link, Node, SealStep};

/// How a manifest write ended (see [`CheckpointStore::commit_manifest`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Committed {
    /// The checkpoint is committed; the next one follows `next`.
    Yes {
        /// The node the next checkpoint of this generation follows.
        next: Node,
    },
    /// A newer generation took the node: this generation is fenced and commits nothing.
    Fenced {
        /// The generation whose link is there.
        by: Generation,
    },
    /// A checkpoint of this generation that looked failed (its link write timed out)
    /// was committed after all: this one is not, and the next one follows that one.
    Earlier {
        /// The committed checkpoint.
        epoch: Epoch,
    },
}

impl CheckpointStore {
    /// The link of `node`, if it has one.
    pub async fn read_link(&self, node: &Node) -> Result<Option<Link>> {
        let path = self.layout.link(&node.name());
        match self.get(&path).await {
            Ok(bytes) => Ok(Some(codec::decode_json(path.as_ref(), &bytes)?)),
            Err(CheckpointError::Storage {
                source: object_store::Error::NotFound { .. },
                ..
            }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Creates the link of `node` unless it has one; returns the link that is there
    /// afterwards (`link` itself when this call created it).
    pub async fn create_link(&self, node: &Node, link: Link) -> Result<Link> {
        let path = self.layout.link(&node.name());
        let bytes = codec::encode_json("link", &link)?;
        let opts = PutOptions {
            mode: PutMode::Create,
            ..Default::default()
        };
        match self
            .store
            .put_opts(&path, PutPayload::from(bytes), opts)
            .await
        {
            Ok(_) => Ok(link),
            Err(object_store::Error::AlreadyExists { .. })
            | Err(object_store::Error::Precondition { .. }) => self
                .read_link(node)
                .await?
                .ok_or_else(|| CheckpointError::Corrupt {
                    path: path.to_string(),
                    reason: "the link exists and cannot be read back".into(),
                }),
            Err(e) => Err(CheckpointError::storage("put", &path, e)),
        }
    }

    /// Whether a manifest's checkpoint is committed (see [`protocol::is_committed`]). A
    /// manifest without a link (written before links existed) is committed by existing.
    pub async fn is_committed(&self, manifest: &Manifest) -> Result<bool> {
        let Some(name) = &manifest.link else {
            return Ok(true);
        };
        let Some(node) = Node::parse(name) else {
            return Err(CheckpointError::Corrupt {
                path: self.layout.manifest(manifest.epoch).to_string(),
                reason: format!("its link `{name}` names no node"),
            });
        };
        let link = self.read_link(&node).await?;
        Ok(protocol::is_committed(
            manifest.generation,
            manifest.epoch,
            link.as_ref(),
        ))
    }

    /// Fails with [`CheckpointError::Uncommitted`] unless the manifest is committed.
    pub async fn check_committed(&self, manifest: &Manifest) -> Result<()> {
        if self.is_committed(manifest).await? {
            return Ok(());
        }
        let link = match manifest.link.as_deref().and_then(Node::parse) {
            Some(node) => self.read_link(&node).await?,
            None => None,
        };
        Err(CheckpointError::Uncommitted {
            epoch: manifest.epoch,
            generation: manifest.generation,
            reason: match link {
                None => "its link was never written".into(),
                Some(Link { generation, epoch }) => format!(
                    "its place is taken by generation {generation}{}",
                    epoch.map_or(" (a restart)".into(), |e| format!(" (checkpoint {e})"))
                ),
            },
        })
    }

    /// Takes this generation's place in the job's history, before it recovers any sink
    /// output: links the node it restores from (`restored`, `None` for the beginning) to
    /// its restart, following restarts of other generations that never committed a
    /// checkpoint. From then on no older generation can commit a checkpoint after that
    /// node.
    ///
    /// `seen` are the complete checkpoints listed when the start was planned. Returns the
    /// node this generation's first checkpoint follows, or `Err(epoch)` of a checkpoint
    /// committed since the start was planned, which the job must restore instead.
    pub async fn seal(
        &self,
        own: Generation,
        restored: Option<Epoch>,
        seen: &[Epoch],
    ) -> Result<std::result::Result<Node, Epoch>> {
        let mut node = Node::Checkpoint(restored.unwrap_or(Epoch(0)));
        let mine = Link {
            generation: own,
            epoch: None,
        };
        loop {
            let link = self.read_link(&node).await?;
            let step = protocol::seal_step(own, &node, link.as_ref(), seen);
            match step {
                SealStep::Create => {
                    let there = self.create_link(&node, mine).await?;
                    if there != mine {
                        // Another generation got there first: decide again on its link.
                        continue;
                    }
                }
                SealStep::Sealed => {}
                SealStep::Follow(next) => {
                    node = next;
                    continue;
                }
                SealStep::Overwrite => {
                    let path = self.layout.link(&node.name());
                    self.put_object(&path, codec::encode_json("link", &mine)?)
                        .await?;
                }
                SealStep::Newer(epoch) => return Ok(Err(epoch)),
            }
            return Ok(Ok(Node::Restart {
                epoch: node.epoch(),
                generation: own,
            }));
        }
    }

    /// Writes a checkpoint's manifest and commits it by creating the link of the node it
    /// follows (named in `manifest.link`): [`Self::write_manifest`], then
    /// [`Self::link_manifest`].
    pub async fn commit_manifest(&self, manifest: &Manifest, follows: Node) -> Result<Committed> {
        self.write_manifest(manifest).await?;
        self.link_manifest(manifest, follows).await
    }

    /// Writes a checkpoint's manifest, the first step of committing it. A manifest at the
    /// same epoch that is not committed (written by a fenced generation) is moved aside
    /// first. Until [`Self::link_manifest`] succeeds the checkpoint is not committed: a
    /// restore passes it over.
    pub async fn write_manifest(&self, manifest: &Manifest) -> Result<()> {
        match self.put_manifest(manifest).await {
            Ok(()) => {}
            Err(CheckpointError::ManifestExists { .. }) => {
                let there = self.read_manifest(manifest.epoch).await?;
                if self.is_committed(&there).await? {
                    return Err(CheckpointError::ManifestExists {
                        path: self.layout.manifest(manifest.epoch).to_string(),
                    });
                }
                tracing::warn!(
                    epoch = %manifest.epoch,
                    generation = %there.generation,
                    "an uncommitted manifest of a fenced generation is in the way: moving it aside"
                );
                self.abandon(&[manifest.epoch]).await?;
                self.put_manifest(manifest).await?;
            }
            Err(e) => return Err(e),
        }
        Ok(())
    }

    /// Commits a checkpoint whose manifest is written by creating the link of the node
    /// it follows (named in `manifest.link`), unless another generation's link is there.
    pub async fn link_manifest(&self, manifest: &Manifest, follows: Node) -> Result<Committed> {
        debug_assert_eq!(manifest.link.as_deref(), Some(follows.name().as_str()));
        let link = Link {
            generation: manifest.generation,
            epoch: Some(manifest.epoch),
        };
        let there = self.create_link(&follows, link).await?;
        Ok(if there == link {
            Committed::Yes {
                next: Node::Checkpoint(manifest.epoch),
            }
        } else if there.generation != manifest.generation {
            Committed::Fenced {
                by: there.generation,
            }
        } else {
            match there.epoch {
                Some(epoch) => Committed::Earlier { epoch },
                // This generation's own restart link is never created as a checkpoint's.
                None => Committed::Fenced {
                    by: there.generation,
                },
            }
        })
    }
}
