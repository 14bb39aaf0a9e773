//! The one store, written once over a [`Backend`]: every operation of [`Store`] and
//! [`DeductionStore`], each handed to the file of its aggregate.

use std::sync::Arc;

use jiff::Timestamp;

use super::audit::reads;
use super::backend::Backend;
use super::deductions::batch::{BatchStats, Batcher, Decision};
use super::deductions::facts::Asked;
use super::deductions::{
    DecideRefund, DeductionInput, DeductionQuery, DeductionStore, Executed, Keyed, KeyedRequest,
    KeyedWrite, LedgerTotals, RefundAsk, Refunded, SettleDecision, Settled, execute, settle,
};
use super::{
    AuditQuery, AuditStore, ChainScope, HeadAt, IdempotencyRecord, Inserted, MandateInsert,
    MandateQuery, MandateUpdate, Store, StoreError, StoredChain, TableCounts, approvals, audit,
    ledger, mandates, notices, policies, queries, refunds,
};
use crate::domain::audit::{AuditDraft, AuditEvent};
use crate::domain::deduction::{Approval, CardCharge, Deduction, Facts, Notice, Refund};
use crate::domain::ids::{MandateId, MerchantId};
use crate::domain::ledger::{Account, LedgerMove};
use crate::domain::mandate::Mandate;
use crate::domain::policy::MerchantPolicy;

pub struct SqlStore<B> {
    backend: Arc<B>,
    /// Where writers run in parallel (PostgreSQL): concurrent deductions decided together.
    batcher: Option<Batcher>,
}

impl<B: Backend> SqlStore<B> {
    /// The store over `backend`; on a backend without a single writer, its deductions'
    /// batcher starts on the current runtime.
    pub fn new(backend: B) -> Self {
        let backend = Arc::new(backend);
        let batcher = (!B::SERIAL_WRITER).then(|| Batcher::start(backend.clone()));
        Self { backend, batcher }
    }

    pub fn backend(&self) -> &B {
        &self.backend
    }
}

#[async_trait::async_trait]
impl<B: Backend> Store for SqlStore<B> {
    async fn insert_mandate(&self, insert: MandateInsert<'_>) -> Result<Inserted, StoreError> {
        mandates::insert(&*self.backend, insert).await
    }

    async fn update_mandate(&self, update: MandateUpdate<'_>) -> Result<(), StoreError> {
        mandates::update(&*self.backend, update).await
    }

    async fn mandate(&self, id: &MandateId) -> Result<Option<Mandate>, StoreError> {
        mandates::get(&*self.backend, id).await
    }

    async fn mandate_as_of(
        &self,
        id: &MandateId,
        at: Timestamp,
    ) -> Result<Option<Mandate>, StoreError> {
        mandates::as_of(&*self.backend, id, at).await
    }

    async fn mandate_version(
        &self,
        id: &MandateId,
        version: i64,
    ) -> Result<Option<Mandate>, StoreError> {
        mandates::version(&*self.backend, id, version).await
    }

    async fn list_mandates(&self, query: &MandateQuery) -> Result<Vec<Mandate>, StoreError> {
        queries::mandates(&*self.backend, query).await
    }

    async fn mandates_expiring_by(
        &self,
        at: Timestamp,
        limit: u32,
    ) -> Result<Vec<MandateId>, StoreError> {
        mandates::expiring_by(&*self.backend, at, limit).await
    }

    async fn append_audit(&self, draft: &AuditDraft) -> Result<(), StoreError> {
        audit::append_alone(&*self.backend, draft).await
    }

    async fn idempotency_record(
        &self,
        scope: &str,
        request_id: &str,
    ) -> Result<Option<IdempotencyRecord>, StoreError> {
        mandates::idempotency_record(&*self.backend, scope, request_id).await
    }

    async fn audit_chain(&self, chain_id: &str) -> Result<StoredChain, StoreError> {
        audit::chain(&*self.backend, chain_id).await
    }

    async fn audit_chain_ids(&self) -> Result<Vec<String>, StoreError> {
        audit::chain_ids(&*self.backend).await
    }

    async fn table_counts(&self) -> Result<TableCounts, StoreError> {
        audit::table_counts(&*self.backend).await
    }

    fn pool_stats(&self) -> Vec<(&'static str, u32, usize)> {
        self.backend.pool_stats()
    }

    async fn replica_lag_bytes(&self) -> Result<Option<u64>, StoreError> {
        self.backend.replica_lag_bytes().await
    }
}

#[async_trait::async_trait]
impl<B: Backend> DeductionStore for SqlStore<B> {
    async fn execute_deduction(
        &self,
        input: DeductionInput,
        decide: Decision,
    ) -> Result<Executed, StoreError> {
        match &self.batcher {
            Some(batcher) => batcher.execute(&*self.backend, input, decide).await,
            None => execute::execute(&*self.backend, &input, &*decide).await,
        }
    }

