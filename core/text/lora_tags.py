"""A1111's LoRA prompt syntax: `<lora:name:0.8>`, `<lora:name>` (= 1.0), and its alias `<lyco:...>`.

    split_lora_tags("a cat <lora:ink:0.6>") -> ("a cat ", [("ink", 0.6)])

As A1111 does it (stable-diffusion-webui `modules/extra_networks.py`): a tag is `<(\\w+):([^>]+)>`, its
text split on ":" into the name and the weight, and the tag replaced by nothing, so the prompt the text
encoder sees is the prompt A1111's sees (the spaces and commas around a tag stay). `lyco` is the alias
A1111's built-in Lora extension registers (`extensions-builtin/Lora/scripts/lora_script.py`,
`register_extra_network_alias(..., "lyco")`) for prompts written for the old LyCORIS extension.
Only these two kinds are taken out; any other tag (`<hypernet:...>`) stays in the text.

A1111 reads tags from the prompt only: a tag in the negative prompt is not applied and stays in the
negative text (`processing.py` parses `p.prompts`, never `p.negative_prompts`). Latent Desk does the same,
so an A1111 image's settings make the same image here; generate() runs this on the prompt alone.

A1111 also takes a third number (a separate UNet weight) and `te=`/`unet=`/`dyn=` options; Latent Desk
applies one weight to both networks, so such a tag is refused with a message rather than run differently.
Pure text: no torch, the window's prompt box uses it too.
"""

from __future__ import annotations

import re

from core.errors import LatentDeskError

TAG = re.compile(r"<(\w+):([^>]+)>")      # A1111's re_extra_net
LORA_KINDS = ("lora", "lyco")


def split_lora_tags(prompt: str) -> tuple[str, list[tuple[str, float]]]:
    """(the prompt without its LoRA tags, [(name, weight), ...] in the order written)."""
    found: list[tuple[str, float]] = []

    def take(match: re.Match) -> str:
        if match.group(1) not in LORA_KINDS:
            return match.group(0)
        found.append(_name_and_weight(match.group(0), match.group(2).split(":")))
        return ""

    return TAG.sub(take, prompt), found


def _name_and_weight(tag: str, items: list[str]) -> tuple[str, float]:
    name = items[0].strip()
    if not name:
        raise LatentDeskError(f"{tag}: the LoRA's name is missing (write <lora:name:0.8>)")
    if len(items) > 2 or any("=" in item for item in items[1:]):
        raise LatentDeskError(f"{tag}: Latent Desk takes one weight per LoRA (<lora:{name}:0.8>); separate text "
                              "encoder and UNet weights are not supported")
    if len(items) == 1:
        return name, 1.0
    try:
        return name, float(items[1])
    except ValueError:
        raise LatentDeskError(f"{tag}: the weight {items[1].strip()!r} is not a number "
                              f"(write e.g. <lora:{name}:0.8>)") from None
