"""docker-compose.yml, the Dockerfile and deploy/, checked by parsing (no Docker here)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from sluice.metrics import Metrics

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
    assert set(services["sluice-worker"]["depends_on"]) == {"nats", "postgres"}
    assert set(services["sluice-ingress"]["depends_on"]) == {"nats"}
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
        assert env["NATS_URL"].startswith("nats://nats:")
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
    assert len(panels) == len(dashboard["panels"]) == 8
    for title, metric in [
        ("Accepted events", "events_accepted_total"),
        ("Processed events", "events_processed_total"),
        ("Failed events", "events_failed_total"),
    ]:
        assert panels[title]["type"] == "stat"
        (expr,) = exprs(panels[title])
        assert metric in expr

    rates = panels["Events per minute: accepted, processed, failed"]
    assert rates["type"] == "timeseries"
    assert rates["fieldConfig"]["defaults"]["custom"]["stacking"]["mode"] == "normal"
    expressions = exprs(rates)
    for metric in ("events_accepted_total", "events_processed_total", "events_failed_total"):
        (expr,) = [e for e in expressions if metric in e]
        assert re.search(r"rate\(" + metric + r"\[1m\]\)\) \* 60", expr)

    latency = panels["Report latency by report (p95)"]
    assert latency["type"] == "timeseries"
    (expr,) = exprs(latency)
    assert "report_duration_seconds_bucket" in expr and "by (report, le)" in expr

    assert any("consumer_pending_messages" in e for e in exprs(panels["Consumer lag"]))
    assert any("dead_letter_queue_size" in e for e in exprs(panels["DLQ size"]))
    publish = exprs(panels["JetStream publish ack (p50, p99)"])
    assert [e.split(",")[0] for e in publish] == [
        "histogram_quantile(0.5",
        "histogram_quantile(0.99",
    ]
    assert all("publish_ack_seconds_bucket" in e for e in publish)
    for panel in dashboard["panels"]:
        assert panel["datasource"]["uid"] == "prometheus"


def test_every_metric_in_the_dashboard_is_exported(dashboard: dict[str, Any]) -> None:
    exported = exported_names()
    promql_words = {"sum", "rate", "increase", "max", "by", "le", "histogram_quantile"}
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
