//! Records the commit the binary was built from, so `/api/health` can report
//! it even where the platform does not (Lambda, local). Vercel's build-time
//! `VERCEL_GIT_COMMIT_SHA` and CI's `GITHUB_SHA` win over asking git.
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=VERCEL_GIT_COMMIT_SHA");
    println!("cargo:rerun-if-env-changed=GITHUB_SHA");
    println!("cargo:rerun-if-changed=../../.git/HEAD");
    println!("cargo:rerun-if-changed=../../.git/refs/heads");
    let commit = std::env::var("VERCEL_GIT_COMMIT_SHA")
        .or_else(|_| std::env::var("GITHUB_SHA"))
        .ok()
        .filter(|sha| !sha.is_empty())
        .or_else(|| {
            Command::new("git")
                .args(["rev-parse", "HEAD"])
                .output()
                .ok()
                .filter(|out| out.status.success())
                .and_then(|out| String::from_utf8(out.stdout).ok())
                .map(|sha| sha.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown".to_owned());
    println!("cargo:rustc-env=KEEL_BUILD_COMMIT={commit}");
}
