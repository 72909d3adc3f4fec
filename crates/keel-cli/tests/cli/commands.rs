//! The `keel` binary as a user meets it: its help, its version, its answer
//! to a mistyped command line, and `keel serve` handing out public/.

use std::process::{Command, Output};

use crate::support::{get, serve};

fn keel(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_keel"))
        .args(args)
        // No .env of the developer's, no database: what a fresh checkout sees.
        .current_dir(std::env::temp_dir())
        .env_remove("DATABASE_URL")
        .output()
        .expect("the keel binary runs")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn help_lists_every_command_with_what_it_does() {
    for args in [&["--help"][..], &["help"], &["-h"]] {
        let output = keel(args);
        assert!(output.status.success(), "{args:?}: {}", stderr(&output));
        let help = stdout(&output);
        assert!(help.contains("Usage: keel <COMMAND>"), "{help}");
        for (command, says) in [
            ("serve", "Serve every route and the files of public/"),
            ("migrate", "Apply the pending migrations to DATABASE_URL"),
            ("bench", "Measure Keel on this machine"),
        ] {
            assert!(
                help.contains(command) && help.contains(says),
                "{args:?} lacks {command}: {help}"
            );
        }
    }
}

#[test]
fn version_is_the_crate_version() {
    for flag in ["--version", "-V"] {
        let output = keel(&[flag]);
        assert!(output.status.success());
        assert_eq!(
            stdout(&output),
            format!("keel {}\n", env!("CARGO_PKG_VERSION"))
        );
    }
}

#[test]
fn every_subcommand_documents_its_arguments_and_options() {
    for (command, shows) in [
        (
            "serve",
            &[
                "--public <DIR>",
                "KEEL_LOCAL_MODEL_DIR",
                "[default: public]",
            ][..],
        ),
        (
            "migrate",
            &["[MIGRATIONS_DIR]", "[default: migrations]", "checksum"],
        ),
        (
            "bench",
            &[
                "keel bench <COMMAND>",
                "quality",
                "load",
                "model",
                "artifacts",
                "[DATASET_DIR]",
                "--scale <10k|100k|1m>",
                "--sweep",
            ],
        ),
        (
            "bench quality",
            &[
                "[DATASET_DIR]",
                "--documents <FILE>",
                "--query-ids <ordinal|labelled>",
                "--try <KNOB=V1,V2,...>",
                "--modes <M1,M2>",
                "keyword, vector, hybrid",
                "--tenant <PREFIX>",
            ],
        ),
        (
            "bench load",
            &[
                "[DATASET_DIR]",
                "--scale <10k|100k|1m>",
                "--tenant <PREFIX>",
            ],
        ),
        (
            "bench model",
            &[
                "[DATASET_DIR]",
                "--rust-only",
                "[default: ../shared/datasets/cranfield]",
            ],
        ),
        (
            "bench artifacts",
            &["Lambda zip sizes", "Usage: keel bench artifacts"],
        ),
    ] {
        let mut args: Vec<&str> = command.split(' ').collect();
        args.push("--help");
        let output = keel(&args);
        assert!(output.status.success(), "{command}: {}", stderr(&output));
        let help = stdout(&output);
        for text in shows {
            assert!(
                help.contains(text),
                "`keel {command} --help` lacks {text}: {help}"
            );
        }
    }
}

#[test]
fn a_wrong_command_line_says_what_is_wrong_and_exits_2() {
    for (args, says, why) in [
        (&[][..], "Usage: keel <COMMAND>", "no command"),
        (&["serv"], "unrecognized subcommand 'serv'", "a typo"),
        (
            &["serve", "--port", "1"],
            "unexpected argument '--port'",
            "an option serve lacks",
        ),
        (
            &["migrate", "a", "b"],
            "unexpected argument 'b'",
            "two directories",
        ),
        (
            &["bench", "quality", "--modes", "fuzzy"],
            "invalid value 'fuzzy' for '--modes <M1,M2>'",
            "not a mode",
        ),
        (
            &["bench", "load", "--scale", "10"],
            "`10` is not 10k, 100k or 1m",
            "not a scale",
        ),
        (
            &["bench", "quality", "--relevant-grades", "3-1"],
            "1 <= MIN <= MAX",
            "an empty range",
        ),
        (
            &["bench", "quality", "--set", "rrf_k"],
            "expected KNOB=VALUE",
            "a knob without value",
        ),
        (
            &["bench", "load", "--sweep"],
            "unexpected argument '--sweep'",
            "a quality option to load",
        ),
        (
            &["bench", "artifacts", "x"],
            "unexpected argument 'x'",
            "artifacts takes nothing",
        ),
    ] {
        let output = keel(args);
        assert_eq!(output.status.code(), Some(2), "{why}: {args:?}");
        let message = stderr(&output);
        assert!(message.contains(says), "{why}: {args:?} said {message}");
        assert!(stdout(&output).is_empty(), "{why}: errors go to stderr");
    }
}

#[test]
fn migrate_without_a_database_names_the_variable() {
    let output = keel(&["migrate"]);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr(&output).contains("DATABASE_URL: required by `keel migrate`"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn serve_hands_out_public_files_with_their_types_and_nothing_outside() {
    let root = std::env::temp_dir().join(format!("keel-public-{}", std::process::id()));
    let public = root.join("public");
    std::fs::create_dir_all(public.join("reference")).unwrap();
    std::fs::write(root.join("secret.txt"), "outside public/").unwrap();
    std::fs::write(public.join("reference/index.html"), "<h1>reference</h1>").unwrap();
    std::fs::write(public.join("reference/app.js"), "start()").unwrap();
    std::fs::write(public.join("reference/app.css"), "h1{}").unwrap();
    std::fs::write(public.join("openapi.json"), "{}").unwrap();
    std::fs::write(public.join(".env"), "SECRET=1").unwrap();
    std::os::unix::fs::symlink(root.join("secret.txt"), public.join("linked.txt")).unwrap();
    let server = serve(&public);

    for (path, content_type, body) in [
        (
            "/reference/",
            "text/html; charset=utf-8",
            "<h1>reference</h1>",
        ),
        (
            "/reference",
            "text/html; charset=utf-8",
            "<h1>reference</h1>",
        ),
        (
            "/reference/index.html",
            "text/html; charset=utf-8",
            "<h1>reference</h1>",
        ),
        (
            "/reference/app.js",
            "application/javascript; charset=utf-8",
            "start()",
        ),
        ("/reference/app.css", "text/css; charset=utf-8", "h1{}"),
        ("/openapi.json", "application/json; charset=utf-8", "{}"),
    ] {
        assert_eq!(
            get(&server, path),
            Some((200, content_type.to_owned(), body.to_owned())),
            "{path}"
        );
    }
    for (path, why) in [
        ("/../secret.txt", "a parent segment"),
        (
            "/reference/../../secret.txt",
            "parent segments after a directory",
        ),
        (
            "/reference/..%2f..%2fsecret.txt",
            "an encoded parent segment",
        ),
        ("/%2e%2e/secret.txt", "an encoded dot-dot"),
        ("/linked.txt", "a symbolic link out of public/"),
        ("/.env", "a hidden file"),
        ("/reference/missing.js", "no such file"),
    ] {
        let (status, content_type, body) = get(&server, path).unwrap();
        assert_eq!(status, 404, "{why}: {path}");
        assert_eq!(content_type, "application/json", "{why}");
        assert!(
            !body.contains("outside public/") && !body.contains("SECRET"),
            "{why}: {body}"
        );
    }
    std::fs::remove_dir_all(&root).unwrap();
}
