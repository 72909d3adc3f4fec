//! Issue 11: the secrets `scripts/server` makes for a local stack
//! (scripts/lib/dev-secrets.sh), run for real by bash in a scratch directory.
//! Every secret a route needs must exist, or webhooks and metrics answer 503
//! on a fresh checkout, and the files holding them must be private.

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::helpers::repo_root;

const SECRETS: [&str; 4] = [
    "ADMIN_API_KEY",
    "CRON_SECRET",
    "ENCRYPTION_KEY",
    "METRICS_TOKEN",
];

struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Self {
        let dir = std::env::temp_dir().join(format!("keel-dev-secrets-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    fn file(&self, name: &str) -> PathBuf {
        self.0.join(".keel").join(format!(
            "dev-{}",
            name.to_ascii_lowercase().replace('_', "-")
        ))
    }

    /// Runs what `scripts/server` runs, with a typical umask of 022, and
    /// returns the secrets it exported.
    fn run(&self) -> HashMap<String, String> {
        let script = repo_root().join("scripts/lib/dev-secrets.sh");
        let output = Command::new("bash")
            .arg("-c")
            .arg(
                r#"set -euo pipefail; umask 022; source "$1"; load_dotenv; dev_secrets
                for name in ADMIN_API_KEY CRON_SECRET ENCRYPTION_KEY METRICS_TOKEN; do
                  printf '%s=%s\n' "$name" "${!name:-}"
                done"#,
            )
            .arg("dev-secrets")
            .arg(&script)
            .current_dir(&self.0)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap())
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout)
            .unwrap()
            .lines()
            .filter_map(|line| line.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

#[test]
fn scripts_server_uses_the_dev_secrets_library() {
    let server = std::fs::read_to_string(repo_root().join("scripts/server")).unwrap();
    assert!(server.contains("source scripts/lib/dev-secrets.sh"));
    assert!(server.contains("\nload_dotenv\n"));
    assert!(server.contains("\ndev_secrets\n"));
}

#[test]
fn a_fresh_local_stack_gets_every_secret_in_private_files() {
    let scratch = Scratch::new();

    let first = scratch.run();

    for name in SECRETS {
        let value = &first[name];
        assert!(value.len() >= 32, "{name} is {value:?}");
        let file = scratch.file(name);
        assert_eq!(&std::fs::read_to_string(&file).unwrap(), value);
        assert_eq!(
            mode(&file),
            0o600,
            "{} is readable by others",
            file.display()
        );
    }
    let key = &first["ENCRYPTION_KEY"];
    assert!(
        key.len() == 64 && key.bytes().all(|b| b.is_ascii_hexdigit()),
        "ENCRYPTION_KEY must be 64 hex characters: {key:?}"
    );
    assert_eq!(scratch.run(), first, "a second run keeps the secrets");
}

#[test]
fn secret_files_left_world_readable_by_an_older_checkout_are_made_private() {
    let scratch = Scratch::new();
    let file = scratch.file("ADMIN_API_KEY");
    std::fs::create_dir_all(file.parent().unwrap()).unwrap();
    std::fs::write(&file, "an-admin-key-from-an-older-scripts-server").unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();

    let secrets = scratch.run();

    assert_eq!(
        secrets["ADMIN_API_KEY"],
        "an-admin-key-from-an-older-scripts-server"
    );
    assert_eq!(mode(&file), 0o600);
}

#[test]
fn secrets_in_dot_env_win_over_generated_ones() {
    let scratch = Scratch::new();
    // Webhook secrets stored under this key must stay readable: a generated
    // key exported over it would win over .env in Keel's own configuration.
    let key = "ab".repeat(32);
    std::fs::write(
        scratch.0.join(".env"),
        format!("ENCRYPTION_KEY={key}\nMETRICS_TOKEN=\"metrics-token-from-dot-env\"\n"),
    )
    .unwrap();

    let secrets = scratch.run();

    assert_eq!(secrets["ENCRYPTION_KEY"], key);
    assert_eq!(secrets["METRICS_TOKEN"], "metrics-token-from-dot-env");
    assert!(!scratch.file("ENCRYPTION_KEY").exists());
    assert!(!scratch.file("METRICS_TOKEN").exists());
}
