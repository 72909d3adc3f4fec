"""Checks of Keel's deployable artifacts, run by scripts/check-deploy.

    deploy_check.py vercel    .vercel/output after `vercel build`
    deploy_check.py zips      target/lambda/<bin>/bootstrap.zip after `cargo lambda build --arm64`
    deploy_check.py sam       deploy/aws/template.yaml against Cargo.toml and vercel.json
    deploy_check.py watch DATABASE_URL
                              every function under `cargo lambda watch`, invoked with
                              API Gateway REST, HTTP API and function-URL events
    deploy_check.py smoke URL GET URL/api/health and URL/api/ready until both answer 200

Each check prints what it proved and exits 1 with every problem listed.
The standard library only, except PyYAML (cfn-lint's dependency) for the template.
"""

import base64
import hashlib
import hmac
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import tomllib
import uuid
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = ROOT / "deploy" / "aws" / "template.yaml"
ELF_MACHINES = {0x3E: "x86-64", 0xB7: "aarch64"}
# Files that exist only as source: none of them may be published as static content.
SOURCE_MARKERS = ("Cargo.toml", "Cargo.lock", "vercel.json", ".env", "README.md")
SOURCE_DIRS = (
    "api/",
    "crates/",
    "migrations/",
    "scripts/",
    "tests/",
    "docs/",
    "deploy/",
    ".github/",
    "target/",
)


class Problems:
    def __init__(self, title):
        self.title = title
        self.items = []

    def add(self, message):
        self.items.append(message)

    def check(self, ok, message):
        if not ok:
            self.add(message)
        return ok

    def finish(self, proved):
        if self.items:
            print(f"FAIL {self.title}: {len(self.items)} problem(s)", file=sys.stderr)
            for item in self.items:
                print(f"  - {item}", file=sys.stderr)
            sys.exit(1)
        print(f"ok   {self.title}")
        for line in proved:
            print(f"     {line}")


# --- The routes as the repository declares them ---------------------------------------


def project():
    """Binaries from Cargo.toml joined with their vercel.json settings and public paths."""
    cargo = tomllib.loads((ROOT / "Cargo.toml").read_text())
    vercel = json.loads((ROOT / "vercel.json").read_text())
    functions = {}
    for binary in cargo["bin"]:
        source = binary["path"]
        function_path = "/" + source.removesuffix(".rs")
        functions[binary["name"]] = {
            "source": source,
            "function_path": function_path,
            "settings": vercel.get("functions", {}).get(source),
            "public_paths": [],
            "crons": [],
        }
    by_function_path = {f["function_path"]: f for f in functions.values()}
    for rewrite in vercel.get("rewrites", []):
        target = by_function_path.get(rewrite["destination"].split("?")[0])
        if target:
            target["public_paths"].append(rewrite["source"])
    for function in functions.values():
        if not function["public_paths"]:
            function["public_paths"].append(function["function_path"])
    for cron in vercel.get("crons", []):
        target = by_function_path.get(cron["path"])
        if target:
            target["crons"].append(cron["schedule"])
    return functions, vercel


def elf_machine(data):
    if data[:4] != b"\x7fELF" or data[4] != 2:
        return None
    return ELF_MACHINES.get(int.from_bytes(data[18:20], "little"), "unknown")


# --- vercel build ----------------------------------------------------------------------


def vercel_route_for(routes, path):
    """The first route after `handle: filesystem` whose src matches, with its dest filled in."""
    after_filesystem = False
    for route in routes:
        if route.get("handle") == "filesystem":
            after_filesystem = True
            continue
        if not after_filesystem or "src" not in route:
            continue
        match = re.fullmatch(route["src"].replace("(?<", "(?P<"), path)
        if match:
            dest = route.get("dest", path)
            for name, value in match.groupdict().items():
                dest = dest.replace(f"${name}", value or "")
            for index, value in enumerate(match.groups(), start=1):
                dest = dest.replace(f"${index}", value or "")
            return route, dest
    return None, None


