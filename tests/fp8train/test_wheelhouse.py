"""Wheelhouse selection logic on a fake pip report (no network)."""
from fp8train import wheelhouse
from fp8train_testing import REPO

REPORT = {"install": [{"metadata": {"name": n, "version": v}} for n, v in [
    ("hydra-core", "1.3.2"), ("antlr4-python3-runtime", "4.9.3"), ("torch", "2.11.0"), ("nvidia-nccl-cu13", "2.28"),
    ("Triton", "3.6.0"), ("PyYAML", "6.0.3"), ("huggingface_hub", "1.33.0"), ("pydantic_core", "2.50.4")]]}

FREEZE = """# pip list --format=freeze on the node
PyYAML==6.0.2
huggingface-hub==1.33.0
torch==2.11.0+cu130
numpy
mypkg @ file:///src/mypkg
"""


def test_parse_have_normalizes_names_and_drops_local_labels():
    have = wheelhouse.parse_have(FREEZE)
    assert have == {"pyyaml": "6.0.2", "huggingface-hub": "1.33.0", "torch": "2.11.0", "numpy": None, "mypkg": None}


def test_select_drops_what_the_node_has_and_skipped_patterns():
    have = wheelhouse.parse_have(FREEZE)
    chosen = wheelhouse.select(REPORT, list(wheelhouse.DEFAULT_SKIP), have)
    assert chosen == [("hydra-core", "1.3.2"), ("antlr4-python3-runtime", "4.9.3"), ("pydantic_core", "2.50.4")]


def test_conflicts_flag_node_versions_outside_a_shipped_requirement():
    report = {"install": [{"metadata": {"name": "datasets", "version": "5.2.0", "requires_dist": [
        "huggingface-hub<3.0,>=1.31.0", "PyYAML>=7", "numpy>=1.17", "pyyaml<6; python_version < '3.8'",
        "pytest; extra == 'tests'"]}},
        {"metadata": {"name": "PyYAML", "version": "6.0.3", "requires_dist": ["torch<1"]}}]}
    have = wheelhouse.parse_have(FREEZE)
    found = wheelhouse.conflicts(report, [("datasets", "5.2.0")], have, "3.12")
    assert found == ["datasets 5.2.0 needs PyYAML>=7; the node has 6.0.2"]


def test_existing_wheels_keep_one_wanted_version_and_the_users_own():
    """Another version of a shipped package goes, and so does a package the node has (it would shadow the node's
    own); a wheel of anything else stays."""
    existing = ["hydra_core-1.3.2-py3-none-any.whl", "hydra_core-1.3.1-py3-none-any.whl",
                "flash_attn_3-3.0.0-cp310-abi3-linux_x86_64.whl", "PyYAML-6.0.3-cp312-cp312-manylinux2014_x86_64.whl",
                "pydantic_core-2.50.4-cp312-cp312-manylinux2014_x86_64.whl",
                "pydantic_core-2.50.4-cp312-cp312-manylinux_2_28_x86_64.whl"]
    wanted = [("hydra-core", "1.3.2"), ("antlr4-python3-runtime", "4.9.3"), ("pydantic_core", "2.50.4")]
    stale, others, to_download = wheelhouse.sort_existing(existing, wanted, wheelhouse.parse_have(FREEZE))
    assert stale == ["PyYAML-6.0.3-cp312-cp312-manylinux2014_x86_64.whl", "hydra_core-1.3.1-py3-none-any.whl",
                     "pydantic_core-2.50.4-cp312-cp312-manylinux_2_28_x86_64.whl"]
    assert others == ["flash_attn_3-3.0.0-cp310-abi3-linux_x86_64.whl"]
    assert to_download == {"antlr4-python3-runtime": "4.9.3"}


def test_node_pins_are_the_versions_the_node_has():
    assert wheelhouse.node_pins(wheelhouse.parse_have(FREEZE)) == ["huggingface-hub==1.33.0", "pyyaml==6.0.2",
                                                                  "torch==2.11.0"]


def test_project_requirements_and_target_args():
    reqs = wheelhouse.project_requirements(REPO / "pyproject.toml", ["bpe"])
    assert any(r.startswith("hydra-core") for r in reqs) and "tiktoken" in reqs
    args = wheelhouse.target_args("3.12", ["manylinux_2_28_x86_64"])
    assert args[:3] == ["--only-binary=:all:", "--python-version", "3.12"]
    tags = args[6::2]
    assert tags[:2] == ["manylinux_2_28_x86_64", "manylinux_2_27_x86_64"] and tags[-1] == "any"
    assert {"manylinux_2_17_x86_64", "manylinux2014_x86_64", "manylinux1_x86_64"} <= set(tags)
    assert "manylinux_2_29_x86_64" not in tags and wheelhouse.expand_platform("win_amd64") == ["win_amd64"]
