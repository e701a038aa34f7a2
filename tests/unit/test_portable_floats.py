"""The decision path computes no float that depends on the machine."""

from __future__ import annotations

import re
from pathlib import Path

import dispatcher

ROOT = Path(dispatcher.__file__).parent
# numpy's elementwise exp, log, power... take SIMD paths chosen by the CPU (AVX-512 or not),
# whose last bits differ from libm's: on an AVX-512 machine np.exp differed from math.exp for
# about 1 in 20 of the simulator's agent speeds, and every simulated decision stream moved.
# The core and what makes its inputs (the simulator, the demo) use math's functions.
_SIMD = re.compile(r"\bnp\.(exp|expm1|exp2|log|log1p|log2|log10|power|float_power|sin|cos|tan|"
                   r"arcsin|arccos|arctan|arctan2|sinh|cosh|tanh|cbrt|hypot)\(")  # fmt: skip


def test_no_simd_transcendental_functions_where_decisions_are_made() -> None:
    found = [
        f"{path.relative_to(ROOT.parent)}:{n}: {line.strip()}"
        for part in ("core", "sim", "demo.py")
        for path in sorted((ROOT / part).rglob("*.py") if (ROOT / part).is_dir() else [ROOT / part])
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if _SIMD.search(line)
    ]
    assert found == []
