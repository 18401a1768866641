//! The audit table: append and read. There is deliberately no update or delete of `audit_events` here.

use sqlx::any::AnyRow;
use sqlx::{Any, AssertSqlSafe, Transaction};

use super::{Context, Result, Store, StoreError, get};
use crate::audit::{AuditEvent, AuditRow, ChainBreak, HeadSeal, SealVerdict, chain_hash};
use crate::model::UnixTime;

fn audit_row(row: &AnyRow) -> Result<AuditRow> {
    Ok(AuditRow {
        seq: get(row, "seq")?,
        at: get(row, "at")?,
        actor: get(row, "actor")?,
        action: get(row, "action")?,
        subject: get(row, "subject")?,
        detail: get(row, "detail")?,
        prev_hash: get(row, "prev_hash")?,
        hash: get(row, "hash")?,
    })
}

/// Appends `event` to the chain. Bumping the head first takes its row lock, so concurrent appenders
/// (threads or nodes) queue and each links to the hash before it.
pub(super) async fn append(
    tx: &mut Transaction<'static, Any>,
    seal: &HeadSeal,
    event: AuditEvent,
    now: UnixTime,
) -> Result<i64> {
    let seqs = append_many(tx, seal, vec![(event, now)]).await?;
    seqs.last().copied().ok_or_else(|| {
        StoreError::Corrupt("appending an audit event gave no sequence number".into())
    })
}

/// Appends `events` (each with its time) to the chain in order, in three statements whatever their
/// number: the head is bumped by all of them at once (taking its row lock, as [`append`]), each event
/// is linked to the one before it, and the head moves to the last. Their sequence numbers, in order.
///
/// The new head is sealed ([`HeadSeal`]) only if the head it extends was: a node never seals a head it
/// found forged (that would vouch for the forger's events), so a break stays one until an operator who
/// compared the log with its copy outside seals it again (`chaperone audit seal`). A head sealed under
/// another secrets key refuses the append instead (a node without the current key).
pub(super) async fn append_many(
    tx: &mut Transaction<'static, Any>,
    seal: &HeadSeal,
    events: Vec<(AuditEvent, UnixTime)>,
) -> Result<Vec<i64>> {
    let Ok(count) = i64::try_from(events.len()) else {
        return Err(StoreError::TooLarge(
            "too many audit events in one transaction".into(),
        ));
    };
    if count == 0 {
        return Ok(Vec::new());
    }
    let head =
        sqlx::query("UPDATE audit_head SET seq = seq + $1 WHERE id = 1 RETURNING seq, hash, mac")
            .bind(count)
            .fetch_one(&mut **tx)
            .await
            .context("locking the audit chain")?;
    let last: i64 = get(&head, "seq")?;
    let mut prev_hash: String = get(&head, "hash")?;
    let mac: Option<String> = get(&head, "mac")?;
    let sealed = match seal.judge(last - count, &prev_hash, mac.as_deref()) {
        SealVerdict::Sealed => true,
        SealVerdict::Unsealed => false,
        // Not this node's to judge: leaving the head unsealed would strip every node's seal.
        SealVerdict::OtherKey(theirs) => {
            return Err(StoreError::Conflict(format!(
                "the audit chain head is sealed under secrets key {theirs}, and this node holds key {}: \
                 give it the installation's current secrets key (after `secrets rotate`, every node \
                 needs the new one)",
                seal.key_id()
            )));
        }
    };
    let mut rows = Vec::with_capacity(events.len());
    for (seq, (event, at)) in (last - count + 1..).zip(events) {
        let detail = event.detail.to_string();
        let hash = chain_hash(
            seq,
            at,
            &event.actor,
            event.action.as_str(),
            &event.subject,
            &detail,
            &prev_hash,
        );
        let prev = std::mem::replace(&mut prev_hash, hash.clone());
        rows.push((seq, at, event, detail, prev, hash));
    }
    for chunk in rows.chunks(super::ROWS_PER_INSERT) {
        let sql = format!(
            "INSERT INTO audit_events (seq, at, actor, action, subject, detail, prev_hash, hash) VALUES {}",
            super::value_rows(chunk.len(), 8)
        );
        let mut query = sqlx::query(AssertSqlSafe(sql));
        for (seq, at, event, detail, prev, hash) in chunk {
            query = query
                .bind(*seq)
                .bind(*at)
                .bind(&event.actor)
                .bind(event.action.as_str())
                .bind(&event.subject)
                .bind(detail)
                .bind(prev)
                .bind(hash);
        }
        query
            .execute(&mut **tx)
            .await
            .context("appending an audit event")?;
    }
    sqlx::query("UPDATE audit_head SET hash = $1, mac = $2 WHERE id = 1")
        .bind(&prev_hash)
        .bind(sealed.then(|| seal.sign(last, &prev_hash)))
        .execute(&mut **tx)
        .await
        .context("advancing the audit chain head")?;
    Ok(rows.iter().map(|r| r.0).collect())
}

