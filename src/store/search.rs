//! Session history and the full-text index of what recordings showed (migrations 0010 and 0014): the
//! one place that knows how each database searches text. SQLite matches with FTS5 (`… MATCH`),
//! PostgreSQL with a GIN-indexed tsvector (`tsv @@ phraseto_tsquery('simple', …)`); both over words
//! the indexer normalised with `chaperone_recorder::transcript::words`, and both asked for the same
//! phrase of normalised words, so the same query finds the same sessions on both.
//!
//! A recording's words are indexed twice, for two questions: in chunks of lines (`recording_text`,
//! with the lines and their times: where in this recording, for the transcript) and in long parts
//! (`recording_words`, up to [`PART_WORDS`] words: which sessions, for the history). A word found
//! everywhere matches a few rows per recording in the second, not one per chunk, so the history takes
//! its newest sessions without mapping hundreds of thousands of chunks to theirs.
//!
//! The index tables are bookkeeping (every row is derived from a recording the audit chain vouches
//! for) and are written directly, without an audit event; searching and viewing are audited by their
//! callers.

use sqlx::AssertSqlSafe;
use sqlx::any::AnyRow;

use super::sessions::{RECORDING_COLUMNS, SESSION_SELECT, recording, session};
use super::{Backend, Context, Result, Store, get};
use crate::model::{RecordingRow, SessionRow, UnixTime};

/// What the history is filtered on; every field narrows it (they combine with AND).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HistoryFilter {
    /// One session.
    pub id: Option<String>,
    pub vendor: Option<String>,
    /// The vendor's organisation.
    pub org: Option<String>,
    pub asset: Option<String>,
    pub zone: Option<String>,
    /// `shell`, `exec`, `sftp`, `tunnel`, `jump`.
    pub kind: Option<String>,
    /// Started at or after (unix seconds).
    pub since: Option<UnixTime>,
    /// Started before (unix seconds).
    pub until: Option<UnixTime>,
    /// How it ended (`sessions.end_cause`), or `live` for sessions still running.
    pub ended: Option<String>,
    /// Words that must appear in this order in the text of one of its recordings (already normalised
    /// by `transcript::words`; empty means no text filter).
    pub words: Option<String>,
}

/// One session of the history, with what the list shows beside it.
#[derive(Debug, Clone)]
pub struct HistoryRow {
    pub session: SessionRow,
    pub org: String,
    pub zone: String,
    /// The grant's reason (a staff grant's, or the request's it was issued from).
    pub grant_reason: String,
    /// The reason (ticket) the vendor gave in the request, when the grant came from one.
    pub request_reason: Option<String>,
    pub request_id: Option<i64>,
    /// The node that ran it.
    pub node: Option<String>,
}

/// One chunk of a recording's text.
#[derive(Debug, Clone)]
pub struct TextChunk {
    pub recording_id: i64,
    pub seq: i64,
    /// Each line's time (milliseconds since the recording started).
    pub times: Vec<i64>,
    pub lines: Vec<String>,
}

/// A chunk to store.
#[derive(Debug, Clone)]
pub struct NewTextChunk {
    pub seq: i64,
    pub times: String,
    pub body: String,
    pub words: String,
}

/// A part of a recording's words to store: consecutive lines' words (normalised), at most
/// [`PART_WORDS`] of them and [`PART_CHARS`] characters.
#[derive(Debug, Clone)]
pub struct NewWordsPart {
    pub seq: i64,
    pub words: String,
}

/// Words in a part, at most: below PostgreSQL's last tsvector position (16,383; later words would all
/// sit there and phrases would match wrongly).
pub const PART_WORDS: usize = 16_000;
/// Characters in a part, at most (a tsvector holds at most 1 MB).
pub const PART_CHARS: usize = 256 * 1024;

/// What the indexer made of a recording.
#[derive(Debug, Clone)]
pub struct IndexRow {
    pub recording_id: i64,
    pub session_id: String,
    /// `indexing`, `indexed` or `failed`.
    pub status: String,
    pub sha256: Option<String>,
    pub playback: Option<String>,
    pub mac: Option<String>,
    pub note: Option<String>,
    pub lines: i64,
    pub indexed_at: UnixTime,
}

/// An indexer's claim on one recording's index: the token it wrote in the row's `note` while the row is
/// `indexing`. Every write of the indexer names it, so one that was taken over (another indexer judged it
/// dead) writes nothing more.
#[derive(Debug, Clone)]
pub struct IndexClaim {
    pub recording_id: i64,
    token: String,
}

