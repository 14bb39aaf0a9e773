//! Writes planned first and sent together. A deduction's writes (the deduction, usage, the ledger
//! movement, audit rows, …) do not depend on each other's results, so they are collected into a
//! [`Plan`] and sent in one go: SQLite runs the whole plan as one multi-statement query — one
//! trip to sqlx's connection thread instead of one per statement, which is where a loaded
//! server's time went (docs/PERFORMANCE.md). PostgreSQL's extended protocol takes one statement
//! per query, so there a plan runs statement by statement, or — where the order in which its
//! rows are locked cannot matter — as one statement of data-modifying `WITH` queries
//! ([`Plan::into_one_statement`]). Each statement states how many rows it must change, so the plan
//! is checked as a whole.

use std::borrow::Cow;

/// A value bound to a statement parameter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Bind {
    Int(i64),
    OptInt(Option<i64>),
    Text(String),
    OptText(Option<String>),
}

impl From<i64> for Bind {
    fn from(v: i64) -> Self {
        Self::Int(v)
    }
}

impl From<Option<i64>> for Bind {
    fn from(v: Option<i64>) -> Self {
        Self::OptInt(v)
    }
}

impl From<&str> for Bind {
    fn from(v: &str) -> Self {
        Self::Text(v.to_owned())
    }
}

impl From<String> for Bind {
    fn from(v: String) -> Self {
        Self::Text(v)
    }
}

impl From<Option<String>> for Bind {
    fn from(v: Option<String>) -> Self {
        Self::OptText(v)
    }
}

impl From<Option<&str>> for Bind {
    fn from(v: Option<&str>) -> Self {
        Self::OptText(v.map(str::to_owned))
    }
}

/// One statement of a plan, with parameters `$1…$n` and the rows it must change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Planned {
    pub sql: Cow<'static, str>,
    pub binds: Vec<Bind>,
    pub rows: u64,
}

impl Planned {
    /// `head`, then `VALUES` with one row of parameters per entry of `rows` (all of one
    /// width), then `tail`, to change one row per entry; `None` for no rows.
    pub fn rows(head: &str, rows: Vec<Vec<Bind>>, tail: &str) -> Option<Self> {
        let count = rows.len();
        let sql = format!("{head}{}{tail}", values(rows.first()?.len(), count));
        Some(Self {
            sql: sql.into(),
            binds: rows.into_iter().flatten().collect(),
            rows: u64::try_from(count).unwrap_or(u64::MAX),
        })
    }
}

/// Statements to run in order, inside the caller's transaction.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Plan {
    pub statements: Vec<Planned>,
}

impl Plan {
    /// Adds a statement that must change exactly `rows` rows.
    pub fn push(&mut self, sql: impl Into<Cow<'static, str>>, binds: Vec<Bind>, rows: u64) {
        self.statements.push(Planned {
            sql: sql.into(),
            binds,
            rows,
        });
    }

    /// Adds one multi-row statement: `head`, then `VALUES` with one row of parameters per
    /// entry of `rows` (all of one width), then `tail`; it must change one row per entry.
    /// Nothing for no rows.
    pub fn push_rows(&mut self, head: &str, rows: Vec<Vec<Bind>>, tail: &str) {
        self.statements.extend(Planned::rows(head, rows, tail));
    }

    /// Adds a read; its rows come back separately (see the stores' `read_batch`).
    pub fn read(&mut self, sql: impl Into<Cow<'static, str>>, binds: Vec<Bind>) {
        self.push(sql, binds, 0);
    }

    pub fn is_empty(&self) -> bool {
        self.statements.is_empty()
    }

    /// The plan as one multi-statement query: each statement's `$k` becomes `$(k + offset)`,
    /// where `offset` counts the parameters of the statements before it, so the binds follow
    /// one another. Returns the query, the binds and the rows the whole must change.
    pub fn combined(self) -> (String, Vec<Bind>, u64) {
        let mut sql = String::new();
        let mut binds = Vec::new();
        let mut rows = 0;
        for statement in self.statements {
            sql.push_str(&shift_parameters(&statement.sql, binds.len()));
            sql.push_str(";\n");
            binds.extend(statement.binds);
            rows += statement.rows;
        }
        (sql, binds, rows)
    }
}

impl Plan {
    /// The plan as one PostgreSQL statement: each write becomes a data-modifying `WITH` query
    /// (`sK AS (… RETURNING 1)`) and the statement returns one row with the number of rows each
    /// changed, in order; parameters are renumbered as in `combined`. Every part sees the same
    /// snapshot and none sees another's changes, and PostgreSQL runs them in no set order, so
    /// only a plan whose statements change different rows, none depending on another's change,
    /// and whose row locks the transaction does not hold already are all taken by one of its
    /// statements (one row, or a multi-row upsert taking its rows in its `VALUES` order), may
    /// run so
    /// (foreign keys are checked at the end of the statement, after every part).
    pub fn into_one_statement(self) -> (String, Vec<Bind>, Vec<u64>) {
        let mut parts = String::from("WITH ");
        let mut counts = String::from(" SELECT ");
        let mut binds = Vec::new();
        let mut rows = Vec::with_capacity(self.statements.len());
        for (k, statement) in self.statements.into_iter().enumerate() {
            if k > 0 {
                parts.push_str(", ");
                counts.push_str(", ");
            }
            parts.push_str(&format!(
                "s{k} AS ({} RETURNING 1)",
                shift_parameters(&statement.sql, binds.len())
            ));
            counts.push_str(&format!("(SELECT count(*) FROM s{k})"));
            binds.extend(statement.binds);
            rows.push(statement.rows);
        }
        parts.push_str(&counts);
        (parts, binds, rows)
    }
}

