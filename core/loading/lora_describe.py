"""What a LoRA or a textual-inversion embedding file is, from its header alone (no model, no tensor read).

    describe_addon(path) -> dict | None     None: the file is neither (a checkpoint, say)

For a LoRA: the formats (kohya / PEFT naming; LoRA, LoHa, LoKr), the family when the file tells
(lora_files.families_meant), the ranks, how many layers of each network it changes, and its trigger words:
the 10 most frequent tags of kohya's `ss_tag_frequency` metadata ({dataset: {tag: count}}), which is
what A1111's LoRA card shows. For an embedding: its vectors and widths per text encoder, and the family
those widths say (768: SD1, 1024: SD2, clip_l 768 + clip_g 1280: SDXL).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from core.families import FAMILIES
from core.loading.lora_files import NETWORK_TITLES, families_meant, group_keys
from core.loading.lora_math import LOHA, LOKR, LORA, form_of
from core.loading.safetensors_io import SafetensorsFile
from core.loading.untrusted_json import UnreadableJson, loads

TRIGGER_WORDS = 10
MAX_TAG_TEXT = 1_000_000       # ss_tag_frequency of a large dataset is tens of kB; more is not worth parsing
# An embedding file's vector keys, in A1111's (emb_params, string_to_param.*), SDXL's and diffusers' forms.
SDXL_EMBEDDING_KEYS = {"clip_l": 768, "clip_g": 1280}
EMBEDDING_WIDTHS = {768: "sd1", 1024: "sd2"}
MAX_EMBEDDING_KEYS = 4
CHECKPOINT_PREFIXES = ("model.diffusion_model.", "first_stage_model.", "cond_stage_model.", "conditioner.")


def describe_addon(path: str | Path) -> dict | None:
    file = SafetensorsFile(path)
    keys, shapes = file.keys(), file.shapes
    if any(key.startswith(CHECKPOINT_PREFIXES) for key in keys):
        return None
    groups, unknown = group_keys(keys)
    if groups:
        return _describe_lora(file, groups, unknown)
    return _describe_embedding(keys, shapes)


def _describe_lora(file: SafetensorsFile, groups, unknown) -> dict:
    shapes = file.shapes
    formats, ranks, networks = set(), set(), Counter()
    for (net, _), parts in groups.items():
        form = form_of(parts)
        if form is None:
            continue
        kohya = any(file_key.startswith("lora_") for file_key in parts.values())
        formats.add(f"{'kohya' if kohya else 'PEFT'} {form}")
        networks[NETWORK_TITLES[net]] += 1
        rank_part = {LORA: "down", LOHA: "hada_w1_b", LOKR: "lokr_w1_b"}[form]
        if rank_part in parts:
            ranks.add(shapes[parts[rank_part]][0])
    meant = families_meant(groups, shapes)
    return {
        "kind": "lora",
        "formats": sorted(formats),
        "family": sorted(meant) if meant else None,
        "family_title": " or ".join(FAMILIES[name].title for name in sorted(meant)) if meant else None,
        "ranks": sorted(ranks),
        "layers": dict(networks),
        "not_understood": len(unknown) + sum(1 for parts in groups.values() if form_of(parts) is None),
        "trigger_words": trigger_words(file.metadata),
    }


def trigger_words(metadata: dict[str, str]) -> list[str]:
    """The most frequent tags of kohya's ss_tag_frequency, summed over its datasets; [] if absent or unreadable."""
    text = metadata.get("ss_tag_frequency", "")
    if not text or len(text) > MAX_TAG_TEXT:
        return []
    try:
        datasets = loads(text)
    except UnreadableJson:
        return []
    counts: Counter = Counter()
    for tags in (datasets.values() if isinstance(datasets, dict) else ()):
        for tag, count in (tags.items() if isinstance(tags, dict) else ()):
            if isinstance(count, int) and not isinstance(count, bool) and count > 0:
                counts[str(tag).strip()] += count
    return [tag for tag, _ in counts.most_common(TRIGGER_WORDS) if tag]


def _describe_embedding(keys: list[str], shapes) -> dict | None:
    """An embedding: a few 1-D or 2-D tensors of a text encoder's width; None if the file is not one."""
    if not keys or len(keys) > MAX_EMBEDDING_KEYS or any(len(shapes[k]) not in (1, 2) for k in keys):
        return None
    keys = sorted(keys, key=lambda k: shapes[k][-1])        # SDXL's clip_l (768) before its clip_g (1280)
    widths = {k: shapes[k][-1] for k in keys}
    vectors = {k: shapes[k][0] if len(shapes[k]) == 2 else 1 for k in keys}
    if set(keys) == set(SDXL_EMBEDDING_KEYS) and all(widths[k] == w for k, w in SDXL_EMBEDDING_KEYS.items()):
        family = "sdxl"
    elif len(keys) == 1 and widths[keys[0]] in EMBEDDING_WIDTHS:
        family = EMBEDDING_WIDTHS[widths[keys[0]]]
    else:
        return None
    return {"kind": "embedding", "family": [family], "family_title": FAMILIES[family].title,
            "vectors": vectors, "widths": widths}
