//! The shipped Grafana dashboard (contrib/grafana/turnd.json) is valid JSON and every metric
//! its queries use is a family the real server's /metrics exposes (from a parsed scrape).

use crate::admin_http;

use std::collections::HashSet;

use admin_http::{TOKEN, http, start_with_admin};

/// Every string anywhere in the JSON.
fn strings<'a>(v: &'a serde_json::Value, out: &mut Vec<&'a str>) {
    match v {
        serde_json::Value::String(s) => out.push(s),
        serde_json::Value::Array(a) => a.iter().for_each(|x| strings(x, out)),
        serde_json::Value::Object(o) => o.values().for_each(|x| strings(x, out)),
        _ => {}
    }
}

#[test]
fn dashboard_uses_only_exported_metrics() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/contrib/grafana/turnd.json");
    let dash: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).expect("valid JSON");
    assert!(!dash["panels"].as_array().unwrap().is_empty());
    let mut all = Vec::new();
    strings(&dash, &mut all);
    let used: HashSet<&str> = all
        .iter()
        .flat_map(|s| s.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')))
        .filter(|w| w.starts_with("turn_") || w.starts_with("turnd_") || w.starts_with("stun_"))
        .collect();
    assert!(used.len() >= 10, "{used:?}");

    let (_server, admin) = start_with_admin(&[]);
    let (status, body) = http(admin, "GET", "/metrics", Some(TOKEN));
    assert_eq!(status, 200);
    let scrape = prometheus_parse::Scrape::parse(body.lines().map(|l| Ok(l.to_string()))).unwrap();
    // Families by their HELP line: a labelled family may have no sample yet (error
    // responses are listed once one was sent).
    let exported: HashSet<&str> = scrape.docs.keys().map(String::as_str).collect();
    // A histogram's series are its family's name plus _bucket, _sum or _count.
    let family = |m: &str| -> String {
        ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| m.strip_suffix(s).filter(|f| exported.contains(f)))
            .unwrap_or(m)
            .to_string()
    };
    let missing: Vec<_> = used
        .iter()
        .filter(|m| !exported.contains(family(m).as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "dashboard metrics not exported: {missing:?}"
    );
}
