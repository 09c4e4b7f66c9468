//! Persisting the change stream's resume token, so a restart continues where it stopped.

use std::path::PathBuf;

use mongodb::change_stream::event::ResumeToken;

/// Where the resume token is kept (nowhere when no file is configured).
#[derive(Debug, Clone)]
pub struct ResumeStore {
    path: Option<PathBuf>,
}

impl ResumeStore {
    /// A store writing to `path` (`None`: tokens are kept in memory only).
    pub fn new(path: Option<PathBuf>) -> Self {
        Self { path }
    }

    /// The saved token, if any. An unreadable file is reported and ignored: the stream starts
    /// from now (at start-up no client is connected yet to be told).
    pub async fn load(&self) -> Option<ResumeToken> {
        let path = self.path.as_ref()?;
        let text = match tokio::fs::read_to_string(path).await {
            Ok(text) => text,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return None,
            Err(err) => {
                tracing::warn!(path = %path.display(), error = %err, "cannot read the resume token; starting from now");
                return None;
            }
        };
        match serde_json::from_str(&text) {
            Ok(token) => Some(token),
            Err(err) => {
                tracing::warn!(path = %path.display(), error = %err, "the resume token file is corrupt; starting from now");
                None
            }
        }
    }

    /// Saves a token atomically (write a temporary file, then rename).
    pub async fn save(&self, token: &ResumeToken) -> std::io::Result<()> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        let text = serde_json::to_string(token).map_err(std::io::Error::other)?;
        let temporary = path.with_extension("tmp");
        tokio::fs::write(&temporary, text).await?;
        tokio::fs::rename(&temporary, path).await
    }

    /// Forgets the saved token (after history was lost).
    pub async fn clear(&self) -> std::io::Result<()> {
        match &self.path {
            Some(path) => match tokio::fs::remove_file(path).await {
                Err(err) if err.kind() != std::io::ErrorKind::NotFound => Err(err),
                _ => Ok(()),
            },
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(data: &str) -> ResumeToken {
        #[derive(serde::Deserialize)]
        struct Wrapper {
            t: ResumeToken,
        }
        let bytes = bson::to_vec(&bson::doc! {"t": {"_data": data}}).expect("bytes");
        bson::from_slice::<Wrapper>(&bytes).expect("token").t
    }

    #[tokio::test]
    async fn tokens_survive_a_restart_and_bad_files_are_ignored() {
        let path = std::env::temp_dir().join(format!("livequery-resume-{}", uuid::Uuid::new_v4()));
        let store = ResumeStore::new(Some(path.clone()));
        assert!(store.load().await.is_none(), "no file yet");
        let saved = token("8263F1A2B4000000012B022C0100296E5A1004");
        store.save(&saved).await.expect("save");
        assert_eq!(
            ResumeStore::new(Some(path.clone())).load().await,
            Some(saved)
        );
        assert!(
            std::fs::read_to_string(&path)
                .expect("file")
                .contains("8263F1A2B4"),
            "readable JSON"
        );
        std::fs::write(&path, "{not json").expect("write");
        assert!(
            store.load().await.is_none(),
            "a corrupt file starts from now"
        );
        store.clear().await.expect("clear");
        store.clear().await.expect("clearing twice is fine");
        assert!(!path.exists());
        assert!(ResumeStore::new(None).load().await.is_none());
    }
}
