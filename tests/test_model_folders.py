"""core/fetch/folders.py: A1111 and ComfyUI installs are found from their root, ComfyUI's
extra_model_paths.yaml and LATENTDESK_MODEL_DIRS are read, and the scan is lazy, quick and hard to trip."""

from __future__ import annotations

import os
import sys
import threading
import time
from pathlib import Path

import pytest

from core.fetch import folders as folders_module
from core.fetch.folders import (
    ModelFolder,
    env_model_dirs,
    env_model_folders,
    extra_model_paths,
    folders_under,
    scan,
)


def touch(path: Path, data: bytes = b"") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def a1111_tree(root: Path) -> Path:
    touch(root / "webui.py")
    touch(root / "models/Stable-diffusion/v1-5-pruned-emaonly.safetensors")
    touch(root / "models/Stable-diffusion/anime/counterfeit.safetensors")      # users keep subfolders
    touch(root / "models/Stable-diffusion/old.ckpt")                           # a pickle: never listed
    touch(root / "models/Lora/detail.safetensors")
    touch(root / "models/VAE/vae-ft-mse.safetensors")
    touch(root / "models/VAE-approx/model.pt")
    touch(root / "models/VAE-approx/taesd_decoder.safetensors")
    touch(root / "embeddings/easynegative.safetensors")
    (root / "models/ESRGAN").mkdir(parents=True)
    return root


def comfy_tree(root: Path) -> Path:
    touch(root / "models/checkpoints/sd_xl_base_1.0.safetensors")
    touch(root / "models/loras/lcm-lora-sdxl.safetensors")
    touch(root / "models/vae/sdxl_vae.safetensors")
    touch(root / "models/vae_approx/taesdxl_decoder.safetensors")
    touch(root / "models/embeddings/negative.safetensors")
    touch(root / "models/checkpoints/diffusers-model/model_index.json")
    touch(root / "models/checkpoints/diffusers-model/unet/diffusion_pytorch_model.safetensors")
    return root


def found(folders) -> dict[str, str]:
    """{path relative to the tmp folder: kind}."""
    return {str(model.path): model.kind for model in scan(folders)}


def relative(result: dict[str, str], base: Path) -> dict[str, str]:
    return {Path(path).relative_to(base).as_posix(): kind for path, kind in result.items()}


def test_an_a1111_root_gives_its_model_folders(tmp_path):
    root = a1111_tree(tmp_path / "stable-diffusion-webui")
    folders = folders_under(root)
    assert {(f.path.relative_to(root).as_posix(), f.kind) for f in folders} == {
        ("models/Stable-diffusion", "checkpoint"), ("models/Lora", "lora"), ("models/VAE", "vae"),
        ("models/VAE-approx", "taesd"), ("embeddings", "embedding")}        # LyCORIS is absent: not listed
    assert {f.source for f in folders} == {"a1111"}
    assert relative(found(folders), root) == {
        "models/Stable-diffusion/v1-5-pruned-emaonly.safetensors": "checkpoint",
        "models/Stable-diffusion/anime/counterfeit.safetensors": "checkpoint",
        "models/Lora/detail.safetensors": "lora",
        "models/VAE/vae-ft-mse.safetensors": "vae",
        "models/VAE-approx/taesd_decoder.safetensors": "taesd",
        "embeddings/easynegative.safetensors": "embedding",
    }


def test_a_comfyui_root_gives_its_model_folders(tmp_path):
    root = comfy_tree(tmp_path / "ComfyUI")
    folders = folders_under(root)
    assert {(f.path.relative_to(root).as_posix(), f.kind, f.source) for f in folders} == {
        ("models/checkpoints", "checkpoint", "comfyui"), ("models/loras", "lora", "comfyui"),
        ("models/vae", "vae", "comfyui"), ("models/vae_approx", "taesd", "comfyui"),
        ("models/embeddings", "embedding", "comfyui")}
    assert relative(found(folders), root) == {
        "models/checkpoints/sd_xl_base_1.0.safetensors": "checkpoint",
        "models/checkpoints/diffusers-model": "checkpoint",      # the folder, not its parts
        "models/loras/lcm-lora-sdxl.safetensors": "lora",
        "models/vae/sdxl_vae.safetensors": "vae",
        "models/vae_approx/taesdxl_decoder.safetensors": "taesd",
        "models/embeddings/negative.safetensors": "embedding",
    }


def test_the_windows_portable_comfyui_is_found_from_its_outer_folder(tmp_path):
    outer = tmp_path / "ComfyUI_windows_portable"
    comfy_tree(outer / "ComfyUI")
    assert {f.path for f in folders_under(outer)} >= {outer / "ComfyUI/models/checkpoints"}


