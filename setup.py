"""Copies the top-level guests/ and payloads/ into the wheel as hostkvm/_data/, so an
installed hostkvm finds them as package data (a checkout reads them in place)."""

from __future__ import annotations

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).parent
DATA_DIRS = ("guests", "payloads")


class build_py_with_data(build_py):
    def run(self) -> None:
        super().run()
        for name in DATA_DIRS:
            src = ROOT / name
            dst = Path(self.build_lib) / "hostkvm" / "_data" / name
            if dst.exists():
                shutil.rmtree(dst)
            shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))


setup(cmdclass={"build_py": build_py_with_data})
