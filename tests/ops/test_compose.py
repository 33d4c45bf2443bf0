"""docker-compose.yml, the Dockerfile and deploy/, checked by parsing (no Docker here)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from sluice.config import Settings
from sluice.http.app import HttpDeps, create_app
from sluice.http.health import Health
from sluice.metrics import Metrics
from tests.fakes import FakeEventLog
from tests.http.test_webhook import LeanClient

ROOT = Path(__file__).resolve().parents[2]
SLUICE_SERVICES = ("sluice-ingress", "sluice-worker", "sluice-reports")
SCALED = ("sluice-ingress", "sluice-worker")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return data


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, Any]:
    found: dict[str, Any] = compose["services"]
    return found


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads((ROOT / "deploy/grafana/dashboards/sluice.json").read_text())
    return data


def exported_names() -> set[str]:
    """Every sample name sluice's registry can export (histograms: _bucket/_sum/_count)."""
    names: set[str] = set()
    for family in Metrics().registry.collect():
        names.add(family.name)
        if family.type == "counter":
            names.add(f"{family.name}_total")
        if family.type == "histogram":
            names |= {f"{family.name}_{part}" for part in ("bucket", "sum", "count")}
    return names


def test_every_expected_service_is_there(services: dict[str, Any]) -> None:
    assert {
        "nats",
        "nats-1",
        "nats-2",
        "nats-3",
        "postgres",
        *SLUICE_SERVICES,
        "prometheus",
        "grafana",
        "publisher",
        "publisher-local",
    } <= set(services)


def test_every_service_has_a_healthcheck_and_waits_for_healthy_dependencies(
    services: dict[str, Any],
) -> None:
    for name, service in services.items():
        check = service.get("healthcheck")
        assert check and check.get("test") and not check.get("disable"), name
        depends = service.get("depends_on", {})
        assert isinstance(depends, dict), f"{name}: depends_on must name conditions"
        for dependency, rule in depends.items():
            assert dependency in services, (name, dependency)
            assert rule["condition"] == "service_healthy", (name, dependency)
    cluster = {"nats-1", "nats-2", "nats-3"}  # when the cluster profile runs them
    assert set(services["sluice-worker"]["depends_on"]) == {"nats", "postgres"} | cluster
    assert set(services["sluice-ingress"]["depends_on"]) == {"nats"} | cluster
    for name in ("sluice-worker", "sluice-ingress"):
        for node in cluster:
            assert services[name]["depends_on"][node]["required"] is False
    assert set(services["grafana"]["depends_on"]) == {"prometheus"}
    assert {"sluice-ingress"} <= set(services["publisher"]["depends_on"])
    assert {"sluice-ingress"} <= set(services["publisher-local"]["depends_on"])


def test_nats_runs_jetstream_on_a_volume_with_a_monitoring_healthcheck(
    services: dict[str, Any],
) -> None:
    nats = services["nats"]
    mounts = {m.split(":")[1]: m.split(":")[0] for m in nats["volumes"]}
    conf = (ROOT / mounts["/etc/nats/sluice.conf"].removeprefix("./")).read_text()
    assert re.search(r"jetstream\s*\{[^}]*store_dir:\s*/data", conf)
    assert re.search(r"sync_interval:\s*always", conf)
    assert re.search(r"http_port:\s*8222", conf)
    assert mounts["/data"] == "nats-data"
    assert "/etc/nats/sluice.conf" in nats["command"]
    assert any("8222/healthz" in part for part in nats["healthcheck"]["test"])


def env_file(path: Path) -> dict[str, str]:
    lines = [line.strip() for line in path.read_text().splitlines()]
    return dict(line.split("=", 1) for line in lines if line and not line.startswith("#"))


def interpolated(value: str, env: dict[str, str]) -> str:
    """Compose's ${NAME:-default}, from `env`."""
    return re.sub(r"\$\{(\w+):-([^}]*)\}", lambda m: env.get(m.group(1)) or m.group(2), value)


