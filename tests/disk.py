"""Hashes of every file under a directory, for 'a failing run changed nothing on disk' checks."""
import hashlib
import os


def snapshot(root: str) -> dict[str, str]:
    """{relative path: sha256 of its bytes} for every file under `root`, plus every directory
    (value "dir"), so a created empty folder counts as a change too. {} when root is absent."""
    out: dict[str, str] = {}
    if not os.path.exists(root):
        return out
    if os.path.isfile(root):
        with open(root, "rb") as f:
            return {".": hashlib.sha256(f.read()).hexdigest()}
    for dirpath, dirs, files in os.walk(root):
        for d in dirs:
            out[os.path.relpath(os.path.join(dirpath, d), root) + "/"] = "dir"
        for name in files:
            p = os.path.join(dirpath, name)
            with open(p, "rb") as f:
                out[os.path.relpath(p, root)] = hashlib.sha256(f.read()).hexdigest()
    return out
