"""JSON from a model file or folder, parsed so that every way it can fail is one `UnreadableJson`.

Python's `json` raises more than `JSONDecodeError` on hostile text: `RecursionError` on deeply
nested brackets, and a plain `ValueError` on an integer longer than `sys.get_int_max_str_digits()`
(4,300 digits; Python's guard against quadratic-time number parsing, CVE-2020-10735). A few bytes of
a safetensors header, a `latentdesk.config` entry or a `config.json` can hold either.
"""

from __future__ import annotations

import json


class UnreadableJson(ValueError):
    """Text that is not JSON Latent Desk can read. The message completes "the header is …"."""


def loads(text: str | bytes):
    try:
        return json.loads(text)
    except RecursionError:
        raise UnreadableJson("JSON nested too deeply to read") from None
    except UnicodeDecodeError:
        raise UnreadableJson("not UTF-8 text") from None
    except json.JSONDecodeError as error:
        raise UnreadableJson(f"not valid JSON ({error})") from None
    except ValueError:
        raise UnreadableJson("JSON with a number too many digits long to read") from None