def check_vercel():
    problems = Problems("vercel build output (.vercel/output)")
    functions, vercel = project()
    output = ROOT / ".vercel" / "output"
    config_path = output / "config.json"
    if not config_path.is_file():
        problems.add(f"{config_path} is missing: did `vercel build` run?")
        problems.finish([])
    config = json.loads(config_path.read_text())
    problems.check(config.get("version") == 3, f"config.json version is {config.get('version')}, expected 3")

    want_crons = sorted((c["path"], c["schedule"]) for c in vercel.get("crons", []))
    got_crons = sorted((c.get("path"), c.get("schedule")) for c in config.get("crons", []))
    problems.check(
        got_crons == want_crons, f"config.json crons are {got_crons}, vercel.json has {want_crons}"
    )

    routes = config.get("routes", [])
    problems.check(
        any(r.get("handle") == "filesystem" for r in routes),
        "config.json routes have no `handle: filesystem` phase",
    )
    for rewrite in vercel.get("rewrites", []):
        params = re.findall(r":(\w+)", rewrite["source"])
        sample = rewrite["source"]
        expected = rewrite["destination"]
        for name in params:
            sample = sample.replace(f":{name}", f"sample-{name}")
            expected = expected.replace(f":{name}", f"sample-{name}")
        route, dest = vercel_route_for(routes, sample)
        if problems.check(route is not None, f"no route after the filesystem phase matches {sample}"):
            problems.check(dest == expected, f"{sample} is rewritten to {dest}, expected {expected}")
    # Before the filesystem phase nothing may redirect a function's own path
    # (/api/webhooks/endpoints must reach its function, not the /api/webhooks/:id rewrite).
    for route in routes:
        if route.get("handle") == "filesystem":
            break
        if "dest" not in route:
            continue
        pattern = re.compile(route["src"].replace("(?<", "(?P<"))
        for function in functions.values():
            problems.check(
                not pattern.fullmatch(function["function_path"]),
                f"route {route['src']} -> {route['dest']} takes {function['function_path']} before the filesystem",
            )

    expected_funcs = set()
    for name, function in functions.items():
        settings = function["settings"]
        if not problems.check(
            settings is not None, f"vercel.json has no `functions` entry for {function['source']}"
        ):
            continue
        func_dir = output / "functions" / (function["function_path"].lstrip("/") + ".func")
        expected_funcs.add(func_dir)
        vc_path = func_dir / ".vc-config.json"
        if not problems.check(vc_path.is_file(), f"{vc_path.relative_to(ROOT)} is missing"):
            continue
        vc = json.loads(vc_path.read_text())
        where = vc_path.relative_to(ROOT)
        for key, want in (("runtime", "executable"), ("handler", "executable"), ("runtimeLanguage", "rust")):
            problems.check(vc.get(key) == want, f"{where}: {key} is {vc.get(key)!r}, expected {want!r}")
        for key in ("memory", "maxDuration"):
            problems.check(
                vc.get(key) == settings.get(key),
                f"{where}: {key} is {vc.get(key)!r}, vercel.json says {settings.get(key)!r}",
            )
        handler = vc.get("handler", "executable")
        # A file left in the project is listed in filePathMap; `vercel deploy --prebuilt` uploads it from there.
        mapped = vc.get("filePathMap", {}).get(handler)
        executable = ROOT / mapped if mapped else func_dir / handler
        if mapped:
            problems.check(
                Path(mapped).name == name, f"{where}: the executable is {mapped}, not the binary {name}"
            )
        if problems.check(executable.is_file(), f"{executable.relative_to(ROOT)} is missing"):
            machine = elf_machine(executable.read_bytes()[:20])
            arch = vc.get("architecture", "x86_64")
            want_machine = "aarch64" if arch == "arm64" else "x86-64"
            problems.check(
                machine == want_machine,
                f"{executable.relative_to(ROOT)} is {machine or 'not a 64-bit ELF'}, the function is {arch}",
            )
            problems.check(
                os.access(executable, os.X_OK), f"{executable.relative_to(ROOT)} is not executable"
            )
    found_funcs = {p for p in (output / "functions").rglob("*.func") if p.is_dir()}
    for extra in sorted(found_funcs - expected_funcs):
        problems.add(f"unexpected function {extra.relative_to(output)} (no [[bin]] in Cargo.toml)")

    static = output / "static"
    published = (
        sorted(str(p.relative_to(static)) for p in static.rglob("*") if p.is_file())
        if static.is_dir()
        else []
    )
    public_dir = ROOT / vercel.get("outputDirectory", "public")
    public = sorted(str(p.relative_to(public_dir)) for p in public_dir.rglob("*") if p.is_file())
    for path in published:
        leaked = (
            Path(path).name.startswith(SOURCE_MARKERS) or path.startswith(SOURCE_DIRS) or path.endswith(".rs")
        )
        problems.check(not leaked, f"source file published as static content: {path}")
    problems.check(
        published == public, f"static output is {published}, expected exactly {public_dir.name}/: {public}"
    )

    problems.finish(
        [
            f"crons: {', '.join(f'{p} {s!r}' for p, s in want_crons)}",
            f"rewrites after the filesystem phase: {len(vercel.get('rewrites', []))}, each resolved to its destination",
            f"{len(expected_funcs)} functions: runtime executable (rust), x86-64 ELF, memory/maxDuration as in vercel.json",
            f"static output: {', '.join(published) or 'nothing'} (no source file)",
        ]
    )


# --- cargo lambda build ----------------------------------------------------------------


def check_zips():
    problems = Problems("cargo lambda zips (target/lambda/<bin>/bootstrap.zip)")
    functions, _ = project()
    sizes = []
    for name in functions:
        path = ROOT / "target" / "lambda" / name / "bootstrap.zip"
        if not problems.check(path.is_file(), f"{path.relative_to(ROOT)} is missing"):
            continue
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
            if not problems.check(
                names == ["bootstrap"], f"{path.relative_to(ROOT)} holds {names}, expected [bootstrap]"
            ):
                continue
            info = archive.getinfo("bootstrap")
            mode = info.external_attr >> 16
            problems.check(mode & 0o111, f"{name}: bootstrap is not executable in the zip (mode {oct(mode)})")
            with archive.open(info) as member:
                machine = elf_machine(member.read(20))
            problems.check(
                machine == "aarch64",
                f"{name}: bootstrap is {machine or 'not a 64-bit ELF'}, expected aarch64",
            )
            sizes.append((name, path.stat().st_size, info.file_size))
    total = sum(s[1] for s in sizes)
    problems.finish(
        [
            f"{len(sizes)} zips, each exactly one executable aarch64 ELF named bootstrap",
            (
                f"zip sizes {min(s[1] for s in sizes) / 1e6:.1f}–{max(s[1] for s in sizes) / 1e6:.1f} MB, {total / 1e6:.1f} MB in all"
                if sizes
                else "no zips"
            ),
        ]
    )


# --- SAM template ----------------------------------------------------------------------


def load_template():
    import yaml

    class Loader(yaml.SafeLoader):
        pass

    def intrinsic(loader, suffix, node):
        name = "Ref" if suffix == "Ref" else f"Fn::{suffix}"
        if isinstance(node, yaml.ScalarNode):
            value = loader.construct_scalar(node)
        elif isinstance(node, yaml.SequenceNode):
            value = loader.construct_sequence(node, deep=True)
        else:
            value = loader.construct_mapping(node, deep=True)
        return {name: value}

    Loader.add_multi_constructor("!", intrinsic)
    return yaml.load(TEMPLATE.read_text(), Loader=Loader)


def render_sub(value, variables):
    """Renders a `!Sub` string with the given variables; any other ${...} is an error."""
    text = value["Fn::Sub"] if isinstance(value, dict) else value

    def replace(match):
        if match.group(1) not in variables:
            raise KeyError(match.group(1))
        return variables[match.group(1)]

    return re.sub(r"\$\{([^}!]+)\}", replace, text)


