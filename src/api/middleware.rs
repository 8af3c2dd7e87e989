//! Around every request: a request id, admission control, RED metrics by
//! route template, and one structured access-log line naming the unit the
//! call went to.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::middleware::Next;
use actix_web::{Error, ResponseError, web};
use metrics::{Counter, Gauge, Histogram, counter, gauge, histogram};
use tracing::Instrument;

use super::error::{ApiError, ErrorCode, UnitTag};
use crate::domain::OrderId;
use crate::metrics as m;

pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Admission control: requests over `max_in_flight` are shed with `429` before
/// they reach a unit, so overload queues in the caller, not in the databases.
/// Build it after the metrics recorder is installed: it keeps the handles
/// of the request metrics (see [`RequestMetrics`]).
pub struct Admission {
    in_flight: AtomicUsize,
    max_in_flight: usize,
    in_flight_gauge: Gauge,
    metrics: RequestMetrics,
}

impl Admission {
    pub fn new(max_in_flight: usize) -> Arc<Self> {
        Arc::new(Self {
            in_flight: AtomicUsize::new(0),
            max_in_flight,
            in_flight_gauge: gauge!(m::REQUESTS_IN_FLIGHT),
            metrics: RequestMetrics::new(),
        })
    }
}

struct InFlight<'a>(&'a Admission);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        let now = self.0.in_flight.fetch_sub(1, Ordering::AcqRel) - 1;
        self.0.in_flight_gauge.set(now as f64);
    }
}

/// The handles of the RED metrics' series, by `op` and `outcome` (all
/// registered at start-up). `counter!` and `histogram!` look their series up
/// in the registry on every call: with the in-flight gauge, ~1,800
/// instructions per request.
struct RequestMetrics {
    series: [[(Counter, Histogram); m::OUTCOMES.len()]; m::OPS.len()],
}

impl RequestMetrics {
    fn new() -> Self {
        Self {
            series: std::array::from_fn(|i| {
                std::array::from_fn(|j| Self::register(m::OPS[i], m::OUTCOMES[j]))
            }),
        }
    }

    fn register(op: &'static str, outcome: &'static str) -> (Counter, Histogram) {
        (
            counter!(m::REQUESTS, "op" => op, "outcome" => outcome),
            histogram!(m::REQUEST_DURATION, "op" => op, "outcome" => outcome),
        )
    }

    fn record(&self, op: &'static str, outcome: &'static str, elapsed: Duration) {
        let i = m::OPS.iter().position(|o| *o == op);
        let j = m::OUTCOMES.iter().position(|o| *o == outcome);
        match (i, j) {
            (Some(i), Some(j)) => {
                let (requests, duration) = &self.series[i][j];
                requests.increment(1);
                duration.record(elapsed.as_secs_f64());
            }
            // A label not listed in `OPS`/`OUTCOMES`: still counted.
            _ => Self::record_uncached(op, outcome, elapsed),
        }
    }

    fn record_uncached(op: &'static str, outcome: &'static str, elapsed: Duration) {
        let (requests, duration) = Self::register(op, outcome);
        requests.increment(1);
        duration.record(elapsed.as_secs_f64());
    }
}

fn request_id(req: &ServiceRequest) -> String {
    let given = req
        .headers()
        .get(&REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| {
            (1..=64).contains(&v.len())
                && v.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
        });
    match given {
        Some(id) => id.to_string(),
        None => hex_id(rand::random()),
    }
}

/// `n` as 16 lower-case hex digits (what `format!("{n:016x}")` writes, for
/// a fifth of the instructions: most requests come without an id).
fn hex_id(n: u64) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    (0..16)
        .rev()
        .map(|i| char::from(HEX[(n >> (4 * i)) as usize & 0xf]))
        .collect()
}

pub async fn observe(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<EitherBody<impl MessageBody + 'static>>, Error> {
    let started = Instant::now();
    let id = request_id(&req);
    let admission = req.app_data::<web::Data<Arc<Admission>>>().cloned();
    let _in_flight = match &admission {
        Some(a) => {
            let now = a.in_flight.fetch_add(1, Ordering::AcqRel) + 1;
            let guard = InFlight(a);
            if now > a.max_in_flight {
                counter!(m::SHED, "reason" => "in_flight").increment(1);
                let err = ApiError::new(
                    ErrorCode::Overloaded,
                    "too many requests in flight; retry later",
                );
                let mut res = req.into_response(err.error_response());
                res.headers_mut().insert(
                    REQUEST_ID,
                    HeaderValue::from_str(&id).expect("checked characters"),
                );
                return Ok(res.map_into_right_body());
            }
            a.in_flight_gauge.set(now as f64);
            Some(guard)
        }
        None => None,
    };
    let span = tracing::info_span!("request", request_id = %id);
    let mut res = next.call(req).instrument(span).await?;

    let status = res.status().as_u16();
    let method = res.request().method().as_str().to_owned();
    let pattern = res.request().match_pattern();
    // The unit a handler or error named, else the one in the order id.
    let unit = res
        .response()
        .extensions()
        .get::<UnitTag>()
        .map(|t| t.0)
        .or_else(|| {
            let id = res.request().match_info().get("order_id")?;
            OrderId::parse(id).ok().map(|o| o.unit())
        });
    let elapsed = started.elapsed();
    if let Some(op) = pattern.as_deref().and_then(|p| m::op_of(&method, p)) {
        let outcome = m::outcome_of(status);
        match &admission {
            Some(a) => a.metrics.record(op, outcome, elapsed),
            None => RequestMetrics::record_uncached(op, outcome, elapsed),
        }
        tracing::info!(
            target: "order_engine::access",
            request_id = %id,
            op,
            status,
            unit = unit.map(i64::from).unwrap_or(-1),
            latency_ms = elapsed.as_secs_f64() * 1000.0,
            "request"
        );
    }
    res.headers_mut().insert(
        REQUEST_ID,
        HeaderValue::from_str(&id).expect("checked characters"),
    );
    Ok(res.map_into_left_body())
}

#[cfg(test)]
mod tests {
    use super::hex_id;

    #[test]
    fn request_ids_are_sixteen_hex_digits() {
        for n in [0, 1, 0xdead_beef, u64::MAX, 0x0123_4567_89ab_cdef] {
            assert_eq!(hex_id(n), format!("{n:016x}"));
        }
    }
}
