//! Settlement and reconciliation storage (DESIGN §6b): settlement schedules, the scan a
//! summary sums (deductions and refunds by time, in one snapshot, page by page), our card
//! charges as a statement is matched against them, imported statements, discrepancies and
//! their resolutions — each written once, with its audit event, never changed.

use jiff::Timestamp;

use super::backend::{self, Backend, StoredRow};
use super::deductions::Keyed;
use super::plan::Bind;
use super::rows::{decode, encode, micros, timestamp};
use super::{StoreError, audit, ledger};
use crate::domain::audit::AuditDraft;
use crate::domain::deduction::{CardCharge, ChargeStatus, Deduction, Refund};
use crate::domain::ids::MerchantId;
use crate::domain::ledger::LedgerMove;
use crate::domain::reconcile::{Discrepancy, OurCharge, Resolution, StatementImport};
use crate::domain::settlement::SettlementSchedule;

/// Rows read per page of a summary's scan.
const SCAN_PAGE: i64 = 500;
/// Charge ids looked up per statement.
const CHARGES_PER_QUERY: usize = 500;
/// The most schedules read at once (merchants that changed the default).
const MAX_SCHEDULES: i64 = 100_000;

const SCHEDULE: &str = "SELECT document FROM settlement_schedules WHERE merchant_id = $1";
const SCHEDULES: &str = "SELECT document FROM settlement_schedules ORDER BY merchant_id LIMIT $1";
const INSERT_SCHEDULE: &str = "INSERT INTO settlement_schedules \
    (merchant_id, version, updated_at_us, document) VALUES ($1, $2, $3, $4) \
    ON CONFLICT (merchant_id) DO NOTHING";
const UPDATE_SCHEDULE: &str = "UPDATE settlement_schedules \
    SET version = $1, updated_at_us = $2, document = $3 WHERE merchant_id = $4 AND version = $5";

/// Deductions made in [$1, $2) after the keyset ($3, $4), declined ones left out (they count
/// nowhere).
const SCAN_DEDUCTIONS: &str = "SELECT created_at_us, deduction_id, document FROM deductions \
    WHERE created_at_us >= $1 AND created_at_us < $2 AND status <> 'DECLINED' \
    AND (created_at_us > $3 OR (created_at_us = $3 AND deduction_id > $4))";
const SCAN_REFUNDS: &str = "SELECT r.created_at_us, r.refund_id, r.document, d.document \
    FROM refunds r JOIN deductions d ON d.deduction_id = r.deduction_id \
    WHERE r.created_at_us >= $1 AND r.created_at_us < $2 \
    AND (r.created_at_us > $3 OR (r.created_at_us = $3 AND r.refund_id > $4))";

const CHARGES_BY_ID: &str = "SELECT status, document FROM card_charges WHERE charge_id IN ";
const SUCCEEDED_CHARGES: &str = "SELECT status, document FROM card_charges \
    WHERE status = 'SUCCEEDED' AND created_at_us >= $1 AND created_at_us < $2 \
    ORDER BY created_at_us, charge_id";

const IMPORT_BY_DIGEST: &str = "SELECT import_id, line_count, found_count, new_count, \
    actor_subject, created_at_us FROM statement_imports WHERE statement_day = $1 AND digest = $2";
const INSERT_IMPORT: &str = "INSERT INTO statement_imports \
    (import_id, statement_day, digest, line_count, found_count, new_count, actor_subject, \
     created_at_us) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
    ON CONFLICT (statement_day, digest) DO NOTHING";
const INSERT_DISCREPANCY: &str = "INSERT INTO discrepancies \
    (discrepancy_id, kind, charge_id, statement_day, merchant_id, deduction_id, import_id, \
     created_at_us, document) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
    ON CONFLICT (charge_id, kind) DO NOTHING";
const SET_IMPORT_NEW: &str = "UPDATE statement_imports SET new_count = $1 WHERE import_id = $2";

const DISCREPANCY: &str = "SELECT document FROM discrepancies WHERE discrepancy_id = $1";
const RESOLUTIONS_OF: &str = "SELECT document FROM discrepancy_resolutions \
    WHERE discrepancy_id = $1 ORDER BY created_at_us, resolution_id";
