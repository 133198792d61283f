//! tuning/grafana-dashboard.json is checked against what a running server
//! really exports: every metric its queries name has a `# TYPE` line in
//! `/metrics` (histogram series through their family), with the labels the
//! queries group by; the JSON has what Grafana needs to import it.
#![allow(clippy::disallowed_methods, clippy::unwrap_used)] // reason: the harness waits on real time and processes; tests fail loudly

mod common;

use std::collections::{BTreeMap, BTreeSet};

use common::Server;
use serde_json::Value;

#[test]
fn the_dashboard_queries_only_what_ringpost_exports() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tuning/grafana-dashboard.json");
    let dash: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    assert!(dash["title"].is_string() && dash["uid"].is_string() && dash["schemaVersion"].is_number());
    let panels = dash["panels"].as_array().unwrap();
    let mut ids = BTreeSet::new();
    let mut exprs = Vec::new();
    for p in panels {
        assert!(ids.insert(p["id"].as_u64().unwrap()), "panel ids are unique");
        assert!(p["title"].is_string() && p["gridPos"]["w"].is_number());
        if p["type"] == "row" {
            continue;
        }
        let targets = p["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "{}", p["title"]);
        exprs.extend(targets.iter().map(|t| t["expr"].as_str().unwrap().to_owned()));
    }

    // What the server exports: families and the labels their series carry.
    let srv = Server::start("");
    let text = srv.http("GET", "/metrics").1;
    let families: BTreeSet<&str> =
        text.lines().filter_map(|l| l.strip_prefix("# TYPE ")).filter_map(|l| l.split(' ').next()).collect();
    let mut labels: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        if let Some((name, rest)) = line.split_once('{') {
            let set = labels.entry(name).or_default();
            for kv in rest.split('}').next().unwrap().split(',') {
                set.insert(kv.split('=').next().unwrap());
            }
        }
    }
    // Families whose series appear only once something happened (a source,
    // a suspension, a webhook): their labels, as the code writes them.
    let later: BTreeMap<&str, &[&str]> = BTreeMap::from([
        ("ringpost_egress_recipients_total", &["source", "destination", "outcome"][..]),
        ("ringpost_egress_suspended", &["source", "destination"][..]),
        ("ringpost_tenant_suspended", &["tenant"][..]),
        ("ringpost_source_messages_today", &["source"][..]),
        ("ringpost_webhook_backlog_bytes", &["url"][..]),
        ("ringpost_webhook_failures_total", &["url"][..]),
    ]);

    let mut missing = Vec::new();
    for expr in &exprs {
        let mut rest = expr.as_str();
        while let Some(i) = rest.find("ringpost_") {
            let name: String =
                rest[i..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
            rest = &rest[i + name.len()..];
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s).filter(|f| families.contains(f)))
                .unwrap_or(&name);
            if !families.contains(family) {
                missing.push(format!("{name} (in {expr})"));
                continue;
            }
            // The labels it is grouped by.
            if let Some(by) = expr.split("by (").nth(1).and_then(|b| b.split(')').next()) {
                for l in by.split(',').map(str::trim).filter(|l| *l != "le") {
                    let known = labels.get(name.as_str()).is_some_and(|s| s.contains(l))
                        || later.get(name.as_str()).is_some_and(|s| s.contains(&l));
                    if !known {
                        missing.push(format!("label {l} of {name} (in {expr})"));
                    }
                }
            }
        }
    }
    assert!(missing.is_empty(), "the dashboard names what /metrics does not have:\n{}", missing.join("\n"));
    assert!(exprs.len() >= 20, "{} queries", exprs.len());
}
