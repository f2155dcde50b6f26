"""Build a wheelhouse of the project's dependencies for an offline node of another Python/platform.

    python -m fp8train.wheelhouse --python-version 3.12 --platform manylinux_2_28_x86_64 \
        --have node-freeze.txt --dest .whl

1. Pure-Python dependencies published only as source (hydra's antlr4 runtime) are built into
   wheels here (`--build`), so the resolver can use them.
2. pip resolves the dependencies for the target (`install --dry-run --report`, binary wheels
   only, target Python version and platform), each package the node has pinned to the node's
   version (so what is shipped fits what is there; an impossible pin fails the resolution).
3. What the node has (`--have`: the output of `pip list --format=freeze` there) and the `--skip`
   patterns (torch, triton, nvidia-*) are dropped, with a warning where a shipped package needs
   another version than the node's; the rest is downloaded without dependencies, one version each
   (another version already in dest is removed, and so is a wheel of a package the node has; other
   wheels, such as a FlashAttention-3 wheel put there, are kept and listed).

On the node: pip install --no-index --no-deps --target /tmp/site <dest>/*.whl && export PYTHONPATH=/tmp/site
(or, into an environment: pip install --no-index --find-links <dest> -e .)
"""
import argparse
import fnmatch
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

DEFAULT_SKIP = ("torch", "triton", "nvidia-*")
DEFAULT_BUILD = ("antlr4-python3-runtime==4.9.3",)
REPO = Path(__file__).resolve().parent.parent


def normalize(name: str) -> str:
    """PEP 503 name: case and runs of -_. do not matter."""
    return re.sub(r"[-_.]+", "-", name).lower()


def project_requirements(pyproject: Path, extras: list[str]) -> list[str]:
    import tomllib  # Python 3.11+; elsewhere pass --requirement

    project = tomllib.loads(pyproject.read_text())["project"]
    reqs = list(project["dependencies"])
    for extra in extras:
        reqs += project["optional-dependencies"][extra]
    return reqs


def parse_have(text: str) -> dict[str, str | None]:
    """{normalized name: version or None} from `pip list --format=freeze` output (bare names allowed)."""
    have = {}
    for line in text.splitlines():
        line = line.split("#")[0].strip()
        if not line or line.startswith("-"):
            continue
        name, sep, version = line.partition("==")
        name = name.split(" @ ")[0].strip()
        # Local labels (+cu130) are not on package indexes.
        have[normalize(name)] = version.split("+")[0].strip() if sep else None
    return have


def node_pins(have: dict[str, str | None]) -> list[str]:
    """Constraints that resolve as the node will run: its own version of every package it has (dependencies of
    what is shipped then match the node's, rather than a newer release's)."""
    return [f"{name}=={version}" for name, version in sorted(have.items()) if version]


def skipped(name: str, patterns: list[str]) -> bool:
    return any(fnmatch.fnmatch(normalize(name), normalize(p)) for p in patterns)


def needless(requirement: str, skip: list[str], have: dict) -> bool:
    """A top-level requirement the node meets already: not even resolved (torch's would pull gigabytes)."""
    from packaging.requirements import Requirement

    name = Requirement(requirement).name
    return skipped(name, skip) or normalize(name) in have


def select(report: dict, skip: list[str], have: dict) -> list[tuple[str, str]]:
    """(name, version) of every package in a pip install report that the node lacks."""
    chosen = []
    for item in report["install"]:
        name, version = item["metadata"]["name"], item["metadata"]["version"]
        if not skipped(name, skip) and normalize(name) not in have:
            chosen.append((name, version))
    return chosen


def conflicts(report: dict, shipped: list[tuple[str, str]], have: dict, python_version: str) -> list[str]:
    """Requirements of shipped packages that the node's own version of a dependency does not meet."""
    from packaging.requirements import Requirement

    env = {"python_version": python_version, "python_full_version": f"{python_version}.0", "extra": ""}
    names = {normalize(n) for n, _ in shipped}
    found = []
    for item in report["install"]:
        meta = item["metadata"]
        if normalize(meta["name"]) not in names:
            continue
        for line in meta.get("requires_dist", []):
            req = Requirement(line)
            node_version = have.get(normalize(req.name))
            if node_version and (req.marker is None or req.marker.evaluate(env)) \
                    and not req.specifier.contains(node_version, prereleases=True):
                found.append(f"{meta['name']} {meta['version']} needs {req.name}{req.specifier}; "
                             f"the node has {node_version}")
    return found