/// Whether `claim` still holds its recording, its row locked in `tx` from here on (a takeover waits for
/// `tx`, then clears what it wrote).
async fn holds(tx: &mut sqlx::Transaction<'static, sqlx::Any>, claim: &IndexClaim) -> Result<bool> {
    let locked = sqlx::query(
        "UPDATE recording_index SET note = note \
         WHERE recording_id = $1 AND status = 'indexing' AND note = $2",
    )
    .bind(claim.recording_id)
    .bind(&claim.token)
    .execute(&mut **tx)
    .await
    .context("holding a recording's index claim")?;
    Ok(locked.rows_affected() == 1)
}

/// A session row (the columns `sessions::session` reads) and what the history shows beside it.
const HISTORY_SELECT: &str = "SELECT s.id, v.name AS vendor, a.name AS asset, s.grant_id, s.kind, \
     s.service, s.client_addr, s.detail, s.started_at, s.ended_at, s.end_reason, s.end_cause, s.bytes_up, \
     s.bytes_down, v.org AS org, a.zone AS zone, g.reason AS grant_reason, g.request_id AS request_id, \
     r.reason AS request_reason, s.node AS node, s.held_at, s.held_by, s.hold_reason \
     FROM sessions s JOIN vendors v ON v.id = s.vendor_id JOIN assets a ON a.id = s.asset_id \
     JOIN grants g ON g.id = s.grant_id LEFT JOIN access_requests r ON r.id = g.request_id";

/// A claim on a recording to index is taken over after this long (its indexer died).
pub const CLAIM_SECS: i64 = 600;

enum Bind {
    Text(String),
    Int(i64),
}

/// The phrase query for `words` in this backend's syntax (`words` holds only letters, digits and
/// single spaces, so nothing in it is syntax).
fn phrase(backend: Backend, words: &str) -> String {
    match backend {
        Backend::Sqlite => format!("\"{words}\""),
        Backend::Postgres => words.to_owned(),
    }
}

/// The sessions whose recordings' words hold the phrase `$n`, as a subquery, for this backend.
fn sessions_with_words(backend: Backend, n: usize) -> String {
    match backend {
        Backend::Sqlite => format!(
            "SELECT w.session_id FROM recording_words w WHERE w.id IN \
             (SELECT rowid FROM recording_words_fts WHERE recording_words_fts MATCH ${n})"
        ),
        Backend::Postgres => format!(
            "SELECT w.session_id FROM recording_words w WHERE w.tsv @@ phraseto_tsquery('simple', ${n})"
        ),
    }
}

/// Removes what the index holds of recording `recording_id`'s text (chunks and parts): when its
/// indexing starts again or is given up, when what was read was not what the chain vouches for, and
/// when retention deletes the recording.
pub(super) async fn delete_recording_text(
    conn: &mut sqlx::AnyConnection,
    recording_id: i64,
) -> Result<()> {
    for sql in [
        "DELETE FROM recording_text WHERE recording_id = $1",
        "DELETE FROM recording_words WHERE recording_id = $1",
    ] {
        sqlx::query(sql)
            .bind(recording_id)
            .execute(&mut *conn)
            .await
            .context("deleting a recording's searchable text")?;
    }
    Ok(())
}

/// `t.id IN (chunks whose text matches $n)` for this backend.
fn text_match(backend: Backend, n: usize) -> String {
    match backend {
        Backend::Sqlite => format!(
            "t.id IN (SELECT rowid FROM recording_text_fts WHERE recording_text_fts MATCH ${n})"
        ),
        Backend::Postgres => format!("t.tsv @@ phraseto_tsquery('simple', ${n})"),
    }
}

fn index_row(row: &AnyRow) -> Result<IndexRow> {
    Ok(IndexRow {
        recording_id: get(row, "recording_id")?,
        session_id: get(row, "session_id")?,
        status: get(row, "status")?,
        sha256: get(row, "sha256")?,
        playback: get(row, "playback")?,
        mac: get(row, "mac")?,
        note: get(row, "note")?,
        lines: get(row, "lines")?,
        indexed_at: get(row, "indexed_at")?,
    })
}

