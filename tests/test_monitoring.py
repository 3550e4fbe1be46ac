"""monitoring/ against the code: every metric (and label) the alert rules and the Grafana dashboard name is one the API
(its /metrics, built by hotpath.api.build_api) or a worker (prometheus_client's default registry, which each worker
serves whole) exports; the scrape targets are compose's services and the settings' ports; each alert has a runbook
whose `hotpath …` commands exist; `promtool` checks the config and the rules and runs alerts_test.yml.

promtool: HOTPATH_PROMTOOL, else `make promtool`'s .venv/promtool/usr/bin/promtool, else PATH. Missing, its tests
skip saying to run `make promtool`, and fail under CI=true.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from prometheus_client import REGISTRY as DEFAULT_REGISTRY
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from redis.asyncio import Redis

from cacheman.observability import REGISTRY as API_REGISTRY
from hotpath.api import build_api
from hotpath.settings import ApiSettings, IndexWorkerSettings, ThumbWorkerSettings
from tests.cacheman.conftest import running
from tests.test_compose import COMPOSE, _resolve

ROOT = Path(__file__).resolve().parents[1]
MON = ROOT / "monitoring"
RULES = yaml.safe_load((MON / "alerts.yml").read_text())
PROM = yaml.safe_load((MON / "prometheus.yml").read_text())
DASHBOARD = json.loads((MON / "grafana" / "dashboards" / "hotpath.json").read_text())
SUFFIXES = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_count", "_sum", "_created"),
            "summary": ("", "_count", "_sum", "_created"), "gauge": ("",), "info": ("_info",), "unknown": ("",)}
PROMETHEUS_OWN = {"up": set(), "scrape_duration_seconds": set(), "scrape_samples_scraped": set(), "ALERTS": set()}
TARGET_LABELS = {"job", "instance"}  # added by Prometheus to every scraped series

# --- a small PromQL reader: metric names with their selector labels, and the labels of by/on/... lists --------

TOKEN = re.compile(r"""
    (?P<str>"(?:\\.|[^"\\])*"|'(?:\\.|[^'\\])*'|`[^`]*`)
  | (?P<range>\[[^\]]*\])
  | (?P<num>\d+(?:\.\d+)?(?:[eE][+-]?\d+)?(?:ms|[smhdwy])*)
  | (?P<var>\$\{?\w+\}?)
  | (?P<ident>[A-Za-z_:][A-Za-z0-9_:]*)
  | (?P<punct>[(){},]|=~|!~|!=|==|>=|<=|[-+*/%^<>=])
  | (?P<ws>\s+)
