"""The model catalogue: the curated downloads in resources/catalogue.json, read and checked.

    load_catalogue(path=None)        every entry, each field checked; LatentDeskError names a bad one
    find_entry(name, entries=None)   the entry a command line id ("sd15", "taesd", ...) names, or None

Each entry says where a file is on the Hugging Face Hub (repo, file, revision), what to call it in
the models folder (save_as), roughly how big it is, its licence, and the settings it is meant to be
used with. It holds no hash on purpose: a hash we did not measure would only be a guess, and the
download checks the file against the sha256 the Hub itself publishes for it.

The checks are strict because the file is data that other code trusts: a typo in a repo id is a 404
for every user, and a `save_as` with a "/" in it would write outside the models folder.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, fields
from pathlib import Path, PurePosixPath

from core.errors import LatentDeskError, shown
from core.limits import Span, Whole, check_size, require
from core.loading.untrusted_json import UnreadableJson, loads
from core.resources import resources_dir
from core.sampling.sampler_names import SAMPLER_NAMES, SCHEDULE_NAMES

KINDS = ("checkpoint", "lora", "vae", "taesd", "embedding")
FAMILIES = ("sd1", "sd2", "sdxl")
# Kinds that generate images themselves or change how a model does: their entries say how to use them.
KINDS_WITH_SETTINGS = ("checkpoint", "lora")
# A preset's schedule type is a request's (A1111's names, e.g. "SGM Uniform" for Turbo's trailing steps).
SCHEDULES = SCHEDULE_NAMES
MAX_STEPS = 150                      # A1111's slider stops here; a catalogue preset needs far fewer

_NAME = re.compile(r"[a-z0-9][a-z0-9.-]*")
# The Hub's repo ids: owner/name, letters, digits, "-", "_" and "."; "--" and ".." are refused there too.
_REPO = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*")
_REVISION = re.compile(r"[A-Za-z0-9][A-Za-z0-9_./-]*")
REQUIRED_SETTINGS = ("sampler", "steps", "guidance", "width", "height")
OPTIONAL_SETTINGS = ("schedule",)


@dataclass(frozen=True)
class CatalogueEntry:
    name: str              # the command line's id: "sd15", "lcm-lora-sdxl", "taesd"
    title: str             # for people
    kind: str              # one of KINDS
    family: str            # one of FAMILIES
    repo: str              # the Hub repo id, "owner/name"
    file: str              # the file's path inside the repo
    revision: str          # a branch, tag or commit of the repo
    save_as: str           # the file's name in the models folder
    size_bytes: int        # approximate, from the publisher's file page: for the progress bar and a disk check
    licence: str
    licence_url: str
    about: str             # what it is good for, one sentence
    settings: dict         # sampler (A1111's name), steps, guidance, width, height, optional schedule
    source: str            # the pages its repo, file, size and licence were checked on

    @property
    def url(self) -> str:
        """The file's page on the Hub, for people (a download uses repo, file and revision)."""
        return f"https://huggingface.co/{self.repo}/blob/{self.revision}/{self.file}"

    def folder_in(self, models_dir: Path) -> Path:
        """Where a download of this entry goes under the models folder (the window's and the CLI's)."""
        return models_dir / KIND_SUBFOLDERS.get(self.kind, self.kind)

    def path_in(self, models_dir: Path) -> Path:
        """The file a finished download of this entry is."""
        return self.folder_in(models_dir) / (self.save_as or Path(self.file).name)


# Where each kind goes under the models folder. Checkpoints and TAESD decoders stay at the top: the
# picker lists the top folder's models, and a model's preview decoder is looked for beside it.
KIND_SUBFOLDERS = {"checkpoint": "", "taesd": "", "lora": "loras", "vae": "vae", "embedding": "embeddings"}


_FIELDS = tuple(f.name for f in fields(CatalogueEntry))


def default_catalogue_path() -> Path:
    return resources_dir() / "catalogue.json"


def load_catalogue(path: Path | None = None) -> list[CatalogueEntry]:
    """The entries of `path` (default: the shipped resources/catalogue.json), in the file's order."""
    path = Path(path) if path is not None else default_catalogue_path()
    try:
        data = loads(path.read_bytes())
    except OSError as error:
        raise LatentDeskError(f"the model catalogue {path} cannot be read: {error.strerror or error}") from None
    except UnreadableJson as error:
        raise LatentDeskError(f"the model catalogue {path} is {error}") from None
    if not isinstance(data, list):
        raise LatentDeskError(f"the model catalogue {path} must be a JSON list of entries, not {type(data).__name__}")
    entries: list[CatalogueEntry] = []
    for index, raw in enumerate(data):
        entry = _entry(raw, _label(path, index, raw))
        if any(known.name == entry.name for known in entries):
            raise LatentDeskError(f"{_label(path, index, raw)}: the name {entry.name!r} is used twice")
        entries.append(entry)
    return entries


def find_entry(name: str, entries: list[CatalogueEntry] | None = None) -> CatalogueEntry | None:
    """The entry called `name` (case and surrounding spaces ignored: it is typed on a command line)."""
    wanted = name.strip().lower()
    for entry in load_catalogue() if entries is None else entries:
        if entry.name == wanted:
            return entry
    return None