    fn decision_batches(&self) -> Option<BatchStats> {
        self.batcher.as_ref().map(Batcher::stats)
    }

    async fn settle_charge(
        &self,
        charge_id: &str,
        decide: SettleDecision,
    ) -> Result<Settled, StoreError> {
        match &self.batcher {
            Some(batcher) => batcher.settle(charge_id, decide).await,
            None => settle::settle(&*self.backend, charge_id, &*decide).await,
        }
    }

    async fn unknown_charges(&self) -> Result<i64, StoreError> {
        settle::unknown_count(&*self.backend).await
    }

    async fn charges_due(&self, now: Timestamp, limit: u32) -> Result<Vec<CardCharge>, StoreError> {
        settle::open(&*self.backend, settle::Open::DueBy(now), limit).await
    }

    async fn charges_open_since(
        &self,
        made_by: Timestamp,
        limit: u32,
    ) -> Result<Vec<CardCharge>, StoreError> {
        settle::open(&*self.backend, settle::Open::MadeBy(made_by), limit).await
    }

    async fn next_charge_check(&self) -> Result<Option<Timestamp>, StoreError> {
        settle::next_check(&*self.backend).await
    }

    async fn deduction_facts(
        &self,
        mandate_id: &MandateId,
        asked: &Asked<'_>,
    ) -> Result<Option<(Mandate, Facts)>, StoreError> {
        execute::dry_run(&*self.backend, mandate_id, asked).await
    }

    async fn deduction(&self, id: &str) -> Result<Option<Deduction>, StoreError> {
        execute::get(&*self.backend, id).await
    }

    async fn list_deductions(&self, query: &DeductionQuery) -> Result<Vec<Deduction>, StoreError> {
        queries::deductions(&*self.backend, query).await
    }

    async fn insert_notice(
        &self,
        write: KeyedWrite<'_, Notice>,
    ) -> Result<Keyed<Notice>, StoreError> {
        notices::insert(&*self.backend, write).await
    }

    async fn list_notices(
        &self,
        mandate_id: &MandateId,
        before: Option<&str>,
        limit: u32,
    ) -> Result<Vec<Notice>, StoreError> {
        queries::notices(&*self.backend, mandate_id, before, limit).await
    }

    async fn refund(
        &self,
        ask: RefundAsk<'_>,
        decide: DecideRefund<'_>,
    ) -> Result<Refunded, StoreError> {
        refunds::refund(&*self.backend, ask, decide).await
    }

    async fn refund_by_request(
        &self,
        merchant_id: &MerchantId,
        request_id: &str,
    ) -> Result<Option<(Refund, Deduction, String)>, StoreError> {
        refunds::by_request(&*self.backend, merchant_id, request_id).await
    }

    async fn insert_approval(
        &self,
        write: KeyedWrite<'_, Approval>,
    ) -> Result<Keyed<Approval>, StoreError> {
        approvals::insert(&*self.backend, write).await
    }

    async fn approval(&self, id: &str) -> Result<Option<Approval>, StoreError> {
        approvals::get(&*self.backend, id).await
    }

    async fn update_approval(
        &self,
        approval: &Approval,
        audit: &AuditDraft,
    ) -> Result<(), StoreError> {
        approvals::decide(&*self.backend, approval, audit).await
    }

    async fn credit_wallet(
        &self,
        credit: &LedgerMove,
        request: KeyedRequest<'_>,
        audit: &AuditDraft,
    ) -> Result<Keyed<i64>, StoreError> {
        ledger::credit_wallet(&*self.backend, credit, request, audit).await
    }

    async fn balance(&self, account: &Account) -> Result<i64, StoreError> {
        ledger::balance(&*self.backend, account).await
    }

    async fn merchant_policy(
        &self,
        merchant_id: &MerchantId,
    ) -> Result<Option<MerchantPolicy>, StoreError> {
        policies::get(&*self.backend, merchant_id).await
    }

    async fn put_merchant_policy(
        &self,
        policy: &MerchantPolicy,
        audit: &AuditDraft,
    ) -> Result<(), StoreError> {
        policies::put(&*self.backend, policy, audit).await
    }

    async fn ledger_totals(&self) -> Result<LedgerTotals, StoreError> {
        ledger::totals(&*self.backend).await
    }
}

#[async_trait::async_trait]
impl<B: Backend> super::SettlementStore for SqlStore<B> {
    async fn settlement_schedule(
        &self,
        merchant_id: &MerchantId,
    ) -> Result<Option<crate::domain::settlement::SettlementSchedule>, StoreError> {
        super::settlement::schedule(&*self.backend, merchant_id).await
    }

