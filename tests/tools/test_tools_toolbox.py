"""ToolBox routing, error kinds, limits, truncation, metrics and Hydra construction."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from metis.tools import Observation, Tool, ToolBox, truncate_observation
from metis.tools.base import smart_resize, validate_arguments

CONF = Path(__file__).resolve().parents[2] / "conf" / "tools"


class EchoTool(Tool):
    name = "echo"
    description = "echo"
    parameters = {"type": "object", "properties": {"text": {"type": "string"},
                                                   "n": {"type": "integer"}},
                  "required": ["text"]}

    def __init__(self) -> None:
        self.started: list[str] = []
        self.ended: list[str] = []

    def start(self, traj_id, images, meta=None):
        self.started.append(traj_id)

    def call(self, traj_id, arguments):
        if arguments["text"] == "boom":
            raise RuntimeError("kaboom")
        if arguments["text"] == "wrong-type":
            return "not an observation"
        n = int(arguments.get("n", 0))
        return Observation(text=arguments["text"] + "<image>" * n,
                           images=[Image.new("RGB", (32, 32))] * n)

    def end(self, traj_id):
        self.ended.append(traj_id)


def test_routing_errors_and_limit():
    echo = EchoTool()
    tb = ToolBox([echo], max_calls_per_trajectory=7)
    assert tb.specs() == [echo.spec()]
    tb.start("t", [])
    assert tb.execute("t", "echo", {"text": "hi"}).text == "hi"
    obs = tb.execute("t", "nope", {})
    assert obs.error == "unknown_tool" and "echo" in obs.text
    assert tb.execute("t", "echo", ["text"]).error == "parse_error"
    assert tb.execute("t", "echo", {"n": 1}).error == "parse_error"  # missing key
    assert tb.execute("t", "echo", {"text": 3}).error == "parse_error"  # wrong type
    boom = tb.execute("t", "echo", {"text": "boom"})
    assert boom.error == "execution_error" and "kaboom" in boom.text
    assert tb.execute("t", "echo", {"text": "after"}).error is None  # the trajectory still works
    limited = tb.execute("t", "echo", {"text": "x"})
    assert limited.error == "limit"
    tb.end("t")
    assert echo.ended == ["t"]
    tb.start("u", [])
    assert tb.execute("u", "echo", {"text": "wrong-type"}).error == "execution_error"
    metrics = tb.metrics()
    assert metrics["echo"]["calls"] == 7 and metrics["echo"]["failures"] == 5
    assert metrics["_toolbox"]["errors"] == {"unknown_tool": 1, "limit": 1}
    assert metrics["echo"]["latency_p95_s"] >= metrics["echo"]["latency_p50_s"] >= 0
    tb.reset_metrics()
    assert tb.metrics() == {}


def test_truncation_keeps_placeholders_whole():
    img = Image.new("RGB", (32, 32))
    text = "a" * 50 + "<image>" + "b" * 50 + "<image>" + "c" * 100
    obs = Observation(text=text, images=[img, img])
    for limit in range(80, len(text) + 5):
        out = truncate_observation(obs, limit)
        assert len(out.text) <= limit
        assert out.text.count("<image>") == len(out.images)
        assert "<imag" not in out.text.replace("<image>", "")


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(st.text(alphabet="ab<>ige m", max_size=12), st.just("<image>")),
                max_size=40), st.integers(min_value=0, max_value=300), st.integers(0, 12))
def test_truncation_property(parts, limit, n_images):
    text = "".join(parts)
    obs = Observation(text=text, images=[Image.new("RGB", (32, 32))] * n_images)
    out = truncate_observation(obs, max(limit, 60))
    assert out.text.count("<image>") == len(out.images)
    assert len(out.images) <= n_images
    if len(text) <= max(limit, 60) and text.count("<image>") == n_images:
        assert out.text == text


def test_smart_resize_bounds():
    for h, w in [(1, 1), (17, 2000), (1024, 1024), (5000, 7000), (33, 95), (300, 2)]:
        rh, rw = smart_resize(h, w, 32, 4096, 256 * 256)
        assert rh % 32 == 0 and rw % 32 == 0
        assert 4096 <= rh * rw <= 256 * 256


def test_validate_arguments_subset():
    schema = {"properties": {"q": {"type": "string"}, "n": {"type": "integer"}}, "required": ["q"]}
    assert validate_arguments({"q": "x", "n": 2, "extra": 1}, schema) is None
    assert "bool" in validate_arguments({"q": "x", "n": True}, schema)
    assert validate_arguments(None, schema).startswith("arguments must be")


@pytest.mark.parametrize("name", ["none", "python_only", "all"])
def test_hydra_configs_instantiate(name):
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(CONF / f"{name}.yaml")
    if name != "none":
        cfg.tools[0].pool_size = 0  # no warm interpreters needed to check construction
    tb = instantiate(cfg)
    try:
        assert isinstance(tb, ToolBox) and tb.max_calls == 10 and tb.max_chars == 8192
        expected = {"none": [], "python_only": ["python"],
                    "all": ["python", "text_search", "image_search"]}[name]
        assert tb.names() == expected
        if name == "all":
            tb.start("t", [Image.new("RGB", (64, 64), "red")], meta={"id": "x"})
            assert tb.execute("t", "text_search", {"query": "capital"}).error is None
            assert tb.execute("t", "image_search", {}).error is None
            assert tb.execute("t", "image_search", {}).error == "refused"
            tb.end("t")
    finally:
        tb.close()
