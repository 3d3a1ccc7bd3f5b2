"""Checkpoint markers that holdfast can verify: standard library only.

holdfast resumes a job from the newest checkpoint `<prefix>/step-N/` whose `COMPLETE` marker
exists (written last). A marker made here also carries a manifest, each file of the checkpoint
with its size and SHA-256:

    {"step": 40, "generation": 3,
     "files": {"model.pt": {"size": 1048576, "sha256": "9f86d0…"}}}

The coordinator checks every listed file's size before it resumes from a checkpoint (and its
SHA-256 too with `checkpoint_verify_checksums = true`); a truncated, corrupted or missing file
makes it pass the checkpoint over for the previous one and say why in the incident.

    from holdfast import checkpoint
    store.put(f"step-{step}/model.pt", data)
    store.put(f"step-{step}/COMPLETE", checkpoint.marker(step, generation, {"model.pt": data}))

For a checkpoint written to a local directory, `write_marker(directory, step, generation)`
lists every file under it.
"""
import hashlib
import json
import os

MARKER = "COMPLETE"
_CHUNK = 1 << 20


def entry(data):
    """The manifest entry of one file's bytes."""
    return {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def marker(step, generation, files):
    """The marker's bytes for a checkpoint at `step` written by `generation`; `files` maps each
    file's path inside the checkpoint (`model.pt`, `optim/rank-0.pt`) to its bytes."""
    manifest = {name: entry(data) for name, data in files.items()}
    return json.dumps({"step": step, "generation": generation, "files": manifest}).encode()


def _file_entry(path):
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return {"size": size, "sha256": digest.hexdigest()}


def write_marker(directory, step, generation):
    """Writes `directory/COMPLETE` for the files under `directory` (every file but the marker),
    durably: call it once every file is written and synced."""
    manifest = {}
    for root, _, names in os.walk(directory):
        for name in names:
            path = os.path.join(root, name)
            relative = os.path.relpath(path, directory).replace(os.sep, "/")
            if relative != MARKER:
                manifest[relative] = _file_entry(path)
    body = json.dumps({"step": step, "generation": generation, "files": manifest})
    path = os.path.join(directory, MARKER)
    with open(path + ".tmp", "w") as f:
        f.write(body)
        f.flush()
        os.fsync(f.fileno())
    os.replace(path + ".tmp", path)
