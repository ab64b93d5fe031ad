"""`latentdesk models`: the catalogue, the models already here, and downloads from the Hugging Face Hub.

    latentdesk models list [--json]
    latentdesk models get NAME | REPO_ID:FILE [--revision R] [--to DIR]

`list` shows the catalogue (resources/catalogue.json: name, kind, size, title, and where it is when
installed) and the models found in the models folder and in the folders LATENTDESK_MODEL_DIRS names.
`get` downloads a catalogue entry (into the models folder, laid out as the window's "Get models" puts
it) or any REPO_ID:FILE (into the models folder itself) with core.fetch.download: a progress bar on
stderr, the file's path as the last line of stdout. Interrupted (Ctrl-C, a killed process, a dropped
line), the same command resumes where it stopped. HF_ENDPOINT, HF_HUB_OFFLINE, HF_TOKEN (or
`hf auth login`) and the usual proxy variables apply. Failures exit 2 with one line saying why.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from core.errors import LatentDeskError
from core.eta import clock
from core.fetch.catalogue import KIND_SUBFOLDERS


def add_models_commands(commands) -> None:
    models = commands.add_parser("models", help="list models, or download one from the Hugging Face Hub")
    actions = models.add_subparsers(dest="models_action", required=True)
    listing = actions.add_parser("list", help="the catalogue, and the models installed (with where each is)")
    listing.add_argument("--json", action="store_true", help="print one JSON document")
    listing.set_defaults(handler=run_list)
    get = actions.add_parser("get", help="download a catalogue model (NAME) or any REPO_ID:FILE from the Hub")
    get.add_argument("model", metavar="NAME | REPO_ID:FILE",
                     help="a name from `latentdesk models list`, or e.g. owner/repo:model.safetensors")
    get.add_argument("--revision", help="a branch, tag or commit (default: the catalogue's, else main)")
    get.add_argument("--to", metavar="DIR", help="the folder to put it in (default: the models folder)")
    get.set_defaults(handler=run_get)


def models_dir() -> Path:
    from app.paths import default_data_dir
    return default_data_dir() / "models"


def run_get(args) -> int:
    from core.fetch.catalogue import find_entry
    from core.fetch.download import fetch

    if ":" in args.model:
        repo, file = (part.strip() for part in args.model.split(":", 1))
        if not repo or not file:
            raise LatentDeskError(f"{args.model!r}: give REPO_ID:FILE, e.g. owner/repo:model.safetensors")
        revision, save_as, folder = args.revision or "main", None, models_dir()
    else:
        entry = find_entry(args.model)
        if entry is None:
            raise LatentDeskError(f"no model called {args.model!r} in the catalogue; `latentdesk models list` "
                                  "shows its names (or give REPO_ID:FILE)")
        repo, file, save_as = entry.repo, entry.file, entry.save_as or None
        revision = args.revision or entry.revision or "main"
        folder = entry.folder_in(models_dir())
    if args.to:
        folder = Path(args.to).expanduser()
    bar = ByteProgressBar()
    try:
        path = fetch(repo, file, folder, revision=revision, save_as=save_as, on_progress=bar.update)
    except KeyboardInterrupt:
        bar.close()
        print("latentdesk: interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    finally:
        bar.close()
    print(path)
    return 0


def run_list(args) -> int:
    from core.fetch.catalogue import load_catalogue

    home = models_dir()
    catalogue = [{"name": e.name, "title": e.title, "kind": e.kind, "family": e.family, "size_bytes": e.size_bytes,
                  "repo": e.repo, "file": e.file, "revision": e.revision, "licence": e.licence,
                  "installed": installed_path(home, e)} for e in load_catalogue()]
    installed = installed_models(home)
    for model in installed:      # the models folder's top holds checkpoints and TAESD decoders: say which
        model["kind"] = next((e["kind"] for e in catalogue if e["installed"] == model["path"]), model["kind"])
    if args.json:
        print(json.dumps({"models_dir": str(home), "catalogue": catalogue, "installed": installed}, indent=1))
        return 0
    print("Catalogue (latentdesk models get NAME):")
    width = max((len(e["name"]) for e in catalogue), default=4)
    for e in catalogue:
        where = f"  [installed: {e['installed']}]" if e["installed"] else ""
        print(f"  {e['name']:<{width}}  {e['kind']:<10}  {size_text(e['size_bytes']):>8}  {e['title']}{where}")
    print(f"\nInstalled (models folder {home}; shared folders from LATENTDESK_MODEL_DIRS):")
    for m in installed:
        print(f"  {m['kind']:<10}  {m['path']}  ({m['where']})")
    if not installed:
        print("  none yet")
    return 0


def installed_path(home: Path, entry) -> str | None:
    path = entry.path_in(home)
    return str(path) if path.is_file() else None


def installed_models(home: Path) -> list[dict]:
    """The models in the models folder (its kind subfolders first, so each keeps its kind) and in the
    shared folders, each once, with the folder it was found in."""
    from core.fetch.folders import ModelFolder, env_model_folders, scan

    own = [ModelFolder(home / sub, kind, "user") for kind, sub in KIND_SUBFOLDERS.items() if sub]
    own = [f for f in own if f.path.is_dir()] + ([ModelFolder(home, "checkpoint", "user")] if home.is_dir() else [])
    found = []
    for model in scan(own + env_model_folders()):
        where = "models folder" if model.folder in own else f"{model.folder.source}: {model.folder.path}"
        found.append({"path": str(model.path), "kind": model.kind, "where": where})
    return found


def size_text(n: int | float) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e9 else f"{n / 1e6:.1f} MB"


class ByteProgressBar:
    """One line on stderr: bar, bytes done of total, and the speed and time left fetch reports."""

    def __init__(self, stream=None, width: int = 30):
        self.stream = stream if stream is not None else sys.stderr
        self.width = width
        self.drawn = False

    def update(self, progress) -> None:
        if self.stream is None:      # a windowed app has no stderr
            return
        filled = round(self.width * progress.done / max(progress.total, 1))
        speed = f"{progress.rate / 1e6:.1f} MB/s ETA {clock(progress.seconds_left)}" if progress.rate else ""
        self.stream.write(f"\r[{'#' * filled}{'.' * (self.width - filled)}] "
                          f"{size_text(progress.done)} / {size_text(progress.total)} {speed} ")
        self.stream.flush()
        self.drawn = True

    def close(self) -> None:
        if self.drawn and self.stream is not None:
            self.stream.write("\n")
            self.stream.flush()
        self.drawn = False
