"""A plain (non-editable) install has every module, the app's stylesheet and every preset."""

import os
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_wheel_install_finds_every_preset(tmp_path: Path) -> None:
    wheels, site = tmp_path / "wheels", tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "--no-build-isolation",
                    "-q", "-w", str(wheels)], check=True, capture_output=True)
    wheel = next(wheels.glob("cifartui-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    sources = sorted((ROOT / "presets").rglob("*.toml"))
    assert sources, "no preset files in the source tree"
    missing = [p for p in sources if f"cifartui/preset_files/{p.relative_to(ROOT / 'presets').as_posix()}" not in names]
    assert not missing
    package_files = [p for p in (ROOT / "cifartui").rglob("*") if p.suffix in (".py", ".tcss")]
    assert [p for p in package_files if p.relative_to(ROOT).as_posix() not in names] == []

    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site), str(wheel)],
                   check=True, capture_output=True)
    code = ("import cifartui, cifartui.presets as p, cifartui.ui.app, cifartui.cli; print(cifartui.__file__); "
            "print(len(p.available()), sum(len(p.available(k)) for k in ('dataset','model','optimizer','augment')))")
    env = {**os.environ, "PYTHONPATH": str(site)}
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                         check=True).stdout.split()
    assert out[0].startswith(str(site))  # the installed copy, not the source tree
    top_level = [p for p in sources if p.parent == ROOT / "presets"]
    assert int(out[1]) == len(top_level)
    assert int(out[2]) == len(sources) - len(top_level)