def vercel_to_eventbridge(schedule):
    """`m h dom mon dow` (Vercel) as EventBridge's expressions for the same times."""
    fields = schedule.split()
    if fields == ["*"] * 5:
        return {"rate(1 minute)", "cron(* * * * ? *)"}
    minute, hour, dom, month, dow = fields
    if dow == "*":
        dow = "?"
    elif dom == "*":
        dom = "?"
    else:
        return set()
    return {f"cron({minute} {hour} {dom} {month} {dow} *)"}


def env_example_vars():
    """Every variable in .env.production.example, and those marked required in production."""
    names, required = set(), set()
    comment = []
    for line in (ROOT / ".env.production.example").read_text().splitlines():
        stripped = line.strip()
        if stripped.startswith("#"):
            comment.append(stripped)
            match = re.match(r"#\s*([A-Z][A-Z0-9_]+)=", stripped)
            if match:
                names.add(match.group(1))
            continue
        match = re.match(r"([A-Z][A-Z0-9_]+)=", stripped)
        if match:
            names.add(match.group(1))
            if comment and comment[0].startswith("# required in production;"):
                required.add(match.group(1))
        comment = []
    return names, required


def template_functions(template):
    for logical_id, resource in template.get("Resources", {}).items():
        if resource.get("Type") == "AWS::Serverless::Function":
            yield logical_id, resource.get("Properties", {})


# How the template hands the cron secret to the functions and the schedules: a
# dynamic reference to the Secrets Manager secret the stack generates, which
# CloudFormation resolves when it creates the resource and never stores.
CRON_SECRET_REFERENCE = "{{resolve:secretsmanager:${CronSecret}:SecretString}}"
CRON_SECRET_PLACEHOLDER = "x" * 40


def cron_events(template):
    """(bin, cron path, the event the schedule sends) for every schedule in the template,
    with CRON_SECRET_PLACEHOLDER where the cron secret goes. Any other `${...}` than the
    account id, e.g. a parameter holding the secret, is a KeyError."""
    for _, props in template_functions(template):
        name = Path(props.get("CodeUri", "")).parent.name
        for event in props.get("Events", {}).values():
            if event.get("Type") in ("Schedule", "ScheduleV2"):
                raw = event["Properties"]["Input"]
                raw = raw["Fn::Sub"] if isinstance(raw, dict) else raw
                rendered = render_sub(
                    raw.replace(CRON_SECRET_REFERENCE, CRON_SECRET_PLACEHOLDER),
                    {"AWS::AccountId": "123456789012"},
                )
                yield name, event, rendered


def check_cron_secret(template, problems):
    """The cron secret exists in plain text nowhere CloudFormation keeps: not in the template,
    not as a parameter (whose value would be substituted into every schedule's Input), only
    as a generated Secrets Manager secret that the environment and the schedules resolve."""
    parameters = template.get("Parameters", {})
    secret = template.get("Resources", {}).get("CronSecret", {})
    properties = secret.get("Properties", {})
    problems.check(
        "CronSecret" not in parameters,
        "CronSecret is a template parameter: its value would be written in plain text into every schedule's Input",
    )
    if problems.check(
        secret.get("Type") == "AWS::SecretsManager::Secret",
        "the resource CronSecret must be an AWS::SecretsManager::Secret",
    ):
        generate = properties.get("GenerateSecretString", {})
        problems.check(
            "SecretString" not in properties and generate,
            "CronSecret must be generated by Secrets Manager (GenerateSecretString), not written in the template",
        )
        problems.check(
            generate.get("ExcludePunctuation") is True and generate.get("PasswordLength", 32) >= 32,
            "CronSecret must be at least 32 letters and digits (ExcludePunctuation), safe inside the JSON Input",
        )
    variables = template.get("Globals", {}).get("Function", {}).get("Environment", {}).get("Variables", {})
    problems.check(
        variables.get("CRON_SECRET") == {"Fn::Sub": CRON_SECRET_REFERENCE},
        f"CRON_SECRET must be !Sub {CRON_SECRET_REFERENCE!r}, not {variables.get('CRON_SECRET')!r}",
    )
    for logical_id, props in template_functions(template):
        for event_id, event in props.get("Events", {}).items():
            if event.get("Type") not in ("Schedule", "ScheduleV2"):
                continue
            raw = event["Properties"].get("Input", "")
            raw = raw["Fn::Sub"] if isinstance(raw, dict) else raw
            for name in re.findall(r"\$\{([^}!]+)\}", raw):
                problems.check(
                    name not in parameters,
                    f"{logical_id}.{event_id}: the Input substitutes the parameter {name}, in plain text",
                )


# The binaries of the routes declared `.streaming()` in crates/keel/src/routes.rs:
# on Lambda they run in response-streaming mode behind a function URL.
STREAMING_BINS = {"chat", "completions"}


