"""Small file helpers that work on local paths and, through Beam's FileSystems, on
remote ones (gs://, s3://, hdfs://) so the same artifacts serve local and cloud runs."""
from __future__ import annotations

import contextlib
import io
import os
from typing import Iterable, Iterator


def _remote(path: str) -> bool:
    return "://" in path


def exists(path: str) -> bool:
    if _remote(path):
        from apache_beam.io.filesystems import FileSystems

        return FileSystems.exists(path)
    return os.path.exists(path)


def read_text(path: str) -> str:
    if _remote(path):
        from apache_beam.io.filesystems import FileSystems

        with FileSystems.open(path) as f:
            return f.read().decode("utf-8")
    with open(path, encoding="utf-8") as f:
        return f.read()


def write_text(path: str, text: str) -> None:
    if _remote(path):
        from apache_beam.io.filesystems import FileSystems

        with FileSystems.create(path) as f:
            f.write(text.encode("utf-8"))
        return
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)


def read_lines(path: str) -> list[str]:
    return [line for line in read_text(path).split("\n") if line]


def write_lines(path: str, lines: Iterable[str]) -> None:
    """Writes one line per string, streaming: a vocabulary of 10^8 ids never sits in memory whole."""
    with open_write(path) as f:
        for line in lines:
            f.write(line)
            f.write("\n")


@contextlib.contextmanager
def open_write(path: str) -> Iterator[io.TextIOBase]:
    """A UTF-8 text file opened for writing (parent directories made when local)."""
    if _remote(path):
        from apache_beam.io.filesystems import FileSystems

        with FileSystems.create(path) as raw, io.TextIOWrapper(raw, encoding="utf-8", newline="") as f:
            yield f
        return
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="") as f:
        yield f


def open_text(path: str) -> io.TextIOBase:
    """A UTF-8 text file opened for reading, local or remote."""
    if _remote(path):
        from apache_beam.io.filesystems import FileSystems

        return io.TextIOWrapper(FileSystems.open(path), encoding="utf-8", newline="")
    return open(path, encoding="utf-8", newline="")


def join(base: str, *parts: str) -> str:
    if _remote(base):
        return "/".join([base.rstrip("/"), *parts])
    return os.path.join(base, *parts)
