//! Open-loop latency against references nobody here wrote: the same
//! fixed-rate load, through loadgen, through `oha --latency-correction -q`
//! (crates.io; `cargo install oha`) and through `h2load --rps` (Debian's
//! nghttp2-client, per-request times from its `--log-file`), to the same
//! plain nginx (`return 202`), client on CPU 0 and nginx on CPU 1. Prints
//! them side by side with loadgen's own send lag, and whether loadgen agrees
//! with oha within 20 % or 50 µs, whichever is larger. A measurement, not a
//! test: `benches/openloop.sh` runs it.
//!
//! What each measures: loadgen from each request's intended send time (so
//! its own lateness counts, and it reports that lag); oha from the moment its
//! pacer woke (a tokio sleep, so sends are held to the 1 ms timer wheel and
//! leave in bunches above 1,000 req/s); h2load from its actual send, but its
//! `--rps` releases requests in bursts (the gaps between its sends are
//! printed), so its figures are close to back-to-back service times, not to
//! an evenly paced load. oha is the reference the verdicts use, twice:
//! against loadgen as it runs (evenly paced), and against loadgen with
//! `--quantum 1ms`, which releases requests on 1 ms ticks as oha's timer
//! does. The second is the like-for-like check of the measurement itself;
//! the first shows what the pacing changes.

mod harness;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use harness::{arg_value, bins, has_flag, machine, Proc};

/// (req/s in all, connections): the rows of the fixed-rate table in
/// docs/performance-history.md
/// and the examples.
const RUNS: [(u64, u64); 4] = [(200, 4), (1000, 16), (5000, 16), (20000, 64)];

fn nginx_bin() -> PathBuf {
    for p in ["/usr/sbin/nginx", "/usr/bin/nginx"] {
        if Path::new(p).exists() {
            return PathBuf::from(p);
        }
    }
    panic!("nginx not installed: `apt-get install nginx-light` (benches/openloop.sh does)");
}

fn start_nginx(dir: &Path, port: u16) -> Proc {
    let conf = dir.join("nginx.conf");
    std::fs::write(
        &conf,
        format!(
            "worker_processes 1;\ndaemon off;\npid {d}/nginx.pid;\nerror_log {d}/error.log warn;\n\
             events {{ worker_connections 4096; }}\n\
             http {{\n  access_log off;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n\
               fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n\
               server {{\n    listen 127.0.0.1:{port};\n    keepalive_requests 10000000;\n\
                 location / {{ return 202 \"{{}}\"; }}\n  }}\n}}\n",
            d = dir.display()
        ),
    )
    .unwrap();
    let child = Command::new("/usr/bin/taskset")
        .args(["-c", "1"])
        .arg(nginx_bin())
        .arg("-c")
        .arg(&conf)
        .arg("-p")
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn nginx");
    let mut proc = Proc { child, name: "nginx".into() };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(std::time::Instant::now() < deadline, "nginx did not listen on {port}");
        if let Some(s) = proc.child.try_wait().unwrap() {
            panic!("nginx exited: {s}; see {}/error.log", dir.display());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    proc
}

/// p50, p99 in µs, and the count.
struct Figures {
    p50: f64,
    p99: f64,
    lag_p99: Option<f64>,
    /// h2load: median gap between two sends, µs.
    gap_p50: Option<f64>,
    n: usize,
}

fn oha_bin() -> Option<PathBuf> {
    let home = std::env::var("HOME").unwrap_or_default();
    [format!("{home}/.cargo/bin/oha"), "/usr/local/bin/oha".into(), "/usr/bin/oha".into()]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
}

fn body_file(dir: &Path) -> PathBuf {
    let body = dir.join("body1k");
    std::fs::write(&body, (0..1024u32).map(|i| (i * 131 % 251) as u8).collect::<Vec<u8>>()).unwrap();
    body
}

fn run_oha(oha: &Path, dir: &Path, port: u16, rate: u64, conns: u64, secs: u64) -> Figures {
    let body = body_file(dir);
    let out = Command::new("/usr/bin/taskset")
        .args(["-c", "0"])
        .arg(oha)
        .args(["-z", &format!("{secs}s"), "-q", &rate.to_string(), "--latency-correction", "-c", &conns.to_string()])
        .args(["-m", "POST", "-D"])
        .arg(&body)
        .args(["--no-tui", "--output-format", "json"])
        .arg(format!("http://127.0.0.1:{port}/api/v2/series"))
        .stderr(Stdio::null())
        .output()
        .expect("run oha");
    assert!(out.status.success(), "oha failed: {}", out.status);
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).expect("oha --output-format json");
    let us = |k: &str| r["latencyPercentiles"][k].as_f64().unwrap_or(0.0) * 1e6;
    Figures {
        p50: us("p50"),
        p99: us("p99"),
        lag_p99: None,
        gap_p50: None,
        n: r["statusCodeDistribution"].as_object().map_or(0, |m| m.values().filter_map(|v| v.as_u64()).sum::<u64>())
            as usize,
    }
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() as f64 * q) as usize).min(sorted.len() - 1)]
}