def sort_existing(wheels: list[str], wanted: list[tuple[str, str]],
                  have: dict) -> tuple[list[str], list[str], dict[str, str]]:
    """Wheel files already in dest against this build's wanted (name, version) and the node's packages: stale ones
    (another version of a wanted package: the node gets one version of each; or a package the node has, which
    installed beside it would shadow the node's own), others (kept: a wheel of the user's own, such as FA3's, or of
    an earlier resolution), and the {name: version} still to download."""
    to_download = {normalize(n): v for n, v in wanted}
    wanted_names = set(to_download)
    stale, others = [], []
    for wheel in sorted(wheels):
        name, version = wheel.split("-")[:2]
        if normalize(name) not in wanted_names:
            (stale if normalize(name) in have else others).append(wheel)
        elif to_download.get(normalize(name)) == version:  # the first wheel of the wanted version
            to_download.pop(normalize(name))
        else:
            stale.append(wheel)
    return stale, others, to_download


def expand_platform(tag: str) -> list[str]:
    """Every tag a system of platform `tag` runs: manylinux_2_39_x86_64 also runs manylinux_2_38 ... 2_5 and the
    legacy aliases (pip matches --platform tags exactly)."""
    m = re.fullmatch(r"manylinux_2_(\d+)_(\w+)", tag)
    if not m:
        return [tag]
    glibc, arch = int(m.group(1)), m.group(2)
    legacy = [f"manylinux{alias}_{arch}" for alias, minor in (("2014", 17), ("2010", 12), ("1", 5)) if minor <= glibc]
    return [f"manylinux_2_{n}_{arch}" for n in range(glibc, 4, -1)] + legacy


def target_args(python_version: str, platforms: list[str]) -> list[str]:
    args = ["--only-binary=:all:", "--python-version", python_version, "--implementation", "cp"]
    for tag in [t for p in platforms for t in expand_platform(p)] + ["any"]:
        args += ["--platform", tag]
    return args


def pip(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "pip", *args], check=True)


def build(args) -> list[Path]:
    dest = Path(args.dest)
    dest.mkdir(parents=True, exist_ok=True)
    have = parse_have(Path(args.have).read_text()) if args.have else {}
    target = target_args(args.python_version, args.platform)
    for req in args.build:  # pure-Python sdists: a wheel built here runs anywhere
        pip("wheel", "-q", "--no-deps", "-w", str(dest), req)
    requirements = [r for r in args.requirement or project_requirements(REPO / "pyproject.toml", args.extra)
                    if not needless(r, args.skip, have)]
    with tempfile.TemporaryDirectory() as tmp:
        report_path, pins_path = Path(tmp) / "report.json", Path(tmp) / "node-pins.txt"
        pins_path.write_text("".join(f"{line}\n" for line in node_pins(have)))
        pip("install", "-q", "--dry-run", "--ignore-installed", "--report", str(report_path), "-c", str(pins_path),
            "--target", str(Path(tmp) / "t"), "--find-links", str(dest), *target, *requirements)
        report = json.loads(report_path.read_text())
    wanted = select(report, args.skip, have)
    for message in conflicts(report, wanted, have, args.python_version):
        print(f"warning: {message}", file=sys.stderr)
    stale, others, wanted_versions = sort_existing([w.name for w in dest.glob("*.whl")], wanted, have)
    for name in stale:
        (dest / name).unlink()
    if others:
        print(f"kept in {dest}, not part of this resolution: {', '.join(others)}", file=sys.stderr)
    if wanted_versions:
        pip("download", "-q", "--no-deps", "-d", str(dest), *target, *(f"{n}=={v}" for n, v in wanted_versions.items()))
    return sorted(dest.glob("*.whl"))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="fp8train-wheelhouse", description=__doc__.split("\n\n")[0])
    parser.add_argument("--python-version", required=True, help="target Python, e.g. 3.12")
    parser.add_argument("--platform", action="append", required=True,
                        help="target platform tag, repeatable (manylinux_2_28_x86_64, manylinux2014_x86_64, ...)")
    parser.add_argument("--dest", default="wheelhouse", help="directory the wheels go to (default: %(default)s)")
    parser.add_argument("--have", help="`pip list --format=freeze` of the node: those packages are not shipped")
    parser.add_argument("--skip", default=",".join(DEFAULT_SKIP), type=lambda s: [p for p in s.split(",") if p],
                        help="comma-separated name patterns never shipped (default: %(default)s)")
    parser.add_argument("--extra", action="append", default=[], help="project extra to include, repeatable")
    parser.add_argument("--requirement", action="append", default=[],
                        help="resolve these requirements instead of the project's, repeatable")
    parser.add_argument("--build", action="append", default=None,
                        help=f"pure-Python sdist to build into a wheel first (default: {', '.join(DEFAULT_BUILD)})")
    args = parser.parse_args(argv)
    args.build = DEFAULT_BUILD if args.build is None else args.build
    wheels = build(args)
    size = sum(w.stat().st_size for w in wheels) / 2**20
    print("\n".join(w.name for w in wheels))
    print(f"{len(wheels)} wheels, {size:.1f} MiB in {args.dest}; on the node:\n"
          f"  pip install --no-index --no-deps --target /tmp/site {args.dest}/*.whl && export PYTHONPATH=/tmp/site")


if __name__ == "__main__":
    main()
