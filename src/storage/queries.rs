//! Listings, newest first, filtered and paged by keyset (the last id of the previous page).

use super::backend::{self, Backend, StoredRow};
use super::deductions::DeductionQuery;
use super::plan::Bind;
use super::rows::{decode, micros};
use super::{MandateQuery, StoreError, mandates};
use crate::domain::deduction::{Deduction, Notice};
use crate::domain::ids::MandateId;
use crate::domain::mandate::Mandate;

/// A `SELECT … WHERE 1 = 1` with filters added as `AND column <op> $n`, then its order and
/// limit: the SQL is the store's own text, the values are bound.
pub(super) struct Select {
    sql: String,
    binds: Vec<Bind>,
}

impl Select {
    pub(super) fn new(head: &str) -> Self {
        Self {
            sql: format!("{head} WHERE 1 = 1"),
            binds: vec![],
        }
    }

    /// Adds `AND {column_and_op} $n` with `value` as `$n`, if there is a value.
    pub(super) fn and(&mut self, column_and_op: &str, value: Option<impl Into<Bind>>) -> &mut Self {
        if let Some(value) = value {
            self.binds.push(value.into());
            self.sql
                .push_str(&format!(" AND {column_and_op} ${}", self.binds.len()));
        }
        self
    }

    /// Adds `AND {condition}`: SQL of the store's own, with no value from a caller.
    pub(super) fn condition(&mut self, condition: &str) -> &mut Self {
        self.sql.push_str(" AND ");
        self.sql.push_str(condition);
        self
    }

    /// Newest first by `id_column`, at most `limit` rows.
    fn page(self, id_column: &str, limit: u32) -> (String, Vec<Bind>) {
        self.ordered(id_column, true, limit)
    }

    /// Ordered by `column`, descending or not, at most `limit` rows.
    pub(super) fn ordered(
        mut self,
        column: &str,
        descending: bool,
        limit: u32,
    ) -> (String, Vec<Bind>) {
        self.binds.push(i64::from(limit).into());
        let direction = if descending { "DESC" } else { "ASC" };
        self.sql.push_str(&format!(
            " ORDER BY {column} {direction} LIMIT ${}",
            self.binds.len()
        ));
        (self.sql, self.binds)
    }
}

pub async fn mandates<B: Backend>(
    backend: &B,
    q: &MandateQuery,
) -> Result<Vec<Mandate>, StoreError> {
    let mut select =
        Select::new("SELECT document, last_collected_at_us, last_refunded_at_us FROM mandates");
    select
        .and("merchant_id =", q.merchant_id.as_ref().map(|v| v.as_str()))
        .and("payer_id =", q.payer_id.as_ref().map(|v| v.as_str()))
        .and("status =", q.status.map(|v| v.as_str()))
        .and("contract_id =", q.contract_id.as_ref().map(|v| v.as_str()))
        .and("mandate_id <", q.before.as_ref().map(|v| v.as_str()));
    let (sql, binds) = select.page("mandate_id", q.limit);
    let rows = backend::read_compliance(backend, false, sql, binds).await?;
    rows.iter().map(mandates::decode_current).collect()
}

pub async fn deductions<B: Backend>(
    backend: &B,
    q: &DeductionQuery,
) -> Result<Vec<Deduction>, StoreError> {
    let mut select = Select::new("SELECT document FROM deductions");
    select
        .and("merchant_id =", q.merchant_id.as_ref().map(|v| v.as_str()))
        .and("payer_id =", q.payer_id.as_ref().map(|v| v.as_str()))
        .and("mandate_id =", q.mandate_id.as_ref().map(|v| v.as_str()))
        .and("status =", q.status.map(|v| v.as_str()))
        .and("created_at_us >=", q.created_from.map(micros))
        .and("created_at_us <", q.created_until.map(micros))
        .and("deduction_id <", q.before.as_deref());
    let (sql, binds) = select.page("deduction_id", q.limit);
    let rows = backend::read_compliance(backend, false, sql, binds).await?;
    rows.iter().map(|row| decode(&row.text(0)?)).collect()
}

/// A mandate's notices; a notice's `used_by` column is authoritative (its document keeps the
/// value at creation).
pub async fn notices<B: Backend>(
    backend: &B,
    mandate_id: &MandateId,
    before: Option<&str>,
    limit: u32,
) -> Result<Vec<Notice>, StoreError> {
    let mut select = Select::new("SELECT document, used_by FROM notices");
    select
        .and("mandate_id =", Some(mandate_id.as_str()))
        .and("notice_id <", before);
    let (sql, binds) = select.page("notice_id", limit);
    let rows = backend::read_compliance(backend, false, sql, binds).await?;
    rows.iter()
        .map(|row| {
            let mut notice: Notice = decode(&row.text(0)?)?;
            notice.used_by = row.opt_text(1)?;
            Ok(notice)
        })
        .collect()
}
