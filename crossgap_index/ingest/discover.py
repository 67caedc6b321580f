"""Find image files under folders: recursive, case-insensitive extensions, junk folders skipped."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable, Sequence
from fnmatch import fnmatchcase
from pathlib import Path

from crossgap_index.errors import QueryError

# .heic/.heif decode through pillow-heif (the `heif` extra), .avif through Pillow's own plugin
IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".heic", ".heif", ".avif"}
)
SKIPPED_DIRS = frozenset(
    {".git", ".hg", ".svn", "node_modules", "__pycache__", ".venv", "venv", ".tox", ".cache", "@eaDir"}
)


# Folders NAS boxes, desktops and archivers fill with thumbnails, trash and copies of the photos (names as
# fnmatch patterns): never indexed, whatever --exclude adds.
DEFAULT_EXCLUDES = (
    "@eaDir",  # Synology thumbnails
    "#recycle",  # Synology recycle bin
    "#snapshot",  # Synology snapshots
    "@Recycle",  # QNAP recycle bin
    "@Recently-Snapshot",  # QNAP snapshots
    ".@__thumb",  # QNAP thumbnails
    ".thumbnails",  # freedesktop thumbnails
    ".Trash-*",  # freedesktop trash on removable and network drives
    "__MACOSX",  # macOS resource forks in zip archives
    "$RECYCLE.BIN",  # Windows recycle bin
    "System Volume Information",  # Windows
    "lost+found",  # fsck
    ".git",
)


def is_excluded(relative: str, patterns: Iterable[str]) -> bool:
    """Whether a folder or file (its path relative to the root, with ``/``) matches one of ``patterns``: a
    pattern without ``/`` matches any one name on the way (``@eaDir``, ``*.tmp.jpg``), one with ``/`` the
    whole relative path (``2019/raw/*``; ``*`` crosses ``/`` there). Case-sensitive, as the file system is."""
    names = relative.split("/")
    for pattern in patterns:
        if "/" in pattern:
            if fnmatchcase(relative, pattern.strip("/")):
                return True
        elif any(fnmatchcase(name, pattern) for name in names):
            return True
    return False


def is_image_path(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS


def file_kind(mode: int) -> str:
    """What a non-regular file is, for a one-line reason ("a FIFO", "a character device", ...)."""
    kinds = (
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISDIR, "a directory"),
    )
    return next((name for test, name in kinds if test(mode)), "a special file")


def find_images(roots: Iterable[Path], include_hidden: bool = False, exclude: Iterable[str] = ()) -> list[Path]:
    """Absolute paths of image files under ``roots`` (files given directly are kept), sorted. Folders and
    files matching ``exclude`` or DEFAULT_EXCLUDES (see is_excluded) are left out, folders unvisited."""
    patterns = (*DEFAULT_EXCLUDES, *exclude)
    found: set[Path] = set()
    for root in roots:
        root = Path(root).expanduser().resolve()
        if root.is_file():
            if is_image_path(root):
                found.add(root)
            continue
        for dirpath, dirnames, filenames in os.walk(root):
            here = os.path.relpath(dirpath, root).replace(os.sep, "/")
            prefix = "" if here == "." else here + "/"
            dirnames[:] = [
                d for d in dirnames if _keep_dir(d, include_hidden) and not is_excluded(prefix + d, patterns)
            ]
            found.update(
                Path(dirpath) / name
                for name in filenames
                if _keep_file(name, include_hidden) and not is_excluded(prefix + name, patterns)
            )
    return sorted(found)


def would_find(
    path: Path,
    roots: Iterable[Path],
    include_hidden: bool = False,
    folder: bool = False,
    exclude: Iterable[str] = (),
) -> bool:
    """Whether ``find_images(roots, include_hidden, exclude)`` finds the absolute ``path`` (``folder``: walks
    into it), by name alone: the rule a watcher applies to one changed path without walking the roots again."""
    patterns = (*DEFAULT_EXCLUDES, *exclude)
    for root in roots:
        if path == root:
            return folder or is_image_path(path)
        if root in path.parents:
            parts = path.relative_to(root).parts
            folders, name = (parts, None) if folder else (parts[:-1], parts[-1])
            if is_excluded("/".join(parts), patterns):
                return False
            return all(_keep_dir(d, include_hidden) for d in folders) and (
                name is None or _keep_file(name, include_hidden)
            )
    return False


def _keep_dir(name: str, include_hidden: bool) -> bool:
    if name in SKIPPED_DIRS:
        return False
    return include_hidden or not name.startswith(".")


def _keep_file(name: str, include_hidden: bool) -> bool:
    return (include_hidden or not name.startswith(".")) and is_image_path(Path(name))


def resolve_roots(roots: Iterable[str | Path]) -> list[Path]:
    """Absolute paths of ``roots``; a one-line error names the first that does not exist."""
    resolved = [Path(r).expanduser().resolve() for r in roots]
    for root in resolved:
        if not root.exists():
            raise QueryError(f"no such file or folder: {root}")
    return resolved


def paths_to_sync(
    changed: Iterable[Path], roots: Sequence[Path], include_hidden: bool, exclude: Iterable[str] = ()
) -> tuple[list[Path], list[Path]]:
    """(image files to index, paths to prune under) for changed paths: an existing file that a build of
    ``roots`` would find; an existing folder, walked; a path gone from disk, pruned with everything under it."""
    exclude = tuple(exclude)
    files: set[Path] = set()
    prune: list[Path] = []
    for path in changed:
        if path.is_dir():
            if would_find(path, roots, include_hidden, folder=True, exclude=exclude):
                files.update(find_images([path], include_hidden, exclude))
                prune.append(path)
        elif path.exists():
            if would_find(path, roots, include_hidden, exclude=exclude):
                files.add(path)
                prune.append(path)
        elif any(path == root or root in path.parents for root in roots):
            prune.append(path)
    return sorted(files), prune
