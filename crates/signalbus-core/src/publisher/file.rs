use super::{BatchOutcome, Publisher};
use crate::error::{Error, PublishError, PublishErrorKind, Result};
use crate::message::Message;
use std::path::{Path, PathBuf};
use tokio::io::AsyncWriteExt;
use tokio::sync::Mutex;

/// Appends each message as one JSON line to a file. A batch counts as delivered once it is
/// written and synced to disk, so a crash never loses a message the file was said to have.
#[derive(Debug)]
pub struct FilePublisher {
    path: PathBuf,
    file: Mutex<tokio::fs::File>,
}

impl FilePublisher {
    /// Open (or create) `path` for appending.
    pub async fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let file = tokio::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .await
            .map_err(|e| {
                Error::Config(format!(
                    "cannot open `{}` for appending: {e}",
                    path.display()
                ))
            })?;
        Ok(FilePublisher {
            path,
            file: Mutex::new(file),
        })
    }

    /// The file written to.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Publisher for FilePublisher {
    async fn publish(&self, batch: &[Message]) -> Result<BatchOutcome, PublishError> {
        let text = json_lines(batch)?;
        let mut file = self.file.lock().await;
        let io = |e| {
            PublishError::new(
                PublishErrorKind::Io,
                format!("cannot write to `{}`", self.path.display()),
            )
            .with_source(e)
        };
        file.write_all(&text).await.map_err(io)?;
        file.sync_data().await.map_err(io)?;
        Ok(BatchOutcome::all_stored())
    }
}

/// The batch as JSON lines.
pub(super) fn json_lines(batch: &[Message]) -> Result<Vec<u8>, PublishError> {
    let mut out = Vec::with_capacity(batch.len() * 128);
    for message in batch {
        serde_json::to_writer(&mut out, message).map_err(|e| {
            PublishError::new(PublishErrorKind::Other, "cannot encode message as JSON")
                .with_source(e)
        })?;
        out.push(b'\n');
    }
    Ok(out)
}