""", re.X)
GROUPING = {"by", "without", "on", "ignoring", "group_left", "group_right"}
KEYWORDS = GROUPING | {"and", "or", "unless", "bool", "offset", "inf", "nan", "sum", "min", "max", "avg", "group",
                       "stddev", "stdvar", "count", "count_values", "bottomk", "topk", "quantile", "limitk"}


def read_promql(expr: str) -> tuple[list[tuple[str, set[str]]], set[str]]:
    """([(metric, labels of its {…} selector)], labels named in by/without/on/ignoring/group_* lists)."""
    tokens = []
    pos = 0
    while pos < len(expr):
        m = TOKEN.match(expr, pos)
        if m is None:
            raise ValueError(f"cannot read PromQL at {expr[pos:pos + 20]!r} in {expr!r}")
        pos = m.end()
        if m.lastgroup != "ws":
            tokens.append((m.lastgroup, m.group()))
    metrics, grouping = [], set()
    i = 0
    while i < len(tokens):
        kind, text = tokens[i]
        nxt = tokens[i + 1][1] if i + 1 < len(tokens) else ""
        if kind == "ident" and text in GROUPING and nxt == "(":
            j = i + 2
            while tokens[j][1] != ")":
                if tokens[j][0] == "ident":
                    grouping.add(tokens[j][1])
                j += 1
            i = j + 1
            continue
        if kind == "ident" and (nxt == "(" or text in KEYWORDS):
            i += 1  # a function, an aggregation or a keyword
            continue
        if kind == "ident" or text == "{":
            labels: set[str] = set()
            if kind == "ident":
                metrics.append((text, labels))
                i += 1
            if i < len(tokens) and tokens[i][1] == "{":
                j = i + 1
                while tokens[j][1] != "}":
                    if tokens[j][0] == "ident" and tokens[j + 1][1] in ("=", "!=", "=~", "!~"):
                        labels.add(tokens[j][1])
                    j += 1
                i = j + 1
            continue
        i += 1
    return metrics, grouping


def test_the_promql_reader_finds_names_and_labels():
    metrics, grouping = read_promql(
        'histogram_quantile(0.95, sum by (le, route) (rate(hotpath_http_request_seconds_bucket{route=~"/v1/.+", '
        'method!="x,y"}[5m] offset 1h))) > 0.5 and on (route) hotpath:http_requests:rate5m > bool 1 '
        'or max without (worker) (taskkit_queue_workers) == 0 or vector(0) * $__rate_interval')
    assert metrics == [("hotpath_http_request_seconds_bucket", {"route", "method"}), ("hotpath:http_requests:rate5m", set()),
                       ("taskkit_queue_workers", set())]
    assert grouping == {"le", "route", "worker"}


# --- what the code exports ------------------------------------------------------------------------------

def _families(text: str) -> dict[str, tuple[str, set[str]]]:
    """Exposition text → family name → (type, label names seen on its samples)."""
    out = {}
    for fam in text_string_to_metric_families(text):
        labels = {k for s in fam.samples for k in s.labels} - {"le", "quantile"}
        out[fam.name] = (fam.type, labels)
    return out


def _declared_labels(*registries) -> dict[str, set[str]]:
    """Label names of the metric objects registered (prometheus_client keeps them on each wrapper)."""
    out = {}
    for registry in registries:
        for collector in list(registry._collector_to_names):  # no public accessor; stable across releases
            if hasattr(collector, "_labelnames"):
                out[collector._name] = set(collector._labelnames)
    return out


@pytest.fixture(scope="module")
def exported(redis_url) -> dict[str, set[str]]:
    """Every series name the API or a worker exports → its label names (target labels and relabelling applied)."""
    prefix = f"hptest:mon:{os.getpid()}:"

    async def scrape_api() -> str:
        settings = ApiSettings(redis_url=redis_url, redis_prefix=prefix.rstrip(":").replace(":", "-"),
                               taskkit_prefix=prefix, origin_url="http://127.0.0.1:9,http://127.0.0.1:10",
                               embedder="hash", embedder_dim=8)
        redis = Redis.from_url(redis_url)
        await redis.zadd(f"{prefix}workers:index", {"w1": time.time() * 1000})  # a heartbeat for the exporter
        try:
            async with running(build_api(settings)) as client:
                deadline = time.monotonic() + 10
                while 'taskkit_queue_workers{queue="index"} 1.0' not in (text := (await client.get("/metrics")).text):
                    assert time.monotonic() < deadline, "the API's /metrics never showed the heartbeat written to Redis"
                    await asyncio.sleep(0.05)
                assert 'taskkit_queue_high_watermark{queue="index"} 10000.0' in text  # HOTPATH_INDEX_QUEUE_HIGH
                return text
        finally:
            async for key in redis.scan_iter(match=f"{prefix}*"):
                await redis.unlink(key)
            await redis.aclose()

    api = _families(asyncio.run(scrape_api()))
    import index_worker.worker  # noqa: F401  the workers' series: what their /metrics serves (the default registry)
    import thumb_worker.worker  # noqa: F401

    workers = _families(generate_latest(DEFAULT_REGISTRY).decode())
    declared = _declared_labels(API_REGISTRY, DEFAULT_REGISTRY)
    relabel = _origin_relabel()
    names: dict[str, set[str]] = dict(PROMETHEUS_OWN)
    for fams in (api, workers):
        for fam, (kind, seen) in fams.items():
            labels = (seen | declared.get(fam, set())) | TARGET_LABELS
            if fam.startswith("hotpath_origin_") and relabel:
                labels = labels | {relabel}  # the exposed `instance` label, renamed by prometheus.yml
            for suffix in SUFFIXES.get(kind, ("",)):
                names.setdefault(fam + suffix, set()).update(labels | ({"le"} if suffix == "_bucket" else set()))
    return names


def _origin_relabel() -> str | None:
    """The label prometheus.yml gives the origin instance (exposed as `instance`, kept by Prometheus as
    `exported_instance`)."""
    [api_job] = [j for j in PROM["scrape_configs"] if j["job_name"] == "api"]
    for rule in api_job.get("metric_relabel_configs", []):
        if rule.get("source_labels") == ["exported_instance"] and rule.get("target_label"):
            return rule["target_label"]
    return None


def _expressions() -> list[tuple[str, str]]:
    """(where, PromQL) of every rule and dashboard query."""
    out = []
    for group in RULES["groups"]:
        for rule in group["rules"]:
            out.append((f"alerts.yml {rule.get('alert') or rule.get('record')}", rule["expr"]))

    def panels(items):
        for p in items:
            yield p
            yield from panels(p.get("panels", []))

    for p in panels(DASHBOARD["panels"]):
        for t in p.get("targets", []):
            out.append((f"dashboard panel {p['title']!r} {t['refId']}", t["expr"]))
    for var in DASHBOARD["templating"]["list"]:
        q = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
        m = re.fullmatch(r"label_values\((\w+),\s*(\w+)\)", q)
        assert m, f"dashboard variable {var['name']}: expected label_values(metric, label), got {q!r}"
        out.append((f"dashboard variable {var['name']}", f"{m[1]}{{{m[2]}=~'.*'}}"))
    return out


def _recorded() -> dict[str, set[str]]:
    """Recording rules: name → the labels its series keep (those of its by-lists, or of the series it reads)."""
    out: dict[str, set[str]] = {}
    for group in RULES["groups"]:
        for rule in group["rules"]:
            if "record" in rule:
                metrics, grouping = read_promql(rule["expr"])
                out[rule["record"]] = (grouping - {"le"}) | {lab for _, labs in metrics for lab in labs}
                for name, _ in metrics:
                    out[rule["record"]] |= out.get(name, set())
    return out


def test_every_metric_and_label_the_rules_and_dashboard_use_is_exported(exported):
    known = {**exported, **_recorded()}
    problems = []
    for where, expr in _expressions():
        metrics, grouping = read_promql(expr)
        for name, labels in metrics:
            if name not in known:
                problems.append(f"{where}: {name} is exported by neither the API nor a worker")
            elif labels - known[name]:
                problems.append(f"{where}: {name} has no label {sorted(labels - known[name])}")
        in_scope = set().union(*(known.get(n, set()) for n, _ in metrics)) | TARGET_LABELS | {"le"}
        if metrics and grouping - in_scope:
            problems.append(f"{where}: by/on label {sorted(grouping - in_scope)} is on none of {[n for n, _ in metrics]}")
    assert not problems, "\n".join(problems)


def test_the_name_check_catches_a_wrong_name(exported):
    metrics, _ = read_promql('sum by (queue) (rate(taskkit_jobs_dead_totl{queue="index"}[5m]))')
    assert [n for n, _ in metrics if n not in exported] == ["taskkit_jobs_dead_totl"]
    assert "queue" in exported["taskkit_jobs_dead_total"] and "queu" not in exported["taskkit_jobs_dead_total"]


# --- rules: runbooks, scrape targets, compose wiring ------------------------------------------------------

def _alerts() -> list[dict]:
    return [r for g in RULES["groups"] for r in g["rules"] if "alert" in r]


def test_every_alert_has_a_severity_and_a_runbook_whose_commands_exist():
    names = {r["alert"] for r in _alerts()}
    assert {"DeadLetterGrowth", "QueueOverWatermark", "OldestJobTooOld", "OriginBreakerOpen", "CacheHitRatioLow",
            "HotPathP95OverTarget", "WorkerHealthStale"} <= names
    for rule in _alerts():
        assert rule["labels"]["severity"] in ("warning", "critical"), rule["alert"]
        assert {"summary", "description", "runbook"} <= set(rule["annotations"]), rule["alert"]
        for cmd in re.findall(r"`(hotpath [^`]+)`", rule["annotations"]["runbook"]):
            argv = re.sub(r"\{\{ *\$labels\.\w+ *\}\}", "index", cmd).replace("<job-id>", "some-job").split()[1:]
            _resolve(argv)  # fails naming the subcommand or option that does not exist


def test_scrape_targets_are_compose_services_on_the_settings_ports():
    ports = {"api": int(COMPOSE["services"]["api"]["environment"]["HOTPATH_PORT"]),
             "index-worker": IndexWorkerSettings.model_fields["index_metrics_port"].default,
             "thumb-worker": ThumbWorkerSettings.model_fields["thumb_metrics_port"].default}
    hosts = {"index-worker": "HOTPATH_INDEX_METRICS_HOST", "thumb-worker": "HOTPATH_THUMB_METRICS_HOST"}
    seen = {}
    for job in PROM["scrape_configs"]:
        [sd] = job["dns_sd_configs"]
        [service] = sd["names"]
        assert service in COMPOSE["services"], f"job {job['job_name']}: no compose service {service}"
        seen[service] = sd["port"]
        env = COMPOSE["services"][service]["environment"]
        for var in ("HOTPATH_INDEX_METRICS_PORT", "HOTPATH_THUMB_METRICS_PORT"):
            assert var not in env, f"{service} sets {var}: prometheus.yml scrapes the default port"
        if service in hosts:
            assert env[hosts[service]] == "0.0.0.0", f"{service}: /metrics must bind 0.0.0.0 to be scraped"
    assert seen == ports
    assert _origin_relabel() == "origin"  # the rules' `origin` label


def _mounts(service: str) -> dict[str, Path]:
    """Container path → repo path of a service's bind mounts (`./…`)."""
    out = {}
    for v in COMPOSE["services"][service].get("volumes", []):
        src, dst = v.split(":")[:2]
        if src.startswith("./"):
            assert (ROOT / src).exists(), f"{service} mounts {src}, which is not in the repo"
            out[dst] = ROOT / src
    return out