impl Store {
    /// Audit rows with `seq > after`, oldest first, at most `limit` (for streaming verify and export).
    pub async fn audit_page(&self, after: i64, limit: i64) -> Result<Vec<AuditRow>> {
        let rows = sqlx::query(
            "SELECT seq, at, actor, action, subject, detail, prev_hash, hash FROM audit_events \
             WHERE seq > $1 ORDER BY seq LIMIT $2",
        )
        .bind(after)
        .bind(limit)
        .fetch_all(&self.pool)
        .await
        .context("reading the audit log")?;
        rows.iter().map(audit_row).collect()
    }

    /// The events about `subject` (`session:ID`…) whose action is one of `actions`, oldest first, at most
    /// `limit` (indexed by subject: `0009_audit_subject`).
    pub async fn audit_events_about(
        &self,
        subject: &str,
        actions: &[&str],
        limit: i64,
    ) -> Result<Vec<AuditRow>> {
        self.events_about(subject, actions, limit, Pick::Oldest)
            .await
    }

    /// The events about `subject` whose action is none of `but`, oldest first, at most `limit`.
    pub async fn audit_events_about_but(
        &self,
        subject: &str,
        but: &[&str],
        limit: i64,
    ) -> Result<Vec<AuditRow>> {
        self.events_about(subject, but, limit, Pick::OldestBut)
            .await
    }

    /// The newest `limit` events about `subject` with one of `actions`, in `seq` order: for events
    /// anyone who may look can add (views), whose oldest must not push out what came after.
    pub async fn latest_audit_events_about(
        &self,
        subject: &str,
        actions: &[&str],
        limit: i64,
    ) -> Result<Vec<AuditRow>> {
        let mut rows = self
            .events_about(subject, actions, limit, Pick::Newest)
            .await?;
        rows.reverse();
        Ok(rows)
    }

    async fn events_about(
        &self,
        subject: &str,
        actions: &[&str],
        limit: i64,
        pick: Pick,
    ) -> Result<Vec<AuditRow>> {
        let (order, not) = match pick {
            Pick::Oldest => ("ASC", ""),
            Pick::Newest => ("DESC", ""),
            Pick::OldestBut => ("ASC", "NOT "),
        };
        if actions.is_empty() && not.is_empty() {
            return Ok(Vec::new());
        }
        // Only placeholders (`$3, $4, …`, one per action) and the constants above are interpolated.
        let placeholders = (0..actions.len())
            .map(|i| format!("${}", i + 3))
            .collect::<Vec<_>>()
            .join(", ");
        let filter = if actions.is_empty() {
            String::new()
        } else {
            format!(" AND action {not}IN ({placeholders})")
        };
        let sql = format!(
            "SELECT seq, at, actor, action, subject, detail, prev_hash, hash FROM audit_events \
             WHERE subject = $1{filter} ORDER BY seq {order} LIMIT $2"
        );
        let mut query = sqlx::query(AssertSqlSafe(sql)).bind(subject).bind(limit);
        for action in actions {
            query = query.bind(*action);
        }
        let rows = query
            .fetch_all(&self.pool)
            .await
            .context("reading the audit events about a subject")?;
        rows.iter().map(audit_row).collect()
    }

