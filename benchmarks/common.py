"""What the benchmark scripts share: print the report as one JSON line and, with `--out`, write it to a file."""
from __future__ import annotations

import json
import os
from typing import Any, Dict, Optional


def emit(report: Dict[str, Any], out: Optional[str] = None) -> Dict[str, Any]:
    """Print `report` as one JSON line; with `out`, also write it there (indented, its folder created)."""
    print(json.dumps(report, default=str))
    if out:
        os.makedirs(os.path.dirname(os.path.abspath(out)) or ".", exist_ok=True)
        with open(out, "w") as f:
            json.dump(report, f, indent=1, default=str)
    return report
