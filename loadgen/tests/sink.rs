//! loadgen against Postfix's smtp-sink: closed and open loop, connection
//! churn, warm-up, and the output files (`--json`, `--hist-out`) feeding
//! `loadgen compare`. Skipped, with a message, where smtp-sink is missing.

mod common;

use std::time::Duration;

use common::{count, run_loadgen, summary, SmtpSink, TempDir};
use loadgen::hlog::read_hlog;

const LIMIT: Duration = Duration::from_secs(60);

#[test]
fn closed_loop_pipelined() {
    let Some(sink) = SmtpSink::start() else {
        return;
    };
    let dir = TempDir::new("closed");
    let json = dir.path("run.json");
    let out = run_loadgen(
        &[
            "run",
            "--target",
            &sink.target(),
            "-c",
            "8",
            "--duration",
            "2s",
            "--json",
            json.to_str().unwrap(),
        ],
        LIMIT,
    );
    out.assert_ok();
    let s = summary(&json);
    let ok = count(&s, &["messages", "ok"]);
    assert!(ok > 100, "only {ok} messages in 2 s:\n{}", out.stdout);
    assert_eq!(s["errors"], serde_json::json!({}), "{}", out.stdout);
    assert_eq!(count(&s, &["connections", "opened"]), 8);
    assert_eq!(
        count(&s, &["connections", "chunking"]),
        0,
        "smtp-sink has no BDAT"
    );
    assert_eq!(
        count(&s, &["connections", "pipelined"]),
        8,
        "smtp-sink advertises PIPELINING"
    );
    // Every accepted message had one MAIL, RCPT, DATA (354) and final 250.
    assert_eq!(count(&s, &["replies", "mail", "2xx"]), ok);
    assert_eq!(count(&s, &["replies", "data", "3xx"]), ok);
    assert_eq!(count(&s, &["replies", "data-end", "2xx"]), ok);
    assert_eq!(count(&s, &["replies", "quit", "2xx"]), 8);
    assert!(s["msgs_per_s"].as_f64().unwrap() > 50.0);
    assert!((s["measured_s"].as_f64().unwrap() - 2.0).abs() < 0.05);
    assert_eq!(count(&s, &["latency_ms", "e2e", "count"]), ok);
    // Live lines and the text summary.
    assert!(
        out.stderr.lines().filter(|l| l.starts_with('[')).count() >= 2,
        "{}",
        out.stderr
    );
    assert!(out.stdout.contains("throughput"));
    assert!(out.stdout.contains("end-of-data -> reply"));
}

#[test]
fn new_connection_per_message_without_pipelining() {
    let Some(sink) = SmtpSink::start() else {
        return;
    };
    let dir = TempDir::new("churn");
    let json = dir.path("run.json");
    let out = run_loadgen(
        &[
            "run",
            "--target",
            &sink.target(),
            "-c",
            "4",
            "--messages",
            "200",
            "--msgs-per-conn",
            "1",
            "--pipelining",
            "off",
            "--rcpts",
            "3",
            "-q",
            "--json",
            json.to_str().unwrap(),
        ],
        LIMIT,
    );
    out.assert_ok();
    let s = summary(&json);
    assert_eq!(count(&s, &["messages", "ok"]), 200, "{}", out.stdout);
    assert_eq!(count(&s, &["connections", "opened"]), 200);
    assert_eq!(count(&s, &["connections", "pipelined"]), 0);
    assert_eq!(count(&s, &["replies", "rcpt", "2xx"]), 600);
    assert_eq!(count(&s, &["replies", "quit", "2xx"]), 200);
    assert_eq!(count(&s, &["latency_ms", "connect", "count"]), 200);
    assert_eq!(count(&s, &["latency_ms", "greeting", "count"]), 200);
    assert!(
        out.stderr.is_empty(),
        "-q prints no live lines: {}",
        out.stderr
    );
}

#[test]
fn open_loop_holds_the_rate() {
    let Some(sink) = SmtpSink::start() else {
        return;
    };
    let dir = TempDir::new("open");
    for arrivals in ["constant", "poisson"] {
        let json = dir.path(&format!("{arrivals}.json"));
        let out = run_loadgen(
            &[
                "run",
                "--target",
                &sink.target(),
                "-c",
                "4",
                "--rate",
                "300",
                "--arrivals",
                arrivals,
                "--duration",
                "2s",
                "--size",
                "1k:80,16k:20",
                "-q",
                "--json",
                json.to_str().unwrap(),
            ],
            LIMIT,
        );
        out.assert_ok();
        let s = summary(&json);
        let ok = count(&s, &["messages", "ok"]) as f64;
        // 600 due in 2 s; Poisson counts vary by about sqrt(600).
        let slack = if arrivals == "poisson" { 100.0 } else { 10.0 };
        assert!(
            (ok - 600.0).abs() <= slack,
            "{arrivals}: {ok} messages\n{}",
            out.stdout
        );
        assert_eq!(count(&s, &["messages", "backlog"]), 0);
        let measured = s["measured_s"].as_f64().unwrap();
        assert!(
            (measured - 2.0).abs() < 0.02,
            "the window is --duration long: {measured}"
        );
        assert_eq!(s["config"]["load"]["kind"], "open");
        assert!(out.stdout.contains("intended start"), "{}", out.stdout);
    }
}