def _label(path: Path, index: int, raw) -> str:
    """How a message names an entry: its position, and its name when it has a readable one."""
    name = raw.get("name") if isinstance(raw, dict) else None
    named = f" ({shown(name, 40)})" if isinstance(name, str) else ""
    return f"the model catalogue {path}, entry {index + 1}{named}"


def _entry(raw, label: str) -> CatalogueEntry:
    if not isinstance(raw, dict):
        raise LatentDeskError(f"{label} must be a JSON object, not {type(raw).__name__}")
    missing = [name for name in _FIELDS if name not in raw]
    unknown = [name for name in raw if name not in _FIELDS]
    if missing:
        raise LatentDeskError(f"{label} lacks {', '.join(missing)}")
    if unknown:
        raise LatentDeskError(f"{label} has fields the catalogue does not know: {shown(unknown)}")
    try:
        return CatalogueEntry(
            name=_matching("name", raw["name"], _NAME, "lower-case letters, digits, '-' and '.'"),
            title=_text("title", raw["title"]),
            kind=_one_of("kind", raw["kind"], KINDS),
            family=_one_of("family", raw["family"], FAMILIES),
            repo=_repo(raw["repo"]),
            file=_repo_file(raw["file"]),
            revision=_matching("revision", raw["revision"], _REVISION, "a branch, tag or commit"),
            save_as=_file_name(raw["save_as"]),
            size_bytes=require("size_bytes", raw["size_bytes"], Whole(1)),
            licence=_text("licence", raw["licence"]),
            licence_url=_https("licence_url", raw["licence_url"]),
            about=_text("about", raw["about"]),
            settings=_settings(raw["settings"], raw["kind"]),
            source=_text("source", raw["source"]),
        )
    except LatentDeskError as error:
        raise LatentDeskError(f"{label}: {error}") from None


def _text(field: str, value) -> str:
    if not isinstance(value, str) or not value.strip():
        raise LatentDeskError(f"{field} must be some text, not {shown(value)}")
    return value


def _matching(field: str, value, pattern: re.Pattern, wants: str) -> str:
    if not isinstance(value, str) or not pattern.fullmatch(value):
        raise LatentDeskError(f"{field} must be {wants}, not {shown(value)}")
    return value


def _one_of(field: str, value, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise LatentDeskError(f"{field} must be one of {', '.join(choices)}, not {shown(value)}")
    return value


def _repo(value) -> str:
    _matching("repo", value, _REPO, "a Hugging Face repo id such as 'owner/name'")
    if "--" in value or ".." in value or value.endswith((".", "-")):
        raise LatentDeskError(f"repo {shown(value)} is not a repo id the Hub accepts")
    return value


def _repo_file(value) -> str:
    """A path inside the repo: relative, "/"-separated, no "..", and a .safetensors file, never a pickle."""
    if not isinstance(value, str) or not value or "\\" in value or "\0" in value:
        raise LatentDeskError(f"file must be a path inside the repo, not {shown(value)}")
    parts = PurePosixPath(value).parts
    if value.startswith("/") or any(part in (".", "..") for part in parts):
        raise LatentDeskError(f"file must be a path inside the repo, not {shown(value)}")
    if not value.endswith(".safetensors"):
        raise LatentDeskError(f"file must be a .safetensors file (pickled weights can run code), not {shown(value)}")
    return value


def _file_name(value) -> str:
    """A bare file name: the download is written into the models folder, never beside or above it."""
    if (not isinstance(value, str) or not value.endswith(".safetensors") or value.startswith(".")
            or any(bad in value for bad in ("/", "\\", "\0", ":"))):
        raise LatentDeskError(f"save_as must be a .safetensors file name without folders, not {shown(value)}")
    return value


def _https(field: str, value) -> str:
    if not isinstance(value, str) or not re.fullmatch(r"https://[^\s/]+\.[^\s/]+(/\S*)?", value):
        raise LatentDeskError(f"{field} must be an https:// address, not {shown(value)}")
    return value


def _settings(value, kind) -> dict:
    if not isinstance(value, dict):
        raise LatentDeskError(f"settings must be a JSON object, not {shown(value)}")
    if kind not in KINDS_WITH_SETTINGS:
        if value:
            raise LatentDeskError(f"settings must be empty for a {kind}: it is not used to generate with")
        return {}
    missing = [name for name in REQUIRED_SETTINGS if name not in value]
    unknown = [name for name in value if name not in REQUIRED_SETTINGS + OPTIONAL_SETTINGS]
    if missing:
        raise LatentDeskError(f"settings lack {', '.join(missing)}")
    if unknown:
        raise LatentDeskError(f"settings has entries the catalogue does not know: {shown(unknown)}")
    _one_of("settings.sampler", value["sampler"], SAMPLER_NAMES)
    require("settings.steps", value["steps"], Whole(1, MAX_STEPS))
    require("settings.guidance", value["guidance"], Span(0, 30))     # 1 = no guidance (Turbo, LCM)
    try:
        check_size(value["width"], value["height"])
    except LatentDeskError as error:
        raise LatentDeskError(f"settings.{error}") from None
    if "schedule" in value:
        _one_of("settings.schedule", value["schedule"], SCHEDULES)
    return dict(value)
