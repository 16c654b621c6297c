//! `datasets describe`: sizes, spans, counts and basic statistics, as text for people.

use crate::catalog::{Data, Entry};
use crate::gen::{ClientSet, Iat, SERVEGEN_WINDOW_S};
use crate::series::{Series, Stats};
use crate::trace::{Status, Trace};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

pub fn time(ms: i64, absolute: bool) -> String {
    if !absolute {
        return format!("+{}", duration(ms));
    }
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|d| d.format("%Y-%m-%d %H:%M:%S UTC").to_string())
        .unwrap_or_else(|| ms.to_string())
}

/// A span for people: the two largest non-zero units ("5 min", "1 h 30 min", "27 d 13 h").
pub fn duration(ms: i64) -> String {
    if ms < 1000 {
        return format!("{ms} ms");
    }
    let s = ms / 1000;
    let parts = [
        (s / 86_400, "d"),
        (s / 3600 % 24, "h"),
        (s / 60 % 60, "min"),
        (s % 60, "s"),
    ];
    let first = parts.iter().position(|(v, _)| *v > 0).unwrap_or(3);
    let mut out: Vec<String> = parts[first..(first + 2).min(4)]
        .iter()
        .filter(|(v, _)| *v > 0)
        .map(|(v, u)| format!("{v} {u}"))
        .collect();
    if first == 3 && ms % 1000 != 0 {
        out = vec![format!("{}.{:03} s", s, ms % 1000)];
    }
    out.join(" ")
}

fn stats_line(s: &Stats) -> String {
    format!(
        "mean {:.4}  std {:.4}  min {:.4}  p50 {:.4}  p99 {:.4}  max {:.4}  zeros {:.1} %",
        s.mean,
        s.std,
        s.min,
        s.p50,
        s.p99,
        s.max,
        s.zeros * 100.0
    )
}

pub fn describe(entry: &Entry, root: &Path, data: &Data) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "{}: {}", entry.name, entry.about);
    for f in entry.files {
        let size = crate::catalog::size(&root.join(f));
        let _ = writeln!(o, "  file    {f} ({:.1} KiB)", size as f64 / 1024.0);
    }
    match data {
        Data::Trace(t) => trace(&mut o, t),
        Data::Clients(c) => clients(&mut o, c),
        Data::Series(ss) if ss.len() == 1 => series(&mut o, &ss[0], ""),
        Data::Series(ss) => {
            let points: usize = ss.iter().map(Series::len).sum();
            let windows: usize = ss.iter().map(|s| s.windows.len()).sum();
            let _ = writeln!(
                o,
                "  series  {}  points {points}  label windows {windows}",
                ss.len()
            );
            for s in ss {
                let _ = writeln!(o, "  - {}", s.name);
                series(&mut o, s, "    ");
            }
        }
    }
    o
}

fn series(o: &mut String, s: &Series, ind: &str) {
    let Some((a, b)) = s.span() else {
        let _ = writeln!(o, "{ind}  empty");
        return;
    };
    let step = s.step_ms().unwrap_or(0);
    let _ = writeln!(
        o,
        "{ind}  span    {} .. {} ({})",
        time(a, s.absolute),
        time(b, s.absolute),
        duration(b - a + step)
    );
    let gaps = s.ts_ms.windows(2).filter(|w| w[1] - w[0] != step).count();
    let _ = writeln!(
        o,
        "{ind}  points  {}  step {}  irregular gaps {gaps}  ({:?})",
        s.len(),
        duration(step),
        s.measure
    );
    let _ = writeln!(o, "{ind}  values  {}", stats_line(&s.stats()));
    if !s.windows.is_empty() {
        let labelled = s
            .labels
            .as_ref()
            .map_or(0, |l| l.iter().filter(|x| **x).count());
        let _ = writeln!(
            o,
            "{ind}  labels  {} windows covering {labelled} points",
            s.windows.len()
        );
    }
}

