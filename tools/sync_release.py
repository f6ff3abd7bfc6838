"""Point the notebooks and the README at the repository and release named in pyproject.toml.

The repository URL (``[project.urls] Repository``) and the version (``[project] version``)
live in ``pyproject.toml`` only. The notebooks cannot read it on Colab or Kaggle (their setup
cell runs before anything is installed), so they carry copies, which this script writes:

* each notebook's setup cell installs ``git+<Repository>@v<version>``;
* each notebook's "Open in Colab" / "Open in Kaggle" badges, and the README's, open
  ``<Repository>/blob/v<version>/notebooks/<name>``: the notebooks of the release the cell
  installs (``RELEASING.md`` says why).

``python tools/sync_release.py`` rewrites what is out of date; ``--check`` changes nothing and
exits 1 naming the files that are (``tests/test_notebooks.py`` runs the check).
"""

from __future__ import annotations

import argparse
import re
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OWNER_REPO = r"[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+"
REF = r"[A-Za-z0-9_.-]+"


def release() -> tuple[str, str]:
    """``(repository URL, "v<version>")`` from ``pyproject.toml``."""
    with (ROOT / "pyproject.toml").open("rb") as handle:
        project = tomllib.load(handle)["project"]
    return project["urls"]["Repository"].rstrip("/"), f"v{project['version']}"


def rewrite(text: str, repository: str, tag: str) -> str:
    """``text`` with every install pin and notebook badge pointed at ``repository``@``tag``."""
    github = repository.removeprefix("https://github.com/")
    text = re.sub(rf"git\+https://github\.com/{OWNER_REPO}@{REF}", f"git+{repository}@{tag}", text)
    text = re.sub(
        rf"https://colab\.research\.google\.com/github/{OWNER_REPO}/blob/{REF}/notebooks/",
        f"https://colab.research.google.com/github/{github}/blob/{tag}/notebooks/",
        text,
    )
    return re.sub(
        rf"src=https://github\.com/{OWNER_REPO}/blob/{REF}/notebooks/",
        f"src={repository}/blob/{tag}/notebooks/",
        text,
    )


def targets() -> list[Path]:
    """The files that carry copies: the six notebooks and the README."""
    return [*sorted((ROOT / "notebooks").glob("*.ipynb")), ROOT / "README.md"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 if stale")
    args = parser.parse_args(argv)
    repository, tag = release()
    stale = []
    for path in targets():
        text = path.read_text(encoding="utf-8")
        new = rewrite(text, repository, tag)
        if new != text:
            stale.append(path.relative_to(ROOT))
            if not args.check:
                path.write_text(new, encoding="utf-8")
    verb = "out of date" if args.check else "rewritten"
    for path in stale:
        print(f"{path}: {verb} (pointed at {repository}@{tag})")
    return 1 if stale and args.check else 0


if __name__ == "__main__":
    sys.exit(main())
