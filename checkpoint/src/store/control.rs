//! The job's control objects: the stop request (`weir stop`) and the generation markers
//! that fence older generations.

use object_store::{ObjectStoreExt, PutMode, PutOptions, PutPayload};

use super::CheckpointStore;
use crate::codec;
use crate::error::{CheckpointError, Result};
use crate::ids::Generation;
use crate::layout;
use crate::protocol::RestoreTarget;

impl CheckpointStore {
    /// Asks the running job to stop with a final savepoint `name`: its sources stop
    /// reading, its last checkpoint completes and is copied to the savepoint, and the job
    /// exits. Overwrites an earlier request.
    pub async fn request_stop(&self, savepoint: &str) -> Result<()> {
        layout::check_savepoint_name(savepoint).map_err(|reason| CheckpointError::InvalidUrl {
            url: self.url.clone(),
            reason,
        })?;
        let bytes = codec::encode_json(
            "stop request",
            &StopRequest {
                savepoint: savepoint.to_string(),
            },
        )?;
        self.put_object(&self.layout.stop_request(), bytes).await
    }

    /// The savepoint name of a pending stop request, if there is one.
    pub async fn stop_request(&self) -> Result<Option<String>> {
        let path = self.layout.stop_request();
        match self.store.get(&path).await {
            Ok(r) => {
                let bytes = r
                    .bytes()
                    .await
                    .map_err(|e| CheckpointError::storage("read", &path, e))?;
                let req: StopRequest = codec::decode_json(path.as_ref(), &bytes)?;
                Ok(Some(req.savepoint))
            }
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(CheckpointError::storage("get", &path, e)),
        }
    }

    /// Removes a stop request once it has been carried out.
    pub async fn clear_stop_request(&self) -> Result<()> {
        let path = self.layout.stop_request();
        match self.store.delete(&path).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(CheckpointError::storage("delete", &path, e)),
        }
    }

    /// Announces a generation, returning every generation announced so far (this one included).
    pub async fn announce_generation(&self, generation: Generation) -> Result<Vec<Generation>> {
        let path = self.layout.generation_marker(generation);
        self.store
            .put(&path, PutPayload::from_static(b""))
            .await
            .map_err(|e| CheckpointError::storage("put", &path, e))?;
        self.generations().await
    }

    /// Claims index `process` in `generation` for this process incarnation, with an
    /// atomic create-if-absent: `Ok(false)` if that claim exists already (another
    /// process took the index in that generation).
    pub async fn claim_generation(&self, generation: Generation, process: usize) -> Result<bool> {
        let path = self.layout.claim(generation, process);
        let opts = PutOptions {
            mode: PutMode::Create,
            ..Default::default()
        };
        match self
            .store
            .put_opts(&path, PutPayload::from_static(b""), opts)
            .await
        {
            Ok(_) => Ok(true),
            Err(object_store::Error::AlreadyExists { .. })
            | Err(object_store::Error::Precondition { .. }) => Ok(false),
            Err(e) => Err(CheckpointError::storage("put", &path, e)),
        }
    }

    /// Every rendezvous claim: generation and process index, in order.
    pub async fn claims(&self) -> Result<Vec<(Generation, usize)>> {
        let objects = self.list_objects(&self.layout.claims()).await?;
        let mut out: Vec<(Generation, usize)> = objects
            .iter()
            .filter_map(|o| o.location.filename().and_then(layout::parse_failure))
            .collect();
        out.sort_unstable();
        Ok(out)
    }

    /// Deletes the claims of generations older than `before`, which no rendezvous reads
    /// any more once `before` is announced.
    pub async fn prune_claims(&self, before: Generation) -> Result<()> {
        for (generation, process) in self.claims().await? {
            if generation >= before {
                break;
            }
            let path = self.layout.claim(generation, process);
            match self.store.delete(&path).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(CheckpointError::storage("delete", &path, e)),
            }
        }
        Ok(())
    }

    /// Records why `process` of `generation` failed, so that a later start can tell a
    /// job that keeps failing from one that was interrupted.
    pub async fn record_failure(
        &self,
        generation: Generation,
        process: usize,
        error: &str,
    ) -> Result<()> {
        self.put_object(
            &self.layout.failure(generation, process),
            error.as_bytes().to_vec(),
        )
        .await
    }

    /// Every failure record: generation, process and error, oldest first.
    pub async fn failures(&self) -> Result<Vec<(Generation, usize, String)>> {
        let root = self.layout.failures();
        let objects = self.list_objects(&root).await?;
        let mut out = Vec::new();
        for o in objects {
            let Some((generation, process)) = o.location.filename().and_then(layout::parse_failure)
            else {
                continue;
            };
            let text = match self.store.get(&o.location).await {
                Ok(r) => r
                    .bytes()
                    .await
                    .map(|b| String::from_utf8_lossy(&b).into_owned())
                    .unwrap_or_default(),
                Err(object_store::Error::NotFound { .. }) => continue,
                Err(e) => return Err(CheckpointError::storage("get", &o.location, e)),
            };
            out.push((generation, process, text));
        }
        out.sort();
        Ok(out)
    }

    /// Every generation announced so far.
    pub async fn generations(&self) -> Result<Vec<Generation>> {
        let root = self.layout.generations();
        let objects = self.list_objects(&root).await?;
        let mut gens: Vec<Generation> = objects
            .iter()
            .filter_map(|o| {
                o.location
                    .filename()
                    .and_then(layout::parse_generation_marker)
            })
            .collect();
        gens.sort_unstable();
        Ok(gens)
    }

    /// Records that `generation` restores `target`, an explicitly named savepoint or
    /// checkpoint, before it takes its place in the job's history and abandons the
    /// checkpoints newer than what it restores: until it commits a checkpoint of its own, a
    /// restart that asks for the latest checkpoint must restore `target` again (see
    /// [`crate::protocol::restore_again`]).
    pub async fn record_restore(
        &self,
        generation: Generation,
        target: &RestoreTarget,
    ) -> Result<()> {
        let bytes = codec::encode_json("restore record", target)?;
        self.put_object(&self.layout.restore_record(generation), bytes)
            .await
    }

    /// The newest generation that restored an explicitly named savepoint or checkpoint,
    /// with what it restored.
    pub async fn newest_restore(&self) -> Result<Option<(Generation, RestoreTarget)>> {
        let objects = self.list_objects(&self.layout.restores()).await?;
        let newest = objects
            .iter()
            .filter_map(|o| {
                let g = o
                    .location
                    .filename()
                    .and_then(layout::parse_generation_marker)?;
                Some((g, &o.location))
            })
            .max_by_key(|(g, _)| *g);
        let Some((generation, path)) = newest else {
            return Ok(None);
        };
        let bytes = self
            .store
            .get(path)
            .await
            .map_err(|e| CheckpointError::storage("get", path, e))?
            .bytes()
            .await
            .map_err(|e| CheckpointError::storage("read", path, e))?;
        let target: RestoreTarget = codec::decode_json(path.as_ref(), &bytes)?;
        Ok(Some((generation, target)))
    }
}

/// A request to stop a running job with a final savepoint.
#[derive(serde::Serialize, serde::Deserialize)]
struct StopRequest {
    savepoint: String,
}