def test_compose_runs_prometheus_and_grafana_on_these_files():
    prom = _mounts("prometheus")
    config_dir = "/etc/prometheus"
    assert prom[f"{config_dir}/prometheus.yml"] == MON / "prometheus.yml"
    for rule_file in PROM["rule_files"]:
        assert prom[f"{config_dir}/{rule_file}"] == MON / rule_file
    assert f"--config.file={config_dir}/prometheus.yml" in COMPOSE["services"]["prometheus"]["command"]

    graf = _mounts("grafana")
    provisioning = graf["/etc/grafana/provisioning"]
    [source] = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())["datasources"]
    assert source["url"] == "http://prometheus:9090" and "prometheus" in COMPOSE["services"]
    [provider] = yaml.safe_load((provisioning / "dashboards" / "hotpath.yml").read_text())["providers"]
    assert graf[provider["options"]["path"]] == MON / "grafana" / "dashboards"
    uids = {json.dumps(p.get("datasource")) for p in DASHBOARD["panels"] if p["type"] != "row"}
    assert uids == {json.dumps({"type": "prometheus", "uid": source["uid"]})}
    password = COMPOSE["services"]["grafana"]["environment"]["GF_SECURITY_ADMIN_PASSWORD"]
    assert password.startswith("${GRAFANA_ADMIN_PASSWORD:?")