#[test]
fn warmup_is_shown_but_not_counted() {
    let Some(sink) = SmtpSink::start() else {
        return;
    };
    let dir = TempDir::new("warmup");
    let json = dir.path("run.json");
    let prefix = dir.path("h");
    let out = run_loadgen(
        &[
            "run",
            "--target",
            &sink.target(),
            "-c",
            "2",
            "--rate",
            "200",
            "--warmup",
            "1s",
            "--duration",
            "1s",
            "--json",
            json.to_str().unwrap(),
            "--hist-out",
            prefix.to_str().unwrap(),
        ],
        LIMIT,
    );
    out.assert_ok();
    let s = summary(&json);
    let warm = count(&s, &["messages", "warmup_ok"]);
    let ok = count(&s, &["messages", "ok"]);
    assert!((180..=220).contains(&warm), "warm-up messages {warm}");
    assert!((180..=220).contains(&ok), "measured messages {ok}");
    assert!(out.stderr.contains(" warmup]"), "{}", out.stderr);
    // The interval log holds the measured second only.
    let hlog = std::fs::read(dir.path("h.e2e.hlog")).unwrap();
    let (h, logged) = read_hlog(&hlog).unwrap();
    assert_eq!(h.len(), ok);
    assert!(logged >= Duration::from_millis(990) && logged < Duration::from_millis(1500));
}

#[test]
fn hist_out_json_and_compare() {
    let Some(sink) = SmtpSink::start() else {
        return;
    };
    let dir = TempDir::new("compare");
    let mut jsons = Vec::new();
    for (name, pipelining) in [("base", "off"), ("pipe", "on")] {
        let json = dir.path(&format!("{name}.json"));
        let prefix = dir.path(name);
        run_loadgen(
            &[
                "run",
                "--target",
                &sink.target(),
                "-c",
                "4",
                "--messages",
                "2000",
                "--pipelining",
                pipelining,
                "-q",
                "--json",
                json.to_str().unwrap(),
                "--hist-out",
                prefix.to_str().unwrap(),
            ],
            LIMIT,
        )
        .assert_ok();
        let s = summary(&json);
        assert_eq!(count(&s, &["messages", "ok"]), 2000);
        assert_eq!(
            s["label"], name,
            "the label defaults to the --json file's name"
        );
        for phase in ["e2e", "transaction", "eod", "connect", "greeting"] {
            for ext in ["hlog", "hgrm"] {
                let f = dir.path(&format!("{name}.{phase}.{ext}"));
                assert!(f.exists(), "{} missing", f.display());
            }
        }
        let hgrm = std::fs::read_to_string(dir.path(&format!("{name}.e2e.hgrm"))).unwrap();
        assert!(hgrm.starts_with("       Value     Percentile TotalCount 1/(1-Percentile)"));
        assert!(hgrm.contains("Total count    =         2000]"), "{hgrm}");
        let (h, _) =
            read_hlog(&std::fs::read(dir.path(&format!("{name}.e2e.hlog"))).unwrap()).unwrap();
        assert_eq!(h.len(), 2000);
        jsons.push(json);
    }

    let svg = dir.path("cmp.svg");
    let out = run_loadgen(
        &[
            "compare",
            jsons[0].to_str().unwrap(),
            jsons[1].to_str().unwrap(),
            "--plot",
            svg.to_str().unwrap(),
        ],
        LIMIT,
    );
    out.assert_ok();
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert!(
        lines[0].starts_with("e2e (ms)") && lines[0].contains("pipe/base"),
        "{}",
        out.stdout
    );
    for row in ["p50", "p99", "p99.9", "max", "count", "msgs/s"] {
        let line = lines.iter().find(|l| l.starts_with(row)).unwrap();
        assert!(line.trim_end().ends_with('x'), "ratio missing: {line}");
    }
    let doc = std::fs::read_to_string(&svg).unwrap();
    assert_eq!(doc.matches("<path ").count(), 2);

    // .hlog inputs with explicit labels, another phase.
    let hlog = |n: &str| {
        dir.path(&format!("{n}.eod.hlog"))
            .to_str()
            .unwrap()
            .to_string()
    };
    let out = run_loadgen(
        &[
            "compare",
            "--phase",
            "eod",
            &format!("A={}", hlog("base")),
            &format!("B={}", hlog("pipe")),
        ],
        LIMIT,
    );
    out.assert_ok();
    assert!(out.stdout.starts_with("eod (ms)"), "{}", out.stdout);
    assert!(out.stdout.contains("B/A"), "{}", out.stdout);

    if which("rsvg-convert") {
        let png = dir.path("cmp.png");
        run_loadgen(
            &[
                "compare",
                jsons[0].to_str().unwrap(),
                jsons[1].to_str().unwrap(),
                "--plot",
                png.to_str().unwrap(),
            ],
            LIMIT,
        )
        .assert_ok();
        let bytes = std::fs::read(&png).unwrap();
        assert!(bytes.starts_with(b"\x89PNG\r\n\x1a\n"));
    } else {
        eprintln!("PNG part skipped: rsvg-convert missing (Debian package librsvg2-bin)");
    }
}

fn which(tool: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
}
