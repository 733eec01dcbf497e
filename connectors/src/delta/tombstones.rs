//! Deleted keys of a merge table, kept beside it in the hidden Delta table
//! `_dataflow_tombstones` (key columns and the deletion's sequence), so a
//! late change older than its key's deletion does not bring the key back.
//!
//! Used with `sequenceBy` and `deleteCondition` (without a sequence, a later
//! batch is always newer). The deletions are recorded before the merge
//! commits: a run that fails after that left deletions that its replay
//! records again, and that only hold back changes older than them. Like
//! Delta Live Tables' tombstones, one row per deleted key is kept; readers
//! and `VACUUM` skip directories whose names start with `_`.

use dataflow_engine::spec::StorageOptions;
use datafusion::common::JoinType;
use datafusion::dataframe::DataFrame;
use datafusion::execution::context::SessionContext;
use datafusion::logical_expr::{ident, Expr};
use deltalake::operations::merge::MergeBuilder;
use deltalake::operations::write::WriteBuilder;
use deltalake::protocol::SaveMode as DeltaSaveMode;
use deltalake::DeltaTable;
use std::sync::Arc;

use crate::error::Result;

use super::merge::{column, idents, key_match, DELETE, SEQUENCE};
use super::{open_existing, table_at, writer_properties};

/// The directory of a merge table's tombstones.
const DIR: &str = "_dataflow_tombstones";

/// A merge table's tombstones (the table may not exist yet).
pub(super) struct Tombstones {
    table: DeltaTable,
    exists: bool,
}

impl Tombstones {
    /// The tombstones of the merge table at `path`.
    pub(super) async fn of(storage: &StorageOptions, path: &str) -> Result<Tombstones> {
        let path = format!("{}/{DIR}", path.trim_end_matches('/'));
        Ok(match open_existing(storage, &path, None).await? {
            Some(table) => Tombstones {
                table,
                exists: true,
            },
            None => Tombstones {
                table: table_at(storage, &path)?,
                exists: false,
            },
        })
    }

    /// `latest` (one change per key, with [`SEQUENCE`]) without the changes
    /// older than their key's deletion.
    pub(super) async fn drop_superseded(
        &self,
        latest: DataFrame,
        keys: &[String],
    ) -> Result<DataFrame> {
        if !self.exists {
            return Ok(latest);
        }
        let columns: Vec<String> = latest
            .schema()
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .collect();
        let state = latest.clone().into_parts().0;
        self.table.update_datafusion_session(&state)?;
        let ctx = SessionContext::new_with_state(state);
        let renamed: Vec<String> = (0..keys.len()).map(|i| format!("__deleted_{i}")).collect();
        let mut select: Vec<Expr> = keys
            .iter()
            .zip(&renamed)
            .map(|(k, r)| ident(k).alias(r))
            .collect();
        select.push(ident(SEQUENCE).alias(DELETED_AT));
        let deleted = ctx
            .read_table(self.table.table_provider().await?)?
            .select(select)?;
        let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
        let renamed: Vec<&str> = renamed.iter().map(String::as_str).collect();
        let newer = ident(DELETED_AT)
            .is_null()
            .or(ident(SEQUENCE).gt_eq(ident(DELETED_AT)).is_true());
        Ok(latest
            .join(deleted, JoinType::Left, &keys, &renamed, None)?
            .filter(newer)?
            .select(idents(&columns))?)
    }

    /// Records the deletions among `latest` (keeping each key's newest).
    pub(super) async fn record(self, latest: DataFrame, keys: &[String]) -> Result<()> {
        let mut columns = keys.to_vec();
        columns.push(SEQUENCE.into());
        let deletions = latest.filter(ident(DELETE))?.select(idents(&columns))?;
        let (state, plan) = deletions.into_parts();
        if !self.exists {
            WriteBuilder::new(self.table.log_store(), None)
                .with_input_plan(plan)
                .with_session_state(Arc::new(state))
                .with_save_mode(DeltaSaveMode::Append)
                .with_writer_properties(writer_properties())
                .await?;
            return Ok(());
        }
        let snapshot = self.table.snapshot()?.snapshot().clone();
        let source = DataFrame::new(state.clone(), plan);
        let newer = column("source", SEQUENCE).gt(column("target", SEQUENCE));
        MergeBuilder::new(
            self.table.log_store(),
            Some(snapshot),
            key_match(keys),
            source,
        )
        .with_source_alias("source")
        .with_target_alias("target")
        .with_session_state(Arc::new(state))
        .with_writer_properties(writer_properties())
        .when_matched_update(|u| {
            u.predicate(newer)
                .update(SEQUENCE, column("source", SEQUENCE))
        })?
        .when_not_matched_insert(|i| {
            columns
                .iter()
                .fold(i, |i, c| i.set(c.as_str(), column("source", c)))
        })?
        .await?;
        Ok(())
    }
}

/// A tombstone's sequence, beside the change it is compared with.
const DELETED_AT: &str = "__deleted_at";