const RESOLUTION_BY_REQUEST: &str = "SELECT document, fingerprint FROM discrepancy_resolutions \
    WHERE request_scope = $1 AND request_id = $2";
const INSERT_RESOLUTION: &str = "INSERT INTO discrepancy_resolutions \
    (resolution_id, discrepancy_id, request_scope, request_id, fingerprint, action, settles, \
     created_at_us, document) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)";
const SETTLED: &str = "SELECT 1 FROM discrepancy_resolutions \
    WHERE discrepancy_id = $1 AND settles = 1";
/// Whether a discrepancy is settled, as a filter on `d`.
const IS_SETTLED: &str = "EXISTS (SELECT 1 FROM discrepancy_resolutions r \
    WHERE r.discrepancy_id = d.discrepancy_id AND r.settles = 1)";

/// What a summary's scan reads.
#[derive(Debug, Clone)]
pub struct SettlementScan {
    /// Made at or after this time …
    pub from: Timestamp,
    /// … and before this one.
    pub until: Timestamp,
    pub merchant_id: Option<MerchantId>,
}

/// One row of a scan.
pub enum Scanned {
    Deduction(Deduction),
    Refund(Refund, Deduction),
}

/// Told each scanned row; an error stops the scan.
pub type Visit<'a> = &'a mut (dyn FnMut(Scanned) -> Result<(), StoreError> + Send);

/// Which discrepancies to list, newest first.
#[derive(Debug, Clone, Default)]
pub struct DiscrepancyQuery {
    /// `Some(true)`: only settled ones; `Some(false)`: only open ones.
    pub settled: Option<bool>,
    pub statement_day: Option<String>,
    pub merchant_id: Option<MerchantId>,
    pub before: Option<String>,
    pub limit: u32,
}

/// A resolution to record, with the ledger movement it makes and its audit event.
pub struct ResolutionWrite<'a> {
    pub resolution: &'a Resolution,
    pub scope: &'a str,
    pub fingerprint: &'a str,
    pub movement: Option<&'a LedgerMove>,
    pub audit: &'a AuditDraft,
}

/// What recording a resolution did.
#[derive(Debug)]
pub enum Recorded {
    New(Resolution),
    /// The request id was used before, by the request with `fingerprint`.
    Existing {
        resolution: Resolution,
        fingerprint: String,
    },
    /// Another step settled the discrepancy first.
    AlreadySettled,
}

#[async_trait::async_trait]
pub trait SettlementStore: Send + Sync + 'static {
    async fn settlement_schedule(
        &self,
        merchant_id: &MerchantId,
    ) -> Result<Option<SettlementSchedule>, StoreError>;

    /// Every schedule set (merchants without one have the default), at most 100,000.
    async fn settlement_schedules(&self) -> Result<Vec<SettlementSchedule>, StoreError>;

    /// Stores a changed schedule with its audit event, conditional on the stored version still
    /// being `schedule.version - 1` ([`StoreError::Conflict`] otherwise).
    async fn put_settlement_schedule(
        &self,
        schedule: &SettlementSchedule,
        audit: &AuditDraft,
    ) -> Result<(), StoreError>;

    /// Every non-declined deduction and every refund made in the window, in one snapshot,
    /// read page by page and handed to `visit`.
    async fn scan_settlement(
        &self,
        scan: &SettlementScan,
        visit: Visit<'_>,
    ) -> Result<(), StoreError>;

    /// Our card charges with these ids.
    async fn charges_by_id(&self, ids: &[String]) -> Result<Vec<OurCharge>, StoreError>;

    /// Our card charges recorded SUCCEEDED that were made in [from, until).
    async fn succeeded_charges(
        &self,
        from: Timestamp,
        until: Timestamp,
    ) -> Result<Vec<OurCharge>, StoreError>;

    /// The import of a statement with this day and digest, if it was imported.
    async fn statement_import(
        &self,
        day: &str,
        digest: &str,
    ) -> Result<Option<StatementImport>, StoreError>;

    /// Records an import and the discrepancies it found that no earlier import had, with its
    /// audit event; `Keyed::Existing` when the same statement was imported already.
    async fn record_import(
        &self,
        import: &StatementImport,
        found: &[Discrepancy],
        audit: &AuditDraft,
    ) -> Result<Keyed<StatementImport>, StoreError>;

    async fn discrepancy(
        &self,
        id: &str,
    ) -> Result<Option<(Discrepancy, Vec<Resolution>)>, StoreError>;

    async fn list_discrepancies(
        &self,
        query: &DiscrepancyQuery,
    ) -> Result<Vec<(Discrepancy, Vec<Resolution>)>, StoreError>;

    async fn resolution_by_request(
        &self,
        scope: &str,
        request_id: &str,
    ) -> Result<Option<(Resolution, String)>, StoreError>;

    /// Records a resolution, its ledger movement and its audit event in one transaction.
    async fn record_resolution(&self, write: ResolutionWrite<'_>) -> Result<Recorded, StoreError>;
}

