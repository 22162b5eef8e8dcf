"""The documentation site (docs/, mkdocs.yml, built by ``make docs``): it builds with ``--strict`` (a broken link or
anchor, a missing or orphaned page fails), its generated configuration reference holds every setting of every schema
and its metrics reference every metric of the catalog, and the short commands of Getting started run as written (the
blocks marked ``<!-- not run: why -->`` are the long ones, or need files of the reader's own)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import typing
from dataclasses import fields, is_dataclass
from importlib.util import find_spec
from pathlib import Path

import pytest
import yaml

from tests.helpers import REPO

BLOCK = re.compile(r"(?:<!-- not run: (?P<why>[^\n]*?) -->\n)?```bash\n(?P<body>.*?)```", re.S)
NEEDS = ("mkdocs", "material", "mkdocstrings", "mkdocstrings_handlers.python")


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """The site, built once with ``--strict`` into a scratch dir."""
    missing = [name for name in NEEDS if find_spec(name.split(".")[0]) is None]
    if missing:
        pytest.skip(f"the docs extra is not installed ({', '.join(missing)}): make docs or make test installs it")
    out = tmp_path_factory.mktemp("site")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    built = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert built.returncode == 0, built.stdout + built.stderr
    assert "WARNING" not in built.stderr, built.stderr
    return out


def test_the_site_builds_strictly_with_a_page_for_every_doc_and_the_generated_ones(site):
    pages = {p.relative_to(REPO / "docs").with_suffix(".html") for p in (REPO / "docs").rglob("*.md")}
    generated = {Path("reference/config.html"), Path("reference/metrics.html")}
    assert not generated & pages, "a generated page is in docs/: it is written at build time (trustregion/docs.py)"
    assert all((site / p).is_file() for p in pages | generated)
    assert (site / "smollm2_bands.png").is_file()  # results/real-model.md shows it
    assert "trustregion.reference.rules.Rule" in (site / "reference/api.html").read_text()  # mkdocstrings ran


def test_a_broken_link_a_missing_page_or_an_orphaned_one_fails_the_strict_build():
    config = yaml.safe_load((REPO / "mkdocs.yml").read_text())
    nav, links = config["validation"]["nav"], config["validation"]["links"]
    assert nav == {"omitted_files": "warn", "not_found": "warn", "absolute_links": "warn"}
    assert links == {"not_found": "warn", "anchors": "warn", "absolute_links": "warn", "unrecognized_links": "warn"}
    assert "--strict" in (REPO / "Makefile").read_text().split("\ndocs:")[1].split("\n\n")[0]


def schema_settings() -> set[str]:
    """Every setting's override path, found from the schemas themselves (not from the generator)."""
    from trustregion import config
    from trustregion.data import sources
    from trustregion.judge import JudgeRunConfig
    from trustregion.objectives.methods import ALL_SCHEMAS
    from trustregion.reference.registry import RULES
    from trustregion.report.cli import ReportConfig
    from trustregion.search import SearchConfig

    def keys(schema: type, prefix: str) -> set[str]:
        found, hints = set(), typing.get_type_hints(schema)
        for f in fields(schema):
            path = f"{prefix}.{f.name}" if prefix else f.name
            hint = hints[f.name]
            found |= keys(hint, path) if isinstance(hint, type) and is_dataclass(hint) else {path}
        return found

    per_group = {group: [schema] for group, schema in config.schemas().items()}
    per_group["method"] = [o.config_class for o in ALL_SCHEMAS.values()]
    per_group["ref_update"] = [r.config_class for r in RULES.values()]
    per_group["dataset"] = [s.schema for s in sources().values()]
    per_group["eval"] = [config.EvalConfig]
    found = {k for group, schemas in per_group.items() for s in schemas for k in keys(s, group)}
    found |= {f.name for f in fields(config.Config) if f.name not in per_group}  # verbose, hooks
    return found | keys(ReportConfig, "") | keys(JudgeRunConfig, "") | keys(SearchConfig, "search")


def test_the_configuration_reference_holds_every_setting_of_every_schema_and_the_metrics_every_metric(site):
    from trustregion.metric_catalog import CATALOG

    page = (site / "reference/config.html").read_text()
    missing = sorted(k for k in schema_settings() if f"<code>{k}</code>" not in page)
    assert missing == []
    assert "<code>trainer.lr</code>" in page and "AdamW's learning rate (after warm-up)" in page  # with its meaning
    metrics = (site / "reference/metrics.html").read_text()
    assert sorted(name for name, _ in CATALOG if f"<code>{name}</code>" not in metrics) == []


def test_the_short_commands_of_getting_started_run_as_written(tmp_path):
    """Each bash block of the page, in order, in a scratch dir that sees the repo's .venv and test fixtures (the
    sample data the page trains on); a block marked ``<!-- not run: why -->`` is not run, and says why."""
    page = (REPO / "docs/getting-started.md").read_text()
    blocks = [(m["why"], m["body"]) for m in BLOCK.finditer(page)]
    assert len(blocks) == page.count("```bash")
    skipped = [body for why, body in blocks if why is not None]
    assert all(why.strip() for why, _ in blocks if why is not None)
    assert any(body.strip() == "make train" for body in skipped)  # the long ones are marked, not run
    (tmp_path / ".venv").symlink_to(Path(sys.prefix))
    (tmp_path / "tests").symlink_to(REPO / "tests")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HYDRA_FULL_ERROR": "1"}
    ran = 0
    for why, body in blocks:
        if why is not None:
            continue
        done = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", body], cwd=tmp_path, capture_output=True, text=True, env=env, timeout=300
        )
        assert done.returncode == 0, f"{body}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        ran += 1
    assert ran >= 4 and (tmp_path / "outputs/my-sweep/report.md").is_file()
