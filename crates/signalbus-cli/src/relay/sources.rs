//! Where a relay's list of databases comes from: the command line or the configuration's
//! `databases` (fixed), a file of URLs and a catalog database (read again on SIGHUP and every
//! `reload_every`). A source that cannot be read keeps its last list: a catalog that is
//! briefly down never lets a fleet's databases go.

use crate::config::FleetConfig;
use crate::error::CliError;
use signalbus::redact::redact_url;
use signalbus::storage::DatabaseKind;
use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

/// How long one read of the catalog may take.
const CATALOG_TIMEOUT: Duration = Duration::from_secs(10);

/// The sources of a relay's databases, and what each last gave.
#[derive(Debug)]
pub struct Sources {
    fixed: Vec<String>,
    /// The configuration file whose `databases` are the fixed list, read again each time.
    config: Option<PathBuf>,
    file: Option<PathBuf>,
    file_urls: Vec<String>,
    catalog: Option<Catalog>,
    catalog_urls: Vec<String>,
    /// Why the last load of the file or the catalog failed, if it did.
    last_error: Option<String>,
}

#[derive(Debug)]
struct Catalog {
    url: String,
    query: String,
}

impl Sources {
    /// The sources of `fixed` (the command line's or the configuration's URLs, checked
    /// already) and the configuration's `[fleet]` table; with `config`, the fixed list is the
    /// `databases` of that file, read again at each load.
    pub fn new(
        fixed: Vec<String>,
        config: Option<PathBuf>,
        fleet: &FleetConfig,
    ) -> Result<Self, CliError> {
        let catalog = match (
            &fleet.catalog_url,
            &fleet.catalog_url_env,
            &fleet.catalog_query,
        ) {
            (Some(url), None, Some(query)) => Some((url.clone(), query.clone())),
            (None, Some(var), Some(query)) => {
                let url = std::env::var(var).map_err(|_| {
                    CliError::msg(format!(
                        "[fleet] catalog_url_env names `{var}`, which is not set: set it to \
                         the catalog database's URL"
                    ))
                })?;
                Some((url, query.clone()))
            }
            _ => None,
        };
        if let Some((url, _)) = &catalog {
            DatabaseKind::of(url).map_err(|e| {
                CliError::caused(format!("bad catalog database URL `{}`", redact_url(url)), e)
            })?;
        }
        Ok(Sources {
            fixed,
            config,
            file: fleet.databases_file.clone(),
            file_urls: Vec::new(),
            catalog: catalog.map(|(url, query)| Catalog { url, query }),
            catalog_urls: Vec::new(),
            last_error: None,
        })
    }

    /// Whether the list may change on its own while the relay runs (a file or a catalog:
    /// read again periodically).
    pub fn is_dynamic(&self) -> bool {
        self.file.is_some() || self.catalog.is_some()
    }

    /// Why the last load failed (the previous list stayed), if it did.
    pub fn last_error(&self) -> Option<&str> {
        self.last_error.as_deref()
    }

    /// Read the file and the catalog again; the whole list, without duplicates. A source
    /// that cannot be read keeps what it gave last (and says why in the log and
    /// [`Sources::last_error`]); an entry that is not a database URL is left out with a
    /// warning.
    pub async fn load(&mut self) -> Vec<String> {
        let mut errors = Vec::new();
        if let Some(path) = &self.config {
            match crate::config::Config::load(path) {
                Ok(config) => {
                    let text = config.databases.join("\n");
                    self.fixed = urls_of(&text, &format!("`{}`", path.display()));
                }
                // The error may quote a URL of the file, password and all.
                Err(e) => errors.push(redact_urls_in(&e.to_string())),
            }
        }
        if let Some(path) = &self.file {
            match std::fs::read_to_string(path) {
                Ok(text) => self.file_urls = urls_of(&text, &format!("`{}`", path.display())),
                Err(e) => errors.push(format!(
                    "cannot read the databases file `{}`: {e}",
                    path.display()
                )),
            }
        }
        if let Some(catalog) = &self.catalog {
            match tokio::time::timeout(CATALOG_TIMEOUT, catalog.read()).await {
                Ok(Ok(urls)) => {
                    let text = urls.join("\n");
                    self.catalog_urls = urls_of(&text, "the catalog");
                }
                Ok(Err(e)) => errors.push(format!(
                    "cannot read the catalog at `{}`: {e}",
                    redact_url(&catalog.url)
                )),
                Err(_) => errors.push(format!(
                    "cannot read the catalog at `{}`: no answer within {CATALOG_TIMEOUT:?}",
                    redact_url(&catalog.url)
                )),
            }
        }
        for e in &errors {
            tracing::warn!(error = %e, "fleet: keeping the previous list of databases");
        }
        self.last_error = (!errors.is_empty()).then(|| errors.join("; "));
        let all: BTreeSet<String> = self
            .fixed
            .iter()
            .chain(&self.file_urls)
            .chain(&self.catalog_urls)
            .cloned()
            .collect();
        all.into_iter().collect()
    }
}

