"""Pictures in sixel or kitty graphics when the terminal has them, half blocks otherwise."""

from __future__ import annotations

import base64
import fcntl
import io
import os
import pty
import re
import select
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import numpy as np
import pytest
from textual.geometry import Region
from textual.widgets import Static

from cifartui.cli import main
from cifartui.ui.app import make_app
from cifartui.ui.graphics import ENVIRONMENT, GraphicsError, choose_mode
from tests.app_helpers import run, wait_for

DEVICE_ATTRIBUTES_QUERY = b"\x1b[c"
KITTY_QUERY = re.compile(rb"\x1b_G[^\x1b]*a=q[^\x1b]*\x1b\\")


def _choose_in_terminal(answers: dict[str, bytes]) -> tuple[str, list[bytes]]:
    """choose_mode("auto") in a child on a pseudo-terminal, this test playing the terminal."""
    controller, child_end = pty.openpty()
    # 30 rows x 100 columns of 9x18-pixel cells: the widget reads the pixel size from here.
    fcntl.ioctl(child_end, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 100, 900, 540))
    environment = {k: v for k, v in os.environ.items() if k != ENVIRONMENT}
    child = subprocess.Popen(
        [sys.executable, "-c", "from cifartui.ui.graphics import choose_mode; print('MODE=' + choose_mode())"],
        stdin=child_end, stdout=child_end, stderr=child_end, env=environment, close_fds=True)
    os.close(child_end)
    seen, queries = b"", []
    deadline = time.monotonic() + 60
    try:
        while b"MODE=" not in seen or not seen.rstrip().endswith((b"sixel", b"kitty", b"halfblock")):
            assert time.monotonic() < deadline, f"no answer from the child: {seen!r}"
            readable, _, _ = select.select([controller], [], [], 0.5)
            if not readable:
                if child.poll() is not None:
                    break
                continue
            try:
                seen += os.read(controller, 4096)
            except OSError:  # the child closed its end
                break
            if DEVICE_ATTRIBUTES_QUERY in seen and "attributes" in answers:
                queries.append(DEVICE_ATTRIBUTES_QUERY)
                seen = seen.replace(DEVICE_ATTRIBUTES_QUERY, b"", 1)
                os.write(controller, answers.pop("attributes"))
            if KITTY_QUERY.search(seen) and "kitty" in answers:
                queries.append(KITTY_QUERY.search(seen).group())
                seen = KITTY_QUERY.sub(b"", seen, count=1)
                os.write(controller, answers.pop("kitty"))
    finally:
        child.wait(timeout=30)
        os.close(controller)
    found = re.search(rb"MODE=(\w+)", seen)
    assert found, seen
    return found.group(1).decode(), queries


def test_auto_uses_sixel_when_the_terminal_says_it_has_it() -> None:
    # VT340-style device attributes: 4 in the list means sixel graphics.
    mode, queries = _choose_in_terminal({"attributes": b"\x1b[?63;1;2;4;6;9;15;22c"})
    assert mode == "sixel" and queries == [DEVICE_ATTRIBUTES_QUERY]


def test_auto_uses_kitty_graphics_when_the_terminal_answers_its_query() -> None:
    mode, queries = _choose_in_terminal({"attributes": b"\x1b[?62;22c", "kitty": b"\x1b_Gi=31;OK\x1b\\"})
    assert mode == "kitty" and len(queries) == 2


def test_auto_falls_back_to_half_blocks_when_the_terminal_has_neither() -> None:
    started = time.monotonic()
    mode, queries = _choose_in_terminal({"attributes": b"\x1b[?62;22c"})  # and no answer to the kitty query
    assert mode == "halfblock" and queries == [DEVICE_ATTRIBUTES_QUERY]
    assert time.monotonic() - started < 60


def test_choice_off_a_terminal_and_by_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENVIRONMENT, raising=False)
    assert choose_mode() == "halfblock"  # the test's output is not a terminal: nothing is asked
    assert choose_mode("halfblock") == "halfblock"
    assert choose_mode("sixel") == "sixel" and choose_mode("kitty") == "kitty"  # forced, e.g. inside tmux
    monkeypatch.setenv(ENVIRONMENT, "kitty")
    assert choose_mode() == "kitty"
    assert choose_mode("halfblock") == "halfblock"  # the option wins over the environment


