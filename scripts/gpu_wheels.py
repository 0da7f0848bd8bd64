"""Wheels for scripts/gpu_check.sh on a CUDA machine that reaches no package index.

    python scripts/gpu_wheels.py [DIR]      (`make gpu-wheels`; DIR: .cache/gpu-wheels)

The check runs `radpipe up` and `radpipe demo` there, so it needs every package Radpipe runs
with, at the versions this virtual environment holds (requirements.lock's pins), as CPython
3.12 manylinux wheels; less what such a machine's own python already has (torch and all it
pulls in, numpy, pillow, pytest) and what the check never imports:

- pyarrow (the TAT Parquet export only, imported there; 40 MB),
- pylibjpeg-libjpeg (JPEG decoding of compressed input; the demo's CTs are uncompressed, and
  the lock's pin has no CPython 3.12 wheel on the index).
"""

from __future__ import annotations

import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement

PROVIDED = ("torch", "numpy", "pillow", "pytest")
NOT_NEEDED = {"pyarrow", "pylibjpeg-libjpeg"}


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def closure(name: str, found: dict[str, str] | None = None) -> dict[str, str]:
    """``name`` and everything its installed distribution requires (no extras), with versions."""
    found = {} if found is None else found
    try:
        dist = metadata.distribution(name)
    except metadata.PackageNotFoundError:
        return found  # a requirement for another platform or Python
    key = canonical(name)
    if key in found:
        return found
    found[key] = dist.version
    for text in dist.requires or []:
        requirement = Requirement(text)
        if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
            closure(requirement.name, found)
    return found


def wanted() -> dict[str, str]:
    provided: dict[str, str] = {}
    for name in PROVIDED:
        closure(name, provided)
    runtime = closure("radpipe")
    runtime.pop("radpipe")
    return {
        name: version
        for name, version in sorted(runtime.items())
        if name not in provided and name not in NOT_NEEDED
    }


def main() -> int:
    folder = Path(sys.argv[1] if len(sys.argv) > 1 else ".cache/gpu-wheels")
    pins = [f"{name}=={version}" for name, version in wanted().items()]
    platforms = ["manylinux2014_x86_64", "manylinux_2_17_x86_64", "manylinux_2_28_x86_64"]
    command = [sys.executable, "-m", "pip", "download", "-q", "--no-deps"]
    command += ["--only-binary=:all:", "--python-version", "3.12", "--implementation", "cp"]
    for platform in platforms:
        command += ["--platform", platform]
    print(f"{len(pins)} packages into {folder}", file=sys.stderr)
    return subprocess.run([*command, "-d", str(folder), *pins], check=False).returncode


if __name__ == "__main__":
    sys.exit(main())