/// `text` with the password of every URL in it hidden (words split at spaces and quotes).
fn redact_urls_in(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut word = String::new();
    let flush = |word: &mut String, out: &mut String| {
        if word.contains("://") {
            out.push_str(&redact_url(word));
        } else {
            out.push_str(word);
        }
        word.clear();
    };
    for c in text.chars() {
        if c.is_whitespace() || matches!(c, '"' | '\'' | '`' | ',' | '[' | ']') {
            flush(&mut word, &mut out);
            out.push(c);
        } else {
            word.push(c);
        }
    }
    flush(&mut word, &mut out);
    out
}

/// The URLs of a list, one per line (blank lines and `#` comments skipped); entries that are
/// not database URLs are left out with a warning (credentials hidden).
fn urls_of(text: &str, origin: &str) -> Vec<String> {
    text.lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .filter(|url| match DatabaseKind::of(url) {
            Ok(_) => true,
            Err(e) => {
                tracing::warn!(origin, entry = %redact_url(url), error = %e, "fleet: not a database URL; left out");
                false
            }
        })
        .map(str::to_owned)
        .collect()
}

impl Catalog {
    /// The first column of every row of the catalog's query, as text.
    async fn read(&self) -> Result<Vec<String>, sqlx::Error> {
        use sqlx::Connection as _;
        let kind = DatabaseKind::of(&self.url).map_err(|e| sqlx::Error::Configuration(e.into()))?;
        // Sent as a plain query (no prepared statement): a catalog behind PgBouncer in
        // transaction mode reads as well.
        let query = sqlx::AssertSqlSafe(self.query.clone());
        macro_rules! read {
            ($conn:ty) => {{
                use sqlx::Row as _;
                let mut conn = <$conn>::connect(&self.url).await?;
                let rows = sqlx::raw_sql(query).fetch_all(&mut conn).await;
                let _ = conn.close().await;
                rows?
                    .iter()
                    .map(|row| row.try_get::<String, _>(0))
                    .collect()
            }};
        }
        match kind {
            DatabaseKind::Postgres => read!(sqlx::PgConnection),
            DatabaseKind::MySql => read!(sqlx::MySqlConnection),
            DatabaseKind::Sqlite => read!(sqlx::SqliteConnection),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_in_an_error_lose_their_password() {
        let said = redact_urls_in(
            "invalid type: string \"postgres://u:pw@db/x\", expected a sequence at mysql://a:b@h/y",
        );
        assert!(!said.contains("pw") && !said.contains(":b@"), "{said}");
        assert!(said.contains("postgres://u:***@db/x"), "{said}");
    }

    #[test]
    fn a_list_skips_comments_blank_lines_and_what_is_not_a_database() {
        let urls = urls_of(
            "# tenants\npostgres://a/x\n\n  mysql://b/y  \nftp://nope\nsqlite:c.db\n",
            "test",
        );
        assert_eq!(urls, ["postgres://a/x", "mysql://b/y", "sqlite:c.db"]);
    }

    #[tokio::test]
    async fn a_file_that_cannot_be_read_keeps_the_last_list() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("tenants.txt");
        std::fs::write(&file, "sqlite:a.db\nsqlite:b.db\n").unwrap();
        let fleet = FleetConfig {
            databases_file: Some(file.clone()),
            ..FleetConfig::default()
        };
        let mut sources = Sources::new(vec!["sqlite:fixed.db".into()], None, &fleet).unwrap();
        assert!(sources.is_dynamic());
        let all = sources.load().await;
        assert_eq!(all, ["sqlite:a.db", "sqlite:b.db", "sqlite:fixed.db"]);
        assert!(sources.last_error().is_none());
        std::fs::remove_file(&file).unwrap();
        assert_eq!(sources.load().await, all, "kept");
        assert!(sources.last_error().unwrap().contains("tenants.txt"));
        std::fs::write(&file, "sqlite:b.db\n").unwrap();
        assert_eq!(sources.load().await, ["sqlite:b.db", "sqlite:fixed.db"]);
        assert!(sources.last_error().is_none());
    }
}