def test_a_plain_folder_is_a_folder_of_checkpoints(tmp_path):
    touch(tmp_path / "mine/model.safetensors")
    assert folders_under(tmp_path / "mine") == [ModelFolder(tmp_path / "mine", "checkpoint", "user")]
    assert folders_under(tmp_path / "missing") == []


EXTRA_PATHS = """
#config for a1111 ui
a1111:
    base_path: {a1111}

    checkpoints: models/Stable-diffusion
    configs: models/Stable-diffusion
    vae: models/VAE
    loras: |
         models/Lora
         models/LyCORIS
    upscale_models: |
                  models/ESRGAN
    embeddings: embeddings
    controlnet: models/ControlNet

shared:
    base_path: ../shared
    is_default: true
    checkpoints: |
        sd
        xl
    vae_approx: approx/

relative:
    loras: loras-beside-the-yaml
"""


def test_extra_model_paths_yaml_is_read_as_comfyui_reads_it(tmp_path):
    a1111 = a1111_tree(tmp_path / "webui")
    touch(a1111 / "models/LyCORIS/locon.safetensors")
    comfy = comfy_tree(tmp_path / "comfy" / "ComfyUI")
    for name in ("sd", "xl", "approx"):
        (comfy.parent / "shared" / name).mkdir(parents=True)
    (comfy / "loras-beside-the-yaml").mkdir()
    (comfy / "extra_model_paths.yaml").write_text(EXTRA_PATHS.format(a1111=a1111))
    extra = extra_model_paths(comfy / "extra_model_paths.yaml")
    assert {(f.path.resolve(), f.kind) for f in extra} == {
        (a1111 / "models/Stable-diffusion", "checkpoint"), (a1111 / "models/VAE", "vae"),
        (a1111 / "models/Lora", "lora"), (a1111 / "models/LyCORIS", "lora"), (a1111 / "embeddings", "embedding"),
        (comfy.parent / "shared/sd", "checkpoint"), (comfy.parent / "shared/xl", "checkpoint"),
        (comfy.parent / "shared/approx", "taesd"), (comfy / "loras-beside-the-yaml", "lora")}
    assert {f.source for f in extra} == {"comfyui-extra"}
    # The root gives its own folders and the yaml's; the A1111 models are then scanned once each.
    under = folders_under(comfy)
    assert {f.source for f in under} == {"comfyui", "comfyui-extra"}
    paths = [model.path for model in scan(under)]
    assert a1111 / "models/LyCORIS/locon.safetensors" in paths
    assert len(paths) == len(set(paths))


@pytest.mark.parametrize("text", [
    "a1111: [unclosed",             # not YAML
    "- just\n- a list\n",           # YAML, but not ComfyUI's layout
    "a1111:\n  base_path: 42\n  checkpoints: {nested: map}\n",
    "",
])
def test_a_broken_extra_model_paths_yaml_is_passed_over(tmp_path, text):
    comfy = comfy_tree(tmp_path / "ComfyUI")
    (comfy / "extra_model_paths.yaml").write_text(text)
    assert {f.source for f in folders_under(comfy)} == {"comfyui"}


def test_latentdesk_model_dirs(tmp_path, monkeypatch):
    plain = tmp_path / "plain"
    touch(plain / "a.safetensors")
    webui = a1111_tree(tmp_path / "webui")
    monkeypatch.setenv("LATENTDESK_MODEL_DIRS", os.pathsep.join(
        [str(plain), "", str(tmp_path / "missing"), str(webui), str(plain)]))
    assert env_model_dirs() == [plain, webui]                  # missing and repeated ones are left out
    folders = env_model_folders()
    assert folders[0] == ModelFolder(plain, "checkpoint", "env")
    assert {f.source for f in folders[1:]} == {"a1111"}
    assert plain / "a.safetensors" in [model.path for model in scan(folders)]
    monkeypatch.delenv("LATENTDESK_MODEL_DIRS")
    assert env_model_dirs() == []


def test_hidden_files_and_partial_downloads_are_skipped(tmp_path):
    touch(tmp_path / "good.safetensors")
    touch(tmp_path / "UPPER.SAFETENSORS")
    touch(tmp_path / ".hidden.safetensors")
    touch(tmp_path / ".cache/inside.safetensors")
    touch(tmp_path / "big.safetensors.part")
    touch(tmp_path / "big.safetensors.incomplete")
    touch(tmp_path / "notes.txt")
    (tmp_path / "folder.safetensors").mkdir()                # a folder named like a model is not one
    assert sorted(Path(p).name for p in found([ModelFolder(tmp_path, "checkpoint", "user")])) == \
        ["UPPER.SAFETENSORS", "good.safetensors"]