def test_the_cluster_profile_runs_three_nats_nodes_and_sluice_on_three_replicas(
    compose: dict[str, Any], services: dict[str, Any]
) -> None:
    nodes = {name: s for name, s in services.items() if "cluster" in s.get("profiles", [])}
    assert set(nodes) == {"nats-1", "nats-2", "nats-3"}
    routes: set[str] = set()
    for name, node in nodes.items():
        mounts = {m.split(":")[1]: m.split(":")[0] for m in node["volumes"]}
        assert mounts["/data"] == f"{name}-data" and f"{name}-data" in compose["volumes"]
        assert "/etc/nats/cluster.conf" in node["command"]
        conf = (ROOT / mounts["/etc/nats/cluster.conf"].removeprefix("./")).read_text()
        assert re.search(r"jetstream\s*\{[^}]*store_dir:\s*/data", conf)
        assert re.search(r"sync_interval:\s*always", conf)
        assert re.search(r"server_name:\s*\$NATS_SERVER_NAME", conf)
        assert node["environment"]["NATS_SERVER_NAME"] == name
        assert re.search(r"cluster\s*\{[^}]*port:\s*6222", conf)
        routes = set(re.findall(r"nats-route://([\w-]+):6222", conf))
        assert any("8222/healthz" in part for part in node["healthcheck"]["test"])
        assert not node.get("ports"), f"{name}: no host port"
    assert routes == set(nodes)
    # Single NATS by default; deploy/cluster.env moves every sluice to the cluster.
    cluster_env = env_file(ROOT / "deploy/cluster.env")
    assert cluster_env["COMPOSE_PROFILES"] == "cluster"
    for name in SLUICE_SERVICES:
        env = services[name]["environment"]
        assert interpolated(env["NATS_URL"], {}) == "nats://nats:4222"
        assert interpolated(env["SLUICE_STREAM_REPLICAS"], {}) == "1"
        urls = interpolated(env["NATS_URL"], cluster_env).split(",")
        assert urls == [f"nats://{node}:4222" for node in sorted(nodes)], name
        assert interpolated(env["SLUICE_STREAM_REPLICAS"], cluster_env) == "3"
    readme = (ROOT / "README.md").read_text()
    assert "--profile cluster --env-file deploy/cluster.env" in readme


def test_postgres_keeps_its_data_on_a_named_volume(
    compose: dict[str, Any], services: dict[str, Any]
) -> None:
    postgres = services["postgres"]
    assert "postgres-data:/var/lib/postgresql/data" in postgres["volumes"]
    assert "pg_isready" in postgres["healthcheck"]["test"]
    named = set(compose["volumes"])
    assert {"nats-data", "postgres-data", "prometheus-data", "grafana-data"} <= named
    for service in services.values():
        for mount in service.get("volumes", []):
            source = mount.split(":")[0]
            assert source.startswith("./") or source in named, mount  # no anonymous volumes


def test_sluice_services_are_built_from_the_dockerfile_by_role(services: dict[str, Any]) -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert re.search(r'ENTRYPOINT \["sluice"\]', dockerfile)
    for name, role in zip(SLUICE_SERVICES, ("ingress", "worker", "reports"), strict=True):
        service = services[name]
        assert service["build"] == "."
        assert service["command"] == ["run", "--role", role]
        assert service["healthcheck"]["test"] == ["CMD", "sluice", "health"]
        env = service["environment"]
        assert interpolated(env["NATS_URL"], {}).startswith("nats://nats:")
        assert (
            env["DATABASE_URL"].startswith("postgresql://") and "@postgres:" in env["DATABASE_URL"]
        )
        assert env["SLUICE_HTTP_PORT"] == "8000"
        # Longer than the drain timeout, so SIGTERM drains before SIGKILL.
        grace = int(service["stop_grace_period"].removesuffix("s"))
        assert grace > int(env["SLUICE_DRAIN_TIMEOUT"])


def test_scaled_services_have_no_fixed_host_port_or_name(services: dict[str, Any]) -> None:
    for name in SCALED:
        service = services[name]
        assert "container_name" not in service
        for port in service.get("ports", []):
            assert ":" not in str(port), f"{name}: a fixed host port stops --scale"