impl Store {
    /// Sessions matching `filter`, newest first: `limit` of them after skipping `offset`.
    pub async fn session_history(
        &self,
        filter: &HistoryFilter,
        limit: i64,
        offset: i64,
    ) -> Result<Vec<HistoryRow>> {
        let mut clauses = Vec::new();
        let mut binds = Vec::new();
        // `?` in a clause is its value's placeholder.
        let mut add = |clause: &str, value: Option<Bind>| {
            if let Some(value) = value {
                binds.push(value);
            }
            clauses.push(clause.replace('?', &format!("${}", binds.len())));
        };
        let text = |v: &Option<String>| v.clone().filter(|s| !s.is_empty());
        if let Some(v) = text(&filter.id) {
            add("s.id = ?", Some(Bind::Text(v)));
        }
        if let Some(v) = text(&filter.vendor) {
            add("v.name = ?", Some(Bind::Text(v)));
        }
        if let Some(v) = text(&filter.org) {
            add("v.org = ?", Some(Bind::Text(v)));
        }
        if let Some(v) = text(&filter.asset) {
            add("a.name = ?", Some(Bind::Text(v)));
        }
        if let Some(v) = text(&filter.zone) {
            add("a.zone = ?", Some(Bind::Text(v)));
        }
        if let Some(v) = text(&filter.kind) {
            add("s.kind = ?", Some(Bind::Text(v)));
        }
        if let Some(v) = filter.since {
            add("s.started_at >= ?", Some(Bind::Int(v)));
        }
        if let Some(v) = filter.until {
            add("s.started_at < ?", Some(Bind::Int(v)));
        }
        match text(&filter.ended).as_deref() {
            None => {}
            Some("live") => add("s.ended_at IS NULL", None),
            Some(cause) => add("s.end_cause = ?", Some(Bind::Text(cause.to_owned()))),
        }
        if let Some(words) = text(&filter.words) {
            let clause = format!(
                "s.id IN ({})",
                sessions_with_words(self.backend, 0).replace("$0", "?")
            );
            add(&clause, Some(Bind::Text(phrase(self.backend, &words))));
        }
        let filter_sql = if clauses.is_empty() {
            String::new()
        } else {
            format!(" WHERE {}", clauses.join(" AND "))
        };
        let n = binds.len();
        // Only constant text and `$n` placeholders are interpolated; every value is bound.
        let sql = format!(
            "{HISTORY_SELECT}{filter_sql} ORDER BY s.started_at DESC, s.id DESC LIMIT ${} OFFSET ${}",
            n + 1,
            n + 2
        );
        let mut query = sqlx::query(AssertSqlSafe(sql));
        for b in binds {
            query = match b {
                Bind::Text(t) => query.bind(t),
                Bind::Int(i) => query.bind(i),
            };
        }
        let rows = query
            .bind(limit)
            .bind(offset)
            .fetch_all(&self.pool)
            .await
            .context("searching the session history")?;
        let mut out = Vec::with_capacity(rows.len());
        for row in &rows {
            let mut s = session(row)?;
            s.recordings = self.recordings_of(&s.id).await?;
            out.push(HistoryRow {
                session: s,
                org: get(row, "org")?,
                zone: get(row, "zone")?,
                grant_reason: get(row, "grant_reason")?,
                request_reason: get(row, "request_reason")?,
                request_id: get(row, "request_id")?,
                node: get(row, "node")?,
            });
        }
        Ok(out)
    }

    /// The chunks of session `session_id`'s text that hold the phrase `words` (normalised), in order.
    pub async fn session_text_matches(
        &self,
        session_id: &str,
        words: &str,
        limit: i64,
    ) -> Result<Vec<TextChunk>> {
        let sql = format!(
            "SELECT t.recording_id, t.seq, t.times, t.body FROM recording_text t \
             WHERE t.session_id = $1 AND {} ORDER BY t.recording_id, t.seq LIMIT $3",
            text_match(self.backend, 2)
        );
        let rows = sqlx::query(AssertSqlSafe(sql))
            .bind(session_id)
            .bind(phrase(self.backend, words))
            .bind(limit)
            .fetch_all(&self.pool)
            .await
            .context("searching a session's text")?;
        rows.iter()
            .map(|r| {
                let times: String = get(r, "times")?;
                let body: String = get(r, "body")?;
                Ok(TextChunk {
                    recording_id: get(r, "recording_id")?,
                    seq: get(r, "seq")?,
                    times: times.split(',').filter_map(|t| t.parse().ok()).collect(),
                    lines: body.split('\n').map(str::to_owned).collect(),
                })
            })
            .collect()
    }

