//! Schemas written as SQL column lists, e.g. `"id BIGINT, name VARCHAR"`.

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::context::SessionState;
use datafusion::logical_expr::{DdlStatement, LogicalPlan};

/// Parses a SQL column list (the body of a `CREATE TABLE`) into an Arrow
/// schema, with the session's type names and case rules.
pub async fn parse_column_list(state: &SessionState, columns: &str) -> Result<SchemaRef> {
    if columns.contains(';') || columns.contains(')') && !balanced(columns) {
        return Err(DataFusionError::Plan(format!(
            "not a column list: {columns}"
        )));
    }
    let plan = state
        .create_logical_plan(&format!("CREATE TABLE __schema ({columns})"))
        .await?;
    match plan {
        LogicalPlan::Ddl(DdlStatement::CreateMemoryTable(create)) => {
            Ok(create.input.schema().inner().clone())
        }
        _ => Err(DataFusionError::Plan(format!(
            "not a column list: {columns}"
        ))),
    }
}

fn balanced(text: &str) -> bool {
    let mut depth = 0i32;
    for c in text.chars() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            _ => {}
        }
        if depth < 0 {
            return false;
        }
    }
    depth == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::datatypes::DataType;
    use datafusion::prelude::SessionContext;

    #[tokio::test]
    async fn parses_types_and_rejects_injection() {
        let state = SessionContext::new().state();
        let schema = parse_column_list(
            &state,
            "id BIGINT NOT NULL, amount DECIMAL(10,2), ts TIMESTAMP",
        )
        .await
        .unwrap();
        assert_eq!(schema.field(0).data_type(), &DataType::Int64);
        assert!(!schema.field(0).is_nullable());
        assert_eq!(schema.field(1).data_type(), &DataType::Decimal128(10, 2));
        assert!(parse_column_list(&state, "id INT) AS SELECT 1; --")
            .await
            .is_err());
        assert!(parse_column_list(&state, "id NOTATYPE").await.is_err());
    }
}