def test_prometheus_scrapes_every_sluice_service(services: dict[str, Any]) -> None:
    prometheus = services["prometheus"]
    mounts = {m.split(":")[1]: m.split(":")[0] for m in prometheus["volumes"]}
    config = yaml.safe_load(
        (ROOT / mounts["/etc/prometheus/prometheus.yml"].removeprefix("./")).read_text()
    )
    scraped: set[str] = set()
    for job in config["scrape_configs"]:
        for sd in job.get("dns_sd_configs", []):
            assert sd["port"] == 8000
            scraped |= set(sd["names"])
    assert scraped == set(SLUICE_SERVICES)


def test_grafana_is_provisioned_from_deploy(services: dict[str, Any]) -> None:
    grafana = services["grafana"]
    mounts = {m.split(":")[1]: m.split(":")[0] for m in grafana["volumes"]}
    provisioning = ROOT / mounts["/etc/grafana/provisioning"].removeprefix("./")
    datasources = yaml.safe_load((provisioning / "datasources/prometheus.yml").read_text())
    (source,) = datasources["datasources"]
    assert source["type"] == "prometheus" and source["url"] == "http://prometheus:9090"
    (provider,) = yaml.safe_load((provisioning / "dashboards/sluice.yml").read_text())["providers"]
    dashboards_dir = provider["options"]["path"]
    assert mounts[dashboards_dir] == "./deploy/grafana/dashboards"
    assert (ROOT / "deploy/grafana/dashboards/sluice.json").is_file()


def test_publishers(services: dict[str, Any]) -> None:
    reference = services["publisher"]
    assert reference["image"].split(":")[0] == "andriiuni/events"
    assert reference["platform"] == "linux/arm64"
    assert reference["environment"]["EVENT_ENDPOINT"] == "http://sluice-ingress:8000/webhook"
    local = services["publisher-local"]
    assert local["profiles"] == ["publisher-local"]
    assert local["entrypoint"] == ["sluice", "publish"]
    assert local["environment"]["EVENT_ENDPOINT"] == "http://sluice-ingress:8000/webhook"
    readme = (ROOT / "README.md").read_text()
    assert "andriiuni/events" in readme and "arm64" in readme


