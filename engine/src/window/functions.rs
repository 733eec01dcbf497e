//! The SQL functions `window(ts, size[, slide[, startTime]])` and the
//! internal `__sliding_windows`, with Spark's results: a window is a struct
//! `{start, end}` of timestamps of `ts`'s type, windows are aligned on the
//! epoch (plus `startTime`), a row belongs to the windows with
//! `start <= ts < end`, and a null `ts` belongs to none.

use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, Int64Array, ListArray, StructArray};
use datafusion::arrow::buffer::{NullBuffer, OffsetBuffer};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Field, Fields, TimeUnit};
use datafusion::common::{exec_err, plan_err, Result, ScalarValue};
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};

use crate::spec::parse_duration;

/// Name of the tumbling (or sliding, in `GROUP BY`) window function.
pub const WINDOW: &str = "window";
/// Name of the function listing every sliding window of a row.
pub(crate) const SLIDING_WINDOWS: &str = "__sliding_windows";

/// The window struct's fields for timestamps of type `ts`.
pub fn window_fields(ts: &DataType) -> Fields {
    Fields::from(vec![
        Field::new("start", ts.clone(), true),
        Field::new("end", ts.clone(), true),
    ])
}

/// Which windows a row belongs to, in `ts`'s unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Windows {
    size: i64,
    slide: i64,
    offset: i64,
}

impl Windows {
    /// From the literal arguments after `ts`, in units of `unit`.
    fn from_args(args: &[ColumnarValue], unit: TimeUnit, name: &str) -> Result<Windows> {
        let size = duration_arg(args.get(1), unit, name, "windowDuration")?;
        let slide = match args.get(2) {
            Some(arg) => duration_arg(Some(arg), unit, name, "slideDuration")?,
            None => size,
        };
        let offset = match args.get(3) {
            Some(arg) => duration_arg(Some(arg), unit, name, "startTime")?,
            None => 0,
        };
        if slide > size {
            return plan_err!("{name}: the slide must not be longer than the window");
        }
        Ok(Windows {
            size,
            slide,
            offset: offset.rem_euclid(slide),
        })
    }

    /// The start of the latest window holding `ts`.
    fn last_start(&self, ts: i64) -> i64 {
        self.offset + (ts - self.offset).div_euclid(self.slide) * self.slide
    }

    /// How many windows hold each row.
    fn per_row(&self) -> i64 {
        (self.size + self.slide - 1) / self.slide
    }
}

/// A duration argument (`'10 minutes'`) in units of `unit`.
fn duration_arg(
    arg: Option<&ColumnarValue>,
    unit: TimeUnit,
    name: &str,
    what: &str,
) -> Result<i64> {
    let text = match arg {
        Some(ColumnarValue::Scalar(
            ScalarValue::Utf8(Some(text))
            | ScalarValue::LargeUtf8(Some(text))
            | ScalarValue::Utf8View(Some(text)),
        )) => text,
        _ => return plan_err!("{name}: {what} must be a string literal such as '10 minutes'"),
    };
    let duration = parse_duration(text).filter(|d| !d.is_zero());
    let Some(duration) = duration else {
        return plan_err!(
            "{name}: {what} '{text}' is not a positive duration such as '10 minutes'"
        );
    };
    let nanos = i64::try_from(duration.as_nanos()).unwrap_or(i64::MAX);
    let per_unit = match unit {
        TimeUnit::Second => 1_000_000_000,
        TimeUnit::Millisecond => 1_000_000,
        TimeUnit::Microsecond => 1_000,
        TimeUnit::Nanosecond => 1,
    };
    if nanos % per_unit != 0 {
        return plan_err!("{name}: {what} '{text}' is finer than the timestamps' unit");
    }
    Ok(nanos / per_unit)
}

/// The timestamp type of the first argument, or a planning error.
fn timestamp_arg(name: &str, arg_types: &[DataType]) -> Result<DataType> {
    match arg_types.first() {
        Some(ts @ DataType::Timestamp(_, _)) => Ok(ts.clone()),
        Some(other) => plan_err!(
            "{name}: the first argument must be a timestamp, not {other}; Help: CAST it AS TIMESTAMP"
        ),
        None => plan_err!("{name}: expected (timestamp, '10 minutes' [, slide [, startTime]])"),
    }
}

