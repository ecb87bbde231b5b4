"""The Grafana dashboard under cluster/grafana/ queries exactly the metrics the app exports."""

from __future__ import annotations

import json
import re

from cluster.grafana.render import OUT, render
from serve.metrics import EXPORTED

SUFFIXES = ("_bucket", "_sum", "_count")


def _queried_names(dashboard: dict) -> set[str]:
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    exprs += [v["definition"] for v in dashboard["templating"]["list"] if "definition" in v]
    return {m for e in exprs for m in re.findall(r"\b(ray_[a-z_]+)", e)}


def _histogram_of(name: str) -> str:
    """`x` for a histogram's `x_bucket`/`x_sum`/`x_count`, else the name itself."""
    for suffix in SUFFIXES:
        if name.endswith(suffix) and name[: -len(suffix)] in EXPORTED.values():
            return name[: -len(suffix)]
    return name


def test_committed_dashboard_equals_a_fresh_render():
    assert OUT.read_text() == render(), "run: python -m cluster.grafana.render"


def test_every_query_names_an_exported_metric_and_every_metric_is_charted():
    names = _queried_names(json.loads(OUT.read_text()))
    base = {_histogram_of(n) for n in names}
    assert base <= set(EXPORTED.values()), base - set(EXPORTED.values())
    assert set(EXPORTED.values()) <= base, set(EXPORTED.values()) - base


def test_panels_do_not_overlap_and_use_the_chosen_data_source():
    dash = json.loads(OUT.read_text())
    cells = set()
    for p in dash["panels"]:
        g = p["gridPos"]
        mine = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
        assert not cells & mine, p["title"]
        cells |= mine
        assert p["datasource"]["uid"] == "${datasource}" and all(t["datasource"]["uid"] == "${datasource}" for t in p["targets"])
