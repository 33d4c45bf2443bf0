"""Resolve sluice's whole dependency set from wheels alone for every supported platform.

A dependency (or a version bound) without a wheel for one CPython/OS/architecture fails
here, naming the target, instead of failing `make install` on a user's machine. Uses uv's
resolver (`uv pip compile --python-platform`), which reads wheel tags and markers for the
target rather than for this machine; it needs the package index, not the target Python.

    python .ci/check_platforms.py            # every target
    python .ci/check_platforms.py 3.14       # only targets whose Python starts with 3.14
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PYTHONS = ("3.11", "3.12", "3.13", "3.14")
#: uv's names for the platforms the README promises (glibc 2.28+ Linux, macOS 11+).
PLATFORMS = (
    "x86_64-manylinux_2_28",
    "aarch64-manylinux_2_28",
    "x86_64-apple-darwin",
    "aarch64-apple-darwin",
)
EXTRAS = ("embedded", "dev")


def uv() -> str:
    scripts = Path(sysconfig.get_path("scripts"))
    local = scripts / "uv"
    found = str(local) if local.is_file() else shutil.which("uv")
    if found is None:
        sys.exit("check_platforms: uv not found (make install puts it in .venv/bin)")
    return found


def resolve(python: str, platform: str) -> subprocess.CompletedProcess[str]:
    argv = [uv(), "pip", "compile", str(REPO / "pyproject.toml")]
    argv += [arg for extra in EXTRAS for arg in ("--extra", extra)]
    argv += [
        "--python-version",
        python,
        "--python-platform",
        platform,
        "--only-binary",
        ":all:",
        "--no-python-downloads",
        "--no-header",
        "--quiet",
        "--output-file",
        os.devnull,
    ]
    return subprocess.run(argv, capture_output=True, text=True, check=False)


def main(args: list[str]) -> int:
    failures = 0
    for python in PYTHONS:
        if args and not any(python.startswith(a) for a in args):
            continue
        for platform in PLATFORMS:
            result = resolve(python, platform)
            ok = result.returncode == 0
            failures += not ok
            print(f"{'ok  ' if ok else 'FAIL'} CPython {python} {platform}", flush=True)
            if not ok:
                print("     " + result.stderr.strip().replace("\n", "\n     "), flush=True)
    if failures:
        print(f"{failures} target(s) cannot install sluice[{','.join(EXTRAS)}] from wheels")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