/// `VALUES ($1, …, $c), …` for `rows` rows of `columns` parameters each, numbered in order.
pub fn values(columns: usize, rows: usize) -> String {
    let mut sql = String::from("VALUES ");
    for row in 0..rows {
        if row > 0 {
            sql.push_str(", ");
        }
        sql.push('(');
        for column in 0..columns {
            if column > 0 {
                sql.push_str(", ");
            }
            sql.push('$');
            sql.push_str(&(row * columns + column + 1).to_string());
        }
        sql.push(')');
    }
    sql
}

/// A query of `sql` with `binds` bound in order. The SQL is the store's own text (constants,
/// renumbered placeholders, `VALUES` lists): no caller data is ever part of it.
pub fn query<DB>(
    sql: Cow<'static, str>,
    binds: Vec<Bind>,
) -> sqlx::query::Query<'static, DB, <DB as sqlx::Database>::Arguments>
where
    DB: sqlx::Database,
    for<'e> i64: sqlx::Encode<'e, DB> + sqlx::Type<DB>,
    for<'e> Option<i64>: sqlx::Encode<'e, DB> + sqlx::Type<DB>,
    for<'e> String: sqlx::Encode<'e, DB> + sqlx::Type<DB>,
    for<'e> Option<String>: sqlx::Encode<'e, DB> + sqlx::Type<DB>,
{
    let mut query = match sql {
        Cow::Borrowed(sql) => sqlx::query(sql),
        Cow::Owned(sql) => sqlx::query(sqlx::AssertSqlSafe(sql)),
    };
    for bind in binds {
        query = match bind {
            Bind::Int(v) => query.bind(v),
            Bind::OptInt(v) => query.bind(v),
            Bind::Text(v) => query.bind(v),
            Bind::OptText(v) => query.bind(v),
        };
    }
    query
}

/// Renumbers every `$k` parameter of `sql` to `$(k + offset)`. The store's SQL has no `$` in
/// string literals or identifiers, so every `$` followed by digits is a parameter.
fn shift_parameters(sql: &str, offset: usize) -> String {
    if offset == 0 {
        return sql.to_owned();
    }
    let mut out = String::with_capacity(sql.len() + 16);
    let mut rest = sql;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..=at]);
        rest = &rest[at + 1..];
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits > 0 {
            let k: usize = rest[..digits].parse().expect("ASCII digits form a number");
            out.push_str(&(k + offset).to_string());
            rest = &rest[digits..];
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_lists_number_rows_in_order() {
        assert_eq!(values(2, 1), "VALUES ($1, $2)");
        assert_eq!(values(3, 2), "VALUES ($1, $2, $3), ($4, $5, $6)");
    }

    #[test]
    fn parameters_are_shifted_past_earlier_statements() {
        assert_eq!(
            shift_parameters("a = $1 AND b = $12", 0),
            "a = $1 AND b = $12"
        );
        assert_eq!(
            shift_parameters("VALUES ($1, $2), ($1, $10)", 3),
            "VALUES ($4, $5), ($4, $13)"
        );
        assert_eq!(shift_parameters("x = $", 2), "x = $");
    }

    #[test]
    fn a_plan_combines_in_order_with_its_binds_and_rows() {
        let mut plan = Plan::default();
        plan.push(
            "INSERT INTO t VALUES ($1, $2)",
            vec![1.into(), "a".into()],
            1,
        );
        plan.push(
            "UPDATE u SET v = v + $1 WHERE k = $2",
            vec![5.into(), Bind::OptText(None)],
            2,
        );
        let (sql, binds, rows) = plan.combined();
        assert_eq!(
            sql,
            "INSERT INTO t VALUES ($1, $2);\nUPDATE u SET v = v + $3 WHERE k = $4;\n"
        );
        assert_eq!(
            binds,
            [
                Bind::Int(1),
                Bind::Text("a".into()),
                Bind::Int(5),
                Bind::OptText(None)
            ]
        );
        assert_eq!(rows, 3);
    }

    #[test]
    fn a_plan_into_one_statement_counts_each_part() {
        let mut plan = Plan::default();
        plan.push(
            "INSERT INTO t VALUES ($1, $2)",
            vec![1.into(), "a".into()],
            1,
        );
        plan.push(
            "UPDATE u SET v = $1 WHERE k = $2",
            vec![5.into(), "b".into()],
            2,
        );
        let (sql, binds, rows) = plan.into_one_statement();
        assert_eq!(
            sql,
            "WITH s0 AS (INSERT INTO t VALUES ($1, $2) RETURNING 1), \
             s1 AS (UPDATE u SET v = $3 WHERE k = $4 RETURNING 1) \
             SELECT (SELECT count(*) FROM s0), (SELECT count(*) FROM s1)"
        );
        assert_eq!(binds.len(), 4);
        assert_eq!(rows, [1, 2]);
    }
}