/// The first argument's raw values and unit.
fn timestamps(args: &ScalarFunctionArgs) -> Result<(Int64Array, TimeUnit, usize)> {
    let rows = args.number_rows;
    let array = args.args[0].to_array(rows)?;
    let DataType::Timestamp(unit, _) = array.data_type() else {
        return exec_err!("window: not a timestamp: {}", array.data_type());
    };
    let unit = *unit;
    let raw = cast(&array, &DataType::Int64)?;
    let raw = raw
        .as_any()
        .downcast_ref::<Int64Array>()
        .expect("cast to Int64")
        .clone();
    Ok((raw, unit, rows))
}

/// Window structs from raw starts, with `ts`'s type.
fn window_structs(
    starts: Vec<i64>,
    size: i64,
    ts: &DataType,
    nulls: Option<NullBuffer>,
) -> Result<StructArray> {
    let ends: Int64Array = starts.iter().map(|s| Some(s + size)).collect();
    let starts = Int64Array::from(starts);
    let columns: Vec<ArrayRef> = vec![cast(&starts, ts)?, cast(&ends, ts)?];
    Ok(StructArray::try_new(window_fields(ts), columns, nulls)?)
}

/// `window(ts, size[, slide[, startTime]])`: the tumbling window of each
/// row. A sliding window (slide shorter than the size) puts a row in
/// several windows: that is only possible in `GROUP BY`, which the SQL
/// rewrite turns into [`SLIDING_WINDOWS`].
#[derive(Debug, PartialEq, Eq, Hash)]
struct WindowFunction {
    signature: Signature,
}

impl ScalarUDFImpl for WindowFunction {
    fn name(&self) -> &str {
        WINDOW
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        Ok(DataType::Struct(window_fields(&timestamp_arg(
            WINDOW, arg_types,
        )?)))
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let (raw, unit, _) = timestamps(&args)?;
        let windows = Windows::from_args(&args.args, unit, WINDOW)?;
        if windows.slide != windows.size {
            return plan_err!(
                "window: a sliding window puts a row in several windows, which only GROUP BY window(...) can do"
            );
        }
        let starts = raw
            .iter()
            .map(|t| t.map_or(0, |t| windows.last_start(t)))
            .collect();
        let ts = args.arg_fields[0].data_type();
        let structs = window_structs(starts, windows.size, ts, raw.nulls().cloned())?;
        Ok(ColumnarValue::Array(Arc::new(structs)))
    }
}

/// `__sliding_windows(ts, size, slide[, startTime])`: every window of each
/// row, oldest first, as a list (empty for a null `ts`).
#[derive(Debug, PartialEq, Eq, Hash)]
struct SlidingWindows {
    signature: Signature,
}

impl ScalarUDFImpl for SlidingWindows {
    fn name(&self) -> &str {
        SLIDING_WINDOWS
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        let ts = timestamp_arg(WINDOW, arg_types)?;
        let item = Field::new_list_field(DataType::Struct(window_fields(&ts)), true);
        Ok(DataType::List(Arc::new(item)))
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let (raw, unit, _) = timestamps(&args)?;
        let windows = Windows::from_args(&args.args, unit, WINDOW)?;
        let mut starts = Vec::with_capacity(raw.len() * windows.per_row() as usize);
        let mut lengths = Vec::with_capacity(raw.len());
        for ts in raw.iter() {
            let before = starts.len();
            if let Some(ts) = ts {
                let mut start = windows.last_start(ts);
                let mut found = Vec::new();
                while start > ts - windows.size {
                    found.push(start);
                    start -= windows.slide;
                }
                starts.extend(found.into_iter().rev());
            }
            lengths.push(starts.len() - before);
        }
        let ts = args.arg_fields[0].data_type();
        let values = window_structs(starts, windows.size, ts, None)?;
        let item = Field::new_list_field(values.data_type().clone(), true);
        let list = ListArray::try_new(
            Arc::new(item),
            OffsetBuffer::from_lengths(lengths),
            Arc::new(values),
            None,
        )?;
        Ok(ColumnarValue::Array(Arc::new(list)))
    }
}

/// The window functions, to register in a session.
pub fn window_functions() -> Vec<ScalarUDF> {
    let signature = || Signature::variadic_any(Volatility::Immutable);
    vec![
        ScalarUDF::new_from_impl(WindowFunction {
            signature: signature(),
        }),
        ScalarUDF::new_from_impl(SlidingWindows {
            signature: signature(),
        }),
    ]
}