pub async fn schedule<B: Backend>(
    backend: &B,
    merchant_id: &MerchantId,
) -> Result<Option<SettlementSchedule>, StoreError> {
    let binds = vec![merchant_id.as_str().into()];
    let row = backend::read_optional(backend, SCHEDULE, binds).await?;
    row.map(|row| decode(&row.text(0)?)).transpose()
}

pub async fn schedules<B: Backend>(backend: &B) -> Result<Vec<SettlementSchedule>, StoreError> {
    let rows = backend::read(backend, SCHEDULES, vec![MAX_SCHEDULES.into()]).await?;
    rows.iter().map(|row| decode(&row.text(0)?)).collect()
}

pub async fn put_schedule<B: Backend>(
    backend: &B,
    schedule: &SettlementSchedule,
    audit: &AuditDraft,
) -> Result<(), StoreError> {
    let document = encode(schedule)?;
    let at = schedule.updated_at.map_or(0, micros);
    let merchant = schedule.merchant_id.as_str();
    let (sql, binds): (&str, Vec<Bind>) = if schedule.version == 1 {
        let binds = vec![
            merchant.into(),
            schedule.version.into(),
            at.into(),
            document.into(),
        ];
        (INSERT_SCHEDULE, binds)
    } else {
        let binds = vec![
            schedule.version.into(),
            at.into(),
            document.into(),
            merchant.into(),
            (schedule.version - 1).into(),
        ];
        (UPDATE_SCHEDULE, binds)
    };
    let mut tx = backend.begin_write().await?;
    if B::execute(&mut tx, sql.into(), binds).await? != 1 {
        B::rollback(tx).await?;
        return Err(StoreError::Conflict);
    }
    audit::append::<B>(&mut tx, std::slice::from_ref(audit)).await?;
    B::commit(tx).await
}

/// A scan statement with its optional merchant filter, keyset order and page size.
fn scan_sql(head: &str, merchant_column: &str, order: &str, merchant: bool) -> String {
    let filter = if merchant {
        format!(" AND {merchant_column} = $6")
    } else {
        String::new()
    };
    format!("{head}{filter} ORDER BY {order} LIMIT $5")
}

