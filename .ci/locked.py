"""Fail early, saying what to run, when a lock no longer matches its requirements or an environment its lock.

    python .ci/locked.py requirements.txt=.venv requirements-vllm-cpu.txt=.venv-vllm requirements-vllm-cuda.txt

Each argument names a human-edited requirements file (its lock is the same name ending in .lock, written by
`make lock`) and, after `=`, an environment installed from that lock. A lock matches its requirements when the
packages it marks as asked for by the file (uv's `# via -r FILE`) are exactly the file's, each at a version the
file allows; an environment matches its lock when it holds exactly the lock's packages for this platform, at
the lock's versions. The check runs before the tests (`make test`), so two machines that pass it test the same
thing. It reads text only: it runs in seconds and needs no network.
"""

from __future__ import annotations

import re
import sys
from collections import defaultdict
from importlib.metadata import distributions
from pathlib import Path

from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

# A lock's entry: `name==version ; marker \` at the start of a line, then `--hash` lines and `# via` lines.
ENTRY = re.compile(
    r"^(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)==(?P<version>[^\s;\\]+)(?:\s*;\s*(?P<marker>[^\\]+?))?\s*\\?$"
)


def requirements(path: Path) -> dict[str, Requirement]:
    """The file's requirements by normalised name (comments and blank lines skipped)."""
    found = {}
    for line in path.read_text().splitlines():
        line = line.split(" #", 1)[0].strip()
        if line and not line.startswith("#"):
            requirement = Requirement(line)
            found[canonicalize_name(requirement.name)] = requirement
    return found


def lock_entries(path: Path) -> tuple[dict[str, list[tuple[Version, Marker | None]]], set[str]]:
    """The lock's pins by normalised name (a universal lock may pin a name twice, under exclusive markers),
    and the names it says the requirements file asked for."""
    pins: dict[str, list[tuple[Version, Marker | None]]] = defaultdict(list)
    asked = set()
    name = None
    requirements_file = f"-r {path.with_suffix('.txt').name}"
    for line in path.read_text().splitlines():
        if entry := ENTRY.match(line):
            name = canonicalize_name(entry["name"])
            marker = Marker(entry["marker"]) if entry["marker"] else None
            pins[name].append((Version(entry["version"]), marker))
        elif name and line.strip().lstrip("# ").removeprefix("via ").strip() == requirements_file:
            asked.add(name)
    return pins, asked


def lock_problems(requirements_path: Path, lock_path: Path) -> list[str]:
    if not lock_path.exists():
        return [f"{lock_path} is missing"]
    wanted = requirements(requirements_path)
    pins, asked = lock_entries(lock_path)
    problems = [f"{name} is asked for but not locked" for name in sorted(wanted.keys() - asked)]
    problems += [f"{name} is locked as asked for, but no longer asked for" for name in sorted(asked - wanted.keys())]
    for name in sorted(wanted.keys() & asked):
        for version, _ in pins[name]:
            if not wanted[name].specifier.contains(version, prereleases=True):
                problems.append(f"{name} is locked at {version}, but {wanted[name]} is asked for")
    return problems


def environment_problems(lock_path: Path, environment: Path) -> list[str]:
    """What the environment holds that differs from the lock's pins for this platform."""
    pins, _ = lock_entries(lock_path)
    expected = {
        name: version
        for name, versions in pins.items()
        for version, marker in versions
        if marker is None or marker.evaluate()
    }
    site_packages = sorted(environment.glob("lib/python*/site-packages"))
    if not site_packages:
        return [f"{environment} is not an environment (no lib/python*/site-packages)"]
    installed = {
        canonicalize_name(found.metadata["Name"]): Version(found.version)
        for found in distributions(path=[str(p) for p in site_packages])
    }
    problems = [
        f"{name} {expected[name]} is locked but not installed" for name in sorted(expected.keys() - installed.keys())
    ]
    problems += [
        f"{name} {installed[name]} is installed but not locked" for name in sorted(installed.keys() - expected.keys())
    ]
    problems += [
        f"{name} {installed[name]} is installed, {expected[name]} is locked"
        for name in sorted(expected.keys() & installed.keys())
        if installed[name] != expected[name]
    ]
    return problems


def main(arguments: list[str]) -> int:
    failed = False
    for argument in arguments:
        requirements_name, _, environment_name = argument.partition("=")
        requirements_path = Path(requirements_name)
        lock_path = requirements_path.with_suffix(".lock")
        if problems := lock_problems(requirements_path, lock_path):
            failed = True
            print(f"{lock_path} no longer matches {requirements_path}:", *problems, sep="\n  ", file=sys.stderr)
            print("Run `make lock` to resolve it again, then commit both files.\n", file=sys.stderr)
        elif environment_name and (problems := environment_problems(lock_path, Path(environment_name))):
            failed = True
            print(f"{environment_name} differs from {lock_path}:", *problems, sep="\n  ", file=sys.stderr)
            print(
                f"Reinstall it from the lock: `rm -r {environment_name}` and run `make test` again. "
                "To change a dependency, edit the requirements file and run `make lock`.\n",
                file=sys.stderr,
            )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