    async fn settlement_schedules(
        &self,
    ) -> Result<Vec<crate::domain::settlement::SettlementSchedule>, StoreError> {
        super::settlement::schedules(&*self.backend).await
    }

    async fn put_settlement_schedule(
        &self,
        schedule: &crate::domain::settlement::SettlementSchedule,
        audit: &AuditDraft,
    ) -> Result<(), StoreError> {
        super::settlement::put_schedule(&*self.backend, schedule, audit).await
    }

    async fn scan_settlement(
        &self,
        scan: &super::settlement::SettlementScan,
        visit: super::settlement::Visit<'_>,
    ) -> Result<(), StoreError> {
        super::settlement::scan(&*self.backend, scan, visit).await
    }

    async fn charges_by_id(
        &self,
        ids: &[String],
    ) -> Result<Vec<crate::domain::reconcile::OurCharge>, StoreError> {
        super::settlement::charges_by_id(&*self.backend, ids).await
    }

    async fn succeeded_charges(
        &self,
        from: Timestamp,
        until: Timestamp,
    ) -> Result<Vec<crate::domain::reconcile::OurCharge>, StoreError> {
        super::settlement::succeeded_charges(&*self.backend, from, until).await
    }

    async fn statement_import(
        &self,
        day: &str,
        digest: &str,
    ) -> Result<Option<crate::domain::reconcile::StatementImport>, StoreError> {
        super::settlement::import_by_digest(&*self.backend, day, digest).await
    }

    async fn record_import(
        &self,
        import: &crate::domain::reconcile::StatementImport,
        found: &[crate::domain::reconcile::Discrepancy],
        audit: &AuditDraft,
    ) -> Result<Keyed<crate::domain::reconcile::StatementImport>, StoreError> {
        super::settlement::record_import(&*self.backend, import, found, audit).await
    }

    async fn discrepancy(
        &self,
        id: &str,
    ) -> Result<
        Option<(
            crate::domain::reconcile::Discrepancy,
            Vec<crate::domain::reconcile::Resolution>,
        )>,
        StoreError,
    > {
        super::settlement::discrepancy(&*self.backend, id).await
    }

    async fn list_discrepancies(
        &self,
        query: &super::settlement::DiscrepancyQuery,
    ) -> Result<
        Vec<(
            crate::domain::reconcile::Discrepancy,
            Vec<crate::domain::reconcile::Resolution>,
        )>,
        StoreError,
    > {
        super::settlement::list_discrepancies(&*self.backend, query).await
    }

    async fn resolution_by_request(
        &self,
        scope: &str,
        request_id: &str,
    ) -> Result<Option<(crate::domain::reconcile::Resolution, String)>, StoreError> {
        super::settlement::resolution_by_request(&*self.backend, scope, request_id).await
    }

    async fn record_resolution(
        &self,
        write: super::settlement::ResolutionWrite<'_>,
    ) -> Result<super::settlement::Recorded, StoreError> {
        super::settlement::record_resolution(&*self.backend, write).await
    }
}

#[async_trait::async_trait]
impl<B: Backend> AuditStore for SqlStore<B> {
    async fn audit_events(&self, query: &AuditQuery) -> Result<Vec<AuditEvent>, StoreError> {
        reads::events(&*self.backend, query).await
    }

    async fn audit_chain_page(
        &self,
        chain_id: &str,
        after: i64,
        limit: u32,
    ) -> Result<Vec<AuditEvent>, StoreError> {
        reads::chain_page(&*self.backend, chain_id, after, limit).await
    }

    async fn audit_chain_head(&self, chain_id: &str) -> Result<Option<(i64, String)>, StoreError> {
        audit::head(&*self.backend, chain_id).await
    }

    async fn audit_chains(
        &self,
        scope: &ChainScope,
        after: &str,
        limit: u32,
    ) -> Result<Vec<String>, StoreError> {
        reads::chains(&*self.backend, scope, after, limit).await
    }

    async fn audit_chain_count(&self, scope: &ChainScope) -> Result<i64, StoreError> {
        reads::chain_count(&*self.backend, scope).await
    }

    async fn headless_audit_chain(&self) -> Result<Option<String>, StoreError> {
        reads::headless_chain(&*self.backend).await
    }

    async fn settled_audit_seq(&self) -> Result<i64, StoreError> {
        reads::settled_seq(&*self.backend).await
    }

    async fn audit_heads_as_of(
        &self,
        seq: i64,
        after: &str,
        limit: u32,
    ) -> Result<Vec<HeadAt>, StoreError> {
        reads::heads_as_of(&*self.backend, seq, after, limit).await
    }

    async fn mandate_versions(
        &self,
        id: &MandateId,
        limit: u32,
    ) -> Result<Vec<(i64, Timestamp, Mandate)>, StoreError> {
        reads::versions(&*self.backend, id, limit).await
    }
}