pub async fn scan<B: Backend>(
    backend: &B,
    scan: &SettlementScan,
    visit: Visit<'_>,
) -> Result<(), StoreError> {
    let merchant = scan.merchant_id.as_ref().map(|m| m.as_str().to_owned());
    let deductions = scan_sql(
        SCAN_DEDUCTIONS,
        "merchant_id",
        "created_at_us, deduction_id",
        merchant.is_some(),
    );
    let refunds = scan_sql(
        SCAN_REFUNDS,
        "r.merchant_id",
        "r.created_at_us, r.refund_id",
        merchant.is_some(),
    );
    let binds = |after: &(i64, String)| {
        let mut binds: Vec<Bind> = vec![
            micros(scan.from).into(),
            micros(scan.until).into(),
            after.0.into(),
            after.1.clone().into(),
            SCAN_PAGE.into(),
        ];
        if let Some(m) = &merchant {
            binds.push(m.clone().into());
        }
        binds
    };
    let mut snapshot = backend.begin_compliance_snapshot().await?;
    let start = (i64::MIN, String::new());
    let mut after = start.clone();
    loop {
        let sql = deductions.clone();
        let rows = B::fetch(&mut snapshot, sql.into(), binds(&after)).await?;
        for row in &rows {
            visit(Scanned::Deduction(decode(&row.text(2)?)?))?;
        }
        match rows.last() {
            Some(last) if rows.len() as i64 == SCAN_PAGE => after = (last.int(0)?, last.text(1)?),
            _ => break,
        }
    }
    let mut after = start;
    loop {
        let sql = refunds.clone();
        let rows = B::fetch(&mut snapshot, sql.into(), binds(&after)).await?;
        for row in &rows {
            visit(Scanned::Refund(
                decode(&row.text(2)?)?,
                decode(&row.text(3)?)?,
            ))?;
        }
        match rows.last() {
            Some(last) if rows.len() as i64 == SCAN_PAGE => after = (last.int(0)?, last.text(1)?),
            _ => break,
        }
    }
    B::end_snapshot(snapshot).await
}

fn our_charge(status: &str, document: &str) -> Result<OurCharge, StoreError> {
    let charge: CardCharge = decode(document)?;
    let status = ChargeStatus::parse(status)
        .ok_or_else(|| StoreError::Corrupt(format!("charge status {status}")))?;
    Ok(OurCharge {
        charge_id: charge.id,
        deduction_id: charge.deduction_id,
        merchant_id: charge.merchant_id,
        amount: charge.amount,
        status,
    })
}

pub async fn charges_by_id<B: Backend>(
    backend: &B,
    ids: &[String],
) -> Result<Vec<OurCharge>, StoreError> {
    let mut charges = vec![];
    for chunk in ids.chunks(CHARGES_PER_QUERY) {
        let placeholders: Vec<String> = (1..=chunk.len()).map(|i| format!("${i}")).collect();
        let sql = format!("{CHARGES_BY_ID}({})", placeholders.join(", "));
        let binds = chunk.iter().map(|id| Bind::from(id.clone())).collect();
        for row in backend::read(backend, sql, binds).await? {
            charges.push(our_charge(&row.text(0)?, &row.text(1)?)?);
        }
    }
    Ok(charges)
}

pub async fn succeeded_charges<B: Backend>(
    backend: &B,
    from: Timestamp,
    until: Timestamp,
) -> Result<Vec<OurCharge>, StoreError> {
    let binds = vec![micros(from).into(), micros(until).into()];
    let rows = backend::read(backend, SUCCEEDED_CHARGES, binds).await?;
    rows.iter()
        .map(|row| our_charge(&row.text(0)?, &row.text(1)?))
        .collect()
}

fn import_from<R: StoredRow>(
    row: &R,
    day: &str,
    digest: &str,
) -> Result<StatementImport, StoreError> {
    let count = |i| -> Result<usize, StoreError> {
        usize::try_from(row.int(i)?).map_err(|_| StoreError::Corrupt("a negative count".into()))
    };
    Ok(StatementImport {
        id: row.text(0)?,
        day: day
            .parse()
            .map_err(|_| StoreError::Corrupt(format!("statement day {day}")))?,
        digest: digest.to_owned(),
        lines: count(1)?,
        found: count(2)?,
        new: count(3)?,
        actor_subject: row.text(4)?,
        created_at: timestamp(row.int(5)?)?,
    })
}

pub async fn import_by_digest<B: Backend>(
    backend: &B,
    day: &str,
    digest: &str,
) -> Result<Option<StatementImport>, StoreError> {
    let binds = vec![day.into(), digest.into()];
    let row = backend::read_optional(backend, IMPORT_BY_DIGEST, binds).await?;
    row.map(|row| import_from(&row, day, digest)).transpose()
}

fn count(n: usize) -> Bind {
    Bind::Int(i64::try_from(n).unwrap_or(i64::MAX))
}