# --- promtool ---------------------------------------------------------------------------------------------

def _promtool() -> str:
    for candidate in (os.environ.get("HOTPATH_PROMTOOL"), str(ROOT / ".venv/promtool/usr/bin/promtool"),
                      shutil.which("promtool")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    msg = ("promtool not found (HOTPATH_PROMTOOL, .venv/promtool/usr/bin/promtool, PATH): run `make promtool` "
           "(Debian's prometheus package, only promtool unpacked, no daemon) to check monitoring/ with it")
    if os.environ.get("CI") == "true":
        pytest.fail(msg)
    pytest.skip(msg)


@pytest.mark.parametrize("args", [["check", "config", "prometheus.yml"], ["check", "rules", "alerts.yml"],
                                  ["test", "rules", "alerts_test.yml"]], ids=" ".join)
def test_promtool(args):
    res = subprocess.run([_promtool(), *args], cwd=MON, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "SUCCESS" in res.stdout + res.stderr


def test_the_rule_tests_cover_firing_and_quiet_cases():
    tests = yaml.safe_load((MON / "alerts_test.yml").read_text())
    assert tests["rule_files"] == ["alerts.yml"]
    outcomes: dict[str, set[bool]] = {}
    for case in tests["tests"]:
        for check in case.get("alert_rule_test", []):
            outcomes.setdefault(check["alertname"], set()).add(bool(check.get("exp_alerts")))
    for alert in ("DeadLetterGrowth", "QueueOverWatermark", "WorkerHealthStale"):
        assert outcomes.get(alert) == {True, False}, f"{alert}: needs a firing and a not-firing case, has {outcomes.get(alert)}"
    assert set(outcomes) <= {r["alert"] for r in _alerts()}