def panels_by_title(dashboard: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {panel["title"]: panel for panel in dashboard["panels"]}


def exprs(panel: dict[str, Any]) -> list[str]:
    return [target["expr"] for target in panel["targets"]]


def test_dashboard_panels(dashboard: dict[str, Any]) -> None:
    panels = panels_by_title(dashboard)
    assert len(panels) == len(dashboard["panels"])
    for title, metric in [
        ("Accepted events", "events_accepted_total"),
        ("Processed events", "events_processed_total"),
        ("Failed events", "events_failed_total"),
        ("Rejected events", "events_rejected_total"),
    ]:
        assert panels[title]["type"] == "stat"
        (expr,) = exprs(panels[title])
        assert metric in expr

    rates = panels["Events per minute: accepted, processed, failed"]
    assert rates["type"] == "timeseries"
    expressions = exprs(rates)
    for metric in ("events_accepted_total", "events_processed_total", "events_failed_total"):
        (expr,) = [e for e in expressions if metric in e]
        assert re.search(r"rate\(" + metric + r"\{[^}]*\}\[1m\]\)\) \* 60", expr)

    latency = panels["Report latency by report (p95)"]
    assert latency["type"] == "timeseries"
    (expr,) = exprs(latency)
    assert "report_duration_seconds_bucket" in expr and "by (report, le)" in expr

    # The issue's list: each panel there, reading the metric that means it.
    for title, metric in [
        ("Rejected events per minute by reason", "events_rejected_total"),
        ("Duplicates per minute", "events_duplicate_total"),
        ("Dead-lettered events per minute", "events_dead_lettered_total"),
        ("DLQ size", "dead_letter_queue_size"),
        ("429 and 503 answers per minute", "http_request_duration_seconds_count"),
        ("Webhook latency (p50, p99)", "http_request_duration_seconds_bucket"),
        ("JetStream publish ack (p50, p99)", "publish_ack_seconds_bucket"),
        ("Consumer lag", "consumer_pending_messages"),
        ("Actor restarts", "actor_restarts_total"),
        ("CPU per process", "process_cpu_seconds_total"),
        ("Stream messages (work backlog, history)", "stream_messages"),
        ("Stored rows by source", "events_stored_rows"),
    ]:
        assert any(metric in e for e in exprs(panels[title])), title
    (throttled,) = exprs(panels["429 and 503 answers per minute"])
    assert 'status=~"429|503"' in throttled
    assert all(
        'route=~"/webhook.*|/events"' in e for e in exprs(panels["Webhook latency (p50, p99)"])
    )
    for title in ("Webhook latency (p50, p99)", "JetStream publish ack (p50, p99)"):
        quantiles = [e.split(",")[0] for e in exprs(panels[title])]
        assert quantiles == ["histogram_quantile(0.5", "histogram_quantile(0.99"], title
    for panel in dashboard["panels"]:
        assert panel["datasource"]["uid"] == "prometheus"
        assert len(panel.get("description", "")) > 30, f"{panel['title']}: say what it means"


def test_only_parts_of_a_whole_are_stacked(dashboard: dict[str, Any]) -> None:
    """Stacking adds the lines up: right for one total split by a label, wrong for
    accepted and processed (the same events twice) or per-instance maxima."""
    stacked = {
        panel["title"]
        for panel in dashboard["panels"]
        if panel["type"] == "timeseries"
        and panel["fieldConfig"]["defaults"]["custom"]["stacking"]["mode"] != "none"
    }
    assert stacked == {"Rejected events per minute by reason"}


def test_source_and_instance_variables_filter_the_panels(dashboard: dict[str, Any]) -> None:
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert set(variables) == {"source", "instance"}
    exported = exported_names()
    for variable in variables.values():
        assert variable["includeAll"] and variable["multi"]
        metric, label = re.fullmatch(
            r"label_values\((\w+), (\w+)\)", variable["definition"]
        ).groups()  # type: ignore[union-attr]
        assert metric in exported and label == variable["name"]
    for panel in dashboard["panels"]:
        for expr in exprs(panel):
            assert 'instance=~"$instance"' in expr, (panel["title"], expr)
            if re.search(r"\b(events_(?!reconciliation)\w+|consumer_\w+)\{", expr):
                assert 'source=~"$source"' in expr, (panel["title"], expr)


def test_every_metric_in_the_dashboard_is_exported(dashboard: dict[str, Any]) -> None:
    exported = exported_names()
    promql_words = {"sum", "rate", "increase", "max", "by", "le", "histogram_quantile"}
    # process_* and python_* come from prometheus_client's collectors, in our registry too.
    for panel in dashboard["panels"]:
        for expr in exprs(panel):
            stripped = re.sub(r"\{[^}]*\}|\[[^\]]*\]|\([a-z_, ]*\)(?= \()", " ", expr)
            names = set(re.findall(r"[a-z_][a-z0-9_]*", stripped)) - promql_words
            assert names, expr
            assert names <= exported, (panel["title"], names - exported)


def test_the_registry_exports_the_issue_contract() -> None:
    """Names and label sets that issue 4 lists, exactly."""
    families = {family.name: family for family in Metrics().registry.collect()}
    m = Metrics()
    expected_labels = {
        "events_accepted": ("source",),
        "events_rejected": ("source", "reason"),
        "events_processed": ("source",),
        "events_duplicate": ("source",),
        "events_failed": ("source", "reason"),
        "events_dead_lettered": ("source",),
        "consumer_pending_messages": ("source",),
        "consumer_ack_pending": ("source",),
        "channel_depth": ("channel",),
        "report_duration_seconds": ("report",),
        "http_request_duration_seconds": ("route", "method", "status"),
        "actor_restarts": ("actor",),
        "batch_size": (),
        "batch_flush_seconds": (),
        "consumer_ack_floor": ("source",),
        "stream_messages": ("stream",),
        "events_stored_rows": ("source",),
    }
    by_name = {
        getattr(metric, "_name", None): metric
        for metric in vars(m).values()
        if hasattr(metric, "_labelnames")
    }
    for name, labels in expected_labels.items():
        assert name in families, name
        assert tuple(by_name[name]._labelnames) == labels, name
    for name in ("events_accepted", "events_processed", "actor_restarts", "events_failed"):
        assert families[name].type == "counter"  # exported as <name>_total
    for name in ("batch_size", "batch_flush_seconds", "report_duration_seconds"):
        assert families[name].type == "histogram"
    for name in ("consumer_pending_messages", "channel_depth", "stream_messages"):
        assert families[name].type == "gauge"


# --------------------------------------------------------------------------- host ports

HOST_PORT = re.compile(r"^(?:(?P<ip>[\d.]+):)?(?P<host>\$\{\w+:-\d+\}|\d+):(?P<container>\d+)$")


def host_ports(service: dict[str, Any]) -> list[dict[str, str]]:
    found = []
    for entry in service.get("ports", []):
        match = HOST_PORT.match(str(entry))
        assert match, f"{entry!r}: write ports as [ip:]host:container"
        found.append(match.groupdict())
    return found


def default_port(host: str) -> int:
    return int(re.sub(r"\$\{\w+:-(\d+)\}", r"\1", host))


def test_nats_and_postgres_are_not_published_on_the_host(services: dict[str, Any]) -> None:
    for name in ("nats", "postgres"):
        for port in host_ports(services[name]):  # none, or local on a non-default port
            assert port["ip"] == "127.0.0.1", name
            assert default_port(port["host"]) not in (4222, 8222, 5432), name


def test_one_host_port_for_publishers_and_one_for_report_users(services: dict[str, Any]) -> None:
    public = {
        name: [p for p in host_ports(service) if p["ip"] in (None, "0.0.0.0")]
        for name, service in services.items()
    }
    assert {name for name, ports in public.items() if ports} == {"gateway"}
    by_container = {p["container"]: p["host"] for p in public["gateway"]}
    assert by_container == {
        "8000": "${SLUICE_WEBHOOK_PORT:-8000}",
        "8080": "${SLUICE_REPORTS_PORT:-8080}",
    }
    mounts = {m.split(":")[1]: m.split(":")[0] for m in services["gateway"]["volumes"]}
    conf = (ROOT / mounts["/etc/nginx/conf.d/default.conf"].removeprefix("./")).read_text()
    servers = {
        listen: upstream
        for listen, upstream in re.findall(
            r"listen (\d+);.*?set \$\w+ (http://[\w-]+:\d+);", conf, re.S
        )
    }
    assert servers == {"8000": "http://sluice-ingress:8000", "8080": "http://sluice-reports:8000"}
    assert re.search(r"resolver 127\.0\.0\.11 valid=\d+s", conf)  # replicas found again
    assert "client_max_body_size 0;" in conf  # sluice's own 413, not nginx's
    for name in ("prometheus", "grafana"):
        assert [p["ip"] for p in host_ports(services[name])] == ["127.0.0.1"], name
    readme = (ROOT / "README.md").read_text()
    assert "localhost:8000/webhook" in readme and "localhost:8080/reports/events" in readme


def test_prometheus_starts_without_waiting_for_sluice(services: dict[str, Any]) -> None:
    assert not services["prometheus"].get("depends_on")


def test_grafana_needs_a_login_with_the_password_from_the_environment(
    services: dict[str, Any],
) -> None:
    env = services["grafana"]["environment"]
    assert env["GF_AUTH_ANONYMOUS_ENABLED"] == "false"
    assert "GF_AUTH_ANONYMOUS_ORG_ROLE" not in env
    assert env["GF_USERS_ALLOW_SIGN_UP"] == "false"
    password = re.fullmatch(
        r"\$\{GRAFANA_ADMIN_PASSWORD:-(\S+)\}", env["GF_SECURITY_ADMIN_PASSWORD"]
    )
    assert password, "the admin password comes from GRAFANA_ADMIN_PASSWORD"
    assert password.group(1) != "admin"
    readme = (ROOT / "README.md").read_text()
    assert "GRAFANA_ADMIN_PASSWORD" in readme and password.group(1) in readme


@pytest.mark.anyio
async def test_the_compose_sections_webhook_example_is_accepted() -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("### docker-compose") :]
    (body,) = re.findall(r"localhost:8000/webhook .*?-d '(.*?)'\n", section, re.S)
    client = LeanClient(
        create_app(HttpDeps(Settings(), Metrics(), Health(), event_log=FakeEventLog()))
    )
    response = await client.post(
        "/webhook", data=body.encode(), headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 202
    assert (await response.get_json())["accepted"] == 1