pub async fn record_import<B: Backend>(
    backend: &B,
    import: &StatementImport,
    found: &[Discrepancy],
    audit_draft: &AuditDraft,
) -> Result<Keyed<StatementImport>, StoreError> {
    let day = import.day.to_string();
    let mut tx = backend.begin_write().await?;
    let binds = vec![day.clone().into(), import.digest.clone().into()];
    if let Some(row) = backend::fetch_optional::<B>(&mut tx, IMPORT_BY_DIGEST, binds).await? {
        let existing = import_from(&row, &day, &import.digest)?;
        B::rollback(tx).await?;
        return Ok(Keyed::Existing {
            value: existing,
            fingerprint: import.digest.clone(),
        });
    }
    let binds = vec![
        import.id.clone().into(),
        day.clone().into(),
        import.digest.clone().into(),
        count(import.lines),
        count(import.found),
        count(0),
        import.actor_subject.clone().into(),
        micros(import.created_at).into(),
    ];
    if B::execute(&mut tx, INSERT_IMPORT.into(), binds).await? == 0 {
        // A concurrent import of the same statement committed first (PostgreSQL waited for
        // it): answer what it recorded.
        B::rollback(tx).await?;
        let existing = import_by_digest(backend, &day, &import.digest)
            .await?
            .ok_or_else(|| StoreError::Corrupt("an import vanished".into()))?;
        return Ok(Keyed::Existing {
            value: existing,
            fingerprint: import.digest.clone(),
        });
    }
    let mut new = 0;
    for d in found {
        let f = &d.finding;
        let binds = vec![
            d.id.clone().into(),
            f.kind.as_str().into(),
            f.charge_id.clone().into(),
            d.statement_day.to_string().into(),
            f.merchant_id.as_ref().map(|m| m.as_str()).into(),
            f.deduction_id.clone().into(),
            d.import_id.clone().into(),
            micros(d.created_at).into(),
            encode(d)?.into(),
        ];
        new += B::execute(&mut tx, INSERT_DISCREPANCY.into(), binds).await?;
    }
    let new = usize::try_from(new).unwrap_or(usize::MAX);
    let binds = vec![count(new), import.id.clone().into()];
    B::execute(&mut tx, SET_IMPORT_NEW.into(), binds).await?;
    // The audit event says how many were new: known only now.
    let mut draft = audit_draft.clone();
    if let Ok(serde_json::Value::Object(mut details)) =
        serde_json::from_str::<serde_json::Value>(&draft.details)
    {
        details.insert("new_discrepancies".into(), new.into());
        draft.details = serde_json::Value::Object(details).to_string();
    }
    audit::append::<B>(&mut tx, std::slice::from_ref(&draft)).await?;
    B::commit(tx).await?;
    Ok(Keyed::New(StatementImport {
        new,
        ..import.clone()
    }))
}

async fn resolutions_of<B: Backend>(
    conn: &mut B::Conn,
    id: &str,
) -> Result<Vec<Resolution>, StoreError> {
    let rows = B::fetch(conn, RESOLUTIONS_OF.into(), vec![id.into()]).await?;
    rows.iter().map(|row| decode(&row.text(0)?)).collect()
}

pub async fn discrepancy<B: Backend>(
    backend: &B,
    id: &str,
) -> Result<Option<(Discrepancy, Vec<Resolution>)>, StoreError> {
    let mut snapshot = backend.begin_snapshot().await?;
    let row = backend::fetch_optional::<B>(&mut snapshot, DISCREPANCY, vec![id.into()]).await?;
    let found = match row {
        Some(row) => {
            let d: Discrepancy = decode(&row.text(0)?)?;
            let resolutions = resolutions_of::<B>(&mut snapshot, id).await?;
            Some((d, resolutions))
        }
        None => None,
    };
    B::end_snapshot(snapshot).await?;
    Ok(found)
}

