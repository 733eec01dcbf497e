//! Spark's event-time windows in SQL: `GROUP BY window(ts, '10 minutes')`,
//! `GROUP BY window(ts, '10 minutes', '5 minutes')` (sliding) and
//! `GROUP BY session_window(ts, '5 minutes')`, with the window usable as a
//! column named `window` (or `session_window`) in the select list, e.g.
//! `SELECT window.start, count(*) ...`.
//!
//! The query is rewritten before planning: the `FROM` relation becomes a
//! derived table (keeping its name) that adds the window column, and the
//! `GROUP BY` groups by that column.
//! - Tumbling: one window per row (`window(...)`).
//! - Sliding: one row per window holding it (`unnest(__sliding_windows(...))`).
//! - Session: per value of the other `GROUP BY` expressions, rows ordered by
//!   time; a row starts a new session when it comes `gap` or more after the
//!   previous one. A session runs from its first row to its last plus `gap`.
//!
//! Rows whose time is null belong to no window, as in Spark.

use std::ops::ControlFlow;

use datafusion::common::{plan_err, DataFusionError, Result};
use datafusion::sql::sqlparser::ast::{
    Expr, FunctionArg, FunctionArgExpr, FunctionArguments, GroupByExpr, Ident, Select, SetExpr,
    Statement, TableFactor, VisitMut, VisitorMut,
};
use datafusion::sql::sqlparser::dialect::GenericDialect;
use datafusion::sql::sqlparser::parser::Parser;

use super::functions::{SLIDING_WINDOWS, WINDOW};
use crate::spec::parse_duration;

/// Name of the session window function and of its column.
pub const SESSION_WINDOW: &str = "session_window";

/// Rewrites every `GROUP BY window(...)` / `session_window(...)` of
/// `statement` (see the module doc).
pub fn rewrite_windows(statement: &mut Statement) -> Result<()> {
    let mut rewriter = Rewriter;
    match statement.visit(&mut rewriter) {
        ControlFlow::Continue(()) => Ok(()),
        ControlFlow::Break(error) => Err(error),
    }
}

struct Rewriter;

impl VisitorMut for Rewriter {
    type Break = DataFusionError;

    fn post_visit_select(&mut self, select: &mut Select) -> ControlFlow<DataFusionError> {
        match rewrite_select(select) {
            Ok(()) => ControlFlow::Continue(()),
            Err(error) => ControlFlow::Break(error),
        }
    }
}

/// A window call found in a `GROUP BY`.
struct WindowCall {
    /// `window` or `session_window`: the function and its column.
    name: &'static str,
    /// The arguments as SQL text.
    args: Vec<String>,
}

fn rewrite_select(select: &mut Select) -> Result<()> {
    let GroupByExpr::Expressions(exprs, _) = &mut select.group_by else {
        return Ok(());
    };
    let mut found = None;
    for (index, expr) in exprs.iter().enumerate() {
        if let Some(call) = window_call(expr)? {
            if found.is_some() {
                return plan_err!("GROUP BY holds more than one window(...) / session_window(...)");
            }
            found = Some((index, call));
        }
    }
    let Some((index, call)) = found else {
        return Ok(());
    };
    exprs[index] = Expr::Identifier(Ident::new(call.name));
    let others: Vec<String> = exprs
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != index)
        .map(|(_, e)| e.to_string())
        .collect();
    let [from] = select.from.as_mut_slice() else {
        return plan_err!(
            "GROUP BY {}(...) needs a single relation in FROM; Help: join in an earlier step (registerAs) and group that",
            call.name
        );
    };
    if !from.joins.is_empty() {
        return plan_err!(
            "GROUP BY {}(...) over a join is not supported; Help: join in an earlier step (registerAs) and group that",
            call.name
        );
    }
    let alias = relation_name(&from.relation, call.name)?;
    let derived = match call.name {
        SESSION_WINDOW => sessions(&call.args, &others, &from.relation.to_string(), &alias)?,
        _ => windows(&call.args, &from.relation.to_string())?,
    };
    from.relation = derived_table(&derived, &alias)?;
    Ok(())
}

/// The call, if `expr` is `window(...)` or `session_window(...)`.
fn window_call(expr: &Expr) -> Result<Option<WindowCall>> {
    let Expr::Function(function) = expr else {
        return Ok(None);
    };
    let Some(last) = function.name.0.last().and_then(|p| p.as_ident()) else {
        return Ok(None);
    };
    let name = match last.value.to_ascii_lowercase().as_str() {
        WINDOW => WINDOW,
        SESSION_WINDOW => SESSION_WINDOW,
        _ => return Ok(None),
    };
    let FunctionArguments::List(list) = &function.args else {
        return plan_err!("{name}: expected (timestamp, '10 minutes', ...)");
    };
    let args = list
        .args
        .iter()
        .map(|arg| match arg {
            FunctionArg::Unnamed(FunctionArgExpr::Expr(e)) => Ok(e.to_string()),
            _ => plan_err!("{name}: arguments are positional expressions"),
        })
        .collect::<Result<Vec<String>>>()?;
    Ok(Some(WindowCall { name, args }))
}

/// The name the relation's columns are qualified with.
fn relation_name(relation: &TableFactor, function: &str) -> Result<Ident> {
    match relation {
        TableFactor::Table {
            alias: Some(alias), ..
        }
        | TableFactor::Derived {
            alias: Some(alias), ..
        } => Ok(alias.name.clone()),
        TableFactor::Table { name, .. } => match name.0.last().and_then(|p| p.as_ident()) {
            Some(ident) => Ok(ident.clone()),
            None => plan_err!("GROUP BY {function}(...): cannot name the relation {name}"),
        },
        _ => plan_err!("GROUP BY {function}(...) needs a table or an aliased subquery in FROM"),
    }
}

