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
use datafusion::execution::context::SessionState;
use datafusion::logical_expr::{ident, Expr};
use deltalake::operations::merge::MergeBuilder;
use deltalake::operations::write::WriteBuilder;
use deltalake::protocol::SaveMode as DeltaSaveMode;
use deltalake::DeltaTable;
use std::sync::Arc;

use crate::error::Result;

use super::merge::{
    column, column_names, idents, key_match, last_per, table_frame, DELETE, SEQUENCE,
};
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

    /// The tombstones (key columns and [`SEQUENCE`]) as a frame of
    /// `state`'s session, if there are any.
    pub(super) async fn frame(&self, state: &SessionState) -> Result<Option<DataFrame>> {
        if !self.exists {
            return Ok(None);
        }
        Ok(Some(table_frame(&self.table, state).await?))
    }

    /// `latest` (one change per key, with [`SEQUENCE`]) without the changes
    /// older than their key's deletion.
    pub(super) async fn drop_superseded(
        &self,
        latest: DataFrame,
        keys: &[String],
    ) -> Result<DataFrame> {
        let state = latest.clone().into_parts().0;
        let Some(deleted) = self.frame(&state).await? else {
            return Ok(latest);
        };
        let columns = column_names(&latest);
        let renamed: Vec<String> = (0..keys.len()).map(|i| format!("__deleted_{i}")).collect();
        let mut select: Vec<Expr> = keys
            .iter()
            .zip(&renamed)
            .map(|(k, r)| ident(k).alias(r))
            .collect();
        select.push(ident(SEQUENCE).alias(DELETED_AT));
        let on = keys
            .iter()
            .zip(&renamed)
            .map(|(k, r)| ident(k).eq(ident(r)));
        let newer = ident(DELETED_AT)
            .is_null()
            .or(ident(SEQUENCE).gt_eq(ident(DELETED_AT)).is_true());
        Ok(latest
            .join_on(deleted.select(select)?, JoinType::Left, on)?
            .filter(newer)?
            .select(idents(&columns))?)
    }

    /// Records the deletions among `changes` (each key's last, where it is
    /// newer than the key's tombstone).
    pub(super) async fn record(self, changes: DataFrame, keys: &[String]) -> Result<()> {
        let mut columns = keys.to_vec();
        columns.push(SEQUENCE.into());
        let deletions = last_per(changes.filter(ident(DELETE))?, keys)?.select(idents(&columns))?;
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
        // A null sequence is the oldest.
        let newer = column("target", SEQUENCE)
            .is_null()
            .or(column("source", SEQUENCE)
                .gt(column("target", SEQUENCE))
                .is_true());
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
pub(super) const DELETED_AT: &str = "__deleted_at";