pub async fn list_discrepancies<B: Backend>(
    backend: &B,
    q: &DiscrepancyQuery,
) -> Result<Vec<(Discrepancy, Vec<Resolution>)>, StoreError> {
    let mut sql =
        String::from("SELECT d.discrepancy_id, d.document FROM discrepancies d WHERE 1 = 1");
    let mut binds: Vec<Bind> = vec![];
    let mut and = |sql: &mut String, clause: &str, value: Bind| {
        binds.push(value);
        sql.push_str(&format!(" AND {clause} ${}", binds.len()));
    };
    if let Some(day) = &q.statement_day {
        and(&mut sql, "d.statement_day =", day.clone().into());
    }
    if let Some(m) = &q.merchant_id {
        and(&mut sql, "d.merchant_id =", m.as_str().into());
    }
    if let Some(before) = &q.before {
        and(&mut sql, "d.discrepancy_id <", before.clone().into());
    }
    match q.settled {
        Some(true) => sql.push_str(&format!(" AND {IS_SETTLED}")),
        Some(false) => sql.push_str(&format!(" AND NOT {IS_SETTLED}")),
        None => {}
    }
    binds.push(i64::from(q.limit).into());
    sql.push_str(&format!(
        " ORDER BY d.discrepancy_id DESC LIMIT ${}",
        binds.len()
    ));
    let mut snapshot = backend.begin_snapshot().await?;
    let rows = B::fetch(&mut snapshot, sql.into(), binds).await?;
    let mut out = Vec::with_capacity(rows.len());
    for row in &rows {
        let d: Discrepancy = decode(&row.text(1)?)?;
        let resolutions = resolutions_of::<B>(&mut snapshot, &row.text(0)?).await?;
        out.push((d, resolutions));
    }
    B::end_snapshot(snapshot).await?;
    Ok(out)
}

pub async fn resolution_by_request<B: Backend>(
    backend: &B,
    scope: &str,
    request_id: &str,
) -> Result<Option<(Resolution, String)>, StoreError> {
    let binds = vec![scope.into(), request_id.into()];
    let row = backend::read_optional(backend, RESOLUTION_BY_REQUEST, binds).await?;
    row.map(|row| Ok((decode(&row.text(0)?)?, row.text(1)?)))
        .transpose()
}

pub async fn record_resolution<B: Backend>(
    backend: &B,
    write: ResolutionWrite<'_>,
) -> Result<Recorded, StoreError> {
    let r = write.resolution;
    let mut tx = backend.begin_write().await?;
    // The discrepancy's row is locked first, so two steps on it queue (on PostgreSQL; SQLite's
    // one writer serialises them anyway): the second sees the first's request id, or that it
    // settled the discrepancy. The unique indexes back this up.
    let lock = backend::locked::<B>(DISCREPANCY);
    backend::fetch_one::<B>(&mut tx, lock, vec![r.discrepancy_id.clone().into()]).await?;
    let binds = vec![write.scope.into(), r.request_id.clone().into()];
    if let Some(row) = backend::fetch_optional::<B>(&mut tx, RESOLUTION_BY_REQUEST, binds).await? {
        let existing = (decode(&row.text(0)?)?, row.text(1)?);
        B::rollback(tx).await?;
        return Ok(Recorded::Existing {
            resolution: existing.0,
            fingerprint: existing.1,
        });
    }
    let settled =
        backend::fetch_optional::<B>(&mut tx, SETTLED, vec![r.discrepancy_id.clone().into()])
            .await?;
    if settled.is_some() {
        B::rollback(tx).await?;
        return Ok(Recorded::AlreadySettled);
    }
    let binds = vec![
        r.id.clone().into(),
        r.discrepancy_id.clone().into(),
        write.scope.into(),
        r.request_id.clone().into(),
        write.fingerprint.into(),
        r.action.as_str().into(),
        i64::from(r.settles).into(),
        micros(r.created_at).into(),
        encode(r)?.into(),
    ];
    B::execute(&mut tx, INSERT_RESOLUTION.into(), binds).await?;
    if let Some(movement) = write.movement {
        ledger::apply_move::<B>(&mut tx, movement, None, r.created_at).await?;
    }
    audit::append::<B>(&mut tx, std::slice::from_ref(write.audit)).await?;
    B::commit(tx).await?;
    Ok(Recorded::New(r.clone()))
}