def test_bad_choices_name_the_setting(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv(ENVIRONMENT, "png")
    with pytest.raises(GraphicsError, match=f"{ENVIRONMENT}='png': expected one of auto, sixel, kitty, halfblock"):
        choose_mode()
    assert main([]) == 2  # the app does not start
    assert f"{ENVIRONMENT}='png'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(["--images", "png"])
    assert exit_info.value.code == 2
    assert "invalid choice: 'png'" in capsys.readouterr().err


def test_graphics_without_the_optional_package_say_how_to_install_it(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    for name in [m for m in sys.modules if m.startswith("textual_image")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "textual_image", None)  # import fails as if not installed
    monkeypatch.delenv(ENVIRONMENT, raising=False)
    with pytest.raises(GraphicsError, match=r"--images=sixel needs the optional package textual-image: "
                                            r"pip install 'cifartui\[images\]'"):
        choose_mode("sixel")
    assert choose_mode("auto") == "halfblock"
    assert main(["--images", "kitty"]) == 2
    assert "cifartui[images]" in capsys.readouterr().err


def _image(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (3, 32, 32), dtype=np.uint8)


def test_sixel_samples_in_the_inspect_view(tmp_path: Path) -> None:
    from textual_image.widget import SixelImage

    from tests.test_app import _trained_run, open_inspect

    run_dir = _trained_run(tmp_path)

    async def scenario() -> None:
        app = make_app(runs_dir=tmp_path / "runs", offer_resume=False, image_mode="sixel")
        async with app.run_test(size=(100, 30)) as pilot:
            screen = await open_inspect(pilot, app, run_dir)
            tile = screen.query(".sample").first()
            picture = tile.query_one(".picture")
            assert isinstance(picture, SixelImage)
            assert "true " in str(tile.query_one(".caption", Static).render())
            screen.query_one("#inspect-tabs").active = "tab-samples"
            await pilot.pause()
            await wait_for(pilot, lambda: picture.children and picture.children[0].size.width == 32)
            lines = picture.children[0].render_lines(Region(0, 0, 32, 16))
            data = "".join(segment.text for strip in lines for segment in strip)
            # One sixel image of 32x16 cells at the default 10x20-pixel cell (pytest's output is no terminal).
            assert data.count('\x1bP0;0;0q"1;1;320;320') == 1 and data.count("\x1b\\") == 1
            assert len(re.findall(r"#\d+;2;\d+;\d+;\d+", data)) > 8  # the image's colours as sixel registers
    run(scenario())


def test_kitty_graphics_send_the_image_itself(capfd: pytest.CaptureFixture[str]) -> None:
    from PIL import Image as PILImage
    from textual_image.widget import TGPImage

    from cifartui.ui.graphics import PIXEL_REPEAT, picture

    image = _image()
    widget = picture(image, "kitty")
    assert isinstance(widget, TGPImage)
    renderable = widget.render()
    from rich.console import Console

    console = Console(width=32, height=16, force_terminal=True, color_system="truecolor", file=io.StringIO())
    lines = console.render_lines(renderable, console.options.update_dimensions(32, 16))
    text = "".join(segment.text for line in lines for segment in line)
    assert text.count(chr(0x10EEEE)) == 32 * 16  # one placeholder a cell, which the terminal fills with the image
    written = capfd.readouterr().out  # the image travels straight to the terminal, outside Textual's screen
    chunks = re.findall(r"\x1b_G([^;\x1b]*);([^\x1b]*)\x1b\\", written)
    payload = "".join(data for keys, data in chunks if "f=100" in keys)  # f=100: PNG
    sent = np.asarray(PILImage.open(io.BytesIO(base64.b64decode(payload))).convert("RGB"))
    assert sent.shape == (320, 320, 3)  # 32x16 cells of 10x20 pixels
    assert PIXEL_REPEAT == 10  # so each source pixel is a 10x10 block in the picture sent
    np.testing.assert_array_equal(sent[::PIXEL_REPEAT, ::PIXEL_REPEAT], image.transpose(1, 2, 0))


def test_half_blocks_are_the_default_picture() -> None:
    from cifartui.ui.graphics import picture

    widget = picture(_image(), "halfblock")
    assert isinstance(widget, Static) and str(widget.content).count("▀") == 32 * 16