def check_sam():
    problems = Problems("SAM template (deploy/aws/template.yaml)")
    functions, vercel = project()
    template = load_template()
    globals_ = template.get("Globals", {}).get("Function", {})
    for key, want in (("Runtime", "provided.al2023"), ("Handler", "bootstrap"), ("Architectures", ["arm64"])):
        problems.check(
            globals_.get(key) == want, f"Globals.Function.{key} is {globals_.get(key)!r}, expected {want!r}"
        )

    parameters = template.get("Parameters", {})
    known, required = env_example_vars()
    variables = globals_.get("Environment", {}).get("Variables", {})
    for name, value in variables.items():
        problems.check(name in known, f"environment variable {name} is not in .env.production.example")
        if isinstance(value, dict) and "Ref" in value:
            problems.check(value["Ref"] in parameters, f"{name} refers to unknown parameter {value['Ref']}")
    for name in sorted(required - set(variables)):
        problems.add(f"{name} is required in production but the template does not set it")
    problems.check(variables.get("ENVIRONMENT") == "production", "ENVIRONMENT must be production")

    seen = {}
    schedules = 0
    for logical_id, props in template_functions(template):
        code_uri = props.get("CodeUri", "")
        match = re.fullmatch(r"\.\./\.\./target/lambda/([^/]+)/bootstrap\.zip", code_uri)
        if not problems.check(
            match, f"{logical_id}: CodeUri {code_uri!r} is not ../../target/lambda/<bin>/bootstrap.zip"
        ):
            continue
        name = match.group(1)
        function = functions.get(name)
        if not problems.check(function, f"{logical_id}: no [[bin]] named {name} in Cargo.toml"):
            continue
        problems.check(name not in seen, f"{logical_id} and {seen.get(name)} both deploy {name}")
        seen[name] = logical_id
        settings = function["settings"] or {}
        for key, vercel_key in (("MemorySize", "memory"), ("Timeout", "maxDuration")):
            problems.check(
                props.get(key) == settings.get(vercel_key),
                f"{logical_id}: {key} is {props.get(key)!r}, vercel.json says {vercel_key} {settings.get(vercel_key)!r}",
            )
        events = props.get("Events", {}).values()
        http = [e["Properties"] for e in events if e.get("Type") == "HttpApi"]
        want_paths = sorted(re.sub(r":(\w+)", r"{\1}", p) for p in function["public_paths"])
        streams = (props.get("FunctionUrlConfig") or {}).get("InvokeMode") == "RESPONSE_STREAM"
        if name in STREAMING_BINS:
            problems.check(
                streams and not http,
                f"{logical_id}: {name} streams its answers, which an HTTP API buffers: it needs a "
                "FunctionUrlConfig with InvokeMode RESPONSE_STREAM and no HttpApi event",
            )
        else:
            problems.check(not streams, f"{logical_id}: {name} answers whole; only {sorted(STREAMING_BINS)} stream")
            problems.check(
                sorted(e.get("Path") for e in http) == want_paths,
                f"{logical_id}: HttpApi paths {sorted(e.get('Path') for e in http)}, vercel.json serves {want_paths}",
            )
        for event in http:
            problems.check(
                event.get("Method") == "ANY",
                f"{logical_id} {event.get('Path')}: Method must be ANY (Keel answers 405)",
            )
        got = sorted(e["Properties"].get("Schedule") for e in events if e.get("Type") == "Schedule")
        problems.check(
            len(got) == len(function["crons"]),
            f"{logical_id}: {len(got)} schedules, vercel.json has {len(function['crons'])} crons for {function['function_path']}",
        )
        for cron, expression in zip(sorted(function["crons"]), got):
            problems.check(
                expression in vercel_to_eventbridge(cron),
                f"{logical_id}: schedule {expression!r} does not match vercel.json's {cron!r}",
            )
    for name in sorted(set(functions) - set(seen)):
        problems.add(f"no function deploys the binary {name} ({functions[name]['source']})")

    check_cron_secret(template, problems)
    try:
        events = list(cron_events(template))
    except KeyError as error:
        problems.add(f"a schedule's Input substitutes {error}; only {CRON_SECRET_REFERENCE} and AWS::AccountId")
        events = []
    for name, event, rendered in events:
        schedules += 1
        try:
            payload = json.loads(rendered)
        except json.JSONDecodeError as error:
            problems.add(f"{name}: the schedule's Input is not JSON: {error}")
            continue
        path = functions.get(name, {}).get("function_path")
        problems.check(
            payload.get("version") == "2.0", f"{name}: the schedule's Input is not an HTTP API 2.0 event"
        )
        problems.check(
            payload.get("rawPath") == path and payload["requestContext"]["http"]["path"] == path,
            f"{name}: the schedule's Input targets {payload.get('rawPath')}, not {path}",
        )
        problems.check(
            payload["requestContext"]["http"]["method"] == "GET", f"{name}: the schedule must send GET"
        )
        problems.check(
            payload.get("headers", {}).get("authorization") == "Bearer " + CRON_SECRET_PLACEHOLDER,
            f"{name}: the schedule must send `authorization: Bearer {CRON_SECRET_REFERENCE}`",
        )

    problems.finish(
        [
            f"{len(seen)} functions, one per [[bin]]: provided.al2023 arm64 bootstrap from target/lambda/<bin>/bootstrap.zip",
            "MemorySize/Timeout and HttpApi paths (ANY) equal vercel.json's functions and rewrites",
            f"the streaming functions ({', '.join(sorted(STREAMING_BINS))}) behind function URLs in RESPONSE_STREAM mode",
            f"{schedules} EventBridge schedules = vercel.json crons, each sending GET <cron path> "
            "as an HTTP API event with Authorization: Bearer <CronSecret>",
            "CronSecret generated by Secrets Manager and resolved by CloudFormation into CRON_SECRET and "
            "the schedules' Input: no parameter or literal holds it",
            f"{len(variables)} environment variables, all from .env.production.example, every production-required one set",
        ]
    )


# --- cargo lambda watch ----------------------------------------------------------------


def fixture_dirs():
    metadata = json.loads(
        subprocess.run(
            ["cargo", "metadata", "--format-version", "1", "--locked"],
            cwd=ROOT,
            check=True,
            capture_output=True,
            text=True,
        ).stdout
    )
    dirs = {}
    for package in metadata["packages"]:
        if package["name"] in ("aws_lambda_events", "lambda_http"):
            dirs[package["name"]] = Path(package["manifest_path"]).parent
    return dirs


