"""The engine runs without the UI: importing it must not import textual."""

import subprocess
import sys


def test_engine_imports_no_textual() -> None:
    code = (
        "import sys\n"
        "import cifartui.engine.train.trainer, cifartui.engine.train.data, cifartui.engine.train.models\n"
        "import cifartui.engine.train.augment, cifartui.engine.train.schedules, cifartui.engine.runs.checkpoint\n"
        "import cifartui.engine.runs.folders, cifartui.engine.runs.events, cifartui.engine.train.optim\n"
        "import cifartui.presets, cifartui.config\n"
        "print(sorted(m for m in sys.modules if m == 'textual' or m.startswith('textual.')))\n"
    )
    output = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert output.strip() == "[]"
