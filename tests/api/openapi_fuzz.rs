//! The OpenAPI documents are exact: schemathesis fuzzes the public and the
//! admin document against a running engine on MariaDB units
//! (`tests/openapi/fuzz.sh`, settings and hooks beside it) and fails on any
//! server error, schema-valid request rejected, schema-invalid request
//! accepted, undocumented status or header, response that does not match its
//! schema, or undeclared method not answered `405` with `Allow`.
//!
//! `FUZZ_SEED=<seed>` replays a run (the seed is printed); `FUZZ_MAX_EXAMPLES`
//! (default 100 here) sets how hard it tries.

use std::path::PathBuf;
use std::process::Command;

use crate::helpers::{ADMIN_TOKEN, Backend, spawn_app};

/// The schemathesis that `scripts/test.sh` installs, or `$SCHEMATHESIS`.
fn schemathesis() -> PathBuf {
    let path = std::env::var_os("SCHEMATHESIS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/openapi-venv/bin/schemathesis")
        });
    assert!(
        path.is_file(),
        "schemathesis not found at {}: run the tests with `bash scripts/test.sh` (it installs \
         it), or `python3 -m venv target/openapi-venv && target/openapi-venv/bin/pip install \
         -r tests/openapi/requirements.txt`",
        path.display()
    );
    path
}

#[actix_web::test]
async fn the_openapi_documents_are_exact() {
    let schemathesis = schemathesis();
    let app = spawn_app(Backend::MariaDb, 4).await;
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/openapi/fuzz.sh");
    let max_examples = std::env::var("FUZZ_MAX_EXAMPLES").unwrap_or_else(|_| "100".into());
    let (public, admin) = (app.base.clone(), app.admin.clone());
    let run = tokio::task::spawn_blocking(move || {
        Command::new("bash")
            .arg(script)
            .args([&public, &admin, ADMIN_TOKEN])
            .env("SCHEMATHESIS", schemathesis)
            .env("FUZZ_MAX_EXAMPLES", max_examples)
            .output()
            .expect("bash runs")
    })
    .await
    .unwrap();
    let out = String::from_utf8_lossy(&run.stdout);
    let err = String::from_utf8_lossy(&run.stderr);
    let seed = out
        .lines()
        .find(|l| l.starts_with("openapi fuzz: seed"))
        .unwrap_or("no seed printed");
    assert!(
        run.status.success(),
        "the fuzzer found the OpenAPI documents inexact ({seed}):\n{out}\n{err}"
    );
    // It tested: both documents loaded and their operations ran.
    assert!(
        out.contains("public: exit 0") && out.contains("admin: exit 0"),
        "{out}"
    );
    app.shutdown().await;
}