class Events:
    """Events built from the fixtures AWS documents for each trigger, with our request put in."""

    def __init__(self):
        dirs = fixture_dirs()
        fixtures = dirs["aws_lambda_events"] / "src" / "fixtures"
        self.rest = json.loads((fixtures / "example-apigw-request.json").read_text())
        self.http = json.loads((fixtures / "example-apigw-v2-request-no-authorizer.json").read_text())
        # aws_lambda_events ships no function-URL request; lambda_http's own test data has one.
        self.url = json.loads(
            (dirs["lambda_http"] / "tests" / "data" / "lambda_function_url_request.json").read_text()
        )

    def build(self, kind, method, path, route, headers=None, body=None, query=None, base64_body=False):
        headers = {k.lower(): v for k, v in (headers or {}).items()}
        if body is not None:
            body = body if isinstance(body, str) else json.dumps(body)
            headers.setdefault("content-type", "application/json")
        query = query or {}
        raw_query = "&".join(f"{k}={v}" for k, v in query.items())
        if kind == "rest":
            event = json.loads(json.dumps(self.rest))
            keep = {
                k: v
                for k, v in event["headers"].items()
                if k.lower() not in ("content-type", "postman-token")
            }
            merged = {**keep, **headers}
            event.update(
                path=path,
                httpMethod=method,
                resource=route,
                headers=merged,
                multiValueHeaders={k: [v] for k, v in merged.items()},
                queryStringParameters=query or None,
                multiValueQueryStringParameters={k: [v] for k, v in query.items()} or None,
                pathParameters=path_parameters(route, path),
                body=body,
                isBase64Encoded=False,
            )
            stage = event["requestContext"]["stage"]
            event["requestContext"].update(
                httpMethod=method, resourcePath=route, path=f"/{stage}{path}", requestId=str(uuid.uuid4())
            )
            return event
        event = json.loads(json.dumps(self.http if kind == "http" else self.url))
        keep = {k: v for k, v in event["headers"].items() if k not in ("content-length", "cookie")}
        event.pop("cookies", None)
        event.update(rawPath=path, rawQueryString=raw_query, headers={**keep, **headers})
        event["requestContext"]["http"].update(method=method, path=path)
        event["requestContext"]["requestId"] = str(uuid.uuid4())
        if kind == "http":
            event["routeKey"] = event["requestContext"]["routeKey"] = f"ANY {route}"
            params = path_parameters(route, path)
            if params:
                event["pathParameters"] = params
        if query:
            event["queryStringParameters"] = query
        if body is not None:
            event["body"] = base64.b64encode(body.encode()).decode() if base64_body else body
        event["isBase64Encoded"] = bool(base64_body and body is not None)
        return event


def path_parameters(route, path):
    names = re.findall(r"\{(\w+)\}", route)
    if not names:
        return None
    pattern = re.sub(r"\\\{(\w+)\\\}", r"(?P<\1>[^/]+)", re.escape(route))
    match = re.fullmatch(pattern, path)
    return match.groupdict() if match else None


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Emulator:
    """`cargo lambda watch` on a free loopback port; invocations go through `cargo lambda invoke`."""

    def __init__(self, env, log_path):
        self.port = free_port()
        self.log = open(log_path, "w")
        self.process = subprocess.Popen(
            [
                "cargo",
                "lambda",
                "watch",
                "--ignore-changes",
                "-A",
                "127.0.0.1",
                "-P",
                str(self.port),
                "-p",
                "keel-functions",
            ],
            cwd=ROOT,
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"cargo lambda watch exited with {self.process.returncode} (log: {log_path})"
                )
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.2)
        raise RuntimeError(f"cargo lambda watch did not listen on {self.port} within 60 s (log: {log_path})")

    def invoke(self, function, event, work):
        data = work / f"{function}-{uuid.uuid4().hex[:8]}.json"
        data.write_text(json.dumps(event))
        streams = function in STREAMING_BINS
        result = subprocess.run(
            [
                "cargo",
                "lambda",
                "invoke",
                function,
                "-A",
                "127.0.0.1",
                "-P",
                str(self.port),
                "--data-file",
                str(data),
                "--output-format",
                # A streaming function answers with an HTTP integration response
                # (a JSON prelude, eight NUL bytes, the body), which is not JSON.
                "text" if streams else "json",
            ],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=900,
        )
        if result.returncode != 0:
            raise AssertionError(
                f"cargo lambda invoke {function} failed: {result.stderr.strip() or result.stdout.strip()}"
            )
        if streams:
            # `cargo lambda watch` hands back only the streamed body: the status and
            # headers of the prelude stay inside the emulator (tests/api/binaries.rs
            # checks them against its own Runtime API).
            return None, {}, result.stdout
        response = json.loads(result.stdout)
        headers = {k.lower(): v for k, v in (response.get("headers") or {}).items()}
        for key, values in (response.get("multiValueHeaders") or {}).items():
            headers[key.lower()] = ", ".join(values)
        body = response.get("body") or ""
        if response.get("isBase64Encoded"):
            body = base64.b64decode(body).decode()
        return response.get("statusCode"), headers, body

    def stop(self):
        if self.process.poll() is None:
            os.killpg(self.process.pid, 15)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, 9)
                self.process.wait()
        self.log.close()


def sign_webhook(secret, webhook_id, timestamp, body):
    key = base64.b64decode(secret.removeprefix("whsec_"))
    mac = hmac.new(key, f"{webhook_id}.{timestamp}.{body}".encode(), hashlib.sha256).digest()
    return "v1," + base64.b64encode(mac).decode()


def watch_env(database_url):
    """The function environment: production, as deployed, with a dead embeddings provider."""
    keep = (
        "PATH",
        "HOME",
        "CARGO_HOME",
        "RUSTUP_HOME",
        "RUSTUP_TOOLCHAIN",
        "CARGO_TARGET_DIR",
        "XDG_CACHE_HOME",
        "TMPDIR",
    )
    env = {k: v for k, v in os.environ.items() if k in keep}
    secrets = {
        name: hashlib.sha256(f"keel-watch-{name}".encode()).hexdigest()
        for name in ("ADMIN_API_KEY", "CRON_SECRET", "METRICS_TOKEN", "ENCRYPTION_KEY")
    }
    env.update(secrets)
    env.update(
        # Production requires TLS to the database (verify-full: chain and host name).
        DATABASE_URL=database_url.replace("sslmode=disable", "sslmode=verify-full"),
        DATABASE_CA_CERT=Path(os.environ["KEEL_WATCH_DATABASE_CA_CERT"]).read_text(),
        ENVIRONMENT="production",
        LOG_LEVEL="warn",
        # Nothing listens on the discard port: search degrades to keyword mode and the
        # embeddings cron records a failure without waiting on retries. (https: production
        # refuses a plain-text provider URL.)
        OPENAI_BASE_URL="https://127.0.0.1:9/v1",
        EMBEDDING_MAX_RETRIES="0",
    )
    return env, secrets


