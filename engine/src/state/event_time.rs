//! Event time in a stream: the watermark (the greatest event time seen,
//! less the allowed delay) and the filters that set rows behind it apart.
//!
//! A micro-batch is planned with the watermark its predecessors reached.
//! [`on_time`] passes the rows at or after it and records the greatest
//! event time among them; [`late`] passes the others. Both pass everything
//! through (no row is late) until a stateful operator downstream activates
//! the [`Tracker`]: as in Spark, a watermark only drops rows for state.

use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;

use datafusion::arrow::array::{Array, BooleanArray, Int64Array};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, TimeUnit};
use datafusion::common::{exec_err, Result};
use datafusion::logical_expr::{
    ColumnarValue, Expr, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};

/// One micro-batch's view of the watermark.
#[derive(Debug)]
pub struct Tracker {
    /// Set by a stateful operator reading the rows: only then are rows late.
    active: AtomicBool,
    /// The watermark the batch was planned with (µs since the epoch).
    watermark: Option<i64>,
    /// The greatest on-time event time seen (µs), `i64::MIN` before any.
    max_seen: AtomicI64,
    /// Rows behind the watermark seen by [`on_time`].
    late: AtomicU64,
}

impl Tracker {
    /// A tracker for a batch planned with `watermark` (µs).
    pub fn new(watermark: Option<i64>) -> Arc<Tracker> {
        Arc::new(Tracker {
            active: AtomicBool::new(false),
            watermark,
            max_seen: AtomicI64::new(i64::MIN),
            late: AtomicU64::new(0),
        })
    }

    /// Rows behind the watermark are late from now on.
    pub fn activate(&self) {
        self.active.store(true, Ordering::SeqCst);
    }

    /// Whether a stateful operator activated the tracker.
    pub fn is_active(&self) -> bool {
        self.active.load(Ordering::SeqCst)
    }

    /// The watermark the batch was planned with.
    pub fn watermark(&self) -> Option<i64> {
        self.watermark
    }

    /// The greatest on-time event time seen, if any row was seen.
    pub fn max_seen(&self) -> Option<i64> {
        Some(self.max_seen.load(Ordering::SeqCst)).filter(|m| *m != i64::MIN)
    }

    /// Late rows seen so far.
    pub fn late_rows(&self) -> u64 {
        self.late.load(Ordering::SeqCst)
    }

    /// Whether a row at `micros` is behind the watermark.
    fn is_late(&self, micros: i64) -> bool {
        self.is_active() && self.watermark.is_some_and(|w| micros < w)
    }
}

/// `ts` (any timestamp unit) as µs since the epoch.
pub fn to_micros(array: &dyn Array) -> Result<Int64Array> {
    let DataType::Timestamp(_, _) = array.data_type() else {
        return exec_err!("event time must be a timestamp, not {}", array.data_type());
    };
    let micros = cast(array, &DataType::Timestamp(TimeUnit::Microsecond, None))?;
    let raw = cast(&micros, &DataType::Int64)?;
    Ok(raw
        .as_any()
        .downcast_ref::<Int64Array>()
        .expect("cast to Int64")
        .clone())
}

/// Which side of the watermark a filter keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Side {
    OnTime,
    Late,
}

/// The filter function of one side, bound to one batch's tracker.
#[derive(Debug)]
struct WatermarkFilter {
    side: Side,
    tracker: Arc<Tracker>,
    signature: Signature,
}

impl PartialEq for WatermarkFilter {
    fn eq(&self, other: &Self) -> bool {
        self.side == other.side && Arc::ptr_eq(&self.tracker, &other.tracker)
    }
}

impl Eq for WatermarkFilter {}

impl Hash for WatermarkFilter {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.side.hash(state);
        Arc::as_ptr(&self.tracker).hash(state);
    }
}

impl ScalarUDFImpl for WatermarkFilter {
    fn name(&self) -> &str {
        match self.side {
            Side::OnTime => "on_time",
            Side::Late => "behind_watermark",
        }
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _: &[DataType]) -> Result<DataType> {
        Ok(DataType::Boolean)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let array = args.args[0].to_array(args.number_rows)?;
        let micros = to_micros(&array)?;
        let tracker = &self.tracker;
        let mut late = 0;
        let mut max = i64::MIN;
        let keep: BooleanArray = micros
            .iter()
            .map(|ts| {
                let is_late = ts.is_some_and(|ts| tracker.is_late(ts));
                late += u64::from(is_late);
                if let (Some(ts), false) = (ts, is_late) {
                    max = max.max(ts);
                }
                Some(match self.side {
                    Side::OnTime => !is_late,
                    Side::Late => is_late,
                })
            })
            .collect();
        if self.side == Side::OnTime {
            tracker.late.fetch_add(late, Ordering::SeqCst);
            tracker.max_seen.fetch_max(max, Ordering::SeqCst);
        }
        Ok(ColumnarValue::Array(Arc::new(keep)))
    }
}

fn filter(side: Side, tracker: &Arc<Tracker>, ts: Expr) -> Expr {
    let udf = ScalarUDF::new_from_impl(WatermarkFilter {
        side,
        tracker: tracker.clone(),
        // Volatile: never folded, never pushed into a scan.
        signature: Signature::any(1, Volatility::Volatile),
    });
    udf.call(vec![ts])
}

/// A predicate keeping the rows of `ts` at or after the watermark.
pub fn on_time(tracker: &Arc<Tracker>, ts: Expr) -> Expr {
    filter(Side::OnTime, tracker, ts)
}

/// A predicate keeping the rows of `ts` behind the watermark.
pub fn late(tracker: &Arc<Tracker>, ts: Expr) -> Expr {
    filter(Side::Late, tracker, ts)
}