    /// The latest events about `subject` with `action` by `actor` at or after `since`, newest first, at
    /// most 1,000 (indexed by subject; a viewer's page loads are such events too, so a small limit could
    /// hide the one the caller looks for).
    pub async fn audit_events_by(
        &self,
        subject: &str,
        action: &str,
        actor: &str,
        since: i64,
    ) -> Result<Vec<AuditRow>> {
        let rows = sqlx::query(
            "SELECT seq, at, actor, action, subject, detail, prev_hash, hash FROM audit_events \
             WHERE subject = $1 AND action = $2 AND actor = $3 AND at >= $4 ORDER BY seq DESC LIMIT 1000",
        )
        .bind(subject)
        .bind(action)
        .bind(actor)
        .bind(since)
        .fetch_all(&self.pool)
        .await
        .context("reading a staff member's events about a subject")?;
        rows.iter().map(audit_row).collect()
    }

    /// The actions of the events after `seq`, oldest first, at most `limit` (by the primary key).
    pub async fn audit_actions_after(&self, seq: i64, limit: i64) -> Result<Vec<String>> {
        let rows =
            sqlx::query("SELECT action FROM audit_events WHERE seq > $1 ORDER BY seq LIMIT $2")
                .bind(seq)
                .bind(limit)
                .fetch_all(&self.pool)
                .await
                .context("reading the newest audit events' actions")?;
        rows.iter().map(|r| get(r, "action")).collect()
    }

    /// Every event about `subject`, oldest first, at most `limit` (indexed by subject).
    pub async fn audit_events_of(&self, subject: &str, limit: i64) -> Result<Vec<AuditRow>> {
        let rows = sqlx::query(
            "SELECT seq, at, actor, action, subject, detail, prev_hash, hash FROM audit_events \
             WHERE subject = $1 ORDER BY seq LIMIT $2",
        )
        .bind(subject)
        .bind(limit)
        .fetch_all(&self.pool)
        .await
        .context("reading the audit events about a subject")?;
        rows.iter().map(audit_row).collect()
    }

    /// The hash of audit event `seq`, if there is one.
    pub async fn audit_hash_at(&self, seq: i64) -> Result<Option<String>> {
        let row = sqlx::query("SELECT hash FROM audit_events WHERE seq = $1")
            .bind(seq)
            .fetch_optional(&self.pool)
            .await
            .context("reading an audit event's hash")?;
        row.map(|r| get(&r, "hash")).transpose()
    }

    /// The chain head's position: last sequence number and hash, for what follows the log (cursors,
    /// refreshes). Never a proof that the log holds: [`Store::sealed_head`] is.
    pub async fn audit_head(&self) -> Result<(i64, String)> {
        let row = sqlx::query("SELECT seq, hash FROM audit_head WHERE id = 1")
            .fetch_one(&self.pool)
            .await
            .context("reading the audit chain head")?;
        Ok((get(&row, "seq")?, get(&row, "hash")?))
    }

    /// The chain head, if it carries this installation's seal ([`HeadSeal`]); otherwise the break
    /// ([`ChainBreak::Unsealed`]). What every check of the chain ends at.
    pub async fn sealed_head(&self) -> Result<std::result::Result<(i64, String), ChainBreak>> {
        self.head_sealed_under(&self.seal).await
    }

    /// [`Store::sealed_head`] judged under `seal` (another key's: `secrets rotate` finishing).
    pub async fn head_sealed_under(
        &self,
        seal: &HeadSeal,
    ) -> Result<std::result::Result<(i64, String), ChainBreak>> {
        let (head, verdict) = self.judged_head(seal).await?;
        Ok(match verdict.broken(head.0, seal) {
            None => Ok(head),
            Some(broken) => Err(broken),
        })
    }

