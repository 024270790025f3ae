"""The command that installs an optional part, worded for how the library was installed.

From a source checkout (an editable install, or running inside the repository) the extra comes
from the checkout: ``pip install -e ".[compare]"``, run at the checkout's root. From a wheel it
comes from the package index: ``pip install "llmds-torch[compare]"``.
"""

from pathlib import Path

DISTRIBUTION = "llmds-torch"


def source_checkout() -> Path | None:
    """The repository root when the library runs from a source checkout, else None."""
    root = Path(__file__).resolve().parent.parent
    return root if (root / "pyproject.toml").is_file() and (root / "llmds_torch").is_dir() else None


def install_hint(extra: str) -> str:
    """The pip command that installs ``extra`` (``"compare"``, ``"hf"``, ``"gpu"``, ``"test"``)."""
    root = source_checkout()
    if root is not None:
        return f'pip install -e ".[{extra}]" in {root}'
    return f'pip install "{DISTRIBUTION}[{extra}]"'


__all__ = ["install_hint", "source_checkout"]