fn run_loadgen(loadgen: &Path, dir: &Path, port: u16, rate: u64, conns: u64, secs: u64, quantum: &str) -> Figures {
    let json = dir.join("loadgen.json");
    let status = Command::new("/usr/bin/taskset")
        .args(["-c", "0"])
        .arg(loadgen)
        .args(["--quantum", quantum])
        .arg("--target")
        .arg(format!("http://127.0.0.1:{port}/api/v2/series"))
        .args(["--rate", &rate.to_string(), "-c", &conns.to_string(), "--payload", "raw", "--body-size", "1k"])
        .args(["--warmup", "1s", "--duration", &format!("{secs}s"), "-q", "--json"])
        .arg(&json)
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success(), "loadgen failed: {status}");
    let r: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    Figures {
        p50: r["latency_us"]["p50"].as_f64().unwrap_or(0.0),
        p99: r["latency_us"]["p99"].as_f64().unwrap_or(0.0),
        lag_p99: r["send_lag_us"]["p99"].as_f64(),
        gap_p50: None,
        n: r["latency_us"]["count"].as_u64().unwrap_or(0) as usize,
    }
}

fn run_h2load(dir: &Path, port: u16, rate: u64, conns: u64, secs: u64) -> Figures {
    let log = dir.join("h2load.log");
    let _ = std::fs::remove_file(&log);
    let body = body_file(dir);
    // --rps is per client; -D the measured time after --warm-up-time.
    let per_client = rate as f64 / conns as f64;
    let status = Command::new("/usr/bin/taskset")
        .args(["-c", "0", "h2load", "--h1", "-c", &conns.to_string(), "--rps", &format!("{per_client}")])
        .args(["--warm-up-time", "1", "-D", &secs.to_string(), "-d"])
        .arg(&body)
        .arg("--log-file")
        .arg(&log)
        .arg(format!("http://127.0.0.1:{port}/api/v2/series"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("h2load not installed: `apt-get install nghttp2-client` (benches/openloop.sh does)");
    assert!(status.success(), "h2load failed: {status}");
    // Columns: start time (µs since the epoch), status, µs to the end of the answer.
    let text = std::fs::read_to_string(&log).unwrap();
    let col = |i: usize| -> Vec<f64> {
        let mut v: Vec<f64> = text.lines().filter_map(|l| l.split('\t').nth(i)?.trim().parse().ok()).collect();
        v.sort_by(|a, b| a.partial_cmp(b).unwrap());
        v
    };
    let us = col(2);
    let starts = col(0);
    let mut gaps: Vec<f64> = starts.windows(2).map(|w| w[1] - w[0]).collect();
    gaps.sort_by(|a, b| a.partial_cmp(b).unwrap());
    Figures {
        p50: percentile(&us, 0.5),
        p99: percentile(&us, 0.99),
        lag_p99: None,
        gap_p50: Some(percentile(&gaps, 0.5)),
        n: us.len(),
    }
}

fn agree(a: f64, b: f64) -> bool {
    (a - b).abs() <= (0.2 * b).max(50.0)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn main() {
    let secs: u64 = arg_value("--secs").and_then(|s| s.parse().ok()).unwrap_or(5);
    let reps: usize = arg_value("--reps").and_then(|s| s.parse().ok()).unwrap_or(3);
    let quick = has_flag("--quick");
    let bins = bins();
    let dir = std::env::temp_dir().join(format!("fipsrelay-openloop-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let _nginx = start_nginx(&dir, port);
    let oha = oha_bin();
    println!(
        "# open loop: loadgen vs oha --latency-correction -q and h2load --rps, all to nginx `return 202` on 127.0.0.1"
    );
    println!(
        "# nginx on CPU 1, client on CPU 0; {}; {secs} s runs, {reps} repetitions interleaved, medians",
        machine()
    );
    if oha.is_none() {
        println!("# oha not found (cargo install oha): the verdict compares with h2load instead");
    }
    println!(
        "{:<16} {:>7} {:>7} {:>7} {:>7} {:>7} {:>7} {:>7} {:>7} {:>8} {:>7} {:>7} {:>7}",
        "rate, conns",
        "lg p50",
        "lgq p50",
        "oha p50",
        "h2l p50",
        "lg p99",
        "lgq p99",
        "oha p99",
        "h2l p99",
        "lag p99",
        "h2l gap",
        "lg~oha",
        "lgq~oha"
    );
    let runs: &[(u64, u64)] = if quick { &RUNS[..2] } else { &RUNS };
    for &(rate, conns) in runs {
        let (mut lg, mut lq, mut oh, mut h2) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for _ in 0..reps {
            lg.push(run_loadgen(&bins.loadgen, &dir, port, rate, conns, secs, "0"));
            lq.push(run_loadgen(&bins.loadgen, &dir, port, rate, conns, secs, "1ms"));
            if let Some(oha) = &oha {
                oh.push(run_oha(oha, &dir, port, rate, conns, secs));
            }
            h2.push(run_h2load(&dir, port, rate, conns, secs));
        }
        let m = |v: &[Figures], f: fn(&Figures) -> f64| {
            if v.is_empty() {
                f64::NAN
            } else {
                median(v.iter().map(f).collect())
            }
        };
        let (lp50, lp99) = (m(&lg, |f| f.p50), m(&lg, |f| f.p99));
        let (qp50, qp99) = (m(&lq, |f| f.p50), m(&lq, |f| f.p99));
        let (op50, op99) = (m(&oh, |f| f.p50), m(&oh, |f| f.p99));
        let (hp50, hp99) = (m(&h2, |f| f.p50), m(&h2, |f| f.p99));
        let lag = m(&lg, |f| f.lag_p99.unwrap_or(f64::NAN));
        let gap = m(&h2, |f| f.gap_p50.unwrap_or(f64::NAN));
        let (rp50, rp99) = if oh.is_empty() { (hp50, hp99) } else { (op50, op99) };
        let verdict = |a50: f64, a99: f64| if agree(a50, rp50) && agree(a99, rp99) { "yes" } else { "NO" };
        println!(
            "{:<16} {:>7.0} {:>7.0} {:>7.0} {:>7.0} {:>7.0} {:>7.0} {:>7.0} {:>7.0} {:>8.1} {:>7.0} {:>7} {:>7}",
            format!("{rate}/s, {conns}"),
            lp50,
            qp50,
            op50,
            hp50,
            lp99,
            qp99,
            op99,
            hp99,
            lag,
            gap,
            verdict(lp50, lp99),
            verdict(qp50, qp99)
        );
        let n = |v: &[Figures]| v.iter().map(|f| f.n).sum::<usize>();
        println!("{:<16} samples: loadgen {}, loadgen 1ms {}, oha {}, h2load {}", "", n(&lg), n(&lq), n(&oh), n(&h2));
    }
    println!("# µs. lg = loadgen, evenly paced, from intended send times; lgq = loadgen --quantum 1ms (released on 1 ms ticks, like oha);");
    println!("# lag = loadgen's own send lag; h2l gap = h2load's median gap between sends; agree = within 20 % or 50 µs, p50 and p99");
    let _ = std::fs::remove_dir_all(&dir);
}