@pytest.mark.skipif(sys.platform == "win32", reason="symlinks need privileges on Windows")
def test_a_symlink_loop_ends_and_linked_folders_are_followed(tmp_path):
    models = tmp_path / "models"
    touch(models / "sub/a.safetensors")
    (models / "sub/loop").symlink_to(models, target_is_directory=True)
    (models / "sub/self").symlink_to(models / "sub", target_is_directory=True)
    touch(tmp_path / "elsewhere/b.safetensors")
    (models / "linked").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    (models / "broken.safetensors").symlink_to(tmp_path / "nowhere.safetensors")
    names = sorted(Path(p).name for p in found([ModelFolder(models, "checkpoint", "user")]))
    assert names == ["a.safetensors", "b.safetensors"]


def test_the_depth_is_limited(tmp_path, monkeypatch):
    monkeypatch.setattr(folders_module, "MAX_DEPTH", 2)
    touch(tmp_path / "1/2/shallow.safetensors")
    touch(tmp_path / "1/2/3/deep.safetensors")
    assert [Path(p).name for p in found([ModelFolder(tmp_path, "checkpoint", "user")])] == ["shallow.safetensors"]


@pytest.mark.skipif(sys.platform == "win32" or os.geteuid() == 0, reason="needs POSIX permissions, not as root")
def test_an_unreadable_folder_is_passed_over(tmp_path):
    touch(tmp_path / "readable/a.safetensors")
    touch(tmp_path / "locked/b.safetensors")
    (tmp_path / "locked").chmod(0)
    try:
        names = [Path(p).name for p in found([ModelFolder(tmp_path, "checkpoint", "user"),
                                              ModelFolder(tmp_path / "locked", "lora", "user"),
                                              ModelFolder(tmp_path / "missing", "vae", "user")])]
    finally:
        (tmp_path / "locked").chmod(0o755)
    assert names == ["a.safetensors"]


def test_a_folder_that_refuses_listing_is_passed_over(tmp_path, monkeypatch):
    """The same as above wherever permissions cannot refuse (as root, on Windows): os.scandir raising."""
    touch(tmp_path / "readable/a.safetensors")
    touch(tmp_path / "locked/b.safetensors")
    real_scandir = os.scandir

    def scandir(path):
        if Path(path).name == "locked":
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(folders_module.os, "scandir", scandir)
    assert [Path(p).name for p in found([ModelFolder(tmp_path, "checkpoint", "user")])] == ["a.safetensors"]


def test_cancel_stops_the_scan(tmp_path):
    for i in range(50):
        touch(tmp_path / f"m{i}.safetensors")
    cancel = threading.Event()
    models = scan([ModelFolder(tmp_path, "checkpoint", "user")], cancel)
    next(models)
    cancel.set()
    assert list(models) == []


# --- 10,000 files --------------------------------------------------------------------------------------

FILES, FOLDERS = 10_000, 50


@pytest.fixture(scope="module")
def ten_thousand(tmp_path_factory) -> Path:
    """10,000 files in 50 folders: four in five are models, the rest sidecar files users keep beside them."""
    root = tmp_path_factory.mktemp("many")
    for i in range(FILES):
        folder = root / f"folder{i % FOLDERS:02d}"
        if i < FOLDERS:
            folder.mkdir()
        suffix = ".safetensors" if i % 5 else ".preview.png"
        (folder / f"model{i:05d}{suffix}").touch()
    return root


def test_ten_thousand_files_scan_within_two_seconds(ten_thousand):
    started = time.perf_counter()
    models = list(scan([ModelFolder(ten_thousand, "checkpoint", "user")]))
    elapsed = time.perf_counter() - started
    assert len(models) == FILES * 4 // 5
    assert elapsed <= 2.0, f"{elapsed:.2f} s"
    print(f"\n10,000 files scanned in {elapsed * 1000:.0f} ms")


def test_the_scan_yields_before_it_has_read_everything(ten_thousand, monkeypatch):
    """The first model comes after one folder's entries, not after all 10,000: a generator over os.scandir."""
    read = 0
    real_scandir = os.scandir

    class Counting:
        def __init__(self, path):
            self.entries = real_scandir(path)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.entries.close()

        def __iter__(self):
            nonlocal read
            for entry in self.entries:
                read += 1
                yield entry

    monkeypatch.setattr(folders_module.os, "scandir", Counting)
    models = scan([ModelFolder(ten_thousand, "checkpoint", "user")])
    first = next(models)
    assert first.path.suffix == ".safetensors"
    assert read <= FOLDERS + FILES // FOLDERS        # the root's folders and at most one folder's files
    models.close()
