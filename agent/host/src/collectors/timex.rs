//! `timex`: the kernel clock discipline state from `adjtimex(2)` (read-only query), as
//! node_exporter 1.5's timex collector exports it. The syscall answers for the whole
//! host (the clock is not namespaced), so no host-root path is involved.

use nodescope_model::{CollectError, Collector, MetricFamily, MetricType};

const TIME_ERROR: i32 = 5; // TIME_ERROR / TIME_BAD
const STA_NANO: i32 = 0x2000;
const PPM16FRAC: f64 = 1_000_000.0 * 65536.0;

/// The fields of `struct timex` node_exporter reads, and adjtimex's return value.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Timex {
    pub state: i32,
    pub offset: i64,
    pub freq: i64,
    pub maxerror: i64,
    pub esterror: i64,
    pub status: i32,
    pub constant: i64,
    pub tick: i64,
    pub ppsfreq: i64,
    pub jitter: i64,
    pub shift: i32,
    pub stabil: i64,
    pub jitcnt: i64,
    pub calcnt: i64,
    pub errcnt: i64,
    pub stbcnt: i64,
    pub tai: i32,
}

fn adjtimex() -> std::io::Result<Timex> {
    // SAFETY: `modes = 0` makes adjtimex a pure query; the kernel fills the zeroed struct
    // we own and reads nothing else from it.
    let mut t: libc::timex = unsafe { std::mem::zeroed() };
    let state = unsafe { libc::adjtimex(&mut t) };
    if state < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(Timex {
        state,
        offset: t.offset,
        freq: t.freq,
        maxerror: t.maxerror,
        esterror: t.esterror,
        status: t.status,
        constant: t.constant,
        tick: t.tick,
        ppsfreq: t.ppsfreq,
        jitter: t.jitter,
        shift: t.shift,
        stabil: t.stabil,
        jitcnt: t.jitcnt,
        calcnt: t.calcnt,
        errcnt: t.errcnt,
        stbcnt: t.stbcnt,
        tai: t.tai,
    })
}

/// node_exporter's families for one `adjtimex` answer.
pub fn timex_families(t: &Timex) -> Vec<MetricFamily> {
    let divisor = if t.status & STA_NANO != 0 { 1e9 } else { 1e6 };
    let g = MetricType::Gauge;
    let c = MetricType::Counter;
    let f = |name: &'static str, help: &'static str, kind, v: f64| {
        MetricFamily::single(name, help, kind, v)
    };
    vec![
        f(
            "node_timex_sync_status",
            "Is clock synchronized to a reliable server (1 = yes, 0 = no).",
            g,
            if t.state == TIME_ERROR { 0.0 } else { 1.0 },
        ),
        f(
            "node_timex_offset_seconds",
            "Time offset in between local system and reference clock.",
            g,
            t.offset as f64 / divisor,
        ),
        f(
            "node_timex_frequency_adjustment_ratio",
            "Local clock frequency adjustment.",
            g,
            1.0 + t.freq as f64 / PPM16FRAC,
        ),
        f(
            "node_timex_maxerror_seconds",
            "Maximum error in seconds.",
            g,
            t.maxerror as f64 / 1e6,
        ),
        f(
            "node_timex_estimated_error_seconds",
            "Estimated error in seconds.",
            g,
            t.esterror as f64 / 1e6,
        ),
        f(
            "node_timex_status",
            "Value of the status array bits.",
            g,
            f64::from(t.status),
        ),
        f(
            "node_timex_loop_time_constant",
            "Phase-locked loop time constant.",
            g,
            t.constant as f64,
        ),
        f(
            "node_timex_tick_seconds",
            "Seconds between clock ticks.",
            g,
            t.tick as f64 / 1e6,
        ),
        f(
            "node_timex_pps_frequency_hertz",
            "Pulse per second frequency.",
            g,
            t.ppsfreq as f64 / PPM16FRAC,
        ),
        f(
            "node_timex_pps_jitter_seconds",
            "Pulse per second jitter.",
            g,
            t.jitter as f64 / divisor,
        ),
        f(
            "node_timex_pps_shift_seconds",
            "Pulse per second interval duration.",
            g,
            f64::from(t.shift),
        ),
        f(
            "node_timex_pps_stability_hertz",
            "Pulse per second stability, average of recent frequency changes.",
            g,
            t.stabil as f64 / PPM16FRAC,
        ),
        f(
            "node_timex_pps_jitter_total",
            "Pulse per second count of jitter limit exceeded events.",
            c,
            t.jitcnt as f64,
        ),
        f(
            "node_timex_pps_calibration_total",
            "Pulse per second count of calibration intervals.",
            c,
            t.calcnt as f64,
        ),
        f(
            "node_timex_pps_error_total",
            "Pulse per second count of calibration errors.",
            c,
            t.errcnt as f64,
        ),
        f(
            "node_timex_pps_stability_exceeded_total",
            "Pulse per second count of stability limit exceeded events.",
            c,
            t.stbcnt as f64,
        ),
        f(
            "node_timex_tai_offset_seconds",
            "International Atomic Time (TAI) offset.",
            g,
            f64::from(t.tai),
        ),
    ]
}

pub(crate) struct TimexCollector;

impl Collector for TimexCollector {
    fn name(&self) -> &'static str {
        "timex"
    }

    fn collect(&self) -> Result<Vec<MetricFamily>, CollectError> {
        match adjtimex() {
            Ok(t) => Ok(timex_families(&t)),
            Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
                Err(CollectError::Unavailable {
                    what: "adjtimex(2)".into(),
                    reason: e.to_string(),
                })
            }
            Err(e) => Err(CollectError::Other(format!("adjtimex(2): {e}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collectors::testutil::value;

    #[test]
    fn units_follow_sta_nano() {
        let t = Timex {
            offset: 1500,
            status: STA_NANO,
            freq: 65536,
            tick: 10000,
            ..Default::default()
        };
        let f = timex_families(&t);
        assert_eq!(value(&f, "node_timex_offset_seconds", &[]), 1.5e-6);
        assert_eq!(value(&f, "node_timex_tick_seconds", &[]), 0.01);
        assert_eq!(
            value(&f, "node_timex_frequency_adjustment_ratio", &[]),
            1.000001
        );
        let t = Timex {
            state: TIME_ERROR,
            offset: 1500,
            ..Default::default()
        };
        let f = timex_families(&t);
        assert_eq!(value(&f, "node_timex_offset_seconds", &[]), 0.0015);
        assert_eq!(value(&f, "node_timex_sync_status", &[]), 0.0);
    }

    #[test]
    fn live_query_works() {
        let fams = TimexCollector.collect().unwrap();
        assert_eq!(fams.len(), 17);
    }
}