    /// Closed recordings the indexer has not done (nor claimed within [`CLAIM_SECS`]), oldest first.
    pub async fn recordings_to_index(
        &self,
        now: UnixTime,
        limit: i64,
    ) -> Result<Vec<RecordingRow>> {
        // A recording retention deleted is not indexed again (its text went with its file).
        let rows = sqlx::query(AssertSqlSafe(format!(
            "SELECT {RECORDING_COLUMNS} \
             FROM recordings r LEFT JOIN recording_index i ON i.recording_id = r.id \
             WHERE r.closed_at IS NOT NULL AND r.deleted_at IS NULL \
             AND (i.recording_id IS NULL OR (i.status = 'indexing' AND i.indexed_at < $1)) \
             ORDER BY r.id LIMIT $2"
        )))
        .bind(now - CLAIM_SECS)
        .bind(limit)
        .fetch_all(&self.pool)
        .await
        .context("listing recordings to index")?;
        rows.iter().map(recording).collect()
    }

    /// Claims recording `r` for indexing (`None`: another indexer has it, or it is done), and clears
    /// whatever text an indexer that died left of it. The claim is the indexer's alone: every write it
    /// makes afterwards names it ([`IndexClaim`]) and is refused once another indexer took the recording
    /// over (a claim not renewed for [`CLAIM_SECS`] is taken for its indexer's death).
    pub async fn claim_recording_index(
        &self,
        r: &RecordingRow,
        now: UnixTime,
    ) -> Result<Option<IndexClaim>> {
        let claim = IndexClaim {
            recording_id: r.id,
            token: format!("claim:{}", crate::secrets::random_hex(12)),
        };
        let w = self.write_tx("claiming a recording").await?;
        // The writer turn (`w.writer`) is held until the end of this function, after the commit.
        let mut tx = w.tx;
        let inserted = sqlx::query(
            "INSERT INTO recording_index (recording_id, session_id, status, indexed_at, note) \
             VALUES ($1, $2, 'indexing', $3, $4) ON CONFLICT (recording_id) DO NOTHING",
        )
        .bind(r.id)
        .bind(&r.session_id)
        .bind(now)
        .bind(&claim.token)
        .execute(&mut *tx)
        .await
        .context("claiming a recording")?
        .rows_affected();
        let claimed = inserted == 1
            || sqlx::query(
                "UPDATE recording_index SET indexed_at = $1, note = $2 \
                 WHERE recording_id = $3 AND status = 'indexing' AND indexed_at < $4",
            )
            .bind(now)
            .bind(&claim.token)
            .bind(r.id)
            .bind(now - CLAIM_SECS)
            .execute(&mut *tx)
            .await
            .context("claiming a recording")?
            .rows_affected()
                == 1;
        if claimed {
            delete_recording_text(&mut tx, r.id).await?;
        }
        tx.commit().await.context("claiming a recording")?;
        Ok(claimed.then_some(claim))
    }

