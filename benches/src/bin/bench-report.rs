//! Print benchmark ratios against the baseline measured in the same run.
//!
//! Reads criterion's `target/criterion/<group>/<id>/new/estimates.json`.
//! Usage: `cargo run -p phigate-benches --bin bench-report [CRITERION_DIR]`.
#![allow(clippy::unwrap_used)] // test/bench code: a panic is the failure report
#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};

fn mean_ns(dir: &Path) -> Option<f64> {
    // BenchmarkId("routes", 10) is stored as routes/10; a function named
    // "ES256/cached" as ES256_cached.
    let flat = dir
        .to_string_lossy()
        .rsplit_once('/')
        .map(|(a, b)| format!("{a}_{b}"));
    let text = match std::fs::read_to_string(dir.join("new/estimates.json")) {
        Ok(t) => t,
        Err(_) => std::fs::read_to_string(Path::new(&flat?).join("new/estimates.json")).ok()?,
    };
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    v["mean"]["point_estimate"].as_f64()
}

fn main() {
    let root = std::env::args()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("target/criterion"));
    // (group, baseline id, [ids compared with it])
    let comparisons: &[(&str, &str, &[&str])] = &[
        ("decide", "routes/10", &["routes/1000", "routes/10000"]),
        (
            "decide",
            "fhir_patient_search/10",
            &["fhir_patient_search/1000", "fhir_patient_search/10000"],
        ),
        (
            "validate",
            "ES256/uncached",
            &[
                "RS256/uncached",
                "PS256/uncached",
                "EdDSA/uncached",
                "ES256/cached",
                "RS256/cached",
                "PS256/cached",
                "EdDSA/cached",
            ],
        ),
        // Audit spool: ns per committed record with 64 concurrent committers
        // (records/s = 1e9 / ns); the ratio is the cost of fsync.
        (
            "audit",
            "commit/none",
            &["commit/interval_10ms", "commit/per_request"],
        ),
    ];
    let mut missing = false;
    for (group, base, others) in comparisons {
        let Some(b) = mean_ns(&root.join(group).join(base)) else {
            eprintln!(
                "{group}/{base}: no results under {} (run `cargo bench -p phigate-benches` first)",
                root.display()
            );
            missing = true;
            continue;
        };
        println!("{group}/{base}: {b:.1} ns (baseline)");
        for o in *others {
            match mean_ns(&root.join(group).join(o)) {
                Some(v) if v < b => {
                    println!(
                        "{group}/{o}: {v:.1} ns  = {:.3}x baseline ({:.1}x faster)",
                        v / b,
                        b / v
                    )
                }
                Some(v) if v < b => {
                    println!(
                        "{group}/{o}: {v:.1} ns  = {:.3}x baseline ({:.1}x faster)",
                        v / b,
                        b / v
                    )
                }
                Some(v) => println!("{group}/{o}: {v:.1} ns  = {:.2}x baseline", v / b),
                None => {
                    eprintln!("{group}/{o}: no results");
                    missing = true;
                }
            }
        }
    }
    if missing {
        std::process::exit(1);
    }
}
