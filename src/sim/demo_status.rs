//! The demo's live counters, shown from its first second (before any deadline could pass):
//! records produced, records the processor read, the ACK latency so far, read from the
//! processor's own `/metrics` like any scraper would; and the HTTP address, moved to a free
//! port when the requested one is taken (an `ackwatch run` on the same machine).

use std::io::{Read, Write};
use std::time::Duration;

/// The address the demo serves `/metrics` on: `requested`, or the same host on a port the
/// system picks when `requested` is in use, with the note to print.
pub fn free_listen(requested: &str) -> anyhow::Result<(String, Option<String>)> {
    match std::net::TcpListener::bind(requested) {
        Ok(_) => Ok((requested.to_string(), None)),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
            let host = requested.rsplit_once(':').map_or("127.0.0.1", |(h, _)| h);
            let other = std::net::TcpListener::bind((host.trim_matches(['[', ']']), 0))
                .map_err(|e| anyhow::anyhow!("--http {requested} is in use and no other port of {host} is free: {e}"))?;
            let address = other.local_addr()?.to_string();
            let note = format!("{requested} is in use (another ackwatch?): serving on {address} instead");
            Ok((address, Some(note)))
        }
        Err(e) => Err(anyhow::anyhow!("--http {requested}: cannot listen there: {e}")),
    }
}

/// What the processor's `/metrics` said, for the status line.
#[derive(Debug, Default, PartialEq)]
pub struct Scraped {
    /// `ackwatch_records_total`, every topic and outcome.
    pub records_read: u64,
    /// Upper bounds (ms) of the buckets holding the median and the 99th percentile ACK latency.
    pub latency_p50_p99_ms: Option<(f64, f64)>,
}

/// One GET of `/metrics` at `listen`; `None` while the processor does not answer yet.
pub fn scrape(listen: &str) -> Option<Scraped> {
    let address: std::net::SocketAddr = listen.parse().ok()?;
    let mut stream = std::net::TcpStream::connect_timeout(&address, Duration::from_millis(200)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(1))).ok()?;
    write!(stream, "GET /metrics HTTP/1.0\r\nHost: {listen}\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    Some(read_metrics(response.split_once("\r\n\r\n")?.1))
}

/// The counters of a `/metrics` text.
pub fn read_metrics(text: &str) -> Scraped {
    let mut scraped = Scraped::default();
    let mut buckets: Vec<(f64, u64)> = Vec::new();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else { continue };
        let Ok(value) = value.parse::<f64>() else { continue };
        if series.starts_with("ackwatch_records_total{") {
            scraped.records_read += value as u64;
        } else if series.starts_with("controlbus_apply_ack_latency_ms_bucket{") {
            let Some(le) = series.split("le=\"").nth(1).and_then(|r| r.split('"').next()) else { continue };
            let bound = if le == "+Inf" { f64::INFINITY } else { le.parse().unwrap_or(f64::NAN) };
            match buckets.iter_mut().find(|(b, _)| *b == bound) {
                Some((_, n)) => *n += value as u64,
                None => buckets.push((bound, value as u64)),
            }
        }
    }
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    let total = buckets.last().map_or(0, |b| b.1);
    let at = |q: f64| buckets.iter().find(|(_, n)| *n as f64 >= q * total as f64).map(|b| b.0);
    if total > 0 {
        scraped.latency_p50_p99_ms = at(0.5).zip(at(0.99));
    }
    scraped
}

/// The status line: `produced` records so far and what the processor's metrics said.
pub fn status_line(elapsed: Duration, produced: u64, scraped: Option<&Scraped>, findings: usize, signals: usize) -> String {
    let read = scraped.map_or("the processor is starting".to_string(), |s| format!("{} read by ackwatch", s.records_read));
    let latency = match scraped.and_then(|s| s.latency_p50_p99_ms) {
        Some((p50, p99)) => format!("ACK latency p50 ≤ {} ms, p99 ≤ {} ms", bound(p50), bound(p99)),
        None => "no ACK yet".to_string(),
    };
    format!(
        "t+{}s: {produced} records produced, {read}; {latency}; {findings} findings, {signals} signals",
        elapsed.as_secs()
    )
}

fn bound(ms: f64) -> String {
    if ms.is_finite() { format!("{ms}") } else { "∞".into() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_counters_come_from_the_metrics_text() {
        let check = |text: &str, expected: Scraped| assert_eq!(read_metrics(text), expected, "{text}");
        check("", Scraped::default());
        check(
            "# TYPE ackwatch_records_total counter\n\
             ackwatch_records_total{outcome=\"tracked\",topic=\"activation\"} 7\n\
             ackwatch_records_total{outcome=\"ack\",topic=\"control.activation.ack\"} 5\n\
             controlbus_apply_ack_latency_ms_bucket{phase=\"freeze\",le=\"10\"} 2\n\
             controlbus_apply_ack_latency_ms_bucket{phase=\"freeze\",le=\"25\"} 3\n\
             controlbus_apply_ack_latency_ms_bucket{phase=\"freeze\",le=\"+Inf\"} 3\n\
             controlbus_apply_ack_latency_ms_bucket{phase=\"unfreeze\",le=\"10\"} 0\n\
             controlbus_apply_ack_latency_ms_bucket{phase=\"unfreeze\",le=\"25\"} 1\n\
             controlbus_apply_ack_latency_ms_bucket{phase=\"unfreeze\",le=\"+Inf\"} 2\n",
            // 5 ACKs: 2 within 10 ms, 4 within 25 ms, 1 beyond.
            Scraped { records_read: 12, latency_p50_p99_ms: Some((25.0, f64::INFINITY)) },
        );
    }

    #[test]
    fn a_taken_port_moves_to_a_free_one() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let requested = taken.local_addr().unwrap().to_string();
        let (address, note) = free_listen(&requested).unwrap();
        assert_ne!(address, requested);
        assert!(address.starts_with("127.0.0.1:"), "{address}");
        assert!(note.unwrap().contains("in use"));
        drop(taken);
        let (address, note) = free_listen(&requested).unwrap();
        assert_eq!((address.as_str(), note), (requested.as_str(), None));
    }
}