def check_watch(database_url):
    problems = Problems("cargo lambda watch: every function under the Lambda emulator")
    functions, _ = project()
    template = load_template()
    events = Events()
    env, secrets = watch_env(database_url)
    admin = {"authorization": f"Bearer {secrets['ADMIN_API_KEY']}"}
    work = Path(tempfile.mkdtemp(prefix="keel-watch-"))
    log_path = ROOT / ".keel" / "lambda-watch.log"
    emulator = Emulator(env, log_path)
    invoked = set()
    count = 0
    started = time.monotonic()

    def call(kind, function, method, path, route, expect, **request):
        nonlocal count
        event = events.build(kind, method, path, route, **request)
        status, headers, body = emulator.invoke(function, event, work)
        count += 1
        invoked.add(function)
        label = f"[{kind}] {function}: {method} {path}"
        if function in STREAMING_BINS:
            return body, headers
        if not problems.check(
            status == expect, f"{label} answered {status}, expected {expect}: {body[:300]}"
        ):
            return None, headers
        if headers.get("content-type", "").startswith("application/json"):
            return json.loads(body), headers
        return body, headers

    def expect_error(kind, function, method, path, route, status, code, **request):
        body, headers = call(kind, function, method, path, route, status, **request)
        if body is not None:
            problems.check(
                body.get("error", {}).get("code") == code,
                f"[{kind}] {function}: {method} {path} error code {body.get('error', {}).get('code')!r}, expected {code!r}",
            )
        return headers

    try:
        for kind in ("rest", "http", "url"):
            slug = f"lambda-{kind}-{uuid.uuid4().hex[:6]}"
            body, _ = call(kind, "health", "GET", "/api/health", "/api/health", 200)
            if body:
                problems.check(
                    body.get("status") == "healthy" and body.get("environment") == "production",
                    f"[{kind}] health body {body}",
                )
            headers = expect_error(
                kind, "health", "POST", "/api/health", "/api/health", 405, "method_not_allowed"
            )
            allowed = {m.strip() for m in headers.get("allow", "").split(",")}
            problems.check(
                "GET" in allowed and "POST" not in allowed,
                f"[{kind}] health 405 Allow header is {headers.get('allow')!r}",
            )
            body, _ = call(kind, "ready", "GET", "/api/ready", "/api/ready", 200)
            if body:
                problems.check(
                    body.get("checks", {}).get("database", {}).get("status") == "ok",
                    f"[{kind}] ready body {body}",
                )
            expect_error(kind, "test-error", "GET", "/api/test-error", "/api/test-error", 401, "unauthorized")
            expect_error(
                kind,
                "test-error",
                "GET",
                "/api/test-error",
                "/api/test-error",
                500,
                "internal_error",
                headers=admin,
            )

            expect_error(kind, "tenants", "GET", "/api/tenants", "/api/tenants", 401, "unauthorized")
            body, _ = call(
                kind,
                "tenants",
                "POST",
                "/api/tenants",
                "/api/tenants",
                201,
                headers=admin,
                body={"name": "Joes", "slug": slug},
            )
            if body is None:
                continue
            keys_route = "/api/tenants/{slug}/keys"
            expect_error(
                kind,
                "tenant-keys",
                "POST",
                f"/api/tenants/{slug}/keys",
                keys_route,
                401,
                "unauthorized",
                body={},
            )
            body, _ = call(
                kind,
                "tenant-keys",
                "POST",
                f"/api/tenants/{slug}/keys",
                keys_route,
                201,
                headers=admin,
                body={"revoke_existing": True},
            )
            if body is None:
                continue
            tenant = {"authorization": f"Bearer {body['api_key']}"}

            # A function URL delivers bodies base64-encoded; the others as text.
            documents = {
                "documents": [
                    {
                        "id": "faq",
                        "title": "FAQ",
                        "content": "Do you have vegan options? Yes: the chickpea curry.",
                    }
                ]
            }
            body, _ = call(
                kind,
                "documents",
                "PUT",
                "/api/documents",
                "/api/documents",
                200,
                headers=tenant,
                body=json.dumps(documents),
                base64_body=kind == "url",
            )
            if body:
                problems.check(body.get("created") == 1, f"[{kind}] documents PUT body {body}")
            body, _ = call(
                kind,
                "documents",
                "GET",
                "/api/documents",
                "/api/documents",
                200,
                headers=tenant,
                query={"limit": "10"},
            )
            if body:
                problems.check(
                    [d["id"] for d in body.get("documents", [])] == ["faq"],
                    f"[{kind}] documents GET body {body}",
                )
            body, _ = call(
                kind,
                "search",
                "POST",
                "/api/search",
                "/api/search",
                200,
                headers=tenant,
                body={"query": "vegan curry", "top_k": 3},
            )
            if body:
                problems.check(
                    [r["document_id"] for r in body.get("results", [])] == ["faq"]
                    and body.get("degraded") is True,
                    f"[{kind}] search should find faq in degraded keyword mode: {body}",
                )
            expect_error(
                kind, "search", "POST", "/api/search", "/api/search", 401, "unauthorized", body={"query": "x"}
            )
            if kind == "url":
                # The answering functions stream (response-streaming mode), so on AWS
                # they sit behind function URLs only. No chat model here: extractive.
                question = "Do you have vegan options?"
                widget = {
                    "id": f"watch-{slug}",
                    "messages": [{"id": "m1", "role": "user", "parts": [{"type": "text", "text": question}]}],
                }
                body, _ = call(
                    kind,
                    "chat",
                    "POST",
                    "/api/chat",
                    "/api/chat",
                    200,
                    headers=tenant,
                    body=json.dumps(widget),
                    base64_body=True,
                )
                problems.check(
                    '"type":"start"' in body.split("\n\n")[0]
                    and "chickpea curry" in body
                    and body.rstrip().endswith("data: [DONE]"),
                    f"[{kind}] chat should stream the FAQ's answer: {body[:200]} … {body[-300:]}",
                )
                body, _ = call(
                    kind,
                    "completions",
                    "POST",
                    "/api/v1/chat/completions",
                    "/api/v1/chat/completions",
                    200,
                    headers=tenant,
                    body=json.dumps({"model": "any", "messages": [{"role": "user", "content": question}]}),
                    base64_body=True,
                )
                body = json.loads(body) if body.startswith("{") else {}
                if problems.check(body, f"[{kind}] completions answered no JSON"):
                    problems.check(
                        body.get("model") == "keel-extractive"
                        and "chickpea curry" in body["choices"][0]["message"]["content"],
                        f"[{kind}] completions should answer from the FAQ: {body}",
                    )
                conversation = f"/api/conversations/watch-{slug}"
                body, _ = call(
                    kind, "conversation", "GET", conversation, "/api/conversations/{id}", 200, headers=tenant
                )
                if body:
                    problems.check(
                        [m["role"] for m in body.get("messages", [])] == ["user", "assistant"],
                        f"[{kind}] the chat's conversation should hold its two turns: {body}",
                    )
                body, _ = call(kind, "conversations", "GET", "/api/conversations", "/api/conversations", 200, headers=tenant)
                if body:
                    problems.check(
                        len(body.get("conversations", [])) == 2,
                        f"[{kind}] both answers' conversations should be listed: {body}",
                    )
                call(kind, "conversation", "DELETE", conversation, "/api/conversations/{id}", 200, headers=tenant)
            body, _ = call(
                kind,
                "assistant",
                "PUT",
                "/api/assistant",
                "/api/assistant",
                200,
                headers=tenant,
                body={"instructions": "Answer briefly.", "temperature": 0.2, "max_answer_tokens": 300},
            )
            if body:
                problems.check(body.get("instructions") == "Answer briefly.", f"[{kind}] assistant PUT body {body}")
            body, _ = call(kind, "assistant", "GET", "/api/assistant", "/api/assistant", 200, headers=tenant)
            if body:
                problems.check(body.get("max_answer_tokens") == 300, f"[{kind}] assistant GET body {body}")
            body, _ = call(
                kind,
                "publishable-keys",
                "POST",
                "/api/publishable-keys",
                "/api/publishable-keys",
                201,
                headers=tenant,
                body={"allowed_origins": ["https://shop.example.com"]},
            )
            if body:
                problems.check(body.get("key", "").startswith("keel_pk_"), f"[{kind}] publishable key body {body}")
                call(
                    kind,
                    "publishable-key",
                    "DELETE",
                    f"/api/publishable-keys/{body['id']}",
                    "/api/publishable-keys/{id}",
                    200,
                    headers=tenant,
                )
            body, _ = call(kind, "source-list", "GET", "/api/sources", "/api/sources", 200, headers=tenant)
            if body:
                problems.check(body.get("sources") == [], f"[{kind}] sources body {body}")
            expect_error(
                kind,
                "source-list",
                "POST",
                "/api/sources",
                "/api/sources",
                400,
                "invalid_field",
                headers=tenant,
                body={"type": "sitemap", "url": "https://user:pass@shop.example.com/sitemap.xml"},
            )
            unknown_source = "/api/sources/00000000-0000-4000-8000-000000000000"
            expect_error(
                kind, "source", "GET", unknown_source, "/api/sources/{id}", 404, "not_found", headers=tenant
            )
            expect_error(
                kind,
                "source-sync",
                "POST",
                f"{unknown_source}/sync",
                "/api/sources/{id}/sync",
                404,
                "not_found",
                headers=tenant,
            )
            body, _ = call(
                kind,
                "generate",
                "POST",
                "/api/embeddings/generate",
                "/api/embeddings/generate",
                200,
                headers=tenant,
            )
            if body:
                problems.check("embedded" in body and "remaining" in body, f"[{kind}] generate body {body}")
            body, _ = call(
                kind,
                "retry",
                "POST",
                "/api/embeddings/retry",
                "/api/embeddings/retry",
                200,
                headers=tenant,
            )
            if body:
                problems.check(body == {"requeued": 0}, f"[{kind}] retry body {body}")
            expect_error(
                kind,
                "document",
                "GET",
                "/api/documents/faq",
                "/api/documents/{id}",
                405,
                "method_not_allowed",
                headers=tenant,
            )
            body, _ = call(
                kind, "document", "DELETE", "/api/documents/faq", "/api/documents/{id}", 200, headers=tenant
            )
            if body:
                # The id comes back only if the path parameter survived the event conversion.
                problems.check(
                    body == {"deleted": "faq", "chunks_deleted": 1}, f"[{kind}] document DELETE body {body}"
                )
            expect_error(
                kind,
                "document",
                "DELETE",
                "/api/documents/faq",
                "/api/documents/{id}",
                404,
                "not_found",
                headers=tenant,
            )

            body, _ = call(kind, "task-list", "GET", "/api/tasks", "/api/tasks", 200, headers=tenant)
            if body:
                problems.check(isinstance(body.get("tasks"), list), f"[{kind}] tasks body {body}")
            expect_error(kind, "task-list", "GET", "/api/tasks", "/api/tasks", 401, "unauthorized")

            body, _ = call(
                kind,
                "endpoints",
                "POST",
                "/api/webhooks/endpoints",
                "/api/webhooks/endpoints",
                201,
                headers=tenant,
                body={"source": "vapi"},
            )
            if body:
                webhook_path = body["url"]
                secret_route = "/api/webhooks/endpoints/{id}/secret"
                secret_path = f"/api/webhooks/endpoints/{body['id']}/secret"
                expect_error(kind, "webhook-secret", "POST", secret_path, secret_route, 401, "unauthorized")
                rotated, _ = call(
                    kind,
                    "webhook-secret",
                    "POST",
                    secret_path,
                    secret_route,
                    200,
                    headers=tenant,
                    body={"grace_period_seconds": 0},
                )
                if rotated:
                    problems.check(
                        rotated.get("id") == body["id"],
                        f"[{kind}] rotated {rotated} is not endpoint {body['id']}",
                    )
                    body["secret"] = rotated["secret"]
                payload = json.dumps({"type": "call.ended", "data": {"kind": kind}})
                webhook_id = f"msg_{uuid.uuid4().hex}"
                timestamp = str(int(time.time()))
                signed = {
                    "webhook-id": webhook_id,
                    "webhook-timestamp": timestamp,
                    "webhook-signature": sign_webhook(body["secret"], webhook_id, timestamp, payload),
                    "content-type": "application/json",
                }
                received, _ = call(
                    kind,
                    "webhook",
                    "POST",
                    webhook_path,
                    "/api/webhooks/{id}",
                    200,
                    headers=signed,
                    body=payload,
                )
                if received:
                    problems.check(
                        received == {"received": True, "duplicate": False},
                        f"[{kind}] webhook body {received}",
                    )
                expect_error(
                    kind,
                    "webhook",
                    "POST",
                    webhook_path,
                    "/api/webhooks/{id}",
                    400,
                    "missing_header",
                    body=payload,
                )
            body, _ = call(
                kind,
                "deliveries",
                "GET",
                "/api/webhooks/deliveries",
                "/api/webhooks/deliveries",
                200,
                headers=tenant,
            )
            if body:
                problems.check(len(body.get("deliveries", [])) == 1, f"[{kind}] deliveries body {body}")

            for function, path in (
                ("embeddings", "/api/cron/embeddings"),
                ("tasks", "/api/cron/tasks"),
                ("maintenance", "/api/cron/maintenance"),
                ("sources", "/api/cron/sources"),
            ):
                expect_error(
                    kind,
                    function,
                    "GET",
                    path,
                    path,
                    401,
                    "unauthorized",
                    headers={"authorization": "Bearer wrong"},
                )
            expect_error(kind, "metrics", "GET", "/api/metrics", "/api/metrics", 401, "unauthorized")
            body, headers = call(
                kind,
                "metrics",
                "GET",
                "/api/metrics",
                "/api/metrics",
                200,
                headers={"authorization": f"Bearer {secrets['METRICS_TOKEN']}"},
            )
            if body:
                problems.check(
                    headers.get("content-type", "").startswith("text/plain") and "keel_info{" in body,
                    f"[{kind}] metrics body {body[:200]}",
                )
            body, _ = call(kind, "openapi", "GET", "/api/openapi.json", "/api/openapi.json", 200)
            if body:
                problems.check(
                    body.get("openapi", "").startswith("3.1") and "/api/chat" in body.get("paths", {}),
                    f"[{kind}] openapi body {str(body)[:200]}",
                )

        # The EventBridge schedules, with exactly the Input the template sends.
        scheduled = []
        for name, _, rendered in cron_events(template):
            event = json.loads(rendered.replace(CRON_SECRET_PLACEHOLDER, secrets["CRON_SECRET"]))
            status, _, body = emulator.invoke(name, event, work)
            count += 1
            invoked.add(name)
            if problems.check(
                status == 200, f"[schedule] {name}: the template's Input answered {status}: {body[:300]}"
            ):
                scheduled.append(f"{name} {json.loads(body)}")
    finally:
        emulator.stop()
        shutil.rmtree(work, ignore_errors=True)

    for name in sorted(set(functions) - invoked):
        problems.add(f"{name} was never invoked")
    problems.finish(
        [
            f"{count} invocations of {len(invoked)} functions in {time.monotonic() - started:.0f} s "
            "with API Gateway REST (stage prefix), HTTP API (route keys, path parameters) and function-URL (base64 body) events",
            "statuses and JSON bodies: 200/201 flows, 401 without credentials, 404, 405 with Allow, 400 unsigned webhook",
            *(f"schedule Input -> 200: {line}" for line in scheduled),
        ]
    )