    /// The chain head and what its seal says under this installation's key, in one read: for a walk
    /// that must judge the very head it ended at. [`SealVerdict::broken`] names the break.
    pub async fn audit_head_judged(&self) -> Result<((i64, String), SealVerdict)> {
        self.judged_head(&self.seal).await
    }

    /// The seal this store seals and judges with.
    pub fn head_seal(&self) -> &HeadSeal {
        &self.seal
    }

    async fn judged_head(&self, seal: &HeadSeal) -> Result<((i64, String), SealVerdict)> {
        let row = sqlx::query("SELECT seq, hash, mac FROM audit_head WHERE id = 1")
            .fetch_one(&self.pool)
            .await
            .context("reading the audit chain head")?;
        let (seq, hash): (i64, String) = (get(&row, "seq")?, get(&row, "hash")?);
        let mac: Option<String> = get(&row, "mac")?;
        let verdict = seal.judge(seq, &hash, mac.as_deref());
        Ok(((seq, hash), verdict))
    }
}

/// What must hold of the chain head before [`seal_head`] seals it.
#[derive(Debug, Clone, Copy)]
pub enum SealJudge<'a> {
    /// It carries its seal under this key (`secrets rotate`: the key being retired).
    HeldUnder(&'a HeadSeal),
    /// It is the event right after event `seq`, linked to its `hash` (`audit seal`: the head the
    /// operator compared, then the `audit.sealed` event this transaction appended), so nothing written
    /// since the operator's walk is sealed with it.
    Follows { seq: i64, hash: &'a str },
}

/// Removes a seal made under secrets key `theirs` from the head (`audit seal --replacing-key`, once an
/// operator found no such key was ever the installation's), so that the transaction can append to it.
/// Returns whether there was one.
pub(super) async fn drop_foreign_seal(
    tx: &mut Transaction<'static, Any>,
    theirs: &str,
) -> Result<bool> {
    let dropped = sqlx::query("UPDATE audit_head SET mac = NULL WHERE id = 1 AND mac LIKE $1")
        .bind(format!("{}:%", theirs.replace(['%', '_', '\\'], "")))
        .execute(&mut **tx)
        .await
        .context("removing a foreign seal from the audit chain head")?;
    Ok(dropped.rows_affected() > 0)
}

/// Seals the head as it stands in `tx` under `with`, if `judge` holds of it. Returns the head and
/// whether it was sealed.
pub(super) async fn seal_head(
    tx: &mut Transaction<'static, Any>,
    judge: SealJudge<'_>,
    with: &HeadSeal,
) -> Result<((i64, String), bool)> {
    let head = sqlx::query("UPDATE audit_head SET mac = mac WHERE id = 1 RETURNING seq, hash, mac")
        .fetch_one(&mut **tx)
        .await
        .context("locking the audit chain")?;
    let (seq, hash): (i64, String) = (get(&head, "seq")?, get(&head, "hash")?);
    let mac: Option<String> = get(&head, "mac")?;
    let holds = match judge {
        SealJudge::HeldUnder(old) => old.judge(seq, &hash, mac.as_deref()) == SealVerdict::Sealed,
        SealJudge::Follows {
            seq: before,
            hash: before_hash,
        } => {
            let linked = sqlx::query("SELECT prev_hash FROM audit_events WHERE seq = $1")
                .bind(seq)
                .fetch_optional(&mut **tx)
                .await
                .context("reading the audit chain head's event")?
                .map(|row| get::<String>(&row, "prev_hash"))
                .transpose()?;
            seq == before + 1 && linked.as_deref() == Some(before_hash)
        }
    };
    if !holds {
        return Ok(((seq, hash), false));
    }
    sqlx::query("UPDATE audit_head SET mac = $1 WHERE id = 1")
        .bind(with.sign(seq, &hash))
        .execute(&mut **tx)
        .await
        .context("sealing the audit chain head")?;
    Ok(((seq, hash), true))
}

/// Which events about a subject [`Store::events_about`] reads.
#[derive(Debug, Clone, Copy)]
enum Pick {
    /// The oldest with one of the actions.
    Oldest,
    /// The newest with one of the actions.
    Newest,
    /// The oldest with none of the actions.
    OldestBut,
}

/// Hashes of audit events this process verified as links of an unbroken chain that ended at the head
/// it read then: every [`ChainCheckpoints::EVERY`]-th event's (so the map stays small: one entry per
/// 1024 events; the walk from the last of them to the head is short). Events are never changed
/// once written, so a hash noted here stays the right one; an event recomputed later to another hash was
/// rewritten, and with it every event up to the next checkpoint. Checking an event where it sits then
/// takes a walk to the next checkpoint, not to the head (`evidence::holds_in_chain`). The highest head
/// a walk ended at is kept too: a head read later that is behind it, or at it with another hash, means
/// the end of the log was cut or rewritten (`evidence::chain_head`). What a walk to an old checkpoint
/// proves is that the events it read are genuine; not that none is missing or changed past that
/// checkpoint since it was noted. Decisions that rest on an event's absence walk with a set of their own
/// (`evidence::holds_in_chain`).
#[derive(Debug, Default)]
pub struct ChainCheckpoints(std::sync::Mutex<Checkpoints>);

#[derive(Debug, Default)]
pub struct Checkpoints {
    every: std::collections::BTreeMap<i64, String>,
    head: Option<(i64, String)>,
    /// The verified event whose loss was last raised as an alarm ([`ChainCheckpoints::first_alarm`]).
    alarmed: Option<i64>,
}

impl ChainCheckpoints {
    /// Every this many events, one's hash is kept.
    pub const EVERY: i64 = 1024;

    fn held(&self) -> std::sync::MutexGuard<'_, Checkpoints> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The first checkpoint at or after `seq` (the verified head included).
    pub fn at_or_after(&self, seq: i64) -> Option<(i64, String)> {
        let held = self.held();
        let every = held.every.range(seq..).next().map(|(s, h)| (*s, h.clone()));
        let head = held.head.clone().filter(|(s, _)| *s >= seq);
        match (every, head) {
            (Some(e), Some(h)) => Some(if e.0 <= h.0 { e } else { h }),
            (e, h) => e.or(h),
        }
    }

    /// The highest event this process verified (a checkpoint or a head).
    pub fn highest(&self) -> Option<(i64, String)> {
        let held = self.held();
        let every = held.every.last_key_value().map(|(s, h)| (*s, h.clone()));
        match (every, held.head.clone()) {
            (Some(e), Some(h)) => Some(if e.0 >= h.0 { e } else { h }),
            (e, h) => e.or(h),
        }
    }

    /// Notes the hashes of events verified as links of an unbroken chain.
    pub fn note(&self, verified: impl IntoIterator<Item = (i64, String)>) {
        self.held().every.extend(verified);
    }

    /// Whether the loss of verified event `seq` is new (not raised before by this process): a cut
    /// log is raised once, not at every check that finds it.
    pub fn first_alarm(&self, seq: i64) -> bool {
        let mut held = self.held();
        let first = held.alarmed != Some(seq);
        held.alarmed = Some(seq);
        first
    }

    /// The alarm for `seq` could not be written: the next finding raises it again.
    pub fn alarm_failed(&self, seq: i64) {
        let mut held = self.held();
        if held.alarmed == Some(seq) {
            held.alarmed = None;
        }
    }

    /// Notes the head a walk verified the chain up to (kept if it is the highest so far).
    pub fn note_head(&self, seq: i64, hash: &str) {
        let mut held = self.held();
        if held.head.as_ref().is_none_or(|(s, _)| seq > *s) {
            held.head = Some((seq, hash.to_owned()));
        }
    }
}