    /// Keeps `claim` alive at `now` (an indexer renews it well within [`CLAIM_SECS`] however long its pass
    /// takes); false when another indexer took the recording over.
    pub async fn renew_recording_claim(&self, claim: &IndexClaim, now: UnixTime) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE recording_index SET indexed_at = $1 \
             WHERE recording_id = $2 AND status = 'indexing' AND note = $3",
        )
        .bind(now)
        .bind(claim.recording_id)
        .bind(&claim.token)
        .execute(&self.pool)
        .await
        .context("renewing a recording's index claim")?;
        Ok(done.rows_affected() == 1)
    }

    /// Adds chunks and parts of recording `recording_id`'s text, in one short transaction (a writer on
    /// SQLite holds the database's one write lock: the indexer writes in small pieces, never for long).
    /// Written only while `claim` holds (its row is locked first: a takeover waits for this
    /// transaction and then clears what it wrote); false when it no longer does.
    pub async fn add_recording_text(
        &self,
        claim: &IndexClaim,
        session_id: &str,
        chunks: &[NewTextChunk],
        parts: &[NewWordsPart],
    ) -> Result<bool> {
        let recording_id = claim.recording_id;
        let w = self.write_tx("indexing text").await?;
        // The writer turn (`w.writer`) is held until the end of this function, after the commit.
        let mut tx = w.tx;
        if !holds(&mut tx, claim).await? {
            return Ok(false);
        }
        for c in chunks {
            sqlx::query(
                "INSERT INTO recording_text (recording_id, session_id, seq, times, body, words) \
                 VALUES ($1, $2, $3, $4, $5, $6)",
            )
            .bind(recording_id)
            .bind(session_id)
            .bind(c.seq)
            .bind(&c.times)
            .bind(&c.body)
            .bind(&c.words)
            .execute(&mut *tx)
            .await
            .context("indexing text")?;
        }
        for p in parts {
            match self.backend {
                // Contentless FTS5: the row of words goes in under the part's id.
                Backend::Sqlite => {
                    let id: i64 = sqlx::query_scalar(
                        "INSERT INTO recording_words (recording_id, session_id, seq) \
                         VALUES ($1, $2, $3) RETURNING id",
                    )
                    .bind(recording_id)
                    .bind(session_id)
                    .bind(p.seq)
                    .fetch_one(&mut *tx)
                    .await
                    .context("indexing words")?;
                    sqlx::query("INSERT INTO recording_words_fts (rowid, words) VALUES ($1, $2)")
                        .bind(id)
                        .bind(&p.words)
                        .execute(&mut *tx)
                        .await
                        .context("indexing words")?;
                }
                Backend::Postgres => {
                    sqlx::query(
                        "INSERT INTO recording_words (recording_id, session_id, seq, tsv) \
                         VALUES ($1, $2, $3, to_tsvector('simple', $4))",
                    )
                    .bind(recording_id)
                    .bind(session_id)
                    .bind(p.seq)
                    .bind(&p.words)
                    .execute(&mut *tx)
                    .await
                    .context("indexing words")?;
                }
            }
        }
        tx.commit().await.context("indexing text")?;
        Ok(true)
    }

    /// Gives up an unfinished claim on recording `recording_id` (the indexer failed on the way): its
    /// text so far and the claim go, so the next round takes it again.
    pub async fn release_recording_index(&self, claim: &IndexClaim) -> Result<()> {
        let recording_id = claim.recording_id;
        let w = self.write_tx("releasing a recording's index claim").await?;
        // The writer turn (`w.writer`) is held until the end of this function, after the commit.
        let mut tx = w.tx;
        let claimed = sqlx::query(
            "DELETE FROM recording_index WHERE recording_id = $1 AND status = 'indexing' AND note = $2",
        )
        .bind(recording_id)
        .bind(&claim.token)
        .execute(&mut *tx)
        .await
        .context("releasing a recording's index claim")?
        .rows_affected();
        if claimed == 1 {
            delete_recording_text(&mut tx, recording_id).await?;
        }
        tx.commit()
            .await
            .context("releasing a recording's index claim")
    }

    /// Reopens recording `recording_id`'s finished index for indexing again (it was built by an older
    /// build: [`chaperone_recorder::playback::INDEX_VERSION`]): its row and text go, if the row is still
    /// the one sealed with `mac` (`false`: another viewer reopened it first, or it changed).
    pub async fn reopen_recording_index(&self, recording_id: i64, mac: &str) -> Result<bool> {
        let w = self.write_tx("reopening a recording's index").await?;
        // The writer turn (`w.writer`) is held until the end of this function, after the commit.
        let mut tx = w.tx;
        let reopened = sqlx::query(
            "DELETE FROM recording_index WHERE recording_id = $1 AND status = 'indexed' AND mac = $2",
        )
        .bind(recording_id)
        .bind(mac)
        .execute(&mut *tx)
        .await
        .context("reopening a recording's index")?
        .rows_affected()
            == 1;
        if reopened {
            delete_recording_text(&mut tx, recording_id).await?;
        }
        tx.commit().await.context("reopening a recording's index")?;
        Ok(reopened)
    }

    /// Removes the text `claim`'s indexer wrote (what was read turned out not to be what was vouched for,
    /// or could not be read), while the claim holds; false when another indexer took it over (the text
    /// is theirs now).
    pub async fn clear_recording_text(&self, claim: &IndexClaim) -> Result<bool> {
        let w = self.write_tx("clearing a recording's text").await?;
        // The writer turn (`w.writer`) is held until the end of this function, after the commit.
        let mut tx = w.tx;
        let held = holds(&mut tx, claim).await?;
        if held {
            delete_recording_text(&mut tx, claim.recording_id).await?;
        }
        tx.commit().await.context("clearing a recording's text")?;
        Ok(held)
    }

    /// Records what the indexer made of a recording: under `claim`, only while it holds (false when
    /// another indexer took the recording over); without one (a recording judged failed), whatever
    /// state the row is in.
    pub async fn finish_recording_index(
        &self,
        row: &IndexRow,
        claim: Option<&IndexClaim>,
    ) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE recording_index SET status = $1, sha256 = $2, playback = $3, mac = $4, note = $5, \
             lines = $6, indexed_at = $7 WHERE recording_id = $8 \
             AND ($9 = '' OR (status = 'indexing' AND note = $9))",
        )
        .bind(&row.status)
        .bind(&row.sha256)
        .bind(&row.playback)
        .bind(&row.mac)
        .bind(&row.note)
        .bind(row.lines)
        .bind(row.indexed_at)
        .bind(row.recording_id)
        .bind(claim.map_or("", |c| c.token.as_str()))
        .execute(&self.pool)
        .await
        .context("finishing a recording's index")?;
        Ok(done.rows_affected() == 1)
    }

    /// What the indexer made of recording `recording_id`, if it looked at it.
    pub async fn recording_index(&self, recording_id: i64) -> Result<Option<IndexRow>> {
        let row = sqlx::query(
            "SELECT recording_id, session_id, status, sha256, playback, mac, note, lines, indexed_at \
             FROM recording_index WHERE recording_id = $1",
        )
        .bind(recording_id)
        .fetch_optional(&self.pool)
        .await
        .context("reading a recording's index")?;
        row.as_ref().map(index_row).transpose()
    }

    /// The sessions of `vendor` on `asset` that started between `from` and `to` (a jump's inner
    /// sessions), oldest first.
    pub async fn sessions_within(
        &self,
        vendor: &str,
        asset: &str,
        from: UnixTime,
        to: UnixTime,
        limit: i64,
    ) -> Result<Vec<SessionRow>> {
        let rows = sqlx::query(AssertSqlSafe(format!(
            "{SESSION_SELECT} WHERE v.name = $1 AND a.name = $2 AND s.started_at >= $3 AND s.started_at <= $4 \
             AND s.kind <> 'jump' AND s.kind <> 'tunnel' ORDER BY s.started_at, s.id LIMIT $5"
        )))
        .bind(vendor)
        .bind(asset)
        .bind(from)
        .bind(to)
        .bind(limit)
        .fetch_all(&self.pool)
        .await
        .context("listing a jump's sessions")?;
        let mut out = Vec::with_capacity(rows.len());
        for row in &rows {
            let mut s = session(row)?;
            s.recordings = self.recordings_of(&s.id).await?;
            out.push(s);
        }
        Ok(out)
    }

    /// The node running (or that ran) session `id`.
    pub async fn session_node(&self, id: &str) -> Result<Option<String>> {
        let row = sqlx::query("SELECT node FROM sessions WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .context("reading a session's node")?;
        match row {
            Some(r) => get(&r, "node"),
            None => Ok(None),
        }
    }
}

