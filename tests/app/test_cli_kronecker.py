"""``curvprobe spectrum --kronecker`` prints the β/φ table and draws its figure;
``curvprobe plot`` draws it again from ``kronecker.nc`` (issue #15), as a user runs them."""

from __future__ import annotations

import math

from test_cli import cli

from curvprobe.results import load


def test_spectrum_kronecker_prints_the_table_and_plot_draws_kronecker_nc(env, tmp_path):
    out = tmp_path / "spectrum"
    result = cli(["spectrum", "--model", "builtin:mlp", "--num-data", "32", "--top-k", "3", "--kronecker",
                  "--out", str(out), "--threads", "1"], env)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if "β + φ" in line)
    cells = [c.strip() for c in lines[start].strip("|").split("|")]
    assert cells[:6] == ["layer", "α", "β", "φ", "β + φ", "2 + φ"]
    kron = load(out / "kronecker.nc")
    for name in kron["layer"].values:
        row = next(line for line in lines[start:] if line.startswith(f"| {name} "))
        beta = float(kron["beta"].sel(layer=name))
        assert row.split("|")[3].strip() == (f"{beta:.3g}" if math.isfinite(beta) else "–"), row
    assert any(math.isfinite(float(b)) for b in kron["beta"].values)
    assert (out / "kronecker.png").stat().st_size > 0
    (out / "kronecker.png").unlink()
    drawn = cli(["plot", str(out / "kronecker.nc")], env)
    assert drawn.returncode == 0, drawn.stderr
    assert (out / "kronecker.png").stat().st_size > 0
    assert str(out / "kronecker.png") in drawn.stdout
