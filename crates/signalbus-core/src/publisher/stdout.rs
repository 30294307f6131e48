use super::{BatchOutcome, Publisher};
use crate::error::{PublishError, PublishErrorKind};
use crate::message::Message;
use tokio::io::AsyncWriteExt;

/// Writes each message as one JSON line on standard output: for the quick start and for
/// debugging. A batch counts as delivered once it is written and flushed.
#[derive(Debug, Clone, Default)]
pub struct StdoutPublisher {
    _private: (),
}

impl StdoutPublisher {
    /// A publisher writing to standard output.
    pub fn new() -> Self {
        Self::default()
    }
}

impl Publisher for StdoutPublisher {
    async fn publish(&self, batch: &[Message]) -> Result<BatchOutcome, PublishError> {
        let text = super::file::json_lines(batch)?;
        let mut out = tokio::io::stdout();
        out.write_all(&text).await.map_err(io_error)?;
        out.flush().await.map_err(io_error)?;
        Ok(BatchOutcome::all_stored())
    }
}

fn io_error(e: std::io::Error) -> PublishError {
    PublishError::new(PublishErrorKind::Io, "cannot write to standard output").with_source(e)
}