impl super::Tx {
    /// The recordings whose playback index carries a MAC (`secrets rotate` signs them again).
    pub async fn sealed_playback_ids(&mut self) -> Result<Vec<i64>> {
        let rows = sqlx::query(
            "SELECT recording_id FROM recording_index WHERE mac IS NOT NULL ORDER BY recording_id",
        )
        .fetch_all(&mut *self.tx)
        .await
        .context("listing sealed playback indexes")?;
        rows.iter().map(|r| get(r, "recording_id")).collect()
    }

    /// Recording `recording_id`'s playback index as `(sha256, json, mac)`, if it has a sealed one.
    pub async fn sealed_playback(
        &mut self,
        recording_id: i64,
    ) -> Result<Option<(String, String, String)>> {
        let row = sqlx::query(
            "SELECT sha256, playback, mac FROM recording_index WHERE recording_id = $1 \
             AND sha256 IS NOT NULL AND playback IS NOT NULL AND mac IS NOT NULL",
        )
        .bind(recording_id)
        .fetch_optional(&mut *self.tx)
        .await
        .context("reading a sealed playback index")?;
        row.map(|r| Ok((get(&r, "sha256")?, get(&r, "playback")?, get(&r, "mac")?)))
            .transpose()
    }

    /// Replaces recording `recording_id`'s playback MAC `old` with `new`; false when the row no longer
    /// carries `old` (rebuilt or reopened meanwhile).
    pub async fn reseal_playback(
        &mut self,
        recording_id: i64,
        old: &str,
        new: &str,
    ) -> Result<bool> {
        let done =
            sqlx::query("UPDATE recording_index SET mac = $1 WHERE recording_id = $2 AND mac = $3")
                .bind(new)
                .bind(recording_id)
                .bind(old)
                .execute(&mut *self.tx)
                .await
                .context("sealing a playback index again")?;
        Ok(done.rows_affected() == 1)
    }
}
