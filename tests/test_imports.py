"""`import dorl`, `import dorl.runtime` and `dorl --help` must not load torch."""

import subprocess
import sys

import pytest

CHECK = "import sys; {stmt}; print(','.join(m for m in ('torch', 'torchvision', 'segment_anything') if m in sys.modules))"


@pytest.mark.parametrize("stmt", ["import dorl", "import dorl.runtime", "import dorl.cli",
                                  "import dorl.artifacts, dorl.config, dorl.deps"])
def test_no_torch_on_import(stmt):
    out = subprocess.run([sys.executable, "-c", CHECK.format(stmt=stmt)], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"{stmt} loaded {out.stdout.strip()}"


def test_cli_help_loads_no_torch():
    code = ("import sys\nfrom typer.testing import CliRunner\nfrom dorl.cli import app\n"
            "r = CliRunner().invoke(app, ['--help'])\nassert r.exit_code == 0, r.output\n"
            "print(r.output)\nprint('TORCH' if 'torch' in sys.modules else 'CLEAN')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().endswith("CLEAN")
    for command in ("train", "evaluate", "export", "calibrate", "build", "predict", "bench", "demo", "info", "adapt"):
        assert command in out