fn clients(o: &mut String, c: &ClientSet) {
    let Some((a, b)) = c.span_s() else {
        let _ = writeln!(o, "  no windows");
        return;
    };
    let _ = writeln!(
        o,
        "  span    {} .. {} ({}), windows of {} s",
        time(a * 1000, false),
        time(b * 1000, false),
        duration((b - a) * 1000),
        SERVEGEN_WINDOW_S
    );
    let mut fits: BTreeMap<&str, usize> = BTreeMap::new();
    for w in &c.windows {
        *fits
            .entry(match w.iat {
                Iat::Gamma { .. } => "gamma",
                Iat::Weibull { .. } => "weibull",
                Iat::Exponential => "none (Poisson)",
            })
            .or_default() += 1;
    }
    let fits: Vec<String> = fits.iter().map(|(k, v)| format!("{k} {v}")).collect();
    let _ = writeln!(
        o,
        "  rows    {} client windows  clients {}  fits: {}",
        c.windows.len(),
        c.clients(),
        fits.join("  ")
    );
    let _ = writeln!(
        o,
        "  arrivals {:.0} expected (generated a span at a time: export --resample, or the simulator)",
        c.expected_total()
    );
    let _ = writeln!(o, "  rate/s  {}", stats_line(&c.rate_series().stats()));
}

fn trace(o: &mut String, t: &Trace) {
    let (Some(first), Some(last)) = (t.arrivals.first(), t.arrivals.last()) else {
        let _ = writeln!(o, "  empty trace");
        return;
    };
    let base = t.start_unix_ms.unwrap_or(0);
    let abs = t.start_unix_ms.is_some();
    let dur_ms = (last.t_us - first.t_us) / 1000;
    let _ = writeln!(
        o,
        "  span    {} .. {} ({})",
        time(base + first.t_us / 1000, abs),
        time(base + last.t_us / 1000, abs),
        duration(dur_ms)
    );
    let per_s = t.counts(1000).map(|c| c.stats()).unwrap_or_default();
    let _ = writeln!(
        o,
        "  arrivals {}  mean {:.3}/s  peak second {}/s  empty seconds {:.1} %",
        t.len(),
        t.len() as f64 / (dur_ms.max(1) as f64 / 1000.0),
        per_s.max,
        per_s.zeros * 100.0
    );
    let gaps: Vec<f64> = t
        .arrivals
        .windows(2)
        .map(|w| (w[1].t_us - w[0].t_us) as f64 / 1000.0)
        .collect();
    let g = Stats::of(&gaps);
    let _ = writeln!(
        o,
        "  gaps ms mean {:.3}  p50 {:.3}  p99 {:.3}  max {:.3}  cv {:.2}",
        g.mean,
        g.p50,
        g.p99,
        g.max,
        if g.mean > 0.0 { g.std / g.mean } else { 0.0 }
    );
    let field = |name: &str, v: Vec<f64>, o: &mut String| {
        if !v.is_empty() {
            let _ = writeln!(
                o,
                "  {name:<8}{} known: {}",
                v.len(),
                stats_line(&Stats::of(&v))
            );
        }
    };
    field(
        "tok in",
        t.arrivals
            .iter()
            .filter_map(|a| a.tokens_in)
            .map(f64::from)
            .collect(),
        o,
    );
    field(
        "tok out",
        t.arrivals
            .iter()
            .filter_map(|a| a.tokens_out)
            .map(f64::from)
            .collect(),
        o,
    );
    field(
        "svc s",
        t.arrivals
            .iter()
            .filter_map(|a| a.service_us)
            .map(|u| u as f64 / 1e6)
            .collect(),
        o,
    );
    let clients: std::collections::BTreeSet<u32> =
        t.arrivals.iter().filter_map(|a| a.client).collect();
    if !clients.is_empty() {
        let _ = writeln!(o, "  clients {}", clients.len());
    }
    let prefixes: std::collections::BTreeSet<u64> =
        t.arrivals.iter().filter_map(|a| a.prefix_hash).collect();
    if !prefixes.is_empty() {
        let _ = writeln!(
            o,
            "  prefixes {} distinct (first {} blocks of 512 tokens)",
            prefixes.len(),
            crate::sources::PREFIX_BLOCKS
        );
    }
    let mut st: BTreeMap<Status, usize> = BTreeMap::new();
    for s in t.arrivals.iter().filter_map(|a| a.status) {
        *st.entry(s).or_default() += 1;
    }
    if !st.is_empty() {
        let parts: Vec<String> = st
            .iter()
            .map(|(k, v)| format!("{} {v}", k.as_str()))
            .collect();
        let _ = writeln!(o, "  status  {}", parts.join("  "));
    }
}

#[cfg(test)]
mod tests {
    use super::duration;

    #[test]
    fn durations_read_like_people_say_them() {
        assert_eq!(duration(300_000), "5 min");
        assert_eq!(duration(3_600_000), "1 h");
        assert_eq!(duration(5_400_000), "1 h 30 min");
        assert_eq!(duration(2_381_544_000), "27 d 13 h");
        assert_eq!(duration(1_500), "1.500 s");
        assert_eq!(duration(250), "250 ms");
    }
}