/// A duration literal's text (`'10 minutes'` → `10 minutes`).
fn duration_literal(arg: Option<&String>, function: &str, what: &str) -> Result<String> {
    let text = arg
        .and_then(|a| a.strip_prefix('\'').and_then(|a| a.strip_suffix('\'')))
        .filter(|text| parse_duration(text).is_some_and(|d| !d.is_zero()));
    match text {
        Some(text) => Ok(text.to_string()),
        None => plan_err!("{function}: {what} must be a string literal such as '10 minutes'"),
    }
}

/// The relation with a `window` column: one row per window for a sliding
/// window, else the row with its window.
fn windows(args: &[String], relation: &str) -> Result<String> {
    let ts = args.first().map(String::as_str).unwrap_or("NULL");
    let size = duration_literal(args.get(1), WINDOW, "windowDuration")?;
    let sliding = match args.get(2) {
        None => false,
        Some(_) => {
            let slide = duration_literal(args.get(2), WINDOW, "slideDuration")?;
            parse_duration(&slide) != parse_duration(&size)
        }
    };
    let call = args.join(", ");
    let column = if sliding {
        format!("unnest({SLIDING_WINDOWS}({call}))")
    } else {
        format!("{WINDOW}({call})")
    };
    Ok(format!(
        "SELECT *, {column} AS {WINDOW} FROM {relation} WHERE {ts} IS NOT NULL"
    ))
}

/// The relation with a `session_window` column per the other `GROUP BY`
/// expressions `keys` (gaps-and-islands over the rows ordered by time).
fn sessions(args: &[String], keys: &[String], relation: &str, alias: &Ident) -> Result<String> {
    let [ts, gap] = args else {
        return plan_err!("{SESSION_WINDOW}: expected (timestamp, '5 minutes')");
    };
    let gap = duration_literal(Some(gap), SESSION_WINDOW, "gapDuration")?;
    let millis = parse_duration(&gap).map_or(0, |d| d.as_millis());
    let gap = format!("INTERVAL '{millis} milliseconds'");
    let partition = if keys.is_empty() {
        String::new()
    } else {
        format!("PARTITION BY {}", keys.join(", "))
    };
    let session_keys = keys
        .iter()
        .map(String::as_str)
        .chain(["__session"])
        .collect::<Vec<_>>()
        .join(", ");
    let previous = format!(
        "SELECT *, lag({ts}) OVER ({partition} ORDER BY {ts}) AS __previous \
         FROM {relation} WHERE {ts} IS NOT NULL"
    );
    let numbered = format!(
        "SELECT *, sum(CASE WHEN __previous IS NULL OR {ts} >= __previous + {gap} THEN 1 ELSE 0 END) \
         OVER ({partition} ORDER BY {ts} ROWS UNBOUNDED PRECEDING) AS __session FROM ({previous}) AS {alias}"
    );
    Ok(format!(
        "SELECT *, named_struct('start', min({ts}) OVER (PARTITION BY {session_keys}), \
         'end', max({ts}) OVER (PARTITION BY {session_keys}) + {gap}) AS {SESSION_WINDOW} \
         FROM ({numbered}) AS {alias}"
    ))
}

/// `(query) AS alias` as a table factor.
fn derived_table(query: &str, alias: &Ident) -> Result<TableFactor> {
    let sql = format!("SELECT * FROM ({query}) AS {alias}");
    let parsed = Parser::new(&GenericDialect {})
        .try_with_sql(&sql)
        .and_then(|mut p| p.parse_query())
        .map_err(|e| DataFusionError::Plan(format!("window rewrite: {e}")))?;
    match *parsed.body {
        SetExpr::Select(mut select) if select.from.len() == 1 => Ok(select.from.remove(0).relation),
        _ => plan_err!("window rewrite: unexpected query shape"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rewritten(sql: &str) -> String {
        let mut statement = Parser::new(&GenericDialect {})
            .try_with_sql(sql)
            .unwrap()
            .parse_statement()
            .unwrap();
        rewrite_windows(&mut statement).unwrap();
        statement.to_string()
    }

    #[test]
    fn tumbling_window_becomes_a_column_of_the_relation() {
        let sql = rewritten(
            "SELECT window.start, count(*) FROM bids GROUP BY window(ts, '10 seconds'), auction",
        );
        assert_eq!(
            sql,
            "SELECT window.start, count(*) FROM (SELECT *, window(ts, '10 seconds') AS window FROM bids WHERE ts IS NOT NULL) AS bids GROUP BY window, auction"
        );
    }

    #[test]
    fn sliding_window_unnests_every_window() {
        let sql = rewritten(
            "SELECT count(*) FROM bids b GROUP BY window(b.ts, '10 seconds', '2 seconds')",
        );
        assert!(
            sql.contains(
                "unnest(__sliding_windows(b.ts, '10 seconds', '2 seconds')) AS window FROM bids b"
            ),
            "{sql}"
        );
        assert!(sql.ends_with(") AS b GROUP BY window"), "{sql}");
    }

    #[test]
    fn bad_window_arguments_are_plan_errors() {
        let mut statement = Parser::new(&GenericDialect {})
            .try_with_sql("SELECT 1 FROM t GROUP BY window(ts, 'soon')")
            .unwrap()
            .parse_statement()
            .unwrap();
        let error = rewrite_windows(&mut statement).unwrap_err().to_string();
        assert!(error.contains("windowDuration"), "{error}");
    }
}