# --- smoke test of a deployment -----------------------------------------------------


def smoke(base_url, attempts=10, pause=6.0):
    """Retries while a fresh deployment warms up; Vercel's deployment protection is passed
    with VERCEL_AUTOMATION_BYPASS_SECRET when set."""
    import urllib.error
    import urllib.request

    problems = Problems(f"smoke test of {base_url}")
    headers = {"user-agent": "keel-smoke-test"}
    if os.environ.get("VERCEL_AUTOMATION_BYPASS_SECRET"):
        headers["x-vercel-protection-bypass"] = os.environ["VERCEL_AUTOMATION_BYPASS_SECRET"]
    expectations = {
        "/api/health": lambda body: body.get("status") == "healthy",
        "/api/ready": lambda body: body.get("ready") is True,
    }
    proved = []
    for path, accept in expectations.items():
        last = "no answer"
        for attempt in range(1, attempts + 1):
            request = urllib.request.Request(base_url.rstrip("/") + path, headers=headers)
            try:
                with urllib.request.urlopen(request, timeout=20) as response:
                    body = json.loads(response.read())
                    if accept(body):
                        proved.append(f"{path}: 200 on attempt {attempt}: {json.dumps(body)[:160]}")
                        break
                    last = f"200 with an unexpected body {body}"
            except urllib.error.HTTPError as error:
                last = f"{error.code} {error.read()[:300]!r}"
            except (urllib.error.URLError, OSError, ValueError) as error:
                last = str(error)
            if attempt < attempts:
                time.sleep(pause)
        else:
            problems.add(f"{path}: no healthy answer after {attempts} attempts; last: {last}")
    problems.finish(proved)


def main():
    command = sys.argv[1] if len(sys.argv) > 1 else ""
    if command == "vercel":
        check_vercel()
    elif command == "zips":
        check_zips()
    elif command == "sam":
        check_sam()
    elif command == "watch" and len(sys.argv) == 3:
        check_watch(sys.argv[2])
    elif command == "smoke" and len(sys.argv) == 3:
        smoke(sys.argv[2])
    else:
        print(__doc__, file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
