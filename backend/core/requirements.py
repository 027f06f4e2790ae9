"""The backend's Python packages, read from the one place they are declared.

Standard library only, and no syntax newer than Python 3.7: ``python -m backend``
reads these to tell a user which packages their Python lacks, before it knows that
this Python can run anything else.

The packages are the ``backend`` extra of pyproject.toml. build.py writes that list
into the add-on's zip as `REQUIREMENTS_FILE`, beside backend/; a source checkout has
pyproject.toml there instead. The add-on's installer, the backend's start-up check
and build.py all read them through this module.
"""

from __future__ import annotations

import re
from pathlib import Path

REQUIREMENTS_FILE = "backend_requirements.txt"
EXTRA = "backend"  # the optional-dependency list in pyproject.toml


def backend_requirements(root) -> list[str]:
    """The backend's requirement strings (e.g. "torch==2.13.0").

    root: the folder that holds backend/ (a built add-on's own folder, which has
    `REQUIREMENTS_FILE`, or a checkout's root, which has pyproject.toml). Raises
    ValueError when neither is there.
    """
    root = Path(root)
    shipped = root / REQUIREMENTS_FILE
    if shipped.is_file():
        return parse_requirements(shipped.read_text(encoding="utf-8"))
    pyproject = root / "pyproject.toml"
    if pyproject.is_file():
        return pyproject_requirements(pyproject)
    raise ValueError(f"{root} lists no backend packages (no {REQUIREMENTS_FILE}, no "
                     "pyproject.toml): reinstall the add-on from a zip made by build.py")


def parse_requirements(text: str) -> list[str]:
    """Requirement lines of a requirements file (comments and blanks dropped)."""
    lines = (line.split("#", 1)[0].strip() for line in text.splitlines())
    return [line for line in lines if line]


def requirements_text(requirements: list[str]) -> str:
    """The contents of `REQUIREMENTS_FILE` for these requirements (what build.py writes)."""
    return ("# The backend's packages: the 'backend' extra of pyproject.toml "
            "(written by build.py)\n" + "\n".join(requirements) + "\n")


def pyproject_requirements(pyproject, extra: str = EXTRA) -> list[str]:
    """The requirements of one optional-dependency extra in a pyproject.toml."""
    import tomllib  # Python 3.11+: only reached once the Python version was checked

    data = tomllib.loads(Path(pyproject).read_text(encoding="utf-8"))
    extras = data.get("project", {}).get("optional-dependencies", {})
    if extra not in extras:
        raise ValueError(f"{pyproject} has no [project.optional-dependencies] {extra!r} list")
    return list(extras[extra])


def distribution_name(requirement: str) -> str:
    """The distribution a requirement names: "torch==2.13.0" -> "torch"."""
    return re.split(r"[<>=!~\[; ]", requirement.strip(), maxsplit=1)[0]


def requirement_for(distribution: str, requirements: list[str]) -> str:
    """The requirement (with its version pin) that names ``distribution``, else the
    bare name."""
    for requirement in requirements:
        if distribution_name(requirement).lower() == distribution.lower():
            return requirement
    return distribution
