//! The store logic both backends share. Their SQL is the same (see `rows::query`); what differs
//! — pools, how a write transaction begins, migrations — lives in `sqlite.rs` and `postgres.rs`,
//! which each provide `reader()` and `begin_write()` and then expand this macro. A macro rather
//! than generics over `sqlx::Database` because the trait bounds that sqlx needs for generic
//! queries would outweigh the code they save.

macro_rules! impl_store {
    ($store:ty, $db:ty, $tx:ty) => {
        impl $store {
            /// Places `draft` at the end of its chain inside `tx`. The chain head's row is
            /// updated first, so concurrent appends to one chain queue on its lock (PostgreSQL)
            /// or on the single writer (SQLite), while other chains proceed.
            async fn append_audit_in(
                tx: &mut $tx,
                draft: &$crate::domain::audit::AuditDraft,
            ) -> Result<(), $crate::storage::StoreError> {
                Self::append_audits_in(tx, std::slice::from_ref(draft)).await
            }

            /// Places `drafts` at the end of their chains inside `tx`, in order.
            async fn append_audits_in(
                tx: &mut $tx,
                drafts: &[$crate::domain::audit::AuditDraft],
            ) -> Result<(), $crate::storage::StoreError> {
                let mut plan = $crate::storage::plan::Plan::default();
                Self::plan_audits(&mut **tx, drafts, &mut plan, &mut None).await?;
                // New rows, and chain heads `plan_audits` has locked: the order cannot matter.
                Self::run_plan_at_once(&mut **tx, plan).await
            }

            /// Takes the positions for `drafts` at the end of their chains and plans their rows.
            /// Each run of events on one chain takes the chain head's row first (creating it, or
            /// advancing it by the run's length, in one statement run now: the hashes need its
            /// answer), so concurrent appends to one chain queue on its lock (PostgreSQL) or on
            /// the single writer (SQLite) while other chains proceed; the run's rows (one
            /// multi-row insert) and the head's new hash go into `plan`. A run on the chain of
            /// `known` (a head read earlier in this transaction, with nothing able to write
            /// between: SQLite's single writer) takes its positions from it and only plans the
            /// head's new value, one trip fewer.
            async fn plan_audits(
                conn: &mut <$db as sqlx::Database>::Connection,
                drafts: &[$crate::domain::audit::AuditDraft],
                plan: &mut $crate::storage::plan::Plan,
                known: &mut Option<$crate::storage::ChainHead>,
            ) -> Result<(), $crate::storage::StoreError> {
                use $crate::storage::plan::{Bind, values};
                use $crate::storage::rows::{micros, query};
                /// Columns of `INSERT_AUDIT_ROWS`.
                const COLUMNS: usize = 16;
                for run in drafts.chunk_by(|a, b| a.chain_id() == b.chain_id()) {
                    let chain_id = run[0].chain_id();
                    let length = i64::try_from(run.len()).unwrap_or(i64::MAX);
                    let head = known.as_mut().filter(|head| head.chain_id == chain_id);
                    let (last_seq, mut prev_hash) = match &head {
                        Some(head) => {
                            let last_seq = head.last_seq.checked_add(length).ok_or_else(|| {
                                $crate::storage::StoreError::Corrupt(format!(
                                    "chain {chain_id} is full"
                                ))
                            })?;
                            (last_seq, head.last_hash.clone())
                        }
                        None => {
                            sqlx::query_as(query::RESERVE_CHAIN_RUN)
                                .bind(&chain_id)
                                .bind(length)
                                .bind($crate::domain::audit::GENESIS_HASH)
                                .fetch_one(&mut *conn)
                                .await?
                        }
                    };
                    let mut binds: Vec<Bind> = Vec::with_capacity(run.len() * COLUMNS);
                    for (offset, draft) in (0..).zip(run) {
                        let chain_seq = last_seq - length + 1 + offset;
                        let hash = $crate::domain::audit::event_hash(
                            &chain_id, chain_seq, draft, &prev_hash,
                        );
                        let prev = std::mem::replace(&mut prev_hash, hash.clone());
                        binds.extend([
                            chain_id.clone().into(),
                            chain_seq.into(),
                            micros(draft.at).into(),
                            draft.actor_role.clone().into(),
                            draft.actor_subject.clone().into(),
                            draft.merchant_id.clone().into(),
                            draft.payer_id.clone().into(),
                            draft.mandate_id.clone().into(),
                            draft.deduction_id.clone().into(),
                            draft.action.clone().into(),
                            draft.outcome.clone().into(),
                            draft.reason_code.clone().into(),
                            draft.request_id.clone().into(),
                            draft.details.clone().into(),
                            prev.into(),
                            hash.into(),
                        ]);
                    }
                    plan.push(
                        format!("{}{}", query::INSERT_AUDIT_ROWS, values(COLUMNS, run.len())),
                        binds,
                        u64::try_from(run.len()).unwrap_or(u64::MAX),
                    );
                    if let Some(head) = head {
                        head.last_seq = last_seq;
                        head.last_hash.clone_from(&prev_hash);
                        plan.push(
                            query::PUT_CHAIN_HEAD,
                            vec![chain_id.into(), last_seq.into(), prev_hash.into()],
                            1,
                        );
                    } else {
                        plan.push(
                            query::SET_CHAIN_HASH,
                            vec![prev_hash.into(), chain_id.into()],
                            1,
                        );
                    }
                }
                Ok(())
            }

            async fn insert_version_in(
                tx: &mut $tx,
                mandate: &$crate::domain::mandate::Mandate,
                document: &str,
            ) -> Result<(), $crate::storage::StoreError> {
                use $crate::storage::rows::{micros, query};
                sqlx::query(query::INSERT_VERSION)
                    .bind(mandate.id.as_str())
                    .bind(mandate.version)
                    .bind(micros(mandate.updated_at))
                    .bind(document)
                    .execute(&mut **tx)
                    .await?;
                Ok(())
            }

            async fn fetch_document(
                &self,
                sql: &'static str,
                id: &$crate::domain::ids::MandateId,
                arg: Option<i64>,
            ) -> Result<Option<$crate::domain::mandate::Mandate>, $crate::storage::StoreError> {
                let mut q = sqlx::query_as::<_, (String,)>(sql).bind(id.as_str());
                if let Some(arg) = arg {
                    q = q.bind(arg);
                }
                let row = q.fetch_optional(self.reader()).await?;
                row.map(|(doc,)| $crate::storage::rows::decode_mandate(&doc))
                    .transpose()
            }
        }

        #[async_trait::async_trait]
        impl $crate::storage::Store for $store {
            async fn insert_mandate(
                &self,
                mandate: &$crate::domain::mandate::Mandate,
                expires_at: Option<jiff::Timestamp>,
                fingerprint: &str,
                audit: &$crate::domain::audit::AuditDraft,
            ) -> Result<$crate::storage::Inserted, $crate::storage::StoreError> {
                use $crate::storage::rows::{decode_mandate, encode_mandate, micros, query};
                let document = encode_mandate(mandate)?;
                let mut tx = self.begin_write().await?;
                let inserted = sqlx::query(query::INSERT_MANDATE)
                    .bind(mandate.id.as_str())
                    .bind(mandate.merchant_id.as_str())
                    .bind(mandate.contract_id.as_str())
                    .bind(mandate.payer_id.as_str())
                    .bind(mandate.status.as_str())
                    .bind(mandate.version)
                    .bind(fingerprint)
                    .bind(expires_at.map(micros))
                    .bind(micros(mandate.created_at))
                    .bind(micros(mandate.updated_at))
                    .bind(&document)
                    .execute(&mut *tx)
                    .await?;
                if inserted.rows_affected() == 0 {
                    let (existing, fingerprint): (String, String) =
                        sqlx::query_as(query::MANDATE_BY_CONTRACT)
                            .bind(mandate.merchant_id.as_str())
                            .bind(mandate.contract_id.as_str())
                            .fetch_one(&mut *tx)
                            .await?;
                    tx.rollback().await?;
                    return Ok($crate::storage::Inserted::Existing {
                        mandate: Box::new(decode_mandate(&existing)?),
                        fingerprint,
                    });
                }
                Self::insert_version_in(&mut tx, mandate, &document).await?;
                Self::append_audit_in(&mut tx, audit).await?;
                tx.commit().await?;
                Ok($crate::storage::Inserted::New)
            }

            async fn update_mandate(
                &self,
                update: $crate::storage::MandateUpdate<'_>,
            ) -> Result<(), $crate::storage::StoreError> {
                use $crate::storage::rows::{encode_mandate, micros, query};
                let mandate = update.mandate;
                let document = encode_mandate(mandate)?;
                let mut tx = self.begin_write().await?;
                let updated = sqlx::query(query::UPDATE_MANDATE)
                    .bind(mandate.status.as_str())
                    .bind(mandate.version)
                    .bind(update.expires_at.map(micros))
                    .bind(micros(mandate.updated_at))
                    .bind(&document)
                    .bind(mandate.id.as_str())
                    .bind(update.expected_version)
                    .execute(&mut *tx)
                    .await?;
                if updated.rows_affected() == 0 {
                    tx.rollback().await?;
                    return Err($crate::storage::StoreError::Conflict);
                }
                if let Some(record) = update.idempotency {
                    let taken = sqlx::query(query::INSERT_IDEMPOTENCY)
                        .bind(&record.scope)
                        .bind(&record.request_id)
                        .bind(&record.fingerprint)
                        .bind(record.mandate_id.as_str())
                        .bind(record.mandate_version)
                        .bind(micros(record.created_at))
                        .execute(&mut *tx)
                        .await?;
                    if taken.rows_affected() == 0 {
                        tx.rollback().await?;
                        return Err($crate::storage::StoreError::Conflict);
                    }
                }
                Self::insert_version_in(&mut tx, mandate, &document).await?;
                Self::append_audit_in(&mut tx, update.audit).await?;
                tx.commit().await?;
                Ok(())
            }

            async fn mandate(
                &self,
                id: &$crate::domain::ids::MandateId,
            ) -> Result<Option<$crate::domain::mandate::Mandate>, $crate::storage::StoreError> {
                let row: Option<(String, Option<i64>, Option<i64>)> =
                    sqlx::query_as($crate::storage::rows::query::MANDATE)
                        .bind(id.as_str())
                        .fetch_optional(self.reader())
                        .await?;
                row.map(|(doc, collected, refunded)| {
                    $crate::storage::rows::decode_current_mandate(&doc, collected, refunded)
                })
                .transpose()
            }

            async fn mandate_as_of(
                &self,
                id: &$crate::domain::ids::MandateId,
                at: jiff::Timestamp,
            ) -> Result<Option<$crate::domain::mandate::Mandate>, $crate::storage::StoreError> {
                let at = $crate::storage::rows::micros(at);
                self.fetch_document($crate::storage::rows::query::MANDATE_AS_OF, id, Some(at))
                    .await
            }

            async fn mandate_version(
                &self,
                id: &$crate::domain::ids::MandateId,
                version: i64,
            ) -> Result<Option<$crate::domain::mandate::Mandate>, $crate::storage::StoreError> {
                self.fetch_document(
                    $crate::storage::rows::query::MANDATE_VERSION,
                    id,
                    Some(version),
                )
                .await
            }

            async fn list_mandates(
                &self,
                q: &$crate::storage::MandateQuery,
            ) -> Result<Vec<$crate::domain::mandate::Mandate>, $crate::storage::StoreError> {
                let mut sql = sqlx::QueryBuilder::<$db>::new(
                    "SELECT document, last_collected_at_us, last_refunded_at_us FROM mandates WHERE 1 = 1",
                );
                if let Some(merchant) = &q.merchant_id {
                    sql.push(" AND merchant_id = ")
                        .push_bind(merchant.as_str().to_owned());
                }
                if let Some(payer) = &q.payer_id {
                    sql.push(" AND payer_id = ")
                        .push_bind(payer.as_str().to_owned());
                }
                if let Some(status) = q.status {
                    sql.push(" AND status = ").push_bind(status.as_str());
                }
                if let Some(before) = &q.before {
                    sql.push(" AND mandate_id < ")
                        .push_bind(before.as_str().to_owned());
                }
                sql.push(" ORDER BY mandate_id DESC LIMIT ")
                    .push_bind(i64::from(q.limit));
                let rows: Vec<(String, Option<i64>, Option<i64>)> =
                    sql.build_query_as().fetch_all(self.reader()).await?;
                rows.iter()
                    .map(|(doc, collected, refunded)| {
                        $crate::storage::rows::decode_current_mandate(doc, *collected, *refunded)
                    })
                    .collect()
            }

            async fn mandates_expiring_by(
                &self,
                at: jiff::Timestamp,
                limit: u32,
            ) -> Result<Vec<$crate::domain::ids::MandateId>, $crate::storage::StoreError> {
                let rows: Vec<(String,)> = sqlx::query_as($crate::storage::rows::query::EXPIRING)
                    .bind($crate::storage::rows::micros(at))
                    .bind(i64::from(limit))
                    .fetch_all(self.reader())
                    .await?;
                rows.into_iter()
                    .map(|(id,)| {
                        $crate::domain::ids::MandateId::try_from(id)
                            .map_err(|e| $crate::storage::StoreError::Corrupt(e.to_string()))
                    })
                    .collect()
            }

            async fn append_audit(
                &self,
                draft: &$crate::domain::audit::AuditDraft,
            ) -> Result<(), $crate::storage::StoreError> {
                let mut tx = self.begin_write().await?;
                Self::append_audit_in(&mut tx, draft).await?;
                tx.commit().await?;
                Ok(())
            }

            async fn idempotency_record(
                &self,
                scope: &str,
                request_id: &str,
            ) -> Result<Option<$crate::storage::IdempotencyRecord>, $crate::storage::StoreError>
            {
                let row: Option<$crate::storage::rows::IdempotencyRow> =
                    sqlx::query_as($crate::storage::rows::query::IDEMPOTENCY)
                        .bind(scope)
                        .bind(request_id)
                        .fetch_optional(self.reader())
                        .await?;
                row.map(|r| r.into_record()).transpose()
            }

            async fn audit_chain(
                &self,
                chain_id: &str,
            ) -> Result<$crate::storage::StoredChain, $crate::storage::StoreError> {
                use $crate::storage::rows::{AuditRow, query};
                // One read transaction, so the events and the head are from the same moment.
                let mut tx = self.begin_snapshot().await?;
                let rows: Vec<AuditRow> = sqlx::query_as(query::AUDIT_CHAIN)
                    .bind(chain_id)
                    .fetch_all(&mut *tx)
                    .await?;
                let head: Option<(i64, String)> = sqlx::query_as(query::CHAIN_HEAD)
                    .bind(chain_id)
                    .fetch_optional(&mut *tx)
                    .await?;
                tx.commit().await?;
                Ok($crate::storage::StoredChain {
                    events: rows
                        .into_iter()
                        .map(AuditRow::into_event)
                        .collect::<Result<_, _>>()?,
                    head,
                })
            }

            async fn audit_chain_ids(&self) -> Result<Vec<String>, $crate::storage::StoreError> {
                let rows: Vec<(String,)> = sqlx::query_as($crate::storage::rows::query::CHAIN_IDS)
                    .fetch_all(self.reader())
                    .await?;
                Ok(rows.into_iter().map(|(id,)| id).collect())
            }

            fn pool_stats(&self) -> Vec<(&'static str, u32, usize)> {
                self.pools()
                    .into_iter()
                    .map(|(name, pool)| (name, pool.size(), pool.num_idle()))
                    .collect()
            }

            async fn table_counts(
                &self,
            ) -> Result<$crate::storage::TableCounts, $crate::storage::StoreError> {
                let (mandates, mandate_versions, audit_events, idempotency_keys): (
                    i64,
                    i64,
                    i64,
                    i64,
                ) = sqlx::query_as($crate::storage::rows::query::COUNTS)
                    .fetch_one(self.reader())
                    .await?;
                Ok($crate::storage::TableCounts {
                    mandates,
                    mandate_versions,
                    audit_events,
                    idempotency_keys,
                })
            }
        }
    };
}

pub(crate) use impl_store;
