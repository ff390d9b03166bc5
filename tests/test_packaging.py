"""The wheel installs one namespace, `divconq`, and no bare `graph`/`nodes`/`distill` modules."""

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_wheel_holds_only_the_divconq_namespace(tmp_path):
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(ROOT)],
        check=True,
        timeout=300,
    )
    (wheel,) = tmp_path.glob("divconq-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top = {name.split("/")[0] for name in names}
    assert top == {"divconq", f"{wheel.name.split('-')[0]}-{wheel.name.split('-')[1]}.dist-info"}
    for package in ("graph", "nodes", "distill"):
        assert f"divconq/{package}/__init__.py" in names
    assert "divconq/cli.py" in names
    assert not any(name.startswith(("divconq/tests", "divconq/bench", "divconq/examples")) for name in names)


def test_subpackages_import_from_their_folders():
    import divconq.distill
    import divconq.graph
    import divconq.nodes

    assert Path(divconq.graph.__file__).parent == ROOT / "graph"
    assert Path(divconq.nodes.__file__).parent == ROOT / "nodes"
    assert Path(divconq.distill.__file__).parent == ROOT / "distill"
